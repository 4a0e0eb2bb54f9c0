#!/usr/bin/env bash
# The README's run command: a working local gateway in one step.
#   1. installs what is missing (Tansu broker, ...; first run ~10 minutes),
#   2. starts a local Tansu broker on 127.0.0.1:9092 with its durable SQLite engine
#      (data in .tansu-data/), unless something already listens there,
#   3. creates the topics for schemas/ (idempotent),
#   4. runs the gateway on 127.0.0.1:8080 (admin on 127.0.0.1:9100) until Ctrl-C.
# Extra arguments go to `eventpipe serve`, e.g. deploy/dev.sh --listen 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
BROKERS=${EVENTPIPE_KAFKA__BROKERS:-127.0.0.1:9092}
PORT=${BROKERS##*:}

cargo build --release --quiet
BIN=target/release/eventpipe

tansu_pid=""
cleanup() { [[ -n "$tansu_pid" ]] && kill "$tansu_pid" 2>/dev/null || true; }
trap cleanup EXIT

if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  mkdir -p .tansu-data
  echo "dev: starting Tansu on 127.0.0.1:$PORT (SQLite engine, .tansu-data/tansu.db; log .tansu-data/tansu.log)"
  (cd .tansu-data && exec tansu broker \
      --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine "sqlite://tansu.db" >tansu.log 2>&1) &
  tansu_pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
fi

"$BIN" topics create --brokers "$BROKERS" --schemas schemas --partitions 3
echo "dev: gateway on http://127.0.0.1:8080/v1/events, admin on http://127.0.0.1:9100 (Ctrl-C stops both)"
"$BIN" serve --brokers "$BROKERS" --schemas schemas "$@"
