#!/usr/bin/env bash
# Soak: 3 supervisors x 3 demo-app workers share one Redis deployment; two 1 s jobs run for TICKS
# seconds: `heartbeat` in the workers (the Rust library) and `soak-cmd`, a [[job]] command the
# supervisors run themselves. Then, for each job, every tick in the window must have run exactly
# once, with tokens increasing from run to run. Prints a summary table per job.
#   bench/cron-soak.sh                   # TICKS=600 by default, one redis-server on loopback
#   HOSTS=netns bench/cron-soak.sh       # root: each supervisor a host in its own network
#                                        # namespace, Redis in another, joined by a bridge
#   BACKEND=sentinel bench/cron-soak.sh  # 1 master, 2 replicas, 3 sentinels; KILLS=2 master
#                                        # SIGKILLs spread over the run
#   BACKEND=cluster bench/cron-soak.sh   # 3 masters + 3 replicas; KILLS=1: the master of
#                                        # soak-cmd's slot
# With BACKEND=sentinel|cluster the supervisors also share a `scope = "cluster"` singleton app,
# the URL carries ACK (default min_replicas_ack=1&wait_timeout=200ms; ACK= for none), and
# after each failover the dead node is started again (as a replica, the way a process manager
# brings it back) so that claims can be acknowledged; no supervisor is touched. Ticks missed
# between one second before a kill and the first run after the deployment is healthy again
# are counted apart (the failover windows, printed); any other miss, any double run, any token
# that does not increase, or two singleton holders at once fails the run.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/redis-topology.sh"
TICKS=${TICKS:-600}
HOSTS=${HOSTS:-loopback}
BACKEND=${BACKEND:-single}
case $HOSTS in loopback|netns) ;; *) echo "bench: HOSTS is loopback or netns, not '$HOSTS'" >&2; exit 1 ;; esac
case $BACKEND in
  single) KILLS=${KILLS:-0}; ACK=${ACK-} ;;
  sentinel) KILLS=${KILLS:-2}; ACK=${ACK-min_replicas_ack=1&wait_timeout=200ms} ;;
  cluster) KILLS=${KILLS:-1}; ACK=${ACK-min_replicas_ack=1&wait_timeout=200ms} ;;
  *) echo "bench: BACKEND is single, sentinel or cluster, not '$BACKEND'" >&2; exit 1 ;;
esac
if [ "$HOSTS" = netns ] && [ "$BACKEND" != single ]; then
  echo "bench: HOSTS=netns runs with BACKEND=single only" >&2; exit 1
