#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a busy machine where
# CPU time is not. The proxy runs under valgrind twice, serving LONG then SHORT requests
# (`ab -k`, keep-alive), and the difference of the two totals divided by LONG - SHORT is the
# cost of one request with start-up and the first token cancelled out. Also prints the idle
# RSS of the proxy (without valgrind) after its first token.
#
#   bash bench/callgrind.sh [path/to/zuora-auth-proxy]
#
# Knobs (environment): LONG=6000 SHORT=1000 CONC=8 WORKERS= LOG_LEVEL=warn
#   WORKERS: server.workers (unset: the key is left out, for builds that predate it).
#   LOG_LEVEL=info writes the JSON access line (to a file) for every request.
# Needs valgrind, ab (apache2-utils), nginx, openssl, curl. Uses 127.0.0.1:19443, :19080, :19090.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/release/zuora-auth-proxy}"
LONG="${LONG:-6000}"; SHORT="${SHORT:-1000}"; CONC="${CONC:-8}"; WORKERS="${WORKERS:-}"
LOG_LEVEL="${LOG_LEVEL:-warn}"
TMP="$(mktemp -d /tmp/zap-callgrind.XXXXXX)"
JOB=3a3e85c4-96e7-486b-ae02-827120104301
URL="http://127.0.0.1:19080/bulk-data/bulk-jobs/$JOB/aborts"
log() { echo "[callgrind] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19090/readyz 2>/dev/null)" = 200 ]; }
wait_ready() {  # pid
  for _ in $(seq 600); do
    ready && return 0
    kill -0 "$1" 2>/dev/null || die "the proxy exited during start-up; see $TMP"
    sleep 0.1
  done
  die "the proxy never became ready"
}

# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
start_upstream "$TMP"

proxy_config "$TMP/proxy.toml" "$TMP/certs/ca.pem" "$LOG_LEVEL" "$WORKERS"

# Idle RSS, without valgrind: after the first token and one request, once things settle.
"$BIN" run --config "$TMP/proxy.toml" 2> "$TMP/idle.log" &
pid=$!; PIDS+=("$pid")
wait_ready "$pid"
curl -s -o /dev/null -X POST -H 'Content-Length: 0' "$URL"
sleep 1
idle_kb=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" || true

[ "$SHORT" -ge "$CONC" ] && [ "$LONG" -gt "$SHORT" ] || die "need CONC <= SHORT < LONG"
instructions() {  # requests: runs the proxy under callgrind; its total goes to $TMP/total.<requests>
  local n="$1" out="$TMP/callgrind.$1.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" run --config "$TMP/proxy.toml" \
    > /dev/null 2> "$TMP/proxy.$n.log" &
  local vpid=$!; PIDS+=("$vpid")
  wait_ready "$vpid"
  ab -q -k -c "$CONC" -n "$n" -m POST "$URL" > "$TMP/ab.$n.txt" 2>&1 || die "ab failed: $(tail -3 "$TMP/ab.$n.txt")"
  grep -q "^Failed requests: *0" "$TMP/ab.$n.txt" || die "ab saw failures: $(cat "$TMP/ab.$n.txt")"
  kill -TERM "$vpid"; wait "$vpid" || true
  awk '/^(summary|totals):/{print $2; exit}' "$out" > "$TMP/total.$n"
}

log "callgrind: $SHORT requests"
instructions "$SHORT"; short=$(cat "$TMP/total.$SHORT")
log "callgrind: $LONG requests"
instructions "$LONG"; long=$(cat "$TMP/total.$LONG")
per=$(( (long - short) / (LONG - SHORT) ))
echo "instructions/request $per  (($long - $short) / ($LONG - $SHORT); ab -k -c$CONC, workers=${WORKERS:-default}, log level=$LOG_LEVEL)"
echo "idle RSS $(awk -v k="$idle_kb" 'BEGIN{printf "%.1f", k/1024}') MiB  ($BIN)"
