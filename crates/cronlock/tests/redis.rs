//! Redis backend and scheduler tests against real `redis-server` processes: one run per tick
//! across many instances and processes, clock skew, stale lease holders, Redis outages.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use common::{RedisServer, parse_entries, spawn_instance, wait_for};
use cronlock::{
    Backend, ClaimOutcome, ClaimRequest, Identity, Job, JobSpec, Outcome, Overlap, Scheduler,
    SchedulerOptions, StatsSnapshot, TickId,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Sink = Arc<Mutex<Vec<(i64, u64)>>>;

fn identity(pid: u32) -> Identity {
    Identity {
        host: "test-host".to_owned(),
        pid,
    }
}

/// A 1 s job that pushes `tick:token:pid` to the Redis list `list` and into `sink`.
fn push_job(name: &str, url: &str, list: &str, pid: u32, sink: Sink) -> anyhow::Result<Job> {
    push_job_with(name, url, list, pid, sink, Overlap::Skip)
}

fn push_job_with(
    name: &str,
    url: &str,
    list: &str,
    pid: u32,
    sink: Sink,
    overlap: Overlap,
) -> anyhow::Result<Job> {
    let client = redis::Client::open(url)?;
    let list = list.to_owned();
    let spec = JobSpec::new(name, "* * * * * *")
        .lease_ttl(Duration::from_secs(5))
        .overlap(overlap);
    Ok(Job::new(spec, move |ctx| {
        let client = client.clone();
        let list = list.clone();
        let sink = Arc::clone(&sink);
        async move {
            let TickId::Scheduled(t) = ctx.tick_id else {
                return Ok(());
            };
            if let Ok(mut v) = sink.lock() {
                v.push((t.timestamp_millis(), ctx.token));
            }
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("RPUSH")
                .arg(&list)
                .arg(format!("{}:{}:{pid}", t.timestamp_millis(), ctx.token))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        }
    }))
}

fn spawn_scheduler(
    scheduler: Scheduler,
    shutdown: &CancellationToken,
) -> JoinHandle<StatsSnapshot> {
    tokio::spawn(scheduler.run(shutdown.clone(), Duration::from_secs(2)))
}

async fn join_all(handles: Vec<JoinHandle<StatsSnapshot>>) -> anyhow::Result<Vec<StatsSnapshot>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(tokio::time::timeout(Duration::from_secs(15), h).await??);
    }
    Ok(out)
}

async fn list_entries(server: &RedisServer, list: &str) -> anyhow::Result<Vec<(i64, u64, u32)>> {
    let mut conn = server.client()?.get_multiplexed_async_connection().await?;
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    Ok(parse_entries(&raw))
}

