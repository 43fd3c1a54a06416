#!/usr/bin/env bash
# The HTTPS keep-alive proxy measure of bench/tls.sh, for two SpinForge
# binaries and nginx at once, in alternating rounds: on a busy host the
# three see the same background load, so their ratios stay comparable
# even when the absolute numbers do not. It also prints each server's CPU
# time (user + system, all its processes) per 1,000 requests, which the
# background load barely moves.
#
#   bash bench/tls_ab.sh OLD_BINARY NEW_BINARY
#
# All three terminate TLS with the same ECDSA P-256 certificate in front
# of the same upstream (an nginx answering 100 bytes) and listen on
# 127.0.0.1 only; everything is stopped on exit. It writes nothing into
# docs/ and installs nothing.
#
# Every server and the client run in sessions of their own (setsid), as
# in bench/tls.sh: the kernel's autogroup scheduler must not put the
# client and one server in one scheduling group.
#
# Knobs (environment): BENCH_ROUNDS (3), BENCH_THREADS (2),
# BENCH_CONNECTIONS (64), BENCH_DURATION (5s), BENCH_PLAIN (unset; 1: the
# same comparison over plain HTTP, nginx as bench/run.sh configures it),
# BENCH_CALLGRIND (unset; 1: instead of wrk rounds, count the user-space
# instructions each SpinForge binary executes per proxied request under
# valgrind's callgrind, BENCH_REQUESTS (2000) requests over 4 keep-alive
# connections after 200 to warm up; the count repeats to within about
# 0.5% whatever else the host does, where requests/s swing by 10%).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS="${BENCH_ROUNDS:-3}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
DURATION="${BENCH_DURATION:-5s}"
[[ $# -eq 2 ]] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
BINS=("$1" "$2")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spinforge-tls-ab.XXXXXX")"
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

ports() {
    python3 -c 'import socket
s=[socket.socket() for _ in range(int(__import__("sys").argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
wait_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$1" \
            2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}
render() {
    local in="$1" out="$2" expr=(-e "") pair
    shift 2
    for pair in "$@"; do
        expr+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    sed "${expr[@]}" "$in" >"$out"
}

PLAIN="${BENCH_PLAIN:-}"
read -r UPSTREAM NGINX STATIC < <(ports 3)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/bench.key" -out "$WORK/bench.crt" -days 30 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" 2>/dev/null
mkdir -p "$WORK/upstream" "$WORK/nginx"
render "$HERE/nginx-upstream.conf.in" "$WORK/upstream/nginx.conf" \
    "PREFIX=$WORK/upstream" "PORT=$UPSTREAM"
if [[ -n "$PLAIN" ]]; then
    mkdir -p "$WORK/static"
    render "$HERE/nginx-edge.conf.in" "$WORK/nginx/nginx.conf" "PREFIX=$WORK/nginx" \
        "WORKERS=2" "UPSTREAM_PORT=$UPSTREAM" "PROXY_PORT=$NGINX" \
        "STATIC_PORT=$STATIC" "STATIC_ROOT=$WORK/static"
else
    render "$HERE/nginx-tls.conf.in" "$WORK/nginx/nginx.conf" "PREFIX=$WORK/nginx" \
        "WORKERS=2" "UPSTREAM_PORT=$UPSTREAM" "TLS_PORT=$NGINX" \
        "CERT=$WORK/bench.crt" "KEY=$WORK/bench.key"
fi
declare -A SERVER_PID
for side in upstream nginx; do
    setsid nginx -p "$WORK/$side/" -c "$WORK/$side/nginx.conf" -e "$WORK/$side/error.log" \
        >"$WORK/$side/stdout.log" 2>&1 &
    PIDS+=("$!")
    SERVER_PID[$side]=$!
done
wait_port "$UPSTREAM"
wait_port "$NGINX"

# start_spinforge N BINARY: a fresh data directory with the proxy site
# bench.test and its certificate; sets TLS_PORT[N].
declare -A TLS_PORT HTTP_PORT
start_spinforge() {
    local n="$1" bin="$2" http tls api dir="$WORK/sf$1" password token
    read -r http tls api < <(ports 3)
    mkdir -p "$dir"
    { printf 'tls_listen = "127.0.0.1:%s"\n' "$tls"; cat "$HERE/spinforge.toml.in"; } \
        >"$dir/spinforge.toml"
    password="bench-password-$RANDOM$RANDOM"
    printf '%s\n' "$password" |
        "$bin" admin create --data-dir "$dir/data" --email bench@example.com --password-stdin >/dev/null
    SPINFORGE_LOG=warn setsid "$bin" serve --config "$dir/spinforge.toml" --data-dir "$dir/data" \
        --listen "127.0.0.1:$http" --api-listen "127.0.0.1:$api" >"$dir/log" 2>&1 &
    PIDS+=("$!")
    SERVER_PID[$n]=$!
    wait_port "$api"
    wait_port "$tls"
    token="$(python3 -c 'import json,sys; print(json.dumps({"email": "bench@example.com", "password": sys.argv[1]}))' "$password" |
        curl -fsS -H 'Content-Type: application/json' --data-binary @- "http://127.0.0.1:$api/api/v1/auth/login" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "{\"domain\":\"bench.test\",\"type\":\"proxy\",\"upstream\":\"http://127.0.0.1:$UPSTREAM\"}" \
        "http://127.0.0.1:$api/api/v1/sites"
    # With a certificate the site redirects plain HTTP to HTTPS.
    [[ -n "$PLAIN" ]] ||
        python3 -c 'import json,sys; print(json.dumps({"cert": open(sys.argv[1]).read(), "key": open(sys.argv[2]).read()}))' \
            "$WORK/bench.crt" "$WORK/bench.key" |
        curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
            --data-binary @- "http://127.0.0.1:$api/api/v1/certs/bench.test"
    TLS_PORT[$n]=$tls
    HTTP_PORT[$n]=$http
}
start_spinforge old "${BINS[0]}"
start_spinforge new "${BINS[1]}"
TLS_PORT[nginx]=$NGINX
HTTP_PORT[nginx]=$NGINX
# url SIDE: where wrk sends its requests for SIDE.
url() {
    if [[ -n "$PLAIN" ]]; then
        echo "http://127.0.0.1:${HTTP_PORT[$1]}/"
    else
        echo "https://127.0.0.1:${TLS_PORT[$1]}/"
    fi
}
for side in nginx old new; do
    if [[ -n "$PLAIN" ]]; then
        curl -fsS -H 'Host: bench.test' "$(url "$side")"
    else
        curl -fsS -k --resolve "bench.test:${TLS_PORT[$side]}:127.0.0.1" \
            "https://bench.test:${TLS_PORT[$side]}/"
    fi | grep -q spinforge-bench-upstream ||
        { echo "no upstream page from $side" >&2; exit 1; }
done

if [[ -n "${BENCH_CALLGRIND:-}" ]]; then
    command -v valgrind >/dev/null || { echo "missing valgrind (apt-get install -y valgrind)" >&2; exit 1; }
    cat >"$WORK/client.py" <<'PY'
import http.client, ssl, sys
port, n, plain = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
conns = [http.client.HTTPConnection("127.0.0.1", port) if plain
         else http.client.HTTPSConnection("127.0.0.1", port, context=ctx) for _ in range(4)]
for i in range(n):
    conns[i % 4].request("GET", "/", headers={"Host": "bench.test"})
    response = conns[i % 4].getresponse()
    response.read()
    assert response.status == 200, response.status
PY
    requests="${BENCH_REQUESTS:-2000}"
    echo "user-space instructions per request (callgrind, $requests requests):"
    declare -A BIN=([old]="${BINS[0]}" [new]="${BINS[1]}")
    for side in old new; do
        kill -TERM "${SERVER_PID[$side]}"
        wait "${SERVER_PID[$side]}" 2>/dev/null || true
        # Ended and reaped: its number may be reused, so cleanup forgets it.
        kept=()
        for pid in "${PIDS[@]}"; do
            [[ $pid == "${SERVER_PID[$side]}" ]] || kept+=("$pid")
        done
        PIDS=("${kept[@]}")
        dir="$WORK/sf$side"
        SPINFORGE_LOG=warn setsid valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
            "${BIN[$side]}" serve --config "$dir/spinforge.toml" \
            --data-dir "$dir/data" --listen "127.0.0.1:${HTTP_PORT[$side]}" \
            --api-listen "127.0.0.1:$(ports 1)" >"$dir/valgrind.log" 2>&1 &
        PIDS+=("$!")
        SERVER_PID[$side]=$!
        port=${TLS_PORT[$side]}
        [[ -n "$PLAIN" ]] && port=${HTTP_PORT[$side]}
        wait_port "$port"
        python3 "$WORK/client.py" "$port" 200 "${PLAIN:-0}"
        callgrind_control -z "${SERVER_PID[$side]}" >/dev/null 2>&1
        python3 "$WORK/client.py" "$port" "$requests" "${PLAIN:-0}"
        callgrind_control -d "${SERVER_PID[$side]}" >/dev/null 2>&1
        sleep 1
        total=$(awk '/^summary:/ { print $2 }' "$dir/cg.out.1")
        echo "$side: $((total / requests)) (${BIN[$side]})"
    done
    exit 0
fi

# cpu_ticks PID: user + system clock ticks of PID and its children
# (nginx's workers).
cpu_ticks() {
    local pid total=0
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round | requests/s: nginx old new | old/nginx new/nginx new/old |" \
    "CPU ms per 1000 requests: nginx old new"
for ((r = 1; r <= ROUNDS; r++)); do
    declare -A RPS=() CPU=()
    for side in nginx old new; do
        before=$(cpu_ticks "${SERVER_PID[$side]}")
        out=$(setsid wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" -H 'Host: bench.test' \
            "$(url "$side")")
        after=$(cpu_ticks "${SERVER_PID[$side]}")
        RPS[$side]=$(awk '/Requests\/sec/ { printf "%d", $2 }' <<<"$out")
        requests=$(awk '/requests in/ { print $1 }' <<<"$out")
        CPU[$side]=$(python3 -c 'import sys
ticks, hz, n = map(int, sys.argv[1:])
print(f"{ticks * 1000 / hz / n * 1000:.1f}")' "$((after - before))" "$(getconf CLK_TCK)" "$requests")
    done
    python3 -c 'import sys
r, n, o, w = sys.argv[1], *map(float, sys.argv[2:5])
print(f"{r} | {n:.0f} {o:.0f} {w:.0f} | {o/n:.2f} {w/n:.2f} {w/o:.2f} |", *sys.argv[5:])' \
        "$r" "${RPS[nginx]}" "${RPS[old]}" "${RPS[new]}" "${CPU[nginx]}" "${CPU[old]}" "${CPU[new]}"
done
