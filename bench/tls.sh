#!/usr/bin/env bash
# SpinForge's TLS termination next to nginx, on loopback, with the same
# ECDSA P-256 certificate and the same upstream (an nginx returning 100
# bytes):
#
#   full handshakes/s     openssl s_time -new (TLS 1.3, then TLS 1.2)
#   resumed handshakes/s  openssl s_time -reuse -tls1_2 (session resumption)
#   HTTPS proxy           wrk over HTTPS with keep-alive
#
#   bash bench/tls.sh
#
# s_time sends no SNI: nginx answers with its only certificate, SpinForge
# with its default one, which is also a self-signed ECDSA P-256
# certificate, so both sign with the same kind of key. s_time never reads
# after a TLS 1.3 handshake, so it never sees TLS 1.3 tickets: resumption
# is measured with TLS 1.2 (the server's session tickets).
#
# Every server and client runs in a session of its own (setsid): started
# from this script's session, the kernel's autogroup scheduler would put
# them all in one scheduling group, which on a small host changes how
# they share the cores (see the sandbox section of docs/BENCHMARKS.md).
#
# The results go into docs/BENCHMARKS.md between the bench-tls markers;
# raw output into bench/results/ (not committed). Everything listens on
# 127.0.0.1 only and is stopped on exit. It installs nothing.
#
# Knobs (environment): BENCH_TIME (10, seconds per handshake run),
# BENCH_CLIENTS (2, parallel s_time clients), BENCH_THREADS (2),
# BENCH_CONNECTIONS (64), BENCH_DURATION (10s), BENCH_ROUNDS (3 proxy
# rounds per side), BENCH_SKIP_BUILD (unset),
# BENCH_BIN (the binary to measure; default the release build; any other
# is named in the report).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TIME="${BENCH_TIME:-10}"
CLIENTS="${BENCH_CLIENTS:-2}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
DURATION="${BENCH_DURATION:-10s}"
ROUNDS="${BENCH_ROUNDS:-3}"
LOAD_AT_START="$(cut -d' ' -f1 /proc/loadavg)"
BIN="${BENCH_BIN:-$ROOT/target/release/spinforge}"
DOC="$ROOT/docs/BENCHMARKS.md"
RESULTS="$HERE/results/tls"
EMAIL="bench@example.com"
PASSWORD="bench-password-$RANDOM$RANDOM"

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a whole number of at least 1"

for tool in nginx wrk openssl curl python3 setsid; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install -y $tool)"
done
if [[ -z "${BENCH_BIN:-}" && ( -z "${BENCH_SKIP_BUILD:-}" || ! -x "$BIN" ) ]]; then
    say "building the release binary"
    (cd "$ROOT" && cargo build --release -p spinforge)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spinforge-tls-bench.XXXXXX")"
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
trap 'exit 130' INT
trap 'exit 143' TERM

read -r UPSTREAM_PORT NGINX_PORT SF_HTTP SF_TLS SF_API < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

render() {
    local in="$1" out="$2" expr=(-e "") pair
    shift 2
    for pair in "$@"; do
        expr+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    sed "${expr[@]}" "$in" >"$out"
}

start_nginx() {
    setsid nginx -p "$1/" -c "$1/nginx.conf" -e "$1/error.log" >"$1/stdout.log" 2>&1 &
    PIDS+=("$!")
}

wait_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$1" \
            2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1"
}

# ---- certificate and servers -------------------------------------------------

say "ECDSA P-256 certificate for bench.test"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/bench.key" -out "$WORK/bench.crt" -days 30 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" 2>/dev/null

mkdir -p "$WORK/upstream" "$WORK/nginx"
render "$HERE/nginx-upstream.conf.in" "$WORK/upstream/nginx.conf" \
    "PREFIX=$WORK/upstream" "PORT=$UPSTREAM_PORT"
start_nginx "$WORK/upstream"
render "$HERE/nginx-tls.conf.in" "$WORK/nginx/nginx.conf" "PREFIX=$WORK/nginx" \
    "WORKERS=2" "UPSTREAM_PORT=$UPSTREAM_PORT" "TLS_PORT=$NGINX_PORT" \
    "CERT=$WORK/bench.crt" "KEY=$WORK/bench.key"
