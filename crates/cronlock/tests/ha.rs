//! Failover of the Redis HA backends against real `redis-server` processes on loopback:
//! a Sentinel deployment (1 master, 2 replicas, 3 sentinels) whose master is SIGKILLed and then
//! the new master too, and a Redis Cluster (3 masters, 3 replicas) whose master of the job's
//! slot is SIGKILLed. Three schedulers run a 1 s job and three contenders a singleton lease,
//! all with `min_replicas_ack = 1`; nothing on the client side is restarted. Checked: no tick
//! runs twice, the ticks missed lie in the failover windows (printed), tokens strictly increase
//! in tick order, one singleton holder at a time with a higher token after each handover,
//! manual triggers, history and registry work on the new master, and the topology and the
//! failover count show what happened. Plus: a promoted replica that missed token increments,
//! an unacknowledged claim, and the errors that name a wrong sentinel setup.
//!
//! Skipped, saying so, when `redis-server` is not installed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use common::wait_for;
use cronlock::{
    Acquire, Backend, ClaimOutcome, ClaimRequest, Contender, Identity, Job, JobSpec, Layout,
    Outcome, Overlap, Scheduler, SingletonLeases, StatsSnapshot, TickId,
};
use e2e::redis_ha::{
    ClusterOptions, ClusterTopology, SentinelOptions, SentinelTopology, redis_server_available,
};
use tokio::task::{JoinHandle, block_in_place};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const ACK: &str = "min_replicas_ack=1&wait_timeout=200ms";
/// The job's lease.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// The singleton's lease: shorter than a failover takes here (2-3 s), so the holder loses it
/// during one and a handover follows.
const SINGLETON_TTL: Duration = Duration::from_secs(2);

fn skip() -> bool {
    // RUST_LOG=cronlock=debug shows what the backends did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if redis_server_available() {
        return false;
    }
    eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
    true
}

/// One run of the job: which tick, its token, who ran it, when.
#[derive(Debug, Clone)]
struct Run {
    tick: TickId,
    token: u64,
    who: u32,
    /// When it started (wall clock, ms).
    started_ms: i64,
}

/// One contender's holding of the singleton lease: from the acquisition's answer to the moment
/// it stopped considering itself the holder (released, refused, or its renewal deadline passed).
#[derive(Debug, Clone)]
struct Hold {
    who: u32,
    token: u64,
    from: Instant,
    to: Option<Instant>,
}

type Runs = Arc<Mutex<Vec<Run>>>;
type Holds = Arc<Mutex<Vec<Hold>>>;

fn runs_of(runs: &Runs) -> Vec<Run> {
    runs.lock().map(|v| v.clone()).unwrap_or_default()
}

