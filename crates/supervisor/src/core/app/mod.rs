//! One app: its slots (one worker each when serving) and the workers starting, serving or
//! draining. Pure: it is driven by the [`super::Core`] and returns [`Action`]s for the shell and
//! [`AppReport`]s for the core. This file holds the [`App`] itself, the routing of its events
//! and what `status` reads of it; its rules live by concern:
//!
//! - `slots`: starting and watching workers (spawn, ready, exit, the ready and kill deadlines),
//!   crash restarts with backoff and crash loops, the first start, stopping; and the one lookup
//!   of which in-flight operation owns a worker (`Owner`: a reload, a memory replacement, its
//!   slot, or nobody).
//! - `reload`: the app's side of a rolling reload (the config read, the slots replaced one at a
//!   time, aborts, a reload queued behind another), with its bookkeeping in `rolling`.
//! - `canary`: canary reloads (one slot, then hold), continued or rolled back.
//! - `recycle`: replacing a worker that stays above `max_memory`.
//! - `scale`: `scale` and `restart`.
//! - `lease`: a cluster singleton runs only while this host holds its lease.
//! - `handover`: handing the app over to an upgraded process, and taking it back.
//! - `switch`: stopping and starting it by hand (`stop APP`, `start APP`), and `reset`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::report::{MemoryRecycleProgress, ReloadProgress, ReloadReport};
use super::{
    Action, AppId, AppSettings, Event, Phase, ReplyTo, SingletonRole, SocketSet, WaitState, Waiter,
    Worker, WorkerId, WorkerState,
};
use crate::config::MemoryPolicy;
use lease::{LeaseState, settings_lease};
use recycle::Recycle;
use reload::Reloading;
use slots::{FirstStart, Slot, SlotState};

mod canary;
mod handover;
mod health;
#[cfg(test)]
pub(crate) mod invariants;
mod lease;
mod recycle;
mod reload;
mod rolling;
mod routes;
#[cfg(test)]
#[path = "routes_tests.rs"]
mod routes_tests;
mod scale;
mod slots;
mod switch;
#[cfg(test)]
mod tests;

pub use lease::SingletonView;

/// A slot without a serving worker, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingSlot {
    pub slot: usize,
    /// Backoff or crash loop.
    pub state: WaitState,
    /// Restarts so far.
    pub restarts: u32,
    /// Until the next start.
    pub restart_in: Duration,
    /// Why the last worker ended.
    pub last_exit: String,
}

/// The app's state for `status`.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub phase: Phase,
    /// The generation new workers start in.
    pub generation: u64,
    /// How many slots it runs (its `instances`, or what `scale` set).
    pub instances: usize,
    /// Every live worker, by slot then generation, with its slot's restart count.
    pub workers: Vec<(&'a Worker, u32)>,
    /// Slots waiting to restart.
    pub waiting: Vec<WaitingSlot>,
    /// The reload under way.
    pub reload_in_progress: Option<ReloadProgress>,
    /// The last finished reload.
    pub last_reload: Option<ReloadReport>,
    /// The memory limit and its grace.
    pub memory: MemoryPolicy,
    /// Workers replaced because they stayed above `max_memory` (the replacement became ready).
    pub memory_recycles: u64,
    /// Replacements that failed, for any reason (the old worker kept serving).
    pub memory_recycle_failures: u64,
    /// The replacement under way (for memory, a hung worker, or age).
    pub memory_recycling: Option<MemoryRecycleProgress>,
    /// Hung workers replaced; watchdogs missed or triggered.
    pub watchdog_recycles: u64,
    pub watchdog_timeouts: u64,
    /// Workers replaced for their age.
    pub age_recycles: u64,
    /// Crash restarts of every slot since the supervisor started, slots retired by `scale` or a
    /// reload included (never goes down: what `status` shows per slot, summed).
    pub restarts_total: u64,
    /// A cluster singleton's lease.
    pub singleton: Option<SingletonView>,
}

