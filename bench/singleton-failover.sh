#!/usr/bin/env bash
# Cluster singleton failover: 3 supervisors share one redis-server and one `scope = "cluster"`
# app, whose worker appends `host pid token millis` to a shared file every 100 ms. ROUNDS times,
# the holding supervisor is SIGKILLed (its worker dies with it: parent-death signal) and started
# again; the failover time is the gap between the last line of the old holder and the first line
# of the new one. Then the whole file is checked: never two holders at once (every handover is a
# new token, and no line of an old holder comes after the new holder's first), tokens increasing.
#   bench/singleton-failover.sh          # ROUNDS=10 TTL_MS=3000 by default
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-10}
TTL_MS=${TTL_MS:-3000}
need redis-server "apt-get install -y redis-server"
(cd "$ROOT" && cargo build --release -q -p supervisor -p demo)
work=$(mktemp -d)
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
redis_pid=$!
trap 'for c in "$work"/h*.toml; do "$SUP" stop -c "$c" >/dev/null 2>&1 || true; done; kill $redis_pid 2>/dev/null || true' EXIT
sleep 0.5
out="$work/holders.log"
cat > "$work/worker.sh" <<'SH'
trap 'exit 0' TERM
while true; do
  echo "$HOST_TAG $$ $SUPERVISOR_FENCING_TOKEN $(date +%s%3N)" >> "$OUT"
  sleep 0.1
done
SH
for i in 1 2 3; do
  cat > "$work/h$i.toml" <<CONF
[supervisor]
control_socket = "h$i.sock"
[[app]]
name = "consumer"
command = "/bin/sh"
args = ["$work/worker.sh"]
readiness = "exec"
instances = 1
kill_timeout = "1s"
scope = "cluster"
lease_ttl = "${TTL_MS}ms"
env = { HOST_TAG = "h$i", OUT = "$out" }
[cron]
redis_url = "redis://127.0.0.1:$rport/0"
CONF
done
# Started from a subshell: not a job of this shell, so its SIGKILL is not reported here.
start_host() { ( "$SUP" start -c "$work/h$1.toml" >> "$work/h$1.log" 2>&1 & ); }
for i in 1 2 3; do start_host "$i"; done

# holder: the host whose worker wrote the file's last line.
holder() { if [ -s "$out" ]; then tail -n 1 "$out" | cut -d' ' -f1; fi; }
# wait_line_not_from TAG: until a line from another host appears (30 s at most).
wait_line_not_from() {
  for _ in $(seq 1 300); do
    local h; h=$(holder)
    [ -n "$h" ] && [ "$h" != "$1" ] && return 0
    sleep 0.1
  done
  echo "bench: no other host took over from $1 within 30 s" >&2; return 1
}
wait_line_not_from none
echo "singleton failover: $ROUNDS rounds, 3 hosts, lease_ttl ${TTL_MS} ms (renewal and standby poll every $((TTL_MS / 3)) ms), logs in $work"
for r in $(seq 1 "$ROUNDS"); do
  sleep 1
  old=$(holder)
  pid=$("$SUP" status --pid -c "$work/$old.toml")
  kill -9 "$pid"
  echo "KILL $old $(date +%s%3N)" >> "$work/kills.log"
  wait_line_not_from "$old"
  start_host "${old#h}"
done
sleep 1
for i in 1 2 3; do "$SUP" stop -c "$work/h$i.toml" > /dev/null 2>&1 || true; done

python3 - "$out" "$TTL_MS" <<'PY'
import sys
path, ttl = sys.argv[1], int(sys.argv[2])
period = ttl // 3
lines = [l.split() for l in open(path) if len(l.split()) == 4]
rows = [(h, int(p), int(t), int(at)) for h, p, t, at in lines]
# Handovers: where the token changes.
gaps, overlap, tokens_up = [], 0, True
for a, b in zip(rows, rows[1:]):
    if b[2] != a[2]:
        tokens_up &= b[2] > a[2]
        gaps.append(b[3] - a[3])
# Never two holders: once a token appears, no line of an earlier token follows.
seen_max = 0
for h, p, t, at in rows:
    if t < seen_max:
        overlap += 1
    seen_max = max(seen_max, t)
bound = ttl + period
print(f"{'handovers':<44}{len(gaps):>8}")
if gaps:
    s = sorted(gaps)
    print(f"{'failover ms: min / median / max':<44}{s[0]:>8} / {s[len(s)//2]} / {s[-1]}")
print(f"{'bound: lease_ttl + one poll (ms)':<44}{bound:>8}")
print(f"{'failovers over the bound (+100 ms writes)':<44}{sum(1 for g in gaps if g > bound + 100):>8}")
print(f"{'lines of an old holder after a new one':<44}{overlap:>8}")
print(f"{'tokens increase at every handover':<44}{str(tokens_up):>8}")
sys.exit(0 if overlap == 0 and tokens_up and gaps and max(gaps) <= bound + 100 else 1)
PY
