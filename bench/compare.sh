#!/usr/bin/env bash
# Side-by-side proof, in one run, on loopback only: the seeds' Express app (examples/node-express,
# unchanged: it listens on the hard-coded port 3000) under node alone, node cluster, pm2 and
# supervisor, plus the Rust demo-app alone and under supervisor. Measures:
#  1. throughput on /heavy, each setup alone on the machine in turn: the seeds' own command
#     `loadtest -n 1200 -c 200 -k` (req/s, mean latency), then `wrk -t2 -c$CONNS -d$DURATION`
#     after a short warm-up (req/s, p50, p99, errors);
#  2. reloads under load: RELOADS x `pm2 reload` vs `supervisor reload` of the Node app under
#     constant wrk load, keep-alive and `Connection: close` (requests, failures = connect, read,
#     write, timeout errors + non-2xx, time per reload);
#  3. resident memory of the manager (pm2 daemon "God", node cluster primary, supervisor) while it
#     runs N workers: idle, after the load, after the reloads;
#  4. how $SPREAD_CONNS keep-alive connections spread over the workers of the Node app: supervisor
#     with `balance = "shared"` (one accept queue), `balance = "spread"` (a socket per worker, the
#     kernel hashing each connection's addresses and ports) and node cluster's round robin (the
#     primary accepts and hands each connection on), counted with `ss -tnp` while wrk runs
#     (connections per worker pid; for supervisor also the `conns` column of `supervisor status`,
#     as a cross-check), with the req/s of that run.
# Prints one report with the ratios that matter (supervisor-node req/s / pm2 req/s, goal >= 1.05;
# supervisor RSS / pm2 daemon RSS, goal < 1/8; reload failures of both), writes it to
# bench/out/compare.txt and a chart to bench/out/compare.png (gnuplot, else matplotlib).
#
#   bench/compare.sh                                   # RELOADS=20 DURATION=10 CONNS=64 N=nproc
#   RELOADS=2 DURATION=3 NO_BUILD=1 bench/compare.sh   # a quick smoke run, no cargo build
#   ONLY=spread DURATION=5 bench/compare.sh            # section 4 alone (no pm2, no loadtest),
#                                                      # to bench/out/compare-spread.txt
# Other knobs: WARMUP=2 (s), LT_REQUESTS=1200, LT_CONC=200, SPREAD_CONNS=200, SPREAD_DURATION
# (s, default DURATION). Needs wrk and node (apt-get install wrk nodejs npm); pm2 and loadtest
# are installed into bench/out/tools when missing, express by `npm ci` in examples/node-express.
# Port 3000 must be free. Everything started is stopped on exit.
source "$(dirname "$0")/lib.sh"
RELOADS=${RELOADS:-20}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
N=${N:-$(nproc)}
WARMUP=${WARMUP:-2}
LT_REQUESTS=${LT_REQUESTS:-1200}
LT_CONC=${LT_CONC:-200}
ONLY=${ONLY:-}
SPREAD_CONNS=${SPREAD_CONNS:-200}
SPREAD_DURATION=${SPREAD_DURATION:-$DURATION}
LT_LABEL="loadtest -n $LT_REQUESTS -c $LT_CONC -k"
APP_DIR="$ROOT/examples/node-express"
APP_PORT=3000 # hard-coded in the app
PM2_APP=compare-app
export PM2_HOME="$OUT/pm2-home"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- preflight and cleanup

need wrk "install it with: apt-get install -y wrk"
need node "install Node.js (apt-get install -y nodejs npm)"
need npm "install it with: apt-get install -y npm"
need curl "install it with: apt-get install -y curl"
need ss "install it with: apt-get install -y iproute2"
need python3 "install it with: apt-get install -y python3"
if [ "${NO_BUILD:-0}" != 1 ]; then build; fi
[ -x "$SUP" ] && [ -x "$DEMO" ] || { echo "compare: $SUP or $DEMO missing (cargo build --release)" >&2; exit 1; }
if port_busy "$APP_PORT"; then
  echo "compare: port $APP_PORT is in use; the Node app hard-codes it, free it first:" >&2
  ss -ltnp "sport = :$APP_PORT" >&2 || true
  exit 1
fi

