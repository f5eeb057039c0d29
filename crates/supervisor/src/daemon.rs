//! The supervisor's event loop: one task owns all state and reacts to commands (signals), control
//! requests, worker events (readiness, exit) and timers. Startup binds everything before any
//! worker starts, so a bad port or a live control socket fails with nothing started.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::config::{Config, ConfigError, Readiness, WorkerSpec};
use crate::control::protocol::{
    ListenerInfo, ReloadOutcome, ReloadReport, Request, Response, SlotInfo, StatusReport,
    WorkerInfo,
};
use crate::control::server::{self, ControlError, ControlRequest, ControlSocket};
use crate::listeners::{self, BoundListener, ListenError};
use crate::notify::Notification;
use crate::procstat::{CpuMeter, GroupScan};
use crate::reload::{InFlight, Reload};
use crate::runtimes::{self, RuntimeFiles};
use crate::worker::{ExitStatus, StartArgs, Worker, WorkerEvent, WorkerId, WorkerState};

/// What the outside world (signal handlers in `main`) asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Rolling reload (`SIGHUP`).
    Reload,
    /// Graceful stop (`SIGTERM`, first `SIGINT`).
    Stop,
    /// Kill everything now (second `SIGINT`).
    FastStop,
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
    /// The runtime directory for notify sockets could not be created.
    #[error("cannot create runtime directory {path}: {cause}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
}

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

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs the supervisor until it is stopped: binds listeners and the control socket, starts the
/// workers, then serves events. `commands` carries the signals `main` translated.
pub async fn run(config: Config, commands: mpsc::Receiver<Command>) -> Result<(), StartupError> {
    server::check_free(&config.control_socket)?;
    let bound = listeners::bind_all(&config.listeners).map_err(|cause| StartupError::Listen {
        path: config.path.clone(),
        cause,
    })?;
    let runtime_dir = RuntimeDir::create()?;
    let mut control = ControlSocket::bind(&config.control_socket)?;
    let (control_tx, control_rx) = mpsc::channel(64);
    control.serve(control_tx);
    for l in &bound {
        tracing::info!(name = %l.name, address = %l.local, "listening");
    }
    tracing::info!(
        pid = std::process::id(),
        control_socket = %config.control_socket.display(),
        workers = config.worker.instances,
        program = %config.worker.program.display(),
        "supervisor started"
    );
    let mut daemon = Daemon::new(config, bound, runtime_dir);
    daemon.start_all();
    daemon.event_loop(commands, control_rx).await;
    control.flush(Duration::from_millis(500)).await;
    drop(control);
    tracing::info!("supervisor stopped");
    Ok(())
}

#[derive(Debug)]
enum Timer {
    ReadyTimeout(WorkerId),
    KillTimeout(WorkerId),
    Restart { slot: usize, seq: u64 },
}

#[derive(Debug)]
struct Slot {
    index: usize,
    /// The slot's serving (or starting) worker.
    worker: Option<WorkerId>,
    /// What this slot runs (the generation it was last started or replaced in).
    spec: Arc<WorkerSpec>,
    generation: u64,
    restarts: u32,
    consecutive_failures: u32,
    recent_failures: VecDeque<Instant>,
    /// When waiting to restart: when, and the timer sequence number that is valid.
    restart_at: Option<Instant>,
    restart_seq: u64,
    last_exit: Option<String>,
}

#[derive(Debug)]
enum Phase {
    Running,
    Stopping {
        waiters: Vec<oneshot::Sender<Response>>,
    },
}

