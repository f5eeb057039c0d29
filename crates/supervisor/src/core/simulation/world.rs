//! The world around the core in a simulation: worker processes that start (or fail to), say
//! they are ready, crash at any point, drain when told and die when killed; deadlines that fire
//! when time passes; a config file that changes or breaks; memory samples; lease events; clients
//! waiting for answers. It carries out every action the core returns like the shell does, and
//! checks the invariants after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

mod settle;

use super::plan::{ConfigStep, LeaseStep, Setup, Step};
use crate::core::app::invariants::SlotView;
use crate::core::file::{AppRead, FileRead};
use crate::core::report::ReloadOutcome;
use crate::core::{
    Action, Answer, AppId, AppSettings, Core, Event, ExitStatus, LeaseEvent, Phase, ReplyTo, Route,
    Signal, SocketSet, TimerKey, WorkerId, WorkerState,
};

/// A worker process of the simulated machine.
#[derive(Debug, Clone, Copy)]
struct Proc {
    /// Told to stop (`SIGTERM`).
    termed: bool,
    /// The sockets it was started on, and its slot.
    on: (SocketSet, usize),
}

/// The simulated shell and machine around a [`Core`].
pub(crate) struct World {
    core: Core,
    now: Instant,
    setup: Vec<AppSettings>,
    /// Each app's `after` apps, by name (as the config file says them).
    after: BTreeMap<String, Vec<String>>,
    /// What the next config read returns.
    config: Result<Vec<AppSettings>, String>,
    spawn_fails: bool,
    next_pid: i32,
    procs: BTreeMap<WorkerId, Proc>,
    /// Exits of killed processes, reported at the next step (the pidfd watch is asynchronous).
    dying: Vec<WorkerId>,
    memory: BTreeMap<WorkerId, u64>,
    timers: BTreeMap<TimerKey, Instant>,
    next_reply: ReplyTo,
    /// Clients waiting for an answer, with what they asked.
    asked: BTreeMap<ReplyTo, &'static str>,
    answers: BTreeMap<ReplyTo, usize>,
    /// The generation each app serves from: the last reload that went through, or restart.
    good: BTreeMap<String, u64>,
    /// The newest app id by each name (a name added again after its removal gets a new one).
    ids: BTreeMap<String, AppId>,
    ids_seen: bool,
    next_token: u64,
    stopping: bool,
    exit: Option<Result<(), String>>,
    /// Workers whose process group was killed.
    killed: BTreeSet<WorkerId>,
    /// The last route of each open set of sockets of an app with a socket per slot.
    routes: BTreeMap<SocketSet, Route>,
    /// The last set of sockets bound for an app added by a reload.
    next_sockets: u64,
}

impl World {
    /// The core of `setup`, started.
    pub(crate) fn new(setup: &Setup) -> Result<World, String> {
        let settings: Vec<AppSettings> = setup.apps.iter().map(|(s, _)| s.clone()).collect();
        let after = setup
            .apps
            .iter()
            .map(|(s, after)| {
                let names = after
                    .iter()
                    .filter_map(|&i| settings.get(i).map(|a| a.spec.name.clone()))
                    .collect();
                (s.spec.name.clone(), names)
            })
            .collect();
        let mut w = World {
            after,
            core: Core::new(setup.apps.clone()),
            now: Instant::now(),
            config: Ok(settings.clone()),
            good: settings.iter().map(|s| (s.spec.name.clone(), 1)).collect(),
            ids: BTreeMap::new(),
            ids_seen: false,
            setup: settings,
            spawn_fails: false,
            next_pid: 100,
            procs: BTreeMap::new(),
            dying: Vec::new(),
            memory: BTreeMap::new(),
            timers: BTreeMap::new(),
            next_reply: 1,
            asked: BTreeMap::new(),
            answers: BTreeMap::new(),
            next_token: 1,
            stopping: false,
            exit: None,
            killed: BTreeSet::new(),
            routes: BTreeMap::new(),
            next_sockets: 1000,
        };
        w.feed(Event::Start)?;
        w.check()?;
        Ok(w)
    }

