//! Cluster-once cron jobs on cronlock: the `[[job]]` tables of the config, scheduled by the
//! supervisor itself ([`scheduler`]), each run by one of its runners (a [`command`] or an [`http`]
//! request per tick) under the contract below ([`Runner`], [`Stops`], [`run_vars`]); and the
//! [`registry`] reader (what the cron backend knows of every job, for `supervisor jobs`,
//! `status` and the metrics endpoint). Worker-library jobs run inside the workers and register
//! in the same backend, so the registry shows them side by side with the `[[job]]` tables.
//! The scheduler imports the runners; the runners know only this contract.

pub mod command;
pub mod http;
pub mod registry;
pub mod scheduler;

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