start_nginx "$WORK/nginx"
wait_port "$UPSTREAM_PORT"
wait_port "$NGINX_PORT"

say "SpinForge (release) with a proxy site bench.test"
{
    printf 'tls_listen = "127.0.0.1:%s"\n' "$SF_TLS"
    cat "$HERE/spinforge.toml.in"
} >"$WORK/spinforge.toml"
printf '%s\n' "$PASSWORD" |
    "$BIN" admin create --data-dir "$WORK/data" --email "$EMAIL" --password-stdin >/dev/null
SPINFORGE_LOG=warn setsid "$BIN" serve --config "$WORK/spinforge.toml" --data-dir "$WORK/data" \
    --listen "127.0.0.1:$SF_HTTP" --api-listen "127.0.0.1:$SF_API" >"$WORK/spinforge.log" 2>&1 &
PIDS+=("$!")
wait_port "$SF_API"
wait_port "$SF_TLS"
API="http://127.0.0.1:$SF_API"
TOKEN="$(python3 -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
    "$EMAIL" "$PASSWORD" |
    curl -fsS -H 'Content-Type: application/json' --data-binary @- "$API/api/v1/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data "{\"domain\":\"bench.test\",\"type\":\"proxy\",\"upstream\":\"http://127.0.0.1:$UPSTREAM_PORT\"}" \
    "$API/api/v1/sites"
python3 -c 'import json,sys; print(json.dumps({"cert": open(sys.argv[1]).read(), "key": open(sys.argv[2]).read()}))' \
    "$WORK/bench.crt" "$WORK/bench.key" |
    curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data-binary @- "$API/api/v1/certs/bench.test"
# Same site, both listeners agree on the page.
for port in "$NGINX_PORT" "$SF_TLS"; do
    curl -fsS -k --resolve "bench.test:$port:127.0.0.1" "https://bench.test:$port/" |
        grep -q spinforge-bench-upstream || die "no upstream page on port $port"
done

# ---- measurements ------------------------------------------------------------

mkdir -p "$RESULTS"

# handshakes PORT ARGS...: sets RATE to the handshakes per second of
# CLIENTS parallel s_time clients over TIME seconds (wall clock). It runs
# in this shell, not in $(...), so the clients land in PIDS and are
# stopped on an interrupt too.
handshakes() {
    local port="$1" i total=0 n
    shift
    local start end clients=() tracked=${#PIDS[@]}
    start=$(date +%s.%N)
    for ((i = 0; i < CLIENTS; i++)); do
        setsid openssl s_time -connect "127.0.0.1:$port" -time "$TIME" "$@" \
            >"$WORK/s_time.$i" 2>&1 &
        clients+=("$!")
        PIDS+=("$!")
    done
    for i in "${!clients[@]}"; do
        wait "${clients[$i]}" || die "s_time client $i failed: $(tail -n 3 "$WORK/s_time.$i")"
    done
    # Ended and reaped: their numbers may be reused, so cleanup forgets them.
    PIDS=("${PIDS[@]:0:tracked}")
    end=$(date +%s.%N)
    for ((i = 0; i < CLIENTS; i++)); do
        n=$(awk '/connections in .* real seconds/ { print $1 }' "$WORK/s_time.$i" | tail -n 1)
        [[ -n "$n" ]] || die "s_time client $i reported no count: $(tail -n 3 "$WORK/s_time.$i")"
        total=$((total + n))
    done
    RATE=$(python3 -c 'import sys; print(round(int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2]))))' \
        "$total" "$start" "$end")
}

declare -A R
for side in nginx spinforge; do
    port=$NGINX_PORT
    [[ $side == spinforge ]] && port=$SF_TLS
    say "$side: full handshakes, TLS 1.3"
    handshakes "$port" -new -tls1_3
    R[$side.full13]=$RATE
    say "$side: full handshakes, TLS 1.2"
    handshakes "$port" -new -tls1_2
    R[$side.full12]=$RATE
    say "$side: resumed handshakes, TLS 1.2"
    handshakes "$port" -reuse -tls1_2
    R[$side.resumed12]=$RATE
done
# The proxy in alternating rounds (nginx first in odd rounds, SpinForge
# first in even ones), so both see the same drift of the host; the
# median round counts.
for ((round = 1; round <= ROUNDS; round++)); do
    sides=(nginx spinforge)
    ((round % 2 == 0)) && sides=(spinforge nginx)
    for side in "${sides[@]}"; do
        port=$NGINX_PORT
        [[ $side == spinforge ]] && port=$SF_TLS
        say "$side: HTTPS proxy, keep-alive, round $round"
        out="$RESULTS/wrk-$side-$round.txt"
        setsid wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" -H 'Host: bench.test' \
            "https://127.0.0.1:$port/" >"$out"
        rps=$(awk '/Requests\/sec/ { printf "%d", $2 }' "$out")
        [[ -n "$rps" && "$rps" != 0 ]] || die "wrk reported no rate for $side (see $out)"
        if grep -q -e 'Non-2xx or 3xx responses' -e 'Socket errors' "$out"; then
            die "$side answered with errors (see $out)"
        fi
        R[$side.rounds]+="$rps "
        R[$side.latencies]+="$(grep -A4 'Latency' "$out" | awk '/Latency/ { print $2 }') "
    done
done
median() { python3 -c 'import statistics, sys; print(round(statistics.median(map(float, sys.argv[1:]))))' "$@"; }
for side in nginx spinforge; do
    # shellcheck disable=SC2086 # one word per round
    R[$side.rps]=$(median ${R[$side.rounds]})
done
printf '%s\n' "${!R[@]}" | sort | while read -r k; do printf '%s %s\n' "$k" "${R[$k]}"; done \
    >"$RESULTS/summary.txt"

# ---- report ------------------------------------------------------------------

ratio() { python3 -c 'import sys; print(f"{float(sys.argv[1]) / max(float(sys.argv[2]), 1):.2f}x")' "$1" "$2"; }
row() {
    printf '| %s | %s | %s | %s |\n' "$1" "${R[nginx.$2]}" "${R[spinforge.$2]}" \
        "$(ratio "${R[spinforge.$2]}" "${R[nginx.$2]}")"
}
SECTION="$WORK/section.md"
{
    echo "<!-- bench-tls:start -->"
    echo "## TLS termination (bench/tls.sh)"
    echo
    BUILD="release build"
    [[ -n "${BENCH_BIN:-}" ]] && BUILD="binary ${BENCH_BIN#"$ROOT"/} (not the release build)"
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, loopback, $BUILD,"
    echo "load average at start $LOAD_AT_START. Same ECDSA P-256"
    echo "certificate and the same upstream (an nginx answering 100 bytes) on both"
    echo "sides; nginx $(nginx -v 2>&1 | sed 's|.*/||') with 2 workers."
    echo "Handshakes: $CLIENTS parallel \`openssl s_time\` clients for ${TIME}s each."
    echo "Proxy: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION\` over HTTPS with keep-alive, $ROUNDS rounds per side, alternating."
    echo "Every server and every client runs in a session of its own (setsid), as"
    echo "services and remote clients would, so the kernel's autogroup scheduler"
    echo "never groups a client with one server."
    echo
    echo "| measure | nginx | SpinForge | SpinForge / nginx |"
    echo "|---|---|---|---|"
    row "full handshakes/s, TLS 1.3" full13
    row "full handshakes/s, TLS 1.2" full12
    row "resumed handshakes/s, TLS 1.2" resumed12
    row "HTTPS proxy requests/s, keep-alive, median of $ROUNDS" rps
    echo
    echo "Proxy rounds, requests/s: nginx ${R[nginx.rounds]% }; SpinForge ${R[spinforge.rounds]% }."
    echo "Average latency per round: nginx ${R[nginx.latencies]% }; SpinForge ${R[spinforge.latencies]% }."
    echo
    echo "The clients run on the same two cores as the servers, so every number"
    echo "is also bounded by the client's own cryptography; the ratio is the"
    echo "comparison. Reproduce with \`bash bench/tls.sh\`."
    echo "<!-- bench-tls:end -->"
} >"$SECTION"
cat "$SECTION"
python3 - "$DOC" "$SECTION" <<'PY'
import sys
doc, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(doc).read()
start, end = "<!-- bench-tls:start -->", "<!-- bench-tls:end -->"
if start in text and end in text:
    head, rest = text.split(start, 1)
    text = head + section + rest.split(end, 1)[1]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(doc, "w").write(text)
PY
say "docs/BENCHMARKS.md updated"
