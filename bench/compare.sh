#!/usr/bin/env bash
# Benchmark: zuora-auth-proxy against nginx and HAProxy doing the same job by hand, and
# against calling the (mock) upstream directly. Everything runs on loopback; every load run
# is bounded by wrk's duration; everything started here is stopped on exit.
#
#   bash bench/compare.sh
#
# Knobs (environment): CONNS=64 THREADS=2 DURATION=15s WARMUP=3s WORKERS=1 BIG_CONNS=256
#   WORKERS: nginx worker_processes, HAProxy nbthread and the proxy's tokio worker threads.
#   PROXY_LOG_LEVEL=info: the proxy's log filter (info writes one access line per request).
# It never runs in CI: it is a measurement, not a test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
CONNS="${CONNS:-64}"; THREADS="${THREADS:-2}"; DURATION="${DURATION:-15s}"; WARMUP="${WARMUP:-3s}"
WORKERS="${WORKERS:-1}"; BIG_CONNS="${BIG_CONNS:-256}"; PROXY_LOG_LEVEL="${PROXY_LOG_LEVEL:-info}"
BENCH_TMP="$(mktemp -d /tmp/zap-bench.XXXXXX)"
JOB=3a3e85c4-96e7-486b-ae02-827120104301
REQ_PATH="/bulk-data/bulk-jobs/$JOB/aborts"
CLK_TCK="$(getconf CLK_TCK)"
log() { echo "[bench] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- tools ---------------------------------------------------------------------------------
missing=()
for bin in nginx haproxy wrk curl openssl; do command -v "$bin" >/dev/null || missing+=("$bin"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx haproxy wrk curl openssl >/dev/null
fi

# ---- processes: only PIDs started here are ever signalled ----------------------------------
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$BENCH_TMP"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # name pid port
  for _ in $(seq 200); do
    kill -0 "$2" 2>/dev/null || die "$1 exited during start-up"
    port_open "$3" && return 0
    sleep 0.05
  done
  die "$1 did not listen on $3"
}
for p in 19443 19080 19090 19081 19082; do port_open "$p" && die "port $p is busy"; done

render() { sed -e "s#BENCH_TMP#$BENCH_TMP#g" -e "s#BENCH_WORKERS#$WORKERS#g" "$1" > "$2"; }
tree() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }
cpu_ticks() { local t=0 a; for p in $(tree "$1"); do read -r -a a <<< "$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null)" || continue; t=$((t + a[11] + a[12])); done; echo "$t"; }
status_kb() { local t=0 v; for p in $(tree "$1"); do v=$(awk -v k="$2:" '$1==k{print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${v:-0})); done; echo "$t"; }
token_fetches() { curl -s http://127.0.0.1:19090/metrics | awk '/^zuora_proxy_token_fetches_total\{.*result="ok"/{s+=$2} END{print s+0}'; }

# ---- build, certificates, upstream ---------------------------------------------------------
log "building the release binary"
(cd "$ROOT" && cargo build --release --quiet)
BIN="$ROOT/target/release/zuora-auth-proxy"

mkdir -p "$BENCH_TMP/certs" "$BENCH_TMP/upstream-tmp" "$BENCH_TMP/nginx-proxy-tmp"
C="$BENCH_TMP/certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout "$C/ca.key" -out "$C/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$C/server.key" -out "$C/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$C/ext.cnf"
openssl x509 -req -in "$C/server.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial -days 2 -extfile "$C/ext.cnf" -out "$C/server.pem" 2>/dev/null

render "$BENCH/upstream.nginx.conf" "$BENCH_TMP/upstream.conf"
nginx -c "$BENCH_TMP/upstream.conf" -e "$BENCH_TMP/upstream.err.log" -g "worker_processes 1;" &
UP_PID=$!; PIDS+=("$UP_PID"); wait_port upstream "$UP_PID" 19443

# ---- the proxy: time to ready, idle RSS ----------------------------------------------------
cat > "$BENCH_TMP/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:19080"
[admin]
listen = "127.0.0.1:19090"
[log]
format = "json"
level = "$PROXY_LOG_LEVEL"
[tenants.bench]
base_url = "https://127.0.0.1:19443"
client_id = "bench"
client_secret = "bench"
ca_file = "$C/ca.pem"
[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/aborts"
EOF
t0=$(date +%s%N)
TOKIO_WORKER_THREADS="$WORKERS" "$BIN" run --config "$BENCH_TMP/proxy.toml" 2> "$BENCH_TMP/proxy.log" &
ZAP_PID=$!; PIDS+=("$ZAP_PID")
ready_ms=""
for _ in $(seq 2000); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19090/readyz 2>/dev/null)" = 200 ]; then
    ready_ms=$(( ($(date +%s%N) - t0) / 1000000 )); break
  fi
  kill -0 "$ZAP_PID" 2>/dev/null || die "the proxy exited; see its log"
done
[ -n "$ready_ms" ] || die "the proxy never became ready"
sleep 1
idle_rss_kb=$(status_kb "$ZAP_PID" VmRSS)

# ---- the baselines -------------------------------------------------------------------------
render "$BENCH/nginx-proxy.conf" "$BENCH_TMP/nginx-proxy.conf"
nginx -c "$BENCH_TMP/nginx-proxy.conf" -e "$BENCH_TMP/nginx-proxy.err.log" &
NGINX_PID=$!; PIDS+=("$NGINX_PID"); wait_port nginx "$NGINX_PID" 19081
BENCH_TMP="$BENCH_TMP" BENCH_WORKERS="$WORKERS" haproxy -db -f "$BENCH/haproxy.cfg" 2> "$BENCH_TMP/haproxy.log" &
HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID"); wait_port haproxy "$HAPROXY_PID" 19082

# ---- load ----------------------------------------------------------------------------------
TARGETS=("direct|https://127.0.0.1:19443|$UP_PID" "nginx|http://127.0.0.1:19081|$NGINX_PID"
         "haproxy|http://127.0.0.1:19082|$HAPROXY_PID" "zuora-auth-proxy|http://127.0.0.1:19080|$ZAP_PID")
declare -A RPS P50 P99 P999 ERR CPU RSS
fetches0=$(token_fetches)
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url pid <<< "$t"
  got=$(curl -s -k -X POST -H 'Content-Length: 0' "$url$REQ_PATH")
  case "$got" in *'"status":"Aborted"'*) ;; *) die "$name: check failed: $got" ;; esac
  log "$name: warm-up $WARMUP, then wrk -t$THREADS -c$CONNS -d$DURATION"
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$BENCH/abort.lua" "$url$REQ_PATH" >/dev/null
  c0=$(cpu_ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$BENCH/abort.lua" "$url$REQ_PATH")
  c1=$(cpu_ticks "$pid")
  line=$(grep '^RESULT' <<< "$out") || die "$name: wrk gave no result: $out"
  declare -A r=()
  for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  RPS[$name]=$(awk -v n="${r[requests]}" -v d="${r[duration_us]}" 'BEGIN{printf "%.0f", n*1e6/d}')
  P50[$name]=$(awk -v v="${r[p50_us]}" 'BEGIN{printf "%.2f", v/1000}')
  P99[$name]=$(awk -v v="${r[p99_us]}" 'BEGIN{printf "%.2f", v/1000}')
  P999[$name]=$(awk -v v="${r[p999_us]}" 'BEGIN{printf "%.2f", v/1000}')
  ERR[$name]=$(( r[errors] + r[non2xx] ))
  CPU[$name]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${r[requests]}" 'BEGIN{printf "%.2f", t/hz/n*10000}')
  RSS[$name]=$(awk -v k="$(status_kb "$pid" VmHWM)" 'BEGIN{printf "%.1f", k/1024}')
done
fetches=$(( $(token_fetches) - fetches0 ))

log "zuora-auth-proxy: $BIG_CONNS connections for $DURATION"
big=$(wrk -t"$THREADS" -c"$BIG_CONNS" -d"$DURATION" -s "$BENCH/abort.lua" "http://127.0.0.1:19080$REQ_PATH" | grep '^RESULT')
big_rss=$(awk -v k="$(status_kb "$ZAP_PID" VmHWM)" 'BEGIN{printf "%.1f", k/1024}')
big_rps=$(awk -v l="$big" 'BEGIN{split(l,a," "); for(i in a){split(a[i],kv,"="); v[kv[1]]=kv[2]} printf "%.0f", v["requests"]*1e6/v["duration_us"]}')

# ---- table ---------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
echo
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)  wrk -t$THREADS -c$CONNS -d$DURATION POST (no body)  workers=$WORKERS  proxy log level=$PROXY_LOG_LEVEL"
echo
echo "| target | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU s / 10k req | peak RSS MiB | req/s vs nginx | p99 vs nginx | req/s vs direct |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name _ _ <<< "$t"
  echo "| $name | ${RPS[$name]} | ${P50[$name]} | ${P99[$name]} | ${P999[$name]} | ${ERR[$name]} | ${CPU[$name]} | ${RSS[$name]} | $(ratio "${RPS[$name]}" "${RPS[nginx]}") | $(ratio "${P99[$name]}" "${P99[nginx]}") | $(ratio "${RPS[$name]}" "${RPS[direct]}") |"
done
echo
echo "zuora-auth-proxy: ready (/readyz 200) ${ready_ms} ms after start; idle RSS $(awk -v k="$idle_rss_kb" 'BEGIN{printf "%.1f", k/1024}') MiB;"
echo "peak RSS with $BIG_CONNS connections ${big_rss} MiB (${big_rps} req/s); token fetches during the load runs: $fetches."
echo "direct = wrk over TLS straight to the mock upstream (nginx, 1 worker); its RSS/CPU columns are the upstream's."
