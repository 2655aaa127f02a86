#!/usr/bin/env bash
# Cluster benchmark: 8 replicas, the mock Zuora with a 40-request concurrency limit and 50 ms
# latency, a closed-loop load of CALLERS (default 96, more than 40) for SECONDS (default 10)
# per mode, in one run: [cluster] through a real redis-server, local mode (each replica capped
# at 40) and a static share (each capped at 5). Prints throughput as a share of the ideal
# 40 / 50 ms, Zuora's 429s, p50/p99, token fetches, and what a permit adds on its own.
# Loopback only; the redis-server started here is stopped by its PID on exit.
#
#   bash bench/cluster.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
DIR="$(mktemp -d /tmp/zap-cluster-bench.XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
REDIS_PID=$!
cleanup() { kill -TERM "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
cd "$ROOT"
REDIS_URL="redis://127.0.0.1:$PORT" cargo run --quiet --release --example cluster_bench
