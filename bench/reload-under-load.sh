#!/usr/bin/env bash
# Zero-downtime proof for the Rust worker: constant wrk load on /heavy while the supervisor
# reloads 2 demo-app workers RELOADS times, in two modes (keep-alive, and a new connection per
# request). Every connect/read/write error, timeout and non-2xx response counts as a failure.
# The Node app against `pm2 reload`, side by side, is bench/compare.sh.
#   bench/reload-under-load.sh            # RELOADS=100 CONNS=64 by default
source "$(dirname "$0")/lib.sh"
RELOADS=${RELOADS:-100}
CONNS=${CONNS:-64}
build

port=$(free_port)
cfg="$OUT/reload.toml"
write_config "$cfg" "$port" 2
start_supervisor "$cfg" 2
trap 'stop_supervisor "$cfg"' EXIT

printf '%-34s %9s %8s %9s %8s %14s %8s\n' "setup ($CONNS conns, /heavy)" requests failures reloads aborted "time/reload" "req/s"
for mode in keepalive close; do
  read -r req err ok bad ms rps < <(reload_under_load "reload-$mode" "$mode" "'$SUP' reload -c '$cfg'" "$RELOADS" "$port" "$CONNS")
  printf '%-34s %9s %8s %9s %8s %14s %8s\n' "supervisor, $([ $mode = keepalive ] && echo keep-alive || echo 'new conn per request')" \
    "$req" "$err" "$ok" "$bad" "$ms ms" "$rps"
done
