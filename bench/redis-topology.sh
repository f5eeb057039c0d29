# Redis topologies for the bench scripts (sourced after lib.sh), all on loopback, free ports,
# files under $1 of redis_up: one server, a Sentinel deployment (1 master, 2 replicas, 3
# sentinels, down-after 1 s) or a Redis Cluster (3 masters + 3 replicas, node timeout 1 s).
# Every wait is bounded. Sets REDIS_URL (the form `[cron] redis_url` takes today: the
# redis:// aliases ?sentinel=NAME and ?cluster=yes) and REDIS_DESC.
#   redis_up DIR single|sentinel|cluster [QUERY]   start, wait until settled
#   redis_kill_master [KEY]   SIGKILL the master (Cluster: the master of KEY's slot); sets KILLED
#   redis_wait_failover       until another master serves in its place (30 s)
#   redis_bring_back          start the killed node again, as a replica, and wait until in sync
#   redis_down                kill everything

declare -A REDIS_PID=()
REDIS_KIND=
REDIS_DIR=
REDIS_DATA=()
REDIS_SENTINELS=()
KILLED=
KILLED_SLOT=

_redis_node() { # PORT [ARGS...]: start a data node, record its pid
  local port=$1; shift
  mkdir -p "$REDIS_DIR/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --repl-diskless-sync-delay 0 --dir "$REDIS_DIR/$port" --logfile "$REDIS_DIR/$port/redis.log" "$@" &
  REDIS_PID[$port]=$!
  _redis_wait "port $port answering" 10 redis-cli -p "$port" ping
}

_redis_wait() { # WHAT SECONDS CMD...: until CMD succeeds
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: timed out after ${secs} s waiting for $what (files in $REDIS_DIR)" >&2
  return 1
}

_online_replicas() { redis-cli -p "$1" info replication | grep -c 'state=online' || true; }
_has_replicas() { [ "$(_online_replicas "$1")" -ge "$2" ]; }
_sentinel_master() { redis-cli -p "$1" sentinel get-master-addr-by-name mymaster 2>/dev/null | tail -n 1; }

_sentinels_settled() { # every sentinel: master flags ok, 2 replicas ok, 2 other sentinels
  local s
  for s in "${REDIS_SENTINELS[@]}"; do
    redis-cli --json -p "$s" sentinel master mymaster | python3 -c '
import json, sys
m = json.load(sys.stdin)
m = dict(zip(m[::2], m[1::2])) if isinstance(m, list) else m
ok = m["flags"] == "master" and int(m["num-slaves"]) >= 2 and int(m["num-other-sentinels"]) == 2
sys.exit(0 if ok else 1)' || return 1
  done
  local master; master=$(_sentinel_master "${REDIS_SENTINELS[0]}")
  [ "$(_online_replicas "$master")" -ge 2 ]
}

_cluster_settled() { # every running node: state ok; every master has its replica in sync
  local p
  for p in "${REDIS_DATA[@]}"; do
    [ -n "${REDIS_PID[$p]:-}" ] || continue
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || return 1
    if redis-cli -p "$p" info replication | grep -q 'role:master'; then
      if redis-cli -p "$p" cluster nodes | grep myself | grep -q master; then
        [ "$(_online_replicas "$p")" -ge 1 ] || return 1
      fi
    fi
  done
}

# The port of the master serving KEY's slot, as PORT sees it.
_cluster_master_of() {
  local slot; slot=$(redis-cli -p "$2" cluster keyslot "$1")
  redis-cli --json -p "$2" cluster slots | python3 -c '
import json, sys
slot = int(sys.argv[1])
for r in json.load(sys.stdin):
    if r[0] <= slot <= r[1]:
        print(r[2][1]); break' "$slot"
}

_any_running() {
  local p
  for p in "${REDIS_DATA[@]}"; do [ -n "${REDIS_PID[$p]:-}" ] && { echo "$p"; return; }; done
}

redis_up() {
  REDIS_DIR=$1 REDIS_KIND=$2
  local query=${3:-} p i
  mkdir -p "$REDIS_DIR"
  case $REDIS_KIND in
    single)
      p=$(free_port); REDIS_DATA=("$p"); _redis_node "$p"
      REDIS_URL="redis://127.0.0.1:$p/0${query:+?$query}"
      REDIS_DESC="one redis-server at 127.0.0.1:$p" ;;
    sentinel)
      REDIS_DATA=()
      for i in 0 1 2; do
        p=$(free_port); REDIS_DATA+=("$p")
        if [ "$i" = 0 ]; then _redis_node "$p"; else _redis_node "$p" --replicaof 127.0.0.1 "${REDIS_DATA[0]}"; fi
      done
      _redis_wait "2 replicas in sync" 20 _has_replicas "${REDIS_DATA[0]}" 2
      REDIS_SENTINELS=()
      for i in 1 2 3; do
        p=$(free_port); REDIS_SENTINELS+=("$p"); mkdir -p "$REDIS_DIR/s$p"
        cat > "$REDIS_DIR/s$p/sentinel.conf" <<CONF