    /// Whether the supervisor has exited (nothing happens to it any more).
    pub(crate) fn exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Takes one step, then checks every invariant.
    pub(crate) fn step(&mut self, step: Step) -> Result<(), String> {
        if self.exit.is_some() {
            return Ok(());
        }
        for id in std::mem::take(&mut self.dying) {
            if self.procs.contains_key(&id) {
                self.exit_proc(id, ExitStatus::Signal(9))?;
            }
        }
        match step {
            Step::Ready(k) => {
                if let Some(id) = self.nth(k, |p| p.state() == Some(WorkerState::Starting)) {
                    self.feed(Event::Ready(id))?;
                }
            }
            Step::Crash(k, status) => {
                if let Some(id) = self.nth(k, |_| true) {
                    self.exit_proc(id, status)?;
                }
            }
            Step::Drained(k) => {
                if let Some(id) = self.nth(k, |p| p.termed()) {
                    self.exit_proc(id, ExitStatus::Code(0))?;
                }
            }
            Step::Status(k) => {
                if let Some(id) = self.nth(k, |_| true) {
                    self.feed(Event::StatusText(id, "busy".into()))?;
                }
            }
            Step::Advance(d) => self.advance(d)?,
            Step::Jump(d) => {
                self.now += d;
                self.advance(Duration::ZERO)?;
            }
            Step::Reload {
                app,
                client,
                wait,
                mode,
            } => {
                let app = app.map(|a| a % self.setup.len());
                let reply = client.then(|| self.ask("reload"));
                self.feed(Event::Reload {
                    app,
                    reply,
                    wait,
                    mode,
                })?;
            }
            Step::Restart(app) => {
                let reply = Some(self.ask("restart"));
                self.feed(Event::Restart {
                    app: app % self.setup.len(),
                    reply,
                })?;
            }
            Step::Scale(app, instances) => {
                let reply = Some(self.ask("scale"));
                self.feed(Event::Scale {
                    app: app % self.setup.len(),
                    instances,
                    reply,
                })?;
            }
            Step::Stop { client } => {
                self.stopping = true;
                let reply = client.then(|| self.ask("stop"));
                self.feed(Event::Stop { reply })?;
            }
            Step::FastStop => {
                self.stopping = true;
                self.feed(Event::FastStop)?;
            }
            Step::Memory(k, mb) => {
                if let Some(id) = self.nth(k, |_| true) {
                    self.memory.insert(id, mb << 20);
                }
            }
            Step::Lease(app, lease) => {
                let app = app % self.setup.len();
                let event = match lease {
                    LeaseStep::Acquired => {
                        self.next_token += 1;
                        LeaseEvent::Acquired {
                            token: self.next_token,
                            holder: "here:1".into(),
                        }
                    }
                    LeaseStep::Standby => LeaseEvent::Standby {
                        holder: Some(("there:2".into(), self.next_token)),
                    },
                    LeaseStep::Lost(left) => LeaseEvent::Lost {
                        expires_at: self.now + left,
                        reason: "renewal refused".into(),
                    },
                    LeaseStep::Released => LeaseEvent::Released,
                };
                self.feed(Event::Lease { app, event })?;
            }
            Step::Config(change) => self.config = self.config_after(change),
            Step::SpawnFails(fails) => self.spawn_fails = fails,
        }
        // A removed app's history goes with it: added again (a new id), it starts afresh.
        let mut newest: BTreeMap<String, AppId> = BTreeMap::new();
        for v in self.core.apps() {
            let id = newest.entry(v.app.name().to_string()).or_insert(v.app.id());
            *id = (*id).max(v.app.id());
        }
        for (name, id) in &newest {
            if self.ids.insert(name.clone(), *id) != Some(*id) && self.ids_seen {
                // What it started in is its last good generation.
                let start = self.core.app(*id).map_or(1, |a| a.generation());
                self.good.insert(name.clone(), start);
            }
        }
        self.ids.retain(|name, _| newest.contains_key(name));
        self.good.retain(|name, _| newest.contains_key(name));
        self.ids_seen = true;
        self.check()
    }

