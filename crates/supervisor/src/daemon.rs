//! The shell around the core: the one event loop that owns all state. It turns signals, control
//! requests, worker events (readiness, exit) and deadlines into [`core::Event`]s and carries out
//! the [`core::Action`]s the core returns (fork/exec, signals, timers, config reads, replies).
//! Timers are one deadline queue on `tokio::time::Instant`; the loop sleeps until the next one.
//! Worker memory for `max_memory` is measured on the core's request (a deadline it arms once a
//! second while some app has a limit), with one `/proc` scan for every worker.
//! Cluster singletons (`scope = "cluster"`) each get a lease task ([`crate::singleton`]) that
//! reports [`core::LeaseEvent`]s into the same loop; the loop itself never talks to the backend.
//! Startup binds everything before any worker starts, so a bad port or a live control socket
//! fails with nothing started.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{AppConfig, Config, ConfigError};
use crate::control::protocol::{
    AppStatus, ListenerInfo, MemoryLimit, ReloadOutcome, ReloadReport, Request, Response,
    SingletonStatus, SlotInfo, StatusReport, WorkerInfo,
};
use crate::control::server::{self, ControlError, ControlRequest, ControlSocket};
use crate::core::{
    self, Action, AppIndex, AppSettings, Event, LeaseEvent, ReplyTo, ServiceState, Signal,
    Supervisor, TimerKey, WaitState, WorkerState,
};
use crate::jobs::config_jobs::{self, ConfigJobs};
use crate::metrics::{self, server::SnapshotRequest};
use crate::notify::{self, Notification};
use crate::orphans;
use crate::runtimes::{self, RuntimeFiles};
use crate::singleton::LeaseTasks;
use crate::sys::listeners::{self, BoundListener, ListenError};
use crate::sys::procstat::{self, CpuMeter, GroupScan};
use crate::sys::{reaper, sdnotify};
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
) -> Result<(), StartupError> {
    server::check_free(&config.control_socket)?;
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
    let bound = config
        .apps
        .iter()
        .map(|a| listeners::bind_all(&a.listeners))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| StartupError::Listen {
            path: config.path.clone(),
            cause,
        })?;
    let listen_err = |cause| StartupError::Listen {
        path: config.path.clone(),
        cause,
    };
    let metrics_listener = config
        .metrics
        .map(|addr| listeners::bind_own(METRICS_KEY, addr))
        .transpose()
        .map_err(listen_err)?;
    let (lease_tx, lease_rx) = mpsc::unbounded_channel();
    let leases = start_lease_tasks(&config, lease_tx)?;
    let runtime_dir = RuntimeDir::create()?;
    // Its own tasks: the event loop never waits on the cron backend.
    let jobs = ConfigJobs::start(
        &config.cron_url,
        config_jobs::prepare(&config, &config.apps, &bound),
    )
    .map_err(|cause| StartupError::Jobs {
        path: config.path.clone(),
        cause,
    })?;
    let mut control = ControlSocket::bind(&config.control_socket)?;
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
        version = env!("CARGO_PKG_VERSION"),
        control_socket = %config.control_socket.display(),
        apps = config.apps.len(),
        adopts_orphans = subreaper,
        notify_socket = service.as_ref().map(|n| n.target.as_str()),
        "supervisor started"
    );
    let mut shell = Shell::new(config, bound, runtime_dir, jobs, leases, lease_rx);
    shell.service = service;
    let outcome = shell
        .event_loop(&mut commands, control_rx, snapshots_rx)
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
        |pid| workers.contains(&pid) || crate::jobs::command::is_job_child(pid),
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
            lease_ttl = %crate::table::span(policy.lease_ttl),
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
fn supervisor_core(config: &Config, listeners: &[Vec<BoundListener>]) -> Supervisor {
    Supervisor::new(
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
            .collect(),
    )
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

struct Shell {
    config: Config,
    /// Each app's listeners, in app order.
    listeners: Vec<Vec<BoundListener>>,
    runtime_dir: RuntimeDir,
    core: Supervisor,
    processes: HashMap<WorkerId, Process>,
    deadlines: Deadlines,
    replies: HashMap<ReplyTo, oneshot::Sender<Response>>,
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
    leases: LeaseTasks,
    lease_rx: mpsc::UnboundedReceiver<(AppIndex, LeaseEvent)>,
}

impl Shell {
    fn new(
        config: Config,
        listeners: Vec<Vec<BoundListener>>,
        runtime_dir: RuntimeDir,
        jobs: ConfigJobs,
        leases: LeaseTasks,
        lease_rx: mpsc::UnboundedReceiver<(AppIndex, LeaseEvent)>,
    ) -> Shell {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
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
            leases,
            lease_rx,
        }
    }

    async fn event_loop(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        mut control: mpsc::Receiver<ControlRequest>,
        mut snapshots: mpsc::Receiver<SnapshotRequest>,
    ) -> Result<(), String> {
        self.feed(Event::Start);
        loop {
            if let Some(outcome) = self.exit.take() {
                return outcome;
            }
            let next = self.deadlines.next();
            tokio::select! {
                Some(cmd) = commands.recv() => match cmd {
                    Command::Reload => self.feed(Event::Reload { app: None, reply: None }),
                    Command::Stop => {
                        self.stop_jobs(false);
                        self.feed(Event::Stop { reply: None });
                    }
                    Command::FastStop => {
                        self.stop_jobs(true);
                        self.feed(Event::FastStop);
                    }
                    Command::ChildExited => self.sweep_orphans(None),
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
            Action::Reply { to, response } => {
                if let Some(tx) = self.replies.remove(&to) {
                    let _ = tx.send(response);
                }
            }
            Action::ReleaseLease(app) => self.leases.release(app),
            Action::Exit(outcome) => self.exit = Some(outcome),
            Action::Service { state, status } => self.tell_service(state, &status),
            // The core answers finished reloads itself; the shell only records them.
            Action::Reloaded { .. } => {}
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
                    || crate::jobs::command::is_job_child(pid)
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
            jobs.replace(config_jobs::prepare(
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
            Request::Stop => Ok(None),
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
            Request::Reload { wait: true, .. } => {
                let reply = self.reply_to(req.reply);
                self.feed(Event::Reload {
                    app: target,
                    reply: Some(reply),
                });
            }
            Request::Reload { wait: false, .. } => {
                self.feed(Event::Reload {
                    app: target,
                    reply: None,
                });
                let reports = self
                    .core
                    .apps()
                    .enumerate()
                    .filter(|(i, _)| target.is_none_or(|t| t == *i))
                    .map(|(_, v)| ReloadReport {
                        app: v.app.name().to_string(),
                        // The reload under way (this one, or the one it was queued behind).
                        generation: {
                            let snapshot = v.app.snapshot(Instant::now());
                            snapshot
                                .reload_in_progress
                                .map_or(snapshot.generation, |p| p.generation)
                        },
                        outcome: ReloadOutcome::Started,
                        reason: None,
                        note: None,
                        slots: vec![],
                        duration_secs: 0.0,
                    })
                    .collect();
                let _ = req.reply.send(Response::Reload { reports });
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
            Request::Stop => {
                self.stop_jobs(false);
                let reply = self.reply_to(req.reply);
                self.feed(Event::Stop { reply: Some(reply) });
            }
        }
    }

    fn reply_to(&mut self, tx: oneshot::Sender<Response>) -> ReplyTo {
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
            config: self.config.path.display().to_string(),
            phase: self.core.phase(),
            apps,
        }
    }
}

/// Sleeps until `at`, or forever when nothing is due.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
