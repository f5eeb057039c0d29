//! The shell around the core: the one event loop that owns all state. It turns signals, control
//! requests, worker events, lease events and deadlines into [`Event`]s for the core, and carries
//! out the [`Action`]s the core returns, feeding back the events that carrying them out produces
//! (a spawn's outcome, a config read, a memory sample) until nothing is left. What each input
//! means lives beside it: [`super::control`] (requests), [`super::workers`] (worker processes),
//! [`super::upgrade`] (the in-place upgrade); this file is only the loop and the dispatch.

use std::collections::{HashMap, VecDeque};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Command;
use super::control::Replies;
use super::deadlines::Deadlines;
use super::leases::LeaseTasks;
use super::open::Opened;
use super::process::{Process, WorkerEvent};
use super::runtime_dir::RuntimeDir;
use super::sockets::Sockets;
use super::triggers::{Trigger, Triggers};
use super::upgrade::UpgradeState;
use super::views::Record;
use crate::config::Config;
use crate::control::registry::Registered;
use crate::control::server::{ControlRequest, ControlSocket};
use crate::core::report::ReloadMode;
use crate::core::{Action, AppId, Core, Event, LeaseEvent, ServiceState, SocketSet, WorkerId};
use crate::jobs::scheduler::ConfigJobs;
use crate::logs::Logs;
use crate::metrics::server::SnapshotRequest;
use crate::notify;
use crate::orphans::OwnChildren;
use crate::sys::procstat::CpuMeter;
use crate::sys::sdnotify;

/// The shell's state: the core and everything that carries its decisions out.
pub(super) struct Shell {
    /// The running config: the file as the supervisor started with it, then as the last
    /// reload applied it ([`super::config_read`]).
    pub(super) config: Config,
    /// The file as read last for a reload, until the core applies it.
    pub(super) last_read: Option<Config>,
    /// The apps' listening sockets, by the sets the core names.
    pub(super) sockets: Sockets,
    pub(super) core: Core,
    /// Every live worker's process, until it is reaped.
    pub(super) processes: HashMap<WorkerId, Process>,
    pub(super) deadlines: Deadlines,
    pub(super) replies: Replies,
    /// Where the worker processes' watch tasks report (the sender is cloned into each).
    pub(super) worker_tx: mpsc::UnboundedSender<(WorkerId, WorkerEvent)>,
    worker_rx: mpsc::UnboundedReceiver<(WorkerId, WorkerEvent)>,
    /// Set by the core's [`Action::Exit`]: the loop ends with it.
    pub(super) exit: Option<Result<(), String>>,
    pub(super) cpu: CpuMeter,
    pub(super) record: Record,
    pub(super) service: Service,
    pub(super) runtime_dir: RuntimeDir,
    /// The apps' cgroups (`[app.cgroup]`).
    pub(super) cgroups: super::cgroups::AppCgroups,
    /// Its own children that are not workers (`[[job]]` commands, the upgrade's preflight).
    pub(super) own_children: OwnChildren,
    /// A change in [`Shell::own_children`] (a job command ended: an upgrade may go on).
    pub(super) own_children_changed: watch::Receiver<u64>,
    /// The `[[job]]` scheduler (taken when the loop ends, to wait for its last runs).
    pub(super) jobs: Option<ConfigJobs>,
    pub(super) leases: LeaseTasks,
    pub(super) lease_events: mpsc::UnboundedReceiver<(AppId, LeaseEvent)>,
    pub(super) control: ControlSocket,
    pub(super) upgrade: UpgradeState,
    /// Its entry in the list `supervisor ls` reads (removed when the shell is dropped).
    pub(super) _registered: Option<Registered>,
    /// Written to once, when every app is first ready (`start -d` waits for it).
    detached_ready: Option<std::fs::File>,
    /// `watch` and `cron_restart`: the apps to reload by themselves.
    pub(super) triggers: Triggers,
    triggered: mpsc::UnboundedReceiver<Trigger>,
    /// Where the workers' output goes.
    pub(super) logs: Logs,
}

/// The inputs the loop reads besides its own channels.
pub(super) struct Inputs {
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) control: mpsc::Receiver<ControlRequest>,
    pub(super) snapshots: mpsc::Receiver<SnapshotRequest>,
}

/// The supervisor's own service manager (`NOTIFY_SOCKET` at start), what it was told last, and
/// its watchdog (`WatchdogSec=`): `WATCHDOG=1` four times per period, sent by the event loop
/// itself, so that a wedged loop is restarted by systemd.
#[derive(Debug, Default)]
pub(super) struct Service {
    pub(super) notifier: Option<sdnotify::Notifier>,
    told: Option<ServiceState>,
    watchdog: Option<std::time::Duration>,
    next_ping: Option<Instant>,
}