    /// What the config file says after `change`.
    fn config_after(&self, change: ConfigStep) -> Result<Vec<AppSettings>, String> {
        let n = self.setup.len();
        match change {
            ConfigStep::Original => Ok(self.setup.clone()),
            ConfigStep::Broken => Err("app[0].kill_timeout: must be greater than zero".into()),
            ConfigStep::Without(app) => {
                let mut apps = self.setup.clone();
                apps.remove(app % n);
                Ok(apps)
            }
            ConfigStep::Instances(app, instances) => {
                let mut apps = self.config.clone().unwrap_or_else(|_| self.setup.clone());
                if let Some(a) = apps
                    .iter_mut()
                    .find(|a| a.spec.name == format!("a{}", app % n))
                {
                    let spec = Arc::make_mut(&mut a.spec);
                    spec.instances = instances;
                    spec.args = vec![format!("v{instances}")];
                }
                Ok(apps)
            }
        }
    }

    /// A client asks something: its number.
    fn ask(&mut self, what: &'static str) -> ReplyTo {
        let to = self.next_reply;
        self.next_reply += 1;
        self.asked.insert(to, what);
        to
    }

    /// The k-th (modulo their number) live process for which `pick` holds.
    fn nth(&self, k: usize, pick: impl Fn(&Picked<'_>) -> bool) -> Option<WorkerId> {
        let ids: Vec<WorkerId> = self
            .procs
            .iter()
            .filter(|(id, proc)| {
                pick(&Picked {
                    world: self,
                    id: **id,
                    proc,
                })
            })
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[k % ids.len()])
    }

    fn core_state(&self, id: WorkerId) -> Option<WorkerState> {
        self.core.worker(id).map(|w| w.state)
    }

    /// Process `id` exited: the shell reports it.
    fn exit_proc(&mut self, id: WorkerId, status: ExitStatus) -> Result<(), String> {
        self.procs.remove(&id);
        self.memory.remove(&id);
        self.feed(Event::Exited { worker: id, status })
    }

