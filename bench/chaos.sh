#!/usr/bin/env bash
# Chaos under load: 2 apps x 4 demo-app workers, each under wrk with keep-alive and with
# `Connection: close`, while a seeded random driver reloads, SIGHUPs, scales, restarts, SIGKILLs
# workers and upgrades the supervisor in place (alternating two copies of the binary). Time is cut
# into slices of SLICE seconds, one action each, so that every failed request is counted against
# the action of its slice: only a SIGKILLed worker's in-flight requests may fail. Afterwards:
# no orphan, no zombie, and the supervisor's descriptors and resident memory where they started.
#
#   bench/chaos.sh                       # DURATION=120 SEED=21 SLICE=2
#   DURATION=60 SEED=7 bench/chaos.sh
#
# Exits 1 when a request failed outside a SIGKILL slice, or a check after the run failed.
# Needs wrk (apt-get install -y wrk), curl, python3.
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-120} SEED=${SEED:-21} SLICE=${SLICE:-2}
need curl "install curl"
need python3 "install python3"
build
work=$(mktemp -d)
trap 'kill "$SUP_PID" 2>/dev/null || true; sleep 1; rm -rf "$work"' EXIT
# Two copies of the supervisor (the upgrades alternate between them) and one of demo-app, by
# paths of this run alone: what `pgrep -f` finds afterwards is this run's.
cp "$SUP" "$work/supervisor-a"; cp "$SUP" "$work/supervisor-b"; cp "$DEMO" "$work/demo-app"
ports=("$(free_port)" "$(free_port)")
cfg="$work/chaos.toml"
{
  echo "[supervisor]"; echo "control_socket = \"$work/c.sock\""
  for i in 0 1; do
    cat <<CONF
[[app]]
name = "app$i"
command = "$work/demo-app"
instances = 4
ready_timeout = "10s"
kill_timeout = "5s"
env = { DEMO_JOBS = "off" }
[[app.listen]]
name = "http"
address = "127.0.0.1:${ports[$i]}"
CONF
  done
} > "$cfg"
SUP="$work/supervisor-a"
start_supervisor "$cfg" 8 "$work/supervisor.log"
status() { "$SUP" status --json -c "$cfg"; }
fds() { ls "/proc/$SUP_PID/fd" | wc -l; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SUP_PID/status"; }
ready_pids() { status | python3 -c 'import json,sys; print(" ".join(str(w["process"]["pid"]) for a in json.load(sys.stdin)["apps"] for w in a["workers"] if w["state"]=="ready"))'; }
# Waits until every app has exactly its instances ready and nothing starting or draining.
settle() {
  for _ in $(seq 1 400); do
    status | python3 -c '
import json, sys
apps = json.load(sys.stdin)["apps"]
sys.exit(0 if all(len(a["workers"]) == 4 and all(w["state"] == "ready" for w in a["workers"]) for a in apps) else 1)' 2>/dev/null && return 0
    sleep 0.05
  done
  echo "chaos: did not settle; log $work/supervisor.log" >&2; return 1
}
fds0=$(fds); rss0=$(rss_kb)
RANDOM=$SEED
actions=(reload sighup scale restart sigkill upgrade)
declare -A times reqs fails detail
for a in "${actions[@]}"; do times[$a]=0; reqs[$a]=0; fails[$a]=0; detail[$a]=""; done
upgrade_to=b
slices=$((DURATION / SLICE))
echo "chaos: $slices slices of ${SLICE}s, seed $SEED, apps on ports ${ports[*]}, supervisor pid $SUP_PID"
for s in $(seq 1 "$slices"); do
  action=${actions[$((RANDOM % ${#actions[@]}))]}
  app="app$((RANDOM % 2))"
  pids=()
  for p in "${ports[@]}"; do
    wrk -t1 -c8 -d"${SLICE}s" --timeout 5s "http://127.0.0.1:$p/" > "$work/wrk-ka-$p" 2>&1 & pids+=($!)
    wrk -t1 -c8 -d"${SLICE}s" --timeout 5s -H "Connection: close" "http://127.0.0.1:$p/" > "$work/wrk-close-$p" 2>&1 & pids+=($!)
  done
  sleep "0.$((2 + RANDOM % 6))"
  case $action in
    reload) "$SUP" reload -c "$cfg" "$app" > /dev/null ;;
    sighup) kill -HUP "$SUP_PID" ;;
    scale) "$SUP" scale -c "$cfg" "$app" "$((2 + RANDOM % 5))" > /dev/null ;;
    restart) "$SUP" restart -c "$cfg" "$app" > /dev/null ;;
    sigkill)
      read -r -a live <<< "$(ready_pids)"
      [ "${#live[@]}" -gt 0 ] && kill -KILL "${live[$((RANDOM % ${#live[@]}))]}" ;;
    upgrade)
      "$SUP" upgrade -c "$cfg" --binary "$work/supervisor-$upgrade_to" > "$work/upgrade.out" 2>&1 \
        || { echo "chaos: upgrade failed: $(cat "$work/upgrade.out")" >&2; }
      upgrade_to=$([ "$upgrade_to" = b ] && echo a || echo b) ;;
  esac
  wait "${pids[@]}"
  for f in "$work"/wrk-*; do
    read -r n bad why < <(python3 - "$f" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
n = int((re.search(r"(\d+) requests in", t) or [0, 0])[1])
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errs = [int(x) for x in m.groups()] if m else [0, 0, 0, 0]
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
why = ",".join(f"{k}={v}" for k, v in zip(["connect", "read", "write", "timeout", "non2xx"], errs + [non2xx]) if v)
print(n, sum(errs) + non2xx, why or "-")
PY
)
    reqs[$action]=$((reqs[$action] + n)); fails[$action]=$((fails[$action] + bad))
    [ "$why" != "-" ] && detail[$action]="${detail[$action]} $why"
  done
  times[$action]=$((times[$action] + 1))
  # Back to 4 workers each after a scale, so that every slice starts alike.
  if [ "$action" = scale ]; then "$SUP" scale -c "$cfg" "$app" 4 > /dev/null; fi
