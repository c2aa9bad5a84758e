#!/usr/bin/env bash
# The test suite: `cargo test --workspace` (extra arguments are passed on), then one line that
# counts the tests skipped because this machine lacks what they need (a Docker Engine, Chromium),
# with the list. Under CI=true such a test fails instead of skipping (node/testing/src/skip.rs).
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export SHOAL_SKIP_LOG="$log"

cargo test --workspace "$@"
status=$?

skipped=$(grep -c . "$log")
echo "skipped: $skipped tests (for want of a Docker Engine or Chromium; CI=true fails them instead)"
sort "$log" | sed 's/^/  /'
exit "$status"