    /// Moves time on by `d`, firing every deadline passed, in order.
    fn advance(&mut self, d: Duration) -> Result<(), String> {
        let until = self.now + d;
        loop {
            let due = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= until)
                .min_by_key(|(k, at)| (**at, **k))
                .map(|(k, at)| (*k, *at));
            let Some((key, at)) = due else { break };
            self.timers.remove(&key);
            self.now = self.now.max(at);
            self.feed(Event::Timer(key))?;
            if self.exit.is_some() {
                return Ok(());
            }
        }
        self.now = until;
        Ok(())
    }

    /// Hands `event` to the core and carries out what it asks, as the shell does, feeding back
    /// the events that produces.
    fn feed(&mut self, event: Event) -> Result<(), String> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!("EVENT {event:?}");
            }
            for action in self.core.handle(event, self.now) {
                if std::env::var_os("SIM_TRACE").is_some() {
                    eprintln!("  ACTION {action:?}");
                }
                self.act(action, &mut queue)?;
            }
        }
        Ok(())
    }

    fn act(&mut self, action: Action, queue: &mut VecDeque<Event>) -> Result<(), String> {
        match action {
            Action::Spawn {
                app,
                worker,
                slot,
                sockets,
                ..
            } => {
                if self.exit.is_some() {
                    return Err(format!("spawn of worker {worker} after the exit"));
                }
                if self.procs.contains_key(&worker) {
                    return Err(format!("worker id {worker} spawned twice"));
                }
                let phase = self.phase_of(app);
                if matches!(phase, Phase::Stopping | Phase::Stopped | Phase::Standby) {
                    return Err(format!("app {app} spawns worker {worker} while {phase}"));
                }
                if self.spawn_fails {
                    queue.push_back(Event::SpawnFailed {
                        worker,
                        error: "No such file or directory".into(),
                    });
                } else {
                    self.next_pid += 1;
                    self.procs.insert(
                        worker,
                        Proc {
                            termed: false,
                            on: (sockets, slot),
                        },
                    );
                    queue.push_back(Event::Spawned {
                        worker,
                        pid: self.next_pid,
                    });
                }
            }
            Action::Signal { worker, signal } => {
                if let Some(p) = self.procs.get_mut(&worker) {
                    match signal {
                        Signal::Term => p.termed = true,
                        Signal::KillGroup => {
                            self.killed.insert(worker);
                            self.dying.push(worker);
                        }
                    }
                }
            }
            Action::Arm { timer, at } => {
                if at < self.now {
                    return Err(format!("{timer:?} armed in the past"));
                }
                self.timers.insert(timer, at);
            }
            Action::Cancel(timer) => {
                self.timers.remove(&timer);
            }
            Action::ReadConfig => queue.push_back(Event::Config(self.file_read())),
            Action::SampleMemory => {
                let samples = self.memory.iter().map(|(w, b)| (*w, *b)).collect();
                queue.push_back(Event::Memory(samples));
            }
            Action::Reply { to, answer } => {
                if !self.asked.contains_key(&to) {
                    return Err(format!(
                        "an answer to client {to}, who asked nothing: {answer:?}"
                    ));
                }
                let n = self.answers.entry(to).or_default();
                *n += 1;
                if *n > 1 {
                    return Err(format!(
                        "client {to} ({}) answered twice, the second time: {answer:?}",
                        self.asked[&to]
                    ));
                }
                if let Answer::Restarted {
                    app, generation, ..
                } = &answer
                {
                    self.good.insert(app.clone(), *generation);
                }
            }
            Action::ReloadEnded(report) => {
                // A removed app drains while the same name may run again (added back): an Ok is
                // the running one's; an abort is checked only where the name is unambiguous.
                if report.outcome == ReloadOutcome::Ok {
                    self.good.insert(report.app.clone(), report.generation);
                    return Ok(());
                }
                let Some(serving) = self.generation_of(&report.app) else {
                    return Ok(());
                };
                let good = *self.good.entry(report.app.clone()).or_insert(serving);
                match report.outcome {
                    ReloadOutcome::Ok => {}
                    ReloadOutcome::Aborted | ReloadOutcome::RolledBack => {
                        if serving != good {
                            return Err(format!(
                                "reload of {} to generation {} aborted ({}), but the app is at \
                                 generation {serving}, not at the last good one, {}",
                                report.app,
                                report.generation,
                                report.reason.as_deref().unwrap_or(""),
                                good
                            ));
                        }
                    }
                    ReloadOutcome::Started | ReloadOutcome::Held => {}
                }
            }
            Action::Route { sockets, route } => {
                self.routes.insert(sockets, route);
            }
            Action::CloseSockets(set) => {
                self.routes.remove(&set);
            }
            Action::ReleaseLease(_)
            | Action::Service { .. }
            | Action::WatchLease(_)
            | Action::ConfigApplied(_) => {}
            Action::Exit(outcome) => {
                if self.exit.is_some() {
                    return Err("exited twice".into());
                }
                self.exit = Some(outcome);
            }
        }
        Ok(())
    }

    /// The config file as the core reads it: every app of [`World::config`], in file order. A
    /// running app keeps its sockets; one added (again) gets sockets bound now, as the shell
    /// binds them.
    fn file_read(&mut self) -> Result<FileRead, String> {
        let settings = self.config.clone()?;
        let mut apps = Vec::with_capacity(settings.len());
        for mut s in settings {
            let running = self
                .core
                .apps()
                .find(|v| !v.removing && v.app.name() == s.spec.name)
                .map(|v| v.app.settings().sockets);
            s.sockets = running.unwrap_or_else(|| {
                self.next_sockets += 1;
                SocketSet(self.next_sockets)
            });
            apps.push(AppRead {
                after: self.after.get(&s.spec.name).cloned().unwrap_or_default(),
                name: s.spec.name.clone(),
                settings: Ok(s),
                changed: Vec::new(),
            });
        }
        Ok(FileRead {
            apps,
            refused: Vec::new(),
        })
    }

    fn phase_of(&self, app: AppId) -> Phase {
        // By id: an app removed by a reload leaves the others' positions, not their ids.
        self.core.app(app).map_or(Phase::Stopped, |a| a.phase())
    }

    /// The generation an app (by name) serves from, while the core has it (and only one app
    /// by that name: while a removed app drains, the same name may be added again).
    fn generation_of(&self, name: &str) -> Option<u64> {
        let mut named = self.core.apps().filter(|v| v.app.name() == name);
        match (named.next(), named.next()) {
            (Some(v), None) => Some(v.app.snapshot(self.now).generation),
            _ => None,
        }
    }

    /// The invariants that hold after every step.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(outcome) = &self.exit {
            // Nothing more happens: whatever still runs must have been killed.
            if let Some(id) = self.procs.keys().find(|id| !self.killed.contains(id)) {
                return Err(format!(
                    "exited ({outcome:?}) with worker {id} still running and not killed"
                ));
            }
            return Ok(());
        }
        let mut known = BTreeSet::new();
        for view in self.core.apps() {
            let app = view.app;
            app.invariants()?;
            let snapshot = app.snapshot(self.now);
            let slots = app.slot_views();
            let mut active = 0;
            for (w, _) in &snapshot.workers {
                known.insert(w.id);
                if w.pid.is_some() && !self.procs.contains_key(&w.id) {
                    return Err(format!(
                        "{}: worker {} is gone, the core still has it",
                        app.name(),
                        w.id
                    ));
                }
                match w.state {
                    WorkerState::Draining => {
                        if !self.timers.contains_key(&TimerKey::Kill(w.id))
                            && !self.killed.contains(&w.id)
                        {
                            return Err(format!(
                                "{}: worker {} drains with no kill deadline armed and was not killed",
                                w.name, w.id
                            ));
                        }
                    }
                    state => {
                        active += 1;
                        let waits = state == WorkerState::Starting
                            && w.pid.is_some()
                            && !self.killed.contains(&w.id);
                        if waits && !self.timers.contains_key(&TimerKey::Ready(w.id)) {
                            return Err(format!(
                                "{}: worker {} is starting with no ready deadline",
                                w.name, w.id
                            ));
                        }
                    }
                }
            }
            // Never more workers than slots plus the surge.
            if active > slots.len() + app.surge() {
                return Err(format!(
                    "{}: {active} workers not draining for {} slots and a surge of {}",
                    app.name(),
                    slots.len(),
                    app.surge()
                ));
            }
            for (slot, s) in slots.iter().enumerate() {
                let key = TimerKey::Restart {
                    app: app.id(),
                    slot,
                };
                if *s == SlotView::BackingOff && !self.timers.contains_key(&key) {
                    return Err(format!(
                        "{}: slot {slot} backs off with no restart deadline",
                        app.name()
                    ));
                }
            }
        }
        self.check_routes()?;
        for id in self.procs.keys() {
            if !known.contains(id) {
                return Err(format!(
                    "worker {id} runs, but the core forgot it: an orphan"
                ));
            }
        }
        Ok(())
    }
}

