//! The decisions across apps: start order (`after`), reloading every app one at a time, stopping
//! in reverse order, and a first start that fails as a whole. Each app's own rules live in
//! [`super::app`]; this routes events to the app they concern and turns what the apps report
//! (a finished reload, a stopped app) into answers and the next steps.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::adopt::AdoptedApp;
use super::app::{App, AppReport};
use super::report::{ReloadOutcome, ReloadReport};
use super::{
    Action, Answer, AppIndex, AppSettings, Event, MEMORY_SAMPLE_INTERVAL, Phase, ReplyTo,
    ServiceState, TimerKey, Waiter, Worker, WorkerId, app_of,
};

/// A reload of every app, one at a time.
#[derive(Debug)]
struct ReloadAll {
    queue: VecDeque<AppIndex>,
    /// The app reloading for it ([`Waiter::EveryApp`] waits for its report).
    current: Option<AppIndex>,
    reports: Vec<ReloadReport>,
    waiters: Vec<ReplyTo>,
}

/// One app for `status`.
#[derive(Debug)]
pub struct AppView<'a> {
    /// The app.
    pub app: &'a App,
    /// The apps it still waits for before it starts.
    pub waiting_for: Vec<String>,
}

/// The state machine of the whole supervisor: its apps in file order.
#[derive(Debug)]
pub struct Core {
    apps: Vec<App>,
    after: Vec<Vec<AppIndex>>,
    /// Whether an app has had every slot ready once (the apps after it may start).
    up: Vec<bool>,
    phase: Phase,
    /// Apps still to stop, in order; the first is stopping.
    stopping: VecDeque<AppIndex>,
    stop_waiters: Vec<ReplyTo>,
    reload_all: Option<ReloadAll>,
    /// A reload of every app asked for while one runs: once more after it, for these clients.
    queued_all: Option<Vec<ReplyTo>>,
    /// Whether [`TimerKey::MemorySample`] is armed.
    sampling: bool,
    /// The last [`Action::Service`] emitted.
    service: Option<(ServiceState, String)>,
    out: Vec<Action>,
}

impl Core {
    /// The apps of a config, in file order, each with the indices of the apps it is `after`.
    pub fn new(apps: Vec<(AppSettings, Vec<AppIndex>)>) -> Core {
        let n = apps.len();
        let (apps, after): (Vec<App>, Vec<Vec<AppIndex>>) = apps
            .into_iter()
            .enumerate()
            .map(|(i, (settings, after))| (App::new(i, settings), after))
            .unzip();
        Core {
            apps,
            after,
            up: vec![false; n],
            phase: Phase::Starting,
            stopping: VecDeque::new(),
            stop_waiters: Vec::new(),
            reload_all: None,
            queued_all: None,
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
        self.apps.iter().find_map(App::not_upgradable)
    }

    /// A cluster singleton whose lease this host holds, if any: an upgrade does not wait for
    /// that to change.
    pub fn lease_held(&self) -> Option<&str> {
        self.apps.iter().find(|a| a.holds_lease()).map(App::name)
    }

    /// Every app as handed over at `now` (see [`App::export`]).
    pub fn export(&self, now: Instant) -> Vec<AdoptedApp> {
        self.apps.iter().map(|a| a.export(now)).collect()
    }

    /// The core of an upgraded supervisor: the apps of the config read again (as for
    /// [`Core::new`]) taking over `adopted`, matched by name; an app missing from it
    /// starts afresh. Returns the deadlines to arm again and the first service status.
    pub fn adopt(
        apps: Vec<(AppSettings, Vec<AppIndex>)>,
        adopted: Vec<AdoptedApp>,
        now: Instant,
    ) -> (Core, Vec<Action>) {
        let mut me = Core::new(Vec::new());
        let mut adopted = adopted;
        for (i, (settings, after)) in apps.into_iter().enumerate() {
            let state = adopted
                .iter()
                .position(|a| a.name == settings.spec.name)
                .map(|p| adopted.remove(p));
            let app = match state {
                Some(state) => App::adopt(i, settings, state, now),
                None => App::new(i, settings),
            };
            me.up.push(app.phase() != Phase::Waiting);
            me.apps.push(app);
            me.after.push(after);
        }
        me.phase = Phase::Running;
        for i in 0..me.apps.len() {
            me.collect(i, now);
        }
        me.start_apps_that_may(now);
        me.schedule_memory_sample(now);
        me.service_changed();
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
            | Event::Exited { worker, .. } => self.route(app_of(worker), event, now),
            Event::Timer(key) => match key {
                TimerKey::Ready(id) | TimerKey::Kill(id) => {
                    self.route(app_of(id), Event::Timer(key), now)
                }
                TimerKey::Restart { app, .. } => self.route(app, Event::Timer(key), now),
                TimerKey::MemorySample => {
                    self.sampling = false;
                    if self.wants_memory_samples() {
                        self.out.push(Action::SampleMemory);
                    }
                }
            },
            Event::Memory(samples) => {
                for i in 0..self.apps.len() {
                    let mine = samples
                        .iter()
                        .filter(|(id, _)| app_of(*id) == i)
                        .copied()
                        .collect();
                    self.route(i, Event::Memory(mine), now);
                }
            }
            Event::Reload { app, reply, wait } => self.reload(app, reply, wait, now),
            Event::Config(settings) => self.config_read(settings, now),
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
        }
        self.start_apps_that_may(now);
        self.schedule_memory_sample(now);
        self.service_changed();
        std::mem::take(&mut self.out)
    }

