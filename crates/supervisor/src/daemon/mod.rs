//! The shell around the core: the one event loop that owns all state. It turns signals, control
//! requests, worker events (readiness, exit) and deadlines into [`core::Event`]s and carries out
//! the [`core::Action`]s the core returns (fork/exec, signals, timers, config reads, replies).
//! Timers are one deadline queue on `tokio::time::Instant`; the loop sleeps until the next one.
//! Worker memory for `max_memory` is measured on the core's request (a deadline it arms once a
//! second while some app has a limit), with one `/proc` scan for every worker.
//! Cluster singletons (`scope = "cluster"`) each get a lease task ([`crate::singleton`]) that
//! reports [`core::LeaseEvent`]s into the same loop; the loop itself never talks to the backend.
//! The `[[job]]` scheduler runs in tasks of its own ([`crate::jobs::scheduler`]); `SIGCHLD`
//! sweeps adopted orphans ([`crate::orphans`]); an in-place upgrade is sequenced here (wait for a
//! quiet moment, preflight the new binary, then exec) with its OS side in [`crate::upgrade`].
//! Startup binds everything before any worker starts, so a bad port or a live control socket
//! fails with nothing started.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{AppConfig, Config, ConfigError};
use crate::control::protocol::{
    AppStatus, ListenerInfo, MemoryLimit, Request, Response, SingletonStatus, SlotInfo,
    StatusReport, UpgradeInfo, WorkerInfo,
};
use crate::control::server::{self, ControlError, ControlRequest, ControlSocket};
use crate::core::{
    self, Action, Answer, AppIndex, AppSettings, Core, Event, LeaseEvent, ReplyTo, ServiceState,
    Signal, TimerKey, WaitState, WorkerState,
};
use crate::jobs::scheduler::{self, ConfigJobs};
use crate::metrics::{self, server::SnapshotRequest};
use crate::notify::{self, Notification};
use crate::orphans;
use crate::runtimes::{self, RuntimeFiles};
use crate::singleton::LeaseTasks;
use crate::sys::listeners::{self, BoundListener, ListenError};
use crate::sys::procstat::{self, CpuMeter, GroupScan};
use crate::sys::{reaper, sdnotify};
use crate::upgrade;
use crate::worker::{Process, StartArgs, WorkerEvent, WorkerId};

/// What the outside world (signal handlers in `main`) asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Rolling reload (`SIGHUP`).
    Reload,
    /// Graceful stop (`SIGTERM`, first `SIGINT`).
    Stop,
    /// Kill everything now (second `SIGINT`).
    FastStop,
    /// A child exited (`SIGCHLD`): reap the adopted orphans among them.
    ChildExited,
    /// Upgrade in place to the binary the supervisor was started from (`SIGUSR2`).
    Upgrade,
}

/// How `start` runs beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take over from the previous binary: the memfd holding its [`upgrade::HandoverState`].
    pub resume_fd: Option<i32>,
    /// The `--log-format` to pass on to the next binary of an upgrade.
    pub log_format: String,
}

/// The supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Bad config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("{path}: {cause}")]
    Listen {
        /// Config file.
        path: PathBuf,
        /// The bind error (names the key).
        cause: ListenError,
    },
    /// The control socket is taken or cannot be created.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// No worker of the first start could be executed (nothing is left running).
    #[error("{0}")]
    NoWorker(String),
    /// The `[[job]]` scheduler could not be set up (its cron backend URL).
    #[error("{path}: [[job]]: {cause}")]
    Jobs {
        /// Config file.
        path: PathBuf,
        /// What cronlock said.
        cause: cronlock::Error,
    },
    /// The lease backend of the cluster singletons cannot be used.
    #[error("cluster singletons: lease backend {url}: {cause}")]
    Singleton {
        /// The backend URL (password redacted).
        url: String,
        /// Why.
        cause: cronlock::Error,
    },
    /// The state handed over by an upgrade cannot be used.
    #[error("cannot take over from the previous binary: {0}")]
    Resume(String),
    /// The runtime directory for notify sockets could not be created.
    #[error("cannot create runtime directory {path}: {cause}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// The config key of the metrics listener, named in its errors.
pub const METRICS_KEY: &str = "supervisor.metrics";

/// Private directory for the workers' notify sockets and the runtime files (the Node preload);
/// removed on drop.
#[derive(Debug)]
struct RuntimeDir {
    path: PathBuf,
    files: RuntimeFiles,
}

impl RuntimeDir {
    fn create() -> Result<RuntimeDir, StartupError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("supervisor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path); // left by a dead process that had our pid
        remove_stale_runtime_dirs();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .and_then(|()| RuntimeFiles::install(&path))
            .map(|files| RuntimeDir {
                path: path.clone(),
                files,
            })
            .map_err(|cause| StartupError::RuntimeDir { path, cause })
    }
}