/// Every tick in `[from, to]` (whole seconds) ran exactly once, no tick ran twice anywhere,
/// and tokens increase strictly in tick order.
fn check_once_per_tick(
    entries: &[(i64, u64, u32)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<()> {
    check_ticks(entries, from, to, true)
}

fn check_ticks(
    entries: &[(i64, u64, u32)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tokens_in_tick_order: bool,
) -> anyhow::Result<()> {
    let mut by_tick: BTreeMap<i64, Vec<(u64, u32)>> = BTreeMap::new();
    for &(tick, token, pid) in entries {
        by_tick.entry(tick).or_default().push((token, pid));
    }
    for (tick, runs) in &by_tick {
        ensure!(
            runs.len() == 1,
            "tick {tick} ran {} times: {runs:?}",
            runs.len()
        );
    }
    let first = (from.timestamp() + 1) * 1000;
    let last = to.timestamp() * 1000;
    ensure!(last > first, "empty window");
    let mut t = first;
    while t <= last {
        ensure!(
            by_tick.contains_key(&t),
            "tick {t} in the window was never run; ran: {:?}",
            by_tick.keys().collect::<Vec<_>>()
        );
        t += 1000;
    }
    let mut prev: Option<u64> = None;
    for (tick, runs) in by_tick.iter().filter(|_| tokens_in_tick_order) {
        let token = runs[0].0;
        if let Some(p) = prev {
            ensure!(
                token > p,
                "token {token} of tick {tick} is not above the previous {p}"
            );
        }
        prev = Some(token);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_instances_four_processes_run_each_tick_once() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let mut procs = Vec::new();
    for _ in 0..4 {
        procs.push(spawn_instance(&[
            "--redis-url",
            &url,
            "--list",
            "runs",
            "--run-secs",
            "16",
        ])?);
    }
    let start = Utc::now();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..5u32 {
        let mut s = Scheduler::new(Backend::from_url(&url)?, identity(900_000 + i));
        s.add(push_job(
            "every-second",
            &url,
            "runs",
            900_000 + i,
            Sink::default(),
        )?)?;
        handles.push(spawn_scheduler(s, &shutdown));
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    shutdown.cancel();
    let stats = join_all(handles).await?;
    let mut proc_stats = Vec::new();
    for p in procs {
        let out =
            tokio::task::spawn_blocking(move || p.wait_output(Duration::from_secs(15))).await??;
        let s: StatsSnapshot =
            serde_json::from_str(out.trim()).with_context(|| format!("instance output: {out}"))?;
        proc_stats.push(s);
    }
    let entries = list_entries(&server, "runs").await?;
    check_once_per_tick(
        &entries,
        start + chrono::Duration::seconds(2),
        start + chrono::Duration::seconds(14),
    )?;
    let pids: HashSet<u32> = entries.iter().map(|e| e.2).collect();
    let all: Vec<_> = stats.iter().chain(proc_stats.iter()).collect();
    let ran: u64 = all.iter().map(|s| s.ticks_run).sum();
    ensure!(
        ran as usize == entries.len(),
        "ran {ran} but {} entries",
        entries.len()
    );
    ensure!(
        all.iter()
            .all(|s| s.ticks_backend_down == 0 && s.ticks_missed == 0),
        "{all:?}"
    );
    eprintln!(
        "{} ticks by {} distinct instances",
        entries.len(),
        pids.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_still_run_each_tick_once() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let start = Utc::now();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for (i, offset_ms) in [-2000i64, 0, 2000].into_iter().enumerate() {
        let pid = 800_000 + i as u32;
        let mut s = Scheduler::new(Backend::from_url(&url)?, identity(pid))
            .with_clock_offset(chrono::Duration::milliseconds(offset_ms));
        // Overlap `allow`: with clocks 2 s apart, the +2 s instance starts tick T+2 at the same
        // real moment the others run tick T, which overlap `skip` would (correctly) skip.
        s.add(push_job_with(
            "skewed",
            &url,
            "runs",
            pid,
            Sink::default(),
            Overlap::Allow,
        )?)?;
        handles.push(spawn_scheduler(s, &shutdown));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    shutdown.cancel();
    let stats = join_all(handles).await?;
    let entries = list_entries(&server, "runs").await?;
    // From start + 2 s on, the fastest clock (+2 s) was already claiming: no gaps after that.
    // Tokens follow claim order, not tick order, while clocks disagree; only uniqueness and
    // completeness are checked.
    let check = check_ticks(
        &entries,
        start + chrono::Duration::seconds(3),
        start + chrono::Duration::seconds(8),
        false,
    );
    if let Err(e) = check {
        let h = Backend::from_url(&url)?.history("skewed", 100).await?;
        bail!("{e}\nstart {start}\nstats {stats:?}\nhistory {h:#?}");
    }
    let elsewhere: u64 = stats
        .iter()
        .map(|s| s.ticks_skipped_claimed_elsewhere)
        .sum();
    ensure!(
        elsewhere > 0,
        "the skewed instances never competed: {stats:?}"
    );
    Ok(())
}

fn claim_req(job: &str, tick_ms: i64, ttl: Duration, pid: u32) -> anyhow::Result<ClaimRequest> {
    Ok(ClaimRequest {
        job: job.to_owned(),
        tick: TickId::Scheduled(DateTime::from_timestamp_millis(tick_ms).context("time")?),
        keep: Duration::from_secs(60),
        lease_ttl: ttl,
        overlap: Overlap::Skip,
        identity: identity(pid),
        started_at: Utc::now(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_holder_cannot_renew_or_release_the_new_lease() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let b = Backend::from_url(&server.url())?;
    let ttl = Duration::from_millis(600);
    let ClaimOutcome::Won(old) = b.claim(&claim_req("stale", 101_000, ttl, 1)?).await? else {
        bail!("first claim lost");
    };
    // The same tick again: claimed elsewhere. Another tick while the lease is held: overlap.
    ensure!(matches!(
        b.claim(&claim_req("stale", 101_000, ttl, 2)?).await?,
        ClaimOutcome::ClaimedElsewhere
    ));
    match b.claim(&claim_req("stale", 102_000, ttl, 2)?).await? {
        ClaimOutcome::SkippedOverlap { holder: Some(h) } => {
            ensure!(h.token == old.token && h.pid == 1)
        }
        other => bail!("expected skipped_overlap with holder, got {other:?}"),
    }
    ensure!(b.renew(&old).await?, "own renew rejected");
    // The holder is "paused" past its TTL; someone else claims the next tick.
    tokio::time::sleep(Duration::from_millis(800)).await;
    ensure!(
        b.current_holder("stale").await?.is_none(),
        "lease did not expire"
    );
    let ClaimOutcome::Won(new) = b.claim(&claim_req("stale", 103_000, ttl, 3)?).await? else {
        bail!("claim after expiry lost");
    };
    ensure!(
        new.token > old.token,
        "token did not increase: {} -> {}",
        old.token,
        new.token
    );
    ensure!(!b.renew(&old).await?, "stale renew accepted");
    ensure!(!b.release(&old).await?, "stale release accepted");
    let holder = b
        .current_holder("stale")
        .await?
        .context("new holder's lease was deleted")?;
    ensure!(holder.token == new.token && holder.pid == 3, "{holder:?}");
    ensure!(b.renew(&new).await?);
    ensure!(b.release(&new).await?);
    ensure!(b.current_holder("stale").await?.is_none());
    // A host lagging far behind (more than keep/2 = 30 s) cannot claim an old tick, even one
    // that nobody claimed or whose claim key expired.
    ensure!(matches!(
        b.claim(&claim_req("stale", 103_000 - 31_000, ttl, 4)?)
            .await?,
        ClaimOutcome::ClaimedElsewhere
    ));
    let history = b.history("stale", 10).await?;
    ensure!(
        history.iter().any(|r| r.outcome == Outcome::SkippedOverlap),
        "{history:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cancels_itself_before_its_lease_expires_when_redis_stops_answering()
-> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let ttl = Duration::from_millis(1500);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<tokio::time::Instant>(4);
    let (cancelled_tx, mut cancelled_rx) = tokio::sync::mpsc::channel::<tokio::time::Instant>(4);
    let spec = JobSpec::new("long", "*/2 * * * * *").lease_ttl(ttl);
    let job = Job::new(spec, move |ctx| {
        let started_tx = started_tx.clone();
        let cancelled_tx = cancelled_tx.clone();
        async move {
            let _ = started_tx.send(tokio::time::Instant::now()).await;
            tokio::select! {
                _ = ctx.cancel.cancelled() => {
                    let _ = cancelled_tx.send(tokio::time::Instant::now()).await;
                    Err("cancelled".to_owned())
                }
                _ = tokio::time::sleep(Duration::from_secs(20)) => Ok(()),
            }
        }
    });
    let mut s = Scheduler::new(Backend::from_url(&url)?, identity(7));
    s.add(job)?;
    let stats = s.stats();
    let shutdown = CancellationToken::new();
    let handle = spawn_scheduler(s, &shutdown);
    let started = tokio::time::timeout(Duration::from_secs(5), started_rx.recv())
        .await?
        .context("job never started")?;
    server.pause()?;
    let cancelled = tokio::time::timeout(Duration::from_secs(5), cancelled_rx.recv()).await;
    server.resume()?;
    let cancelled = cancelled?.context("job never cancelled")?;
    ensure!(
        cancelled - started < ttl,
        "cancelled {:?} after start, lease TTL {ttl:?}",
        cancelled - started
    );
    let b = Backend::from_url(&url)?;
    wait_for("a lease_lost record", Duration::from_secs(10), || async {
        let h = b.history("long", 10).await.ok()?;
        h.iter()
            .any(|r| r.outcome == Outcome::LeaseLost)
            .then_some(())
    })
    .await?;
    shutdown.cancel();
    let snap = tokio::time::timeout(Duration::from_secs(15), handle).await??;
    ensure!(snap.lease_lost >= 1, "{snap:?}");
    ensure!(stats.snapshot().lease_lost >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_process_loses_its_lease_and_never_deletes_the_new_one() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--list",
        "starts",
        "--job",
        "paused",
        "--schedule",
        "*/2 * * * * *",
        "--job-ms",
        "6000",
        "--lease-ms",
        "1500",
        "--run-secs",
        "20",
    ];
    let a = spawn_instance(&args)?;
    let b = spawn_instance(&args)?;
    // Who won the first tick?
    let first = wait_for("a first run", Duration::from_secs(10), || async {
        list_entries(&server, "starts").await.ok()?.first().copied()
    })
    .await?;
    let (stale, other) = if first.2 == a.pid() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    ensure!(first.2 == stale.pid(), "unknown pid {}", first.2);
    common::signal(stale.pid(), "STOP")?;
    // The other process claims a later tick with a higher token while the stale one sleeps.
    let second = wait_for(
        "a run by the other instance",
        Duration::from_secs(10),
        || async {
            list_entries(&server, "starts")
                .await
                .ok()?
                .into_iter()
                .find(|e| e.2 == other.pid())
        },
    )
    .await;
    common::signal(stale.pid(), "CONT")?;
    let second = second?;
    ensure!(
        second.1 > first.1,
        "token {} not above {}",
        second.1,
        first.1
    );
    let backend = Backend::from_url(&url)?;
    let stale_pid = stale.pid();
    let lost = wait_for(
        "the stale run's lease_lost record",
        Duration::from_secs(10),
        || async {
            let h = backend.history("paused", 20).await.ok()?;
            h.into_iter()
                .find(|r| r.pid == stale_pid && r.token == Some(first.1))
        },
    )
    .await?;
    ensure!(lost.outcome == Outcome::LeaseLost, "{lost:?}");
    // The new holder's lease survived the stale instance's release attempt.
    let holder = backend
        .current_holder("paused")
        .await?
        .context("new lease deleted")?;
    ensure!(
        holder.pid == other.pid() && holder.token == second.1,
        "{holder:?}"
    );
    drop(a);
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_skips_ticks_and_keeps_tokens_increasing() -> anyhow::Result<()> {
    let mut server = RedisServer::start()?;
    let url = server.url();
    let sink = Sink::default();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..2u32 {
        let mut s = Scheduler::new(Backend::from_url(&url)?, identity(700_000 + i));
        s.add(push_job(
            "outage",
            &url,
            "runs",
            700_000 + i,
            Arc::clone(&sink),
        )?)?;
        handles.push(spawn_scheduler(s, &shutdown));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.kill();
    let killed_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart()?;
    let restarted_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    shutdown.cancel();
    let stats = join_all(handles).await?;
    let runs = sink.lock().map(|v| v.clone()).unwrap_or_default();
    let before: Vec<_> = runs
        .iter()
        .filter(|r| r.0 < killed_at.timestamp_millis())
        .collect();
    let after: Vec<_> = runs
        .iter()
        .filter(|r| r.0 > restarted_at.timestamp_millis())
        .collect();
    ensure!(
        before.len() >= 2,
        "too few runs before the outage: {runs:?}"
    );
    ensure!(after.len() >= 2, "scheduling did not resume: {runs:?}");
    let max_before = before.iter().map(|r| r.1).max().unwrap_or(0);
    ensure!(
        after.iter().all(|r| r.1 > max_before),
        "a token after the restart is not above {max_before}: {after:?}"
    );
    let down: u64 = stats.iter().map(|s| s.ticks_backend_down).sum();
    ensure!(down >= 2, "outage ticks not counted: {stats:?}");
    let ticks: HashSet<i64> = runs.iter().map(|r| r.0).collect();
    ensure!(ticks.len() == runs.len(), "a tick ran twice: {runs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_error_means_not_acquired() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("redis://:secret@127.0.0.1:{port}/0");
    let b = Backend::from_url(&url)?;
    let err = match b
        .claim(&claim_req("nowhere", 1_000, Duration::from_secs(1), 1)?)
        .await
    {
        Ok(o) => bail!("claim against a closed port returned {o:?}"),
        Err(e) => e.to_string(),
    };
    ensure!(!err.contains("secret") && err.contains("***"), "{err}");
    let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ran2 = Arc::clone(&ran);
    let mut s = Scheduler::new(b, identity(1));
    s.add(Job::new(
        JobSpec::new("nowhere", "* * * * * *"),
        move |_| {
            ran2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(()) }
        },
    ))?;
    let shutdown = CancellationToken::new();
    let h = spawn_scheduler(s, &shutdown);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    shutdown.cancel();
    let snap = tokio::time::timeout(Duration::from_secs(10), h).await??;
    ensure!(
        ran.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "the job ran unguarded"
    );
    ensure!(
        snap.ticks_backend_down >= 2 && snap.ticks_run == 0,
        "{snap:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_trigger_runs_once_and_registry_is_listed() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..3u32 {
        let count = Arc::clone(&count);
        let mut s = Scheduler::new(Backend::from_url(&url)?, identity(600_000 + i));
        let spec = JobSpec::new("yearly", "0 0 0 1 1 *").timezone_name("Europe/Berlin")?;
        s.add(Job::new(spec, move |ctx| {
            let count = Arc::clone(&count);
            async move {
                if matches!(ctx.tick_id, TickId::Manual(_)) {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            }
        }))?;
        handles.push(spawn_scheduler(s, &shutdown));
    }
    let mut conn = server.client()?.get_multiplexed_async_connection().await?;
    wait_for("3 subscribers", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("cron:run")
                .query_async(&mut conn)
                .await
                .ok()?;
            (n == 3).then_some(())
        }
    })
    .await?;
    let b = Backend::from_url(&url)?;
    let id = b.request_run("yearly").await?;
    let rec = wait_for(
        "the manual run's record",
        Duration::from_secs(5),
        || async { b.history("yearly", 10).await.ok()?.into_iter().next() },
    )
    .await?;
    ensure!(
        rec.tick == format!("manual:{id}") && rec.outcome == Outcome::Ok,
        "{rec:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(count.load(std::sync::atomic::Ordering::SeqCst) == 1);
    let jobs = b.list_jobs().await?;
    ensure!(
        jobs.len() == 1 && jobs[0].name == "yearly" && jobs[0].timezone == "Europe/Berlin",
        "{jobs:?}"
    );
    let next = cronlock::next_tick(&jobs[0], Utc::now())?.context("no next tick")?;
    ensure!(next > Utc::now());
    let _: () = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map(|_: String| ())?;
    shutdown.cancel();
    join_all(handles).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_scheduler_records_missed_ticks_and_resumes() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let p = spawn_instance(&[
        "--redis-url",
        &url,
        "--list",
        "runs",
        "--job",
        "misfire",
        "--run-secs",
        "14",
    ])?;
    wait_for("two runs", Duration::from_secs(10), || async {
        (list_entries(&server, "runs").await.ok()?.len() >= 2).then_some(())
    })
    .await?;
    common::signal(p.pid(), "STOP")?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    common::signal(p.pid(), "CONT")?;
    let resumed = Utc::now();
    let b = Backend::from_url(&url)?;
    let missed = wait_for("missed records", Duration::from_secs(5), || async {
        let h = b.history("misfire", 100).await.ok()?;
        let missed: Vec<_> = h
            .into_iter()
            .filter(|r| r.outcome == Outcome::Missed)
            .collect();
        (missed.len() >= 2).then_some(missed)
    })
    .await?;
    ensure!(missed.iter().all(|r| r.token.is_none()), "{missed:?}");
    wait_for("a run after the pause", Duration::from_secs(5), || async {
        let e = list_entries(&server, "runs").await.ok()?;
        e.iter()
            .any(|r| r.0 > resumed.timestamp_millis())
            .then_some(())
    })
    .await?;
    let entries = list_entries(&server, "runs").await?;
    let ticks: HashSet<i64> = entries.iter().map(|e| e.0).collect();
    ensure!(
        ticks.len() == entries.len(),
        "a tick ran twice: {entries:?}"
    );
    drop(p);
    Ok(())
}

/// A claim sent while Redis is stopped (SIGSTOP) times out on the client, which counts the tick
/// as not run; when Redis resumes, the queued claim script must not take effect. It used to take
/// the lease with a fresh token that nobody ran or released: the next ticks were recorded
/// `skipped_overlap` until the lease expired, and `jobs` showed a run that never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_the_client_gave_up_on_never_takes_effect() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let url = server.url();
    let runs = Sink::default();
    let sink = Arc::clone(&runs);
    // The default 30 s lease: a ghost lease would block the job for 30 s.
    let spec = JobSpec::new("ghost", "* * * * * *");
    let job = Job::new(spec, move |ctx| {
        let sink = Arc::clone(&sink);
        async move {
            if let (TickId::Scheduled(t), Ok(mut v)) = (&ctx.tick_id, sink.lock()) {
                v.push((t.timestamp_millis(), ctx.token));
            }
            Ok(())
        }
    });
    let mut s = Scheduler::new(Backend::from_url(&url)?, identity(42));
    s.add(job)?;
    let stats = s.stats();
    let shutdown = CancellationToken::new();
    let handle = spawn_scheduler(s, &shutdown);
    let ran = |after: i64| {
        let runs = Arc::clone(&runs);
        move || {
            let n = runs
                .lock()
                .map(|v| v.iter().filter(|r| r.0 > after).count())
                .unwrap_or(0);
            async move { (n > 0).then_some(()) }
        }
    };
    wait_for("a first run", Duration::from_secs(5), ran(0)).await?;
    // Longer than the client's 2 s claim timeout: several claims queue up in Redis.
    server.pause()?;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    server.resume()?;
    let resumed = Utc::now().timestamp_millis();
    let resumed_run = wait_for(
        "a run of a tick after Redis resumed",
        Duration::from_secs(5),
        ran(resumed),
    )
    .await;
    let b = Backend::from_url(&url)?;
    let history = b.history("ghost", 100).await?;
    let holder = b.current_holder("ghost").await?;
    shutdown.cancel();
    let snap = tokio::time::timeout(Duration::from_secs(15), handle).await??;
    let runs = runs.lock().map(|v| v.clone()).unwrap_or_default();
    let detail = format!("runs {runs:?}\nholder {holder:?}\nstats {snap:?}\nhistory {history:#?}");
    resumed_run.with_context(|| detail.clone())?;
    ensure!(
        !history.iter().any(|r| r.outcome == Outcome::SkippedOverlap),
        "ticks skipped for a ghost's lease\n{detail}"
    );
    let tokens: HashSet<u64> = runs.iter().map(|r| r.1).collect();
    ensure!(
        history
            .iter()
            .filter_map(|r| r.token)
            .all(|t| tokens.contains(&t)),
        "a recorded token that never ran\n{detail}"
    );
    ensure!(
        holder.is_none_or(|h| tokens.contains(&h.token)),
        "the lease is held by a run that never happened\n{detail}"
    );
    ensure!(
        stats.snapshot().ticks_backend_down >= 2,
        "the claims during the pause were not counted as not run\n{detail}"
    );
    eprintln!("{detail}");
    Ok(())
}

/// A job that records `(tick millis, token)` of its scheduled runs into `sink`.
fn recording_job(name: &str, schedule: &str, sink: Sink) -> Job {
    Job::new(JobSpec::new(name, schedule), move |ctx| {
        let sink = Arc::clone(&sink);
        async move {
            if let (TickId::Scheduled(t), Ok(mut v)) = (&ctx.tick_id, sink.lock()) {
                v.push((t.timestamp_millis(), ctx.token));
            }
            Ok(())
        }
    })
}

/// After Redis restarts empty, the job registry is back within a couple of seconds, also for a
/// scheduler whose only job ticks once a year (it used to take up to the 60 s refresh, and
/// `supervisor jobs` said that no jobs were registered meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_is_back_soon_after_redis_restarts_empty() -> anyhow::Result<()> {
    let mut server = RedisServer::start()?;
    let url = server.url();
    let shutdown = CancellationToken::new();
    let mut yearly = Scheduler::new(Backend::from_url(&url)?, identity(1));
    yearly.add(recording_job("yearly", "0 0 0 1 1 *", Sink::default()))?;
    let mut beat = Scheduler::new(Backend::from_url(&url)?, identity(2));
    beat.add(recording_job("beat", "* * * * * *", Sink::default()))?;
    let handles = vec![
        spawn_scheduler(yearly, &shutdown),
        spawn_scheduler(beat, &shutdown),
    ];
    let b = Backend::from_url(&url)?;
    let both = || async {
        let jobs = b.list_jobs().await.ok()?;
        (jobs.len() == 2).then_some(())
    };
    wait_for("both jobs registered", Duration::from_secs(5), both).await?;
    // Let a few registry checks and claims go by on the pooled connections first.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.restart()?;
    let restarted = tokio::time::Instant::now();
    ensure!(
        Backend::from_url(&url)?.list_jobs().await?.is_empty(),
        "the restarted Redis is not empty"
    );
    let back = wait_for(
        "both jobs registered again",
        Duration::from_secs(4),
        || async { both().await.map(|()| restarted.elapsed()) },
    )
    .await;
    shutdown.cancel();
    join_all(handles).await?;
    let back = back?;
    eprintln!("registry back {back:?} after the restart");
    Ok(())
}

/// Captured log output of the current thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

/// Redis down for 7 s under two schedulers ("workers") with two jobs each: one warning per
/// scheduler when it goes down (naming the URL and the error), a count at most every
/// `outage_report_every` (2 s here) while it stays down, one info line when it is back; no
/// warning per tick or per retry (it used to be 74 warnings in 16 s for 2 workers).
/// Current-thread runtime: every task of the schedulers logs into the captured subscriber.
#[tokio::test]
async fn an_outage_is_logged_once_with_a_periodic_count_and_once_when_it_ends() -> anyhow::Result<()>
{
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut server = RedisServer::start()?;
    let url = server.url();
    let runs = Sink::default();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..2u32 {
        let options = SchedulerOptions {
            outage_report_every: Duration::from_secs(2),
            ..SchedulerOptions::default()
        };
        let mut s =
            Scheduler::new(Backend::from_url(&url)?, identity(500_000 + i)).with_options(options);
        s.add(recording_job("beat", "* * * * * *", Arc::clone(&runs)))?;
        s.add(recording_job("report", "*/20 * * * * *", Sink::default()))?;
        handles.push(spawn_scheduler(s, &shutdown));
    }
    let ran_after = |t: i64| {
        let runs = Arc::clone(&runs);
        move || {
            let n = runs
                .lock()
                .map(|v| v.iter().filter(|r| r.0 > t).count())
                .unwrap_or(0);
            async move { (n > 0).then_some(()) }
        }
    };
    wait_for("a first run", Duration::from_secs(5), ran_after(0)).await?;
    server.kill();
    let killed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    server.restart()?;
    let down_secs = killed.elapsed().as_secs();
    let restarted = Utc::now().timestamp_millis();
    wait_for(
        "a run after the restart",
        Duration::from_secs(5),
        ran_after(restarted),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    join_all(handles).await?;

    let text = logs.text();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    let down = count("cron backend unreachable");
    let still = count("cron backend still unreachable");
    let back = count("cron backend reachable again");
    let detail = format!(
        "{} warnings, down {down}, still {still}, back {back}:\n{text}",
        warnings.len()
    );
    ensure!(down == 2, "one 'unreachable' per scheduler: {detail}");
    ensure!(back == 2, "one 'reachable again' per scheduler: {detail}");
    // About 7 s down, a count every 2 s at most: 3 per scheduler (the first after 2 s), one
    // more if the first claims after the restart still fail on a dead connection.
    ensure!(
        (2..=2 * (down_secs as usize / 2 + 1)).contains(&still),
        "periodic counts: {detail}"
    );
    // A run under way when the server died finds its lease gone at release (the server came
    // back empty): said once per such run, and no other warning.
    let released_gone = count("lease was no longer ours at release");
    ensure!(
        released_gone <= 2,
        "at most one run per scheduler was cut: {detail}"
    );
    ensure!(
        warnings.len() == down + still + released_gone,
        "no other warnings: {detail}"
    );
    let port = server.port().to_string();
    ensure!(
        text.lines()
            .filter(|l| l.contains("cron backend unreachable"))
            .all(|l| l.contains(&format!("redis://127.0.0.1:{port}/0")) && l.contains("error")),
        "the warning names the URL and the error: {detail}"
    );
    ensure!(
        text.lines()
            .filter(|l| l.contains("still unreachable") || l.contains("reachable again"))
            .all(|l| l.contains("ticks skipped")),
        "{detail}"
    );
    eprintln!("{detail}");
    Ok(())
}

/// A finish retried after its answer was lost (the scheduler retries a failed release until the
/// lease would expire, e.g. across a failover) records the run once and releases once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_finish_records_the_run_once() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let b = Backend::from_url(&server.url())?;
    let ClaimOutcome::Won(lease) = b
        .claim(&claim_req("retry", 201_000, Duration::from_secs(5), 1)?)
        .await?
    else {
        bail!("claim lost");
    };
    let record = cronlock::RunRecord {
        job: "retry".into(),
        tick: TickId::Scheduled(DateTime::from_timestamp_millis(201_000).context("time")?)
            .to_string(),
        host: "test-host".into(),
        pid: 1,
        token: Some(lease.token),
        started_at: Utc::now(),
        duration_ms: 3,
        outcome: Outcome::Ok,
        error: None,
    };
    ensure!(b.finish(&lease, &record).await?, "first finish: not ours");
    ensure!(
        !b.finish(&lease, &record).await?,
        "second finish released again"
    );
    ensure!(b.current_holder("retry").await?.is_none());
    let history = b.history("retry", 10).await?;
    ensure!(
        history.iter().filter(|r| r.outcome == Outcome::Ok).count() == 1,
        "{history:?}"
    );
    Ok(())
}
