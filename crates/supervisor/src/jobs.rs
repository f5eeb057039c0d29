//! Cluster-once cron jobs on cronlock. The `[[job]]` tables of the config are scheduled by the
//! supervisor itself ([`scheduler`], running a [`command`] or an [`http`] request per tick);
//! worker-library jobs run inside the workers. Both register in the same backend, so
//! `supervisor jobs` (this file) shows them side by side: it reads the cron backend (Redis, or
//! the local state dir), not the daemon, since jobs run on every host and their registry,
//! history and leases live in the backend they share.

pub mod command;
pub mod http;
pub mod scheduler;

// The contract every `[[job]]` runner shares with the scheduler (paths spelt out: the rest of
// this file is the `supervisor jobs` client).

/// After the supervisor's stop deadline: SIGTERM, then SIGKILL this much later.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How a supervisor stop reaches running job commands and requests.
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// Stop now: SIGTERM (SIGKILL after [`STOP_GRACE`]); requests are cancelled.
    pub term: tokio_util::sync::CancellationToken,
    /// Kill now (fast stop).
    pub kill: tokio_util::sync::CancellationToken,
}

/// One kind of `[[job]]` (a [`command`], an [`http`] request): what the [`scheduler`] runs at
/// each tick it claims.
pub trait Runner: Send + Sync + 'static {
    /// Runs the job once; `Ok` when the run succeeded, else why not (the history's reason).
    fn run(
        self: std::sync::Arc<Self>,
        ctx: cronlock::JobContext,
        stops: Stops,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The values a run hands its command (`SUPERVISOR_JOB_<KEY>`) or request
/// (`Supervisor-Job-<Key>`): `NAME`, `TICK` (the scheduled instant, RFC 3339 UTC; for a manual
/// run the time it was requested), `TOKEN` (the fencing token) and `RUN` (the history's tick:
/// the same instant, or `manual:<id>`).
pub fn run_vars(ctx: &cronlock::JobContext) -> [(&'static str, String); 4] {
    [
        ("NAME", ctx.job.clone()),
        (
            "TICK",
            ctx.tick
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        ("TOKEN", ctx.token.to_string()),
        ("RUN", ctx.tick_id.to_string()),
    ]
}

/// The context of a run at tick 2026-11-30T02:30:00Z of job `report`, for the runners' tests.
#[cfg(test)]
pub(crate) fn test_context(
    token: u64,
    cancel: tokio_util::sync::CancellationToken,
) -> cronlock::JobContext {
    let tick = chrono::DateTime::parse_from_rfc3339("2026-11-30T02:30:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    cronlock::JobContext {
        job: "report".into(),
        tick,
        tick_id: cronlock::TickId::Scheduled(tick),
        token,
        cancel,
    }
}

use std::time::Duration;

use chrono::{DateTime, Utc};
use cronlock::{Backend, Holder, JobMeta, RunRecord};
use serde::Serialize;

use crate::table::Table;
use crate::units;

/// One job as `supervisor jobs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Registration (name, schedule, timezone, lease, policies).
    pub meta: JobMeta,
    /// The next scheduled tick.
    pub next_tick: Option<DateTime<Utc>>,
    /// The most recent run record.
    pub last_run: Option<RunRecord>,
    /// Who runs it right now.
    pub holder: Option<Holder>,
}

/// Reading the backend failed or the job is unknown.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The backend answered with an error (or not at all).
    #[error("cron backend {backend}: {cause}")]
    Backend {
        /// Redacted backend URL.
        backend: String,
        /// What went wrong.
        cause: cronlock::Error,
    },
    /// The backend did not answer in time.
    #[error("cron backend {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// No worker or supervisor registered a job of that name.
    #[error("unknown job {name:?} (registered: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: String,
    },
    /// Nobody ran a manual request in time.
    #[error(
        "nobody ran {name} within {timeout:?} (request {id}); manual requests reach running workers and supervisors only"
    )]
    NotRun {
        /// Job.
        name: String,
        /// Request id.
        id: String,
        /// How long we waited.
        timeout: Duration,
    },
}

async fn within<T>(
    backend: &Backend,
    timeout: Duration,
    f: impl std::future::Future<Output = cronlock::Result<T>>,
) -> Result<T, JobsError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(cause)) => Err(JobsError::Backend {
            backend: backend.describe(),
            cause,
        }),
        Err(_) => Err(JobsError::Timeout(backend.describe(), timeout)),
    }
}

