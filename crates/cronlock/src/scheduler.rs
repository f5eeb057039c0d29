//! The scheduling loop: one task per job that sleeps until the next tick on the job's own
//! timezone, claims it through the backend, runs it under a renewed lease, and records history.
//!
//! # Why our own loop on `croner` rather than `tokio-cron-scheduler`
//!
//! `tokio-cron-scheduler` converts a job's timezone to a fixed UTC offset when the job is
//! created (every tick after the next DST change is an hour off), collapses missed ticks into a
//! single run, stops a repeated job for good when its next tick falls in the past (#113), and has
//! no notion of a cluster-wide claim. The loop here is small and fixes all four:
//!
//! - the next tick is computed with `croner` on the wall clock of the job's `chrono-tz` zone at
//!   every iteration (see [`crate::schedule`] for the DST rules);
//! - sleeping is done in steps of at most one second against the (injectable) wall clock, so a
//!   long sleep does not drift and a suspended machine or a paused process is noticed;
//! - when the loop wakes late, every tick in between is judged: older ones (and the latest one
//!   if it is later than the misfire grace) are claimed as `missed` and recorded (bounded to
//!   [`SchedulerOptions::max_missed_records`] per wake), never silently collapsed;
//! - the loop never stops because a tick is in the past: it moves on to the next one;
//! - each tick is claimed in the backend by its UTC instant, so instances whose clocks differ
//!   by a few seconds agree on the tick and exactly one of them runs it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, ClaimOutcome, ClaimRequest, Lease};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::job::{Identity, Job, JobContext, Misfire, Outcome, RunRecord, TickId};
use crate::schedule::Schedule;

/// Pause between two tries of a failed release (the backend finds the new master meanwhile).
const FINISH_RETRY: Duration = Duration::from_millis(250);

/// The wall clock of a scheduler: system time plus a fixed offset (for tests simulating skew).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset: chrono::Duration,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock shifted by `offset` (positive: this instance's clock is ahead).
    pub fn with_offset(offset: chrono::Duration) -> Self {
        Self { offset }
    }

    /// Current time on this clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// Tuning knobs of a [`Scheduler`].
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// With misfire `skip`, a tick whose processing starts later than this is `missed`
    /// (default 1 s; with `run_late` the grace is used if larger).
    pub on_time_tolerance: Duration,
    /// At most this many late ticks are judged (claimed and recorded as missed) per wake; the
    /// rest are only counted and logged (default 100).
    pub max_missed_records: usize,
    /// Longest single sleep before the wall clock is checked again (default 1 s).
    pub max_sleep_step: Duration,
    /// How often the job registry is rewritten in full (default 60 s).
    pub registry_refresh: Duration,
    /// How often the registry is checked for this scheduler's jobs (default 2 s): a backend
    /// that lost its data (Redis restarted empty) gets them back at once. The jobs are also
    /// registered again as soon as the backend answers after an outage.
    pub registry_check: Duration,
    /// While the backend is unreachable, how often the count of skipped ticks is logged
    /// (default 30 s). Going down and coming back are logged once each.
    pub outage_report_every: Duration,
    /// Past the drain period, how long a job may take to return after its cancel token fired
    /// before its future is dropped (default 1 s). After a lease loss the job gets at most half
    /// of the safety margin (TTL / 12), so it is gone before the lease expires.
    pub cancel_grace: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            on_time_tolerance: Duration::from_secs(1),
            max_missed_records: 100,
            max_sleep_step: Duration::from_secs(1),
            registry_refresh: Duration::from_secs(60),
            registry_check: Duration::from_secs(2),
            outage_report_every: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(1),
        }
    }
}

