#!/usr/bin/env bash
# Process sites ("spinlets") on loopback: cold-start overhead, throughput
# through the edge against the app called directly, and the hub's memory
# with many process sites.
#
#   bash bench/spinlets.sh              all three (about 10 minutes)
#   bash bench/spinlets.sh coldstart    1. cold-start overhead
#   bash bench/spinlets.sh throughput   2. edge vs direct, node-app
#   bash bench/spinlets.sh rss          3. RSS with 1,000 process sites
#
# Results go into docs/BENCHMARKS.md between the bench-spinlets markers
# (the section is appended if the markers are absent). Every server this
# script starts listens on 127.0.0.1 only, every request goes to one of
# them, every loop is bounded, and every process it starts (the app
# processes included) is stopped on exit. It installs nothing.
#
# Knobs (environment): SPINLET_RUNS (20 cold starts per app),
# SPINLET_SITES (1000), SPINLET_AWAKE (50), SPINLET_CLIENTS (4 concurrent
# deploys), SPINLET_IDLE (30, idle_timeout_secs of the many-sites app),
# SPINLET_MAX_RUNNING (200, deploys pause while more apps run),
# SPINLET_QUIET_WAIT (30, seconds to wait for the host to calm down before
# a measurement), SPINLET_SKIP_BUILD (unset), SPINLET_KEEP_RESULTS (a
# folder to copy the raw results to), SPINLET_DOC (docs/BENCHMARKS.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODE="${1:-all}"
RUNS="${SPINLET_RUNS:-20}"
SITES="${SPINLET_SITES:-1000}"
AWAKE="${SPINLET_AWAKE:-50}"
CLIENTS="${SPINLET_CLIENTS:-4}"
IDLE="${SPINLET_IDLE:-30}"
MAX_RUNNING="${SPINLET_MAX_RUNNING:-200}"
QUIET_WAIT="${SPINLET_QUIET_WAIT:-30}"
WRK_ARGS=(-t2 -c32 -d10s --latency)
WARMUP=3s
DOC="${SPINLET_DOC:-$ROOT/docs/BENCHMARKS.md}"
BIN="$ROOT/target/release/spinforge"
TOOL="$HERE/spinlet_bench.py"
EMAIL="bench@example.com"
# A throwaway admin of a throwaway data directory.
PASSWORD="bench-password-$RANDOM$RANDOM"

case "$MODE" in
    coldstart | throughput | rss | all) ;;
    *)
        echo "usage: bash bench/spinlets.sh [coldstart|throughput|rss|all]" >&2
        exit 2
        ;;
esac

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

for tool in cargo curl python3 rustc node wrk tar; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool (wrk: apt-get install -y wrk)"
done

# ---- processes and cleanup ---------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spinforge-spinlets.XXXXXX")"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
SERVE_PIDS=()  # every `spinforge serve` started, running or not
DATA_DIRS=()   # their data directories, for the leftover check

# Stops a serve with SIGTERM (it stops its apps, each within its grace
# period), waiting up to 40 s before SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 400; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# App processes of our data directories still alive (recorded in their
# running.json with their SPINFORGE_SPINLET tag, or given as pids).
leftovers() {
    local dir out=""
    for dir in ${DATA_DIRS[@]+"${DATA_DIRS[@]}"}; do
        out+="$(python3 "$TOOL" leftovers --data-dir "$dir" "$@")"$'\n'
    done
    printf '%s' "$out" | awk 'NF'
}