impl Service {
    /// Sends `WATCHDOG=1` if it is due, and says when the next one is.
    fn ping_watchdog(&mut self, now: Instant) {
        let (Some(n), Some(period)) = (&self.notifier, self.watchdog) else {
            return;
        };
        if self.next_ping.is_some_and(|at| now < at) {
            return;
        }
        if let Err(e) = n.send("WATCHDOG=1") {
            tracing::warn!(socket = %n.target, "cannot ping the service manager's watchdog: {e}");
        }
        self.next_ping = Some(now + period / 4);
    }

    /// Tells the service manager, if there is one.
    fn tell(&mut self, state: ServiceState, status: &str) {
        let Some(n) = &self.notifier else { return };
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
}

impl Shell {
    /// The shell over what [`super::open`] bound and started; the core is built from the config,
    /// or taken over from the previous binary when `opened` carries its state.
    pub(super) fn new(opened: Opened) -> (Shell, Inputs) {
        let Opened {
            config,
            listeners,
            registered,
            detached_ready,
            resume,
            service,
            runtime_dir,
            own_children,
            jobs,
            leases,
            lease_events,
            control,
            handover,
            inputs,
            metrics_server: _,
            logs,
        } = opened;
        let mut sockets = Sockets::default();
        if let Some(state) = &resume {
            let groups = state.groups.iter().map(|g| {
                let fds = g
                    .fds
                    .iter()
                    // SAFETY: slot sockets the previous binary handed over; ours alone.
                    .map(|fd| unsafe { crate::upgrade::inherited(*fd) })
                    .collect();
                (g.clone(), fds)
            });
            sockets.adopt_groups(groups.collect());
        }
        let sets: Vec<SocketSet> = config
            .apps
            .iter()
            .zip(listeners)
            .map(|(app, bound)| sockets.insert(app.listeners.clone(), bound))
            .collect();
        let bound: Vec<(SocketSet, &[crate::sys::listeners::BoundListener])> =
            sets.iter().map(|s| (*s, sockets.get(*s))).collect();
        let core = Core::new(super::reread::core_apps(&config, &bound));
        let own_children_changed = own_children.changes();
        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
        let (triggers, triggered) = Triggers::new();
        let mut shell = Shell {
            config,
            last_read: None,
            sockets,
            core,
            processes: HashMap::new(),
            deadlines: Deadlines::default(),
            replies: Replies::default(),
            worker_tx,
            worker_rx,
            exit: None,
            cpu: CpuMeter::default(),
            record: Record::starting(crate::upgrade::own_binary()),
            service: Service {
                watchdog: service.as_ref().and(sdnotify::watchdog_period()),
                notifier: service,
                told: None,
                next_ping: None,
            },
            runtime_dir,
            cgroups: Default::default(),
            own_children,
            own_children_changed,
            jobs: Some(jobs),
            leases,
            lease_events,
            control,
            upgrade: UpgradeState::new(handover),
            _registered: registered,
            detached_ready,
            triggers,
            triggered,
            logs,
        };
        if let Some(state) = resume {
            shell.adopt(state, sets);
        }
        (shell, inputs)
    }

    /// Serves events until the core says to exit: `Ok` once everything stopped, `Err` when the
    /// first start failed. `start`: begin with the first start (not after an upgrade).
    pub(super) async fn run(&mut self, inputs: &mut Inputs, start: bool) -> Result<(), String> {
        if start {
            self.feed(Event::Start);
        }
        self.triggers.sync(&self.config.apps);
        if let Some(period) = self.service.watchdog {
            tracing::info!(
                "service watchdog: WATCHDOG=1 every {}",
                crate::units::span(period / 4)
            );
        }
        loop {
            if let Some(outcome) = self.exit.take() {
                return outcome;
            }
            self.service.ping_watchdog(Instant::now());
            if self.upgrade_turn().await {
                continue;
            }
            let next = self.deadlines.next();
            let upgrade_at = self.upgrade.sequencer.deadline();
            let upgrading = self.upgrade.sequencer.is_pending();
            tokio::select! {
                Some(outcome) = self.upgrade.preflight_rx.recv() => self.preflight_done(outcome),
                () = sleep_until(upgrade_at) => {}
                Ok(()) = self.own_children_changed.changed(), if upgrading => {}
                Some(cmd) = inputs.commands.recv() => self.command(cmd),
                Some(req) = inputs.control.recv() => self.control(req),
                Some(reply) = inputs.snapshots.recv() => {
                    let _ = reply.send(self.metrics_snapshot());
                }
                Some((id, ev)) = self.worker_rx.recv() => self.worker_event(id, ev),
                Some((app, event)) = self.lease_events.recv() => self.feed(Event::Lease { app, event }),
                Some(t) = self.triggered.recv() => self.triggered(t),
                () = sleep_until(self.service.next_ping) => {}
                () = sleep_until(next) => {
                    for key in self.deadlines.due(Instant::now()) {
                        self.feed(Event::Timer(key));
                    }
                }
            }
        }
    }

