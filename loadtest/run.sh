#!/usr/bin/env bash
# One command for the benchmark suite: builds the gateway and the load generator (release), then
# starts a Tansu broker, creates topics, starts gateways, runs the load and prints the table.
#
#   loadtest/run.sh                          # suite, 20 s per phase, one repetition
#   loadtest/run.sh suite --repeat 3         # medians of three
#   loadtest/run.sh sweep --sweep-connections 256,1024 --sweep-events 1,500 --sweep-schemas 1,50 \
#                         --tls --gzip --idle 10000 --duration 10s
#
# The gateway is built on its own (`-p eventpipe`) so its features are exactly a normal release
# build's, not unified with the load generator's. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p eventpipe
cargo build --release -p eventpipe-loadtest
if [ $# -eq 0 ]; then set -- suite --duration 20s; fi
case "$1" in
  suite | sweep) exec "$target/release/eventpipe-loadtest" "$@" --gateway-bin "$target/release/eventpipe" ;;
  *) exec "$target/release/eventpipe-loadtest" "$@" ;;
esac
