#!/usr/bin/env bash
# Installs what the tests and the dev gateway need on a fresh machine; skips what is present.
#   - Debian: thrift-compiler (regenerating Thrift code), build tools for librdkafka; haproxy (the
#     fleet tests' load balancer), buildah (container image), systemd (systemd-analyze verify),
#     prometheus (promtool: alert rule tests); iptables, curl, iproute2, openssl (fleet test and
#     scripts/check-deploy.sh)
#   - Debian chromium (headless: the browser tracker's and Snowplow's browser tracker's tests)
#   - PyPI: confluent-kafka + thriftpy2 (independent consumer/decoder in tests), Segment's and
#     Snowplow's Python SDKs (protocol tests)
#   - npm (`npm ci` from committed lock files): the browser tracker's build and test tools
#     (clients/js), Segment's and Snowplow's Node/browser SDKs (tests/sdk/*)
#   - crates.io: the Tansu broker (~10 minutes to build the first time), cargo-fuzz (scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v thrift >/dev/null || need_apt+=(thrift-compiler)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v iptables >/dev/null || need_apt+=(iptables)   # the fleet test cuts one host's broker link
command -v curl >/dev/null || need_apt+=(curl)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import confluent_kafka, thriftpy2, kubernetes_validate, segment.analytics, snowplow_tracker' 2>/dev/null; then
  echo "setup: pip install -r tests/py/requirements.txt"
  python3 -m pip install -q -r tests/py/requirements.txt
fi

for dir in clients/js tests/sdk/segment tests/sdk/snowplow; do
  if [[ -f "$dir/package-lock.json" ]] && ! (cd "$dir" && npm ls --all >/dev/null 2>&1); then
    echo "setup: npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund >/dev/null)
  fi
done

TANSU_VERSION=0.6.0
tansu_ok() {
  local bin
  bin=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"
}
if ! tansu_ok; then
  # Build tools some of Tansu's C/C++ dependencies may look for (cheap when already present).
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq cmake pkg-config libssl-dev zlib1g-dev >/dev/null || true
  fi
  echo "setup: cargo install tansu $TANSU_VERSION (takes ~10 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "setup: cargo install cargo-fuzz $CARGO_FUZZ_VERSION (about 2 minutes)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
echo "setup: ok"
