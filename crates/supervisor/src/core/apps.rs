//! The decisions across apps: start order (`after`), stopping in reverse order, a first start
//! that fails as a whole, apps stopped and started by hand, and which sets of sockets are still
//! in use. Each app's own rules live in [`super::app`]; the reload of every app, which applies
//! the whole file (apps added, removed, changed), in [`super::reload_all`]. This routes events to
//! the app they concern, by its [`AppId`], and turns what the apps report (a finished reload, a
//! stopped app, an app up) into answers and the next steps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tokio::time::Instant;

use super::adopt::AdoptedApp;
use super::app::{App, AppReport};
use super::reload_all::ReloadAll;
use super::{
    Action, Answer, AppId, AppSettings, Event, MEMORY_SAMPLE_INTERVAL, Phase, ReplyTo,
    ServiceState, SocketSet, Switched, TimerKey, Waiter, Worker, WorkerId, app_of,
};

/// One app for `status`.
#[derive(Debug)]
pub struct AppView<'a> {
    /// The app.
    pub app: &'a App,
    /// The apps it still waits for before it starts.
    pub waiting_for: Vec<String>,
    /// It was removed from the config file and drains before it is forgotten.
    pub removing: bool,
}

/// An app and what the core knows of it beyond the app itself.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) app: App,
    /// The apps it starts after.
    pub(super) after: Vec<AppId>,
    /// It has had every slot ready once (the apps after it may start).
    pub(super) up: bool,
    /// Removed from the file by a reload: it drains, and is forgotten once stopped.
    pub(super) removing: bool,
}

/// The state machine of the whole supervisor: its apps in the order of the running config (apps
/// being removed last), each known by a stable [`AppId`].
#[derive(Debug)]
pub struct Core {
    pub(super) apps: Vec<Entry>,
    /// The id the next app added gets.
    pub(super) next_app: AppId,
    pub(super) phase: Phase,
    /// Every app was up once: the supervisor is no longer starting (an app added later does
    /// not make it so again).
    was_up: bool,
    /// Apps still to stop, in order; the first is stopping.
    pub(super) stopping: VecDeque<AppId>,
    pub(super) stop_waiters: Vec<ReplyTo>,
    /// Stopped apps are being walked through ([`Core::advance_stop`]).
    pub(super) advancing_stop: bool,
    pub(super) reload_all: Option<ReloadAll>,
    /// A reload of every app asked for while one runs: once more after it, for these clients.
    pub(super) queued_all: Option<Vec<ReplyTo>>,
    /// An [`Action::ReadConfig`] is out: whoever else needs the file waits for that one read.
    pub(super) reading: bool,
    /// The sets of sockets open (bound and not closed yet), as far as the core knows.
    pub(super) open_sockets: BTreeSet<SocketSet>,
    /// The last [`Action::Route`] of each open set of an app with a socket per slot.
    pub(super) routes: BTreeMap<SocketSet, super::Route>,
    /// Whether [`TimerKey::MemorySample`] is armed.
    sampling: bool,
    /// The last [`Action::Service`] emitted.
    service: Option<(ServiceState, String)>,
    pub(super) out: Vec<Action>,
}

impl Core {
    /// The apps of a config, in file order (their ids are their positions), each with the ids
    /// of the apps it is `after`.
    pub fn new(apps: Vec<(AppSettings, Vec<AppId>)>) -> Core {
        let mut core = Core::empty();
        for (id, (settings, after)) in apps.into_iter().enumerate() {
            core.open_sockets.insert(settings.sockets);
            core.apps.push(Entry {
                app: App::new(id, settings),
                after,
                up: false,
                removing: false,
            });
        }
        core.next_app = core.apps.len();
        core
    }

    fn empty() -> Core {
        Core {
            apps: Vec::new(),
            next_app: 0,
            phase: Phase::Starting,
            was_up: false,
            stopping: VecDeque::new(),
            stop_waiters: Vec::new(),
            advancing_stop: false,
            reload_all: None,
            queued_all: None,
            reading: false,
            open_sockets: BTreeSet::new(),
            routes: BTreeMap::new(),
            sampling: false,
            service: None,
            out: Vec::new(),
        }
    }

    /// Why the supervisor cannot be handed over to an upgraded process now, if it cannot (see
    /// [`App::not_upgradable`]); `None` when it is settled: running, no reload under way.
    pub fn not_upgradable(&self) -> Option<String> {
        if self.phase != Phase::Running {
            return Some(format!("the supervisor is {}", self.phase));
        }
        if self.reload_all.is_some() || self.queued_all.is_some() {
            return Some("a reload is under way".into());
        }
        if let Some(e) = self.apps.iter().find(|e| e.removing) {
            return Some(format!("app {} is being removed", e.app.name()));
        }
        self.apps.iter().find_map(|e| e.app.not_upgradable())
    }

