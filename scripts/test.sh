#!/usr/bin/env bash
# Runs every test tier: unit, router, MockCluster sink tests, and end-to-end tests against a real
# Tansu broker with an independent Python consumer. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo run --quiet -- schemas check schemas
cargo test --workspace --all-targets -- --test-threads=4 "$@"
