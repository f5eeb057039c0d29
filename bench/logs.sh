#!/usr/bin/env bash
# bench/logs.sh: one worker printing N lines (default 1M) as fast as it can, side by side in one
# run under the supervisor (release build, `start -d`) and under pm2 5 (its out_file): lines on
# disk, whether they are all there and in order, lines
# per second, the manager's CPU seconds meanwhile (the supervisor process; pm2's God daemon,
# which reads its workers' pipes and writes their files), its peak RSS, and the latency of its
# event loop meanwhile: a status request every 10 ms over one connection (the supervisor's
# control socket, `status`; pm2's RPC socket, `pm2.list()` as `pm2 jlist` sends it), idle
# before the flood and during it.
#
# Rows: the supervisor with no rate limit (every line must be kept: a flood is held back, not
# dropped), pm2 with `--time` (a timestamp per line, as the supervisor writes) and without, the
# supervisor with its default rate limit (20000 lines/s per worker, 1 s of burst: the rest is
# dropped and counted; its time is until the worker is done, as it is never held back).
#
#   bench/logs.sh                          # N=1000000; prints the table, writes bench/results/logs.txt
#   N=200000 NO_BUILD=1 SKIP_PM2=1 bench/logs.sh
# Knobs: N, ROUNDS (3: the supervisor and pm2 rows, in turn), LIMIT (seconds each run may take,
# 60), NO_BUILD=1 (use the release binary as it is;
# SUPERVISOR=path for another), SKIP_PM2=1. Needs python3; pm2 needs node and npm (pm2@5 is
# installed into bench/out/tools when missing). Everything started is stopped on exit, and the
# temporary directory (logs, PM2_HOME, state) removed.
source "$(dirname "$0")/lib.sh"
N=${N:-1000000}
LIMIT=${LIMIT:-60}
ROUNDS=${ROUNDS:-3}
SUP=${SUPERVISOR:-${CARGO_TARGET_DIR:-$ROOT/target}/release/supervisor}
RESULTS="$ROOT/bench/results/logs.txt"
need python3 "install it with: apt-get install -y python3"
if [ "${NO_BUILD:-0}" != 1 ]; then (cd "$ROOT" && cargo build --release -q -p supervisor); fi
[ -x "$SUP" ] || { echo "logs: $SUP missing (cargo build --release)" >&2; exit 1; }

work=$(mktemp -d /tmp/bench-logs.XXXXXX)
mkdir -m 0700 "$work/run"
export XDG_RUNTIME_DIR="$work/run" XDG_STATE_HOME="$work/state" PM2_HOME="$work/pm2home"
PM2=
STARTED=() # pids of the processes started in the background
cleanup() {
  trap - EXIT INT TERM
  touch "$work/stop-probe" 2>/dev/null || true
  local cfg god
  for cfg in "$work"/sup-*.toml; do
    [ -e "$cfg" ] && timeout 20 "$SUP" stop -c "$cfg" > /dev/null 2>&1 || true
  done
  if [ -n "$PM2" ]; then
    god=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null || true)
    timeout 20 "$PM2" kill > /dev/null 2>&1 || true
    [ -n "$god" ] && kill_tree "$god"
  fi
  [ ${#STARTED[@]} -eq 0 ] || kill_tree "${STARTED[@]}"
  # shellcheck disable=SC2046 # and whatever else runs under this script
  kill_tree $(pgrep -P $$ || true)
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The worker: waits for the go file, prints N lines, says it is done, then stays up.
cat > "$work/printer.sh" <<SH
#!/bin/sh
while [ ! -e "\$1" ]; do sleep 0.01; done
seq -f 'line %.0f' 1 $N
touch "\$2"
exec sleep 3600
SH
chmod +x "$work/printer.sh"

# The supervisor's probe: `status` over one control connection every 10 ms (length-delimited
# JSON frames), "epoch_seconds round_trip_ms" per line, until the stop file exists.
cat > "$work/probe-sup.py" <<'PY'
import os, socket, struct, sys, time
path, out, stop = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit(0)
        b += c
    return b
body = b'{"request":"status"}'
with open(out, "w") as f:
    while not os.path.exists(stop):
        t0 = time.perf_counter()
        s.sendall(struct.pack(">I", len(body)) + body)
        recv(struct.unpack(">I", recv(4))[0])
        f.write("%.3f %.3f\n" % (time.time(), (time.perf_counter() - t0) * 1000))
        f.flush()
        time.sleep(0.01)
PY
# pm2's probe: pm2.list() (what `pm2 jlist` asks the God daemon) every 10 ms, same output.
cat > "$work/probe-pm2.js" <<'JS'
const [pm2dir, out, stop] = process.argv.slice(2);
const pm2 = require(pm2dir);
const fs = require('fs');
pm2.connect((err) => {
  if (err) process.exit(1);
  const tick = () => {
    if (fs.existsSync(stop)) { pm2.disconnect(); return; }
    const t0 = process.hrtime.bigint();
    pm2.list(() => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      fs.appendFileSync(out, `${(Date.now() / 1000).toFixed(3)} ${ms.toFixed(3)}\n`);
      setTimeout(tick, 10);
    });
  };
  tick();
});
JS

cpu_secs() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / hz }' "/proc/$1/stat"
}
peak_rss_mb() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
now() { date +%s.%N; }