    /// What a signal asks for.
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Reload => self.feed(Event::Reload {
                app: None,
                reply: None,
                wait: true,
                mode: ReloadMode::Rolling,
            }),
            Command::Stop => {
                self.triggers.clear();
                self.stop_jobs(false);
                self.feed(Event::Stop { reply: None });
            }
            Command::FastStop => {
                self.triggers.clear();
                self.stop_jobs(true);
                self.feed(Event::FastStop);
            }
            Command::ChildExited => self.sweep_orphans(None),
            Command::Upgrade => self.request_upgrade(None, None),
            Command::ReopenLogs => {
                let logs = self.logs.clone();
                tokio::spawn(async move {
                    let n = logs.reopen().await;
                    tracing::info!("log files reopened ({n} were open)");
                });
            }
        }
    }

    /// `watch` or `cron_restart` asks for a rolling reload of an app (not of a stopped one).
    fn triggered(&mut self, t: Trigger) {
        let Some(app) = self.core.app_named(&t.app) else {
            return;
        };
        if app.phase() == crate::core::Phase::Stopped {
            tracing::debug!(app = %t.app, "{}: the app is stopped: no reload", t.why);
            return;
        }
        let id = app.id();
        tracing::info!(app = %t.app, "{}: rolling reload", t.why);
        self.feed(Event::Reload {
            app: Some(id),
            reply: None,
            wait: true,
            mode: ReloadMode::Rolling,
        });
    }

    /// Hands `event` to the core and carries out what it decides, including the events that
    /// carrying it out produces, until nothing is left.
    pub(super) fn feed(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.core.handle(event, Instant::now()) {
                self.act(action, &mut queue);
            }
        }
    }

    /// Carries out one action; the events it produces go to `queue`.
    pub(super) fn act(&mut self, action: Action, queue: &mut VecDeque<Event>) {
        match action {
            Action::Spawn {
                app,
                worker,
                slot,
                generation,
                spec,
                sockets,
                fencing_token,
            } => queue.push_back(self.spawn(
                app,
                worker,
                slot,
                generation,
                spec,
                sockets,
                fencing_token,
            )),
            Action::Signal { worker, signal } => self.signal(worker, signal),
            Action::Arm { timer, at } => self.deadlines.arm(timer, at),
            Action::Cancel(timer) => self.deadlines.cancel(timer),
            Action::ReadConfig => queue.push_back(Event::Config(self.read_config())),
            Action::SampleMemory => queue.push_back(Event::Memory(self.sample_memory())),
            Action::Reply { to, answer } => self.answer(to, answer),
            Action::ReleaseLease(app) => self.leases.release(app),
            Action::WatchLease(app) => self.watch_lease(app),
            Action::CloseSockets(set) => self.sockets.close(set),
            Action::Route { sockets, route } => self.sockets.route(sockets, &route),
            Action::ConfigApplied(app) => self.config_applied(app.as_deref()),
            Action::Exit(outcome) => self.exit = Some(outcome),
            Action::Service { state, status } => {
                if state == ServiceState::Ready {
                    self.tell_detached_parent();
                }
                self.service.tell(state, &status)
            }
            Action::ReloadEnded(report) => self.record.metrics.reload_ended(&report),
        }
    }

    /// `start -d` waits for every app's first workers to be ready: one line on the pipe it gave,
    /// then the pipe is closed (a start that fails closes it without the line).
    fn tell_detached_parent(&mut self) {
        if let Some(mut pipe) = self.detached_ready.take() {
            use std::io::Write;
            let _ = writeln!(pipe, "ready {}", std::process::id());
        }
    }

    /// Supervisor stop: the `[[job]]` scheduler takes no new tick; `fast` kills running commands.
    pub(super) fn stop_jobs(&mut self, fast: bool) {
        if let Some(jobs) = &mut self.jobs {
            if fast {
                jobs.kill();
            } else {
                jobs.stop();
            }
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