done
settle
fds1=$(fds); rss1=$(rss_kb)
zombies=$(ps -o stat= --ppid "$SUP_PID" | grep -c '^Z' || true)
pid_before=$SUP_PID
"$SUP" stop -c "$cfg" > /dev/null
for _ in $(seq 1 200); do kill -0 "$SUP_PID" 2>/dev/null || break; sleep 0.05; done
orphans=$(pgrep -f "$work/demo-app" | wc -l || true)

printf '\n%-8s %6s %10s %7s  %s\n' action slices requests failed "failures by cause"
total=0; bad_outside=0
for a in "${actions[@]}"; do
  printf '%-8s %6s %10s %7s  %s\n' "$a" "${times[$a]}" "${reqs[$a]}" "${fails[$a]}" "${detail[$a]:- -}"
  total=$((total + reqs[$a]))
  [ "$a" != sigkill ] && bad_outside=$((bad_outside + fails[$a]))
done
printf '%-8s %6s %10s %7s\n' total "$slices" "$total" "$((bad_outside + fails[sigkill]))"
echo
echo "supervisor pid $pid_before (same through every upgrade), fds $fds0 -> $fds1, RSS $((rss0 / 1024)).$(( (rss0 % 1024) * 10 / 1024 )) -> $((rss1 / 1024)).$(( (rss1 % 1024) * 10 / 1024 )) MB"
echo "zombies $zombies, orphans after stop $orphans"
ok=1
[ "$bad_outside" -eq 0 ] || { echo "chaos: $bad_outside requests failed outside SIGKILL slices" >&2; ok=0; }
[ "$zombies" -eq 0 ] || { echo "chaos: $zombies zombie children" >&2; ok=0; }
[ "$orphans" -eq 0 ] || { echo "chaos: $orphans demo-app processes left after stop" >&2; ok=0; }
[ "$fds1" -le $((fds0 + 2)) ] || { echo "chaos: descriptors grew: $fds0 -> $fds1" >&2; ok=0; }
[ "$rss1" -le $((rss0 * 3 / 2 + 2048)) ] || { echo "chaos: resident memory grew: $rss0 -> $rss1 kB" >&2; ok=0; }
[ "$ok" = 1 ] && echo "chaos: ok" || exit 1