/// The state machine of one app.
#[derive(Debug)]
pub struct App {
    id: AppId,
    /// Started with the supervisor: a first start that cannot execute any worker ends the
    /// supervisor. An app added by a reload or started by hand is stopped instead.
    initial: bool,
    settings: AppSettings,
    /// `instances` set by `scale`, until a reload re-reads the file.
    scaled: Option<usize>,
    /// A scale asked for during a reload: applied when it ends.
    queued_scale: Option<(usize, Vec<ReplyTo>)>,
    slots: Vec<Slot>,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    /// The generation new workers start in: the last good config's.
    generation: u64,
    /// The highest generation number given out (an aborted reload's too): never reused.
    last_generation: u64,
    /// What a rolling reload under way replaced (settings, generation, `scale`): restored when it
    /// is aborted, so that restarts, scaling and crash restarts use the last good config.
    before_reload: Option<(AppSettings, u64, Option<usize>)>,
    reloading: Option<Reloading>,
    /// A reload asked for while one runs: it runs once after it, for all these waiters.
    queued_reload: Option<Vec<Waiter>>,
    last_reload: Option<ReloadReport>,
    /// Every slot's restarts so far, kept when slots are retired.
    restarts_total: u64,
    phase: Phase,
    first_start: Option<FirstStart>,
    /// From the app's first start until one of its workers is ready (never for a cluster
    /// singleton, whose start is a takeover): a configuration error then fails the start.
    starting_up: bool,
    /// The replacement under way (one at a time): for memory, a hung worker, or age.
    recycling: Option<Recycle>,
    memory_recycles: u64,
    /// Replacements that failed, for any reason (the old worker kept serving).
    memory_recycle_failures: u64,
    /// Hung workers replaced, and watchdogs missed or triggered.
    watchdog_recycles: u64,
    watchdog_timeouts: u64,
    /// Workers replaced for their age; no replacement for age before this instant (one failed).
    age_recycles: u64,
    age_retry_at: Option<Instant>,
    /// `Some` for a cluster singleton.
    lease: Option<LeaseState>,
    /// Who waits for it to be up (`start APP`, a reload that added it): answered once every
    /// slot has a ready worker, or with the first failure.
    start_waiters: Vec<Waiter>,
    /// Who waits for it to be stopped (`stop APP`), and how many workers the stop drained.
    stop_waiters: Vec<ReplyTo>,
    stop_drained: usize,
    out: Vec<Action>,
    /// What the core is to know ([`App::take_reports`]).
    reports: Vec<AppReport>,
}

/// What an app tells the core (the shell never sees it).
#[derive(Debug)]
pub enum AppReport {
    /// Its reload ended (or was refused): these wait for the report.
    Reloaded {
        /// The report.
        report: ReloadReport,
        /// Who waits for it.
        waiters: Vec<Waiter>,
    },
    /// A reload was refused before it began, for the report's reason (a canary reload holds,
    /// or `--continue` found nothing held): not a reload that ended.
    Refused {
        /// The report (outcome `aborted`), for a reload of every app.
        report: ReloadReport,
        /// Who asked.
        waiters: Vec<Waiter>,
    },
    /// Its canary reload holds: these asked for the canary (`reload APP --canary`).
    Held {
        /// The report so far (outcome `held`).
        report: ReloadReport,
        /// Who asked.
        waiters: Vec<Waiter>,
    },
    /// It was stopping and its last worker is gone.
    Stopped,
    /// No worker of its first start could be executed: why.
    StartFailed(String),
    /// It was started (by hand or by a reload that added it): up, or why not.
    Started {
        /// Who waits for it.
        waiters: Vec<Waiter>,
        /// Its ready workers' pids and what to know; or why it is not up.
        outcome: Result<(Vec<i32>, Option<String>), String>,
    },
}

