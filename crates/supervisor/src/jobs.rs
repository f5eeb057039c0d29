//! Cluster-once cron jobs on cronlock: the parent of the `[[job]]` scheduler
//! ([`config_jobs`]: the config's `[[job]]` tables, scheduled by the supervisor itself), its
//! runners (a [`command`] or an [`http`] request per tick) and the [`registry`] reader (what the
//! cron backend knows of every job, for `supervisor jobs`, `status` and the metrics endpoint).
//! Worker-library jobs run inside the workers and register in the same backend, so the registry
//! shows them side by side with the `[[job]]` tables.

pub mod command;
pub mod config_jobs;
pub mod http;
pub mod registry;

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