struct Daemon {
    config: Config,
    listeners: Vec<BoundListener>,
    runtime_dir: RuntimeDir,
    workers: HashMap<WorkerId, Worker>,
    slots: Vec<Slot>,
    next_id: WorkerId,
    generation: u64,
    events_tx: mpsc::UnboundedSender<(WorkerId, WorkerEvent)>,
    events_rx: mpsc::UnboundedReceiver<(WorkerId, WorkerEvent)>,
    timers_tx: mpsc::UnboundedSender<Timer>,
    timers_rx: mpsc::UnboundedReceiver<Timer>,
    reload: Option<Reload>,
    /// A reload requested while one runs: runs once after it (coalesced), with its waiters.
    queued_reload: Option<Vec<oneshot::Sender<Response>>>,
    last_reload: Option<ReloadReport>,
    phase: Phase,
    cpu: CpuMeter,
    started: Instant,
}

impl Daemon {
    fn new(config: Config, listeners: Vec<BoundListener>, runtime_dir: RuntimeDir) -> Daemon {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (timers_tx, timers_rx) = mpsc::unbounded_channel();
        let spec = Arc::new(config.worker.clone());
        let slots = (0..spec.instances)
            .map(|i| Slot::new(i, spec.clone(), 1))
            .collect();
        Daemon {
            config,
            listeners,
            runtime_dir,
            workers: HashMap::new(),
            slots,
            next_id: 1,
            generation: 1,
            events_tx,
            events_rx,
            timers_tx,
            timers_rx,
            reload: None,
            queued_reload: None,
            last_reload: None,
            phase: Phase::Running,
            cpu: CpuMeter::default(),
            started: Instant::now(),
        }
    }

    fn start_all(&mut self) {
        for i in 0..self.slots.len() {
            self.start_slot(i);
        }
    }

    async fn event_loop(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut control: mpsc::Receiver<ControlRequest>,
    ) {
        loop {
            tokio::select! {
                Some(cmd) = commands.recv() => self.command(cmd),
                Some(req) = control.recv() => self.control(req),
                Some((id, ev)) = self.events_rx.recv() => self.worker_event(id, ev),
                Some(t) = self.timers_rx.recv() => self.timer(t),
            }
            if matches!(self.phase, Phase::Stopping { .. }) && self.workers.is_empty() {
                if let Phase::Stopping { waiters } =
                    std::mem::replace(&mut self.phase, Phase::Running)
                {
                    for w in waiters {
                        let _ = w.send(Response::Stopped);
                    }
                }
                return;
            }
        }
    }

