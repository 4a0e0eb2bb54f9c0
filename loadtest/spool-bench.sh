#!/usr/bin/env bash
# Spool-path benchmark: a gateway whose broker is unreachable, so after the first requests (which
# wait out the ack deadline and open the breaker) every request is appended to the local spool,
# fdatasynced and answered 202. Prints the load generator's line, the gateway's CPU and peak RSS,
# the spool's size and its metrics. The spool directory must be on a real disk (not tmpfs).
#
#   loadtest/spool-bench.sh [spool-dir]      # default: target/spool-bench (removed afterwards)
set -u
cd "$(dirname "$0")/.."
cargo build --release -p eventpipe -q && cargo build --release -p eventpipe-loadtest -q
BIN="${CARGO_TARGET_DIR:-target}/release"
SPOOL="${1:-target/spool-bench}"
rm -rf "$SPOOL" && mkdir -p "$SPOOL"
EVENTPIPE_SPOOL__DIR="$SPOOL" EVENTPIPE_SPOOL__MAX_BYTES=17179869184 \
  "$BIN/eventpipe" serve --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18081 \
  --brokers 127.0.0.1:9 --schemas schemas > "$SPOOL.log" 2>&1 &
GW=$!
sleep 2
ticks() { awk '{print $14+$15}' /proc/$GW/stat; }
# Warm-up: the first requests wait out the ack deadline (5 s) before the breaker opens.
"$BIN/eventpipe-loadtest" run --url http://127.0.0.1:18080/v1/events --duration 3s --warmup 7s > /dev/null 2>&1
t0=$(ticks); s0=$(date +%s.%N)
"$BIN/eventpipe-loadtest" run --url http://127.0.0.1:18080/v1/events --duration 15s --warmup 1s
t1=$(ticks); s1=$(date +%s.%N)
echo "gateway CPU: $((t1 - t0)) ticks of 1/$(getconf CLK_TCK) s over $(awk "BEGIN{print $s1 - $s0}") s"
grep VmHWM /proc/$GW/status
du -sh "$SPOOL"
curl -s 127.0.0.1:18081/metrics | grep -E "^eventpipe_(events_total|spool)" | head -20
kill $GW; wait $GW
rm -rf "$SPOOL"
