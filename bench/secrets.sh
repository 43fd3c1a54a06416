#!/usr/bin/env bash
# Secrets costs (issue 8): decrypting a site's 100 secrets at spinlet
# start, and backup/restore of a data directory with 1,000 sites. Prints
# markdown tables. PROFILE=release for release numbers (default: the
# debug build the tests use, which is what was measured in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${PROFILE:-debug}" = release ]; then
  cargo run --quiet --release -p secrets --example secrets_bench
else
  cargo run --quiet -p secrets --example secrets_bench
fi
