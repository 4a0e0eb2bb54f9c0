#!/bin/sh
# Fails when clients/js/dist is not what the sources build to (run `npm run build` and commit).
# Needs `npm ci` in clients/js first.
set -eu
cd "$(dirname "$0")/.."
[ -d node_modules/esbuild ] || { echo "run: cd clients/js && npm ci" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
node scripts/build.mjs "$tmp"
for f in eventpipe.min.js eventpipe.mjs; do
  if ! cmp -s "$tmp/$f" "dist/$f"; then
    echo "clients/js/dist/$f is stale: run (cd clients/js && npm run build) and commit it" >&2
    exit 1
  fi
done
echo "clients/js/dist is up to date"
