#!/usr/bin/env bash
# The shield's cost: the edge with every shield stage on (limits, rate
# limits, headers, behaviour counters, and a ban table of 100,000 bans)
# next to the same edge with `[shield] enabled = false`, under the same
# wrk load, plus the shield's micro-benchmarks (rate-limit decisions and
# memory, ban checks).
#
#   bash bench/shield.sh      builds, then about 3 minutes
#
# Both servers run at once on 127.0.0.1 and the runs alternate between
# them, so a change in the host's load hits both sides alike. Results go
# into docs/BENCHMARKS.md between the bench-shield markers; raw output to
# bench/results/shield/ (not committed). Every server listens on
# 127.0.0.1 only and is stopped on exit. It installs nothing.
#
# Knobs: BENCH_THREADS (2), BENCH_CONNECTIONS (64), BENCH_DURATION (10s),
# BENCH_WARMUP (3s), BENCH_ROUNDS (3), BENCH_SKIP_BUILD (unset).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-3s}"
ROUNDS="${BENCH_ROUNDS:-3}"
BIN="$ROOT/target/release/spinforge"
EMAIL="bench@example.com"
PASSWORD="bench-password-$RANDOM$RANDOM"

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
for tool in wrk nginx cargo curl python3 tar; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install -y wrk nginx)"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spinforge-shield-bench.XXXXXX")"
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid i
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_http() {
    local url="$1" host="$2" i
    for ((i = 0; i < 200; i++)); do
        curl -fsS -o /dev/null --max-time 1 -H "Host: $host" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
    say "building the release binary and the shield micro-benchmarks"
    (cd "$ROOT" && cargo build --release -p spinforge && cargo bench -p shield --no-run)
fi
[[ -x "$BIN" ]] || die "no binary at target/release/spinforge"

RESULTS="$WORK/results"
mkdir -p "$RESULTS"

say "micro-benchmarks: cargo bench -p shield --bench shield"
(cd "$ROOT" && cargo bench -q -p shield --bench shield) | tee "$RESULTS/micro.txt" >&2

read -r UP_PORT ON_EDGE ON_API OFF_EDGE OFF_API <<<"$(free_ports 5)"

say "upstream nginx on 127.0.0.1:$UP_PORT"
UP="$WORK/nginx-upstream"
mkdir -p "$UP"
sed -e "s|@PREFIX@|$UP|g" -e "s|@PORT@|$UP_PORT|g" "$HERE/nginx-upstream.conf.in" >"$UP/nginx.conf"
nginx -p "$UP/" -c "$UP/nginx.conf" -e "$UP/error.log" >"$UP/stdout.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$UP_PORT/" x || die "upstream nginx did not start"

STATIC="$WORK/static"
mkdir -p "$STATIC"
head -c 1024 /dev/urandom >"$STATIC/1k.bin"
tar -C "$STATIC" -czf "$WORK/static.tar.gz" 1k.bin

# start_side NAME EDGE_PORT API_PORT CONFIG_TEXT
start_side() {
    local name="$1" edge="$2" api_port="$3" config="$4"
    local data="$WORK/$name-data" api="http://127.0.0.1:$3"
    printf '%s' "$config" >"$WORK/$name.toml"
    printf '%s\n' "$PASSWORD" |
        "$BIN" admin create --data-dir "$data" --email "$EMAIL" --password-stdin >/dev/null
    if [[ "$name" == on ]]; then
        # 100,000 bans of addresses wrk never uses, valid for an hour.
        mkdir -p "$data/shield"
        python3 - "$data/shield/state.json" <<'PY'
import json, sys, time
now = int(time.time())
bans = [{"ip": "10.%d.%d.%d" % (n >> 16 & 255, n >> 8 & 255, n & 255), "reason": "bench",
         "created_at": now, "expires_at": now + 3600} for n in range(100_000)]
json.dump({"bans": bans, "emergency": False, "sites": {}}, open(sys.argv[1], "w"))
PY
    fi
    SPINFORGE_LOG=warn "$BIN" serve --config "$WORK/$name.toml" --data-dir "$data" \
        --listen "127.0.0.1:$edge" --api-listen "127.0.0.1:$api_port" \
        >>"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    wait_http "$api/readyz" x || die "$name: spinforge did not become ready: $(tail -5 "$WORK/$name.log")"
    local token
    token="$(python3 -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
        "$EMAIL" "$PASSWORD" |
        curl -fsS -H 'Content-Type: application/json' --data-binary @- "$api/api/v1/auth/login" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "{\"domain\":\"proxy.bench.localhost\",\"type\":\"proxy\",\"upstream\":\"http://127.0.0.1:$UP_PORT\"}" \
        "$api/api/v1/sites"
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data '{"domain":"static.bench.localhost","type":"static"}' "$api/api/v1/sites"
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/gzip' \
        --data-binary "@$WORK/static.tar.gz" "$api/api/v1/sites/static.bench.localhost/releases"
}

ALLOWED="[proxy]
allow_upstream_cidrs = [\"127.0.0.0/8\"]
"
# Every stage on. wrk is one client sending tens of thousands of requests
# a second, so the per-client limits are raised out of its way: every
# request still pays for its GCRA decision and its behaviour counters.
start_side on "$ON_EDGE" "$ON_API" "$ALLOWED[shield]
rate_per_minute = 1000000000
requests_per_minute = 1000000000
max_connections_per_ip = 4096
"
start_side off "$OFF_EDGE" "$OFF_API" "$ALLOWED[shield]
enabled = false
"

for side in on:$ON_EDGE off:$OFF_EDGE; do
    port="${side#*:}"
    got="$(curl -fsS -H 'Host: static.bench.localhost' -o /dev/null -w '%{size_download}' \
        "http://127.0.0.1:$port/1k.bin")" || die "${side%%:*}: static site does not answer"
    [[ "$got" == 1024 ]] || die "${side%%:*}: expected 1024 bytes, got $got"
done
curl -fsS -D - -o /dev/null -H 'Host: static.bench.localhost' "http://127.0.0.1:$ON_EDGE/1k.bin" |
    grep -qi '^content-security-policy:' || die "the shield's headers are missing on the on side"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    for scenario in static:/1k.bin:static.bench.localhost proxy:/:proxy.bench.localhost; do
        IFS=: read -r key path host <<<"$scenario"
        for side in on:$ON_EDGE off:$OFF_EDGE; do
            name="${side%%:*}"
            port="${side#*:}"
            say "round $round: $key, shield $name"
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Host: $host" \
                "http://127.0.0.1:$port$path" >/dev/null
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $host" \
                "http://127.0.0.1:$port$path" >"$RESULTS/$key-$name-$round.txt"
        done
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

rm -rf "$HERE/results/shield"
mkdir -p "$HERE/results"
cp -r "$RESULTS" "$HERE/results/shield"

python3 - "$RESULTS" "$ROOT/docs/BENCHMARKS.md" "$ROUNDS" <<PY
import os, re, statistics, sys
results, doc, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return rps, float(p99.group(1)) * scale, int(non2xx.group(1)) if non2xx else 0

micro = dict(line.split("=", 1) for line in open(os.path.join(results, "micro.txt")).read().split())
rows = []
for key, label in [("static", "static 1 KiB"), ("proxy", "reverse proxy")]:
    side = {}
    for name in ["on", "off"]:
        runs = [wrk(os.path.join(results, f"{key}-{name}-{r}.txt")) for r in range(1, rounds + 1)]
        if any(r[2] for r in runs):
            sys.exit(f"{key}/{name}: some answers were not 2xx")
        side[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                      [r[0] for r in runs])
    on, off = side["on"], side["off"]
    rows.append(f"| {label} | {on[0]:,.0f} | {off[0]:,.0f} | **{on[0] / off[0]:.2f}x** | "
                f"{on[1]:.2f} ms | {off[1]:.2f} ms | "
                f"{' / '.join(f'{x:,.0f}' for x in on[2])} vs {' / '.join(f'{x:,.0f}' for x in off[2])} |")

mib = int(micro["RATE_1M_KEYS_MEMORY_KIB"]) / 1024
section = f"""<!-- bench-shield:start -->
## Shield: the edge with every stage on, next to the edge with it off

Measured $(date -u '+%Y-%m-%d %H:%M UTC') with \`bash bench/shield.sh\`, built from commit \`$COMMIT\` (plus any uncommitted edits). Host: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo | cut -d' ' -f1-2); load average before $LOAD_BEFORE, after $LOAD_AFTER.

Both servers run at once and the runs alternate between them; each cell is the median of {rounds} runs of \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\` (after an unrecorded $WARMUP warm-up). "On" is every shield stage with its defaults, a ban table of 100,000 bans loaded from the state file, and the per-client limits raised out of wrk's way (wrk is one client), so every request still pays for its GCRA decision and behaviour counters. "Off" is \`[shield] enabled = false\`. Target: on/off at least 0.9x.

| Scenario | Shield on req/s | Shield off req/s | On/off | On p99 | Off p99 | Each run (on vs off) |
|---|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

Micro-benchmarks (\`cargo bench -p shield --bench shield\`, one thread):

| Measure | Result |
|---|---:|
| rate-limit decisions, one key | {float(micro["RATE_ONE_KEY_PER_SEC"]) / 1e6:.1f} M/s |
| rate-limit decisions, 1M distinct keys (first sight, inserting) | {float(micro["RATE_1M_KEYS_INSERT_PER_SEC"]) / 1e6:.1f} M/s |
| rate-limit decisions, 1M distinct keys (known keys) | {float(micro["RATE_1M_KEYS_PER_SEC"]) / 1e6:.1f} M/s |
| memory for 1M keys (resident set growth) | {mib:.0f} MiB ({int(micro["RATE_1M_KEYS_MEMORY_KIB"]) * 1024 / 1e6:.0f} bytes per key) |
| ban check, 100,000 bans, address not banned | {float(micro["BAN_CHECK_MISS_NS"]):.0f} ns |
| ban check, 100,000 bans, address banned (reads the clock) | {float(micro["BAN_CHECK_HIT_NS"]):.0f} ns |

Target for the ban check: under 1 µs.
<!-- bench-shield:end -->"""

text = open(doc).read()
pattern = re.compile(r"<!-- bench-shield:start -->.*?<!-- bench-shield:end -->", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(doc, "w").write(text)
print(section)
PY