# wait_flood FILE DONE: until FILE ends with line N, or the worker is done (DONE exists) and
# FILE has not grown for 1 s; prints the time of FILE's last change seen. LIMIT s at most.
wait_flood() {
  local file=$1 marker=$2 deadline=$(( $(date +%s) + LIMIT )) last=-1 size same=0 t_last
  t_last=$(now)
  while :; do
    if tail -c 64 "$file" 2> /dev/null | grep -q "line $N\$"; then now; return 0; fi
    size=$(stat -c %s "$file" 2> /dev/null || echo 0)
    if [ "$size" != "$last" ]; then last=$size; same=0; t_last=$(now)
    elif [ -e "$marker" ]; then same=$((same + 1)); [ "$same" -ge 50 ] && { echo "$t_last"; return 0; }
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { echo "logs: timeout after ${LIMIT}s on $file" >&2; echo "$t_last"; return 0; }
    sleep 0.02
  done
}

# check_lines FILE: "kept out_of_order mangled": the lines "... line K" in FILE, how many of
# them do not come after a smaller K (0: in order, each once), and how many other lines there
# are (a line cut in two; the supervisor's own "[supervisor] N lines dropped" lines aside).
check_lines() {
  awk '/\[supervisor\] [0-9]+ lines dropped/ { next }
       /^line [0-9]+$|: line [0-9]+$| out INFO line [0-9]+$/ { v = $NF + 0; kept++; if (v <= prev) bad++; prev = v; next }
       { mangled++ }
       END { printf "%d %d %d\n", kept, bad, mangled }' "$1"
}

# latency FILE GO END: "idle_median flood_median flood_p99 flood_max" (ms) of the probe's
# samples before GO and between GO and END.
latency() {
  awk -v go="$2" -v end="$3" '
    $1 < go { idle[++i] = $2 } $1 >= go && $1 <= end { fl[++f] = $2 }
    function sort(a, n,   x, y, t) { for (x = 2; x <= n; x++) { t = a[x]; for (y = x - 1; y >= 1 && a[y] > t; y--) a[y + 1] = a[y]; a[y + 1] = t } }
    END {
      sort(idle, i); sort(fl, f)
      printf "%s %s %s %s\n", (i ? sprintf("%.1f", idle[int((i + 1) / 2)]) : "-"),
        (f ? sprintf("%.1f", fl[int((f + 1) / 2)]) : "-"), (f ? sprintf("%.1f", fl[int(f * 0.99) > 0 ? int(f * 0.99) : 1]) : "-"),
        (f ? sprintf("%.1f", fl[f]) : "-")
    }' "$1"
}

declare -A ROW RATE CPU
KEYS=()
# record KEY LABEL FILE GO END CPU0 CPU1 RSS [NOTE]
record() {
  local kept bad mangled secs rate lat
  read -r kept bad mangled < <(check_lines "$3")
  secs=$(echo "$5 - $4" | bc -l)
  rate=$(echo "$kept / $secs" | bc -l)
  lat=$(latency "$work/lat-$1" "$4" "$5")
  local all="yes"
  [ "$kept" != "$N" ] && all="in order, $((N - kept)) dropped"
  [ "$mangled" != 0 ] && all="no: $mangled cut, $((N - kept - mangled)) lost"
  [ "$bad" != 0 ] && all="no: $bad out of order"
  RATE[$1]=$rate
  CPU[$1]=$(echo "$7 - $6" | bc)
  ROW[$1]=$(printf '%-5s %-31s %10d  %-24s %7.2f s %10.0f %9.2f s %8s MB  %s' \
    "${1##*-}" "$2" "$kept" "$all" "$secs" "$rate" "${CPU[$1]}" "$8" "$lat")
  KEYS+=("$1")
}

# run_supervisor KEY LABEL EXTRA_KEYS
# measure KEY LABEL PID LOG DIR PROBE...: the control-latency probe (PROBE... given its output
# and stop files) runs from a second of idle before the flood to its end; the flood starts
# ($DIR/go) and the run is recorded: LOG's lines, the flood's time, PID's CPU and peak memory.
measure() {
  local key=$1 label=$2 pid=$3 log=$4 dir=$5 go end cpu0 cpu1 probe
  shift 5
  "$@" "$work/lat-$key" "$work/stop-probe" &
  probe=$!; STARTED+=("$probe")
  sleep 1 # idle samples
  cpu0=$(cpu_secs "$pid")
  go=$(now); touch "$dir/go"
  end=$(wait_flood "$log" "$dir/done")
  cpu1=$(cpu_secs "$pid")
  record "$key" "$label" "$log" "$go" "$end" "$cpu0" "$cpu1" "$(peak_rss_mb "$pid")"
  touch "$work/stop-probe"; wait "$probe" 2> /dev/null || true; rm -f "$work/stop-probe"
}