    /// Whether worker memory is to be measured: while running, with some app's `max_memory`.
    fn wants_memory_samples(&self) -> bool {
        self.phase == Phase::Running && self.apps.iter().any(|a| a.max_memory().is_some())
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
            _ if !self.up.iter().all(|u| *u) => ServiceState::Starting,
            _ if self.reload_all.is_some()
                || self.queued_all.is_some()
                || self.apps.iter().any(|a| a.reload_generation().is_some()) =>
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
            self.apps
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if a.phase() == Phase::Waiting {
                        let names: Vec<&str> = self.after[i]
                            .iter()
                            .filter(|d| !self.up[**d])
                            .map(|d| self.apps[*d].name())
                            .collect();
                        format!("{}: waiting for {}", a.name(), names.join(", "))
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
                let reloading: Vec<String> = self
                    .apps
                    .iter()
                    .filter_map(|a| {
                        let g = a.reload_generation()?;
                        Some(format!("{} (generation {g})", a.name()))
                    })
                    .collect();
                if reloading.is_empty() {
                    format!("reloading; {}", apps())
                } else {
                    format!("reloading {}; {}", reloading.join(", "), apps())
                }
            }
            ServiceState::Stopping => {
                let left: usize = self.apps.iter().map(App::worker_count).sum();
                format!("stopping: {left} worker(s) left")
            }
        }
    }

    /// Emits [`Action::Service`] when the state or the status line changed since the last one.
    fn service_changed(&mut self) {
        let now = (self.service_state(), self.status_line());
        if self.service.as_ref() != Some(&now) {
            self.out.push(Action::Service {
                state: now.0,
                status: now.1.clone(),
            });
            self.service = Some(now);
        }
    }

    /// The apps, in file order.
    pub fn apps(&self) -> impl Iterator<Item = AppView<'_>> {
        self.apps.iter().enumerate().map(|(i, app)| AppView {
            app,
            waiting_for: if app.phase() == Phase::Waiting {
                self.after[i]
                    .iter()
                    .filter(|d| !self.up[**d])
                    .map(|d| self.apps[*d].name().to_string())
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    /// A worker by id.
    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.apps.get(app_of(id))?.worker(id)
    }

    /// Whether any worker of any app is draining (a reload or a stop is still settling).
    pub fn any_draining(&self) -> bool {
        self.apps.iter().any(App::has_draining)
    }

    /// The supervisor's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn route(&mut self, i: AppIndex, event: Event, now: Instant) {
        let Some(app) = self.apps.get_mut(i) else {
            return;
        };
        app.handle(event, now);
        self.collect(i, now);
    }

    /// Takes app `i`'s actions and passes them on, then acts on what it reports (a finished
    /// reload, a stopped app, a failed first start).
    fn collect(&mut self, i: AppIndex, now: Instant) {
        let actions = self.apps[i].take_actions();
        self.out.extend(actions);
        for report in self.apps[i].take_reports() {
            match report {
                AppReport::Reloaded { report, waiters } => {
                    self.out.push(Action::ReloadEnded(report.clone()));
                    self.reloaded(i, report, waiters, now);
                }
                AppReport::Stopped => self.app_stopped(i, now),
                AppReport::StartFailed(reason) => self.start_failed(i, reason, now),
            }
        }
        if !self.up[i] && self.apps[i].is_up() {
            self.up[i] = true;
        }
    }

    /// Starts every app still waiting whose `after` apps are all up.
    fn start_apps_that_may(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        loop {
            let ready = (0..self.apps.len()).find(|&i| {
                self.apps[i].phase() == Phase::Waiting && self.after[i].iter().all(|d| self.up[*d])
            });
            let Some(i) = ready else { return };
            tracing::info!(app = %self.apps[i].name(), "starting");
            self.route(i, Event::Start, now);
        }
    }

    // ---- reload ----

    /// A reload of app `app`, or of every app. A client that waits is answered when it ended;
    /// one that does not, at once: each app's reload started, towards which generation.
    fn reload(&mut self, app: Option<AppIndex>, reply: Option<ReplyTo>, wait: bool, now: Instant) {
        let waiter = reply.filter(|_| wait);
        match app {
            Some(i) => {
                if let Some(a) = self.apps.get_mut(i) {
                    a.request_reload(waiter.map(Waiter::Client));
                    self.collect(i, now);
                }
            }
            None => self.reload_every_app(waiter, now),
        }
        if let (Some(to), false) = (reply, wait) {
            let reports = self
                .apps
                .iter()
                .enumerate()
                .filter(|(i, _)| app.is_none_or(|a| a == *i))
                .map(|(_, a)| a.started_report())
                .collect();
            self.answer(Some(to), Answer::Reload(reports));
        }
    }

    fn reload_every_app(&mut self, reply: Option<ReplyTo>, now: Instant) {
        if self.phase != Phase::Running {
            self.answer(reply, Answer::Refused("the supervisor is stopping".into()));
            return;
        }
        if self.reload_all.is_some() {
            tracing::info!(
                "reload of every app requested while one runs: queued to run once after it"
            );
            self.queued_all.get_or_insert_with(Vec::new).extend(reply);
            return;
        }
        let queue = (0..self.apps.len())
            .filter(|&i| self.apps[i].phase() != Phase::Waiting)
            .collect();
        self.reload_all = Some(ReloadAll {
            queue,
            current: None,
            reports: Vec::new(),
            waiters: reply.into_iter().collect(),
        });
        self.next_in_reload_all(now);
    }

    /// Reloads the next app of the reload of every app, or answers when none is left.
    fn next_in_reload_all(&mut self, now: Instant) {
        let Some(all) = &mut self.reload_all else {
            return;
        };
        if let Some(i) = all.queue.pop_front() {
            all.current = Some(i);
            self.apps[i].request_reload(Some(Waiter::EveryApp));
            self.collect(i, now);
            return;
        }
        let Some(all) = self.reload_all.take() else {
            return;
        };
        for to in all.waiters {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Reload(all.reports.clone()),
            });
        }
        if let Some(waiters) = self.queued_all.take() {
            let mut first = waiters.into_iter();
            self.reload_every_app(first.next(), now);
            if let Some(all) = &mut self.reload_all {
                all.waiters.extend(first);
            }
        }
    }

    /// App `i`'s reload ended: answer its clients, or go on with the reload of every app.
    fn reloaded(&mut self, i: AppIndex, report: ReloadReport, waiters: Vec<Waiter>, now: Instant) {
        let mut next = false;
        for waiter in waiters {
            match waiter {
                Waiter::Client(to) => self.out.push(Action::Reply {
                    to,
                    answer: Answer::Reload(vec![report.clone()]),
                }),
                Waiter::EveryApp => {
                    if let Some(all) = &mut self.reload_all
                        && all.current == Some(i)
                    {
                        all.reports.push(report.clone());
                        all.current = None;
                        next = true;
                    }
                }
            }
        }
        if next {
            self.next_in_reload_all(now);
        }
    }

    /// The config file was read again: every app waiting for it gets its part.
    fn config_read(&mut self, settings: Result<Vec<AppSettings>, String>, now: Instant) {
        for i in 0..self.apps.len() {
            if !self.apps[i].wants_config() {
                continue;
            }
            let mine = match &settings {
                Err(e) => Err(e.clone()),
                Ok(all) => all
                    .iter()
                    .find(|s| s.spec.name == self.apps[i].name())
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "app {:?} is no longer in the config file (adding or removing apps needs a restart)",
                            self.apps[i].name()
                        )
                    }),
            };
            self.apps[i].config_read(mine, now);
            self.collect(i, now);
        }
    }

    // ---- stop ----

    fn stop(&mut self, reply: Option<ReplyTo>, fast: bool, now: Instant) {
        if self.phase == Phase::Stopped {
            // Done already (the shell is on its way out): nothing left to stop.
            self.answer(reply, Answer::Stopped);
            return;
        }
        self.stop_waiters.extend(reply);
        if fast {
            // Every app at once, every group killed; apps already stopped (a graceful stop
            // under way got that far) are done.
            self.phase = Phase::Stopping;
            self.abort_reload_all();
            self.stopping = (0..self.apps.len()).rev().collect();
            for i in (0..self.apps.len()).rev() {
                self.route(i, Event::FastStop, now);
            }
            self.stop_next(now);
            return;
        }
        if self.phase == Phase::Stopping || self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopping;
        self.abort_reload_all();
        self.stopping = (0..self.apps.len()).rev().collect();
        match self.stopping.front() {
            Some(&first) => self.route(first, Event::Stop { reply: None }, now),
            None => self.all_stopped(),
        }
    }

    fn abort_reload_all(&mut self) {
        let waiting = self
            .queued_all
            .take()
            .into_iter()
            .flatten()
            .chain(self.reload_all.take().into_iter().flat_map(|a| a.waiters))
            .collect::<Vec<_>>();
        for to in waiting {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Reload(vec![ReloadReport {
                    app: "(every app)".into(),
                    generation: 0,
                    outcome: ReloadOutcome::Aborted,
                    reason: Some("the supervisor is stopping".into()),
                    note: None,
                    slots: vec![],
                    duration_secs: 0.0,
                }]),
            });
        }
    }

    /// App `i` has no worker left: stop the next one, in reverse file order.
    fn app_stopped(&mut self, i: AppIndex, now: Instant) {
        tracing::info!(app = %self.apps[i].name(), "stopped");
        self.stopping.retain(|&a| a != i);
        if self.phase != Phase::Stopping {
            return;
        }
        self.stop_next(now);
    }

    /// Stops the next app in line (the apps already stopped are done), or ends the stop when
    /// none is left.
    fn stop_next(&mut self, now: Instant) {
        let apps = &self.apps;
        self.stopping.retain(|&a| apps[a].phase() != Phase::Stopped);
        match self.stopping.front() {
            Some(&next) if self.apps[next].phase() != Phase::Stopping => {
                self.route(next, Event::Stop { reply: None }, now)
            }
            Some(_) => {}
            None if self.phase == Phase::Stopping => self.all_stopped(),
            None => {}
        }
    }

    fn all_stopped(&mut self) {
        self.phase = Phase::Stopped;
        for to in std::mem::take(&mut self.stop_waiters) {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Stopped,
            });
        }
        self.out.push(Action::Exit(Ok(())));
    }

    /// No worker of app `i`'s first start could be executed: the supervisor does not run half a
    /// config. Every worker is killed and it exits with the reason.
    fn start_failed(&mut self, i: AppIndex, reason: String, now: Instant) {
        let reason = format!("app {}: {reason}", self.apps[i].name());
        self.phase = Phase::Stopped;
        for a in 0..self.apps.len() {
            if a != i {
                self.apps[a].handle(Event::FastStop, now);
                for action in self.apps[a].take_actions() {
                    if matches!(action, Action::Signal { .. }) {
                        self.out.push(action);
                    }
                }
                // Nothing to answer or go on with: the supervisor exits.
                self.apps[a].take_reports();
            }
        }
        self.out.push(Action::Exit(Err(reason)));
    }

    fn answer(&mut self, reply: Option<ReplyTo>, answer: Answer) {
        if let Some(to) = reply {
            self.out.push(Action::Reply { to, answer });
        }
    }
}