port $p
bind 127.0.0.1
dir $REDIS_DIR/s$p
logfile $REDIS_DIR/s$p/sentinel.log
sentinel monitor mymaster 127.0.0.1 ${REDIS_DATA[0]} 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 3000
sentinel parallel-syncs mymaster 1
CONF
        redis-server "$REDIS_DIR/s$p/sentinel.conf" --sentinel &
        REDIS_PID[$p]=$!
        _redis_wait "sentinel $p" 10 redis-cli -p "$p" ping
      done
      _redis_wait "the sentinels to know every node" 30 _sentinels_settled
      local hosts; hosts=$(printf '127.0.0.1:%s,' "${REDIS_SENTINELS[@]}")
      REDIS_URL="redis://${hosts%,}/?sentinel=mymaster${query:+&$query}"
      REDIS_DESC="Sentinel: 1 master, 2 replicas, 3 sentinels (${REDIS_SENTINELS[*]})" ;;
    cluster)
      REDIS_DATA=()
      for i in 1 2 3 4 5 6; do
        p=$(free_port); REDIS_DATA+=("$p")
        _redis_node "$p" --cluster-enabled yes --cluster-config-file "$REDIS_DIR/$p/nodes.conf" \
          --cluster-node-timeout 1000
      done
      local nodes=(); for p in "${REDIS_DATA[@]}"; do nodes+=("127.0.0.1:$p"); done
      timeout 30 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
        > "$REDIS_DIR/create.log" 2>&1 || { echo "bench: redis-cli --cluster create failed: $REDIS_DIR/create.log" >&2; return 1; }
      _redis_wait "the cluster to settle" 30 _cluster_settled
      local hosts; hosts=$(printf '127.0.0.1:%s,' "${REDIS_DATA[@]}")
      REDIS_URL="redis://${hosts%,}/?cluster=yes${query:+&$query}"
      REDIS_DESC="Cluster: 3 masters + 3 replicas (${REDIS_DATA[*]})" ;;
    *) echo "bench: BACKEND is single, sentinel or cluster, not '$REDIS_KIND'" >&2; return 1 ;;
  esac
}

redis_kill_master() {
  case $REDIS_KIND in
    sentinel) KILLED=$(_sentinel_master "${REDIS_SENTINELS[0]}") ;;
    cluster) KILLED=$(_cluster_master_of "$1" "$(_any_running)")
             KILLED_SLOT=$(redis-cli -p "$(_any_running)" cluster keyslot "$1") ;;
    single) KILLED=${REDIS_DATA[0]} ;;
  esac
  kill -9 "${REDIS_PID[$KILLED]}"
  wait "${REDIS_PID[$KILLED]}" 2>/dev/null || true
  REDIS_PID[$KILLED]=
}

_failed_over() {
  case $REDIS_KIND in
    sentinel)
      local s m
      for s in "${REDIS_SENTINELS[@]}"; do
        m=$(_sentinel_master "$s")
        [ -n "$m" ] && [ "$m" != "$KILLED" ] || return 1
      done ;;
    cluster)
      local p m
      for p in "${REDIS_DATA[@]}"; do
        [ -n "${REDIS_PID[$p]:-}" ] || continue
        redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || return 1
        m=$(redis-cli --json -p "$p" cluster slots | python3 -c '
import json, sys
slot = int(sys.argv[1])
print(next(r[2][1] for r in json.load(sys.stdin) if r[0] <= slot <= r[1]))' "$KILLED_SLOT")
        [ "$m" != "$KILLED" ] || return 1
      done ;;
    single) return 1 ;;
  esac
}

redis_wait_failover() { _redis_wait "a failover from $KILLED" 30 _failed_over; }

redis_bring_back() {
  case $REDIS_KIND in
    sentinel)
      local m; m=$(_sentinel_master "${REDIS_SENTINELS[0]}")
      _redis_node "$KILLED" --replicaof 127.0.0.1 "$m"
      _redis_wait "the sentinels to know every node again" 30 _sentinels_settled ;;
    cluster)
      _redis_node "$KILLED" --cluster-enabled yes --cluster-config-file "$REDIS_DIR/$KILLED/nodes.conf" \
        --cluster-node-timeout 1000
      _redis_wait "the cluster to settle again" 30 _cluster_settled ;;
    single) _redis_node "$KILLED" ;;
  esac
}

redis_down() {
  local p
  for p in "${!REDIS_PID[@]}"; do
    [ -n "${REDIS_PID[$p]}" ] && kill "${REDIS_PID[$p]}" 2>/dev/null || true
  done
  for p in "${!REDIS_PID[@]}"; do
    [ -n "${REDIS_PID[$p]}" ] && wait "${REDIS_PID[$p]}" 2>/dev/null || true
  done
  return 0
}
