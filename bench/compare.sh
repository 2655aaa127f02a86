#!/usr/bin/env bash
# Benchmark: zuora-auth-proxy against nginx (and HAProxy) doing the same job by hand, in one
# sitting, on loopback. Two modes: access logs off for every candidate, then access logs on
# (nginx: a JSON log_format to a file, buffered; the proxy: its JSON access line, stderr to a
# file; HAProxy sits this mode out). In each mode three loads: 8 connections paced (each waits
# 1 ms between requests, about 6k req/s), then 64 and 256 connections flat out. Each cell is
# run RUNS times, the candidates taking turns within a run, and the median is reported with
# its ratio to nginx in the same run.
#
#   bash bench/compare.sh
#
# Knobs (environment): RUNS=3 DURATION=10s WARMUP=2s THREADS=2 WORKERS=1 MODES="off on" IDLE_SECS=5
#   WORKERS: nginx worker_processes, HAProxy nbthread and the proxy's server.workers.
# Time: about 2 x 3 loads x RUNS x (candidates) x (DURATION + WARMUP), plus the release
# build: about 10 minutes with the defaults (15 cells x 3 runs x 12 s); `DURATION=3s
# WARMUP=1s RUNS=1` takes about 70 s.
# It never runs in CI: it is a measurement, not a test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
RUNS="${RUNS:-3}"; DURATION="${DURATION:-10s}"; WARMUP="${WARMUP:-2s}"; THREADS="${THREADS:-2}"
WORKERS="${WORKERS:-1}"; MODES="${MODES:-off on}"; IDLE_SECS="${IDLE_SECS:-5}"
LOADS=("paced8|8|paced" "c64|64|flat" "c256|256|flat")
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
stop_pid() {  # TERM, then KILL after 5 s
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
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

tree() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }
cpu_ticks() { local t=0 a; for p in $(tree "$1"); do read -r -a a <<< "$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null)" || continue; t=$((t + a[11] + a[12])); done; echo "$t"; }
switches() { local t=0 p; for p in $(tree "$1"); do t=$((t + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/{s+=$2} END{print s+0}'))); done; echo "$t"; }
status_kb() { local t=0 v; for p in $(tree "$1"); do v=$(awk -v k="$2:" '$1==k{print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${v:-0})); done; echo "$t"; }
check() {  # name url: the abort call answered through the candidate
  local got; got=$(curl -s -X POST -H 'Content-Length: 0' "$2$REQ_PATH")
  case "$got" in *'"status":"Aborted"'*) ;; *) die "$1: check failed: $got" ;; esac
}

# ---- build, certificates, upstream ---------------------------------------------------------
log "building the release binary"
(cd "$ROOT" && cargo build --release --quiet --no-default-features)  # the production feature set
BIN="$ROOT/target/release/zuora-auth-proxy"

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
mkdir -p "$BENCH_TMP/upstream-tmp" "$BENCH_TMP/nginx-proxy-tmp" "$BENCH_TMP/cells"
C="$BENCH_TMP/certs"
make_certs "$C"

render() {  # template output access_log_line
  sed -e "s#BENCH_TMP#$BENCH_TMP#g" -e "s#BENCH_WORKERS#$WORKERS#g" -e "s#BENCH_ACCESS_LOG#$3#" "$1" > "$2"
}
render "$BENCH/upstream.nginx.conf" "$BENCH_TMP/upstream.conf" ""
nginx -c "$BENCH_TMP/upstream.conf" -e "$BENCH_TMP/upstream.err.log" -g "worker_processes 1;" &
UP_PID=$!; PIDS+=("$UP_PID"); wait_port upstream "$UP_PID" 19443

cp "$BENCH/abort.lua" "$BENCH_TMP/paced.lua"
echo 'function delay() return 1 end' >> "$BENCH_TMP/paced.lua"

# ---- candidates, started per mode ----------------------------------------------------------
NGINX_JSON="log_format bench escape=json '{\"time\":\"\$time_iso8601\",\"method\":\"\$request_method\",\"path\":\"\$uri\",\"status\":\$status,\"duration_ms\":\$request_time,\"upstream_ms\":\"\$upstream_response_time\",\"track_id\":\"\$track_id\",\"peer\":\"\$remote_addr\"}'; access_log BENCH_TMP/nginx-access.log bench buffer=64k flush=100ms;"
start_candidates() {  # mode: off | on
  local mode="$1" level="warn" access="access_log off;"
  if [ "$mode" = on ]; then level="warn,access=info"; access="${NGINX_JSON//BENCH_TMP/$BENCH_TMP}"; fi
  proxy_config "$BENCH_TMP/proxy.toml" "$C/ca.pem" "$level" "$WORKERS"
  "$BIN" run --config "$BENCH_TMP/proxy.toml" 2> "$BENCH_TMP/proxy-$mode.log" &
  ZAP_PID=$!; PIDS+=("$ZAP_PID")
  render "$BENCH/nginx-proxy.conf" "$BENCH_TMP/nginx-proxy.conf" "$access"
  nginx -c "$BENCH_TMP/nginx-proxy.conf" -e "$BENCH_TMP/nginx-proxy.err.log" &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  TARGETS=("nginx|http://127.0.0.1:19081|$NGINX_PID" "zuora-auth-proxy|http://127.0.0.1:19080|$ZAP_PID")
  if [ "$mode" = off ]; then
    BENCH_TMP="$BENCH_TMP" BENCH_WORKERS="$WORKERS" haproxy -db -f "$BENCH/haproxy.cfg" 2> "$BENCH_TMP/haproxy.log" &
    HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
    TARGETS+=("haproxy|http://127.0.0.1:19082|$HAPROXY_PID")
  fi
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19090/readyz 2>/dev/null)" = 200 ] && break
    kill -0 "$ZAP_PID" 2>/dev/null || die "the proxy exited; see $BENCH_TMP/proxy-$mode.log"
    sleep 0.05
  done
  wait_port nginx "$NGINX_PID" 19081
  [ "$mode" = off ] && wait_port haproxy "$HAPROXY_PID" 19082
  local t name url pid
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url pid <<< "$t"
    check "$name" "$url"
  done
  sleep 1
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url pid <<< "$t"
    echo "$(status_kb "$pid" VmRSS)" > "$BENCH_TMP/cells/$mode.$name.idle_kb"
  done
  # Wake-ups while idle: context switches of every thread over IDLE_SECS, per second.
  local before=()
  for t in "${TARGETS[@]}"; do IFS='|' read -r name url pid <<< "$t"; before+=("$(switches "$pid")"); done
  sleep "$IDLE_SECS"
  local i=0
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url pid <<< "$t"
    awk -v a="${before[$i]}" -v b="$(switches "$pid")" -v s="$IDLE_SECS" 'BEGIN{printf "%.1f\n", (b-a)/s}' \
      > "$BENCH_TMP/cells/$mode.$name.idle_wakeups"
    i=$((i + 1))
  done
}
stop_candidates() {
  local t name url pid
  for t in "${TARGETS[@]}"; do IFS='|' read -r name url pid <<< "$t"; stop_pid "$pid"; done
}

# One wrk run against one candidate: appends req/s, p50, p99 (ms), CPU µs/req, errors to the
# cell's files.
measure() {  # mode load conns kind name url pid
  local mode="$1" load="$2" conns="$3" kind="$4" name="$5" url="$6" pid="$7"
  local script="$BENCH/abort.lua"; [ "$kind" = paced ] && script="$BENCH_TMP/paced.lua"
  local cell="$BENCH_TMP/cells/$mode.$load.$name"
  wrk -t"$THREADS" -c"$conns" -d"$WARMUP" -s "$script" "$url$REQ_PATH" > /dev/null
  local c0 c1 out line
  c0=$(cpu_ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$conns" -d"$DURATION" -s "$script" "$url$REQ_PATH")
  c1=$(cpu_ticks "$pid")
  line=$(grep '^RESULT' <<< "$out") || die "$name: wrk gave no result: $out"
  declare -A r=()
  local kv
  for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  awk -v n="${r[requests]}" -v d="${r[duration_us]}" 'BEGIN{printf "%.0f\n", n*1e6/d}' >> "$cell.rps"
  awk -v v="${r[p50_us]}" 'BEGIN{printf "%.3f\n", v/1000}' >> "$cell.p50"
  awk -v v="${r[p99_us]}" 'BEGIN{printf "%.3f\n", v/1000}' >> "$cell.p99"
  awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${r[requests]}" 'BEGIN{printf "%.2f\n", t/hz/n*1e6}' >> "$cell.cpu"
  echo $(( r[errors] + r[non2xx] )) >> "$cell.err"
}

median() { sort -n "$1" | awk '{v[NR]=$1} END{ if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

started=$(date +%s)
for mode in $MODES; do
  log "mode: access logs $mode"
  start_candidates "$mode"
  for l in "${LOADS[@]}"; do
    IFS='|' read -r load conns kind <<< "$l"
    for run in $(seq "$RUNS"); do
      for t in "${TARGETS[@]}"; do
        IFS='|' read -r name url pid <<< "$t"
        log "$mode/$load run $run/$RUNS: $name"
        measure "$mode" "$load" "$conns" "$kind" "$name" "$url" "$pid"
      done
    done
    # Peak RSS after this load (loads run from the lightest up).
    for t in "${TARGETS[@]}"; do
      IFS='|' read -r name url pid <<< "$t"
      status_kb "$pid" VmHWM > "$BENCH_TMP/cells/$mode.$load.$name.peak_kb"
    done
  done
  stop_candidates
  if [ "$mode" = on ]; then
    lines=$(grep -c '"target":"access"' "$BENCH_TMP/proxy-on.log" || true)
    nginx_lines=$(wc -l < "$BENCH_TMP/nginx-access.log" || echo 0)
    log "access lines written: proxy $lines, nginx $nginx_lines"
  fi
done

# ---- table ---------------------------------------------------------------------------------
echo
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores  wrk -t$THREADS, median of $RUNS x $DURATION  workers=$WORKERS  ($(( $(date +%s) - started )) s)"
echo
echo "| logs | load | target | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | idle RSS MiB | errors | req/s ÷ nginx | p50 ÷ nginx | p99 ÷ nginx | CPU ÷ nginx | peak RSS ÷ nginx | idle RSS ÷ nginx | idle wake-ups/s |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for mode in $MODES; do
  for l in "${LOADS[@]}"; do
    IFS='|' read -r load _ _ <<< "$l"
    for name in nginx haproxy zuora-auth-proxy; do
      cell="$BENCH_TMP/cells/$mode.$load.$name"; base="$BENCH_TMP/cells/$mode.$load.nginx"
      [ -f "$cell.rps" ] || continue
      rps=$(median "$cell.rps"); p50=$(median "$cell.p50"); p99=$(median "$cell.p99"); cpu=$(median "$cell.cpu")
      peak=$(cat "$cell.peak_kb"); idle=$(cat "$BENCH_TMP/cells/$mode.$name.idle_kb")
      err=$(awk '{s+=$1} END{print s+0}' "$cell.err")
      n_peak=$(cat "$base.peak_kb"); n_idle=$(cat "$BENCH_TMP/cells/$mode.nginx.idle_kb")
      echo "| $mode | $load | $name | $rps | $p50 | $p99 | $cpu | $(mib "$peak") | $(mib "$idle") | $err | $(ratio "$rps" "$(median "$base.rps")") | $(ratio "$p50" "$(median "$base.p50")") | $(ratio "$p99" "$(median "$base.p99")") | $(ratio "$cpu" "$(median "$base.cpu")") | $(ratio "$peak" "$n_peak") | $(ratio "$idle" "$n_idle") | $(cat "$BENCH_TMP/cells/$mode.$name.idle_wakeups") |"
    done
  done
done
echo
echo "paced8 = 8 connections, each waiting 1 ms between requests (wrk delay()); c64, c256 = that many connections flat out."
echo "CPU = user + system time of the candidate's processes during the measured run, per request; RSS = VmRSS (idle: after start and one request) and VmHWM (peak), summed over the candidate's processes; idle wake-ups = context switches of all their threads per second over $IDLE_SECS s of no traffic, after start and one request."