/// Three schedulers, each with its own backend, running `job` every second.
fn start_schedulers(
    url: &str,
    job: &str,
    runs: &Runs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<StatsSnapshot>>> {
    let mut handles = Vec::new();
    for who in 1..=3u32 {
        let runs = Arc::clone(runs);
        let mut s = Scheduler::new(
            Backend::from_url(url)?,
            Identity {
                host: format!("host{who}"),
                pid: who,
            },
        );
        let spec = JobSpec::new(job, "* * * * * *").lease_ttl(LEASE_TTL);
        s.add(Job::new(spec, move |ctx| {
            let runs = Arc::clone(&runs);
            async move {
                if let Ok(mut v) = runs.lock() {
                    v.push(Run {
                        tick: ctx.tick_id.clone(),
                        token: ctx.token,
                        who,
                        started_ms: Utc::now().timestamp_millis(),
                    });
                }
                Ok(())
            }
        }))?;
        handles.push(tokio::spawn(
            s.run(shutdown.clone(), Duration::from_secs(2)),
        ));
    }
    Ok(handles)
}

/// A contender for the singleton lease `name`, the way the supervisor holds one: try every
/// ttl/3; while holding, renew every ttl/3; the lease counts until ttl after the last renewal
/// that succeeded (from when it was sent), and is given up a margin (ttl/6) before that.
async fn contend(
    url: String,
    name: String,
    who: u32,
    holds: Holds,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let period = SINGLETON_TTL / 3;
    let margin = SINGLETON_TTL / 6;
    // Calls bounded by the renewal period, as the supervisor bounds them.
    let leases = SingletonLeases::from_url(&url, period)?;
    let me = Contender::new(&format!("host{who}"), who);
    while !stop.is_cancelled() {
        let sent = Instant::now();
        let lease = match leases.acquire(&name, &me, SINGLETON_TTL).await {
            Ok(Acquire::Acquired(l)) => l,
            Ok(Acquire::Held(_)) | Err(_) => {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(period) => {}
                }
                continue;
            }
        };
        let index = {
            let mut h = holds.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            h.push(Hold {
                who,
                token: lease.token,
                from: Instant::now(),
                to: None,
            });
            h.len() - 1
        };
        let end = |at: Instant| {
            if let Ok(mut h) = holds.lock() {
                h[index].to = Some(at);
            }
        };
        let mut valid_until = sent + SINGLETON_TTL;
        let mut last_ok = sent;
        'held: loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = leases.release(&lease).await;
                    end(Instant::now());
                    return Ok(());
                }
                _ = tokio::time::sleep_until(last_ok + period) => {}
            }
            loop {
                let deadline = valid_until - margin;
                let now = Instant::now();
                if now >= deadline {
                    end(now);
                    break 'held;
                }
                match tokio::time::timeout(deadline - now, leases.renew(&lease)).await {
                    Ok(Ok(true)) => {
                        valid_until = now + SINGLETON_TTL;
                        last_ok = now;
                        break;
                    }
                    Ok(Ok(false)) => {
                        end(Instant::now());
                        break 'held;
                    }
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => {
                        end(Instant::now());
                        break 'held;
                    }
                }
            }
        }
        // Lost: never overlap ourselves, wait until the old lease would have expired.
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep_until(valid_until) => {}
        }
    }
    Ok(())
}

fn start_contenders(
    url: &str,
    name: &str,
    holds: &Holds,
    stop: &CancellationToken,
) -> Vec<JoinHandle<anyhow::Result<()>>> {
    (1..=3u32)
        .map(|who| {
            tokio::spawn(contend(
                url.to_owned(),
                name.to_owned(),
                who,
                Arc::clone(holds),
                stop.clone(),
            ))
        })
        .collect()
}

/// A failover as the test saw it (wall clock, ms): the master killed, the new master seen by
/// every node, the deployment back to full health (replicas in sync again), the first run that
/// started after that.
#[derive(Debug)]
struct Window {
    killed_ms: i64,
    promoted_ms: i64,
    healthy_ms: i64,
    recovered_ms: i64,
}

