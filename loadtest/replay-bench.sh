#!/usr/bin/env bash
# Replay benchmark (issue 12): how fast a full spool drains into a Kafka that came back, with and
# without live traffic. Per phase: a fresh Tansu (memory engine) with the topics, a fresh gateway;
# the broker is frozen (SIGSTOP) so requests time out, the breaker opens and every request is
# spooled (202) until the spool holds FILL_BYTES; then the broker is let go (SIGCONT) and the time
# until the spool is empty is measured, first with no traffic, then while live traffic runs open
# loop at LIVE_SHARE of the gateway's closed-loop peak (measured first, Kafka up). Prints the
# drain time and rate, the live traffic's answers and latency during the drain, and the spool's
# quarantine count (0 expected). The spool must be on a real disk.
#
#   loadtest/replay-bench.sh [work-dir]     # default target/replay-bench (removed afterwards)
#   FILL_BYTES=1073741824 LIVE_SHARE=0.5 LIVE_SECS=60 loadtest/replay-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p eventpipe -q && cargo build --release -p eventpipe-loadtest -q
BIN="${CARGO_TARGET_DIR:-target}/release"
TANSU="${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
WORK="${1:-target/replay-bench}"
FILL_BYTES="${FILL_BYTES:-1073741824}"
LIVE_SHARE="${LIVE_SHARE:-0.5}"
LIVE_SECS="${LIVE_SECS:-60}"
KPORT=19092 PORT=18090 ADMIN=18091
URL="http://127.0.0.1:$PORT/v1/events"
rm -rf "$WORK" && mkdir -p "$WORK"
TANSU_PID= GW_PID=
cleanup() {
  [ -n "$GW_PID" ] && kill -9 "$GW_PID" 2>/dev/null || true
  # Tansu ignores SIGTERM while clients are connected (RELIABILITY.md).
  [ -n "$TANSU_PID" ] && { kill -CONT "$TANSU_PID"; kill -9 "$TANSU_PID"; } 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT

metric() { curl -s "127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2; exit}'; }

start() { # fresh broker with the topics, fresh gateway with an empty spool
  cleanup; TANSU_PID= GW_PID=
  rm -rf "$WORK/spool"; mkdir -p "$WORK/spool"
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine memory://tansu/ > "$WORK/tansu.log" 2>&1 &
  TANSU_PID=$!
  until (exec 3<>/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null; do sleep 0.1; done
  EVENTPIPE_LOG=warn "$BIN/eventpipe" topics create --brokers "127.0.0.1:$KPORT" --schemas schemas > /dev/null
  EVENTPIPE_LOG=warn EVENTPIPE_SPOOL__DIR="$WORK/spool" EVENTPIPE_SPOOL__MAX_BYTES=$((FILL_BYTES * 4 + (4 << 30))) \
    "$BIN/eventpipe" serve --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
    --brokers "127.0.0.1:$KPORT" --schemas schemas > "$WORK/gateway.log" 2>&1 &
  GW_PID=$!
  until curl -sf "127.0.0.1:$ADMIN/readyz" > /dev/null; do sleep 0.2; done
}

fill() { # freeze the broker and spool FILL_BYTES
  kill -STOP "$TANSU_PID"
  while [ "$(metric eventpipe_spool_bytes | cut -d. -f1)" -lt "$FILL_BYTES" ] 2>/dev/null \
     || [ -z "$(metric eventpipe_spool_bytes)" ]; do
    "$BIN/eventpipe-loadtest" run --url "$URL" --duration 2s --warmup 0s > /dev/null 2>&1
  done
  echo "spool: $(metric eventpipe_spool_bytes) bytes, $(metric eventpipe_spool_records) records"
}

drain() { # let the broker go; seconds until the spool is empty
  local t0 t1
  t0=$(date +%s.%N)
  kill -CONT "$TANSU_PID"
  while [ "$(metric eventpipe_spool_records | cut -d. -f1)" != "0" ]; do sleep 0.25; done
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}'
}

echo "== date: $(date -u), machine: $(nproc) CPUs, $(git rev-parse --short HEAD)"
echo "== peak (closed loop, Kafka up)"
start
peak=$("$BIN/eventpipe-loadtest" run --url "$URL" --duration 10s --warmup 3s)
echo "$peak" | head -1
rate=$(echo "$peak" | head -1 | awk -v s="$LIVE_SHARE" '{for (i = 1; i < NF; i++) if ($(i+1) == "req/s,") print $i * s}')

echo "== drain with no live traffic"
start
fill
secs=$(drain)
echo "drained in $secs s; replayed $(metric eventpipe_spool_replayed_records_total) records, quarantined $(metric eventpipe_spool_quarantined_records_total || true)"

echo "== drain while live traffic runs at $LIVE_SHARE of the peak ($rate req/s, open loop, $LIVE_SECS s)"
start
fill
"$BIN/eventpipe-loadtest" run --url "$URL" --rate "$rate" --duration "${LIVE_SECS}s" --warmup 0s > "$WORK/live.txt" 2>&1 &
LIVE=$!
sleep 2
secs=$(drain)
echo "drained in $secs s; replayed $(metric eventpipe_spool_replayed_records_total) records, quarantined $(metric eventpipe_spool_quarantined_records_total || true)"
wait $LIVE || true
echo "live traffic over the $LIVE_SECS s window:"
cat "$WORK/live.txt"
echo "refusals the gateway counted (events):"
curl -s "127.0.0.1:$ADMIN/metrics" | grep -E '^eventpipe_events_total\{.*outcome="refused"' || echo "none"
