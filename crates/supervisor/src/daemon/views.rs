//! What `status` and a metrics scrape show, as pure functions of the core's state, the running
//! config and the shell's record: the measurements (`/proc`) are taken by the caller and passed
//! in, so these are unit-tested with a core driven by hand and made-up figures.

use std::path::PathBuf;

use tokio::time::Instant;

use crate::config::Config;
use crate::control::protocol::{
    AppStatus, ListenerInfo, MemoryLimit, ProcessInfo, SingletonStatus, SlotInfo, StatusReport,
    UpgradeInfo, WorkerInfo,
};
use crate::core::{Core, SingletonRole, WaitState, Worker, WorkerState};
use crate::metrics;
use crate::sys::listeners::BoundListener;

/// What the shell records about the supervisor itself, beyond the core: shown by `status` and the
/// metrics, and handed over by an upgrade.
#[derive(Debug)]
pub(super) struct Record {
    /// When it started (for uptimes), on this process's clock.
    pub(super) started: std::time::Instant,
    /// When it was first started, in Unix seconds (the metrics' start time; kept by upgrades).
    pub(super) started_unix: f64,
    /// What the metrics accumulate (reloads).
    pub(super) metrics: metrics::Registry,
    /// In-place upgrades so far.
    pub(super) upgrades: UpgradeInfo,
    /// The binary this process runs (what an upgrade runs by default).
    pub(super) binary: PathBuf,
}

impl Record {
    /// A supervisor starting now, from `binary`.
    pub(super) fn starting(binary: PathBuf) -> Record {
        Record {
            started: std::time::Instant::now(),
            started_unix: unix_now(),
            metrics: metrics::Registry::default(),
            upgrades: UpgradeInfo::default(),
            binary,
        }
    }
}

/// Seconds since the Unix epoch, now.
pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The running supervisor as `status` sees it; `process` measures one worker (its whole process
/// group), and `supervisor` is the supervisor's own measure.
pub(super) struct Seen<'a> {
    pub(super) core: &'a Core,
    pub(super) config: &'a Config,
    pub(super) listeners: &'a [Vec<BoundListener>],
    pub(super) record: &'a Record,
    pub(super) now: Instant,
}

/// `status`, of every app or of app `only`.
pub(super) fn status(
    seen: &Seen<'_>,
    only: Option<usize>,
    supervisor: ProcessInfo,
    mut process: impl FnMut(&Worker) -> ProcessInfo,
) -> StatusReport {
    let now = seen.now;
    let apps = seen
        .core
        .apps()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| o == *i))
        .map(|(i, view)| {
            let snapshot = view.app.snapshot(now);
            let workers = snapshot
                .workers
                .iter()
                .map(|(w, restarts)| WorkerInfo {
                    slot: w.slot,
                    name: w.name.clone(),
                    generation: w.generation,
                    state: w.state,
                    restarts: *restarts,
                    process: process(w),
                    status_text: w.status_text.clone(),
                    over_max_memory_secs: w
                        .over_memory
                        .map(|(since, _)| now.saturating_duration_since(since).as_secs_f64()),
                })
                .collect();
            AppStatus {
                name: view.app.name().to_string(),
                phase: snapshot.phase,
                waiting_for: view.waiting_for,
                generation: snapshot.generation,
                listeners: seen.listeners[i]
                    .iter()
                    .enumerate()
                    .map(|(fd, l)| ListenerInfo {
                        name: l.name.clone(),
                        address: l.local.clone(),
                        fd: 3 + fd as i32,
                    })
                    .collect(),
                workers,
                waiting: snapshot
                    .waiting
                    .into_iter()
                    .map(|s| SlotInfo {
                        slot: s.slot,
                        state: s.state,
                        restarts: s.restarts,
                        restart_in_secs: s.restart_in.as_secs_f64(),
                        last_exit: s.last_exit,
                    })
                    .collect(),
                reload_in_progress: snapshot.reload_in_progress,
                last_reload: snapshot.last_reload,
                max_memory: snapshot.memory.max_bytes.map(|bytes| MemoryLimit {
                    bytes,
                    grace_secs: snapshot.memory.grace.as_secs_f64(),
                }),
                memory_recycles: snapshot.memory_recycles,
                memory_recycle_failures: snapshot.memory_recycle_failures,
                memory_recycling: snapshot.memory_recycling,
                singleton: snapshot.singleton.map(|s| SingletonStatus {
                    role: s.role,
                    holder: s.holder,
                    token: s.token,
                    lease_ttl_secs: seen.config.apps[i]
                        .singleton
                        .map_or(0.0, |p| p.lease_ttl.as_secs_f64()),
                }),
            }
        })
        .collect();
    StatusReport {
        supervisor,
        version: env!("CARGO_PKG_VERSION").to_string(),
        build: crate::upgrade::build_id(),
        binary: seen.record.binary.display().to_string(),
        upgrades: seen.record.upgrades.clone(),
        config: seen.config.path.display().to_string(),
        phase: seen.core.phase(),
        apps,
    }
}

/// What a metrics scrape shows of the apps and processes (the jobs are read by the endpoint);
/// `group` measures a worker's whole process group.
pub(super) fn metrics(
    seen: &Seen<'_>,
    supervisor: metrics::Usage,
    mut group: impl FnMut(&Worker) -> metrics::Usage,
    config_job_ticks: cronlock::StatsSnapshot,
) -> metrics::Snapshot {
    let apps = seen
        .core
        .apps()
        .map(|view| {
            let name = view.app.name().to_string();
            let s = view.app.snapshot(seen.now);
            let workers = |state| s.workers.iter().filter(|(w, _)| w.state == state).count();
            let waiting = |state| s.waiting.iter().filter(|w| w.state == state).count();
            let processes = s
                .workers
                .iter()
                .filter_map(|(w, _)| {
                    Some(metrics::WorkerProcess {
                        name: w.name.clone(),
                        pid: w.pid?,
                        usage: group(w),
                    })
                })
                .collect();
            metrics::AppMetrics {
                generation: s.generation,
                starting: workers(WorkerState::Starting) as u64,
                ready: workers(WorkerState::Ready) as u64,
                draining: workers(WorkerState::Draining) as u64,
                backoff: waiting(WaitState::Backoff) as u64,
                crash_loop: waiting(WaitState::CrashLoop) as u64,
                restarts: s.restarts_total,
                memory_recycles: s.memory_recycles,
                memory_recycle_failures: s.memory_recycle_failures,
                singleton_holder: s
                    .singleton
                    .as_ref()
                    .map(|v| v.role == SingletonRole::Holder),
                reloads: seen.record.metrics.reloads(&name),
                processes,
                name,
            }
        })
        .collect();
    metrics::Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        start_time: seen.record.started_unix,
        supervisor,
        apps,
        jobs: None,
        config_job_ticks,
    }
}