# tool NAME: path of NAME from bench/out/tools, else the PATH, else installs it into bench/out/tools.
tool() {
  local private="$OUT/tools/node_modules/.bin/$1"
  if [ -x "$private" ]; then echo "$private"; return; fi
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  echo "compare: installing $1 into $OUT/tools" >&2
  npm install --prefix "$OUT/tools" --no-audit --no-fund "$1" >&2
  echo "$private"
}
if [ "$ONLY" = spread ]; then
  PM2=true LOADTEST=false # section 4 needs neither
else
  PM2=$(tool pm2)
  LOADTEST=$(tool loadtest)
fi
if [ ! -d "$APP_DIR/node_modules/express" ]; then
  echo "compare: npm ci in $APP_DIR" >&2
  (cd "$APP_DIR" && npm ci --no-audit --no-fund >&2)
fi

STARTED=() # pids of every process this script started in the background
cleanup() {
  trap - EXIT INT TERM
  [ ${#STARTED[@]} -eq 0 ] || kill_tree "${STARTED[@]}"
  # shellcheck disable=SC2046 # and whatever else runs under this script (wrk in a subshell)
  kill_tree $(pgrep -P $$ || true)
  "$PM2" kill >/dev/null 2>&1 || true
  local god
  god=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null || true)
  [ -n "$god" ] && kill_tree "$god"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$PM2" kill >/dev/null 2>&1 || true # a daemon left in our PM2_HOME by an interrupted run

# ---------------------------------------------------------------- setups
# start_KIND PORT starts one setup and waits until its N workers listen. It sets STOP (a command),
# MGR_PID (the manager's pid, empty for a single process) and RELOAD (a reload command, or empty).

# launch LOG DIR CMD...: runs CMD in DIR in the background; LAUNCHED is its pid.
launch() {
  local log=$1 dir=$2; shift 2
  (cd "$dir" && exec "$@") > "$log" 2>&1 &
  LAUNCHED=$!
  STARTED+=("$LAUNCHED")
}

# wait_children PID COUNT: until PID has COUNT child processes (20 s at most).
wait_children() {
  local i
  for i in $(seq 1 400); do
    [ "$(pgrep -P "$1" | wc -l)" -ge "$2" ] && return 0
    alive "$1" || break
    sleep 0.05
  done
  echo "compare: pid $1 did not get $2 workers" >&2; return 1
}

start_node() {
  launch "$OUT/cmp-node.log" "$APP_DIR" node index.js
  STOP="kill_tree $LAUNCHED"; MGR_PID=; RELOAD=
  wait_answers "$1" 20
}

start_cluster() {
  launch "$OUT/cmp-cluster.log" "$APP_DIR" node primary.js
  STOP="kill_tree $LAUNCHED"; MGR_PID=$LAUNCHED; RELOAD=; SUP_CFG=
  wait_children "$LAUNCHED" "$(nproc)" && wait_answers "$1" 20
}

start_pm2() {
  STOP="pm2_stop"; RELOAD="'$PM2' reload $PM2_APP"
  (cd "$APP_DIR" && "$PM2" start index.js -i "$N" --name "$PM2_APP") > "$OUT/cmp-pm2.log" 2>&1 || return 1
  MGR_PID=$(cat "$PM2_HOME/pm2.pid")
  wait_children "$MGR_PID" "$N" && wait_answers "$1" 20
}
pm2_stop() { "$PM2" delete "$PM2_APP" >/dev/null 2>&1 || true; "$PM2" kill >/dev/null 2>&1 || true; }

# start_under_supervisor PORT LOGNAME COMMAND ARG...
start_under_supervisor() {
  local port=$1 name=$2; shift 2
  local cfg="$OUT/cmp-$name.toml"
  write_config "$cfg" "$port" "$N" "$@"
  STOP="stop_supervisor '$cfg'"; RELOAD="'$SUP' reload -c '$cfg'"; SUP_CFG=$cfg
  start_supervisor "$cfg" "$N" "$OUT/cmp-$name.log"
  local rc=$?
  STARTED+=("$SUP_PID"); MGR_PID=$SUP_PID
  return $rc
}
start_sup_node() { start_under_supervisor "$1" sup-node "$(command -v node)" "$APP_DIR/index.js"; }
# For section 4: the same, with the app's balance.
start_sup_shared() { BALANCE=shared start_under_supervisor "$1" sup-shared "$(command -v node)" "$APP_DIR/index.js"; }
start_sup_spread() { BALANCE=spread start_under_supervisor "$1" sup-spread "$(command -v node)" "$APP_DIR/index.js"; }
start_sup_demo() { start_under_supervisor "$1" sup-demo "$DEMO"; }

start_demo() {
  launch "$OUT/cmp-demo.log" "$ROOT" "$DEMO" --listen "127.0.0.1:$1"
  STOP="kill_tree $LAUNCHED"; MGR_PID=; RELOAD=
  wait_http "$1"
}

# ---------------------------------------------------------------- measurements
declare -A LABEL FAILED LT_RPS LT_MEAN LT_ERR WRK_RPS WRK_P50 WRK_P99 WRK_ERR CLOSE_RPS CLOSE_ERR
declare -A RSS_IDLE RSS_LOAD RSS_RELOAD REL_REQ REL_FAIL REL_OK REL_BAD REL_MS REL_RPS
KEYS=()

# loadtest_summary FILE: "req/s mean_ms errors" (loadtest 8 says "Effective rps", older ones
# "Requests per second").
loadtest_summary() {
  awk -F: '
    /Effective rps|Requests per second/ {gsub(/ /,"",$2); rps=$2}
    /Mean latency/ {split($2,a," "); mean=a[1]}
    /Total errors/ {gsub(/ /,"",$2); err=$2}
    END {printf "%s %s %s\n", (rps==""?"-":rps), (mean==""?"-":mean), (err==""?"-":err)}' "$1"
}

throughput() { # throughput KEY PORT
  local url="http://127.0.0.1:$2/heavy" lt="$OUT/cmp-loadtest-$1.txt" report="$OUT/cmp-wrk-$1.txt" req
  wrk -t2 -c"$CONNS" -d"${WARMUP}s" "$url" > /dev/null 2>&1 || true
  timeout 300 "$LOADTEST" -n "$LT_REQUESTS" -c "$LT_CONC" -k "$url" > "$lt" 2>&1 || true
  read -r LT_RPS[$1] LT_MEAN[$1] LT_ERR[$1] < <(loadtest_summary "$lt")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "$url" > "$report" 2>&1 || true
  read -r req WRK_ERR[$1] WRK_RPS[$1] WRK_P50[$1] WRK_P99[$1] < <(wrk_summary "$report")
  # A new connection per request: where a manager that accepts every connection (node cluster's
  # and pm2's round-robin primary) is in the data path.
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s -H "Connection: close" "$url" > "$report.close" 2>&1 || true
  local p50 p99
  read -r req CLOSE_ERR[$1] CLOSE_RPS[$1] p50 p99 < <(wrk_summary "$report.close")
}

reloads() { # reloads KEY PORT
  local mode
  for mode in keepalive close; do
    read -r REL_REQ[$1.$mode] REL_FAIL[$1.$mode] REL_OK[$1.$mode] REL_BAD[$1.$mode] \
      REL_MS[$1.$mode] REL_RPS[$1.$mode] < <(reload_under_load "cmp-$1-$mode" "$mode" "$RELOAD" "$RELOADS" "$2" "$CONNS")
  done
}

# run_setup KEY LABEL PORT: start_KEY, throughput, manager memory, reloads when it has a reload
# command, stop; each setup alone on the machine.
run_setup() {
  local key=$1 port=$3
  KEYS+=("$key"); LABEL[$key]=$2
  echo "compare: $2 ..." >&2
  wait_port_free "$port" 20 || { FAILED[$key]="port $port still busy"; return; }
  if ! "start_$key" "$port"; then
    FAILED[$key]="did not become ready (logs: $OUT/cmp-*.log)"
  else
    sleep 1 # every worker listening, not just the first
    [ -n "$MGR_PID" ] && RSS_IDLE[$key]=$(rss_kb "$MGR_PID")
    throughput "$key" "$port"
    [ -n "$MGR_PID" ] && RSS_LOAD[$key]=$(rss_kb "$MGR_PID")
    if [ -n "$RELOAD" ]; then
      reloads "$key" "$port"
      RSS_RELOAD[$key]=$(rss_kb "$MGR_PID" 2>/dev/null || echo)
    fi
  fi
  eval "$STOP" || true
  [ ${#STARTED[@]} -eq 0 ] || kill_tree "${STARTED[@]}" # whatever the stop left behind
  STARTED=()
}

# ---------------------------------------------------------------- 4. connection spread
declare -A SP_LABEL SP_FAILED SP_COUNTS SP_STATUS SP_RPS SP_ERR SP_TOTAL SP_OPEN
SP_KEYS=()

# worker_pids: the worker pids of the setup running (a supervisor's from its status, node
# cluster's the primary's children).
worker_pids() {
  if [ -n "${SUP_CFG:-}" ]; then
    "$SUP" status --json -c "$SUP_CFG" | python3 -c 'import json,sys; print(" ".join(str(w["process"]["pid"]) for a in json.load(sys.stdin)["apps"] for w in a["workers"]))'
  else
    pgrep -P "$MGR_PID" | tr '\n' ' '
  fi
}

# conn_counts PORT PID...: established connections to 127.0.0.1:PORT held by each PID (ss -tnp:
# a socket's holders are listed as pid=N), ascending, space-separated; a PID holding none is 0.
conn_counts() {
  local port=$1; shift
  ss -Htnp state established "( sport = :$port )" 2>/dev/null | awk -v pids="$*" '
    BEGIN { n = split(pids, p, " "); for (i = 1; i <= n; i++) c[p[i]] = 0 }
    { delete seen; s = $0
      while (match(s, /pid=[0-9]+/)) { q = substr(s, RSTART + 4, RLENGTH - 4); s = substr(s, RSTART + RLENGTH)
        if ((q in c) && !(q in seen)) { c[q]++; seen[q] = 1 } } }
    END { for (q in c) print c[q] }' | sort -n | tr '\n' ' ' | sed 's/ $//'
}

# status_counts: the `conns` column of `supervisor status` (JSON), ascending (empty for node).
status_counts() {
  [ -n "${SUP_CFG:-}" ] || return 0
  "$SUP" status --json -c "$SUP_CFG" | python3 -c 'import json,sys; print(" ".join(sorted((str(w.get("connections", "-")) for a in json.load(sys.stdin)["apps"] for w in a["workers"]), key=lambda x: (len(x), x))))'
}

# spread_setup KEY LABEL PORT: start_KEY, then wrk -c$SPREAD_CONNS keep-alive on /heavy, the
# connections per worker sampled while it runs; then stop.
spread_setup() {
  local key=$1 port=$3 report="$OUT/cmp-spread-$1.txt" wrk_pid pids req p50 p99 best end counts total
  SP_KEYS+=("$key"); SP_LABEL[$key]=$2
  echo "compare: spread, $2 ..." >&2
  wait_port_free "$port" 20 || { SP_FAILED[$key]="port $port still busy"; return; }
  if ! "start_$key" "$port"; then
    SP_FAILED[$key]="did not become ready (logs: $OUT/cmp-*.log)"
  else
    sleep 1 # every worker listening, not just the first
    pids=$(worker_pids)
    wrk -t2 -c"$SPREAD_CONNS" -d"${SPREAD_DURATION}s" --timeout 5s --latency "http://127.0.0.1:$port/heavy" > "$report" 2>&1 &
    wrk_pid=$!
    # Every half second from 1 s on, until 1 s before the end: the sample in which the workers
    # hold the most connections (busy workers leave connections in the accept queue a while:
    # those are nobody's yet).
    sleep 1
    best=-1; end=$(( $(date +%s) + SPREAD_DURATION - 2 ))
    while alive "$wrk_pid"; do
      # shellcheck disable=SC2086 # one pid per word
      counts=$(conn_counts "$port" $pids)
      total=$(( $(tr ' ' '+' <<< "${counts:-0}") ))
      if [ "$total" -gt "$best" ]; then
        best=$total; SP_COUNTS[$key]=$counts; SP_STATUS[$key]=$(status_counts)
        SP_OPEN[$key]=$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l)
      fi
      [ "$(date +%s)" -lt "$end" ] || break
      sleep 0.5
    done
    SP_TOTAL[$key]=$best
    wait "$wrk_pid" 2>/dev/null || true
    read -r req SP_ERR[$key] SP_RPS[$key] p50 p99 < <(wrk_summary "$report")
  fi
  eval "$STOP" || true
  [ ${#STARTED[@]} -eq 0 ] || kill_tree "${STARTED[@]}"
  STARTED=()
}

# spread_stats COUNTS...: "min max max/min stddev" of the counts (max/min "inf" when min is 0).
spread_stats() {
  awk 'BEGIN { n = ARGC - 1; if (n == 0) { print "- - - -"; exit }
    for (i = 1; i < ARGC; i++) { v = ARGV[i] + 0; s += v; q += v * v; if (i == 1 || v < lo) lo = v; if (v > hi) hi = v }
    m = s / n; sd = sqrt(q / n - m * m)
    printf "%d %d %s %.1f\n", lo, hi, (lo > 0 ? sprintf("%.2f", hi / lo) : "inf"), sd }' "$@"
}

spread_report() {
  local k min max ratio sd
  echo "== 4. Spread of $SPREAD_CONNS keep-alive connections over the workers of the Node app"
  echo "   (wrk -t2 -c$SPREAD_CONNS -d${SPREAD_DURATION}s on /heavy; connections per worker pid from ss -tnp, every 0.5 s,"
  echo "   the sample where the workers held the most: \"held\" of those open; the others waited in an accept queue"
  echo "   (supervisor) or in the primary (node cluster hands a connection on when a worker is free); supervisor"
  echo "   rows also give the \`conns\` column of supervisor status then; errors: requests not answered in 5 s)"
  printf '%-34s %7s %-24s %7s %5s %5s %7s %6s %9s %6s  %s\n' setup workers "connections per worker" held min max max/min stddev "req/s" errors "status conns"
  for k in "${SP_KEYS[@]}"; do
    if [ -n "${SP_FAILED[$k]:-}" ]; then printf '%-34s %s\n' "${SP_LABEL[$k]}" "FAILED: ${SP_FAILED[$k]}"; continue; fi
    # shellcheck disable=SC2086
    read -r min max ratio sd < <(spread_stats ${SP_COUNTS[$k]})
    printf '%-34s %7s %-24s %7s %5s %5s %7s %6s %9s %6s  %s\n' "${SP_LABEL[$k]}" "$(wc -w <<< "${SP_COUNTS[$k]}")" \
      "${SP_COUNTS[$k]}" "${SP_TOTAL[$k]}/${SP_OPEN[$k]}" "$min" "$max" "$ratio" "$sd" "${SP_RPS[$k]}" "${SP_ERR[$k]}" "${SP_STATUS[$k]:--}"
  done
}

# ---------------------------------------------------------------- report

# ratio A B: A/B with 2 decimals, "n/a" when either is missing.
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a+0>0 && b+0>0) printf "%.2f", a/b; else printf "n/a" }'; }
# goal VALUE OP LIMIT: "met" / "NOT met" / "-".
goal() { awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { if (v=="n/a") print "-"; else if ((op==">=" && v>=l) || (op=="<" && v<l)) print "met"; else print "NOT met" }'; }
mem() { [ -n "${1:-}" ] && kb_mb "$1" || echo "-"; }
pct() { awk -v f="${1:-}" -v r="${2:-}" 'BEGIN { if (r+0>0) printf "%.2f%%", 100*f/r; else printf "-" }'; }

report() {
  local k m
  echo "supervisor vs pm2 vs node cluster: $(date -u +%FT%TZ), $(nproc) CPUs, N=$N workers, loopback, /heavy"
  echo "load average before: $LOAD_START, after: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running skews every figure)"
  echo
  echo "== 1. Throughput, each setup alone (loadtest -n $LT_REQUESTS -c $LT_CONC -k; wrk -t2 -c$CONNS -d${DURATION}s after ${WARMUP}s warm-up,"
  echo "   keep-alive, then with a new connection per request)"
  printf '%-42s %13s %10s %9s %10s %9s %9s %7s %12s %7s\n' setup "loadtest r/s" "mean ms" "lt errs" "wrk r/s" p50 p99 errors "new-conn r/s" errors
  for k in "${KEYS[@]}"; do
    if [ -n "${FAILED[$k]:-}" ]; then printf '%-42s %s\n' "${LABEL[$k]}" "FAILED: ${FAILED[$k]}"; continue; fi
    printf '%-42s %13s %10s %9s %10s %9s %9s %7s %12s %7s\n' "${LABEL[$k]}" "${LT_RPS[$k]}" "${LT_MEAN[$k]}" "${LT_ERR[$k]}" \
      "${WRK_RPS[$k]}" "${WRK_P50[$k]}" "${WRK_P99[$k]}" "${WRK_ERR[$k]}" "${CLOSE_RPS[$k]}" "${CLOSE_ERR[$k]}"
  done
  echo
  echo "== 2. Reloads under load: $RELOADS reloads of the Node app ($N workers), wrk -t2 -c$CONNS on /heavy"
  echo "   (failures = connect/read/write/timeout errors + non-2xx; demo-app rows: the Rust worker, for reference)"
  printf '%-42s %9s %9s %8s %10s %12s %8s\n' setup requests failures failed "reloads ok" "time/reload" "req/s"
  for m in keepalive close; do
    for k in pm2 sup_node sup_demo; do
      local name
      name="$(case $k in pm2) echo 'pm2 reload';; sup_node) echo 'supervisor reload';; *) echo 'supervisor reload, demo-app';; esac)"
      name+=", $([ $m = keepalive ] && echo keep-alive || echo 'Connection: close')"
      if [ -z "${REL_REQ[$k.$m]:-}" ]; then printf '%-42s %s\n' "$name" "not measured (${FAILED[$k]:-?})"; continue; fi
      printf '%-42s %9s %9s %8s %10s %12s %8s\n' "$name" "${REL_REQ[$k.$m]}" "${REL_FAIL[$k.$m]}" \
        "$(pct "${REL_FAIL[$k.$m]}" "${REL_REQ[$k.$m]}")" "${REL_OK[$k.$m]}/$RELOADS" "${REL_MS[$k.$m]} ms" "${REL_RPS[$k.$m]}"
    done
  done
  echo
  echo "== 3. Manager resident memory (VmRSS) while it runs its workers"
  printf '%-42s %12s %12s %14s\n' manager idle "after load" "after reloads"
  for k in pm2 cluster sup_node sup_demo; do
    [ -n "${LABEL[$k]:-}" ] || continue
    local who; case $k in pm2) who="pm2 daemon (God), $N workers";; cluster) who="node cluster primary, $(nproc) workers";;
      sup_node) who="supervisor, $N node workers";; sup_demo) who="supervisor, $N demo-app workers";; esac
    printf '%-42s %12s %12s %14s\n' "$who" "$(mem "${RSS_IDLE[$k]:-}")" "$(mem "${RSS_LOAD[$k]:-}")" "$(mem "${RSS_RELOAD[$k]:-}")"
  done
  echo
  echo "== Ratios"
  local r_wrk r_lt r_close r_mem mem_note=""
  r_wrk=$(ratio "${WRK_RPS[sup_node]:-}" "${WRK_RPS[pm2]:-}")
  r_close=$(ratio "${CLOSE_RPS[sup_node]:-}" "${CLOSE_RPS[pm2]:-}")
  r_lt=$(ratio "${LT_RPS[sup_node]:-}" "${LT_RPS[pm2]:-}")
  r_mem=$(ratio "${RSS_LOAD[sup_node]:-}" "${RSS_LOAD[pm2]:-}")
  if [ "$r_mem" = n/a ] && [ -n "${RSS_LOAD[sup_demo]:-}" ]; then
    r_mem=$(ratio "${RSS_LOAD[sup_demo]}" "${RSS_LOAD[pm2]:-}"); mem_note=" (supervisor with demo-app workers: node row missing)"
  fi
  printf '%-52s %6s   goal >= 1.05   %s\n' "supervisor+node req/s / pm2 req/s, wrk" "$r_wrk" "$(goal "$r_wrk" '>=' 1.05)"
  printf '%-52s %6s   goal >= 1.05   %s\n' "supervisor+node req/s / pm2 req/s, loadtest" "$r_lt" "$(goal "$r_lt" '>=' 1.05)"
  printf '%-52s %6s   goal >= 1.05   %s\n' "supervisor+node req/s / pm2 req/s, new connections" "$r_close" "$(goal "$r_close" '>=' 1.05)"
  printf '%-52s %6s   goal <  0.125  %s%s\n' "supervisor RSS / pm2 daemon RSS, after load" "$r_mem" "$(goal "$r_mem" '<' 0.125)" "$mem_note"
  for m in keepalive close; do
    printf '%-52s pm2 %s of %s, supervisor %s of %s   goal: supervisor 0\n' \
      "reload failures over $RELOADS reloads, $([ $m = keepalive ] && echo keep-alive || echo 'Connection: close')" \
      "${REL_FAIL[pm2.$m]:--}" "${REL_REQ[pm2.$m]:--}" "${REL_FAIL[sup_node.$m]:--}" "${REL_REQ[sup_node.$m]:--}"
  done
}

