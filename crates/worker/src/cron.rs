//! Cluster-once cron jobs next to the HTTP app: the scheduler from `cronlock`, its backend taken
//! from `SUPERVISOR_CRON_URL` (set by the supervisor), and stopped with the same shutdown token
//! as the server, so a drain lets running jobs finish within the drain deadline (then cancels
//! them, recorded as `cancelled`).

use std::time::Duration;

use cronlock::{Backend, Identity, Job, Scheduler, StatsSnapshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The backend URL: `SUPERVISOR_CRON_URL`, else `CRONLOCK_URL`, else a local directory in the
/// temp dir (a standalone run on one host).
pub fn backend_url() -> String {
    std::env::var("SUPERVISOR_CRON_URL")
        .or_else(|_| std::env::var("CRONLOCK_URL"))
        .unwrap_or_else(|_| {
            format!(
                "file://{}",
                std::env::temp_dir().join("cronlock-standalone").display()
            )
        })
}

/// Whether this process was handed a backend: `SUPERVISOR_CRON_URL` or `CRONLOCK_URL` is set, or
/// it runs outside a supervisor (where the local directory of [`backend_url`] is meant). A
/// supervisor hands `SUPERVISOR_CRON_URL` only to the apps with `cron_backend = true`: the URL
/// carries the backend's password.
pub fn backend_available() -> bool {
    std::env::var_os("SUPERVISOR_CRON_URL").is_some()
        || std::env::var_os("CRONLOCK_URL").is_some()
        || std::env::var_os("SUPERVISOR_APP").is_none()
}

/// Validates `jobs` and starts their scheduler; it runs until `shutdown`, then gives running jobs
/// `drain` to finish. No jobs: nothing is started. Jobs under a supervisor that handed over no
/// backend (see [`backend_available`]) are an error. Redis being down does not fail this: ticks
/// are skipped and counted until it is back, and the HTTP side is unaffected.
pub fn spawn(
    jobs: Vec<Job>,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<Option<JoinHandle<StatsSnapshot>>, cronlock::Error> {
    if jobs.is_empty() {
        return Ok(None);
    }
    if !backend_available() {
        // Under a supervisor, the local fallback would run each tick once per host, not once
        // across the cluster: refuse before READY (a reload into this is aborted, saying why).
        let app = std::env::var("SUPERVISOR_APP").unwrap_or_default();
        return Err(cronlock::Error::InvalidUrl {
            url: "(SUPERVISOR_CRON_URL is not set)".into(),
            reason: format!(
                "this worker runs cron jobs, but the supervisor hands its cron backend only to \
                 the apps that ask for it: add `cron_backend = true` to the [[app]] named {app:?}"
            ),
        });
    }
    let backend = Backend::from_url(&backend_url())?;
    let mut scheduler = Scheduler::new(backend, Identity::current());
    for job in jobs {
        scheduler.add(job)?;
    }
    Ok(Some(tokio::spawn(scheduler.run(shutdown, drain))))
}
