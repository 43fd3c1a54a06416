#!/usr/bin/env bash
# Identity costs (issue 5): token verification, bearer authentication,
# logins per second and login memory. Prints markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p identity --example identity_bench
