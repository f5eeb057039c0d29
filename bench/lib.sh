# Shared helpers for the bench scripts (sourced). Loopback only; every wait is bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUP="$ROOT/target/release/supervisor"
DEMO="$ROOT/target/release/demo-app"
OUT=${BENCH_OUT:-$ROOT/bench/out}
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bench: '$1' not found: $2" >&2; exit 1; }; }

build() {
  need wrk "install it with: apt-get install -y wrk"
  (cd "$ROOT" && cargo build --release -q -p supervisor -p demo)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http PORT: until GET /healthz answers (10 s at most).
wait_http() {
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench: nothing answers on port $1" >&2; return 1
}

# write_config FILE PORT INSTANCES: a supervisor config for demo-app.
write_config() {
  cat > "$1" <<CONF
[supervisor]
control_socket = "$(dirname "$1")/bench-$2.sock"
[[listen]]
name = "http"
address = "127.0.0.1:$2"
[worker]
command = "$DEMO"
instances = $3
ready_timeout = "10s"
kill_timeout = "10s"
CONF
}

# start_supervisor CONFIG INSTANCES: starts it in the background, sets SUP_PID, waits until ready.
start_supervisor() {
  "$SUP" start -c "$1" > "$OUT/supervisor.log" 2>&1 &
  SUP_PID=$!
  for _ in $(seq 1 200); do
    n=$("$SUP" status --json -c "$1" 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for w in json.load(sys.stdin)["workers"] if w["state"]=="ready"))' 2>/dev/null || echo 0)
    [ "$n" = "$2" ] && return 0
    sleep 0.05
  done
  echo "bench: supervisor did not get $2 ready workers; log: $OUT/supervisor.log" >&2; return 1
}

stop_supervisor() {
  "$SUP" stop -c "$1" >/dev/null 2>&1 || kill "$SUP_PID" 2>/dev/null || true
  wait "$SUP_PID" 2>/dev/null || true
}

# wrk_summary FILE: "requests errors rps p50 p99" from a wrk --latency report.
# errors = connect + read + write + timeout socket errors + non-2xx/3xx responses.
wrk_summary() {
  awk '
    /requests in/ {req=$1}
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {p50=$2}
    /^ +99%/ {p99=$2}
    /Socket errors/ {gsub(",","",$0); for(i=1;i<=NF;i++){ if($i ~ /^[0-9]+$/) err+=$i }}
    /Non-2xx or 3xx responses/ {err+=$NF}
    END {printf "%s %d %s %s %s\n", req, err, rps, (p50==""?"-":p50), (p99==""?"-":p99)}' "$1"
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
