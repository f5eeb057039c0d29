# Shared helpers for the bench scripts (sourced). Loopback only; every wait is bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The release binaries, in cargo's target directory (CARGO_TARGET_DIR when set, as cargo does).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SUP="$TARGET_DIR/release/supervisor"
DEMO="$TARGET_DIR/release/demo-app"
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

# write_config FILE PORT INSTANCES [COMMAND [ARG...]]: a supervisor config for demo-app, or for
# COMMAND ARG... (e.g. node /abs/path/app.js) when given; with BALANCE set (shared, sticky or
# spread), the app's `balance`.
write_config() {
  local command=${4:-$DEMO} args="" a balance=""
  for a in "${@:5}"; do args+="${args:+, }\"$a\""; done
  [ -z "${BALANCE:-}" ] || balance="balance = \"$BALANCE\""
  cat > "$1" <<CONF
[supervisor]
control_socket = "$(dirname "$1")/bench-$2.sock"
[[app]]
name = "$(basename "$command" | tr -c 'A-Za-z0-9_\n-' _)"
command = "$command"
args = [$args]
instances = $3
$balance
ready_timeout = "10s"
kill_timeout = "10s"
[[app.listen]]
name = "http"
address = "127.0.0.1:$2"
CONF
}

# start_supervisor CONFIG INSTANCES [LOG]: starts it in the background, sets SUP_PID, waits until
# ready. LOG defaults to $OUT/supervisor.log.
start_supervisor() {
  local n
  "$SUP" start -c "$1" > "${3:-$OUT/supervisor.log}" 2>&1 &
  SUP_PID=$!
  for _ in $(seq 1 200); do
    n=$("$SUP" status --json -c "$1" 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for a in json.load(sys.stdin)["apps"] for w in a["workers"] if w["state"]=="ready"))' 2>/dev/null || echo 0)
    [ "$n" = "$2" ] && return 0
    sleep 0.05
  done
  echo "bench: supervisor did not get $2 ready workers; log: ${3:-$OUT/supervisor.log}" >&2; return 1
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

# kb_mb KB: "12.3 MB".
kb_mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k/1024 }'; }

# port_busy PORT: true when something listens on TCP PORT (any address).
port_busy() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# wait_port_free PORT [SECONDS]: until nothing listens on PORT (10 s by default).
wait_port_free() {
  local i
  for i in $(seq 1 $(( ${2:-10} * 20 ))); do port_busy "$1" || return 0; sleep 0.05; done
  echo "bench: port $1 is still in use" >&2; return 1
}

# wait_answers PORT [SECONDS]: until 127.0.0.1:PORT answers HTTP at all, any status (10 s default).
# For apps without /healthz: GET / costs nothing even when only a 404.
wait_answers() {
  local i
  for i in $(seq 1 $(( ${2:-10} * 20 ))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null)" != 000 ] && return 0
    sleep 0.05
  done
  echo "bench: nothing answers on port $1" >&2; return 1
}

# alive PID: the process exists and is not a zombie.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# kill_tree PID...: SIGTERM to each PID and all its descendants, SIGKILL what is left after 10 s.
kill_tree() {
  local all=() queue=("$@") p i left
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}; queue=("${queue[@]:1}")
    alive "$p" || continue
    all+=("$p")
    # shellcheck disable=SC2207
    queue+=($(pgrep -P "$p" || true))
  done
  [ ${#all[@]} -gt 0 ] || return 0
  kill -TERM "${all[@]}" 2>/dev/null || true
  for i in $(seq 1 200); do
    left=0
    for p in "${all[@]}"; do alive "$p" && left=1 && break; done
    [ "$left" = 0 ] && break
    sleep 0.05
  done
  [ "$left" = 0 ] || kill -KILL "${all[@]}" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# reload_under_load NAME keepalive|close RELOAD_CMD COUNT PORT [CONNS]: constant wrk load on /heavy
# (2 s before the first reload and after the last), RELOAD_CMD run COUNT times (120 s each at
# most). Prints "requests failures reloads_ok reloads_failed ms_per_reload req/s"; the wrk report
# is $OUT/wrk-<name>.txt. Failures as in wrk_summary.
reload_under_load() {
  local name=$1 mode=$2 reload_cmd=$3 count=$4 port=$5 conns=${6:-${CONNS:-64}}
  local report="$OUT/wrk-$(echo "$name" | tr -c 'a-z0-9\n' '_').txt"
  local extra=() wrk_pid start end ok=0 bad=0 req err rps p50 p99
  [ "$mode" = close ] && extra=(-H "Connection: close")
  # wrk stops at SIGINT and prints its report; -d only bounds it.
  wrk -t2 -c"$conns" -d600s --timeout 5s --latency "${extra[@]}" "http://127.0.0.1:$port/heavy" > "$report" 2>&1 &
  wrk_pid=$!
  sleep 2
  start=$(date +%s%N)
  for _ in $(seq 1 "$count"); do
    if timeout 120 bash -c "$reload_cmd" >/dev/null 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); fi
  done
  end=$(date +%s%N)
  sleep 2
  kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
  read -r req err rps p50 p99 < <(wrk_summary "$report")
  echo "$req $err $ok $bad $(( (end-start)/1000000/(count>0?count:1) )) $rps"
}

# Hosts as network namespaces (root only; what tests/src/netns.rs does, in shell). A lab named
# BASE is namespace BASE-hub holding bridge br0, BASE-redis at 10.231.250.1 and BASE-h1..hN at
# 10.231.250.11.., each joined to br0 by a veth pair. The 10.231.250.0/24 addresses exist only
# inside the lab's namespaces.
LAB_NET=10.231.250

# lab_up BASE N: builds the lab (bench: exits if not root or `ip netns` fails).
lab_up() {
  local base=$1 n=$2 i
  [ "$(id -u)" = 0 ] || { echo "bench: HOSTS=netns needs root (ip netns add)" >&2; exit 1; }
  need ip "apt-get install -y iproute2"
  ip netns add "$base-hub" || { echo "bench: ip netns add failed: network namespaces unavailable" >&2; exit 1; }
  ip -n "$base-hub" link add br0 type bridge
  ip -n "$base-hub" link set br0 up
  lab_join "$base" redis r "$LAB_NET.1"
  for i in $(seq 1 "$n"); do lab_join "$base" "h$i" "h$i" "$LAB_NET.$((10 + i))"; done
}

# lab_join BASE ROLE PORT ADDR: namespace BASE-ROLE with eth0 at ADDR/24, its peer PORT on br0.
lab_join() {
  local ns="$1-$2"
  ip netns add "$ns"
  ip -n "$1-hub" link add "$3" type veth peer name eth0 netns "$ns"
  ip -n "$1-hub" link set "$3" master br0
  ip -n "$1-hub" link set "$3" up
  ip -n "$ns" addr add "$4/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

# lab_down BASE: kills every process left in the lab's namespaces, then deletes them.
lab_down() {
  local ns pids
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$1-" || true); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