/// Every registered job with its next tick, last run and current holder.
pub async fn collect(backend: &Backend, timeout: Duration) -> Result<Vec<JobView>, JobsError> {
    let mut metas = within(backend, timeout, backend.list_jobs()).await?;
    metas.sort_by(|a, b| a.name.cmp(&b.name));
    let now = Utc::now();
    let mut out = Vec::with_capacity(metas.len());
    for meta in metas {
        let last_run = within(backend, timeout, backend.history(&meta.name, 1))
            .await?
            .into_iter()
            .next();
        let holder = within(backend, timeout, backend.current_holder(&meta.name)).await?;
        let next_tick = cronlock::next_tick(&meta, now).ok().flatten();
        out.push(JobView {
            meta,
            next_tick,
            last_run,
            holder,
        });
    }
    Ok(out)
}

fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_milliseconds() as f64 / 1000.0;
    format!("{} ago", units::duration(secs))
}

/// Every registered job's name with its last `n` history records (newest first), for the
/// metrics endpoint.
pub async fn histories(
    backend: &Backend,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(String, Vec<RunRecord>)>, JobsError> {
    let mut metas = within(backend, timeout, backend.list_jobs()).await?;
    metas.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(metas.len());
    for meta in metas {
        let runs = within(backend, timeout, backend.history(&meta.name, n)).await?;
        out.push((meta.name, runs));
    }
    Ok(out)
}

/// The jobs table.
pub fn render(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no cron jobs registered (workers, and supervisors with [[job]] tables, register theirs when they start)\n".into();
    }
    let mut t = Table::new(&["job", "schedule", "next tick", "last run", "running"]);
    for j in jobs {
        let schedule = format!("{} {}", j.meta.schedule, j.meta.timezone);
        let next = j
            .next_tick
            .map(|n| {
                let secs = (n - Utc::now()).num_milliseconds() as f64 / 1000.0;
                // The time alone within a day; the date too beyond it.
                let at = if secs < 86_400.0 {
                    n.format("%H:%M:%S")
                } else {
                    n.format("%Y-%m-%d %H:%M:%S")
                };
                format!("{at} (in {})", units::duration(secs))
            })
            .unwrap_or_else(|| "-".into());
        let last = j
            .last_run
            .as_ref()
            .map(|r| {
                format!(
                    "{} {} on {}:{} token {} in {}, {}",
                    r.outcome,
                    r.tick,
                    r.host,
                    r.pid,
                    r.token.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    units::duration(r.duration_ms as f64 / 1000.0),
                    ago(r.started_at)
                )
            })
            .unwrap_or_else(|| "-".into());
        let running = j
            .holder
            .as_ref()
            .map(|h| {
                format!(
                    "{}:{} token {} since {}",
                    h.host,
                    h.pid,
                    h.token,
                    ago(h.started_at)
                )
            })
            .unwrap_or_else(|| "-".into());
        t.row(vec![j.meta.name.clone(), schedule, next, last, running]);
    }
    t.to_string()
}

/// The last `n` runs of one job.
pub fn render_history(runs: &[RunRecord]) -> String {
    let mut t = Table::new(&[
        "tick", "outcome", "host", "pid", "token", "started", "duration", "error",
    ]);
    for r in runs {
        t.row(vec![
            r.tick.clone(),
            r.outcome.to_string(),
            r.host.clone(),
            r.pid.to_string(),
            r.token.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            r.started_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            units::duration(r.duration_ms as f64 / 1000.0),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

/// History of one job (newest first), after checking that it exists.
pub async fn history(
    backend: &Backend,
    name: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<RunRecord>, JobsError> {
    ensure_known(backend, name, timeout).await?;
    within(backend, timeout, backend.history(name, n)).await
}

async fn ensure_known(backend: &Backend, name: &str, timeout: Duration) -> Result<(), JobsError> {
    let metas = within(backend, timeout, backend.list_jobs()).await?;
    if metas.iter().any(|m| m.name == name) {
        return Ok(());
    }
    let known: Vec<String> = metas.into_iter().map(|m| m.name).collect();
    Err(JobsError::Unknown {
        name: name.to_string(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

/// Triggers one run of `name` through the same claim/lease path as a scheduled tick and, unless
/// `wait` is zero, waits for its record.
pub async fn run_now(
    backend: &Backend,
    name: &str,
    wait: Duration,
) -> Result<(String, Option<RunRecord>), JobsError> {
    let rpc = Duration::from_secs(5);
    ensure_known(backend, name, rpc).await?;
    let id = within(backend, rpc, backend.request_run(name)).await?;
    if wait.is_zero() {
        return Ok((id, None));
    }
    let tick = format!("manual:{id}");
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        let runs = within(backend, rpc, backend.history(name, 50)).await?;
        if let Some(r) = runs.into_iter().find(|r| r.tick == tick) {
            return Ok((id, Some(r)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(JobsError::NotRun {
        name: name.to_string(),
        id,
        timeout: wait,
    })
}
