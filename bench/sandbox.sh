#!/usr/bin/env bash
# The spinlet sandbox's cost: spawn (cold-start) overhead, memory per
# spinlet and request throughput, each sandboxed against the same app run
# as a plain process (`[sandbox] enabled = false`), side by side.
#
#   bash bench/sandbox.sh
#
# Needs root (the sandbox does), wrk, python3, node, nsenter and setsid.
# Both servers listen on 127.0.0.1 only; every loop is bounded; everything
# started is stopped on exit. Results go to docs/BENCHMARKS.md between the
# app's own markers (bench-sandbox-node-app, bench-sandbox-python-app, ...),
# so a run replaces only its app's table. Knobs: SANDBOX_RUNS (40 cold
# starts per side), SANDBOX_ROUNDS (3 wrk rounds per side),
# SANDBOX_PROFILE (release, or debug to measure an existing debug build),
# SANDBOX_APP (an app folder, default examples/node-app), SANDBOX_DOC,
# SANDBOX_CPU_PERCENT, and
# SANDBOX_PERF=1 (a `perf record` of serve and the app during the first
# wrk round per side, summarised by symbol on stderr; files in
# SANDBOX_PERF_DIR, default /tmp). Besides req/s it reports the CPU time
# per request of serve and of the app's processes, which stays comparable
# on a loaded host. serve and wrk each run in a session of their own, so
# the kernel's autogroup scheduler never groups the load generator with
# one side's app (see wrk() in sandbox_bench.py). What the sandbox's CPU
# group alone costs, and what that depends on, is measured by
# bench/sandbox_groups.py (run it with python3; its docstring says how).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
for tool in cargo python3 node wrk nsenter setsid; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "the sandbox needs root" >&2; exit 1; }
# The load before the build, as the report's "load average at start".
SANDBOX_LOADAVG="$(cat /proc/loadavg)"
export SANDBOX_LOADAVG
PROFILE="${SANDBOX_PROFILE:-release}"
case "$PROFILE" in
    release) (cd "$ROOT" && cargo build --release -q -p spinforge) ;;
    debug) (cd "$ROOT" && cargo build -q -p spinforge) ;;
    *) echo "SANDBOX_PROFILE is release or debug" >&2; exit 2 ;;
esac
exec python3 "$HERE/sandbox_bench.py" \
    --bin "$ROOT/target/$PROFILE/spinforge" \
    --profile "$PROFILE" \
    --app "${SANDBOX_APP:-$ROOT/examples/node-app}" \
    --runs "${SANDBOX_RUNS:-40}" \
    --rounds "${SANDBOX_ROUNDS:-3}" \
    --doc "${SANDBOX_DOC:-$ROOT/docs/BENCHMARKS.md}"