cleanup() {
    local pid left
    if [[ -n "$CHILD" ]]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    for pid in ${SERVE_PIDS[@]+"${SERVE_PIDS[@]}"}; do
        stop_pid "$pid"
    done
    left="$(leftovers ${APP_PIDS[@]+"${APP_PIDS[@]}"} || true)"
    if [[ -n "$left" ]]; then
        echo "warning: app processes outlived serve; killing: $(echo $left)" >&2
        leftovers --kill ${APP_PIDS[@]+"${APP_PIDS[@]}"} >/dev/null || true
    fi
    if [[ -n "${SPINLET_KEEP_RESULTS:-}" ]]; then
        mkdir -p "$SPINLET_KEEP_RESULTS"
        cp -r "$RESULTS"/. "$SPINLET_KEEP_RESULTS"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
APP_PIDS=()
CHILD=""
# Runs a long step in the background and waits for it, so a TERM or INT to
# this script is acted on at once; cleanup then stops the step too.
run() {
    "$@" &
    CHILD=$!
    wait "$CHILD"
    CHILD=""
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints N distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits (bounded, about 20 s) until URL answers 200 with Host HOST.
wait_http() {
    local url="$1" host="$2" i
    for ((i = 0; i < 200; i++)); do
        if curl -fsS -o /dev/null --max-time 1 -H "Host: $host" "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

vm_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

# The interpreter python3 really is (not a version manager's shim, which
# would add its own start-up to every Python app start): its folder goes
# first in PATH for serve, the apps and the direct runs alike.
PYTHON_REAL="$(python3 -c 'import sys; print(sys.executable)')"
APP_PATH="$(dirname "$PYTHON_REAL"):$PATH"
[[ -x "$(dirname "$PYTHON_REAL")/python3" ]] || APP_PATH="$PATH"

# Starts `spinforge serve` on a data directory; sets SF_PID, EDGE, API,
# EDGE_PORT. Waits until the API is ready.
start_serve() {
    local data="$1" log="$2" api_port
    read -r EDGE_PORT api_port <<<"$(free_ports 2)"
    EDGE="http://127.0.0.1:$EDGE_PORT"
    API="http://127.0.0.1:$api_port"
    # warn, plus the supervisor's one line per app start and stop (no
    # per-request logging), to see where a slow cold start spent its time.
    PATH="$APP_PATH" SPINFORGE_LOG="warn,spinlet=info" "$BIN" serve \
        --data-dir "$data" \
        --listen "127.0.0.1:$EDGE_PORT" \
        --api-listen "127.0.0.1:$api_port" \
        >>"$log" 2>&1 &
    SF_PID=$!
    SERVE_PIDS+=("$SF_PID")
    export SPINLET_SERVE_PIDS="${SERVE_PIDS[*]}"
    if ! wait_http "$API/readyz" "127.0.0.1:$api_port"; then
        tail -n 20 "$log" >&2
        die "spinforge did not become ready"
    fi
}

# Stops the current serve; fails if any of its apps outlives it.
stop_serve() {
    local data="$1" apps left
    apps="$(python3 - "$SF_PID" <<'EOF'
import os, sys
parent = sys.argv[1]
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        env = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        continue
    if rest[1] == parent and b"SPINFORGE_SPINLET=" in env:
        print(pid)
EOF
)"
    # shellcheck disable=SC2206
    APP_PIDS+=($apps)
    stop_pid "$SF_PID"
    left="$(python3 "$TOOL" leftovers --data-dir "$data" $apps)"
    [[ -z "$left" ]] || die "app processes outlived serve: $(echo $left)"
}

create_admin() {
    printf '%s\n' "$PASSWORD" |
        "$BIN" admin create --data-dir "$1" --email "$EMAIL" --password-stdin >/dev/null
}

# The CLI, with its login kept in a throwaway config folder.
cli() { XDG_CONFIG_HOME="$WORK/config" SPINFORGE_API="$API" "$BIN" "$@"; }
cli_login() { printf '%s\n' "$PASSWORD" | cli login --email "$EMAIL" --password-stdin >/dev/null; }
# The helpers that log in read the password from this file (in WORK, 0700).
PASSWORD_FILE="$WORK/password"
(umask 077 && printf '%s\n' "$PASSWORD" >"$PASSWORD_FILE")
# A command, not a function, so `run` can stop the python process itself.
TOOL_AUTH=(env PATH="$APP_PATH" python3 "$TOOL")

cpu_sample() { python3 "$TOOL" cpu; }
other_share() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        total = y[2] - x[2]; other = (y[1] - x[1]) - (y[3] - x[3])
        if (other < 0) other = 0
        printf "%.0f", (total > 0 ? 100 * other / total : 0)
    }'
}