    /// A cluster singleton whose lease this host holds, if any: an upgrade does not wait for
    /// that to change.
    pub fn lease_held(&self) -> Option<&str> {
        self.apps
            .iter()
            .find(|e| e.app.holds_lease())
            .map(|e| e.app.name())
    }

    /// Every app as handed over at `now` (see [`App::export`]).
    pub fn export(&self, now: Instant) -> Vec<AdoptedApp> {
        self.apps.iter().map(|e| e.app.export(now)).collect()
    }

    /// The core of an upgraded supervisor: the apps of the config read again (as for
    /// [`Core::new`]: `after` by position in the file) taking over `adopted`, matched by name,
    /// each keeping the id it had (a handover without ids numbered them in its order); an app
    /// missing from it starts afresh with a new id. Returns the deadlines to arm again and the
    /// first service status.
    pub fn adopt(
        apps: Vec<(AppSettings, Vec<usize>)>,
        adopted: Vec<AdoptedApp>,
        now: Instant,
    ) -> (Core, Vec<Action>) {
        let mut me = Core::empty();
        let names: Vec<&str> = apps.iter().map(|(s, _)| s.spec.name.as_str()).collect();
        let ids = super::adopt::adopted_ids(&names, &adopted);
        let mut adopted: Vec<Option<AdoptedApp>> = adopted.into_iter().map(Some).collect();
        let mut afters = Vec::with_capacity(apps.len());
        for ((settings, after), id) in apps.into_iter().zip(ids.iter().copied()) {
            let state = adopted
                .iter_mut()
                .find(|a| a.as_ref().is_some_and(|a| a.name == settings.spec.name))
                .and_then(Option::take);
            me.open_sockets.insert(settings.sockets);
            let app = match state {
                Some(state) => App::adopt(id, settings, state, now),
                None => App::added(id, settings),
            };
            afters.push(after);
            me.apps.push(Entry {
                up: app.phase() != Phase::Waiting,
                app,
                after: Vec::new(),
                removing: false,
            });
        }
        for (entry, after) in me.apps.iter_mut().zip(afters) {
            entry.after = after
                .into_iter()
                .filter_map(|p| ids.get(p).copied())
                .collect();
        }
        me.next_app = ids.iter().map(|id| id + 1).max().unwrap_or(0);
        me.phase = Phase::Running;
        me.was_up = true;
        for id in ids {
            me.collect(id, now);
        }
        me.after_event(now);
        let out = std::mem::take(&mut me.out);
        (me, out)
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Start => {
                if self.phase == Phase::Starting {
                    self.phase = Phase::Running;
                }
            }
            Event::Spawned { worker, .. }
            | Event::SpawnFailed { worker, .. }
            | Event::Ready(worker)
            | Event::StatusText(worker, _)
            | Event::Watchdog { worker, .. }
            | Event::LoopLag(worker, _)
            | Event::Exited { worker, .. } => self.route(app_of(worker), event, now),
            Event::Timer(key) => match key {
                TimerKey::Ready(id)
                | TimerKey::Kill(id)
                | TimerKey::Watchdog(id)
                | TimerKey::Drain(id) => self.route(app_of(id), Event::Timer(key), now),
                TimerKey::Restart { app, .. } | TimerKey::CanaryHold { app, .. } => {
                    self.route(app, Event::Timer(key), now)
                }
                TimerKey::MemorySample => {
                    self.sampling = false;
                    if self.wants_memory_samples() {
                        self.out.push(Action::SampleMemory);
                    }
                }
            },
            Event::Memory(samples) => {
                let ids: Vec<AppId> = self.apps.iter().map(|e| e.app.id()).collect();
                for id in ids {
                    let mine = samples
                        .iter()
                        .filter(|(w, _)| app_of(*w) == id)
                        .copied()
                        .collect();
                    self.route(id, Event::Memory(mine), now);
                }
            }
            Event::Reload {
                app,
                reply,
                wait,
                mode,
            } => self.reload(app, reply, wait, mode, now),
            Event::Config(read) => self.config_read(read, now),
            Event::Restart { app, reply } => self.route(app, Event::Restart { app, reply }, now),
            Event::Scale {
                app,
                instances,
                reply,
            } => self.route(
                app,
                Event::Scale {
                    app,
                    instances,
                    reply,
                },
                now,
            ),
            Event::Lease { app, event } => self.route(app, Event::Lease { app, event }, now),
            Event::Stop { reply } => self.stop(reply, false, now),
            Event::FastStop => {
                tracing::warn!("fast stop: killing every worker");
                self.stop(None, true, now);
            }
            Event::StopApp { app, reply } => {
                self.by_hand(app, reply, now, |app, reply| Event::StopApp { app, reply })
            }
            Event::StartApp {
                app,
                sockets,
                reply,
            } => {
                // Bound for it: closed again below if it does not take them up.
                self.open_sockets.insert(sockets);
                self.by_hand(app, reply, now, |app, reply| Event::StartApp {
                    app,
                    sockets,
                    reply,
                });
            }
            Event::Reset {
                app: Some(app),
                reply,
            } => self.route(
                app,
                Event::Reset {
                    app: Some(app),
                    reply,
                },
                now,
            ),
            Event::Reset { app: None, reply } => {
                let ids: Vec<AppId> = self.apps.iter().map(|e| e.app.id()).collect();
                for id in &ids {
                    self.route(
                        *id,
                        Event::Reset {
                            app: None,
                            reply: None,
                        },
                        now,
                    );
                }
                let apps = self.apps.iter().map(|e| e.app.name().to_string()).collect();
                self.answer(reply, Answer::Switched(Switched::Reset { apps }));
            }
        }
        self.after_event(now);
        std::mem::take(&mut self.out)
    }

    /// What follows every event: apps that may start do, the memory sample is armed or not,
    /// sockets nobody uses are closed, the service manager hears of a change.
    fn after_event(&mut self, now: Instant) {
        self.start_apps_that_may(now);
        self.schedule_memory_sample(now);
        self.close_unused_sockets();
        self.routes_changed();
        self.service_changed();
    }

    /// `stop APP` and `start APP`: refused while the supervisor stops, or for an app being
    /// removed; otherwise the app's.
    fn by_hand(
        &mut self,
        app: AppId,
        reply: Option<ReplyTo>,
        now: Instant,
        event: impl FnOnce(AppId, Option<ReplyTo>) -> Event,
    ) {
        let refused = if self.phase != Phase::Running {
            Some("the supervisor is stopping".to_string())
        } else {
            self.entry(app).filter(|e| e.removing).map(|e| {
                format!(
                    "{} was removed from the config file and is stopping",
                    e.app.name()
                )
            })
        };
        match refused {
            Some(why) => self.answer(reply, Answer::Refused(why)),
            None => self.route(app, event(app, reply), now),
        }
    }

    /// Whether worker memory is to be measured (and ages checked, on the same tick): while
    /// running, with some app's `max_memory` or `max_age`.
    fn wants_memory_samples(&self) -> bool {
        self.phase == Phase::Running
            && self
                .apps
                .iter()
                .any(|e| e.app.max_memory().is_some() || e.app.max_age().is_some())
    }

    /// Keeps [`TimerKey::MemorySample`] armed exactly while memory is to be measured (a reload
    /// may add or remove the last `max_memory`; a stop ends it).
    fn schedule_memory_sample(&mut self, now: Instant) {
        let wanted = self.wants_memory_samples();
        if wanted && !self.sampling {
            self.out.push(Action::Arm {
                timer: TimerKey::MemorySample,
                at: super::later(now, MEMORY_SAMPLE_INTERVAL),
            });
        } else if !wanted && self.sampling {
            self.out.push(Action::Cancel(TimerKey::MemorySample));
        }
        self.sampling = wanted;
    }

    /// What the supervisor as a whole is doing: starting until every app was up once, then ready
    /// or reloading, then stopping.
    pub fn service_state(&self) -> ServiceState {
        match self.phase {
            Phase::Stopping | Phase::Stopped => ServiceState::Stopping,
            _ if !self.was_up => ServiceState::Starting,
            _ if self.reload_all.is_some()
                || self.queued_all.is_some()
                || self
                    .apps
                    .iter()
                    .any(|e| e.app.reload_generation().is_some()) =>
            {
                ServiceState::Reloading
            }
            _ => ServiceState::Ready,
        }
    }

    /// One line on every app, for a service manager's status: `demo: 2/2 ready, api: 4/4 ready`,
    /// `reloading demo (generation 3); ...`, `stopping: 3 workers left`.
    pub fn status_line(&self) -> String {
        let apps = || {
            self.apps()
                .map(|v| {
                    let a = v.app;
                    if v.removing {
                        format!("{}: removed, {} worker(s) left", a.name(), a.worker_count())
                    } else if a.phase() == Phase::Waiting {
                        format!("{}: waiting for {}", a.name(), v.waiting_for.join(", "))
                    } else if a.phase() == Phase::Stopped {
                        format!("{}: stopped", a.name())
                    } else {
                        let (ready, slots) = a.ready_slots();
                        format!("{}: {ready}/{slots} ready", a.name())
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.service_state() {
            ServiceState::Starting => format!("starting; {}", apps()),
            ServiceState::Ready => apps(),
            ServiceState::Reloading => {
                let mut reloading: Vec<String> = self
                    .apps
                    .iter()
                    .filter_map(|e| {
                        let g = e.app.reload_generation()?;
                        Some(format!("{} (generation {g})", e.app.name()))
                    })
                    .collect();
                // The file is being read for a reload of every app: the first app to roll.
                if reloading.is_empty() && self.reload_all.as_ref().is_some_and(|a| a.reading()) {
                    reloading.extend(
                        self.apps
                            .iter()
                            .find(|e| {
                                !e.removing
                                    && matches!(e.app.phase(), Phase::Running | Phase::Standby)
                            })
                            .map(|e| {
                                format!("{} (generation {})", e.app.name(), e.app.next_generation())
                            }),
                    );
                }
                if reloading.is_empty() {
                    format!("reloading; {}", apps())
                } else {
                    format!("reloading {}; {}", reloading.join(", "), apps())
                }
            }
            ServiceState::Stopping => {
                let left: usize = self.apps.iter().map(|e| e.app.worker_count()).sum();
                format!("stopping: {left} worker(s) left")
            }
        }
    }

    /// Emits [`Action::Service`] when the state or the status line changed since the last one.
    fn service_changed(&mut self) {
        if !self.was_up && self.apps.iter().all(|e| e.up || e.removing) {
            self.was_up = true;
        }
        let now = (self.service_state(), self.status_line());
        if self.service.as_ref() != Some(&now) {
            self.out.push(Action::Service {
                state: now.0,
                status: now.1.clone(),
            });
            self.service = Some(now);
        }
    }

    /// The apps, in the order of the running config (those being removed last).
    pub fn apps(&self) -> impl Iterator<Item = AppView<'_>> {
        self.apps.iter().map(|e| AppView {
            app: &e.app,
            waiting_for: if e.app.phase() == Phase::Waiting {
                e.after
                    .iter()
                    .filter_map(|d| self.entry(*d))
                    .filter(|d| !d.up)
                    .map(|d| d.app.name().to_string())
                    .collect()
            } else {
                Vec::new()
            },
            removing: e.removing,
        })
    }

    /// The app named `name` (not one being removed).
    pub fn app_named(&self, name: &str) -> Option<&App> {
        self.apps
            .iter()
            .find(|e| !e.removing && e.app.name() == name)
            .map(|e| &e.app)
    }

    /// The app `id`, while the core knows it.
    pub fn app(&self, id: AppId) -> Option<&App> {
        self.entry(id).map(|e| &e.app)
    }

    pub(super) fn entry(&self, id: AppId) -> Option<&Entry> {
        self.apps.iter().find(|e| e.app.id() == id)
    }

    pub(super) fn entry_mut(&mut self, id: AppId) -> Option<&mut Entry> {
        self.apps.iter_mut().find(|e| e.app.id() == id)
    }

    /// A worker by id.
    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.app(app_of(id))?.worker(id)
    }

    /// Whether any worker of any app is draining (a reload or a stop is still settling).
    pub fn any_draining(&self) -> bool {
        self.apps.iter().any(|e| e.app.has_draining())
    }

    /// The supervisor's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub(super) fn route(&mut self, id: AppId, event: Event, now: Instant) {
        let Some(e) = self.entry_mut(id) else {
            // The app is gone (removed by a reload since the request named it): a waiting
            // client is told so, never left waiting.
            let reply = match &event {
                Event::Restart { reply, .. }
                | Event::Scale { reply, .. }
                | Event::Reset { reply, .. }
                | Event::StopApp { reply, .. }
                | Event::StartApp { reply, .. } => *reply,
                _ => None,
            };
            self.answer(
                reply,
                Answer::Refused(format!("app {id} is no longer run (a reload removed it)")),
            );
            return;
        };
        e.app.handle(event, now);
        self.collect(id, now);
    }

    /// Takes app `id`'s actions and passes them on (one config read at a time), then acts on
    /// what it reports (a finished reload, a stopped app, an app up, a failed first start).
    pub(super) fn collect(&mut self, id: AppId, now: Instant) {
        let Some(e) = self.entry_mut(id) else {
            return;
        };
        let actions = e.app.take_actions();
        let reports = e.app.take_reports();
        if !e.up && e.app.is_up() {
            e.up = true;
        }
        for action in actions {
            match action {
                Action::ReadConfig => self.read_config(),
                other => self.out.push(other),
            }
        }
        for report in reports {
            match report {
                AppReport::Reloaded { report, waiters } => {
                    self.out.push(Action::ReloadEnded(report.clone()));
                    self.reloaded(id, report, waiters, now);
                }
                AppReport::Refused { report, waiters } => {
                    let why = report.reason.clone().unwrap_or_default();
                    let (clients, every): (Vec<Waiter>, Vec<Waiter>) = waiters
                        .into_iter()
                        .partition(|w| matches!(w, Waiter::Client(_)));
                    for waiter in clients {
                        if let Waiter::Client(to) = waiter {
                            self.answer(Some(to), Answer::Refused(why.clone()));
                        }
                    }
                    if !every.is_empty() {
                        self.reloaded(id, report, every, now);
                    }
                }
                AppReport::Held { report, waiters } => {
                    for waiter in waiters {
                        if let Waiter::Client(to) = waiter {
                            let answer = Answer::Reload(vec![report.clone()]);
                            self.out.push(Action::Reply { to, answer });
                        }
                    }
                }
                AppReport::Stopped => self.app_stopped(id, now),
                AppReport::StartFailed(reason) => self.start_failed(id, reason, now),
                AppReport::Started { waiters, outcome } => {
                    self.app_started(id, waiters, outcome, now)
                }
            }
        }
    }

    /// Asks for the config file, unless a read is out already (everyone waiting gets that one).
    pub(super) fn read_config(&mut self) {
        if !self.reading {
            self.reading = true;
            self.out.push(Action::ReadConfig);
        }
    }

    /// Starts every app still waiting whose `after` apps are all up; tells the clients waiting
    /// for one whose `after` apps are stopped that it waits.
    fn start_apps_that_may(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        loop {
            let ready = self.apps.iter().find(|e| {
                !e.removing
                    && e.app.phase() == Phase::Waiting
                    && e.after.iter().all(|d| self.entry(*d).is_none_or(|d| d.up))
            });
            let Some(id) = ready.map(|e| e.app.id()) else {
                break;
            };
            tracing::info!(app = %self.entry(id).map_or("", |e| e.app.name()), "starting");
            self.route(id, Event::Start, now);
        }
        // An app that waits for apps stopped by hand waits until they are started: its clients
        // are told so instead of waiting for ever.
        let stuck: Vec<(AppId, Vec<String>)> = self
            .apps
            .iter()
            .filter(|e| e.app.phase() == Phase::Waiting && e.app.has_start_waiters())
            .map(|e| {
                let stopped = e
                    .after
                    .iter()
                    .filter_map(|d| self.entry(*d))
                    .filter(|d| !d.up && matches!(d.app.phase(), Phase::Stopped | Phase::Stopping))
                    .map(|d| d.app.name().to_string())
                    .collect();
                (e.app.id(), stopped)
            })
            .filter(|(_, stopped): &(AppId, Vec<String>)| !stopped.is_empty())
            .collect();
        for (id, stopped) in stuck {
            if let Some(e) = self.entry_mut(id) {
                e.app.answer_waiting(format!(
                    "waiting for {} (stopped): it starts once {} started",
                    stopped.join(", "),
                    if stopped.len() == 1 {
                        "that app is"
                    } else {
                        "those apps are"
                    }
                ));
            }
            self.collect(id, now);
        }
    }

    /// App `id` was started (by hand, or added by a reload): its clients get the outcome.
    fn app_started(
        &mut self,
        id: AppId,
        waiters: Vec<Waiter>,
        outcome: Result<(Vec<i32>, Option<String>), String>,
        now: Instant,
    ) {
        let name = self
            .app(id)
            .map(|a| a.name().to_string())
            .unwrap_or_default();
        for waiter in waiters {
            match waiter {
                Waiter::Client(to) => {
                    let answer = match &outcome {
                        Ok((pids, note)) => Answer::Switched(Switched::Started {
                            app: name.clone(),
                            pids: pids.clone(),
                            already: false,
                            note: note.clone(),
                        }),
                        Err(why) => Answer::Refused(why.clone()),
                    };
                    self.out.push(Action::Reply { to, answer });
                }
                Waiter::EveryApp => self.added_app_started(id, outcome.clone(), now),
            }
        }
    }

    pub(super) fn answer(&mut self, reply: Option<ReplyTo>, answer: Answer) {
        if let Some(to) = reply {
            self.out.push(Action::Reply { to, answer });
        }
    }
}