/// Counters of one scheduler (cumulative since it was created).
#[derive(Debug, Default)]
pub struct Stats {
    ticks_run: AtomicU64,
    runs_ok: AtomicU64,
    runs_failed: AtomicU64,
    ticks_skipped_claimed_elsewhere: AtomicU64,
    ticks_skipped_overlap: AtomicU64,
    ticks_backend_down: AtomicU64,
    ticks_missed: AtomicU64,
    lease_lost: AtomicU64,
    cancelled: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Ticks this instance won and started.
    pub ticks_run: u64,
    /// Runs that returned `Ok`.
    pub runs_ok: u64,
    /// Runs that returned `Err`.
    pub runs_failed: u64,
    /// Ticks another instance had already claimed.
    pub ticks_skipped_claimed_elsewhere: u64,
    /// Ticks skipped because a previous run still held the lease.
    pub ticks_skipped_overlap: u64,
    /// Ticks not run because the backend failed while claiming (never run unguarded).
    pub ticks_backend_down: u64,
    /// Ticks this instance processed too late (misfire).
    pub ticks_missed: u64,
    /// Runs cancelled because their lease could not be renewed.
    pub lease_lost: u64,
    /// Runs cancelled by shutdown after the drain period.
    pub cancelled: u64,
}

impl std::fmt::Display for StatsSnapshot {
    /// One line for people: `ran 12 (ok 11, failed 1); skipped: claimed elsewhere 24, ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ran {} (ok {}, failed {}, lease lost {}, cancelled {}); not run: claimed elsewhere {}, \
             overlap {}, backend down {}, missed {}",
            self.ticks_run,
            self.runs_ok,
            self.runs_failed,
            self.lease_lost,
            self.cancelled,
            self.ticks_skipped_claimed_elsewhere,
            self.ticks_skipped_overlap,
            self.ticks_backend_down,
            self.ticks_missed
        )
    }
}

impl std::iter::Sum for StatsSnapshot {
    /// Counters of several schedulers added up.
    fn sum<I: Iterator<Item = StatsSnapshot>>(iter: I) -> StatsSnapshot {
        iter.fold(StatsSnapshot::default(), |a, b| StatsSnapshot {
            ticks_run: a.ticks_run + b.ticks_run,
            runs_ok: a.runs_ok + b.runs_ok,
            runs_failed: a.runs_failed + b.runs_failed,
            ticks_skipped_claimed_elsewhere: a.ticks_skipped_claimed_elsewhere
                + b.ticks_skipped_claimed_elsewhere,
            ticks_skipped_overlap: a.ticks_skipped_overlap + b.ticks_skipped_overlap,
            ticks_backend_down: a.ticks_backend_down + b.ticks_backend_down,
            ticks_missed: a.ticks_missed + b.ticks_missed,
            lease_lost: a.lease_lost + b.lease_lost,
            cancelled: a.cancelled + b.cancelled,
        })
    }
}

