//! Local (directory) backend tests and input validation: two schedulers on one directory run
//! each tick once, the flock lease blocks overlapping runs, manual triggers run once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use cronlock::{Backend, Identity, Job, JobSpec, Outcome, Scheduler, StatsSnapshot, TickId};
use tokio_util::sync::CancellationToken;

fn identity(_n: u32) -> Identity {
    Identity {
        host: "local-test".to_owned(),
        pid: std::process::id(),
    }
}

async fn run_for(schedulers: Vec<Scheduler>, d: Duration) -> anyhow::Result<Vec<StatsSnapshot>> {
    let shutdown = CancellationToken::new();
    let handles: Vec<_> = schedulers
        .into_iter()
        .map(|s| tokio::spawn(s.run(shutdown.clone(), Duration::from_secs(5))))
        .collect();
    tokio::time::sleep(d).await;
    shutdown.cancel();
    let mut out = Vec::new();
    for h in handles {
        out.push(tokio::time::timeout(Duration::from_secs(15), h).await??);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_on_one_directory_run_each_tick_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let runs: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let mut schedulers = Vec::new();
    for i in 0..2 {
        let runs = Arc::clone(&runs);
        let mut s = Scheduler::new(Backend::from_url(&url)?, identity(i));
        s.add(Job::new(JobSpec::new("tick", "* * * * * *"), move |ctx| {
            let runs = Arc::clone(&runs);
            async move {
                if let (TickId::Scheduled(t), Ok(mut v)) = (&ctx.tick_id, runs.lock()) {
                    v.push((t.timestamp_millis(), ctx.token));
                }
                Ok(())
            }
        }))?;
        schedulers.push(s);
    }
    let start = Utc::now();
    let stats = run_for(schedulers, Duration::from_secs(5)).await?;
    let mut runs = runs.lock().map(|v| v.clone()).unwrap_or_default();
    runs.sort();
    for w in runs.windows(2) {
        ensure!(w[0].0 != w[1].0, "tick {} ran twice: {runs:?}", w[0].0);
        ensure!(w[1].1 > w[0].1, "tokens not increasing: {runs:?}");
    }
    let first = (start.timestamp() + 1) * 1000;
    for t in (first..first + 3000).step_by(1000) {
        ensure!(
            runs.iter().any(|r| r.0 == t),
            "tick {t} never ran: {runs:?}"
        );
    }
    let elsewhere: u64 = stats
        .iter()
        .map(|s| s.ticks_skipped_claimed_elsewhere)
        .sum();
    ensure!(elsewhere >= 3, "{stats:?}");
    let b = Backend::from_url(dir.path().to_str().context("utf-8 path")?)?;
    let history = b.history("tick", 100).await?;
    ensure!(
        history.len() == runs.len(),
        "{} records vs {} runs",
        history.len(),
        runs.len()
    );
    ensure!(history.iter().all(|r| r.outcome == Outcome::Ok));
    let jobs = b.list_jobs().await?;
    ensure!(jobs.len() == 1 && jobs[0].name == "tick");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flock_lease_blocks_overlapping_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let mut schedulers = Vec::new();
    for i in 0..2 {
        let running = Arc::clone(&running);
        let max_running = Arc::clone(&max_running);
        let mut s = Scheduler::new(
            Backend::from_url(&dir.path().display().to_string())?,
            identity(i),
        );
        s.add(Job::new(JobSpec::new("slow", "* * * * * *"), move |_ctx| {
            let running = Arc::clone(&running);
            let max_running = Arc::clone(&max_running);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }))?;
        schedulers.push(s);
    }
    let b = Backend::from_url(&dir.path().display().to_string())?;
    let probe = tokio::spawn(async move {
        // While a run is in progress the lease file names its holder.
        for _ in 0..40 {
            if let Ok(Some(h)) = b.current_holder("slow").await {
                return Some(h);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    let stats = run_for(schedulers, Duration::from_secs(5)).await?;
    ensure!(max_running.load(Ordering::SeqCst) == 1, "runs overlapped");
    let skipped: u64 = stats.iter().map(|s| s.ticks_skipped_overlap).sum();
    ensure!(skipped >= 2, "{stats:?}");
    let holder = probe.await?.context("no lease holder seen while running")?;
    ensure!(
        holder.host == "local-test" && holder.token >= 1,
        "{holder:?}"
    );
    let b = Backend::from_url(&dir.path().display().to_string())?;
    let history = b.history("slow", 100).await?;
    ensure!(
        history.iter().any(|r| r.outcome == Outcome::SkippedOverlap),
        "{history:?}"
    );
    ensure!(
        b.current_holder("slow").await?.is_none(),
        "lease not released"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_manual_trigger_runs_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let count = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..2 {
        let count = Arc::clone(&count);
        let mut s = Scheduler::new(
            Backend::from_url(&dir.path().display().to_string())?,
            identity(i),
        );
        s.add(Job::new(JobSpec::new("rare", "0 0 0 1 1 *"), move |ctx| {
            let count = Arc::clone(&count);
            async move {
                if matches!(ctx.tick_id, TickId::Manual(_)) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        }))?;
        handles.push(tokio::spawn(
            s.run(shutdown.clone(), Duration::from_secs(2)),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = Backend::from_url(&dir.path().display().to_string())?;
    let id = b.request_run("rare").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let h = b.history("rare", 10).await?;
        if let Some(r) = h.first() {
            ensure!(
                r.tick == format!("manual:{id}") && r.outcome == Outcome::Ok,
                "{r:?}"
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("manual run never recorded");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    ensure!(
        count.load(Ordering::SeqCst) == 1,
        "manual request ran {} times",
        count.load(Ordering::SeqCst)
    );
    shutdown.cancel();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(10), h).await??;
    }
    Ok(())
}

#[tokio::test]
async fn invalid_cron_or_timezone_is_an_error_naming_the_job() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = Scheduler::new(
        Backend::from_url(&dir.path().display().to_string())?,
        identity(1),
    );
    let err = match s.add(Job::new(
        JobSpec::new("nightly-report", "0 61 * * * *"),
        |_| async { Ok(()) },
    )) {
        Ok(_) => bail!("invalid cron accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("nightly-report") && err.contains("0 61 * * * *"),
        "{err}"
    );
    let err = match JobSpec::new("nightly-report", "0 0 2 * * *").timezone_name("Europe/Atlantis") {
        Ok(_) => bail!("unknown zone accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("nightly-report") && err.contains("Europe/Atlantis"),
        "{err}"
    );
    let err = match cronlock::parse_timezone("backup", "Moon/Base") {
        Ok(_) => bail!("unknown zone accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(err.contains("backup") && err.contains("Moon/Base"), "{err}");
    s.add(Job::new(JobSpec::new("ok", "0 0 2 * * *"), |_| async {
        Ok(())
    }))?;
    let err = match s.add(Job::new(JobSpec::new("ok", "0 0 3 * * *"), |_| async {
        Ok(())
    })) {
        Ok(_) => bail!("duplicate accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(err.contains("ok"), "{err}");
    let err = match Backend::from_url("http://user:pw@example.com/") {
        Ok(_) => bail!("http url accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(!err.contains("pw@") && err.contains("***"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_cancels_running_jobs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().display().to_string();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<String>(8);
    let mut s = Scheduler::new(Backend::from_url(&path)?, identity(1));
    for (name, ms) in [("quick", 300u64), ("stubborn", 60_000)] {
        let started_tx = started_tx.clone();
        s.add(Job::new(JobSpec::new(name, "* * * * * *"), move |ctx| {
            let started_tx = started_tx.clone();
            let name = name.to_owned();
            async move {
                let _ = started_tx.send(name).await;
                tokio::select! {
                    _ = ctx.cancel.cancelled() => Err("stopped on cancel".to_owned()),
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
                }
            }
        }))?;
    }
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(s.run(shutdown.clone(), Duration::from_millis(800)));
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let name = tokio::time::timeout(Duration::from_secs(5), started_rx.recv())
            .await?
            .context("channel closed")?;
        seen.insert(name);
    }
    let t0 = tokio::time::Instant::now();
    shutdown.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(10), handle).await??;
    ensure!(
        t0.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t0.elapsed()
    );
    ensure!(stats.cancelled == 1 && stats.runs_ok >= 1, "{stats:?}");
    let b = Backend::from_url(&path)?;
    let stubborn = b.history("stubborn", 10).await?;
    ensure!(
        stubborn.first().map(|r| r.outcome) == Some(Outcome::Cancelled),
        "{stubborn:?}"
    );
    let quick = b.history("quick", 10).await?;
    ensure!(quick.iter().all(|r| r.outcome == Outcome::Ok), "{quick:?}");
    Ok(())
}

fn mode_of(path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// A fresh state directory is private (0700, files 0600): other users can neither read the
/// history nor take the locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_state_directory_is_private() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let b = Backend::from_url(&format!("file://{}", dir.display()))?;
    ensure!(
        mode_of(&dir)? == 0o700,
        "directory mode {:o}",
        mode_of(&dir)?
    );
    ensure!(mode_of(&dir.join("requests"))? == 0o700);
    let mut s = Scheduler::new(b.clone(), identity(0));
    s.add(Job::new(JobSpec::new("tick", "* * * * * *"), |_| async {
        Ok(())
    }))?;
    run_for(vec![s], Duration::from_millis(2200)).await?;
    b.request_run("tick").await?;
    let mut files = 0;
    for entry in std::fs::read_dir(&dir)?.chain(std::fs::read_dir(dir.join("requests"))?) {
        let path = entry?.path();
        if path.is_file() {
            files += 1;
            ensure!(
                mode_of(&path)? == 0o600,
                "{} has mode {:o}",
                path.display(),
                mode_of(&path)?
            );
        }
    }
    ensure!(files >= 5, "only {files} files written");
    Ok(())
}

/// A state directory made beforehand by another user (who could hold the locks and block every
/// job) or writable by others is refused with an error naming it, its owner and us.
#[test]
fn a_state_directory_of_another_user_or_writable_by_others_is_refused() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let tmp = tempfile::tempdir()?;
    let open = tmp.path().join("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
    let err = match Backend::from_url(&format!("file://{}", open.display())) {
        Ok(_) => bail!("a directory writable by everyone was accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains(&open.display().to_string()) && err.contains("0777"),
        "{err}"
    );
    if me != 0 {
        eprintln!("skipped the other-owner case: needs root to chown");
        return Ok(());
    }
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs)?;
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534))?;
    for url in [
        format!("file://{}", theirs.display()),
        theirs.display().to_string(),
    ] {
        let err = match Backend::from_url(&url) {
            Ok(_) => bail!("a directory owned by uid 65534 was accepted"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains(&theirs.display().to_string())
                && err.contains("uid 65534")
                && err.contains(&format!("uid {me}")),
            "{err}"
        );
    }
    ensure!(
        !theirs.join("requests").exists(),
        "nothing is created in it"
    );
    Ok(())
}
