#!/usr/bin/env bash
# SpinForge's edge next to nginx, on loopback, with the same wrk settings.
#
#   bash bench/run.sh        throughput and latency (2-3 minutes after the
#                            build, more if the host is busy)
#   bash bench/run.sh rss    RSS with 10,000 sites loaded (about 7 minutes)
#   bash bench/run.sh all    both
#
# Results go into docs/BENCHMARKS.md between the bench markers; the raw
# tool output goes to bench/results/ (not committed). Every server this
# script starts listens on 127.0.0.1 only, every request goes to one of
# them, and all of them are stopped on exit. It installs nothing.
#
# Knobs (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (64),
# BENCH_DURATION (10s), BENCH_WARMUP (3s), BENCH_QUIET_WAIT (60, seconds
# to wait for other work on the host to calm down before each run),
# BENCH_SITES (10000), BENCH_CLIENTS (4), BENCH_SKIP_BUILD (unset).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODE="${1:-throughput}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-3s}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-60}"
SITES="${BENCH_SITES:-10000}"
CLIENTS="${BENCH_CLIENTS:-4}"
NGINX_WORKERS=2
DOC="$ROOT/docs/BENCHMARKS.md"
BIN="$ROOT/target/release/spinforge"
EMAIL="bench@example.com"
# A throwaway admin of a throwaway data directory.
PASSWORD="bench-password-$RANDOM$RANDOM"

case "$MODE" in
    throughput | rss | all) ;;
    *)
        echo "usage: bash bench/run.sh [throughput|rss|all]" >&2
        exit 2
        ;;
esac

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---- requirements -----------------------------------------------------------

missing=()
for tool in wrk nginx; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "missing ${missing[*]}; install with: apt-get install -y wrk nginx"
fi
for tool in cargo curl python3 tar; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
done

# ---- processes and cleanup ---------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spinforge-bench.XXXXXX")"
# nginx workers may run as another user (nobody, when started as root):
# they must be able to read the static root under $WORK.
chmod 755 "$WORK"
PIDS=()

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        stop_pid "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
    local keep=() pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        [[ "$pid" == "$1" ]] || keep+=("$pid")
    done
    PIDS=(${keep[@]+"${keep[@]}"})
}

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

# Fills @KEY@ placeholders of a template: render IN OUT KEY=VALUE...
render() {
    local in="$1" out="$2" expr=(-e "") pair
    shift 2
    for pair in "$@"; do
        expr+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    sed "${expr[@]}" "$in" >"$out"
}

# Starts nginx with its own prefix: start_nginx PREFIX; sets NGINX_PID.
start_nginx() {
    local prefix="$1"
    nginx -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
        >"$prefix/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

# Starts `spinforge serve`; sets SF_PID. Waits until the API is ready.
start_spinforge() {
    local data="$1" edge_port="$2" api_port="$3" log="$4"
    SPINFORGE_LOG=warn "$BIN" serve \
        --config "$WORK/spinforge.toml" \
        --data-dir "$data" \
        --listen "127.0.0.1:$edge_port" \
        --api-listen "127.0.0.1:$api_port" \
        >>"$log" 2>&1 &
    SF_PID=$!
    PIDS+=("$SF_PID")
    if ! wait_http "http://127.0.0.1:$api_port/readyz" "127.0.0.1:$api_port"; then
        tail -n 20 "$log" >&2
        die "spinforge did not become ready"
    fi
}

stop_spinforge() {
    stop_pid "$SF_PID"
    forget_pid "$SF_PID"
}

# Creates the admin of a fresh data directory.
create_admin() {
    printf '%s\n' "$PASSWORD" |
        "$BIN" admin create --data-dir "$1" --email "$EMAIL" --password-stdin >/dev/null
}

# Logs in; prints the access token.
login() {
    local api="$1"
    python3 -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "password": sys.stdin.readline().rstrip("\n")}))' \
        "$EMAIL" <<<"$PASSWORD" |
        curl -fsS --max-time 10 -H 'Content-Type: application/json' \
            --data-binary @- "$api/api/v1/auth/login" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# api_post API TOKEN PATH CONTENT_TYPE BODY_FILE
api_post() {
    curl -fsS --max-time 60 -o /dev/null -H "Authorization: Bearer $2" \
        -H "Content-Type: $4" --data-binary "@$5" "$1$3"
}

vm_kib() {
    awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"
}

cpu_sample() { python3 "$HERE/cpu_sample.py"; }

# The share (%) of the host's CPU that processes outside this benchmark
# used between two cpu_sample outputs.
other_share() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        total = y[2] - x[2]; other = (y[1] - x[1]) - (y[3] - x[3])
        if (other < 0) other = 0
        printf "%.0f", (total > 0 ? 100 * other / total : 0)
    }'
}

# Waits (at most QUIET_WAIT seconds) until other work has used under 10%
# of the host for 3 seconds in a row, so it does not skew the next run.
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

meta_common() {
    echo "DATE=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "NPROC=$(nproc)"
    echo "KERNEL=$(uname -sr)"
    echo "CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "COMMIT=$COMMIT"
}

