#!/usr/bin/env bash
# Which of the executable's code runs at start and for one request, counted by callgrind, and
# how it lies in the file: distinct 4 KiB pages and 64 KiB windows (the kernel maps the 64 KiB
# around each page fault of a file mapping, so the windows are the code's share of VmRSS).
# With ORDER=FILE, also writes the executed functions' symbols, one a line, for the linker's
# --symbol-ordering-file (see docs/performance.md, "Memory"). Then prints the idle RSS
# breakdown of the binary run without valgrind.
#
#   ORDER=/tmp/order.txt bash bench/memory.sh [path/to/zuora-auth-proxy]
#
# Needs valgrind, nginx, openssl, curl, nm. Uses 127.0.0.1:19443, :19080, :19090.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(readlink -f "${1:-$ROOT/target/release/zuora-auth-proxy}")"
TMP="$(mktemp -d /tmp/zap-memory.XXXXXX)"
URL="http://127.0.0.1:19080/bulk-data/bulk-jobs/3a3e85c4-96e7-486b-ae02-827120104301/aborts"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19090/readyz 2>/dev/null)" = 200 ]; }
wait_ready() {  # pid
  for _ in $(seq 600); do
    ready && return 0
    kill -0 "$1" 2>/dev/null || { echo "the proxy exited during start-up" >&2; exit 1; }
    sleep 0.1
  done
  echo "the proxy never became ready" >&2; exit 1
}

# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
start_upstream "$TMP"
proxy_config "$TMP/proxy.toml" "$TMP/certs/ca.pem" warn ""

# Start-up, the first token and one request under callgrind, instruction addresses kept.
valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$TMP/callgrind.out" \
  "$BIN" run --config "$TMP/proxy.toml" > /dev/null 2> "$TMP/valgrind.log" &
vpid=$!; PIDS+=("$vpid")
wait_ready "$vpid"
curl -s -o /dev/null -X POST -H 'Content-Length: 0' "$URL"
kill -TERM "$vpid"; wait "$vpid" || true

python3 - "$TMP/callgrind.out" "$BIN" "${ORDER:-}" <<'PY'
import bisect, re, subprocess, sys
out, binary, order = sys.argv[1:]
names, addrs, ob, pos = {}, set(), None, 0
for line in open(out, errors="replace"):
    if line.startswith(("ob=", "cob=")):
        m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
        if line.startswith("ob="):
            ob = names.get(m.group(1)) if m else line[3:].strip()
    elif line[:1] in "0123456789+-*":
        token = line.split()[0]
        if token.startswith("0x"):
            pos = int(token, 16)
        elif token[0] in "+-":
            pos += int(token)
        elif token != "*":
            continue
        if ob == binary:
            addrs.add(pos)
symbols = []
for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if len(f) >= 4 and f[2] in "tTwW":
        symbols.append((int(f[0], 16), int(f[1], 16), f[3]))
symbols.sort()
starts = [s[0] for s in symbols]
used = set()
for a in addrs:
    i = bisect.bisect_right(starts, a) - 1
    if i >= 0 and symbols[i][0] <= a < symbols[i][0] + symbols[i][1]:
        used.add(i)
size = sum(symbols[i][1] for i in used)
print(f"executed: {len(addrs)} instruction addresses in {len(used)} functions, {size // 1024} KiB of code")
print(f"spread over {len({a >> 12 for a in addrs})} pages of 4 KiB, {len({a >> 16 for a in addrs})} windows of 64 KiB")
if order:
    with open(order, "w") as f:
        f.writelines(symbols[i][2] + "\n" for i in sorted(used))
    print(f"{len(used)} symbols written to {order}")
PY

# The same binary without valgrind: its idle RSS after one request.
"$BIN" run --config "$TMP/proxy.toml" 2> "$TMP/idle.log" &
pid=$!; PIDS+=("$pid")
wait_ready "$pid"
curl -s -o /dev/null -X POST -H 'Content-Length: 0' "$URL"
sleep 1
grep -E '^(VmRSS|RssAnon|RssFile):' "/proc/$pid/status" | tr -s ' \t' ' ' | paste -sd' '
awk -v bin="$BIN" '/^[0-9a-f]+-/{name=$6; perm=$2} /^Rss:/{if(name==bin) print "  " perm, $2, "kB"}' "/proc/$pid/smaps"
