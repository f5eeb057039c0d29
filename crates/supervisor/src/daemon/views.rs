//! What `status` and a metrics scrape show, as pure functions of the core's state, the running
//! config and the shell's record: the measurements (`/proc`) are taken by the caller and passed
//! in, so these are unit-tested with a core driven by hand and made-up figures.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::time::Instant;

use super::shell::Shell;
use super::sockets::Sockets;
use crate::config::{Balance, Config};
use crate::control::protocol::{
    AppStatus, ListenerInfo, MemoryLimit, ProcessInfo, SingletonStatus, SlotInfo, StatusReport,
    UpgradeInfo, WorkerInfo,
};
use crate::core::{AppId, Core, Phase, SingletonRole, WaitState, Worker, WorkerState};
use crate::jobs::scheduler::ConfigJobs;
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
    pub(super) sockets: &'a Sockets,
    pub(super) record: &'a Record,
    pub(super) now: Instant,
}

/// The TCP addresses of an app's listeners (what its workers' connections are counted on).
pub(super) fn tcp_addresses(listeners: &[BoundListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter(|l| l.port.is_some())
        .filter_map(|l| l.local.parse().ok())
        .collect()
}

/// How an app's connections are spread: what its TCP sockets were bound for, else what its
/// config says (an app without a TCP listener), else the default.
fn balance(seen: &Seen<'_>, app: &crate::core::app::App) -> Balance {
    let bound = seen
        .sockets
        .specs(app.settings().sockets)
        .and_then(|specs| {
            specs
                .iter()
                .find(|s| matches!(s.addr, crate::config::ListenAddr::Tcp(_)))
                .map(|s| s.balance)
        });
    bound
        .or_else(|| {
            let config = seen.config.apps.iter().find(|a| a.name == app.name());
            config.map(|a| a.balance)
        })
        .unwrap_or_default()
}

/// `status`, of every app or of app `only`; `connections` counts a worker's established
/// connections on its app's TCP addresses (asked only for an app that has one).
pub(super) fn status(
    seen: &Seen<'_>,
    only: Option<AppId>,
    supervisor: ProcessInfo,
    mut process: impl FnMut(&Worker) -> ProcessInfo,
    mut connections: impl FnMut(&Worker, &[SocketAddr]) -> Option<u64>,
) -> StatusReport {
    let now = seen.now;
    let apps = seen
        .core
        .apps()
        .filter(|view| only.is_none_or(|o| o == view.app.id()))
        .map(|view| {
            let snapshot = view.app.snapshot(now);
            // A stopping or stopped app has closed its sockets.
            let sockets = match snapshot.phase {
                Phase::Stopping | Phase::Stopped => &[],
                _ => seen.sockets.get(view.app.settings().sockets),
            };
            let tcp = tcp_addresses(sockets);
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
                    hung: w.hung,
                    event_loop_lag_ms: w.event_loop_lag.map(|l| l.as_secs_f64() * 1000.0),
                    connections: if tcp.is_empty() {
                        None
                    } else {
                        connections(w, &tcp)
                    },
                })
                .collect();
            AppStatus {
                name: view.app.name().to_string(),
                phase: snapshot.phase,
                removed: view.removing,
                waiting_for: view.waiting_for,
                generation: snapshot.generation,
                instances: snapshot.instances,
                listeners: sockets
                    .iter()
                    .enumerate()
                    .map(|(fd, l)| ListenerInfo {
                        name: l.name.clone(),
                        address: l.local.clone(),
                        fd: 3 + fd as i32,
                    })
                    .collect(),
                balance: balance(seen, view.app),
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
                watchdog_replacements: snapshot.watchdog_recycles,
                watchdog_timeouts: snapshot.watchdog_timeouts,
                age_replacements: snapshot.age_recycles,
                singleton: snapshot.singleton.map(|s| SingletonStatus {
                    role: s.role,
                    holder: s.holder,
                    token: s.token,
                    lease_ttl_secs: view
                        .app
                        .settings()
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
        name: seen.config.name.clone(),
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
                watchdog_replacements: s.watchdog_recycles,
                watchdog_timeouts: s.watchdog_timeouts,
                age_replacements: s.age_recycles,
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
        fds: None,
        logs: Vec::new(),
    }
}

// ---- measured now, for the loop ----

impl Shell {
    /// `status`, now.
    pub(super) fn status(&mut self, only: Option<AppId>) -> crate::control::protocol::StatusReport {
        let me = std::process::id() as i32;
        let supervisor = self.cpu.sample(me, self.record.started).into();
        // One pass over /proc for every worker's process group, one read of the TCP tables for
        // the connections of the listeners of every app shown.
        let procs = crate::sys::procstat::GroupScan::scan();
        let listening: Vec<SocketAddr> = self
            .core
            .apps()
            .filter(|v| only.is_none_or(|o| o == v.app.id()))
            .flat_map(|v| tcp_addresses(self.sockets.get(v.app.settings().sockets)))
            .collect();
        let established = crate::sys::connections::Established::read(&listening);
        let seen = Seen {
            core: &self.core,
            config: &self.config,
            sockets: &self.sockets,
            record: &self.record,
            now: Instant::now(),
        };
        let (processes, cpu) = (&self.processes, &mut self.cpu);
        status(
            &seen,
            only,
            supervisor,
            |w| match processes.get(&w.id) {
                Some(p) => cpu
                    .sample_group(&procs, p.pid, w.started_at.into_std())
                    .into(),
                None => Default::default(),
            },
            |w, tcp| {
                let pid = processes.get(&w.id)?.pid;
                Some(established.count(&procs.socket_inodes(pid), tcp))
            },
        )
    }

    /// What a metrics scrape shows of the apps and processes (one pass over `/proc`).
    pub(super) fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        use crate::sys::procstat;
        let hz = procstat::ticks_per_second() as f64;
        let usage = |u: procstat::Usage| crate::metrics::Usage {
            cpu_seconds: u.ticks as f64 / hz,
            rss_bytes: u.rss_bytes,
        };
        let me = std::process::id() as i32;
        let supervisor = usage(procstat::Usage {
            ticks: procstat::cpu_ticks(me).unwrap_or(0),
            rss_bytes: procstat::rss_bytes(me).unwrap_or(0),
        });
        let procs = procstat::GroupScan::scan();
        let seen = Seen {
            core: &self.core,
            config: &self.config,
            sockets: &self.sockets,
            record: &self.record,
            now: Instant::now(),
        };
        let ticks = self
            .jobs
            .as_ref()
            .map(ConfigJobs::ticks)
            .unwrap_or_default();
        let mut snapshot = metrics(
            &seen,
            supervisor,
            |w| usage(w.pid.and_then(|p| procs.group(p)).unwrap_or_default()),
            ticks,
        );
        snapshot.fds = procstat::open_fds(me).zip(procstat::max_fds());
        snapshot.logs = self.logs.counts();
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Action, Event, Phase};
    use crate::sys::listeners;

    /// `web` (2 workers on a real loopback listener, `balance = "spread"`) and `cron` (a
    /// cluster singleton that stands by), with both of web's workers started and ready.
    fn running() -> (tempfile::TempDir, Config, Sockets, Vec<String>, Core) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[supervisor]\ncontrol_socket = \"c.sock\"\n\
             [[app]]\nname = \"web\"\ncommand = \"/bin/sh\"\ninstances = 2\nbalance = \"spread\"\n\
             [[app.listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [[app]]\nname = \"cron\"\ncommand = \"/bin/sh\"\ninstances = 1\nscope = \"cluster\"\nlease_ttl = \"6s\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let mut sockets = Sockets::default();
        let sets: Vec<crate::core::SocketSet> = config
            .apps
            .iter()
            .map(|a| {
                sockets.insert(
                    a.listeners.clone(),
                    listeners::bind_all(&a.listeners).unwrap(),
                )
            })
            .collect();
        let bound: Vec<_> = sets.iter().map(|s| (*s, sockets.get(*s))).collect();
        let addresses = bound
            .iter()
            .flat_map(|(_, l)| l.iter().map(|l| l.local.clone()))
            .collect();
        let mut core = Core::new(super::super::reread::core_apps(&config, &bound));
        let now = Instant::now();
        let spawns: Vec<_> = core
            .handle(Event::Start, now)
            .into_iter()
            .filter_map(|a| match a {
                Action::Spawn { worker, .. } => Some(worker),
                _ => None,
            })
            .collect();
        assert_eq!(spawns.len(), 2, "web's two slots; the singleton stands by");
        for (i, worker) in spawns.into_iter().enumerate() {
            core.handle(
                Event::Spawned {
                    worker,
                    pid: 1000 + i as i32,
                },
                now,
            );
            core.handle(Event::Ready(worker), now);
        }
        (dir, config, sockets, addresses, core)
    }

    fn seen<'a>(
        core: &'a Core,
        config: &'a Config,
        sockets: &'a Sockets,
        record: &'a Record,
    ) -> Seen<'a> {
        Seen {
            core,
            config,
            sockets,
            record,
            now: Instant::now(),
        }
    }

    fn record() -> Record {
        let mut r = Record::starting(PathBuf::from("/usr/bin/supervisor"));
        r.upgrades.count = 2;
        r
    }

    #[test]
    fn status_shows_every_app_its_workers_listeners_and_lease() {
        let (_dir, config, sockets, addresses, core) = running();
        let record = record();
        let seen = seen(&core, &config, &sockets, &record);
        let me = ProcessInfo {
            pid: 7,
            ..ProcessInfo::default()
        };
        let mut asked = Vec::new();
        let report = status(
            &seen,
            None,
            me,
            |w| ProcessInfo {
                pid: w.pid.unwrap_or(0),
                rss_bytes: 4096,
                ..ProcessInfo::default()
            },
            |w, tcp| {
                asked.push(tcp.to_vec());
                w.pid.map(|p| p as u64 - 990)
            },
        );
        assert_eq!(report.supervisor.pid, 7);
        assert_eq!(report.binary, "/usr/bin/supervisor");
        assert_eq!(report.upgrades.count, 2);
        assert_eq!(report.config, config.path.display().to_string());
        let names: Vec<&str> = report.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web", "cron"]);
        let web = &report.apps[0];
        assert_eq!(web.phase, Phase::Running);
        let pids: Vec<i32> = web.workers.iter().map(|w| w.process.pid).collect();
        assert_eq!(pids, [1000, 1001]);
        assert!(web.workers.iter().all(|w| w.state == WorkerState::Ready));
        assert!(web.workers.iter().all(|w| w.process.rss_bytes == 4096));
        let conns: Vec<Option<u64>> = web.workers.iter().map(|w| w.connections).collect();
        assert_eq!(conns, [Some(10), Some(11)], "counted per worker");
        let web_tcp: Vec<SocketAddr> = vec![addresses[0].parse().unwrap()];
        assert_eq!(asked, [web_tcp.clone(), web_tcp], "on web's own address");
        assert_eq!(web.balance, Balance::Spread);
        assert_eq!(web.listeners.len(), 1);
        assert_eq!(web.listeners[0].fd, 3, "the first inherited fd");
        assert_eq!(web.listeners[0].address, addresses[0]);
        let cron = &report.apps[1];
        assert_eq!(cron.phase, Phase::Standby);
        assert_eq!(cron.balance, Balance::Shared, "the default");
        assert!(cron.workers.is_empty());
        let lease = cron.singleton.as_ref().unwrap();
        assert_eq!(
            (lease.role, lease.lease_ttl_secs),
            (SingletonRole::Standby, 6.0)
        );

        let only = status(
            &seen,
            Some(1),
            ProcessInfo::default(),
            |_| ProcessInfo::default(),
            |_, _| Some(1),
        );
        let names: Vec<&str> = only.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["cron"]);
    }

    #[test]
    fn metrics_count_workers_by_state_and_measure_each_group() {
        let (_dir, config, sockets, _addresses, core) = running();
        let record = record();
        let seen = seen(&core, &config, &sockets, &record);
        let snap = metrics(
            &seen,
            metrics::Usage {
                cpu_seconds: 1.5,
                rss_bytes: 8_000_000,
            },
            |w| metrics::Usage {
                cpu_seconds: 0.25,
                rss_bytes: w.pid.unwrap_or(0) as u64,
            },
            Default::default(),
        );
        assert_eq!(snap.supervisor.rss_bytes, 8_000_000);
        assert_eq!(snap.start_time, record.started_unix);
        let web = &snap.apps[0];
        assert_eq!((web.ready, web.starting, web.draining), (2, 0, 0));
        assert_eq!(web.singleton_holder, None);
        let usage: Vec<(i32, u64)> = web
            .processes
            .iter()
            .map(|p| (p.pid, p.usage.rss_bytes))
            .collect();
        assert_eq!(usage, [(1000, 1000), (1001, 1001)]);
        let cron = &snap.apps[1];
        assert_eq!((cron.ready, cron.singleton_holder), (0, Some(false)));
    }
}
