#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target in fuzz/ for SECONDS each (default 20), starting from the
# committed seeds in fuzz/corpus/<target>/ (read only: new inputs go to a temporary directory).
# Fails on the first crash, leaving its input in fuzz/artifacts/<target>/ (reproduce:
# `cargo +nightly fuzz run <target> <file>`). Needs a nightly toolchain and cargo-fuzz
# (scripts/setup.sh installs cargo-fuzz); without nightly it fails and says so.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# The build (nightly, ASan) goes to $EVENTPIPE_FUZZ_TARGET_DIR, by default a cache under $HOME,
# so a machine builds the dependencies once; a cold build takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${1:-20}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(body thrift_tail spool_segment spool_recover)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain: install it with 'rustup toolchain install nightly'" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz missing: run scripts/setup.sh" >&2; exit 1; }
export CARGO_TARGET_DIR=${EVENTPIPE_FUZZ_TARGET_DIR:-$HOME/.cache/eventpipe/fuzz-target}

cd fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
cargo +nightly fuzz build >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log" >&2; exit 1; }
echo "fuzz: build took $(($(date +%s) - start)) s"
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  dict=()
  [[ -f "dict/$t.dict" ]] && dict=("-dict=dict/$t.dict")
  echo "fuzz: $t for ${seconds}s"
  cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dict[@]}" 2>"$work/$t.log" || { tail -n 60 "$work/$t.log" >&2; echo "fuzz: $t FAILED" >&2; exit 1; }
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)|(INITED|DONE) +cov' "$work/$t.log" | tail -n 5
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash"