impl Stats {
    /// Reads all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            ticks_run: g(&self.ticks_run),
            runs_ok: g(&self.runs_ok),
            runs_failed: g(&self.runs_failed),
            ticks_skipped_claimed_elsewhere: g(&self.ticks_skipped_claimed_elsewhere),
            ticks_skipped_overlap: g(&self.ticks_skipped_overlap),
            ticks_backend_down: g(&self.ticks_backend_down),
            ticks_missed: g(&self.ticks_missed),
            lease_lost: g(&self.lease_lost),
            cancelled: g(&self.cancelled),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

struct JobEntry {
    job: Job,
    schedule: Schedule,
}

struct Shared {
    backend: Backend,
    /// Reachability of the backend: logs outages, wakes the registry when it is back.
    health: Arc<Health>,
    identity: Identity,
    clock: Clock,
    stats: Arc<Stats>,
    options: SchedulerOptions,
    tracker: TaskTracker,
    /// Cancels running jobs (shutdown past the drain).
    hard: CancellationToken,
}

/// Runs a set of jobs, each tick at most once across all schedulers sharing the backend.
pub struct Scheduler {
    backend: Backend,
    identity: Identity,
    clock: Clock,
    options: SchedulerOptions,
    stats: Arc<Stats>,
    jobs: Vec<JobEntry>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("backend", &self.backend.describe())
            .field("identity", &self.identity)
            .field("clock", &self.clock)
            .field(
                "jobs",
                &self.jobs.iter().map(|j| j.job.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Scheduler {
    /// A scheduler on `backend` identifying itself as `identity`.
    pub fn new(backend: Backend, identity: Identity) -> Self {
        Self {
            backend,
            identity,
            clock: Clock::system(),
            options: SchedulerOptions::default(),
            stats: Arc::new(Stats::default()),
            jobs: Vec::new(),
        }
    }

    /// Shifts this scheduler's wall clock (tests: simulate instances with skewed clocks).
    pub fn with_clock_offset(mut self, offset: chrono::Duration) -> Self {
        self.clock = Clock::with_offset(offset);
        self
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: SchedulerOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a job after validating it (errors name the job).
    pub fn add(&mut self, job: Job) -> Result<&mut Self> {
        let schedule = job.spec.validate()?;
        if self.jobs.iter().any(|j| j.job.name() == job.name()) {
            return Err(Error::DuplicateJob {
                job: job.name().to_owned(),
            });
        }
        self.jobs.push(JobEntry { job, schedule });
        Ok(self)
    }

    /// The counters (shared: keep the `Arc` to read them while [`Scheduler::run`] runs).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Runs every job's loop until `shutdown` is cancelled. Then no new tick starts; running
    /// jobs get `drain` to finish, after which their cancel token fires and they are recorded
    /// as `cancelled`. Returns the final counters.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) -> StatsSnapshot {
        let Scheduler {
            backend,
            identity,
            clock,
            options,
            stats,
            jobs,
        } = self;
        let stop = CancellationToken::new();
        let _stop_guard = stop.clone().drop_guard();
        let hard = CancellationToken::new();
        let _hard_guard = hard.clone().drop_guard();
        let health = Arc::new(Health::new(backend.describe(), options.outage_report_every));
        let shared = Arc::new(Shared {
            backend,
            health,
            identity,
            clock,
            stats: Arc::clone(&stats),
            options,
            tracker: TaskTracker::new(),
            hard: hard.clone(),
        });
        tracing::info!(
            backend = %shared.backend.describe(),
            host = %shared.identity.host,
            pid = shared.identity.pid,
            jobs = jobs.len(),
            "cron scheduler started"
        );

        let metas: Vec<_> = jobs.iter().map(|j| j.job.spec.meta()).collect();
        let registry = tokio::spawn(keep_registered(Arc::clone(&shared), metas, stop.clone()));

        let (req_tx, mut req_rx) = mpsc::channel::<(String, String)>(64);
        let listener =
            shared
                .backend
                .spawn_request_listener(req_tx, Arc::clone(&shared.health), stop.clone());
        let mut routes: HashMap<String, mpsc::Sender<String>> = HashMap::new();
        let mut loops = Vec::new();
        for entry in jobs {
            let (tx, rx) = mpsc::channel::<String>(16);
            routes.insert(entry.job.name().to_owned(), tx);
            loops.push(tokio::spawn(job_loop(
                Arc::clone(&shared),
                Arc::new(entry),
                rx,
                stop.clone(),
            )));
        }
        let router_stop = stop.clone();
        let router = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = router_stop.cancelled() => return,
                    m = req_rx.recv() => m,
                };
                let Some((job, id)) = msg else { return };
                if let Some(tx) = routes.get(&job) {
                    let _ = tx.try_send(id);
                }
            }
        });