fi
need redis-server "apt-get install -y redis-server"
(cd "$ROOT" && cargo build --release -q -p supervisor -p demo)
work=$(mktemp -d)
lab=svb$$
cleanup() {
  for c in "$work"/s*.toml; do "$SUP" stop -c "$c" >/dev/null 2>&1 || true; done
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  redis_down
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
  REDIS_URL="redis://$redis_host:$rport/0"
  REDIS_DESC="redis at $redis_host:$rport"
else
  redis_up "$work/redis" "$BACKEND" "$ACK"
fi
log="$work/heartbeat.log"
cmdlog="$work/soak-cmd.log"
leaderlog="$work/leader.log"
cat > "$work/leader.sh" <<'SH'
trap 'exit 0' TERM
while true; do
  echo "$HOST_TAG $$ $SUPERVISOR_FENCING_TOKEN $(date +%s%3N)" >> "$OUT"
  sleep 0.1
done
SH
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
redis_url = "$REDIS_URL"
[[job]]
name = "soak-cmd"
schedule = "* * * * * *"
command = ["/bin/sh", "-c", "echo \"\$SUPERVISOR_JOB_TICK \$SUPERVISOR_JOB_TOKEN s$i \$\$\" >> $cmdlog"]
CONF
  if [ "$BACKEND" != single ]; then
    cat >> "$work/s$i.toml" <<CONF
[[app]]
name = "leader"
command = "/bin/sh"
args = ["$work/leader.sh"]
readiness = "exec"
instances = 1
kill_timeout = "1s"
scope = "cluster"
lease_ttl = "3s"
env = { HOST_TAG = "s$i", OUT = "$leaderlog" }
CONF
  fi
  if [ "$HOSTS" = netns ]; then
    # The control socket is a path: `supervisor stop` reaches it from outside the namespace.
    HOSTNAME=host$i ip netns exec "$lab-h$i" "$SUP" start -c "$work/s$i.toml" > "$work/s$i.log" 2>&1 &
  else
    "$SUP" start -c "$work/s$i.toml" > "$work/s$i.log" 2>&1 &
  fi
done
sleep 2
from=$(( $(date +%s) + 1 ))
echo "soak: $TICKS ticks, 3 supervisors x 3 workers, a library job and a [[job]] command, hosts: $HOSTS, $REDIS_DESC${ACK:+, $ACK}, $KILLS master kills (logs in $work)"
: > "$work/failovers.log"
start=$(date +%s)
for k in $(seq 1 "$KILLS"); do
  at=$(( start + TICKS * k / (KILLS + 1) ))
  now=$(date +%s); [ "$at" -gt "$now" ] && sleep $(( at - now ))
  kill_ms=$(date +%s%3N)
  redis_kill_master "cron:{soak-cmd}:lease"
  redis_wait_failover
  promoted_ms=$(date +%s%3N)
  redis_bring_back
  healthy_ms=$(date +%s%3N)
  echo "$kill_ms $promoted_ms $healthy_ms $KILLED" >> "$work/failovers.log"
  echo "kill $k: master $KILLED SIGKILLed; a new master after $(( promoted_ms - kill_ms )) ms; back to full health (node restarted as a replica) after $(( healthy_ms - kill_ms )) ms"
done
now=$(date +%s); end=$(( start + TICKS )); [ "$end" -gt "$now" ] && sleep $(( end - now ))
to=$(( $(date +%s) - 2 ))
for i in 1 2 3; do "$SUP" stop -c "$work/s$i.toml" > /dev/null; done
python3 - "$from" "$to" "$work/failovers.log" "$leaderlog" "heartbeat (library, in workers)=$log" "soak-cmd ([[job]], by supervisors)=$cmdlog" <<'PY'
import sys, os, collections, datetime
lo, hi = int(sys.argv[1]), int(sys.argv[2])
failovers = [tuple(int(x) for x in l.split()) for l in open(sys.argv[3]) if l.strip()]
leaderlog = sys.argv[4]
ok = True
for arg in sys.argv[5:]:
    label, path = arg.split("=", 1)
    runs = collections.Counter(); tokens = {}; workers = collections.Counter(); hosts = collections.Counter()
    in_order = []
    for line in open(path):
        tick, token, host, pid = line.split()
        if tick.startswith("manual:"): continue
        s = int(datetime.datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp())
        runs[s] += 1; tokens[s] = int(token); workers[(host, pid)] += 1; hosts[host] += 1
        in_order.append(int(token))
    window = range(lo, hi + 1)
    missing = [s for s in window if runs[s] == 0]
    dups = [s for s in window if runs[s] > 1]
    # A run starts only after the previous one gave its lease back (overlap skip): the lines are
    # in claim order, and each token must be above the one before it.
    increasing = all(a < b for a, b in zip(in_order, in_order[1:]))
    # The failover windows: from a second before the kill to the first run after the
    # deployment was healthy again.
    spans = []
    for kill_ms, promoted_ms, healthy_ms, _port in failovers:
        after = [s for s in runs if s * 1000 >= healthy_ms]
        spans.append((kill_ms // 1000 - 1, min(after) if after else hi + 1))
    in_spans = [s for s in missing if any(a <= s < b for a, b in spans)]
    outside = [s for s in missing if s not in in_spans]
    print(label)
    print(f"  {'ticks in window':<28}{len(window):>8}")
    print(f"  {'run exactly once':<28}{sum(1 for s in window if runs[s] == 1):>8}")
    print(f"  {'missed':<28}{len(missing):>8}")
    if failovers:
        print(f"  {'  in failover windows':<28}{len(in_spans):>8}")
        print(f"  {'  outside them':<28}{len(outside):>8}")
    print(f"  {'run more than once':<28}{len(dups):>8}")
    print(f"  {'tokens increase run to run':<28}{str(increasing):>8}")
    if not label.startswith("soak-cmd"):  # a command's pid is new every run
        print(f"  {'workers that ran ticks':<28}{len(workers):>8}")
    print(f"  {'hosts that ran ticks':<28}{len(hosts):>8}  " + " ".join(f"{h}:{n}" for h, n in sorted(hosts.items())))
    ok = ok and not outside and not dups and increasing
for n, (kill_ms, promoted_ms, healthy_ms, port) in enumerate(failovers, 1):
    print(f"failover {n}: master {port} killed; new master after {promoted_ms - kill_ms} ms, "
          f"healthy again after {healthy_ms - kill_ms} ms")
if os.path.exists(leaderlog):
    rows = []
    for l in open(leaderlog):
        p = l.split()
        if len(p) == 4:
            rows.append((p[0], int(p[1]), int(p[2]), int(p[3])))
    overlap, tokens_up, handovers, gaps = 0, True, 0, []
    seen_max = 0
    for h, pid, t, at in rows:
        if t < seen_max:
            overlap += 1
        seen_max = max(seen_max, t)
    for a, b in zip(rows, rows[1:]):
        if b[2] != a[2]:
            handovers += 1
            tokens_up &= b[2] > a[2]
            gaps.append(b[3] - a[3])
    print("leader (scope = \"cluster\" singleton)")
    print(f"  {'holders (tokens)':<40}{len(set(r[2] for r in rows)):>8}")
    print(f"  {'handovers':<40}{handovers:>8}" + (f"  gaps ms: {' '.join(map(str, gaps))}" if gaps else ""))
    print(f"  {'lines of an old holder after a new one':<40}{overlap:>8}")
    print(f"  {'tokens increase at every handover':<40}{str(tokens_up):>8}")
    ok = ok and overlap == 0 and tokens_up and bool(rows)
sys.exit(0 if ok else 1)
PY