impl World {
    /// With a socket per slot: no slot socket is closed under a worker that still runs on it,
    /// and new connections go only to slot sockets a worker accepts from (one not told to
    /// drain).
    fn check_routes(&self) -> Result<(), String> {
        for (set, route) in &self.routes {
            let on_set = || self.procs.iter().filter(move |(_, p)| p.on.0 == *set);
            // Any set of the app may share the address's slot sockets.
            let apps: BTreeSet<AppId> = on_set().map(|(id, _)| crate::core::app_of(*id)).collect();
            let mut of_app = self
                .procs
                .iter()
                .filter(|(id, _)| apps.contains(&crate::core::app_of(**id)));
            if let Some((id, p)) = of_app.find(|(_, p)| p.on.1 >= route.open) {
                return Err(format!(
                    "sockets {set:?}: slot {}'s socket is closed (open {}) under worker {id}, which still runs",
                    p.on.1, route.open
                ));
            }
            for slot in &route.serving {
                if !on_set().any(|(_, p)| p.on.1 == *slot && !p.termed) {
                    return Err(format!(
                        "sockets {set:?}: new connections go to slot {slot}'s socket, where no worker accepts ({route:?})"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A live process as [`World::nth`] shows it to its filter.
pub(crate) struct Picked<'a> {
    world: &'a World,
    id: WorkerId,
    proc: &'a Proc,
}

impl Picked<'_> {
    /// Its state in the core.
    fn state(&self) -> Option<WorkerState> {
        self.world.core_state(self.id)
    }

    /// Whether it was told to stop.
    fn termed(&self) -> bool {
        self.proc.termed
    }
}