/// Removes the runtime directories of supervisors that died without cleaning up (`SIGKILL`):
/// `supervisor-<pid>` in the temp dir, owned by this user, whose pid is not a live process.
fn remove_stale_runtime_dirs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("supervisor-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl RuntimeDir {
    /// The directory of the process that handed over (its notify sockets are in use): kept,
    /// with the runtime files written again by this binary.
    fn adopt(path: PathBuf) -> Result<RuntimeDir, StartupError> {
        RuntimeFiles::install(&path)
            .map(|files| RuntimeDir {
                path: path.clone(),
                files,
            })
            .map_err(|cause| StartupError::RuntimeDir { path, cause })
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs the supervisor until it is stopped: binds listeners and the control socket, starts the
/// workers, then serves events. `commands` carries the signals `main` translated.
pub async fn run(
    config: Config,
    mut commands: mpsc::Receiver<Command>,
    options: RunOptions,
) -> Result<(), StartupError> {
    let resume = options
        .resume_fd
        .map(upgrade::read_state_fd)
        .transpose()
        .map_err(|e| StartupError::Resume(e.to_string()))?;
    if resume.is_none() {
        server::check_free(&config.control_socket)?;
    }
    // Read once: the workers get their own NOTIFY_SOCKET, never this one.
    let service = match sdnotify::Notifier::from_env() {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            tracing::warn!(
                "NOTIFY_SOCKET is set but unusable ({e}): no notifications to the service manager"
            );
            None
        }
        None => None,
    };
    let bound = match &resume {
        Some(state) => inherited_listeners(&config, state)?,
        None => config
            .apps
            .iter()
            .map(|a| listeners::bind_all(&a.listeners))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|cause| StartupError::Listen {
                path: config.path.clone(),
                cause,
            })?,
    };
    let listen_err = |cause| StartupError::Listen {
        path: config.path.clone(),
        cause,
    };
    let metrics_listener = match resume.as_ref().map(|s| s.metrics_fd) {
        // SAFETY: the metrics listener the previous binary handed over; ours alone.
        Some(Some(fd)) => Some(std::net::TcpListener::from(unsafe {
            upgrade::inherited(fd)
        })),
        _ => config
            .metrics
            .map(|addr| listeners::bind_own(METRICS_KEY, addr))
            .transpose()
            .map_err(listen_err)?,
    };
    let metrics_fd = metrics_listener
        .as_ref()
        .map(std::os::fd::AsRawFd::as_raw_fd);
    let (lease_tx, lease_rx) = mpsc::unbounded_channel();
    let leases = start_lease_tasks(&config, lease_tx)?;
    let runtime_dir = match &resume {
        Some(state) => RuntimeDir::adopt(state.runtime_dir.clone())?,
        None => RuntimeDir::create()?,
    };
    // The shell's own children that are not workers: the orphan sweep leaves them alone.
    let own_children = orphans::OwnChildren::default();
    // Its own tasks: the event loop never waits on the cron backend.
    let jobs = ConfigJobs::start(
        &config.cron_url,
        scheduler::prepare(&config, &config.apps, &bound),
        own_children.clone(),
    )
    .map_err(|cause| StartupError::Jobs {
        path: config.path.clone(),
        cause,
    })?;
    let mut control = match &resume {
        // SAFETY: the control socket the previous binary handed over; ours alone.
        Some(state) => ControlSocket::inherited(&config.control_socket, unsafe {
            upgrade::inherited(state.control_fd)
        })?,
        None => ControlSocket::bind(&config.control_socket)?,
    };
    let control_fd = control.raw_fd().unwrap_or(-1);
    let (control_tx, control_rx) = mpsc::channel(64);
    control.serve(control_tx);
    let (snapshots_tx, snapshots_rx) = mpsc::channel(16);
    let metrics_server = match metrics_listener {
        Some(l) => {
            let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let task = metrics::server::spawn(l, snapshots_tx, config.cron_url.clone()).map_err(
                |cause| {
                    listen_err(ListenError::Bind {
                        key: METRICS_KEY.into(),
                        addr: local.clone(),
                        cause,
                    })
                },
            )?;
            tracing::info!("metrics on http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    for (app, listeners) in config.apps.iter().zip(&bound) {
        for l in listeners {
            tracing::info!(app = %app.name, name = %l.name, address = %l.local, "listening");
        }
    }
    let subreaper = match reaper::become_subreaper() {
        Ok(true) => "subreaper",
        Ok(false) => "pid 1",
        Err(e) => {
            tracing::warn!("cannot become child subreaper ({e}): orphans of workers go to init");
            "no"
        }
    };
    tracing::info!(
        pid = std::process::id(),
        version = %upgrade::version_line(),
        control_socket = %config.control_socket.display(),
        apps = config.apps.len(),
        adopts_orphans = subreaper,
        notify_socket = service.as_ref().map(|n| n.target.as_str()),
        "{}",
        if resume.is_some() {
            "supervisor upgraded in place"
        } else {
            "supervisor started"
        }
    );
    let mut shell = Shell::new(
        config,
        bound,
        runtime_dir,
        jobs,
        own_children,
        leases,
        lease_rx,
    );
    shell.service = service;
    shell.handover = HandoverFds {
        control: control_fd,
        metrics: metrics_fd,
        log_format: options.log_format,
    };
    let resumed = resume.is_some();
    if let Some(state) = resume {
        shell.adopt(state);
    }
    let outcome = shell
        .event_loop(&mut commands, control_rx, snapshots_rx, !resumed)
        .await;
    if let Some(task) = metrics_server {
        task.abort();
    }
    if let Some(jobs) = shell.jobs.take() {
        // Running job commands may still be finishing; a fast stop (second SIGINT) kills them.
        let stops = jobs.stops();
        let finish = jobs.finish();
        tokio::pin!(finish);
        loop {
            tokio::select! {
                () = &mut finish => break,
                Some(cmd) = commands.recv() => if cmd == Command::FastStop {
                    stops.term.cancel();
                    stops.kill.cancel();
                },
            }
        }
    }
    // The stopped singletons' releases, so that other hosts take over at once.
    std::mem::take(&mut shell.leases)
        .finish(Duration::from_secs(3))
        .await;
    // Whatever a worker left behind outside its process group (setsid) and that this process
    // adopted would outlive it: killed and reaped now, once every worker and job is gone.
    let workers: Vec<i32> = shell.processes.values().map(|p| p.pid).collect();
    orphans::kill_all(
        |pid| {
            workers.contains(&pid)
                || shell.own_children.contains(pid)
                || upgrade::is_preflight_child(pid)
        },
        Duration::from_millis(2000),
    );
    control.flush(Duration::from_millis(500)).await;
    drop(control);
    match outcome {
        Ok(()) => {
            tracing::info!("supervisor stopped");
            Ok(())
        }
        Err(reason) => Err(StartupError::NoWorker(reason)),
    }
}

/// The listeners an upgrade handed over, for the apps of the config read again (by app name;
/// an app must have the same name and place as before: preflight checked it).
fn inherited_listeners(
    config: &Config,
    state: &upgrade::HandoverState,
) -> Result<Vec<Vec<BoundListener>>, StartupError> {
    config
        .apps
        .iter()
        .map(|app| {
            let fds = state
                .apps
                .iter()
                .find(|a| a.name == app.name)
                .ok_or_else(|| {
                    StartupError::Resume(format!(
                        "app {} was not handed over (adding apps needs a restart)",
                        app.name
                    ))
                })?;
            Ok(fds
                .listeners
                .iter()
                // SAFETY: a listener the previous binary handed over; ours alone.
                .map(|l| BoundListener::inherited(l, unsafe { upgrade::inherited(l.fd) }))
                .collect())
        })
        .collect()
}

/// One lease task per cluster singleton, on the cron backend (Redis, or the local directory).
fn start_lease_tasks(
    config: &Config,
    events: mpsc::UnboundedSender<(AppIndex, LeaseEvent)>,
) -> Result<LeaseTasks, StartupError> {
    let mut tasks = LeaseTasks::default();
    let singletons: Vec<(AppIndex, &AppConfig, crate::config::SingletonPolicy)> = config
        .apps
        .iter()
        .enumerate()
        .filter_map(|(i, a)| Some((i, a, a.singleton?)))
        .collect();
    let Some(shortest) = singletons.iter().map(|(_, _, p)| p.renew_every()).min() else {
        return Ok(tasks);
    };
    // Every call is bounded well inside a renewal period (the task also races each renewal
    // against its fencing deadline).
    let timeout = shortest.clamp(Duration::from_millis(100), Duration::from_secs(2));
    let leases =
        cronlock::SingletonLeases::from_url(&config.cron_url, timeout).map_err(|cause| {
            StartupError::Singleton {
                url: cronlock::redact_url(&config.cron_url),
                cause,
            }
        })?;
    let leases = std::sync::Arc::new(leases);
    let me = cronlock::Contender::current();
    for (i, app, policy) in singletons {
        tracing::info!(
            app = %app.name,
            backend = %leases.describe(),
            holder_id = %me.id,
            lease_ttl = %crate::units::span(policy.lease_ttl),
            "cluster singleton: runs on the one host that holds its lease"
        );
        tasks.spawn(
            i,
            app.name.clone(),
            policy,
            std::sync::Arc::clone(&leases),
            me.clone(),
            events.clone(),
        );
    }
    Ok(tasks)
}

/// The core's settings for an app: the worker spec and policies, and the hint for a worker that
/// is never ready (which sockets its runtime waits for).
fn app_settings(app: &AppConfig, listeners: &[BoundListener]) -> AppSettings {
    AppSettings {
        spec: std::sync::Arc::new(app.worker.clone()),
        restart: app.restart,
        reload: app.reload,
        memory: app.memory,
        not_ready_hint: runtimes::not_ready_hint(app.worker.runtime, listeners),
        singleton: app.singleton,
    }
}

/// The core for a config: every app with the indices of the apps it is `after`.
fn supervisor_core(config: &Config, listeners: &[Vec<BoundListener>]) -> Core {
    Core::new(core_apps(config, listeners))
}

/// Every app's settings with the indices of the apps it is `after`.
fn core_apps(
    config: &Config,
    listeners: &[Vec<BoundListener>],
) -> Vec<(AppSettings, Vec<AppIndex>)> {
    config
        .apps
        .iter()
        .zip(listeners)
        .map(|(a, l)| {
            let after = a
                .after
                .iter()
                .filter_map(|name| config.apps.iter().position(|o| &o.name == name))
                .collect();
            (app_settings(a, l), after)
        })
        .collect()
}

/// Pending deadlines: one per key, ordered by time.
#[derive(Debug, Default)]
struct Deadlines {
    by_time: BTreeSet<(Instant, TimerKey)>,
    by_key: HashMap<TimerKey, Instant>,
}

impl Deadlines {
    fn arm(&mut self, key: TimerKey, at: Instant) {
        self.cancel(key);
        self.by_time.insert((at, key));
        self.by_key.insert(key, at);
    }

    fn cancel(&mut self, key: TimerKey) {
        if let Some(at) = self.by_key.remove(&key) {
            self.by_time.remove(&(at, key));
        }
    }

    fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns the keys due at `now`, earliest first.
    fn due(&mut self, now: Instant) -> Vec<TimerKey> {
        let mut keys = Vec::new();
        while let Some(&(at, key)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&key);
            keys.push(key);
        }
        keys
    }
}

/// What the shell hands over in an upgrade besides its state.
#[derive(Debug, Default)]
struct HandoverFds {
    control: std::os::fd::RawFd,
    metrics: Option<std::os::fd::RawFd>,
    log_format: String,
}

/// An upgrade asked for and not yet done or refused.
#[derive(Debug)]
struct PendingUpgrade {
    binary: PathBuf,
    reply: Option<server::Reply>,
    /// Given up (refused) after this, unless the preflight runs.
    deadline: Instant,
    /// The preflight child runs.
    preflight_running: bool,
    /// What the preflight said, once it passed.
    preflight_ok: Option<String>,
    /// Why it waits, as last logged.
    waiting_for: Option<String>,
}

struct Shell {
    config: Config,
    /// Each app's listeners, in app order.
    listeners: Vec<Vec<BoundListener>>,
    runtime_dir: RuntimeDir,
    core: Core,
    processes: HashMap<WorkerId, Process>,
    deadlines: Deadlines,
    replies: HashMap<ReplyTo, server::Reply>,
    next_reply: ReplyTo,
    events_tx: mpsc::UnboundedSender<(WorkerId, WorkerEvent)>,
    events_rx: mpsc::UnboundedReceiver<(WorkerId, WorkerEvent)>,
    exit: Option<Result<(), String>>,
    cpu: CpuMeter,
    started: std::time::Instant,
    /// When it started, in Unix seconds (for the metrics).
    started_unix: f64,
    /// What the metrics accumulate (reloads).
    metrics: metrics::Registry,
    /// The supervisor's own service manager (`NOTIFY_SOCKET` at start), and what it was told last.
    service: Option<sdnotify::Notifier>,
    told: Option<ServiceState>,
    /// The `[[job]]` scheduler (taken when the loop ends, to wait for its last runs).
    jobs: Option<ConfigJobs>,
    /// Its own children that are not workers (`[[job]]` commands): the orphan sweep skips them.
    own_children: orphans::OwnChildren,
    leases: LeaseTasks,
    lease_rx: mpsc::UnboundedReceiver<(AppIndex, LeaseEvent)>,
    /// The binary this process runs (what an upgrade runs by default).
    binary: PathBuf,
    handover: HandoverFds,
    upgrade: Option<PendingUpgrade>,
    upgrades: UpgradeInfo,
    preflight_tx: mpsc::UnboundedSender<Result<String, String>>,
    preflight_rx: mpsc::UnboundedReceiver<Result<String, String>>,
}

impl Shell {
    fn new(
        config: Config,
        listeners: Vec<Vec<BoundListener>>,
        runtime_dir: RuntimeDir,
        jobs: ConfigJobs,
        own_children: orphans::OwnChildren,
        leases: LeaseTasks,
        lease_rx: mpsc::UnboundedReceiver<(AppIndex, LeaseEvent)>,
    ) -> Shell {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (preflight_tx, preflight_rx) = mpsc::unbounded_channel();
        let core = supervisor_core(&config, &listeners);
        Shell {
            config,
            listeners,
            runtime_dir,
            core,
            processes: HashMap::new(),
            deadlines: Deadlines::default(),
            replies: HashMap::new(),
            next_reply: 1,
            events_tx,
            events_rx,
            exit: None,
            cpu: CpuMeter::default(),
            started: std::time::Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            metrics: metrics::Registry::default(),
            service: None,
            told: None,
            jobs: Some(jobs),
            own_children,
            leases,
            lease_rx,
            binary: upgrade::own_binary(),
            handover: HandoverFds::default(),
            upgrade: None,
            upgrades: UpgradeInfo::default(),
            preflight_tx,
            preflight_rx,
        }
    }

    /// Takes over from the previous binary: its counters and start time, the core rebuilt
    /// from the config read again plus the running workers, and each worker's watch tasks on
    /// its inherited descriptors.
    fn adopt(&mut self, state: upgrade::HandoverState) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let up_for = Duration::from_secs_f64((now_unix - state.started_unix).max(0.0));
        self.started = std::time::Instant::now()
            .checked_sub(up_for)
            .unwrap_or(self.started);
        self.started_unix = state.started_unix;
        self.metrics = state.metrics.clone();
        self.upgrades = UpgradeInfo {
            count: state.upgrades,
            last_at_unix: Some(state.upgraded_at_unix),
            last_from: Some(state.from_version.clone()),
            last_error: None,
        };
        let now = Instant::now();
        let (core, actions) =
            Core::adopt(core_apps(&self.config, &self.listeners), state.core, now);
        self.core = core;
        let mut lost = Vec::new();
        for fds in &state.workers {
            let Some(w) = self.core.worker(fds.id) else {
                continue;
            };
            let name = w.name.clone();
            // SAFETY: these descriptors were handed over by the previous binary for this
            // worker alone, and nothing else here took them.
            match unsafe { Process::adopt(fds, &name, self.events_tx.clone()) } {
                Ok(p) => {
                    tracing::info!(worker = %name, pid = fds.pid, "worker adopted");
                    self.processes.insert(fds.id, p);
                }
                Err(e) => {
                    tracing::error!(worker = %name, pid = fds.pid, "cannot adopt worker ({e}): killing it");
                    crate::sys::child::kill_group(fds.pid);
                    lost.push(fds.id);
                }
            }
        }
        let mut queue = VecDeque::new();
        for action in actions {
            self.act(action, &mut queue);
        }
        while let Some(event) = queue.pop_front() {
            self.feed(event);
        }
        for worker in lost {
            self.feed(Event::Exited {
                worker,
                status: core::ExitStatus::Signal(libc::SIGKILL),
            });
        }
    }

    // ---- in-place upgrade ----

    /// An upgrade is asked for (`supervisor upgrade`, `SIGUSR2`): it waits (bounded) for the
    /// supervisor to settle, runs the preflight of the new binary, then execs it.
    fn request_upgrade(&mut self, binary: Option<PathBuf>, reply: Option<server::Reply>) {
        if self.upgrade.is_some() {
            if let Some(r) = reply {
                let _ = r.send(Response::Error {
                    message: "an upgrade is already under way".into(),
                });
            }
            return;
        }
        let binary = binary.unwrap_or_else(|| self.binary.clone());
        tracing::info!(binary = %binary.display(), "upgrade in place requested");
        self.upgrade = Some(PendingUpgrade {
            binary,
            reply,
            deadline: Instant::now() + upgrade::SETTLE_TIMEOUT,
            preflight_running: false,
            preflight_ok: None,
            waiting_for: None,
        });
    }

    /// Why the supervisor cannot be handed over right now, if it cannot.
    fn upgrade_blocker(&self) -> Option<String> {
        if let Some(why) = self.core.not_upgradable() {
            return Some(why);
        }
        let jobs = self.own_children.pids();
        if !jobs.is_empty() {
            return Some(format!("a [[job]] command is running (pid {jobs:?})"));
        }
        None
    }

    /// The upgrade did not happen: the supervisor goes on as it was.
    fn upgrade_failed(&mut self, reason: String) {
        let Some(u) = self.upgrade.take() else { return };
        tracing::warn!("upgrade refused: {reason}; going on with this binary");
        self.upgrades.last_error = Some(reason.clone());
        if let Some(r) = u.reply {
            let _ = r.send(Response::Error { message: reason });
        }
    }

    /// The next step of a pending upgrade; `true` when it is time to exec.
    fn advance_upgrade(&mut self) -> bool {
        if self.upgrade.is_none() {
            return false;
        }
        let blocker = self.upgrade_blocker();
        let stopping = matches!(
            self.core.phase(),
            core::Phase::Stopping | core::Phase::Stopped
        );
        let Some(u) = &mut self.upgrade else {
            return false;
        };
        if stopping {
            self.upgrade_failed("the supervisor is stopping".into());
            return false;
        }
        if let Some(app) = self.core.lease_held() {
            let why = format!(
                "app {app} is a cluster singleton whose lease this host holds (an upgrade does not hand leases over: upgrade while it stands by, or stop it)"
            );
            self.upgrade_failed(why);
            return false;
        }
        if u.preflight_running {
            return false;
        }
        match blocker {
            Some(why) => {
                if Instant::now() >= u.deadline {
                    let reason = format!(
                        "the supervisor did not settle within {}: {why}",
                        crate::units::span(upgrade::SETTLE_TIMEOUT)
                    );
                    self.upgrade_failed(reason);
                } else if u.waiting_for.as_ref() != Some(&why) {
                    tracing::info!("upgrade waits: {why}");
                    u.waiting_for = Some(why);
                }
                false
            }
            None if u.preflight_ok.is_some() => true,
            None => {
                u.preflight_running = true;
                let tx = self.preflight_tx.clone();
                let (binary, config) = (u.binary.clone(), self.config.path.clone());
                tokio::spawn(async move {
                    let _ = tx.send(upgrade::preflight(binary, config).await);
                });
                false
            }
        }
    }

    /// The preflight child finished.
    fn preflight_done(&mut self, outcome: Result<String, String>) {
        let Some(u) = &mut self.upgrade else { return };
        u.preflight_running = false;
        let said = match outcome {
            Ok(said) => said,
            Err(why) => return self.upgrade_failed(why),
        };
        // The new process reads the file again: it must hold the same apps, in order.
        match Config::load(&self.config.path) {
            Err(e) => return self.upgrade_failed(format!("config: {e}")),
            Ok(fresh) => {
                let names = |c: &Config| c.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
                if names(&fresh) != names(&self.config) {
                    return self.upgrade_failed(format!(
                        "the apps in {} changed ({:?} -> {:?}): adding or removing apps needs a restart",
                        self.config.path.display(),
                        names(&self.config),
                        names(&fresh)
                    ));
                }
                if fresh.control_socket != self.config.control_socket {
                    return self.upgrade_failed(format!(
                        "supervisor.control_socket changed in {} ({} -> {}): that needs a restart",
                        self.config.path.display(),
                        self.config.control_socket.display(),
                        fresh.control_socket.display()
                    ));
                }
            }
        }
        tracing::info!(binary = %u.binary.display(), "upgrade preflight passed: {said}");
        u.preflight_ok = Some(said);
        // A new deadline for settling again, if something started meanwhile.
        u.deadline = Instant::now() + upgrade::SETTLE_TIMEOUT;
    }

    /// Serializes the state into a memfd and execs the new binary with every descriptor to
    /// hand over; returns only if that failed (then everything stays as it was).
    fn exec_upgrade(&mut self) {
        let Some(binary) = self.upgrade.as_ref().map(|u| u.binary.clone()) else {
            return;
        };
        if let Some(why) = self.upgrade_blocker() {
            // Something started during the last yield: wait again.
            if let Some(u) = &mut self.upgrade {
                u.waiting_for = Some(why);
            }
            return;
        }
        let now = Instant::now();
        let mut workers = Vec::new();
        for id in self.processes.keys() {
            match self.processes[id].handover_fds(*id) {
                Some(fds) => workers.push(fds),
                None => {
                    return self.upgrade_failed(format!(
                        "worker {id}: its notify socket cannot be handed over"
                    ));
                }
            }
        }
        let state = upgrade::HandoverState {
            version: upgrade::STATE_VERSION,
            upgrades: self.upgrades.count + 1,
            upgraded_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            started_unix: self.started_unix,
            from_version: upgrade::version_line(),
            runtime_dir: self.runtime_dir.path.clone(),
            control_fd: self.handover.control,
            metrics_fd: self.handover.metrics,
            apps: self
                .config
                .apps
                .iter()
                .zip(&self.listeners)
                .map(|(a, ls)| upgrade::AppFds {
                    name: a.name.clone(),
                    listeners: ls.iter().map(BoundListener::handover).collect(),
                })
                .collect(),
            core: self.core.export(now),
            workers,
            metrics: self.metrics.clone(),
        };
        let json = match state.to_json() {
            Ok(json) => json,
            Err(e) => return self.upgrade_failed(e.to_string()),
        };
        let memfd = match upgrade::write_memfd(&json) {
            Ok(fd) => fd,
            Err(e) => {
                return self.upgrade_failed(format!("cannot write the state to a memfd: {e}"));
            }
        };
        let memfd_raw = std::os::fd::AsRawFd::as_raw_fd(&memfd);
        let mut fds = state.fds();
        fds.push(memfd_raw);
        let mut args = vec![
            "start".to_string(),
            "-c".to_string(),
            self.config.path.display().to_string(),
            "--resume-fd".to_string(),
            memfd_raw.to_string(),
        ];
        if !self.handover.log_format.is_empty() {
            args.extend(["--log-format".to_string(), self.handover.log_format.clone()]);
        }
        tracing::info!(
            binary = %binary.display(),
            workers = state.workers.len(),
            fds = fds.len(),
            "upgrading in place: exec"
        );
        let e = upgrade::exec(&binary, &args, &fds);
        drop(memfd);
        self.upgrade_failed(format!("execve {}: {e}", binary.display()));
    }

    async fn event_loop(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        mut control: mpsc::Receiver<ControlRequest>,
        mut snapshots: mpsc::Receiver<SnapshotRequest>,
        start: bool,
    ) -> Result<(), String> {
        if start {
            self.feed(Event::Start);
        }
        loop {
            if let Some(outcome) = self.exit.take() {
                return outcome;
            }
            if self.advance_upgrade() {
                // Let the connection tasks write the answers already given, then hand over.
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                self.exec_upgrade();
                continue;
            }
            let next = self.deadlines.next();
            // While an upgrade waits for the supervisor to settle, look again every 50 ms
            // (a [[job]] command ending sends no event).
            let upgrade_check = self
                .upgrade
                .as_ref()
                .filter(|u| !u.preflight_running)
                .map(|_| Instant::now() + Duration::from_millis(50));
            tokio::select! {
                Some(outcome) = self.preflight_rx.recv() => self.preflight_done(outcome),
                () = sleep_until(upgrade_check) => {}
                Some(cmd) = commands.recv() => match cmd {
                    Command::Reload => self.feed(Event::Reload { app: None, reply: None, wait: false }),
                    Command::Stop => {
                        self.stop_jobs(false);
                        self.feed(Event::Stop { reply: None });
                    }
                    Command::FastStop => {
                        self.stop_jobs(true);
                        self.feed(Event::FastStop);
                    }
                    Command::ChildExited => self.sweep_orphans(None),
                    Command::Upgrade => self.request_upgrade(None, None),
                },
                Some(req) = control.recv() => self.control(req),
                Some(reply) = snapshots.recv() => {
                    let _ = reply.send(self.metrics_snapshot());
                }
                Some((id, ev)) = self.events_rx.recv() => self.worker_event(id, ev),
                Some((app, event)) = self.lease_rx.recv() => self.feed(Event::Lease { app, event }),
                () = sleep_until(next) => {
                    for key in self.deadlines.due(Instant::now()) {
                        self.feed(Event::Timer(key));
                    }
                }
            }
        }
    }

    /// Hands `event` to the core and carries out what it decides, including the events that
    /// carrying it out produces (a spawn's outcome, a config read), until nothing is left.
    fn feed(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.core.handle(event, Instant::now()) {
                self.act(action, &mut queue);
            }
        }
    }

    fn act(&mut self, action: Action, queue: &mut VecDeque<Event>) {
        match action {
            Action::Spawn {
                app,
                worker,
                slot,
                generation,
                spec,
                fencing_token,
            } => {
                let started = Process::start(StartArgs {
                    id: worker,
                    slot,
                    generation,
                    spec,
                    listeners: self.listeners.get(app).map_or(&[], Vec::as_slice),
                    runtime_dir: &self.runtime_dir.path,
                    runtime_files: &self.runtime_dir.files,
                    cron_url: &self.config.cron_url,
                    fencing_token,
                    events: self.events_tx.clone(),
                });
                queue.push_back(match started {
                    Ok(p) => {
                        let pid = p.pid;
                        self.processes.insert(worker, p);
                        Event::Spawned { worker, pid }
                    }
                    Err(e) => Event::SpawnFailed {
                        worker,
                        error: e.to_string(),
                    },
                });
            }
            Action::Signal { worker, signal } => {
                if let Some(p) = self.processes.get(&worker) {
                    match signal {
                        Signal::Term => p.term(),
                        Signal::KillGroup => p.kill_group(),
                    }
                }
            }
            Action::Arm { timer, at } => self.deadlines.arm(timer, at),
            Action::Cancel(timer) => self.deadlines.cancel(timer),
            Action::ReadConfig => queue.push_back(Event::Config(self.read_config())),
            Action::SampleMemory => queue.push_back(Event::Memory(self.sample_memory())),
            Action::Reply { to, answer } => {
                if let Some(tx) = self.replies.remove(&to) {
                    let _ = tx.send(response(answer));
                }
            }
            Action::ReleaseLease(app) => self.leases.release(app),
            Action::Exit(outcome) => self.exit = Some(outcome),
            Action::Service { state, status } => self.tell_service(state, &status),
            Action::ReloadEnded(report) => self.metrics.reload_ended(&report),
        }
    }

    /// Tells the supervisor's own service manager (if it was started with `NOTIFY_SOCKET`).
    fn tell_service(&mut self, state: ServiceState, status: &str) {
        let Some(n) = &self.service else { return };
        let msg = notify::service_datagram(
            self.told,
            state,
            status,
            std::process::id(),
            sdnotify::monotonic_usec,
        );
        if let Err(e) = n.send(&msg) {
            tracing::warn!(socket = %n.target, "cannot notify the service manager: {e}");
        }
        self.told = Some(state);
    }

    /// Reaps adopted orphans that exited, and kills those left in the process group of the worker
    /// that just exited (`exited_group`); workers are left to their pidfd watchers.
    fn sweep_orphans(&self, exited_group: Option<i32>) {
        orphans::sweep(
            |pid| {
                self.processes.values().any(|p| p.pid == pid)
                    || self.own_children.contains(pid)
                    || upgrade::is_preflight_child(pid)
            },
            exited_group,
            false,
        );
    }

    /// Re-reads the config file for a reload. What cannot change without a restart is kept, with
    /// a warning.
    fn read_config(&mut self) -> Result<Vec<AppSettings>, String> {
        let fresh = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        let mut settings = Vec::with_capacity(fresh.apps.len());
        for app in &fresh.apps {
            let Some(i) = self.app_index(&app.name) else {
                tracing::warn!(app = %app.name, "a new app in the config file: adding apps needs a restart");
                continue;
            };
            if app.listeners != self.config.apps[i].listeners {
                tracing::warn!(
                    app = %app.name,
                    "listeners changed in {}: sockets are bound once; restart the supervisor to apply",
                    fresh.path.display()
                );
            }
            let mut s = app_settings(app, &self.listeners[i]);
            if s.singleton != self.config.apps[i].singleton {
                tracing::warn!(
                    app = %app.name,
                    "scope, lease_ttl or standby_poll changed in {}: the lease is kept as it is; restart the supervisor to apply",
                    fresh.path.display()
                );
                s.singleton = self.config.apps[i].singleton;
            }
            settings.push(s);
        }
        // The `[[job]]` tables: a changed set replaces the scheduler (running jobs finish).
        if let Some(jobs) = &mut self.jobs {
            jobs.replace(scheduler::prepare(
                &fresh,
                &self.config.apps,
                &self.listeners,
            ));
        }
        if fresh.control_socket != self.config.control_socket
            || fresh.cron_url != self.config.cron_url
            || fresh.metrics != self.config.metrics
        {
            tracing::warn!(
                "control socket, metrics address or cron backend changed: restart the supervisor to apply"
            );
        }
        Ok(settings)
    }

    /// The resident memory of every worker's process group, from one scan of `/proc` (the same
    /// measure `status` shows).
    fn sample_memory(&self) -> Vec<(WorkerId, u64)> {
        let scan = GroupScan::scan();
        self.processes
            .iter()
            .filter_map(|(id, p)| Some((*id, scan.group(p.pid)?.rss_bytes)))
            .collect()
    }

    /// Supervisor stop: the `[[job]]` scheduler takes no new tick; `fast` kills running commands.
    fn stop_jobs(&mut self, fast: bool) {
        if let Some(jobs) = &mut self.jobs {
            if fast {
                jobs.kill();
            } else {
                jobs.stop();
            }
        }
    }

    fn app_index(&self, name: &str) -> Option<AppIndex> {
        self.config.apps.iter().position(|a| a.name == name)
    }

    /// The app a request names, or the error answer that says which apps there are.
    fn named_app(&self, name: &str) -> Result<AppIndex, Response> {
        self.app_index(name).ok_or_else(|| {
            let names: Vec<&str> = self.config.apps.iter().map(|a| a.name.as_str()).collect();
            Response::Error {
                message: format!("no app is named {name:?} (apps: {})", names.join(", ")),
            }
        })
    }

    fn control(&mut self, req: ControlRequest) {
        let app = |name: &Option<String>| name.as_deref().map(|n| self.named_app(n)).transpose();
        let target = match &req.request {
            Request::Status { app: name } | Request::Reload { app: name, .. } => app(name),
            Request::Restart { app: name } | Request::Scale { app: name, .. } => {
                self.named_app(name).map(Some)
            }
            Request::Stop | Request::Upgrade { .. } => Ok(None),
        };
        let target = match target {
            Ok(t) => t,
            Err(answer) => {
                let _ = req.reply.send(answer);
                return;
            }
        };
        match req.request {
            Request::Status { .. } => {
                let report = self.status(target);
                let _ = req.reply.send(Response::Status(Box::new(report)));
            }
            Request::Reload { wait, .. } => {
                let reply = self.reply_to(req.reply);
                self.feed(Event::Reload {
                    app: target,
                    reply: Some(reply),
                    wait,
                });
            }
            Request::Restart { .. } => {
                let reply = self.reply_to(req.reply);
                if let Some(app) = target {
                    self.feed(Event::Restart {
                        app,
                        reply: Some(reply),
                    });
                }
            }
            Request::Scale { instances, .. } => {
                let reply = self.reply_to(req.reply);
                if let Some(app) = target {
                    self.feed(Event::Scale {
                        app,
                        instances,
                        reply: Some(reply),
                    });
                }
            }
            Request::Upgrade { binary } => self.request_upgrade(binary, Some(req.reply)),
            Request::Stop => {
                self.stop_jobs(false);
                let reply = self.reply_to(req.reply);
                self.feed(Event::Stop { reply: Some(reply) });
            }
        }
    }

    fn reply_to(&mut self, tx: server::Reply) -> ReplyTo {
        let id = self.next_reply;
        self.next_reply += 1;
        self.replies.insert(id, tx);
        id
    }

    fn worker_event(&mut self, id: WorkerId, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Notify(Notification::Ready) => self.feed(Event::Ready(id)),
            WorkerEvent::Notify(Notification::Status(text)) => {
                self.feed(Event::StatusText(id, text))
            }
            WorkerEvent::Notify(Notification::Stopping) => {
                if let Some(w) = self.core.worker(id)
                    && w.state != core::WorkerState::Draining
                {
                    tracing::info!(worker = %w.name, pid = w.pid.unwrap_or(0), "worker is stopping on its own");
                }
            }
            WorkerEvent::Exited(status) => {
                self.feed(Event::Exited { worker: id, status });
                // Reaped only now: until the core handled the exit, the pid could not be reused.
                if let Some(mut p) = self.processes.remove(&id) {
                    p.reap();
                    self.cpu.retain(|pid| pid != p.pid);
                    self.sweep_orphans(Some(p.pid));
                }
                if !self.core.any_draining() {
                    crate::sys::release_free_memory();
                }
            }
        }
    }

    /// What a metrics scrape shows of the apps and processes (the jobs are read by the endpoint).
    /// One pass over /proc for every worker's process group, as for `status`.
    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let now = Instant::now();
        let hz = procstat::ticks_per_second() as f64;
        let usage = |u: procstat::Usage| metrics::Usage {
            cpu_seconds: u.ticks as f64 / hz,
            rss_bytes: u.rss_bytes,
        };
        let me = std::process::id() as i32;
        let supervisor = usage(procstat::Usage {
            ticks: procstat::cpu_ticks(me).unwrap_or(0),
            rss_bytes: procstat::rss_bytes(me).unwrap_or(0),
        });
        let procs = GroupScan::scan();
        let apps = self
            .core
            .apps()
            .map(|view| {
                let name = view.app.name().to_string();
                let s = view.app.snapshot(now);
                let workers = |state| s.workers.iter().filter(|(w, _)| w.state == state).count();
                let waiting = |state| s.waiting.iter().filter(|w| w.state == state).count();
                let processes = s
                    .workers
                    .iter()
                    .filter_map(|(w, _)| {
                        let pid = self.processes.get(&w.id)?.pid;
                        Some(metrics::WorkerProcess {
                            name: w.name.clone(),
                            pid,
                            usage: usage(procs.group(pid).unwrap_or_default()),
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
                        .map(|v| v.role == core::SingletonRole::Holder),
                    reloads: self.metrics.reloads(&name),
                    processes,
                    name,
                }
            })
            .collect();
        metrics::Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            start_time: self.started_unix,
            supervisor,
            apps,
            jobs: None,
            config_job_ticks: self
                .jobs
                .as_ref()
                .map(ConfigJobs::ticks)
                .unwrap_or_default(),
        }
    }

    /// `status`, of every app or of `only`.
    fn status(&mut self, only: Option<AppIndex>) -> StatusReport {
        let now = Instant::now();
        let me = std::process::id() as i32;
        let supervisor = self.cpu.sample(me, self.started);
        // One pass over /proc for every worker's process group.
        let procs = GroupScan::scan();
        let mut apps = Vec::new();
        for (i, view) in self.core.apps().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
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
                    process: match self.processes.get(&w.id) {
                        Some(p) => self
                            .cpu
                            .sample_group(&procs, p.pid, w.started_at.into_std()),
                        None => Default::default(),
                    },
                    status_text: w.status_text.clone(),
                    over_max_memory_secs: w
                        .over_memory
                        .map(|(since, _)| now.saturating_duration_since(since).as_secs_f64()),
                })
                .collect();
            apps.push(AppStatus {
                name: view.app.name().to_string(),
                phase: snapshot.phase,
                waiting_for: view.waiting_for,
                generation: snapshot.generation,
                listeners: self.listeners[i]
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
                    lease_ttl_secs: self.config.apps[i]
                        .singleton
                        .map_or(0.0, |p| p.lease_ttl.as_secs_f64()),
                }),
            });
        }
        StatusReport {
            supervisor,
            version: env!("CARGO_PKG_VERSION").to_string(),
            build: upgrade::build_id(),
            binary: self.binary.display().to_string(),
            upgrades: self.upgrades.clone(),
            config: self.config.path.display().to_string(),
            phase: self.core.phase(),
            apps,
        }
    }
}

/// The core's answer to a client, in the control protocol.
fn response(answer: Answer) -> Response {
    match answer {
        Answer::Reload(reports) => Response::Reload { reports },
        Answer::Restarted {
            app,
            generation,
            workers,
        } => Response::Restarted {
            app,
            generation,
            workers,
        },
        Answer::Scaled {
            app,
            from,
            to,
            note,
        } => Response::Scaled {
            app,
            from,
            to,
            note,
        },
        Answer::Stopped => Response::Stopped,
        Answer::Refused(message) => Response::Error { message },
    }
}

/// Sleeps until `at`, or forever when nothing is due.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