        shutdown.cancelled().await;
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "cron scheduler stopping"
        );
        stop.cancel();
        for l in loops {
            let _ = l.await;
        }
        let _ = router.await;
        let _ = listener.await;
        let _ = registry.await;
        shared.tracker.close();
        if tokio::time::timeout(drain, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("cron jobs still running after the drain period; cancelling them");
            hard.cancel();
            let bound = shared.options.cancel_grace + Duration::from_secs(5);
            if tokio::time::timeout(bound, shared.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("cron runs did not finish recording after cancellation");
            }
        }
        let snapshot = stats.snapshot();
        tracing::info!("cron scheduler stopped: {snapshot}");
        snapshot
    }
}

/// Keeps this scheduler's jobs in the backend's registry: written in full at start and every
/// `registry_refresh`, checked every `registry_check` (written again at once if one is missing:
/// the backend lost its data), and written again as soon as the backend is back after an outage.
async fn keep_registered(
    shared: Arc<Shared>,
    metas: Vec<crate::job::JobMeta>,
    stop: CancellationToken,
) {
    if metas.is_empty() {
        return;
    }
    let names: Vec<String> = metas.iter().map(|m| m.name.clone()).collect();
    let options = &shared.options;
    // When the registry was last written in full (None: write it now).
    let mut written: Option<Instant> = None;
    loop {
        let due = written.is_none_or(|t| t.elapsed() >= options.registry_refresh);
        let op = if due {
            "registering jobs"
        } else {
            "checking the job registry"
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = async {
                if due {
                    shared.backend.register_jobs(&metas).await.map(|()| true)
                } else {
                    shared.backend.jobs_registered(&names).await
                }
            } => r,
        };
        // After a failure, try again soon: the backend may be back with its data lost.
        let mut wait = options.registry_check;
        match result {
            Ok(present) => {
                shared.health.success();
                if due {
                    written = Some(Instant::now());
                    tracing::debug!(jobs = names.len(), "cron jobs registered");
                } else if !present {
                    tracing::info!(
                        backend = %shared.backend,
                        "cron jobs missing from the registry (the backend lost its data?): \
                         registering them again"
                    );
                    written = None;
                    continue;
                }
            }
            Err(e) => {
                shared.health.failure(op, &e, 0);
                written = None;
                wait = wait.min(Duration::from_millis(500));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = shared.health.came_back() => written = None,
        }
    }
}

/// How long a tick claim is remembered: twice the period, at least 60 s.
fn keep_for(period: Option<chrono::Duration>) -> Duration {
    let period = period
        .and_then(|p| p.to_std().ok())
        .unwrap_or(Duration::from_secs(60));
    (period * 2).max(Duration::from_secs(60))
}

async fn job_loop(
    shared: Arc<Shared>,
    entry: Arc<JobEntry>,
    mut manual: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    let name = entry.job.name().to_owned();
    let mut cursor = shared.clock.now();
    loop {
        let next = entry.schedule.next_after(cursor);
        // Sleep until `next` in bounded steps against the wall clock, serving manual requests.
        loop {
            let now = shared.clock.now();
            let step = match next {
                Some(next) if now >= next => break,
                Some(next) => (next - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(shared.options.max_sleep_step),
                None => shared.options.max_sleep_step,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
                Some(id) = manual.recv() => {
                    let tick_time = shared.clock.now();
                    spawn_run(&shared, &entry, TickId::Manual(id), tick_time, Duration::from_secs(3600));
                }
            }
        }
        let Some(next) = next else { continue };
        let now = shared.clock.now();

        // Every tick due by now: `next` and any later ones we slept through.
        let limit = shared.options.max_missed_records.max(1) + 1;
        let mut due: VecDeque<DateTime<Utc>> = VecDeque::from([next]);
        let mut total: u64 = 1;
        let mut t = next;
        while let Some(n) = entry.schedule.next_after(t) {
            if n > now {
                break;
            }
            due.push_back(n);
            total += 1;
            if due.len() > limit {
                due.pop_front();
            }
            t = n;
        }
        let latest = t;
        cursor = latest;
        let late = (now - latest).to_std().unwrap_or_default();
        let tolerance = match entry.job.spec.misfire {
            Misfire::Skip => shared.options.on_time_tolerance,
            Misfire::RunLate { grace } => grace.max(shared.options.on_time_tolerance),
        };
        let run_latest = late <= tolerance;
        let missed_count = total - u64::from(run_latest);
        if missed_count > 0 {
            shared
                .stats
                .ticks_missed
                .fetch_add(missed_count, Ordering::Relaxed);
            let mut missed: Vec<DateTime<Utc>> = due.iter().copied().collect();
            if run_latest {
                missed.pop();
            }
            let unrecorded = missed_count - missed.len() as u64;
            tracing::warn!(
                job = %name,
                missed = missed_count,
                unrecorded,
                late_ms = late.as_millis() as u64,
                "scheduler woke late: ticks missed (misfire policy)"
            );
            spawn_mark_missed(&shared, &entry, missed, now);
        }
        if run_latest {
            let period = entry.schedule.period_after(latest);
            spawn_run(
                &shared,
                &entry,
                TickId::Scheduled(latest),
                latest,
                keep_for(period),
            );
        }
    }
}

fn claim_request(shared: &Shared, entry: &JobEntry, tick: TickId, keep: Duration) -> ClaimRequest {
    ClaimRequest {
        job: entry.job.name().to_owned(),
        tick,
        keep,
        lease_ttl: entry.job.spec.lease_ttl,
        overlap: entry.job.spec.overlap,
        identity: shared.identity.clone(),
        started_at: shared.clock.now(),
    }
}

fn spawn_mark_missed(
    shared: &Arc<Shared>,
    entry: &Arc<JobEntry>,
    ticks: Vec<DateTime<Utc>>,
    judged_at: DateTime<Utc>,
) {
    let shared = Arc::clone(shared);
    let entry = Arc::clone(entry);
    shared.tracker.clone().spawn(async move {
        for tick in ticks {
            let period = entry.schedule.period_after(tick);
            let req = claim_request(&shared, &entry, TickId::Scheduled(tick), keep_for(period));
            let late_ms = (judged_at - tick).num_milliseconds().max(0);
            let record =
                req.record_not_run(Outcome::Missed, format!("scheduler was {late_ms} ms late"));
            match shared.backend.mark_missed(&req, &record).await {
                Ok(_) => shared.health.success(),
                Err(e) => {
                    shared.health.failure("recording missed ticks", &e, 0);
                    return;
                }
            }
        }
    });
}

fn spawn_run(
    shared: &Arc<Shared>,
    entry: &Arc<JobEntry>,
    tick: TickId,
    tick_time: DateTime<Utc>,
    keep: Duration,
) {
    let shared = Arc::clone(shared);
    let entry = Arc::clone(entry);
    shared
        .tracker
        .clone()
        .spawn(run_tick(shared, entry, tick, tick_time, keep));
}

async fn run_tick(
    shared: Arc<Shared>,
    entry: Arc<JobEntry>,
    tick: TickId,
    tick_time: DateTime<Utc>,
    keep: Duration,
) {
    let req = claim_request(&shared, &entry, tick, keep);
    let claimed_at = Instant::now();
    let claimed = shared.backend.claim(&req).await;
    match &claimed {
        Ok(_) => shared.health.success(),
        Err(e) => shared.health.tick_skipped(e),
    }
    match claimed {
        Err(e) => {
            inc(&shared.stats.ticks_backend_down);
            tracing::debug!(
                job = %req.job,
                tick = %req.tick,
                error = %e,
                "backend error while claiming: tick not run (never run unguarded)"
            );
        }
        Ok(ClaimOutcome::ClaimedElsewhere) => {
            inc(&shared.stats.ticks_skipped_claimed_elsewhere);
            tracing::debug!(job = %req.job, tick = %req.tick, "tick claimed by another instance");
        }
        Ok(ClaimOutcome::SkippedOverlap { holder }) => {
            inc(&shared.stats.ticks_skipped_overlap);
            tracing::info!(
                job = %req.job,
                tick = %req.tick,
                holder_token = holder.as_ref().map(|h| h.token),
                "tick skipped: previous run still holds the lease"
            );
        }
        Ok(ClaimOutcome::Won(lease)) => {
            execute(shared, entry, req, lease, tick_time, claimed_at).await;
        }
    }
}

/// Renews the lease every ttl/3; on failure to renew before `valid_until - margin`, or when the
/// lease turns out to be someone else's, fires `lost` and the job's cancel token.
async fn watchdog(
    shared: Arc<Shared>,
    lease: Arc<Lease>,
    valid_until: Arc<Mutex<Instant>>,
    margin: Duration,
    cancel: CancellationToken,
    lost: CancellationToken,
    done: CancellationToken,
) {
    let ttl = lease.ttl;
    let interval = ttl / 3;
    let read_valid = || match valid_until.lock() {
        Ok(v) => *v,
        Err(p) => *p.into_inner(),
    };
    let lose = |why: &str| {
        tracing::warn!(job = %lease.job, tick = %lease.tick, token = lease.token, reason = why, "lease lost: cancelling the run");
        lost.cancel();
        cancel.cancel();
    };
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(last_ok + interval) => {}
        }
        loop {
            let deadline = read_valid()
                .checked_sub(margin)
                .unwrap_or_else(Instant::now);
            let now = Instant::now();
            if now >= deadline {
                lose("the lease could not be renewed before it expires");
                return;
            }
            let sent = now;
            let attempt = tokio::select! {
                _ = done.cancelled() => return,
                r = tokio::time::timeout(deadline - now, shared.backend.renew(&lease)) => r,
            };
            match attempt {
                Ok(Ok(true)) => {
                    shared.health.success();
                    if let Ok(mut v) = valid_until.lock() {
                        *v = sent + ttl;
                    }
                    last_ok = sent;
                    break;
                }
                Ok(Ok(false)) => {
                    lose("the lease is no longer ours");
                    return;
                }
                Ok(Err(e)) => {
                    shared.health.failure("renewing a lease", &e, 0);
                    tracing::debug!(job = %lease.job, token = lease.token, error = %e, "lease renewal failed; retrying");
                    let pause = Duration::from_millis(200)
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::select! {
                        _ = done.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(_) => {
                    lose("lease renewal timed out");
                    return;
                }
            }
        }
    }
}

async fn execute(
    shared: Arc<Shared>,
    entry: Arc<JobEntry>,
    req: ClaimRequest,
    lease: Lease,
    tick_time: DateTime<Utc>,
    claimed_at: Instant,
) {
    let lease = Arc::new(lease);
    let token = lease.token;
    let ttl = lease.ttl;
    // Stop a run this long before its lease would expire (at least 50 ms, a sixth of the TTL).
    let margin = (ttl / 6).max(Duration::from_millis(50));
    let grace = shared.options.cancel_grace.min(margin / 2);
    let valid_until = Arc::new(Mutex::new(claimed_at + ttl));
    let cancel = shared.hard.child_token();
    let lost = CancellationToken::new();
    let done = CancellationToken::new();
    inc(&shared.stats.ticks_run);
    tracing::info!(job = %req.job, tick = %req.tick, token, "cron run started");
    let watchdog = tokio::spawn(watchdog(
        Arc::clone(&shared),
        Arc::clone(&lease),
        Arc::clone(&valid_until),
        margin,
        cancel.clone(),
        lost.clone(),
        done.clone(),
    ));
    let ctx = JobContext {
        job: req.job.clone(),
        tick: tick_time,
        tick_id: req.tick.clone(),
        token,
        cancel: cancel.clone(),
    };
    let started = Instant::now();
    let fut = (entry.job.func)(ctx);
    tokio::pin!(fut);
    let (mut outcome, mut error) = tokio::select! {
        biased;
        _ = lost.cancelled() => {
            // Give the job a moment to observe its cancel token, then drop it.
            let _ = tokio::time::timeout(grace, &mut fut).await;
            (Outcome::LeaseLost, Some("lease lost; run cancelled".to_owned()))
        }
        r = &mut fut => {
            // The job may have returned because its cancel token fired: attribute the outcome
            // to the reason of the cancellation.
            let suffix = match &r {
                Ok(()) => String::new(),
                Err(e) => format!(": {e}"),
            };
            if lost.is_cancelled() {
                (Outcome::LeaseLost, Some(format!("lease lost; run cancelled{suffix}")))
            } else if shared.hard.is_cancelled() {
                (Outcome::Cancelled, Some(format!("cancelled by shutdown{suffix}")))
            } else {
                match r {
                    Ok(()) => (Outcome::Ok, None),
                    Err(e) => (Outcome::Failed, Some(e)),
                }
            }
        }
        _ = shared.hard.cancelled() => {
            let r = tokio::time::timeout(shared.options.cancel_grace, &mut fut).await;
            let msg = match r {
                Ok(Err(e)) => format!("cancelled by shutdown: {e}"),
                Ok(Ok(())) => "cancelled by shutdown".to_owned(),
                Err(_) => "cancelled by shutdown (did not stop within the grace)".to_owned(),
            };
            (Outcome::Cancelled, Some(msg))
        }
    };
    done.cancel();
    let _ = watchdog.await;
    // A run that finished after its lease deadline cannot vouch it ran alone (e.g. the process
    // was paused longer than the lease): record it as lease_lost.
    let deadline = match valid_until.lock() {
        Ok(v) => *v,
        Err(p) => *p.into_inner(),
    };
    if outcome != Outcome::LeaseLost && Instant::now() > deadline {
        outcome = Outcome::LeaseLost;
        error = Some("the lease expired before the run finished".to_owned());
    }
    if outcome == Outcome::LeaseLost {
        lost.cancel();
    }
    let duration = started.elapsed();
    let record = RunRecord {
        job: req.job.clone(),
        tick: req.tick.to_string(),
        host: req.identity.host.clone(),
        pid: req.identity.pid,
        token: Some(token),
        started_at: req.started_at,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        outcome,
        error: error.clone(),
    };
    // A release that fails (the master died under it) is tried again until the lease would have
    // expired anyway: a lease left behind would make every tick skip as an overlap until then.
    let mut finished = shared.backend.finish(&lease, &record).await;
    while finished.is_err() && Instant::now() + FINISH_RETRY < deadline {
        tokio::time::sleep(FINISH_RETRY).await;
        finished = shared.backend.finish(&lease, &record).await;
    }
    match &finished {
        Ok(_) => shared.health.success(),
        Err(e) => shared.health.failure("recording a run", e, 0),
    }
    match finished {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            job = %req.job,
            token,
            "lease was no longer ours at release (left untouched)"
        ),
        Err(e) => {
            tracing::warn!(job = %req.job, token, error = %e, "recording the run / releasing the lease failed")
        }
    }
    match outcome {
        Outcome::Ok => inc(&shared.stats.runs_ok),
        Outcome::Failed => inc(&shared.stats.runs_failed),
        Outcome::LeaseLost => inc(&shared.stats.lease_lost),
        Outcome::Cancelled => inc(&shared.stats.cancelled),
        Outcome::SkippedOverlap | Outcome::Missed => {}
    }
    if outcome == Outcome::Ok {
        tracing::info!(job = %req.job, tick = %req.tick, token, %outcome, duration_ms = record.duration_ms, "cron run finished");
    } else {
        tracing::warn!(job = %req.job, tick = %req.tick, token, %outcome, duration_ms = record.duration_ms, error = error.as_deref().unwrap_or(""), "cron run finished");
    }
}
