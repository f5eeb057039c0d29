#!/usr/bin/env bash
# bench/logs.sh: one worker printing N lines (default 1M) as fast as it can, under supervisor
# and, side by side, under pm2 (its out_file): lines on disk, in order, lines per second, the
# manager's CPU seconds, and the supervisor's event-loop latency meanwhile (`status` round trips).
#
#   N=1000000 SUPERVISOR=target/release/supervisor bench/logs.sh
#   PM2=/tmp/pm2/node_modules/.bin/pm2 (installed with `npm install --prefix /tmp/pm2 pm2` if
#   missing and npm exists; SKIP_PM2=1 to skip it)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
SUP=${SUPERVISOR:-target/release/supervisor}
PM2=${PM2:-/tmp/pm2/node_modules/.bin/pm2}
work=$(mktemp -d)
spid=
cleanup() {
  [ -n "$spid" ] && kill -TERM "$spid" 2>/dev/null || true
  [ -n "${PM2_HOME:-}" ] && "$PM2" kill > /dev/null 2>&1 || true
  rm -rf "$work" "${XDG_STATE_HOME:-$HOME/.local/state}/supervisor/bench-logs-$$"
}
trap cleanup EXIT

cat > "$work/printer.sh" <<SH
#!/bin/sh
seq -f 'line %.0f' 1 $N
exec sleep 3600
SH
chmod +x "$work/printer.sh"

cpu_secs() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / hz }' "/proc/$1/stat"
}

# Waits until FILE has N lines; prints the seconds it took.
wait_lines() {
  local file=$1 start=$2 deadline=$(( $(date +%s) + 300 ))
  while [ "$(wc -l < "$file" 2>/dev/null || echo 0)" -lt "$N" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timeout: $(wc -l < "$file") lines" >&2; return 1; }
    sleep 0.05
  done
  echo "$(date +%s.%N) - $start" | bc
}

in_order() { # lines 1..N, each once, in order
  awk -v n="$N" '{ if ($NF != NR) { bad++ } } END { if (NR == n && !bad) print "yes"; else print "no (" NR " lines, " bad+0 " out of place)" }'
}

echo "# $N lines from one worker"
# ---- supervisor ----
cat > "$work/supervisor.toml" <<TOML
[supervisor]
name = "bench-logs-$$"
control_socket = "control.sock"
[[app]]
name = "printer"
command = "$work/printer.sh"
readiness = "exec"
instances = 1
log_rate_lines = 0
log_rate_bytes = "1GB"
log_max_size = "1GB"
TOML
"$SUP" start -d -c "$work/supervisor.toml" > /dev/null
start=$(date +%s.%N)
spid=$("$SUP" status --pid -c "$work/supervisor.toml")
cpu0=$(cpu_secs "$spid")
lat_max=0
( while kill -0 "$spid" 2>/dev/null; do
    t0=$(date +%s%N); "$SUP" status -c "$work/supervisor.toml" > /dev/null; t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 )); sleep 0.1
  done > "$work/latency" ) &
lat_pid=$!
secs=$(wait_lines "$work/logs/printer.log" "$start")
cpu1=$(cpu_secs "$spid")
kill "$lat_pid" 2>/dev/null || true
lat_max=$(sort -n "$work/latency" | tail -1)
lat_med=$(sort -n "$work/latency" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
order=$(awk '{ print $NF }' "$work/logs/printer.log" | sed 's/^/x /' | in_order)
printf 'supervisor: %d lines in %.2fs (%.0f lines/s), in order: %s, CPU %.2fs, status round trip median %sms max %sms\n' \
  "$N" "$secs" "$(echo "$N / $secs" | bc -l)" "$order" "$(echo "$cpu1 - $cpu0" | bc)" "$lat_med" "$lat_max"
"$SUP" stop -c "$work/supervisor.toml" > /dev/null
spid=

# ---- pm2 ----
if [ -n "${SKIP_PM2:-}" ]; then exit 0; fi
if [ ! -x "$PM2" ] && command -v npm > /dev/null; then
  npm install --silent --prefix /tmp/pm2 pm2 > /dev/null 2>&1 || true
fi
if [ ! -x "$PM2" ]; then echo "pm2: not installed (npm install --prefix /tmp/pm2 pm2)"; exit 0; fi
export PM2_HOME="$work/pm2home"
"$PM2" ping > /dev/null
start=$(date +%s.%N)
"$PM2" start "$work/printer.sh" --interpreter none --name printer --merge-logs \
  -o "$work/pm2-out.log" -e "$work/pm2-err.log" > /dev/null
gpid=$(cat "$PM2_HOME/pm2.pid")
cpu0=$(cpu_secs "$gpid")
secs=$(wait_lines "$work/pm2-out.log" "$start")
cpu1=$(cpu_secs "$gpid")
order=$(awk '{ print $NF }' "$work/pm2-out.log" | sed 's/^/x /' | in_order)
printf 'pm2:        %d lines in %.2fs (%.0f lines/s), in order: %s, CPU %.2fs (its God daemon)\n' \
  "$N" "$secs" "$(echo "$N / $secs" | bc -l)" "$order" "$(echo "$cpu1 - $cpu0" | bc)"
"$PM2" kill > /dev/null