# ---------------------------------------------------------------- chart

# chart_data: $OUT/compare-rps.dat (setup, loadtest r/s, wrk r/s) and $OUT/compare-reload.dat
# (mode, pm2 failures, supervisor failures); NaN where nothing was measured.
chart_data() {
  local k m
  num() { [[ "${1:-}" =~ ^[0-9.]+$ ]] && echo "$1" || echo NaN; }
  for k in "${KEYS[@]}"; do
    printf '"%s" %s %s %s\n' "${SHORT[$k]}" "$(num "${LT_RPS[$k]:-}")" "$(num "${WRK_RPS[$k]:-}")" "$(num "${CLOSE_RPS[$k]:-}")"
  done > "$OUT/compare-rps.dat"
  for m in keepalive close; do
    printf '"%s" %s %s\n' "$([ $m = keepalive ] && echo keep-alive || echo 'Connection: close')" \
      "$(num "${REL_FAIL[pm2.$m]:-}")" "$(num "${REL_FAIL[sup_node.$m]:-}")"
  done > "$OUT/compare-reload.dat"
}

chart() {
  local png="$OUT/compare.png" title="N=$N workers, $(nproc) CPUs, wrk -c$CONNS -d${DURATION}s, $RELOADS reloads per run"
  chart_data
  rm -f "$png"
  if command -v gnuplot >/dev/null 2>&1; then
    gnuplot -e "rps='$OUT/compare-rps.dat'; rel='$OUT/compare-reload.dat'; out='$png'; subtitle='$title'; ltlabel='$LT_LABEL'" \
      "$ROOT/bench/compare.gp" && echo "chart: $png (gnuplot)" && return
  fi
  if python3 -c 'import matplotlib' 2>/dev/null; then
    python3 - "$OUT/compare-rps.dat" "$OUT/compare-reload.dat" "$png" "$title" "$LT_LABEL" <<'PY' && echo "chart: $png (matplotlib)" && return
import shlex, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
def rows(path): return [shlex.split(l) for l in open(path) if l.strip()]
rps, rel = rows(sys.argv[1]), rows(sys.argv[2])
fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
def bars(ax, data, names, title, ylabel):
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * w for j in range(len(data))]
        ys = [float(r[i + 1]) for r in data]
        bs = ax.bar(xs, [0 if y != y else y for y in ys], w, label=name)
        ax.bar_label(bs, labels=["-" if y != y else f"{y:.0f}" for y in ys], fontsize=8)
    ax.set_xticks(range(len(data)), [r[0] for r in data], rotation=20, ha="right")
    ax.set_title(title); ax.set_ylabel(ylabel); ax.legend()