# Waits (at most QUIET_WAIT seconds) until other work has used under 10% of
# the host for 3 seconds in a row.
wait_quiet() {
    local i before after share quiet=0
    for ((i = 0; i < QUIET_WAIT; i++)); do
        before="$(cpu_sample)"
        sleep 1
        after="$(cpu_sample)"
        share="$(other_share "$before" "$after")"
        if ((share < 10)); then
            quiet=$((quiet + 1))
            ((quiet < 3)) || return 0
        else
            quiet=0
            ((i > 0)) || say "other work uses ${share}% of the host; waiting up to ${QUIET_WAIT}s"
        fi
    done
    say "the host is still busy; running anyway (see the Other load column)"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- build and app bundles -----------------------------------------------------

if [[ -z "${SPINLET_SKIP_BUILD:-}" ]]; then
    say "building the release binary"
    (cd "$ROOT" && cargo build --release -p spinforge)
fi
[[ -x "$BIN" ]] || die "no binary at target/release/spinforge"

APPS="$WORK/apps"
mkdir -p "$APPS/rust" "$APPS/python" "$APPS/node" "$APPS/tiny"
say "compiling examples/rust-app with rustc -O"
rustc -O -o "$APPS/rust/server" "$ROOT/examples/rust-app/main.rs"
cp "$ROOT/examples/python-app/app.py" "$ROOT/examples/python-app/spinforge.toml" "$APPS/python/"
cp "$ROOT/examples/node-app/server.js" "$ROOT/examples/node-app/package.json" "$APPS/node/"
# node directly rather than the detected `npm start`, and awake for the runs.
cat >"$APPS/node/spinforge.toml" <<'EOF'
[app]
command = ["node", "server.js"]
health_path = "/health"
idle_timeout_secs = 900
EOF
cat >"$APPS/tiny/app.py" <<'EOF'
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
EOF
cat >"$APPS/tiny/spinforge.toml" <<EOF
[app]
command = ["python3", "app.py"]
idle_timeout_secs = $IDLE
EOF

meta_common() {
    echo "DATE=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "NPROC=$(nproc)"
    echo "KERNEL=$(uname -sr)"
    echo "CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "MEM_TOTAL_KB=$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)"
    echo "COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    # Product files with uncommitted changes (the build includes them).
    echo "DIRTY=$(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null |
        awk '{ print $2 }' | tr '\n' ' ')"
    echo "RUSTC=$(rustc --version | awk '{ print $1, $2 }')"
    echo "PYTHON=$(PATH="$APP_PATH" python3 --version 2>&1)"
    echo "NODE=$(node --version)"
    echo "WRK=$({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')"
    echo "COMMAND=bash bench/spinlets.sh $MODE"
}
meta_common >"$RESULTS/meta.txt"

# ---- 1 and 2: one serve with three process sites -------------------------------

run_small() {
    local data="$WORK/data-small" log="$WORK/serve-small.log"
    DATA_DIRS+=("$data")
    create_admin "$data"
    start_serve "$data" "$log"
    say "serve pid $SF_PID: edge $EDGE, API $API"
    cli_login
    say "deploying rust-app, python-app and node-app with the CLI"
    cli deploy "$APPS/rust" --domain rust.spinlets.localhost --type process >/dev/null
    cli deploy "$APPS/python" --domain python.spinlets.localhost --type process >/dev/null
    cli deploy "$APPS/node" --domain node.spinlets.localhost --type process >/dev/null

    if [[ "$MODE" == all || "$MODE" == coldstart ]]; then
        run_coldstart
    fi
    if [[ "$MODE" == all || "$MODE" == throughput ]]; then
        run_throughput
    fi
    stop_serve "$data"
    mkdir -p "$RESULTS/logs"
    cp "$log" "$RESULTS/logs/"
    for site in rust python node; do
        cp "$data/spinlets/logs/$site.spinlets.localhost/app.log" \
            "$RESULTS/logs/$site-app.log" || true
    done
}

