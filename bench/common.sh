# Sourced by compare.sh, callgrind.sh and memory.sh: the bench's certificates and the proxy's configuration.

# A CA and a server certificate for 127.0.0.1 / localhost, in directory $1.
make_certs() {
  local c="$1"
  mkdir -p "$c"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout "$c/ca.key" -out "$c/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$c/server.key" -out "$c/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$c/ext.cnf"
  openssl x509 -req -in "$c/server.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial -days 2 -extfile "$c/ext.cnf" -out "$c/server.pem" 2>/dev/null
}

# The proxy's configuration, in file $1: listener :19080, admin :19090, log level $3, the mock
# upstream on :19443 trusted through CA file $2, server.workers $4 (left out when empty).
proxy_config() {
  cat > "$1" <<EOF
[server]
listen = "127.0.0.1:19080"
${4:+workers = $4}
[admin]
listen = "127.0.0.1:19090"
[log]
format = "json"
level = "$3"
[tenants.bench]
base_url = "https://127.0.0.1:19443"
client_id = "bench"
client_secret = "bench"
ca_file = "$2"
[[routes]]
name = "abort-bulk-job"
method = "POST"
path = "/bulk-data/bulk-jobs/{id:uuid}/aborts"
EOF
}

# The TLS upstream standing in for Zuora (nginx on :19443, one worker, bench/upstream.nginx.conf)
# with its certificates in $1/certs; appends nginx's pid to PIDS and returns once it accepts
# connections. Needs ROOT.
start_upstream() {
  local dir="$1"
  mkdir -p "$dir/upstream-tmp"
  make_certs "$dir/certs"
  sed -e "s#BENCH_TMP#$dir#g" "$ROOT/bench/upstream.nginx.conf" > "$dir/upstream.conf"
  nginx -c "$dir/upstream.conf" -e "$dir/upstream.err.log" -g "worker_processes 1;" &
  PIDS+=("$!")
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/19443) 2>/dev/null && break; sleep 0.05; done
}
