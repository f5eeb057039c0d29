#!/usr/bin/env bash
# Soak: 3 supervisors x 3 demo-app workers share one redis-server; two 1 s jobs run for TICKS
# seconds: `heartbeat` in the workers (the Rust library) and `soak-cmd`, a [[job]] command the
# supervisors run themselves. Then, for each job, every tick in the window must have run exactly
# once, with tokens increasing in tick order. Prints a summary table per job.
#   bench/cron-soak.sh                   # TICKS=600 by default, all on loopback
#   HOSTS=netns bench/cron-soak.sh       # root: each supervisor a host in its own network
#                                        # namespace, Redis in another, joined by a bridge
source "$(dirname "$0")/lib.sh"
TICKS=${TICKS:-600}
HOSTS=${HOSTS:-loopback}
case $HOSTS in loopback|netns) ;; *) echo "bench: HOSTS is loopback or netns, not '$HOSTS'" >&2; exit 1 ;; esac
need redis-server "apt-get install -y redis-server"
(cd "$ROOT" && cargo build --release -q -p supervisor -p demo)
work=$(mktemp -d)
lab=svb$$
cleanup() {
  for c in "$work"/s*.toml; do "$SUP" stop -c "$c" >/dev/null 2>&1 || true; done
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  [ "$HOSTS" = netns ] && lab_down "$lab"
  return 0
}
redis_pid=
trap cleanup EXIT
if [ "$HOSTS" = netns ]; then
  lab_up "$lab" 3
  rport=6379
  redis_host=$LAB_NET.1
  # Clients come from the hosts' addresses, not loopback: protected mode would refuse them.
  ip netns exec "$lab-redis" redis-server --port "$rport" --bind "$redis_host" --protected-mode no \
    --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    ip netns exec "$lab-redis" redis-cli -h "$redis_host" -p "$rport" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
else
  rport=$(free_port)
  redis_host=127.0.0.1
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
  redis_pid=$!
  sleep 0.5
fi
log="$work/heartbeat.log"
cmdlog="$work/soak-cmd.log"
for i in 1 2 3; do
  cat > "$work/s$i.toml" <<CONF
[supervisor]
control_socket = "s$i.sock"
[[app]]
name = "demo"
command = "$DEMO"
instances = 3
cron_backend = true
env = { DEMO_JOB_LOG = "$log" }
[[app.listen]]
address = "127.0.0.1:0"
[cron]
redis_url = "redis://$redis_host:$rport/0"
[[job]]
name = "soak-cmd"
schedule = "* * * * * *"
command = ["/bin/sh", "-c", "echo \"\$SUPERVISOR_JOB_TICK \$SUPERVISOR_JOB_TOKEN s$i \$\$\" >> $cmdlog"]
CONF
  if [ "$HOSTS" = netns ]; then
    # The control socket is a path: `supervisor stop` reaches it from outside the namespace.
    HOSTNAME=host$i ip netns exec "$lab-h$i" "$SUP" start -c "$work/s$i.toml" > "$work/s$i.log" 2>&1 &
  else
    "$SUP" start -c "$work/s$i.toml" > "$work/s$i.log" 2>&1 &
  fi
done
sleep 2
from=$(( $(date +%s) + 1 ))
echo "soak: $TICKS ticks, 3 supervisors x 3 workers, a library job and a [[job]] command, hosts: $HOSTS, redis at $redis_host:$rport (logs in $work)"
sleep "$TICKS"
to=$(( $(date +%s) - 2 ))
for i in 1 2 3; do "$SUP" stop -c "$work/s$i.toml" > /dev/null; done
python3 - "$from" "$to" "heartbeat (library, in workers)=$log" "soak-cmd ([[job]], by supervisors)=$cmdlog" <<'PY'
import sys, collections, datetime
lo, hi = int(sys.argv[1]), int(sys.argv[2])
ok = True
for arg in sys.argv[3:]:
    label, path = arg.split("=", 1)
    runs = collections.Counter(); tokens = {}; workers = collections.Counter(); hosts = collections.Counter()
    for line in open(path):
        tick, token, host, pid = line.split()
        if tick.startswith("manual:"): continue
        s = int(datetime.datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp())
        runs[s] += 1; tokens[s] = int(token); workers[(host, pid)] += 1; hosts[host] += 1
    window = range(lo, hi + 1)
    missing = [s for s in window if runs[s] == 0]
    dups = [s for s in window if runs[s] > 1]
    order = sorted(tokens.items())
    increasing = all(a[1] < b[1] for a, b in zip(order, order[1:]))
    print(label)
    print(f"  {'ticks in window':<28}{len(window):>8}")
    print(f"  {'run exactly once':<28}{sum(1 for s in window if runs[s] == 1):>8}")
    print(f"  {'missed':<28}{len(missing):>8}")
    print(f"  {'run more than once':<28}{len(dups):>8}")
    print(f"  {'tokens increase with tick':<28}{str(increasing):>8}")
    if not label.startswith("soak-cmd"):  # a command's pid is new every run
        print(f"  {'workers that ran ticks':<28}{len(workers):>8}")
    print(f"  {'hosts that ran ticks':<28}{len(hosts):>8}  " + " ".join(f"{h}:{n}" for h, n in sorted(hosts.items())))
    ok = ok and not missing and not dups and increasing
sys.exit(0 if ok else 1)
PY