run_coldstart() {
    local before after
    wait_quiet
    echo "COLD_LOAD_BEFORE=$(loadavg)" >>"$RESULTS/meta.txt"
    before="$(cpu_sample)"
    say "cold starts: rust-app, $RUNS runs"
    run "${TOOL_AUTH[@]}" coldstart --api "$API" --email "$EMAIL" \
        --password-file "$PASSWORD_FILE" --edge-port "$EDGE_PORT" \
        --domain rust.spinlets.localhost --label rust-app --app-dir "$APPS/rust" \
        --argv '["./server"]' --runs "$RUNS" --out "$RESULTS/coldstart-rust.json"
    say "cold starts: python-app, $RUNS runs"
    run "${TOOL_AUTH[@]}" coldstart --api "$API" --email "$EMAIL" \
        --password-file "$PASSWORD_FILE" --edge-port "$EDGE_PORT" \
        --domain python.spinlets.localhost --label python-app --app-dir "$APPS/python" \
        --argv '["python3", "app.py"]' --env '{"GREETING": "hello from a Python spinlet"}' \
        --runs "$RUNS" --out "$RESULTS/coldstart-python.json"
    after="$(cpu_sample)"
    echo "COLD_OTHER=$(other_share "$before" "$after")" >>"$RESULTS/meta.txt"
    echo "COLD_LOAD_AFTER=$(loadavg)" >>"$RESULTS/meta.txt"
}

run_throughput() {
    local domain=node.spinlets.localhost pid port url key round before after
    # Wake it (the cold-start runs may have left it idle) and find its port.
    curl -fsS --max-time 30 -o /dev/null -H "Host: $domain" "$EDGE/"
    read -r pid port <<<"$(cli status "$domain" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["sites"][0].get("spinlet") or {}
assert s.get("state") == "running", s
print(s["pid"], s["port"])')"
    say "node-app runs as pid $pid on port $port"
    # The same request to the same process, once through the edge, once not.
    for url in "http://127.0.0.1:$port/" "$EDGE/"; do
        curl -fsS --max-time 5 -H "Host: $domain" "$url" | grep -q 'hello from a Node spinlet' ||
            die "$url does not answer like the node-app"
    done
    echo "WRK_ARGS=wrk ${WRK_ARGS[*]} -H 'Host: $domain' URL" >>"$RESULTS/meta.txt"
    echo "WARMUP=$WARMUP" >>"$RESULTS/meta.txt"
    echo "TP_LOAD_BEFORE=$(loadavg)" >>"$RESULTS/meta.txt"
    # Two rounds, alternating, so drift on the host shows.
    for round in 1 2; do
        for key in direct edge; do
            url="http://127.0.0.1:$port/"
            [[ "$key" == edge ]] && url="$EDGE/"
            wait_quiet
            say "wrk round $round: $key ($url)"
            run wrk -t2 -c32 -d"$WARMUP" -H "Host: $domain" "$url" >/dev/null
            sleep 1
            before="$(cpu_sample)"
            run wrk "${WRK_ARGS[@]}" -H "Host: $domain" "$url" >"$RESULTS/wrk-$key-$round.txt"
            cat "$RESULTS/wrk-$key-$round.txt" >&2
            after="$(cpu_sample)"
            other_share "$before" "$after" >"$RESULTS/wrk-$key-$round.other"
        done
    done
    echo "TP_LOAD_AFTER=$(loadavg)" >>"$RESULTS/meta.txt"
    cli status "$domain" --json >"$RESULTS/node-status.json"
}

# ---- 3: memory with many process sites -------------------------------------------