impl App {
    /// The app `id` with `settings`, generation 1; nothing runs until [`Event::Start`].
    pub fn new(id: AppId, settings: AppSettings) -> App {
        let slots = (0..settings.spec.instances)
            .map(|_| Slot::new(settings.spec.clone(), settings.sockets, 1))
            .collect();
        let lease = settings_lease(&settings);
        App {
            id,
            initial: true,
            settings,
            scaled: None,
            queued_scale: None,
            slots,
            workers: BTreeMap::new(),
            next_id: ((id as u64) + 1) << 32,
            generation: 1,
            last_generation: 1,
            before_reload: None,
            reloading: None,
            queued_reload: None,
            last_reload: None,
            restarts_total: 0,
            phase: Phase::Waiting,
            first_start: None,
            starting_up: false,
            recycling: None,
            memory_recycles: 0,
            memory_recycle_failures: 0,
            watchdog_recycles: 0,
            watchdog_timeouts: 0,
            age_recycles: 0,
            age_retry_at: None,
            lease,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            stop_drained: 0,
            out: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// The app `id` added by a reload (or taken over stopped): like [`App::new`], but a start
    /// that cannot execute any worker stops it instead of ending the supervisor.
    pub fn added(id: AppId, settings: AppSettings) -> App {
        let mut app = App::new(id, settings);
        app.initial = false;
        app
    }

    /// Handles an event about one of its workers or timers at `now`; the core hands a reload
    /// and the config read to [`App::request_reload`] and [`App::config_read`]. What to do is
    /// collected for [`App::take_actions`], what the core is to know for [`App::take_reports`].
    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Start => self.start(now),
            Event::Spawned { worker, pid } => self.spawned(worker, pid, now),
            Event::SpawnFailed { worker, error } => self.spawn_failed(worker, error, now),
            Event::Ready(id) => self.ready(id, now),
            Event::StatusText(id, text) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.status_text = Some(text);
                }
            }
            Event::Watchdog { worker, trigger } => self.watchdog_ping(worker, trigger, now),
            Event::LoopLag(worker, lag) => self.event_loop_lag(worker, lag),
            Event::Exited { worker, status } => self.exited(worker, status, now),
            Event::Timer(key) => self.timer(key, now),
            Event::Memory(samples) => self.memory(&samples, now),
            Event::Stop { .. } => self.stop(now),
            Event::FastStop => self.fast_stop(now),
            Event::Restart { reply, .. } => self.restart(reply, now),
            Event::Scale {
                instances, reply, ..
            } => self.scale(instances, reply, now),
            Event::Lease { event, .. } => self.lease_event(event, now),
            Event::StopApp { reply, .. } => self.stop_by_hand(reply, "it was stopped by hand", now),
            Event::StartApp { sockets, reply, .. } => self.start_by_hand(sockets, reply),
            Event::Reset { reply, .. } => self.reset(reply),
            Event::Reload { .. } | Event::Config(_) => {}
        }
        self.check_stopped();
        self.check_started();
    }

    /// What the last calls decided, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// What the core is to know of the last calls, in order.
    pub fn take_reports(&mut self) -> Vec<AppReport> {
        std::mem::take(&mut self.reports)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.settings.spec.name
    }

    /// Whether it may be stopped while the supervisor runs: started by hand or added by a
    /// reload, and then stopped (by hand, or because its start failed). The simulation's
    /// invariants ask it.
    #[cfg(test)]
    pub fn stopped_on_its_own(&self) -> bool {
        !self.initial && self.phase == Phase::Stopped
    }

    /// Its id.
    pub fn id(&self) -> AppId {
        self.id
    }

    /// The generation new workers start in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation its next reload brings.
    pub fn next_generation(&self) -> u64 {
        self.last_generation + 1
    }

    /// Whether a client (or a reload that added it) waits for it to be up.
    pub fn has_start_waiters(&self) -> bool {
        !self.start_waiters.is_empty()
    }

    /// Tells whoever waits for it to be up that it waits (for apps stopped by hand), `note`.
    pub fn answer_waiting(&mut self, note: String) {
        self.answer_start(Ok((Vec::new(), Some(note))));
    }

    /// What it runs now (the last good config's settings).
    pub fn settings(&self) -> &AppSettings {
        &self.settings
    }

    /// The sets of sockets its workers, slots and settings use: none while it stops or is
    /// stopped (connections to its addresses are refused, not left waiting); two while a
    /// reload rolls it onto new sockets (or after such a reload was aborted half way).
    pub fn sockets_in_use(&self) -> BTreeSet<SocketSet> {
        let mut used = BTreeSet::new();
        if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
            return used;
        }
        used.insert(self.settings.sockets);
        used.extend(self.slots.iter().map(|s| s.sockets));
        if let Some((previous, _, _)) = &self.before_reload {
            used.insert(previous.sockets);
        }
        if let Some(Reloading::Rolling(r)) = &self.reloading {
            used.insert(r.sockets);
        }
        used
    }

    /// Whether every slot has a ready worker (the apps `after` it may start). A cluster
    /// singleton standing by counts as up: it may be running on another host, and the apps
    /// after it must not wait for a takeover that may never come.
    pub fn is_up(&self) -> bool {
        if self.phase == Phase::Standby {
            return true;
        }
        self.phase == Phase::Running && self.slots.iter().all(|s| self.serves_ready(s))
    }

    /// Slots serving a ready worker, and slots in all (`status` lines for the service manager).
    pub fn ready_slots(&self) -> (usize, usize) {
        let ready = self.slots.iter().filter(|s| self.serves_ready(s)).count();
        (ready, self.slots.len())
    }

    /// Whether slot `s` is served by a ready worker.
    fn serves_ready(&self, s: &Slot) -> bool {
        match s.state {
            SlotState::Serving(id) => self
                .workers
                .get(&id)
                .is_some_and(|w| w.state == WorkerState::Ready),
            _ => false,
        }
    }

    /// The generation a reload under way (or asked for and queued) brings, if any.
    pub fn reload_generation(&self) -> Option<u64> {
        match &self.reloading {
            Some(Reloading::Rolling(r)) => Some(r.generation),
            Some(Reloading::ReadingConfig { .. }) => Some(self.last_generation + 1),
            None => self
                .queued_reload
                .as_ref()
                .map(|_| self.last_generation + 1),
        }
    }

    /// How many worker processes it has (any state).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Whether any of its workers is draining.
    pub fn has_draining(&self) -> bool {
        self.workers
            .values()
            .any(|w| w.state == WorkerState::Draining)
    }

    /// A worker by id.
    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The state `status` shows.
    pub fn snapshot(&self, now: Instant) -> Snapshot<'_> {
        let mut workers: Vec<(&Worker, u32)> = self
            .workers
            .values()
            .map(|w| (w, self.slots.get(w.slot).map_or(0, |s| s.restarts)))
            .collect();
        workers.sort_by_key(|(w, _)| (w.slot, w.generation, w.id));
        let waiting = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                SlotState::BackingOff(at) => Some(WaitingSlot {
                    slot: i,
                    state: if s.crash_looping(self.settings.restart.max_restarts) {
                        WaitState::CrashLoop
                    } else {
                        WaitState::Backoff
                    },
                    restarts: s.restarts,
                    restart_in: at.saturating_duration_since(now),
                    last_exit: s.last_exit.clone().unwrap_or_default(),
                }),
                _ => None,
            })
            .collect();
        let reload_in_progress = match &self.reloading {
            Some(Reloading::Rolling(r)) => {
                Some(r.progress(self.queued_reload.is_some(), now, |id| {
                    self.workers.get(&id).and_then(|w| w.pid)
                }))
            }
            _ => None,
        };
        let memory_recycling = self.recycling.map(|r| MemoryRecycleProgress {
            reason: r.why,
            slot: r.slot,
            old_pid: self.workers.get(&r.old).and_then(|w| w.pid).unwrap_or(0),
            new_pid: self.workers.get(&r.new).and_then(|w| w.pid),
            rss_bytes: r.rss,
            elapsed_secs: now.saturating_duration_since(r.started).as_secs_f64(),
        });
        Snapshot {
            phase: self.phase,
            generation: self.generation,
            instances: self.slots.len(),
            workers,
            waiting,
            reload_in_progress,
            last_reload: self.last_reload.clone(),
            memory: self.settings.memory,
            memory_recycles: self.memory_recycles,
            memory_recycle_failures: self.memory_recycle_failures,
            memory_recycling,
            watchdog_recycles: self.watchdog_recycles,
            watchdog_timeouts: self.watchdog_timeouts,
            age_recycles: self.age_recycles,
            restarts_total: self.restarts_total,
            singleton: self.lease.as_ref().map(|l| SingletonView {
                role: if l.token.is_some() {
                    SingletonRole::Holder
                } else {
                    SingletonRole::Standby
                },
                holder: l.holder.as_ref().map(|(h, _)| h.clone()),
                token: l.holder.as_ref().map(|(_, t)| *t),
            }),
        }
    }
}