# ---- build -------------------------------------------------------------------

# Read before the build, so it names the code that was built.
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
    say "building the release binary"
    (cd "$ROOT" && cargo build --release -p spinforge)
fi
[[ -x "$BIN" ]] || die "no binary at target/release/spinforge"
render "$HERE/spinforge.toml.in" "$WORK/spinforge.toml"

# ---- throughput and latency --------------------------------------------------

run_throughput() {
    local up_port edge_port api_port proxy_port static_port
    read -r up_port edge_port api_port proxy_port static_port <<<"$(free_ports 5)"
    local results="$WORK/results"
    mkdir -p "$results"

    say "static files: 1 KiB and 1 MiB of random bytes"
    local static="$WORK/static"
    mkdir -p "$static"
    head -c 1024 /dev/urandom >"$static/1k.bin"
    head -c 1048576 /dev/urandom >"$static/1m.bin"
    chmod 755 "$static"
    chmod 644 "$static"/*.bin

    say "upstream nginx (1 worker) on 127.0.0.1:$up_port"
    local up="$WORK/nginx-upstream"
    mkdir -p "$up"
    render "$HERE/nginx-upstream.conf.in" "$up/nginx.conf" PREFIX="$up" PORT="$up_port"
    start_nginx "$up"
    wait_http "http://127.0.0.1:$up_port/" x || die "upstream nginx did not start: $(cat "$up/error.log")"

    say "compared nginx ($NGINX_WORKERS workers) on 127.0.0.1:$proxy_port and :$static_port"
    local ng="$WORK/nginx-edge"
    mkdir -p "$ng"
    render "$HERE/nginx-edge.conf.in" "$ng/nginx.conf" PREFIX="$ng" \
        WORKERS="$NGINX_WORKERS" UPSTREAM_PORT="$up_port" PROXY_PORT="$proxy_port" \
        STATIC_PORT="$static_port" STATIC_ROOT="$static"
    start_nginx "$ng"
    wait_http "http://127.0.0.1:$proxy_port/" x || die "nginx did not start: $(cat "$ng/error.log")"

    say "SpinForge: edge on 127.0.0.1:$edge_port, API on 127.0.0.1:$api_port"
    local data="$WORK/sf-data" api="http://127.0.0.1:$api_port"
    create_admin "$data"
    start_spinforge "$data" "$edge_port" "$api_port" "$WORK/spinforge.log"
    local token
    token="$(login "$api")"
    printf '{"domain":"proxy.bench.localhost","type":"proxy","upstream":"http://127.0.0.1:%s"}' \
        "$up_port" >"$WORK/proxy-site.json"
    api_post "$api" "$token" /api/v1/sites application/json "$WORK/proxy-site.json"
    printf '{"domain":"static.bench.localhost","type":"static"}' >"$WORK/static-site.json"
    api_post "$api" "$token" /api/v1/sites application/json "$WORK/static-site.json"
    tar -C "$static" -czf "$WORK/static.tar.gz" 1k.bin 1m.bin
    api_post "$api" "$token" /api/v1/sites/static.bench.localhost/releases \
        application/gzip "$WORK/static.tar.gz"

    # key|url|Host header|expected body bytes
    local runs=(
        "direct|http://127.0.0.1:$up_port/|proxy.bench.localhost|100"
        "sf-proxy|http://127.0.0.1:$edge_port/|proxy.bench.localhost|100"
        "nginx-proxy|http://127.0.0.1:$proxy_port/|proxy.bench.localhost|100"
        "sf-1k|http://127.0.0.1:$edge_port/1k.bin|static.bench.localhost|1024"
        "nginx-1k|http://127.0.0.1:$static_port/1k.bin|static.bench.localhost|1024"
        "sf-1m|http://127.0.0.1:$edge_port/1m.bin|static.bench.localhost|1048576"
        "nginx-1m|http://127.0.0.1:$static_port/1m.bin|static.bench.localhost|1048576"
    )
    local run key url host size got before after
    for run in "${runs[@]}"; do
        IFS='|' read -r key url host size <<<"$run"
        got="$(curl -fsS --max-time 5 -H "Host: $host" -o /dev/null -w '%{size_download}' "$url")" ||
            die "$key: $url does not answer 200"
        [[ "$got" == "$size" ]] || die "$key: expected $size body bytes, got $got"
    done

    # Other work on the host skews every number; record how busy it was.
    local load_before
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    say "load average before the runs: $load_before"
    # A run during which other work took more than 10% of the host is
    # repeated once, and the try with less other work is kept. The rule
    # looks only at the other work, never at the result.
    local wrk_args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
    local attempt share kept
    for run in "${runs[@]}"; do
        IFS='|' read -r key url host size <<<"$run"
        kept=""
        for attempt in 1 2; do
            wait_quiet
            say "wrk: $key ($url), try $attempt"
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Host: $host" "$url" >/dev/null
            sleep 1
            before="$(cpu_sample)"
            wrk "${wrk_args[@]}" -H "Host: $host" "$url" | tee "$results/$key.try$attempt" >&2
            after="$(cpu_sample)"
            share="$(other_share "$before" "$after")"
            if [[ -z "$kept" ]] || ((share < kept)); then
                kept="$share"
                cp "$results/$key.try$attempt" "$results/$key.txt"
                echo "$share $attempt" >"$results/$key.other"
            fi
            ((share > 10)) || break
            ((attempt == 2)) || say "other work took ${share}% of the host during $key; repeating it"
        done
    done

    {
        meta_common
        echo "COMMAND=bash bench/run.sh"
        echo "NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "WRK_VERSION=$({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')"
        echo "RUSTC=$(rustc --version 2>/dev/null | awk '{ print $1, $2 }')"
        echo "WRK_ARGS=wrk ${wrk_args[*]}"
        echo "WARMUP=$WARMUP"
        echo "SF_WORKERS=$(nproc)"
        echo "NGINX_WORKERS=$NGINX_WORKERS"
        echo "LOAD_BEFORE=$load_before"
        echo "LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$results/meta.txt"

    stop_spinforge
    say "writing docs/BENCHMARKS.md (raw results in bench/results/throughput)"
    rm -rf "$HERE/results/throughput"
    mkdir -p "$HERE/results"
    cp -r "$results" "$HERE/results/throughput"
    python3 "$HERE/report.py" throughput "$results" "$DOC"
}

# ---- RSS with many sites -----------------------------------------------------

run_rss() {
    local edge_port api_port
    read -r edge_port api_port <<<"$(free_ports 2)"
    local data="$WORK/rss-data" api="http://127.0.0.1:$api_port"
    local log="$WORK/spinforge-rss.log" out="$WORK/rss.txt"

    say "SpinForge on a fresh data directory (edge :$edge_port, API :$api_port)"
    create_admin "$data"
    start_spinforge "$data" "$edge_port" "$api_port" "$log"
    sleep 2
    {
        meta_common
        echo "COMMAND=bash bench/run.sh rss"
        echo "SITES=$SITES"
        echo "CLIENTS=$CLIENTS"
        echo "RSS_EMPTY_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_EMPTY_KB=$(vm_kib "$SF_PID" VmHWM)"
    } >"$out"

    say "deploying $SITES sites with $CLIENTS concurrent clients"
    printf '%s\n' "$PASSWORD" |
        python3 "$HERE/deploy_many.py" "$api" "$EMAIL" "$SITES" "$CLIENTS" rss.localhost |
        tee "$WORK/deploy.txt" >&2
    grep -E '^DEPLOY_(SECONDS|STEP|RATE_FIRST|RATE_LAST)=' "$WORK/deploy.txt" >>"$out"
    sleep 2
    echo "RSS_DEPLOYED_KB=$(vm_kib "$SF_PID" VmRSS)" >>"$out"
    echo "HWM_DEPLOYED_KB=$(vm_kib "$SF_PID" VmHWM)" >>"$out"

    say "restarting, so the route table is loaded from the store"
    stop_spinforge
    local started ended
    started="$(date +%s.%N)"
    start_spinforge "$data" "$edge_port" "$api_port" "$log"
    ended="$(date +%s.%N)"
    sleep 2
    {
        echo "RESTART_SECONDS=$(awk -v a="$started" -v b="$ended" 'BEGIN { print b - a }')"
        echo "RSS_RESTART_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_RESTART_KB=$(vm_kib "$SF_PID" VmHWM)"
    } >>"$out"

    # One request to each of 100 sites spread over the range.
    local probes=100 ok=0 i n code
    for ((i = 0; i < probes; i++)); do
        n=$((i * SITES / probes))
        code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' \
            -H "Host: $(printf 's%05d.rss.localhost' "$n")" "http://127.0.0.1:$edge_port/")" || true
        [[ "$code" == 200 ]] && ok=$((ok + 1))
    done
    {
        echo "PROBES=$probes"
        echo "PROBES_OK=$ok"
        echo "RSS_PROBED_KB=$(vm_kib "$SF_PID" VmRSS)"
        echo "HWM_PROBED_KB=$(vm_kib "$SF_PID" VmHWM)"
        echo "DATA_DIR_KB=$(du -sk "$data" | awk '{ print $1 }')"
        echo "DATA_DIR_ENTRIES=$(find "$data" | wc -l)"
    } >>"$out"
    stop_spinforge

    say "writing docs/BENCHMARKS.md (raw results in bench/results/rss.txt)"
    mkdir -p "$HERE/results"
    cp "$out" "$HERE/results/rss.txt"
    cp "$WORK/deploy.txt" "$HERE/results/rss-deploy.txt"
    python3 "$HERE/report.py" rss "$out" "$DOC"
    [[ "$ok" == "$probes" ]] || die "only $ok of $probes probe requests got 200"
}

case "$MODE" in
    throughput) run_throughput ;;
    rss) run_rss ;;
    all)
        run_throughput
        run_rss
        ;;
esac
