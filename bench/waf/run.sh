#!/usr/bin/env bash
# Replays the same requests through SpinForge's WAF and through
# nginx + ModSecurity v3 + OWASP CRS at paranoia level 1 (Debian packages
# nginx, libnginx-mod-http-modsecurity, modsecurity-crs), compares the
# verdicts and times the SpinForge engine.
#
#   bench/waf/run.sh            # from the repository root
#
# LIBINJECTION_DATA points at libinjection's data/ folder (default:
# ../shared/corpora/libinjection/data next to the repository). nginx is
# started on 127.0.0.1 only, in a temporary folder, and stopped at exit.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DATA="${LIBINJECTION_DATA:-$ROOT/../shared/corpora/libinjection/data}"
PORT="${WAF_BENCH_PORT:-18480}"
UPSTREAM=$((PORT + 1))
WORK="$(mktemp -d)"
OUT="${WAF_BENCH_OUT:-$HERE/results}"
mkdir -p "$OUT"

for need in nginx python3 cargo; do
  command -v "$need" >/dev/null || { echo "missing $need" >&2; exit 1; }
done
MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
[ -f "$MODULE" ] || { echo "install libnginx-mod-http-modsecurity" >&2; exit 1; }
[ -d /usr/share/modsecurity-crs/rules ] || { echo "install modsecurity-crs" >&2; exit 1; }

python3 "$HERE/build_requests.py" "$DATA" "$WORK/requests.jsonl"

echo "== SpinForge engine" >&2
(cd "$ROOT" && cargo build --release -q -p shield --example waf_bench)
BIN="$ROOT/target/release/examples/waf_bench"
/usr/bin/time -f "spinforge replay: %es, max RSS %M KiB" "$BIN" replay "$WORK/requests.jsonl" "$WORK/spinforge.tsv"
"$BIN" cost | tee "$OUT/cost.tsv"

echo "== nginx + ModSecurity + CRS PL1" >&2
# The Debian recommended engine config, switched from DetectionOnly to On;
# audit and response-body inspection off (only requests are compared).
sed -e 's/^SecRuleEngine .*/SecRuleEngine On/' \
    -e 's/^SecAuditEngine .*/SecAuditEngine Off/' \
    -e 's/^SecResponseBodyAccess .*/SecResponseBodyAccess Off/' \
    -e "s|^SecTmpDir .*|SecTmpDir $WORK/|" \
    -e "s|^SecDataDir .*|SecDataDir $WORK/|" \
    -e "s|^SecAuditLog .*|SecAuditLog $WORK/audit.log|" \
    -e 's|^SecUnicodeMapFile .*|SecUnicodeMapFile /etc/nginx/unicode.mapping 20127|' \
    /etc/nginx/modsecurity.conf > "$WORK/modsecurity.conf"
cat > "$WORK/main.conf" <<CONF
Include $WORK/modsecurity.conf
Include /etc/modsecurity/crs/crs-setup.conf
Include /usr/share/modsecurity-crs/rules/*.conf
CONF
cat > "$WORK/nginx.conf" <<CONF
load_module $MODULE;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log crit;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  client_max_body_size 1m;
  client_body_buffer_size 256k;
  server {
    listen 127.0.0.1:$PORT;
    modsecurity on;
    modsecurity_rules_file $WORK/main.conf;
    location / { proxy_pass http://127.0.0.1:$UPSTREAM; }
  }
  server {
    listen 127.0.0.1:$UPSTREAM;
    location / { return 200 "ok\n"; }
  }
}
CONF
nginx -t -q -c "$WORK/nginx.conf" -p "$WORK"
nginx -c "$WORK/nginx.conf" -p "$WORK"
trap 'kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.1
done
# The CRS blocks a plain attack: check before trusting its verdicts.
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/?q=1%27%20or%20%271%27=%271")
[ "$status" = 403 ] || { echo "ModSecurity is not blocking (status $status)" >&2; exit 1; }
python3 "$HERE/replay_nginx.py" "$WORK/requests.jsonl" 127.0.0.1 "$PORT" "$WORK/crs.tsv"

python3 "$HERE/report.py" "$WORK/requests.jsonl" "$WORK/spinforge.tsv" "$WORK/crs.tsv" | tee "$OUT/report.md"
cp "$WORK/spinforge.tsv" "$WORK/crs.tsv" "$WORK/requests.jsonl" "$OUT/"
echo "verdicts and report in $OUT" >&2