    /// Sends `timer` to the event loop after `delay`; abort the handle to cancel it.
    fn after(&self, delay: Duration, timer: Timer) -> AbortHandle {
        let tx = self.timers_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(timer);
        })
        .abort_handle()
    }

    /// Starts a worker in `slot` with `spec`/`generation`; the caller decides what a spawn error means.
    fn spawn_worker(
        &mut self,
        slot: usize,
        spec: Arc<WorkerSpec>,
        generation: u64,
    ) -> Result<WorkerId, String> {
        let id = self.next_id;
        self.next_id += 1;
        let started = Worker::start(StartArgs {
            id,
            slot,
            generation,
            spec: spec.clone(),
            listeners: &self.listeners,
            runtime_dir: &self.runtime_dir.path,
            runtime_files: &self.runtime_dir.files,
            cron_url: &self.config.cron_url,
            events: self.events_tx.clone(),
        });
        match started {
            Ok(mut w) => {
                tracing::info!(worker = %w.name, pid = w.pid, generation, "worker started");
                match spec.readiness {
                    Readiness::Notify => w.set_deadline(Some(
                        self.after(spec.ready_timeout, Timer::ReadyTimeout(id)),
                    )),
                    // Executed = ready: handled like a READY=1, through the same path.
                    Readiness::Exec => {
                        let _ = self
                            .events_tx
                            .send((id, WorkerEvent::Notify(Notification::Ready)));
                    }
                }
                self.workers.insert(id, w);
                Ok(id)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn start_slot(&mut self, index: usize) {
        let (spec, generation) = {
            let s = &mut self.slots[index];
            s.restart_at = None;
            (s.spec.clone(), s.generation)
        };
        match self.spawn_worker(index, spec, generation) {
            Ok(id) => self.slots[index].worker = Some(id),
            Err(e) => {
                tracing::error!(slot = index, "cannot start worker: {e}");
                self.slot_failed(index, e, true);
            }
        }
    }

    /// A slot lost its worker without being asked to: schedule the restart with backoff.
    fn slot_failed(&mut self, index: usize, reason: String, unstable: bool) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        let policy = self.config.restart;
        let s = &mut self.slots[index];
        s.worker = None;
        s.restarts += 1;
        s.last_exit = Some(reason);
        let now = Instant::now();
        if unstable {
            s.consecutive_failures += 1;
            s.recent_failures.push_back(now);
        } else {
            s.consecutive_failures = 0;
        }
        while s
            .recent_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            s.recent_failures.pop_front();
        }
        let delay = policy.backoff(s.consecutive_failures);
        s.restart_seq += 1;
        s.restart_at = Some(now + delay);
        if s.crash_looping(policy.max_restarts) {
            tracing::error!(slot = index, restarts = s.restarts, delay = ?delay, "slot is crash-looping; next start after backoff");
        } else {
            tracing::warn!(slot = index, delay = ?delay, "restarting worker");
        }
        let seq = s.restart_seq;
        // Not kept: a stale restart timer is ignored by its sequence number, and it is one per slot.
        let _ = self.after(delay, Timer::Restart { slot: index, seq });
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Reload => self.request_reload(None),
            Command::Stop => self.stop(None),
            Command::FastStop => {
                tracing::warn!("fast stop: killing every worker");
                self.stop(None);
                for w in self.workers.values() {
                    w.kill_group();
                }
            }
        }
    }

    fn control(&mut self, req: ControlRequest) {
        match req.request {
            Request::Status => {
                let report = self.status();
                let _ = req.reply.send(Response::Status(Box::new(report)));
            }
            Request::Reload { wait } => {
                if wait {
                    self.request_reload(Some(req.reply));
                } else {
                    self.request_reload(None);
                    let progress = self
                        .reload
                        .as_ref()
                        .map(|r| r.generation)
                        .unwrap_or(self.generation);
                    let _ = req.reply.send(Response::Reload(ReloadReport {
                        generation: progress,
                        outcome: ReloadOutcome::Started,
                        reason: None,
                        slots: vec![],
                        duration_secs: 0.0,
                    }));
                }
            }
            Request::Stop => self.stop(Some(req.reply)),
        }
    }

    fn stop(&mut self, waiter: Option<oneshot::Sender<Response>>) {
        if let Phase::Stopping { waiters } = &mut self.phase {
            waiters.extend(waiter);
            return;
        }
        tracing::info!(
            workers = self.workers.len(),
            "stopping: draining every worker"
        );
        self.phase = Phase::Stopping {
            waiters: waiter.into_iter().collect(),
        };
        if let Some(queued) = self.queued_reload.take() {
            let report = aborted_report(self.generation + 1, "the supervisor is stopping");
            for w in queued {
                let _ = w.send(Response::Reload(report.clone()));
            }
        }
        if self.reload.is_some() {
            self.abort_reload("the supervisor is stopping".into());
        }
        for s in &mut self.slots {
            s.restart_at = None;
            s.restart_seq += 1;
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.drain_worker(id);
        }
    }

    fn drain_worker(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Draining {
            return;
        }
        w.drain();
        let timeout = w.spec.kill_timeout;
        tracing::info!(worker = %w.name, pid = w.pid, "draining (SIGTERM)");
        let deadline = self.after(timeout, Timer::KillTimeout(id));
        if let Some(w) = self.workers.get_mut(&id) {
            w.set_deadline(Some(deadline));
        }
    }

    fn worker_event(&mut self, id: WorkerId, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Notify(n) => self.notified(id, n),
            WorkerEvent::Exited(status) => self.exited(id, status),
        }
    }

    fn notified(&mut self, id: WorkerId, n: Notification) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        match n {
            Notification::Ready => {
                if w.state != WorkerState::Starting {
                    return;
                }
                w.mark_ready();
                let pid = w.pid;
                tracing::info!(worker = %w.name, pid, generation = w.generation, ready_ms = w.uptime().as_millis() as u64, "worker ready");
                let replaced = self.reload.as_mut().and_then(|r| r.ready(id, pid));
                if let Some(f) = replaced {
                    self.slot_replaced(f);
                    self.advance_reload();
                }
            }
            Notification::Status(text) => w.status_text = Some(text),
            Notification::Stopping if w.state == WorkerState::Draining => {}
            Notification::Stopping => {
                tracing::info!(worker = %w.name, pid = w.pid, "worker is stopping on its own");
            }
        }
    }

    fn exited(&mut self, id: WorkerId, status: ExitStatus) {
        let Some(mut w) = self.workers.remove(&id) else {
            return;
        };
        let was = w.state;
        w.reap();
        self.cpu.retain(|pid| pid != w.pid);
        if was == WorkerState::Draining {
            tracing::info!(worker = %w.name, pid = w.pid, %status, uptime_ms = w.uptime().as_millis() as u64, "worker exited");
            return;
        }
        let reason = format!("{status} while {was}");
        tracing::warn!(worker = %w.name, pid = w.pid, %status, uptime_ms = w.uptime().as_millis() as u64, "worker exited unexpectedly ({was})");
        if self.reload.as_ref().is_some_and(|r| r.is_in_flight(id)) {
            self.abort_reload(format!(
                "new worker {} (pid {}) exited before it was ready: {status}",
                w.name, w.pid
            ));
            return;
        }
        if self.slots.get(w.slot).is_some_and(|s| s.worker == Some(id)) {
            let unstable =
                was == WorkerState::Starting || w.uptime() < self.config.restart.min_uptime;
            self.slot_failed(w.slot, reason, unstable);
        }
    }

    fn timer(&mut self, t: Timer) {
        match t {
            Timer::ReadyTimeout(id) => {
                let Some(w) = self.workers.get(&id) else {
                    return;
                };
                if w.state != WorkerState::Starting {
                    return;
                }
                let mut msg = format!(
                    "new worker {} (pid {}) was not ready within {:?}",
                    w.name, w.pid, w.spec.ready_timeout
                );
                if let Some(hint) = runtimes::not_ready_hint(w.spec.runtime, &self.listeners) {
                    msg = format!("{msg}: {hint}");
                }
                tracing::warn!("{msg}; killing it");
                w.kill_group();
                if self.reload.as_ref().is_some_and(|r| r.is_in_flight(id)) {
                    self.abort_reload(msg);
                }
            }
            Timer::KillTimeout(id) => {
                if let Some(w) = self.workers.get(&id) {
                    tracing::warn!(worker = %w.name, pid = w.pid, "still running after kill_timeout {:?}: SIGKILL to its process group", w.spec.kill_timeout);
                    w.kill_group();
                }
            }
            Timer::Restart { slot, seq } => {
                let due = self.slots.get(slot).is_some_and(|s| {
                    s.restart_seq == seq && s.worker.is_none() && s.restart_at.is_some()
                });
                if due && matches!(self.phase, Phase::Running) {
                    self.start_slot(slot);
                }
            }
        }
    }

    // ---- rolling reload ----

    fn request_reload(&mut self, waiter: Option<oneshot::Sender<Response>>) {
        if !matches!(self.phase, Phase::Running) {
            if let Some(w) = waiter {
                let _ = w.send(Response::Reload(aborted_report(
                    self.generation,
                    "the supervisor is stopping",
                )));
            }
            return;
        }
        if self.reload.is_some() {
            tracing::info!("reload requested while one is running: queued to run once after it");
            self.queued_reload
                .get_or_insert_with(Vec::new)
                .extend(waiter);
            return;
        }
        self.begin_reload(waiter.into_iter().collect());
    }

    fn begin_reload(&mut self, waiters: Vec<oneshot::Sender<Response>>) {
        let generation = self.generation + 1;
        let fresh = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                let report = aborted_report(
                    generation,
                    &format!("config no longer valid, nothing changed: {e}"),
                );
                tracing::error!(
                    "reload aborted: {}",
                    report.reason.as_deref().unwrap_or_default()
                );
                for w in waiters {
                    let _ = w.send(Response::Reload(report.clone()));
                }
                self.last_reload = Some(report);
                return;
            }
        };
        if fresh.listeners != self.config.listeners {
            tracing::warn!(
                "listeners changed in {}: sockets are bound once; restart the supervisor to apply",
                fresh.path.display()
            );
        }
        if fresh.control_socket != self.config.control_socket
            || fresh.cron_url != self.config.cron_url
        {
            tracing::warn!(
                "control socket or cron backend changed: restart the supervisor to apply"
            );
        }
        let new_n = fresh.worker.instances;
        let spec = Arc::new(fresh.worker.clone());
        self.config.worker = fresh.worker;
        self.config.restart = fresh.restart;
        self.config.reload = fresh.reload;
        self.generation = generation;
        // New slots (scale up) take part in the reload as slots without an old worker.
        while self.slots.len() < new_n {
            let i = self.slots.len();
            self.slots.push(Slot::new(i, spec.clone(), generation));
        }
        tracing::info!(generation, slots = new_n, "rolling reload started");
        let mut reload = Reload::new(generation, spec, self.config.reload, 0..new_n);
        for w in waiters {
            reload.add_waiter(w);
        }
        self.reload = Some(reload);
        self.advance_reload();
    }

    /// Starts as many replacements as the surge allows; finishes the reload when all are done.
    fn advance_reload(&mut self) {
        loop {
            let Some(reload) = self.reload.as_mut() else {
                return;
            };
            if reload.is_complete() {
                break;
            }
            let Some(slot) = reload.next_slot() else {
                return;
            };
            let drain_early = reload.may_drain_early();
            let (spec, generation) = (reload.spec.clone(), reload.generation);
            let old = self.slots[slot]
                .worker
                .and_then(|id| self.workers.get(&id).map(|w| (id, w.pid)));
            match self.spawn_worker(slot, spec, generation) {
                Ok(new) => {
                    let early = drain_early && old.is_some();
                    if let (true, Some((old_id, _))) = (early, old) {
                        self.drain_worker(old_id);
                    }
                    if let Some(r) = self.reload.as_mut() {
                        r.started(InFlight {
                            slot,
                            new,
                            old,
                            old_drained_early: early,
                            started: Instant::now(),
                        });
                    }
                }
                Err(e) => {
                    self.abort_reload(format!("cannot start new worker for slot {slot}: {e}"));
                    return;
                }
            }
        }
        // Complete: retire slots beyond the new instance count.
        if let Some(reload) = self.reload.take() {
            let keep = reload.spec.instances;
            let (_, report) = reload.finish(None);
            while self.slots.len() > keep {
                if let Some(id) = self.slots.pop().and_then(|s| s.worker) {
                    self.drain_worker(id);
                }
            }
            tracing::info!(
                generation = report.generation,
                secs = format!("{:.2}", report.duration_secs),
                "rolling reload finished"
            );
            self.finish_reload(report);
        }
    }

    /// The new worker of a slot is ready: it becomes the slot's worker and the old one drains.
    fn slot_replaced(&mut self, f: InFlight) {
        let reload_gen = self.generation;
        let spec = self.reload.as_ref().map(|r| r.spec.clone());
        let s = &mut self.slots[f.slot];
        let previous = s.worker.replace(f.new);
        if let Some(spec) = spec {
            s.spec = spec;
        }
        s.generation = reload_gen;
        s.consecutive_failures = 0;
        s.recent_failures.clear();
        s.restart_at = None;
        s.restart_seq += 1; // a pending crash restart of the old worker is void
        if let Some(old) = previous {
            self.drain_worker(old);
        }
    }

    fn abort_reload(&mut self, reason: String) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        tracing::error!(
            generation = reload.generation,
            "reload aborted: {reason}; old workers keep serving"
        );
        let (starting, report) = reload.finish(Some(reason));
        for f in starting {
            if let Some(w) = self.workers.get_mut(&f.new) {
                // Not a slot's worker: its exit is expected and must not trigger a restart.
                w.state = WorkerState::Draining;
                w.kill_group();
            }
            if f.old_drained_early && self.slots[f.slot].worker == f.old.map(|(id, _)| id) {
                // Its old worker was already told to stop: start the slot again as it was.
                self.slot_failed(
                    f.slot,
                    "old worker drained during an aborted reload".into(),
                    false,
                );
            }
        }
        self.finish_reload(report);
    }

    fn finish_reload(&mut self, report: ReloadReport) {
        self.last_reload = Some(report);
        if let Some(waiters) = self.queued_reload.take() {
            // Stopping answered the queued waiters already; only a running daemon reloads again.
            if matches!(self.phase, Phase::Running) {
                self.begin_reload(waiters);
            }
        }
    }

    // ---- status ----

    fn status(&mut self) -> StatusReport {
        let me = std::process::id() as i32;
        let supervisor = self.cpu.sample(me, self.started);
        // One pass over /proc for every worker's process group.
        let procs = GroupScan::scan();
        let mut workers: Vec<&Worker> = self.workers.values().collect();
        workers.sort_by_key(|w| (w.slot, w.generation, w.id));
        let infos = workers
            .iter()
            .map(|w| WorkerInfo {
                slot: w.slot,
                name: w.name.clone(),
                generation: w.generation,
                state: w.state.to_string(),
                restarts: self.slots.get(w.slot).map(|s| s.restarts).unwrap_or(0),
                process: self.cpu.sample_group(&procs, w.pid, w.started_at),
                status_text: w.status_text.clone(),
            })
            .collect();
        let now = Instant::now();
        let waiting = self
            .slots
            .iter()
            .filter(|s| s.worker.is_none())
            .filter_map(|s| {
                s.restart_at.map(|at| SlotInfo {
                    slot: s.index,
                    state: if s.crash_looping(self.config.restart.max_restarts) {
                        "crash-loop"
                    } else {
                        "backoff"
                    }
                    .into(),
                    restarts: s.restarts,
                    restart_in_secs: at.saturating_duration_since(now).as_secs_f64(),
                    last_exit: s.last_exit.clone().unwrap_or_default(),
                })
            })
            .collect();
        StatusReport {
            supervisor,
            config: self.config.path.display().to_string(),
            generation: self.generation,
            phase: match self.phase {
                Phase::Running => "running",
                Phase::Stopping { .. } => "stopping",
            }
            .into(),
            listeners: self
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| ListenerInfo {
                    name: l.name.clone(),
                    address: l.local.clone(),
                    fd: 3 + i as i32,
                })
                .collect(),
            workers: infos,
            waiting,
            reload_in_progress: self
                .reload
                .as_ref()
                .map(|r| r.progress(self.queued_reload.is_some())),
            last_reload: self.last_reload.clone(),
        }
    }
}

impl Slot {
    fn new(index: usize, spec: Arc<WorkerSpec>, generation: u64) -> Slot {
        Slot {
            index,
            worker: None,
            spec,
            generation,
            restarts: 0,
            consecutive_failures: 0,
            recent_failures: VecDeque::new(),
            restart_at: None,
            restart_seq: 0,
            last_exit: None,
        }
    }

    fn crash_looping(&self, max_restarts: u32) -> bool {
        self.recent_failures.len() as u32 > max_restarts
    }
}

fn aborted_report(generation: u64, reason: &str) -> ReloadReport {
    ReloadReport {
        generation,
        outcome: ReloadOutcome::Aborted,
        reason: Some(reason.to_string()),
        slots: vec![],
        duration_secs: 0.0,
    }
}