/// Waits (at most 30 s) until a scheduled run starts after `after_ms`; returns when it started.
async fn first_run_after(runs: &Runs, after_ms: i64) -> anyhow::Result<i64> {
    wait_for("a run after the failover", Duration::from_secs(30), || {
        let runs = Arc::clone(runs);
        async move {
            runs_of(&runs)
                .iter()
                .filter(|r| matches!(r.tick, TickId::Scheduled(_)) && r.started_ms > after_ms)
                .map(|r| r.started_ms)
                .min()
        }
    })
    .await
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The job checks: no tick twice; tokens strictly increasing from one run to the next (in the
/// order the runs started: with overlap `skip` a run starts only after the previous one gave
/// its lease back; a tick whose claim was in flight through the failover may start after the
/// next tick, so not tick order); every tick of `[from_ms, to_ms]` run unless it lies in a
/// failover window, from one period before the kill (the tick in flight) to the first run after
/// the deployment was healthy again. Prints the windows.
fn check_ticks(runs: &[Run], from_ms: i64, to_ms: i64, windows: &[Window]) -> anyhow::Result<()> {
    let mut by_tick: BTreeMap<i64, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        if let TickId::Scheduled(t) = r.tick {
            by_tick.entry(t.timestamp_millis()).or_default().push(r);
        }
    }
    if std::env::var_os("HA_TEST_RUNS").is_some() {
        for r in runs {
            eprintln!("run {r:?}");
        }
    }
    let twice: Vec<_> = by_tick.iter().filter(|(_, v)| v.len() > 1).collect();
    ensure!(twice.is_empty(), "ticks run more than once: {twice:?}");
    for w in runs.windows(2) {
        ensure!(
            w[1].token > w[0].token,
            "token of {:?} is not above the one of the run before it, {:?}",
            w[1],
            w[0]
        );
    }
    let late: Vec<String> = by_tick
        .iter()
        .filter(|(t, rs)| rs[0].started_ms - **t > 1000)
        .map(|(t, rs)| format!("{t} started {} ms late", rs[0].started_ms - t))
        .collect();
    if !late.is_empty() {
        eprintln!(
            "claims that spent the failover in flight: {}",
            late.join(", ")
        );
    }
    let first = (from_ms / 1000 + 1) * 1000;
    let mut missed_outside = Vec::new();
    let mut missed_in: Vec<usize> = vec![0; windows.len()];
    let mut t = first;
    while t <= to_ms {
        if !by_tick.contains_key(&t) {
            match windows
                .iter()
                .position(|w| t >= w.killed_ms - 1000 && t < w.recovered_ms)
            {
                Some(i) => missed_in[i] += 1,
                None => missed_outside.push(t),
            }
        }
        t += 1000;
    }
    for (i, w) in windows.iter().enumerate() {
        // What the jobs felt: the longest stretch without a run start around the failover.
        let mut starts: Vec<i64> = runs.iter().map(|r| r.started_ms).collect();
        starts.sort_unstable();
        let gap = starts
            .windows(2)
            .filter(|p| p[1] > w.killed_ms - 1000 && p[0] < w.recovered_ms)
            .map(|p| (p[1] - p[0], p[0], p[1]))
            .max();
        if let Some((gap, from, to)) = gap {
            eprintln!(
                "failover {}: longest stretch without a run {gap} ms ({from} to {to}; master \
                 killed at {})",
                i + 1,
                w.killed_ms
            );
        }
        eprintln!(
            "failover {}: master killed at {}; new master after {} ms; replicas in sync after \
             {} ms; first run after {} ms (the window); ticks missed in it: {}",
            i + 1,
            w.killed_ms,
            w.promoted_ms - w.killed_ms,
            w.healthy_ms - w.killed_ms,
            w.recovered_ms - w.killed_ms,
            missed_in[i]
        );
    }
    let ran = by_tick.range(first..=to_ms).count();
    let mut per: BTreeMap<u32, usize> = BTreeMap::new();
    for r in runs {
        *per.entry(r.who).or_default() += 1;
    }
    eprintln!(
        "runs per scheduler: {}",
        per.iter()
            .map(|(w, n)| format!("host{w} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "ticks {first}..={to_ms}: {} in all, {ran} run once, 0 run twice, {} missed outside the windows",
        (to_ms - first) / 1000 + 1,
        missed_outside.len()
    );
    ensure!(
        missed_outside.is_empty(),
        "ticks missed outside the failover windows: {missed_outside:?} (windows {windows:?})"
    );
    Ok(())
}

/// The singleton checks: holds never overlap, each handover brings a higher token.
fn check_holds(holds: &[Hold], end: Instant) -> anyhow::Result<()> {
    let mut holds = holds.to_vec();
    holds.sort_by_key(|h| h.from);
    ensure!(!holds.is_empty(), "nobody ever held the singleton");
    for w in holds.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let a_to = a.to.unwrap_or(end);
        ensure!(
            b.from >= a_to,
            "two holders at once: {a:?} until {a_to:?} and {b:?}"
        );
        ensure!(b.token > a.token, "token did not increase: {a:?} -> {b:?}");
    }
    let gaps: Vec<String> = holds
        .windows(2)
        .map(|w| {
            let gap = w[1].from - w[0].to.unwrap_or(end);
            format!(
                "host{} (token {}) -> host{} (token {}) after {} ms",
                w[0].who,
                w[0].token,
                w[1].who,
                w[1].token,
                gap.as_millis()
            )
        })
        .collect();
    eprintln!(
        "singleton: {} holds, one at a time; handovers: {}",
        holds.len(),
        if gaps.is_empty() {
            "none (the holder kept its lease through the failovers)".to_owned()
        } else {
            gaps.join("; ")
        }
    );
    Ok(())
}

/// Asks for a manual run (retrying while the listeners reconnect) and waits until it ran, once.
async fn manual_run_works(backend: &Backend, job: &str, runs: &Runs) -> anyhow::Result<()> {
    let id = wait_for(
        "a listener for run requests",
        Duration::from_secs(15),
        || async { backend.request_run(job).await.ok() },
    )
    .await?;
    wait_for("the manual run", Duration::from_secs(10), || {
        let runs = Arc::clone(runs);
        let id = id.clone();
        async move {
            runs_of(&runs)
                .iter()
                .any(|r| r.tick == TickId::Manual(id.clone()))
                .then_some(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = runs_of(runs)
        .iter()
        .filter(|r| r.tick == TickId::Manual(id.clone()))
        .count();
    ensure!(n == 1, "the manual run {id} ran {n} times");
    Ok(())
}

async fn stop_all(
    shutdown: &CancellationToken,
    schedulers: Vec<JoinHandle<StatsSnapshot>>,
    contenders: Vec<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<Vec<StatsSnapshot>> {
    shutdown.cancel();
    let mut stats = Vec::new();
    for h in schedulers {
        stats.push(tokio::time::timeout(Duration::from_secs(15), h).await??);
    }
    for h in contenders {
        tokio::time::timeout(Duration::from_secs(10), h).await???;
    }
    Ok(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_two_master_kills_run_each_tick_at_most_once() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let topo = block_in_place(|| SentinelTopology::start(SentinelOptions::default()))?;
    let url = topo.url(ACK);
    let job = "ha-tick";
    let runs = Runs::default();
    let holds = Holds::default();
    let shutdown = CancellationToken::new();
    let schedulers = start_schedulers(&url, job, &runs, &shutdown)?;
    let contenders = start_contenders(&url, "ha-leader", &holds, &shutdown);
    let observer = Backend::from_url(&url)?;
    let start_ms = now_ms();
    let mut windows = Vec::new();

    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 1..=2 {
        let killed_ms = now_ms();
        let old = block_in_place(|| topo.kill_master())?;
        let new = block_in_place(|| topo.wait_failover(old, Duration::from_secs(20)))
            .with_context(|| format!("failover {round}; logs in {}", topo.dir().display()))?;
        let promoted_ms = now_ms();
        eprintln!("failover {round}: master {old} killed, sentinels promoted {new}");
        block_in_place(|| -> anyhow::Result<()> {
            if round == 1 {
                // Bring the dead node back (as a replica of the new master), so that the
                // second failover leaves a master with a replica to acknowledge claims.
                topo.restart_as_replica(old)?;
            }
            topo.wait_settled(Duration::from_secs(60))?;
            Ok(())
        })?;
        let healthy_ms = now_ms();
        let recovered_ms = first_run_after(&runs, healthy_ms).await?;
        windows.push(Window {
            killed_ms,
            promoted_ms,
            healthy_ms,
            recovered_ms,
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    manual_run_works(&observer, job, &runs).await?;
    let history = observer.history(job, 5).await?;
    ensure!(
        history.iter().any(|r| r.outcome == Outcome::Ok),
        "no history on the new master: {history:?}"
    );
    ensure!(
        observer.list_jobs().await?.iter().any(|m| m.name == job),
        "the registry lost the job"
    );
    let topology = observer.topology().await;
    eprintln!("{topology}");
    let master = block_in_place(|| topo.master_port())?;
    match &topology.layout {
        Layout::Sentinel {
            master: Some(m),
            replicas,
            sentinels,
            ..
        } => {
            ensure!(m.addr == format!("127.0.0.1:{master}") && m.up, "{m:?}");
            ensure!(
                replicas.iter().filter(|r| r.up).count() >= 1,
                "{replicas:?}"
            );
            ensure!(
                sentinels.iter().filter(|s| s.up).count() == 3,
                "{sentinels:?}"
            );
        }
        other => bail!("not a Sentinel layout: {other:?}"),
    }
    // Both kills were seen; on a loaded machine Sentinel may fail over once more on its own (a
    // replica judged down while it resyncs): what matters is every tick at most once, below.
    ensure!(
        topology.failovers_seen >= 2,
        "failovers seen: {}",
        topology.failovers_seen
    );
    let end_ms = now_ms();
    let end = Instant::now();
    let stats = stop_all(&shutdown, schedulers, contenders).await?;
    eprintln!(
        "schedulers: {}",
        stats.iter().copied().sum::<StatsSnapshot>()
    );
    check_ticks(&runs_of(&runs), start_ms + 1000, end_ms - 2000, &windows)?;
    let holds = holds.lock().map(|h| h.clone()).unwrap_or_default();
    check_holds(&holds, end)?;
    Ok(())
}

/// A singleton name whose slot is served by the same master as `slot`.
fn name_on_master(topo: &ClusterTopology, master: u16) -> anyhow::Result<String> {
    for i in 0..200 {
        let name = format!("leader-{i}");
        let slot = topo.keyslot(&cronlock::singleton::lease_key(&name))?;
        if topo.master_of_slot(slot)? == master {
            return Ok(name);
        }
    }
    bail!("no singleton name maps to master {master}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_of_the_jobs_master_runs_each_tick_at_most_once() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let topo = block_in_place(|| ClusterTopology::start(ClusterOptions::default()))?;
    let url = topo.url(ACK);
    let job = "ha-tick";
    let slot = block_in_place(|| topo.keyslot(&cronlock::backend::redis::lease_key(job)))?;
    let master = block_in_place(|| topo.master_of_slot(slot))?;
    let leader = block_in_place(|| name_on_master(&topo, master))?;
    let runs = Runs::default();
    let holds = Holds::default();
    let shutdown = CancellationToken::new();
    let schedulers = start_schedulers(&url, job, &runs, &shutdown)?;
    let contenders = start_contenders(&url, &leader, &holds, &shutdown);
    let observer = Backend::from_url(&url)?;
    let start_ms = now_ms();

    // A name that breaks the hash tag is refused before anything is sent.
    let bad = observer.claim(&claim("}broken", 1, 1)).await;
    match bad {
        Err(e @ cronlock::Error::CrossSlot { .. }) => eprintln!("refused: {e}"),
        other => bail!("a cross-slot claim was not refused: {other:?}"),
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    manual_run_works(&observer, job, &runs).await?;
    let killed_ms = now_ms();
    block_in_place(|| topo.kill(master))?;
    let new = block_in_place(|| topo.wait_failover(slot, master, Duration::from_secs(30)))
        .with_context(|| format!("logs in {}", topo.dir().display()))?;
    let promoted_ms = now_ms();
    eprintln!("failover: master {master} of slot {slot} killed, {new} took over");
    // The shard's only replica is now its master: bring the dead node back, it rejoins as the
    // new master's replica by itself (until then claims there cannot be acknowledged).
    block_in_place(|| -> anyhow::Result<()> {
        topo.restart(master)?;
        topo.wait_settled(Duration::from_secs(30))?;
        Ok(())
    })?;
    let healthy_ms = now_ms();
    let recovered_ms = first_run_after(&runs, healthy_ms).await?;
    let windows = vec![Window {
        killed_ms,
        promoted_ms,
        healthy_ms,
        recovered_ms,
    }];
    tokio::time::sleep(Duration::from_secs(3)).await;
    manual_run_works(&observer, job, &runs).await?;
    let history = observer.history(job, 5).await?;
    ensure!(
        history.iter().any(|r| r.outcome == Outcome::Ok),
        "no history after the failover: {history:?}"
    );
    ensure!(
        observer.list_jobs().await?.iter().any(|m| m.name == job),
        "the registry lost the job"
    );
    let topology = observer.topology().await;
    eprintln!("{topology}");
    match &topology.layout {
        Layout::Cluster { shards } => {
            ensure!(shards.len() == 3, "{shards:?}");
            let shard = shards
                .iter()
                .find(|s| s.slots.iter().any(|(a, b)| *a <= slot && slot <= *b))
                .context("no shard serves the job's slot")?;
            let m = shard.master.as_ref().context("no master")?;
            ensure!(m.addr == format!("127.0.0.1:{new}"), "{shard:?}");
            ensure!(
                shard
                    .replicas
                    .iter()
                    .any(|r| r.addr == format!("127.0.0.1:{master}") && r.up),
                "the restarted node is not the new master's replica: {shard:?}"
            );
        }
        other => bail!("not a Cluster layout: {other:?}"),
    }
    ensure!(
        topology.failovers_seen >= 1,
        "failovers seen: {}",
        topology.failovers_seen
    );
    let end_ms = now_ms();
    let end = Instant::now();
    let stats = stop_all(&shutdown, schedulers, contenders).await?;
    eprintln!(
        "schedulers: {}",
        stats.iter().copied().sum::<StatsSnapshot>()
    );
    check_ticks(&runs_of(&runs), start_ms + 1000, end_ms - 2000, &windows)?;
    let holds = holds.lock().map(|h| h.clone()).unwrap_or_default();
    check_holds(&holds, end)?;
    Ok(())
}

fn claim(job: &str, tick_s: i64, pid: u32) -> ClaimRequest {
    ClaimRequest {
        job: job.to_owned(),
        tick: TickId::Scheduled(
            chrono::DateTime::from_timestamp(1_700_000_000 + tick_s, 0).unwrap_or_default(),
        ),
        keep: Duration::from_secs(60),
        lease_ttl: Duration::from_secs(5),
        overlap: Overlap::Allow,
        identity: Identity {
            host: "test".into(),
            pid,
        },
        started_at: Utc::now(),
    }
}

/// A replica that missed the last token increments (stopped while the master issued them) is
/// promoted: its next token is still above every token the dead master issued. And with
/// `min_replicas_ack = 1`, a claim no replica acknowledged is not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_replica_that_missed_increments_issues_higher_tokens() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let topo = block_in_place(|| {
        SentinelTopology::start(SentinelOptions {
            replicas: 1,
            sentinels: 0,
            ..SentinelOptions::default()
        })
    })?;
    let [master, replica] = topo.data_ports()[..] else {
        bail!("expected two data nodes");
    };
    let on_master = Backend::from_url(&format!("redis://127.0.0.1:{master}/0"))?;
    let acked = Backend::from_url(&format!(
        "redis://127.0.0.1:{master}/0?min_replicas_ack=1&wait_timeout=100ms"
    ))?;
    let won = |o: ClaimOutcome| match o {
        ClaimOutcome::Won(l) => Ok(l.token),
        other => bail!("claim not won: {other:?}"),
    };
    // The first claim is acknowledged (retried: a loaded machine may miss 100 ms once; an
    // unacknowledged claim stays written, so each attempt claims an earlier tick of its own).
    let attempt = std::sync::atomic::AtomicI64::new(-1000);
    let first = wait_for("an acknowledged claim", Duration::from_secs(20), || async {
        let tick = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match acked.claim(&claim("tok", tick, 1)).await {
            Ok(ClaimOutcome::Won(l)) => Some(l.token),
            _ => None,
        }
    })
    .await?;
    // The replica leaves (it will be the one promoted, without what comes next).
    let _: () = topo.command(replica, redis::cmd("REPLICAOF").arg("NO").arg("ONE"))?;
    // A claim that must be acknowledged is now refused, not run.
    let refused = wait_for("a refused claim", Duration::from_secs(5), || async {
        match acked.claim(&claim("tok", 2, 1)).await {
            Err(e @ cronlock::Error::NotReplicated { .. }) => Some(Ok(e)),
            Err(_) => None,
            Ok(ClaimOutcome::Won(_)) => Some(Err(anyhow::anyhow!("an unacknowledged claim won"))),
            Ok(_) => None,
        }
    })
    .await??;
    eprintln!("refused: {refused}");
    let history = on_master.history("tok", 1).await?;
    ensure!(
        history.first().is_some_and(|r| r.outcome == Outcome::Missed
            && r.error
                .as_deref()
                .is_some_and(|e| e.contains("min_replicas_ack"))),
        "{history:?}"
    );
    let lease_of_tick_2 = format!("cron:{{tok}}:lease:{}", (1_700_000_000_i64 + 2) * 1000);
    let kept: i64 = topo.command(master, redis::cmd("EXISTS").arg(&lease_of_tick_2))?;
    ensure!(kept == 0, "the unacknowledged claim kept its lease");
    // Without the requirement, the master issues tokens the replica never sees.
    let mut last = first;
    for tick in 3..8 {
        last = won(on_master.claim(&claim("tok", tick, 1)).await?)?;
    }
    topo.kill(master)?;
    let counter: u64 = topo.command(
        replica,
        redis::cmd("GET").arg(cronlock::backend::redis::token_key("tok")),
    )?;
    ensure!(
        counter < last,
        "the replica did not miss the increments: {counter} >= {last}"
    );
    let promoted = Backend::from_url(&format!("redis://127.0.0.1:{replica}/0"))?;
    let next = won(promoted.claim(&claim("tok", 9, 2)).await?)?;
    eprintln!(
        "tokens: first {first}, last on the dead master {last}, replica's counter {counter}, next {next}"
    );
    ensure!(next > last, "token {next} is not above {last}");
    Ok(())
}

/// A wrong Sentinel setup is named: unreachable sentinels, a master name they do not know,
/// missing sentinel credentials; the right one (with passwords for the data nodes and for the
/// sentinels) claims ticks and shows its topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_errors_name_what_is_wrong() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let nobody =
        Backend::from_url("redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster?min_replicas_ack=1")?;
    let e = nobody
        .claim(&claim("j", 1, 1))
        .await
        .err()
        .context("claim through unreachable sentinels succeeded")?
        .to_string();
    eprintln!("{e}");
    ensure!(
        e.contains("no sentinel could be reached")
            && e.contains("127.0.0.1:1: unreachable")
            && e.contains("127.0.0.1:2: unreachable"),
        "{e}"
    );

    let topo = block_in_place(|| {
        SentinelTopology::start(SentinelOptions {
            replicas: 1,
            sentinels: 1,
            password: Some("data-pw".into()),
            sentinel_password: Some("sentinel-pw".into()),
            ..SentinelOptions::default()
        })
    })?;
    let good = topo.url(ACK);
    let b = Backend::from_url(&good)?;
    // A claim the replica did not acknowledge in time stays written (its tick is not run), so
    // each attempt claims a tick of its own: a retry of the same tick is `ClaimedElsewhere`.
    let attempt = std::sync::atomic::AtomicI64::new(100);
    wait_for("an acknowledged claim", Duration::from_secs(20), || async {
        let tick = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        matches!(
            b.claim(&claim("j", tick, 1)).await,
            Ok(ClaimOutcome::Won(_))
        )
        .then_some(())
    })
    .await?;
    let t = b.topology().await;
    eprintln!("{t}");
    ensure!(t.is_healthy(), "{t}");
    ensure!(
        !t.to_string().contains("data-pw") && !t.to_string().contains("sentinel-pw"),
        "a password in {t}"
    );

    let wrong_name = good.replace("/mymaster?", "/yourmaster?");
    let e = Backend::from_url(&wrong_name)?
        .claim(&claim("j", 2, 1))
        .await
        .err()
        .context("claim with an unknown master name succeeded")?
        .to_string();
    eprintln!("{e}");
    ensure!(
        e.contains("no sentinel knows a master named `yourmaster`"),
        "{e}"
    );
    ensure!(!e.contains("sentinel-pw") && !e.contains("data-pw"), "{e}");

    let no_sentinel_pw = good.replace("sentinel_password=sentinel-pw&", "");
    let e = Backend::from_url(&no_sentinel_pw)?
        .claim(&claim("j", 3, 1))
        .await
        .err()
        .context("claim without the sentinels' password succeeded")?
        .to_string();
    eprintln!("{e}");
    ensure!(
        e.contains("refuse us without the right credentials") && e.contains("sentinel_password="),
        "{e}"
    );
    Ok(())
}

/// `rediss+sentinel://`: TLS to the sentinel and to the data nodes, passwords on both, and a
/// failover followed over TLS (1 master, 1 replica, 1 sentinel with quorum 1).
#[test]
fn sentinel_over_tls_with_passwords_follows_a_failover() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let topo = SentinelTopology::start(SentinelOptions {
        replicas: 1,
        sentinels: 1,
        password: Some("data-pw".into()),
        sentinel_password: Some("sentinel-pw".into()),
        tls: true,
        ..SentinelOptions::default()
    })?;
    // SAFETY: set before any other thread of this test process exists (the runtime is built
    // below; starting the topology only spawned processes), and nextest runs every test in its
    // own process.
    unsafe { std::env::set_var("SSL_CERT_FILE", topo.ca_file()) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let url = topo.url(ACK);
        ensure!(url.starts_with("rediss+sentinel://"), "{url}");
        let acked = Backend::from_url(&url)?;
        // Each attempt claims a tick of its own (an unacknowledged claim stays written).
        let attempt = std::sync::atomic::AtomicI64::new(100);
        let first = wait_for(
            "an acknowledged claim over TLS",
            Duration::from_secs(20),
            || async {
                let tick = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match acked.claim(&claim("tls", tick, 1)).await {
                    Ok(ClaimOutcome::Won(l)) => Some(l.token),
                    other => {
                        eprintln!("claim over TLS not won yet: {other:?}");
                        None
                    }
                }
            },
        )
        .await?;
        let leases = SingletonLeases::from_url(&url, Duration::from_secs(1))?;
        let Acquire::Acquired(lease) = leases
            .acquire(
                "tls-leader",
                &Contender::new("h", 1),
                Duration::from_secs(5),
            )
            .await?
        else {
            bail!("the singleton lease was not acquired over TLS");
        };
        ensure!(leases.release(&lease).await?);
        let t = acked.topology().await;
        eprintln!("{t}");
        ensure!(t.is_healthy(), "{t}");

        let old = block_in_place(|| topo.kill_master())?;
        let new = block_in_place(|| topo.wait_failover(old, Duration::from_secs(20)))?;
        eprintln!("master {old} killed, {new} promoted");
        // The new master has no replica left: claims that must be acknowledged are refused;
        // without the requirement they go through, over TLS, to the new master.
        let plain = Backend::from_url(&topo.url(""))?;
        let next = wait_for(
            "a claim on the new master",
            Duration::from_secs(20),
            || async {
                let tick = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match plain.claim(&claim("tls", tick, 2)).await {
                    Ok(ClaimOutcome::Won(l)) => Some(l.token),
                    _ => None,
                }
            },
        )
        .await?;
        ensure!(next > first, "token {next} is not above {first}");
        // (The first operation on a connection to the dead master fails; the next reconnects.)
        wait_for("a refused claim", Duration::from_secs(20), || async {
            let tick = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match acked.claim(&claim("tls", tick, 1)).await {
                Err(cronlock::Error::NotReplicated { .. }) => Some(Ok(())),
                Ok(ClaimOutcome::Won(_)) => Some(Err(anyhow::anyhow!(
                    "a claim the lone new master cannot replicate was won"
                ))),
                _ => None,
            }
        })
        .await??;
        ensure!(
            plain.failovers_seen() >= 1,
            "failovers seen: {}",
            plain.failovers_seen()
        );
        let t = plain.topology().await;
        eprintln!("{t}");
        ensure!(
            t.problems.iter().any(|p| p.contains("down")),
            "the dead master is not reported: {t}"
        );
        Ok(())
    })
}