run_rss() {
    local data="$WORK/data-rss" log="$WORK/serve-rss.log" out="$RESULTS/rss.txt"
    local suffix=many.spinlets.localhost indexes i started ended left
    DATA_DIRS+=("$data")
    create_admin "$data"
    start_serve "$data" "$log"
    say "serve pid $SF_PID: edge $EDGE, API $API"
    sleep 2
    {
        echo "RSS_LOAD_BEFORE=$(loadavg)"
        echo "SITES=$SITES"
        echo "AWAKE=$AWAKE"
        echo "CLIENTS=$CLIENTS"
        echo "IDLE=$IDLE"
        echo "MAX_RUNNING=$MAX_RUNNING"
        echo "RSS_EMPTY_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_EMPTY_KB=$(vm_kib "$SF_PID" VmHWM)"
    } >"$out"

    say "deploying $SITES process sites, $CLIENTS at a time (each deploy starts the app once)"
    run "${TOOL_AUTH[@]}" deploy --api "$API" --email "$EMAIL" \
        --password-file "$PASSWORD_FILE" --serve-pid "$SF_PID" \
        --app-dir "$APPS/tiny" --count "$SITES" --workers "$CLIENTS" --suffix "$suffix" \
        --max-running "$MAX_RUNNING" --budget 600 >"$WORK/deploy.txt"
    cat "$WORK/deploy.txt" >&2
    cat "$WORK/deploy.txt" >>"$out"
    {
        echo "RSS_DEPLOYED_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_DEPLOYED_KB=$(vm_kib "$SF_PID" VmHWM)"
        python3 "$TOOL" apps --serve-pid "$SF_PID" | sed 's/^/DEPLOYED_/'
    } >>"$out"

    say "waiting for the deploy-started apps to stop (idle timeout ${IDLE}s)"
    if ! run python3 "$TOOL" wait-apps --serve-pid "$SF_PID" --max 0 \
        --timeout $((IDLE + 60)) >"$WORK/left.txt"; then
        left="$(cat "$WORK/left.txt")"
        ((left < 5)) || die "$left apps still running"
    fi
    sleep 2
    {
        echo "RSS_IDLE_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_IDLE_KB=$(vm_kib "$SF_PID" VmHWM)"
        python3 "$TOOL" apps --serve-pid "$SF_PID" | sed 's/^/IDLE_/'
    } >>"$out"

    # AWAKE site numbers spread evenly over 0..SITES-1.
    indexes="$(awk -v n="$SITES" -v k="$AWAKE" 'BEGIN {
        for (i = 0; i < k; i++) printf "%s%d", (i ? "," : ""), int(i * n / k)
    }')"
    wake_and_measure "$suffix" "$indexes" AWAKE >>"$out"

    say "restarting serve, so the $SITES sites are registered from the store"
    stop_serve "$data"
    started="$(date +%s.%N)"
    start_serve "$data" "$log"
    ended="$(date +%s.%N)"
    sleep 2
    {
        echo "RESTART_SECONDS=$(awk -v a="$started" -v b="$ended" 'BEGIN { print b - a }')"
        echo "RSS_RESTART_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_RESTART_KB=$(vm_kib "$SF_PID" VmHWM)"
        echo "RESTART_FDS=$(find "/proc/$SF_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)"
        echo "RESTART_THREADS=$(vm_kib "$SF_PID" Threads)"
        python3 "$TOOL" apps --serve-pid "$SF_PID" | sed 's/^/RESTART_/'
    } >>"$out"
    wake_and_measure "$suffix" "$indexes" AWAKE2 >>"$out"
    {
        echo "DATA_DIR_KB=$(du -sk "$data" | awk '{ print $1 }')"
        echo "RSS_LOAD_AFTER=$(loadavg)"
    } >>"$out"
    stop_serve "$data"
}

# Wakes the given sites through the edge, then records the serve's memory
# and its apps' at once (the apps stay up for IDLE seconds).
wake_and_measure() {
    local suffix="$1" indexes="$2" prefix="$3" apps count
    say "waking $AWAKE sites through the edge"
    python3 "$TOOL" wake --edge-port "$EDGE_PORT" --suffix "$suffix" --indexes "$indexes" \
        --workers 4 | sed "s/^/${prefix}_/"
    sleep 1
    apps="$(python3 "$TOOL" apps --serve-pid "$SF_PID")"
    echo "${prefix}_RSS_KB=$(vm_kib "$SF_PID" VmRSS)"
    echo "${prefix}_HWM_KB=$(vm_kib "$SF_PID" VmHWM)"
    echo "${prefix}_THREADS=$(vm_kib "$SF_PID" Threads)"
    echo "${prefix}_FDS=$(find "/proc/$SF_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)"
    echo "$apps" | sed "s/^/${prefix}_/"
    count="$(echo "$apps" | awk -F= '$1 == "APPS" { print $2 }')"
    ((count >= AWAKE)) || die "only $count apps run after waking $AWAKE"
    say "serve VmRSS $(vm_kib "$SF_PID" VmRSS) KiB with $count apps running"
}

START_SECONDS=$SECONDS
echo "LOAD_BEFORE=$(loadavg)" >>"$RESULTS/meta.txt"
case "$MODE" in
    coldstart | throughput) run_small ;;
    rss) run_rss ;;
    all)
        run_small
        run_rss
        ;;
esac
{
    echo "LOAD_AFTER=$(loadavg)"
    echo "ELAPSED_SECONDS=$((SECONDS - START_SECONDS))"
} >>"$RESULTS/meta.txt"

say "writing docs/BENCHMARKS.md"
python3 "$HERE/spinlet_report.py" "$RESULTS" "$DOC"