bars(a, rps, [sys.argv[5], "wrk, keep-alive", "wrk, new connection per request"], "throughput on /heavy", "requests/s")
bars(b, rel, ["pm2 reload", "supervisor reload"], "failed requests during reloads", "failed requests")
fig.suptitle("bench/compare.sh: " + sys.argv[4]); fig.tight_layout(); fig.savefig(sys.argv[3], dpi=100)
PY
  fi
  echo "chart: not written (neither gnuplot nor python3 matplotlib available): table only"
}

# ---------------------------------------------------------------- run
declare -A SHORT=([node]="node index.js" [cluster]="node cluster" [pm2]="pm2 -i $N"
  [sup_node]="supervisor + node" [demo]="demo-app" [sup_demo]="supervisor + demo-app")

if [ "$ONLY" != spread ]; then
  run_setup node "node index.js (1 process)" "$APP_PORT"
  run_setup cluster "node cluster (primary.js, $(nproc) workers)" "$APP_PORT"
  run_setup pm2 "pm2 start index.js -i $N" "$APP_PORT"
  run_setup sup_node "supervisor + node index.js, $N workers" "$APP_PORT"
  run_setup demo "demo-app alone (1 process)" "$(free_port)"
  run_setup sup_demo "supervisor + demo-app, $N workers" "$(free_port)"
fi
spread_setup sup_shared "supervisor, balance = \"shared\"" "$APP_PORT"
spread_setup sup_spread "supervisor, balance = \"spread\"" "$APP_PORT"
spread_setup cluster "node cluster, round robin" "$APP_PORT"

echo >&2
if [ "$ONLY" = spread ]; then
  { echo "supervisor vs node cluster: $(date -u +%FT%TZ), $(nproc) CPUs, N=$N workers, loopback, /heavy"
    echo "load average before: $LOAD_START, after: $(cut -d' ' -f1-3 /proc/loadavg)"; echo; spread_report; } | tee "$OUT/compare-spread.txt"
else
  { report; echo; spread_report; echo; chart; } | tee "$OUT/compare.txt"
fi
