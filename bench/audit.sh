#!/usr/bin/env bash
# Audit log costs (issue 9): append throughput through the real writer
# (fsync on and off, before/after the page-cache change, batch size,
# sealing of personal fields), the write path taken apart with raw sqlx
# inserts, query latency over EVENTS events, and full-chain verification.
# Prints markdown tables. Usage: bench/audit.sh [EVENTS [SECTION]]
# (EVENTS default 1000000; SECTION `raw` runs only the write-path table,
# `append` only the append table, `noraw` everything but the raw table).
# Run it alone on the host (one bench at a time, e.g. under flock).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p audit --example audit_bench
exec ./target/release/examples/audit_bench "${1:-1000000}" "${2:-all}"
