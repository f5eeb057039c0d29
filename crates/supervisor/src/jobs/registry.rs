//! What the cron backend knows of the jobs: registry, next ticks, last runs, holders, manual
//! runs. Read by `supervisor jobs` and `status` (the CLI renders it) and by the metrics endpoint;
//! jobs run on every host, so their registry, history and leases live in the backend they share
//! (Redis, or the local state dir), not in any one daemon.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cronlock::{Backend, Holder, JobMeta, RunRecord};
use serde::Serialize;

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
