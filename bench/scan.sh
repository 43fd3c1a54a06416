#!/usr/bin/env bash
# Cost of the supply-chain scan (issue #11): `vulndb import` of a synthetic
# OSV folder and `scan` of a bundle with a large package-lock.json, each
# timed over three runs (median). No peer: osv-scanner and npm audit need
# their online databases, which this machine cannot reach.
#
#   bash bench/scan.sh                 uses target/release/spinforge (built
#                                      if missing)
#   SPINFORGE_BIN=target/debug/spinforge bash bench/scan.sh
#
# Knobs: BENCH_ADVISORIES (20000), BENCH_PACKAGES (5000). Everything is
# written to a temporary folder that is removed on exit; nothing listens.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${SPINFORGE_BIN:-$ROOT/target/release/spinforge}"
ADVISORIES="${BENCH_ADVISORIES:-20000}"
PACKAGES="${BENCH_PACKAGES:-5000}"
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo build --release -p spinforge)
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK" "$ADVISORIES" "$PACKAGES" <<'PY'
import json, os, sys
work, advisories, packages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
osv = os.path.join(work, "osv")
os.makedirs(osv)
for i in range(advisories):
    record = {
        "id": f"GHSA-bench-{i}",
        "modified": "2026-01-01T00:00:00Z",
        "summary": "synthetic advisory",
        "affected": [{
            "package": {"ecosystem": "npm", "name": f"pkg{i % (packages * 2)}"},
            "ranges": [{"type": "SEMVER", "events": [
                {"introduced": "0"}, {"fixed": f"1.{i % 7}.0"},
                {"introduced": "2.0.0"}, {"last_affected": "2.3.1"}]}],
        }],
        "database_specific": {"severity": ["LOW", "MODERATE", "HIGH", "CRITICAL"][i % 4]},
    }
    with open(os.path.join(osv, f"GHSA-bench-{i}.json"), "w") as f:
        json.dump(record, f)
app = os.path.join(work, "app")
os.makedirs(app)
lock = {"name": "app", "lockfileVersion": 3, "packages": {"": {"name": "app"}}}
for i in range(packages):
    lock["packages"][f"node_modules/pkg{i}"] = {"version": f"1.{i % 9}.{i % 5}"}
with open(os.path.join(app, "package-lock.json"), "w") as f:
    json.dump(lock, f, indent=2)
PY

median() { sort -n | sed -n 2p; }
elapsed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

import_s=$(for _ in 1 2 3; do rm -rf "$WORK/data"; elapsed "$BIN" vulndb import "$WORK/osv" --data-dir "$WORK/data"; done | median)
"$BIN" vulndb import "$WORK/osv" --data-dir "$WORK/data" >/dev/null
scan_s=$(for _ in 1 2 3; do elapsed "$BIN" scan "$WORK/app" --data-dir "$WORK/data" --json; done | median)
findings=$({ "$BIN" scan "$WORK/app" --data-dir "$WORK/data" --json || true; } | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["findings"]))')

echo "binary: $BIN"
echo "vulndb import of $ADVISORIES OSV files: ${import_s}s (median of 3)"
echo "scan of $PACKAGES packages against $ADVISORIES advisories: ${scan_s}s (median of 3), $findings findings"
