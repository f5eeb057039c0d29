#!/usr/bin/env bash
# Is the supervisor out of the data path, and how small is it? Prints, in one run:
#  - requests/s and p50/p99 on /heavy: demo-app alone, under the supervisor with 1 worker and
#    with one worker per CPU (wrk, keep-alive, loopback); Node, node cluster and pm2 side by side
#    are bench/compare.sh;
#  - the supervisor's resident memory with 1, 4 and 16 workers, and after 200 reloads of 16.
#   bench/throughput.sh      # DURATION=10 CONNS=32 by default
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
CPUS=$(nproc)
build

rows=()
measure() { # measure NAME PORT  (2 s of warm-up first, not counted)
  local report="$OUT/tp-$(echo "$1" | tr -c 'a-z0-9\n' '_').txt"
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$2/heavy" > /dev/null 2>&1
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "http://127.0.0.1:$2/heavy" > "$report" 2>&1
  read -r req err rps p50 p99 < <(wrk_summary "$report")
  rows+=("$(printf '%-40s %10s %10s %10s %8s' "$1" "$rps" "$p50" "$p99" "$err")")
}

port=$(free_port)
"$DEMO" --listen "127.0.0.1:$port" > "$OUT/demo-alone.log" 2>&1 &
pid=$!
wait_http "$port"
measure "demo-app alone (1 process)" "$port"
kill "$pid"; wait "$pid" 2>/dev/null || true

for n in 1 "$CPUS"; do
  port=$(free_port); cfg="$OUT/tp-$n.toml"
  write_config "$cfg" "$port" "$n"
  start_supervisor "$cfg" "$n"
  measure "supervisor + $n demo-app worker(s)" "$port"
  stop_supervisor "$cfg"
done

# write_apps_config FILE APPS INSTANCES: APPS demo-app apps of INSTANCES workers, each on its
# own free port.
write_apps_config() {
  printf '[supervisor]\ncontrol_socket = "%s"\n' "$(dirname "$1")/mem-apps.sock" > "$1"
  for a in $(seq 1 "$2"); do
    printf '[[app]]\nname = "app%s"\ncommand = "%s"\ninstances = %s\n[[app.listen]]\naddress = "127.0.0.1:%s"\n' \
      "$a" "$DEMO" "$3" "$(free_port)" >> "$1"
  done
}

mem_rows=()
for shape in 1x1 1x4 1x16 3x16; do
  apps=${shape%x*}; n=${shape#*x}; cfg="$OUT/mem-$shape.toml"
  write_apps_config "$cfg" "$apps" "$n"
  start_supervisor "$cfg" $((apps * n))
  sleep 0.5
  "$SUP" status -c "$cfg" > /dev/null
  kb=$(rss_kb "$SUP_PID")
  extra=""
  if [ "$shape" = 1x16 ] || [ "$shape" = 3x16 ]; then
    for _ in $(seq 1 200); do "$SUP" reload -c "$cfg" > /dev/null; done
    sleep 1.5
    extra=$(rss_kb "$SUP_PID")
  fi
  label="supervisor with $n workers"
  [ "$apps" = 1 ] || label="supervisor with $apps apps x $n workers"
  mem_rows+=("$(printf '%-40s %10s %18s' "$label" "$(kb_mb "$kb")" "${extra:+$(kb_mb "$extra")}")")
  stop_supervisor "$cfg"
done

echo
printf '%-40s %10s %10s %10s %8s\n' "throughput on /heavy ($CONNS conns, ${DURATION}s)" "req/s" "p50" "p99" "errors"
for r in "${rows[@]}"; do echo "$r"; done
echo
printf '%-40s %10s %18s\n' "resident memory" "RSS" "after 200 reloads"
for r in "${mem_rows[@]}"; do echo "$r"; done
exit 0
