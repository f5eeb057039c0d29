//! A fixed status for the tests of the keys and the view: two apps, `web` in the middle of a
//! reload to generation 4 (web.0 replaced, old web.1 still serving beside its starting
//! replacement) and `api` (a hung worker, a slot in a crash loop), and a few log lines.

#![allow(clippy::unwrap_used)] // test data

use crate::control::protocol::{
    AppStatus, LogLine, ProcessInfo, SlotInfo, StatusReport, UpgradeInfo, WorkerInfo,
};
use crate::core::report::ReloadProgress;
use crate::core::{Phase, WaitState, WorkerState};
use crate::logs::record::{Level, Stream};

use super::model::Model;

fn worker(name: &str, generation: u64, state: WorkerState, pid: i32, up: f64) -> WorkerInfo {
    let slot = name.rsplit_once('.').unwrap().1.parse().unwrap();
    WorkerInfo {
        slot,
        name: name.into(),
        generation,
        state,
        restarts: u32::from(slot == 1),
        process: ProcessInfo {
            pid,
            uptime_secs: up,
            cpu_percent: 1.5 + f64::from(pid % 10),
            rss_bytes: 40_000_000 + u64::from(pid.unsigned_abs()) * 1000,
        },
        status_text: None,
        over_max_memory_secs: None,
        hung: false,
        event_loop_lag_ms: None,
        connections: None,
    }
}

fn app(name: &str, generation: u64, workers: Vec<WorkerInfo>) -> AppStatus {
    AppStatus {
        name: name.into(),
        phase: Phase::Running,
        removed: false,
        waiting_for: vec![],
        generation,
        instances: 2,
        listeners: vec![],
        balance: Default::default(),
        workers,
        waiting: vec![],
        reload_in_progress: None,
        last_reload: None,
        max_memory: None,
        memory_recycles: 0,
        memory_recycle_failures: 0,
        memory_recycling: None,
        watchdog_replacements: 0,
        watchdog_timeouts: 0,
        age_replacements: 0,
        singleton: None,
    }
}

/// The status.
pub(super) fn status() -> StatusReport {
    let mut web = app(
        "web",
        4,
        vec![
            worker("web.0", 4, WorkerState::Ready, 4244, 2.5),
            worker("web.1", 3, WorkerState::Ready, 4243, 3725.0),
            worker("web.1", 4, WorkerState::Starting, 4245, 0.4),
        ],
    );
    web.reload_in_progress = Some(ReloadProgress {
        generation: 4,
        done: 1,
        total: 2,
        elapsed_secs: 3.2,
        queued: false,
        canary: None,
        rolling_back: None,
    });
    let mut hung = worker("api.0", 1, WorkerState::Ready, 5001, 86_500.0);
    hung.hung = true;
    hung.event_loop_lag_ms = Some(2100.0);
    let mut api = app("api", 1, vec![hung]);
    api.waiting.push(SlotInfo {
        slot: 1,
        state: WaitState::CrashLoop,
        restarts: 5,
        restart_in_secs: 4.2,
        last_exit: "exited with status 1".into(),
    });
    StatusReport {
        supervisor: ProcessInfo {
            pid: 4200,
            uptime_secs: 3730.0,
            cpu_percent: 0.3,
            rss_bytes: 12_100_000,
        },
        version: "0.1.0".into(),
        build: String::new(),
        binary: String::new(),
        upgrades: UpgradeInfo::default(),
        name: "shop".into(),
        config: "/srv/shop/supervisor.toml".into(),
        phase: Phase::Running,
        apps: vec![web, api],
    }
}

/// A log line of `worker`, at 10:00:0S.
pub(super) fn line(worker: &str, s: u32, stream: Stream, level: Level, text: &str) -> LogLine {
    LogLine {
        app: worker.split('.').next().unwrap().into(),
        worker: worker.into(),
        pid: 4243,
        stream,
        level,
        // 2024-05-01T10:00:00Z
        time: 1_714_557_600.0 + f64::from(s) + 0.25,
        text: text.into(),
    }
}

/// The model: the status, nothing selected yet, no log line.
pub(super) fn model() -> Model {
    let mut m = Model::default();
    m.set_status(status());
    m
}
