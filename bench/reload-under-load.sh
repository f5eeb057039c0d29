#!/usr/bin/env bash
# Zero-downtime proof: constant wrk load on /heavy while the supervisor reloads RELOADS times,
# in two modes (keep-alive, and a new connection per request). Every connect/read/write error,
# timeout and non-2xx response counts as a failure. With pm2 available (bench/node, `npm install`
# there), the same load runs against `pm2 reload` of the seeds' Node app, side by side.
#   bench/reload-under-load.sh            # RELOADS=100 CONNS=64 by default
source "$(dirname "$0")/lib.sh"
RELOADS=${RELOADS:-100}
CONNS=${CONNS:-64}
PM2_RELOADS=${PM2_RELOADS:-$RELOADS}
build

rows=()

# run_mode NAME keepalive|close RELOAD_CMD COUNT PORT
run_mode() {
  local name=$1 mode=$2 reload_cmd=$3 count=$4 port=$5
  local report="$OUT/wrk-$(echo "$name" | tr -c 'a-z0-9\n' '_').txt"
  local extra=()
  [ "$mode" = close ] && extra=(-H "Connection: close")
  # wrk stops at SIGINT and prints its report; -d only bounds it.
  wrk -t2 -c"$CONNS" -d600s --timeout 5s --latency "${extra[@]}" "http://127.0.0.1:$port/heavy" > "$report" 2>&1 &
  local wrk_pid=$!
  sleep 2
  local start end done_=0 failed_reloads=0
  start=$(date +%s.%N)
  for _ in $(seq 1 "$count"); do
    if timeout 120 bash -c "$reload_cmd" >/dev/null 2>&1; then done_=$((done_+1)); else failed_reloads=$((failed_reloads+1)); fi
  done
  end=$(date +%s.%N)
  sleep 2
  kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
  read -r req err rps p50 p99 < <(wrk_summary "$report")
  local per
  per=$(python3 -c "print(f'{($end-$start)/max($done_,1)*1000:.0f} ms')")
  rows+=("$(printf '%-34s %9s %8s %9s %8s %14s %8s' "$name" "$req" "$err" "$done_" "$failed_reloads" "$per" "$rps")")
}

port=$(free_port)
cfg="$OUT/reload.toml"
write_config "$cfg" "$port" 2
start_supervisor "$cfg" 2
run_mode "supervisor, keep-alive" keepalive "'$SUP' reload -c '$cfg'" "$RELOADS" "$port"
run_mode "supervisor, new conn per request" close "'$SUP' reload -c '$cfg'" "$RELOADS" "$port"
stop_supervisor "$cfg"

PM2="$ROOT/bench/node/node_modules/.bin/pm2"
if command -v node >/dev/null && [ -x "$PM2" ]; then
  export PM2_HOME="$OUT/pm2-home"
  pport=$(free_port)
  PORT=$pport "$PM2" start "$ROOT/bench/node/index.js" -i 2 --name bench-app >/dev/null
  wait_http "$pport"
  run_mode "pm2 reload, keep-alive" keepalive "PM2_HOME='$PM2_HOME' '$PM2' reload bench-app" "$PM2_RELOADS" "$pport"
  run_mode "pm2 reload, new conn per request" close "PM2_HOME='$PM2_HOME' '$PM2' reload bench-app" "$PM2_RELOADS" "$pport"
  "$PM2" kill >/dev/null 2>&1 || true
else
  echo "(pm2 rows skipped: run 'npm install' in bench/node to add them)"
fi

echo
printf '%-34s %9s %8s %9s %8s %14s %8s\n' "setup ($CONNS conns, /heavy)" requests failures reloads aborted "time/reload" "req/s"
for r in "${rows[@]}"; do echo "$r"; done