run_supervisor() {
  local key=$1 cfg="$work/sup-$1.toml" dir="$work/sup-$1"
  mkdir -p "$dir"
  cat > "$cfg" <<TOML
[supervisor]
name = "bench-logs-$$-$key"
control_socket = "$dir/control.sock"
[[app]]
name = "printer"
command = "$work/printer.sh"
args = ["$dir/go", "$dir/done"]
readiness = "exec"
instances = 1
log_max_size = "1GB"
$3
TOML
  echo "logs: $2 ..." >&2
  timeout 60 "$SUP" start -d -c "$cfg" > "$dir/start.out" 2>&1 || { cat "$dir/start.out" >&2; return 1; }
  local pid
  pid=$("$SUP" status --pid -c "$cfg")
  measure "$key" "$2" "$pid" "$dir/logs/printer.log" "$dir" python3 "$work/probe-sup.py" "$dir/control.sock"
  timeout 30 "$SUP" stop -c "$cfg" > /dev/null 2>&1 || kill_tree "$pid"
}

# run_pm2 KEY LABEL [PM2 START OPTIONS]
run_pm2() {
  local key=$1 label=$2 dir="$work/$1" god
  shift 2
  mkdir -p "$dir"
  local tools="$OUT/tools"
  PM2="$tools/node_modules/.bin/pm2"
  if [ ! -x "$PM2" ]; then
    need npm "install it with: apt-get install -y nodejs npm"
    echo "logs: installing pm2@5 into $tools" >&2
    npm install --prefix "$tools" --no-audit --no-fund pm2@5 > /dev/null 2>&1 || { echo "logs: npm install pm2@5 failed" >&2; PM2=; return 1; }
  fi
  local version
  version=$("$PM2" --version 2> /dev/null | tail -1)
  echo "logs: pm2 $version $* ..." >&2
  "$PM2" ping > /dev/null
  god=$(cat "$PM2_HOME/pm2.pid")
  "$PM2" start "$work/printer.sh" --interpreter none --name printer --merge-logs "$@" \
    -o "$dir/out.log" -e "$dir/err.log" -- "$dir/go" "$dir/done" > /dev/null
  measure "$key" "pm2 $version, $label" "$god" "$dir/out.log" "$dir" node "$work/probe-pm2.js" "$tools/node_modules/pm2"
  "$PM2" kill > /dev/null 2>&1 || true
  kill_tree "$god"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
with_pm2=
if [ -z "${SKIP_PM2:-}" ]; then
  if command -v node > /dev/null; then with_pm2=1; else echo "logs: node not found: pm2 skipped" >&2; fi
fi
for r in $(seq 1 "$ROUNDS"); do
  run_supervisor "nolimit-$r" "supervisor, no rate limit" $'log_rate_lines = 0\nlog_rate_bytes = "1GB"' || true
  if [ -n "$with_pm2" ]; then
    run_pm2 "pm2time-$r" "--time" --time || true
    run_pm2 "pm2-$r" "no timestamps" || true
  fi
done
run_supervisor "limited-1" "supervisor, default rate limit" "" || true
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ratio NUM_KEY DEN_KEY: "X.Yx lines/s, Z% of its CPU"
ratio() {
  [ -n "${RATE[$1]:-}" ] && [ -n "${RATE[$2]:-}" ] || { echo "-"; return; }
  awk -v a="${RATE[$1]}" -v b="${RATE[$2]}" -v c="${CPU[$1]}" -v d="${CPU[$2]}" \
    'BEGIN { printf "%.1fx the lines/s, %s of its CPU", a / b, (d > 0 ? sprintf("%.0f%%", 100 * c / d) : "-") }'
}

{
  echo "bench/logs.sh: one worker printing $N lines as fast as it can ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, release build)"
  echo "load average before: $load_before, after: $load_after (anything else running skews every figure: compare within one run)"
  echo
  printf '%-5s %-31s %10s  %-24s %9s %10s %11s %11s  %s\n' "round" "manager" "lines kept" "all, in order" "time" "lines/s" "mgr CPU" "peak RSS" "event loop ms: idle p50, flood p50 p99 max"
  for k in "${KEYS[@]}"; do echo "${ROW[$k]}"; done
  if [ -n "$with_pm2" ]; then
    echo
    for r in $(seq 1 "$ROUNDS"); do
      echo "round $r: supervisor vs pm2 --time: $(ratio "nolimit-$r" "pm2time-$r"); vs pm2 without timestamps: $(ratio "nolimit-$r" "pm2-$r")"
    done
  fi
} | tee "$RESULTS"
echo "(written to ${RESULTS#"$ROOT"/})"
