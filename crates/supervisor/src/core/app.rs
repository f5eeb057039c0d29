//! One app: its slots (one worker each when serving), the workers starting, serving or
//! draining, crash restarts with backoff, its rolling reload, scale and restart, and memory
//! recycling. Pure: it is driven by the [`super::Core`] and returns [`Action`]s.
//!
//! A cluster singleton (`scope = "cluster"`) runs its slots only while this host holds its
//! lease: it waits in [`Phase::Standby`] until [`LeaseEvent::Acquired`], starts every slot with
//! the fencing token, and on [`LeaseEvent::Lost`] fences itself: every worker drains at once and
//! is killed no later than the lease's expiry minus a margin (or its kill timeout, if sooner),
//! and the app stands by again. A reload keeps the lease; a stop releases it once the workers
//! are gone ([`Action::ReleaseLease`]).
//!
//! Memory recycling (`max_memory`): each sample marks a serving worker above the limit with the
//! instant it was first seen above (a sample below clears it). One whose mark is older than
//! `max_memory_grace` is replaced like one slot of a rolling reload: a new worker for its slot,
//! same generation and program, and the old one drains only once the new one is ready. One slot
//! at a time per app, never while the app reloads or stops. A replacement that fails (exits,
//! cannot be executed, is not ready within `ready_timeout`) leaves the old worker serving, and
//! its mark starts over: it is tried again once it has stayed above the limit for another grace.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::adopt::{AdoptedApp, AdoptedReload, AdoptedSlot, AdoptedWorker};
use super::reload::{InFlight, Reload};
use super::report::{MemoryRecycleProgress, ReloadOutcome, ReloadProgress, ReloadReport};
use super::{
    Action, Answer, AppIndex, AppSettings, Event, ExitStatus, LeaseEvent, Phase, ReplyTo, Signal,
    SingletonRole, TimerKey, WaitState, Waiter, Worker, WorkerId, WorkerState, lease_kill_margin,
};
use crate::config::{MAX_INSTANCES, MemoryPolicy, Readiness, WorkerSpec};

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Its worker (starting or ready).
    Serving(WorkerId),
    /// Waiting until then to start again.
    BackingOff(Instant),
    /// No worker and nothing scheduled: a slot a reload is about to fill, or a stopping one.
    Idle,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// What this slot runs (the generation it was last started or replaced in).
    spec: Arc<WorkerSpec>,
    generation: u64,
    restarts: u32,
    consecutive_failures: u32,
    recent_failures: VecDeque<Instant>,
    last_exit: Option<String>,
}

/// The reload in progress.
#[derive(Debug)]
enum Reloading {
    /// Waiting for [`Event::Config`]; these wait for the outcome.
    ReadingConfig(Vec<Waiter>),
    /// Replacing slots.
    Rolling(Reload),
}

/// A worker being replaced for its memory: its replacement starts beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recycle {
    slot: usize,
    old: WorkerId,
    new: WorkerId,
    /// The old worker's memory when its replacement was started.
    rss: u64,
    started: Instant,
}

/// A cluster singleton's lease, as this host knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LeaseState {
    /// The fencing token while this host holds the lease.
    token: Option<u64>,
    /// The holder (`host:pid`) and its token, as last seen.
    holder: Option<(String, u64)>,
}

/// A cluster singleton's lease for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingletonView {
    /// Holder or standby.
    pub role: SingletonRole,
    /// The holder (`host:pid`), if known.
    pub holder: Option<String>,
    /// The holder's fencing token, if known.
    pub token: Option<u64>,
}

/// The first start: `start` fails when no worker could even be executed.
#[derive(Debug)]
struct FirstStart {
    outstanding: usize,
    errors: Vec<String>,
}

/// A slot without a serving worker, for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingSlot {
    /// Slot.
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
    /// Phase.
    pub phase: Phase,
    /// The generation new workers start in.
    pub generation: u64,
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
    /// Replacements for memory that failed (the old worker kept serving).
    pub memory_recycle_failures: u64,
    /// The replacement for memory under way.
    pub memory_recycling: Option<MemoryRecycleProgress>,
    /// Crash restarts of every slot since the supervisor started, slots retired by `scale` or a
    /// reload included (never goes down: what `status` shows per slot, summed).
    pub restarts_total: u64,
    /// A cluster singleton's lease.
    pub singleton: Option<SingletonView>,
}

/// The state machine of one app.
#[derive(Debug)]
pub struct App {
    index: AppIndex,
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
    /// The replacement for memory under way (one at a time).
    recycling: Option<Recycle>,
    memory_recycles: u64,
    memory_recycle_failures: u64,
    /// `Some` for a cluster singleton.
    lease: Option<LeaseState>,
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
    /// It was stopping and its last worker is gone.
    Stopped,
    /// No worker of its first start could be executed: why.
    StartFailed(String),
}

impl App {
    /// The app at `index` of the file with `settings`, generation 1; nothing runs until
    /// [`Event::Start`].
    pub fn new(index: AppIndex, settings: AppSettings) -> App {
        let slots = (0..settings.spec.instances)
            .map(|_| Slot::new(settings.spec.clone(), 1))
            .collect();
        let lease = settings_lease(&settings);
        App {
            index,
            settings,
            scaled: None,
            queued_scale: None,
            slots,
            workers: BTreeMap::new(),
            next_id: ((index as u64) + 1) << 32,
            generation: 1,
            last_generation: 1,
            before_reload: None,
            reloading: None,
            queued_reload: None,
            last_reload: None,
            restarts_total: 0,
            phase: Phase::Waiting,
            first_start: None,
            recycling: None,
            memory_recycles: 0,
            memory_recycle_failures: 0,
            lease,
            out: Vec::new(),
            reports: Vec::new(),
        }
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
            Event::Reload { .. } | Event::Config(_) => {}
        }
        self.check_stopped();
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

    /// Whether every slot has a ready worker (the apps `after` it may start). A cluster
    /// singleton standing by counts as up: it may be running on another host, and the apps
    /// after it must not wait for a takeover that may never come.
    pub fn is_up(&self) -> bool {
        if self.phase == Phase::Standby {
            return true;
        }
        self.phase == Phase::Running
            && self.slots.iter().all(|s| match s.state {
                SlotState::Serving(id) => self
                    .workers
                    .get(&id)
                    .is_some_and(|w| w.state == WorkerState::Ready),
                _ => false,
            })
    }

    /// Slots serving a ready worker, and slots in all (`status` lines for the service manager).
    pub fn ready_slots(&self) -> (usize, usize) {
        let ready = self
            .slots
            .iter()
            .filter(|s| match s.state {
                SlotState::Serving(id) => self
                    .workers
                    .get(&id)
                    .is_some_and(|w| w.state == WorkerState::Ready),
                _ => false,
            })
            .count();
        (ready, self.slots.len())
    }

    /// The generation a reload under way (or asked for and queued) brings, if any.
    pub fn reload_generation(&self) -> Option<u64> {
        match &self.reloading {
            Some(Reloading::Rolling(r)) => Some(r.generation),
            Some(Reloading::ReadingConfig(_)) => Some(self.last_generation + 1),
            None => self
                .queued_reload
                .as_ref()
                .map(|_| self.last_generation + 1),
        }
    }

    /// The answer to a reload not waited for, once asked for: it started, towards the
    /// generation of its reload (or of the one under way it is queued behind); the current
    /// generation when it did not start.
    pub fn started_report(&self) -> ReloadReport {
        ReloadReport {
            app: self.name().to_string(),
            generation: self.reload_generation().unwrap_or(self.generation),
            outcome: ReloadOutcome::Started,
            reason: None,
            note: None,
            slots: vec![],
            duration_secs: 0.0,
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

    fn fast_stop(&mut self, now: Instant) {
        self.stop(now);
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for worker in ids {
            self.out.push(Action::Signal {
                worker,
                signal: Signal::KillGroup,
            });
        }
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
            Some(Reloading::Rolling(r)) => Some(r.progress(self.queued_reload.is_some(), now)),
            _ => None,
        };
        let memory_recycling = self.recycling.map(|r| MemoryRecycleProgress {
            slot: r.slot,
            old_pid: self.workers.get(&r.old).and_then(|w| w.pid).unwrap_or(0),
            new_pid: self.workers.get(&r.new).and_then(|w| w.pid),
            rss_bytes: r.rss,
            elapsed_secs: now.saturating_duration_since(r.started).as_secs_f64(),
        });
        Snapshot {
            phase: self.phase,
            generation: self.generation,
            workers,
            waiting,
            reload_in_progress,
            last_reload: self.last_reload.clone(),
            memory: self.settings.memory,
            memory_recycles: self.memory_recycles,
            memory_recycle_failures: self.memory_recycle_failures,
            memory_recycling,
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

    // ---- starting and watching workers ----

    fn start(&mut self, now: Instant) {
        if self.phase != Phase::Waiting {
            return;
        }
        if self.lease.as_ref().is_some_and(|l| l.token.is_none()) {
            // Not ours (yet): no worker runs, and that is not a failed start.
            tracing::info!(app = %self.name(), "cluster singleton: standing by until this host takes its lease");
            self.phase = Phase::Standby;
            return;
        }
        self.phase = Phase::Starting;
        if self.slots.is_empty() {
            self.phase = Phase::Running;
            return;
        }
        self.first_start = Some(FirstStart {
            outstanding: self.slots.len(),
            errors: Vec::new(),
        });
        for i in 0..self.slots.len() {
            self.start_slot(i, now);
        }
    }

    fn start_slot(&mut self, index: usize, now: Instant) {
        let (spec, generation) = (self.slots[index].spec.clone(), self.slots[index].generation);
        let id = self.spawn(index, spec, generation, now);
        self.slots[index].state = SlotState::Serving(id);
    }

    /// Asks the shell to start a worker; the core knows it as starting from now on.
    fn spawn(
        &mut self,
        slot: usize,
        spec: Arc<WorkerSpec>,
        generation: u64,
        now: Instant,
    ) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        self.workers.insert(
            id,
            Worker {
                id,
                slot,
                generation,
                name: format!("{}.{slot}", spec.name),
                pid: None,
                state: WorkerState::Starting,
                started_at: now,
                status_text: None,
                spec: spec.clone(),
                over_memory: None,
                kill_at: None,
            },
        );
        self.out.push(Action::Spawn {
            app: self.index,
            worker: id,
            slot,
            generation,
            spec,
            fencing_token: self.lease.as_ref().and_then(|l| l.token),
        });
        id
    }

    fn spawned(&mut self, id: WorkerId, pid: i32, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.pid = Some(pid);
        w.started_at = now;
        tracing::info!(worker = %w.name, pid, generation = w.generation, "worker started");
        let (readiness, timeout) = (w.spec.readiness, w.spec.ready_timeout);
        if self.first_start.take().is_some() && self.phase == Phase::Starting {
            // One worker runs: whatever happens next is a crash loop, not a failed start.
            self.phase = Phase::Running;
        }
        match readiness {
            Readiness::Notify => self.out.push(Action::Arm {
                timer: TimerKey::Ready(id),
                at: now + timeout,
            }),
            // Executed = ready, through the same path as READY=1.
            Readiness::Exec => self.ready(id, now),
        }
    }

    fn spawn_failed(&mut self, id: WorkerId, error: String, now: Instant) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        tracing::error!(worker = %w.name, "cannot start worker: {error}");
        if let Some(first) = &mut self.first_start {
            first.outstanding -= 1;
            first.errors.push(format!("{}: {error}", w.name));
            if first.outstanding == 0 {
                let errors = std::mem::take(&mut first.errors);
                self.first_start = None;
                self.fail_start(errors);
                return;
            }
        }
        if self.in_flight(id) {
            self.abort_reload(
                format!("cannot start new worker for slot {}: {error}", w.slot),
                now,
            );
        } else if let Some(r) = self.recycling.filter(|r| r.new == id) {
            self.recycle_failed(r, format!("cannot start new worker: {error}"), now);
        } else if self.slot_worker(w.slot) == Some(id) {
            self.slot_failed(w.slot, error, true, now);
        }
    }

    /// No worker of the first start could be executed: exit with the reason, nothing left running.
    fn fail_start(&mut self, errors: Vec<String>) {
        let mut reason = String::from("no worker could be started");
        if let Some(first) = errors.first() {
            reason = format!("{reason}: {first}");
        }
        if errors.len() > 1 {
            reason = format!("{reason} (and {} more)", errors.len() - 1);
        }
        for s in &mut self.slots {
            s.state = SlotState::Idle;
        }
        self.phase = Phase::Stopped;
        self.reports.push(AppReport::StartFailed(reason));
    }

    fn ready(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state != WorkerState::Starting {
            return;
        }
        w.state = WorkerState::Ready;
        let pid = w.pid.unwrap_or(0);
        tracing::info!(worker = %w.name, pid, generation = w.generation, ready_ms = (now - w.started_at).as_millis() as u64, "worker ready");
        self.out.push(Action::Cancel(TimerKey::Ready(id)));
        let replaced = match &mut self.reloading {
            Some(Reloading::Rolling(r)) => r.ready(id, pid, now),
            _ => None,
        };
        if let Some(f) = replaced {
            self.slot_replaced(f, now);
            self.advance_reload(now);
        } else if let Some(r) = self.recycling.filter(|r| r.new == id) {
            self.recycle_done(r, pid, now);
        }
    }

    fn exited(&mut self, id: WorkerId, status: ExitStatus, now: Instant) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        self.out.push(Action::Cancel(TimerKey::Ready(id)));
        self.out.push(Action::Cancel(TimerKey::Kill(id)));
        let uptime = now - w.started_at;
        let pid = w.pid.unwrap_or(0);
        if w.state == WorkerState::Draining {
            tracing::info!(worker = %w.name, pid, %status, uptime_ms = uptime.as_millis() as u64, "worker exited");
            return;
        }
        tracing::warn!(worker = %w.name, pid, %status, uptime_ms = uptime.as_millis() as u64, "worker exited unexpectedly ({})", w.state);
        if self.in_flight(id) {
            self.abort_reload(
                format!(
                    "new worker {} (pid {pid}) exited before it was ready: {status}",
                    w.name
                ),
                now,
            );
        } else if let Some(r) = self.recycling.filter(|r| r.new == id) {
            let why = format!("new worker (pid {pid}) exited before it was ready: {status}");
            self.recycle_failed(r, why, now);
        } else if let Some(r) = self.recycling.filter(|r| r.old == id) {
            // The worker being replaced died first: its replacement, already starting, takes
            // the slot at once instead of a crash restart (it is the slot's worker from now on,
            // with the slot's ready deadline and crash rules).
            self.recycling = None;
            tracing::warn!(worker = %w.name, pid, "exited while its replacement for memory was starting: the replacement takes the slot");
            if let Some(s) = self.slots.get_mut(r.slot) {
                s.state = SlotState::Serving(r.new);
                s.restarts += 1;
                s.last_exit = Some(format!("{status} while {}", w.state));
            }
        } else if self.slot_worker(w.slot) == Some(id) {
            let unstable =
                w.state == WorkerState::Starting || uptime < self.settings.restart.min_uptime;
            self.slot_failed(w.slot, format!("{status} while {}", w.state), unstable, now);
        }
    }

    fn timer(&mut self, key: TimerKey, now: Instant) {
        match key {
            TimerKey::Ready(id) => {
                let Some(w) = self.workers.get(&id) else {
                    return;
                };
                if w.state != WorkerState::Starting {
                    return;
                }
                let mut msg = format!(
                    "new worker {} (pid {}) was not ready within {}",
                    w.name,
                    w.pid.unwrap_or(0),
                    crate::units::span(w.spec.ready_timeout)
                );
                if let Some(hint) = &self.settings.not_ready_hint {
                    msg = format!("{msg}: {hint}");
                }
                tracing::warn!("{msg}; stopping it");
                // It may already take connections from the shared socket: drain it like any
                // other worker (SIGTERM, SIGKILL after its kill timeout).
                let slot = w.slot;
                self.drain(id, now);
                if self.in_flight(id) {
                    self.abort_reload(msg, now);
                } else if let Some(r) = self.recycling.filter(|r| r.new == id) {
                    self.recycle_failed(r, msg, now);
                } else if self.slot_worker(slot) == Some(id) {
                    self.slot_failed(slot, msg, true, now);
                }
            }
            TimerKey::Restart { slot, .. } => {
                let due = self
                    .slots
                    .get(slot)
                    .is_some_and(|s| matches!(s.state, SlotState::BackingOff(at) if at <= now));
                if due && self.phase == Phase::Running {
                    self.start_slot(slot, now);
                }
            }
            // The supervisor's; it hands the samples over as `Event::Memory`.
            TimerKey::MemorySample => {}
            TimerKey::Kill(id) => {
                if let Some(w) = self.workers.get(&id) {
                    tracing::warn!(worker = %w.name, pid = w.pid.unwrap_or(0), "still running {} after SIGTERM (kill_timeout): SIGKILL to its process group", crate::units::span(w.spec.kill_timeout));
                    self.out.push(Action::Signal {
                        worker: id,
                        signal: Signal::KillGroup,
                    });
                }
            }
        }
    }

    fn restart_key(&self, slot: usize) -> TimerKey {
        TimerKey::Restart {
            app: self.index,
            slot,
        }
    }

    /// The worker serving `slot`, if any.
    fn slot_worker(&self, slot: usize) -> Option<WorkerId> {
        match self.slots.get(slot)?.state {
            SlotState::Serving(id) => Some(id),
            _ => None,
        }
    }

    /// Whether `id` is a new worker of the running reload, not ready yet.
    fn in_flight(&self, id: WorkerId) -> bool {
        matches!(&self.reloading, Some(Reloading::Rolling(r)) if r.is_in_flight(id))
    }

    /// A slot lost its worker without being asked to: restart it after the backoff.
    fn slot_failed(&mut self, index: usize, reason: String, unstable: bool, now: Instant) {
        if !matches!(self.phase, Phase::Running | Phase::Starting) {
            return;
        }
        let policy = self.settings.restart;
        self.restarts_total += 1;
        let s = &mut self.slots[index];
        s.restarts += 1;
        s.last_exit = Some(reason);
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
        s.state = SlotState::BackingOff(now + delay);
        let delay_text = crate::units::span(delay);
        if s.crash_looping(policy.max_restarts) {
            tracing::error!(
                app = %self.settings.spec.name,
                slot = index,
                restarts = s.restarts,
                "slot is crash-looping; next start in {delay_text}"
            );
        } else {
            tracing::warn!(app = %self.settings.spec.name, slot = index, "restarting worker in {delay_text}");
        }
        self.out.push(Action::Arm {
            timer: self.restart_key(index),
            at: now + delay,
        });
    }

    /// SIGTERM to a starting or ready worker, and its kill deadline.
    fn drain(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Draining {
            return;
        }
        w.state = WorkerState::Draining;
        tracing::info!(worker = %w.name, pid = w.pid.unwrap_or(0), "draining (SIGTERM)");
        let at = now + w.spec.kill_timeout;
        w.kill_at = Some(at);
        self.out.extend([
            Action::Cancel(TimerKey::Ready(id)),
            Action::Signal {
                worker: id,
                signal: Signal::Term,
            },
            Action::Arm {
                timer: TimerKey::Kill(id),
                at,
            },
        ]);
    }

    // ---- stopping ----

    /// Drains every worker; [`AppReport::Stopped`] says when none is left (the core answers the
    /// clients waiting for the stop).
    fn stop(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
            return;
        }
        tracing::info!(
            app = %self.name(),
            workers = self.workers.len(),
            "stopping: draining every worker"
        );
        self.phase = Phase::Stopping;
        self.first_start = None;
        let stopping = "the supervisor is stopping";
        self.cancel_recycle(stopping, now);
        if let Some(waiters) = self.queued_reload.take() {
            self.answer_aborted(waiters, stopping);
        }
        match self.reloading.take() {
            Some(Reloading::ReadingConfig(waiters)) => self.answer_aborted(waiters, stopping),
            Some(rolling) => {
                self.reloading = Some(rolling);
                self.abort_reload(stopping.into(), now);
            }
            None => {}
        }
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, SlotState::BackingOff(_)) {
                self.out.push(Action::Cancel(self.restart_key(i)));
            }
            self.slots[i].state = SlotState::Idle;
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.drain(id, now);
        }
    }

    fn check_stopped(&mut self) {
        if self.phase == Phase::Stopping && self.workers.is_empty() {
            self.phase = Phase::Stopped;
            if self.lease.is_some() {
                // Only now: another host may start the app the moment the lease is gone.
                self.out.push(Action::ReleaseLease(self.index));
            }
            self.reports.push(AppReport::Stopped);
        }
    }

    // ---- rolling reload ----

    /// A reload is asked for, by `waiter` if any: it reads the config file, or is queued behind
    /// the reload under way, or refused when the app does not run.
    pub fn request_reload(&mut self, waiter: Option<Waiter>) {
        if !matches!(self.phase, Phase::Running | Phase::Standby) {
            let why = match self.phase {
                Phase::Waiting => "it has not started yet (waiting for the apps it is `after`)",
                Phase::Starting => "its first workers are still starting",
                _ => "the supervisor is stopping",
            };
            self.answer_aborted(waiter, why);
            return;
        }
        if self.reloading.is_some() {
            tracing::info!(app = %self.name(), "reload requested while one is running: queued to run once after it");
            self.queued_reload
                .get_or_insert_with(Vec::new)
                .extend(waiter);
            return;
        }
        self.reloading = Some(Reloading::ReadingConfig(waiter.into_iter().collect()));
        self.out.push(Action::ReadConfig);
    }

    /// Whether it waits for [`App::config_read`].
    pub fn wants_config(&self) -> bool {
        matches!(self.reloading, Some(Reloading::ReadingConfig(_)))
    }

    /// The answer to its [`Action::ReadConfig`]: its settings from the file read again.
    pub fn config_read(&mut self, settings: Result<AppSettings, String>, now: Instant) {
        let Some(Reloading::ReadingConfig(waiters)) = self.reloading.take() else {
            return;
        };
        // Every reload that reads the file gets a number of its own, aborted or not.
        self.last_generation += 1;
        let generation = self.last_generation;
        let settings = match settings {
            Ok(s) => s,
            Err(e) => {
                let report = self.aborted_report(
                    generation,
                    &format!("config no longer valid, nothing changed: {e}"),
                );
                tracing::error!(app = %self.name(), "reload aborted: config no longer valid, nothing changed: {e}");
                self.reply_all(waiters, &report);
                self.finish_reload(report, now);
                return;
            }
        };
        self.cancel_recycle("a reload replaces every slot", now);
        let spec = settings.spec.clone();
        let new_n = spec.instances;
        if self.phase == Phase::Standby {
            self.reload_standing_by(settings, generation, waiters, now);
            return;
        }
        let scaled = self.scaled.take();
        let note = scaled.filter(|n| *n != new_n).map(|n| {
            format!("instances back to {new_n} from the config file (`scale` had set {n})")
        });
        let previous = std::mem::replace(&mut self.settings, settings);
        self.before_reload = Some((previous, self.generation, scaled));
        self.generation = generation;
        // New slots (scale up) take part in the reload as slots without an old worker.
        while self.slots.len() < new_n {
            self.slots.push(Slot::new(spec.clone(), generation));
        }
        tracing::info!(app = %self.name(), generation, slots = new_n, "rolling reload started");
        let mut reload = Reload::new(generation, spec, self.settings.reload, 0..new_n, now);
        reload.add_waiters(waiters);
        reload.note = note;
        self.reloading = Some(Reloading::Rolling(reload));
        self.advance_reload(now);
    }

    /// A reload of a cluster singleton standing by: nothing runs here, so the new settings
    /// simply become the ones its workers start with when this host takes the lease.
    fn reload_standing_by(
        &mut self,
        settings: AppSettings,
        generation: u64,
        waiters: Vec<Waiter>,
        now: Instant,
    ) {
        let lease = self.settings.singleton;
        self.settings = settings;
        // The lease task runs with the policy it was started with.
        self.settings.singleton = lease;
        self.scaled = None;
        self.generation = generation;
        let spec = self.settings.spec.clone();
        self.slots = (0..spec.instances)
            .map(|_| Slot::new(spec.clone(), generation))
            .collect();
        tracing::info!(app = %self.name(), generation, "reloaded while standing by: the new config applies when this host takes the lease");
        let report = ReloadReport {
            app: self.name().to_string(),
            generation,
            outcome: ReloadOutcome::Ok,
            reason: None,
            note: Some("standby: no worker runs on this host; the new config applies when it takes the lease".into()),
            slots: vec![],
            duration_secs: 0.0,
        };
        self.reply_all(waiters, &report);
        self.finish_reload(report, now);
    }

    /// Starts as many replacements as the surge allows; finishes the reload when all are done.
    fn advance_reload(&mut self, now: Instant) {
        loop {
            let Some(Reloading::Rolling(reload)) = &mut self.reloading else {
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
            let old = self
                .slot_worker(slot)
                .and_then(|id| Some((id, self.workers.get(&id)?.pid?)));
            let new = self.spawn(slot, spec, generation, now);
            let early = drain_early && old.is_some();
            if let (true, Some((old_id, _))) = (early, old) {
                self.drain(old_id, now);
            }
            if let Some(Reloading::Rolling(r)) = &mut self.reloading {
                r.started(InFlight {
                    slot,
                    new,
                    old,
                    old_drained_early: early,
                    started: now,
                });
            }
        }
        // Complete: retire slots beyond the new instance count.
        if let Some(Reloading::Rolling(reload)) = self.reloading.take() {
            let keep = reload.spec.instances;
            self.before_reload = None;
            let (_, report, waiters) = reload.finish(None, now);
            self.retire_slots_beyond(keep, now);
            tracing::info!(
                app = %self.name(),
                generation = report.generation,
                "rolling reload finished in {}",
                crate::units::duration(report.duration_secs)
            );
            self.reply_all(waiters, &report);
            self.finish_reload(report, now);
        }
    }

    /// The new worker of a slot is ready: it becomes the slot's worker and the old one drains.
    fn slot_replaced(&mut self, f: InFlight, now: Instant) {
        let (spec, generation) = match &self.reloading {
            Some(Reloading::Rolling(r)) => (r.spec.clone(), r.generation),
            _ => return,
        };
        let s = &mut self.slots[f.slot];
        let previous = std::mem::replace(&mut s.state, SlotState::Serving(f.new));
        s.spec = spec;
        s.generation = generation;
        s.consecutive_failures = 0;
        s.recent_failures.clear();
        match previous {
            SlotState::Serving(old) if old != f.new => self.drain(old, now),
            // A pending crash restart of the old worker is void.
            SlotState::BackingOff(_) => self.out.push(Action::Cancel(self.restart_key(f.slot))),
            _ => {}
        }
    }

    fn abort_reload(&mut self, reason: String, now: Instant) {
        let Some(Reloading::Rolling(reload)) = self.reloading.take() else {
            return;
        };
        tracing::error!(
            app = %self.name(),
            generation = reload.generation,
            "reload aborted: {reason}; old workers keep serving"
        );
        let (starting, report, waiters) = reload.finish(Some(reason), now);
        if let Some((settings, generation, scaled)) = self.before_reload.take() {
            // Back to the last good config: what a crash restart, `restart` or `scale` starts
            // from now on. Slots already replaced keep their new workers (no rollback); slots the
            // reload added are retired.
            let n = settings.spec.instances;
            self.settings = settings;
            self.generation = generation;
            self.scaled = scaled;
            self.retire_slots_beyond(n, now);
        }
        for f in starting {
            // Not a slot's worker: it drains like any other (it may already take connections),
            // and its exit is expected.
            self.drain(f.new, now);
            if f.old_drained_early && self.slot_worker(f.slot) == f.old.map(|(id, _)| id) {
                // Its old worker was already told to stop: start the slot again as it was.
                self.slot_failed(
                    f.slot,
                    "old worker drained during an aborted reload".into(),
                    false,
                    now,
                );
            }
        }
        self.reply_all(waiters, &report);
        self.finish_reload(report, now);
    }

    fn finish_reload(&mut self, report: ReloadReport, now: Instant) {
        self.last_reload = Some(report);
        if let Some(waiters) = self.queued_reload.take() {
            // Stopping answered the queued clients already; only a running app reloads again.
            if self.phase == Phase::Running {
                self.reloading = Some(Reloading::ReadingConfig(waiters));
                self.out.push(Action::ReadConfig);
                return;
            }
        }
        if let Some((n, waiters)) = self.queued_scale.take() {
            for reply in waiters {
                self.scale(n, Some(reply), now);
            }
        }
    }

    // ---- memory recycling ----

    /// Its `max_memory` in bytes, if it has one (the supervisor samples memory while some app
    /// does).
    pub fn max_memory(&self) -> Option<u64> {
        self.settings.memory.max_bytes
    }

    /// A memory sample of its workers (bytes of resident memory of each one's process group) at
    /// `now`: marks the serving workers above `max_memory`, clears the others, and replaces one
    /// whose mark is older than the grace, if nothing else is being replaced.
    fn memory(&mut self, samples: &[(WorkerId, u64)], now: Instant) {
        let policy = self.settings.memory;
        let Some(max) = policy.max_bytes else {
            for w in self.workers.values_mut() {
                w.over_memory = None;
            }
            return;
        };
        for &(id, rss) in samples {
            // Only a ready worker serving its slot counts: a starting one is not serving yet, a
            // draining one is going anyway.
            let serving = self.workers.get(&id).is_some_and(|w| {
                w.state == WorkerState::Ready && self.slot_worker(w.slot) == Some(id)
            });
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            let pid = w.pid.unwrap_or(0);
            match (serving && rss > max, w.over_memory) {
                (true, None) => {
                    tracing::info!(
                        worker = %w.name,
                        pid,
                        "uses {} > max_memory {}: replaced if it stays above for {}",
                        crate::units::bytes(rss),
                        crate::units::size(max),
                        crate::units::span(policy.grace)
                    );
                    w.over_memory = Some((now, rss));
                }
                (true, Some((since, _))) => w.over_memory = Some((since, rss)),
                (false, Some(_)) => {
                    if serving {
                        tracing::info!(worker = %w.name, pid, "back below max_memory ({})", crate::units::bytes(rss));
                    }
                    w.over_memory = None;
                }
                (false, None) => {}
            }
        }
        self.maybe_recycle(now);
    }

    /// Starts the replacement of the worker longest above `max_memory` for at least the grace,
    /// unless the app is not running, reloads, or is already replacing one.
    fn maybe_recycle(&mut self, now: Instant) {
        let policy = self.settings.memory;
        let Some(max) = policy.max_bytes else {
            return;
        };
        if self.phase != Phase::Running || self.reloading.is_some() || self.recycling.is_some() {
            return;
        }
        let due = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready && self.slot_worker(w.slot) == Some(w.id))
            .filter_map(|w| {
                let (since, rss) = w.over_memory?;
                (now.saturating_duration_since(since) >= policy.grace)
                    .then_some((since, w.slot, w.id, rss))
            })
            .min();
        let Some((since, slot, old, rss)) = due else {
            return;
        };
        let Some(w) = self.workers.get(&old) else {
            return;
        };
        tracing::warn!(
            "{} pid {} used {} > max_memory {} for {}: replacing it",
            w.name,
            w.pid.unwrap_or(0),
            crate::units::bytes(rss),
            crate::units::size(max),
            crate::units::span(now.saturating_duration_since(since))
        );
        let (spec, generation) = (self.slots[slot].spec.clone(), self.slots[slot].generation);
        let new = self.spawn(slot, spec, generation, now);
        self.recycling = Some(Recycle {
            slot,
            old,
            new,
            rss,
            started: now,
        });
    }

    /// The replacement for memory is ready: it serves the slot and the old worker drains.
    fn recycle_done(&mut self, r: Recycle, new_pid: i32, now: Instant) {
        self.recycling = None;
        let Some(s) = self.slots.get_mut(r.slot) else {
            self.drain(r.new, now);
            return;
        };
        let previous = std::mem::replace(&mut s.state, SlotState::Serving(r.new));
        self.memory_recycles += 1;
        let old_pid = self.workers.get(&r.old).and_then(|w| w.pid).unwrap_or(0);
        tracing::info!(
            app = %self.name(),
            slot = r.slot,
            recycles = self.memory_recycles,
            "replaced for memory: pid {old_pid} -> {new_pid}, ready in {}; draining the old worker",
            crate::units::duration(now.saturating_duration_since(r.started).as_secs_f64())
        );
        match previous {
            SlotState::Serving(old) if old != r.new => self.drain(old, now),
            SlotState::BackingOff(_) => self.out.push(Action::Cancel(self.restart_key(r.slot))),
            _ => {}
        }
    }

    /// The replacement for memory failed (the caller stopped it if it runs): the old worker keeps
    /// serving, and is tried again once it stayed above the limit for another grace.
    fn recycle_failed(&mut self, r: Recycle, why: String, now: Instant) {
        self.recycling = None;
        self.memory_recycle_failures += 1;
        let grace = self.settings.memory.grace;
        if let Some(w) = self.workers.get_mut(&r.old) {
            if let Some((_, rss)) = w.over_memory {
                w.over_memory = Some((now, rss));
            }
            tracing::error!(
                worker = %w.name,
                pid = w.pid.unwrap_or(0),
                "replacement for memory failed: {why}; the worker keeps serving, tried again if it stays above max_memory for another {}",
                crate::units::span(grace)
            );
        }
    }

    /// Gives up the replacement for memory under way (a reload, restart, scale or stop takes
    /// over): its new worker drains, the old one stays the slot's.
    fn cancel_recycle(&mut self, why: &str, now: Instant) {
        if let Some(r) = self.recycling.take() {
            tracing::info!(app = %self.name(), slot = r.slot, "replacement for memory given up: {why}");
            self.drain(r.new, now);
        }
    }

    // ---- scale and restart ----

    /// Runs `n` workers from now on: new slots start at once, the highest slots beyond `n` drain.
    /// Asked for during a reload, it applies when the reload ends.
    fn scale(&mut self, n: usize, reply: Option<ReplyTo>, now: Instant) {
        if n > MAX_INSTANCES {
            // Refused before anything is queued or allocated: a typo must not fork-storm.
            if let Some(to) = reply {
                self.out.push(Action::Reply {
                    to,
                    answer: Answer::Refused(format!(
                        "cannot scale app {} to {n} workers: at most {MAX_INSTANCES}",
                        self.name()
                    )),
                });
            }
            return;
        }
        if self.reloading.is_some() {
            let q = self.queued_scale.get_or_insert((n, Vec::new()));
            q.0 = n;
            q.1.extend(reply);
            return;
        }
        let from = self.slots.len();
        let answer = |app: &App, note: Option<String>| Answer::Scaled {
            app: app.name().to_string(),
            from,
            to: n,
            note,
        };
        if !matches!(
            self.phase,
            Phase::Running | Phase::Waiting | Phase::Starting | Phase::Standby
        ) {
            if let Some(to) = reply {
                self.out.push(Action::Reply {
                    to,
                    answer: answer(self, Some("the supervisor is stopping".into())),
                });
            }
            return;
        }
        if self.recycling.is_some_and(|r| r.slot >= n) {
            self.cancel_recycle("its slot is scaled away", now);
        }
        Arc::make_mut(&mut self.settings.spec).instances = n;
        self.scaled = Some(n);
        let generation = self.generation;
        let started = !matches!(self.phase, Phase::Waiting | Phase::Standby);
        while self.slots.len() < n {
            self.slots
                .push(Slot::new(self.settings.spec.clone(), generation));
            if started {
                self.start_slot(self.slots.len() - 1, now);
            }
        }
        self.retire_slots_beyond(n, now);
        tracing::info!(app = %self.name(), from, to = n, "scaled");
        if let Some(to) = reply {
            let note = (from != n).then(|| {
                "kept until the next reload, which takes `instances` from the config file again"
                    .to_string()
            });
            self.out.push(Action::Reply {
                to,
                answer: answer(self, note),
            });
        }
    }

    /// Drains the workers of the slots at `n` and above, and forgets those slots.
    fn retire_slots_beyond(&mut self, n: usize, now: Instant) {
        while self.slots.len() > n {
            let index = self.slots.len() - 1;
            match self.slots.pop().map(|s| s.state) {
                Some(SlotState::Serving(id)) => self.drain(id, now),
                Some(SlotState::BackingOff(_)) => {
                    self.out.push(Action::Cancel(self.restart_key(index)))
                }
                _ => {}
            }
        }
    }

    /// New workers for every slot at once, old ones drained without waiting for the new ones to
    /// be ready: for an app that is stuck. A reload under way is aborted.
    fn restart(&mut self, reply: Option<ReplyTo>, now: Instant) {
        if self.phase != Phase::Running {
            if let Some(to) = reply {
                self.out.push(Action::Reply {
                    to,
                    answer: Answer::Refused(format!(
                        "{} is {}: nothing to restart",
                        self.name(),
                        self.phase
                    )),
                });
            }
            return;
        }
        self.abort_reload("a restart was asked for".into(), now);
        self.cancel_recycle("a restart was asked for", now);
        self.last_generation += 1;
        self.generation = self.last_generation;
        let generation = self.generation;
        tracing::info!(app = %self.name(), generation, "restarting every worker");
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                SlotState::Serving(id) => self.drain(id, now),
                SlotState::BackingOff(_) => self.out.push(Action::Cancel(self.restart_key(i))),
                SlotState::Idle => {}
            }
            let s = &mut self.slots[i];
            s.spec = self.settings.spec.clone();
            s.generation = generation;
            s.consecutive_failures = 0;
            s.recent_failures.clear();
            self.start_slot(i, now);
        }
        if let Some(to) = reply {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Restarted {
                    app: self.name().to_string(),
                    generation,
                    workers: self.slots.len(),
                },
            });
        }
    }

    // ---- cluster singleton ----

    fn lease_event(&mut self, event: LeaseEvent, now: Instant) {
        let Some(lease) = &mut self.lease else {
            return;
        };
        match event {
            LeaseEvent::Acquired { token, holder } => {
                lease.token = Some(token);
                lease.holder = Some((holder, token));
                if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
                    // The shell releases it once the stop is done.
                    return;
                }
                tracing::info!(app = %self.name(), token, "cluster singleton: this host took the lease (fencing token {token}); starting its workers");
                if self.phase == Phase::Standby {
                    // A takeover, not the first start: workers that cannot be executed back
                    // off like crashed ones instead of ending the supervisor.
                    self.phase = Phase::Running;
                    for i in 0..self.slots.len() {
                        self.start_slot(i, now);
                    }
                }
                // Waiting: it starts once the apps it is `after` are up, with the lease.
            }
            LeaseEvent::Standby { holder } => {
                if lease.token.is_none() && lease.holder != holder {
                    if let Some((h, t)) = &holder {
                        tracing::info!(app = %self.settings.spec.name, holder = %h, token = t, "cluster singleton: held by another host; standing by");
                    }
                    lease.holder = holder;
                }
            }
            LeaseEvent::Lost { expires_at, reason } => {
                if lease.token.take().is_none() {
                    return;
                }
                lease.holder = None;
                let left = expires_at.saturating_duration_since(now);
                tracing::error!(
                    app = %self.name(),
                    workers = self.workers.len(),
                    "cluster singleton: lease lost ({reason}); self-fencing: every worker drains now and is killed before the lease expires in {}",
                    crate::units::span(left)
                );
                self.fence(expires_at, now);
            }
            LeaseEvent::Released => {
                tracing::info!(app = %self.name(), "cluster singleton: lease released");
            }
        }
    }

    /// The lease is lost: drain every worker, killed at the latest a margin before `expires_at`,
    /// and stand by (a stopping app goes on stopping, with the same deadline).
    fn fence(&mut self, expires_at: Instant, now: Instant) {
        if matches!(self.phase, Phase::Running | Phase::Starting) {
            self.phase = Phase::Standby;
            self.first_start = None;
            let why = "the cluster singleton lost its lease";
            self.cancel_recycle(why, now);
            if let Some(waiters) = self.queued_reload.take() {
                self.answer_aborted(waiters, why);
            }
            if matches!(self.reloading, Some(Reloading::Rolling(_))) {
                self.abort_reload(why.into(), now);
            }
            for i in 0..self.slots.len() {
                if matches!(self.slots[i].state, SlotState::BackingOff(_)) {
                    self.out.push(Action::Cancel(self.restart_key(i)));
                }
                self.slots[i].state = SlotState::Idle;
            }
        }
        let margin = self
            .settings
            .singleton
            .as_ref()
            .map_or(std::time::Duration::ZERO, lease_kill_margin);
        let deadline = expires_at
            .checked_sub(margin)
            .unwrap_or(expires_at)
            .max(now);
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.drain(id, now);
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.kill_at.is_none_or(|at| at > deadline) {
                w.kill_at = Some(deadline);
                if deadline <= now {
                    self.out.push(Action::Signal {
                        worker: id,
                        signal: Signal::KillGroup,
                    });
                } else {
                    self.out.push(Action::Arm {
                        timer: TimerKey::Kill(id),
                        at: deadline,
                    });
                }
            }
        }
    }

    fn answer_aborted(&mut self, waiters: impl IntoIterator<Item = Waiter>, why: &str) {
        let report = self.aborted_report(self.last_generation + 1, why);
        self.reply_all(waiters, &report);
    }

    fn reply_all(&mut self, waiters: impl IntoIterator<Item = Waiter>, report: &ReloadReport) {
        self.reports.push(AppReport::Reloaded {
            report: report.clone(),
            waiters: waiters.into_iter().collect(),
        });
    }

    fn aborted_report(&self, generation: u64, reason: &str) -> ReloadReport {
        ReloadReport {
            app: self.name().to_string(),
            generation,
            outcome: ReloadOutcome::Aborted,
            reason: Some(reason.to_string()),
            note: None,
            slots: vec![],
            duration_secs: 0.0,
        }
    }
}

// ---- in-place upgrade: handing the app over to the next process and taking it back ----

impl App {
    /// Why this app cannot be handed over to an upgraded supervisor now, if it cannot: a
    /// reload, scale, restart or memory replacement under way, a worker starting or draining,
    /// or a cluster singleton's lease held (the lease is not handed over).
    pub fn not_upgradable(&self) -> Option<String> {
        let name = self.name();
        if !matches!(self.phase, Phase::Running | Phase::Standby) {
            return Some(format!("app {name} is {}", self.phase));
        }
        if self.reloading.is_some() || self.queued_reload.is_some() {
            return Some(format!("app {name} is reloading"));
        }
        if self.queued_scale.is_some() {
            return Some(format!("app {name} has a scale waiting"));
        }
        if self.recycling.is_some() {
            return Some(format!("app {name} is replacing a worker for its memory"));
        }
        if self.holds_lease() {
            return Some(format!(
                "app {name} is a cluster singleton whose lease this host holds (an upgrade does not hand leases over: upgrade while it stands by, or stop it)"
            ));
        }
        // A starting worker is handed over with its ready deadline, a draining one with its
        // kill deadline; one starting for anything but its slot's crash restart is part of an
        // operation refused above.
        if let Some(w) = self
            .workers
            .values()
            .find(|w| w.state == WorkerState::Starting && self.slot_worker(w.slot) != Some(w.id))
        {
            return Some(format!("worker {} is starting", w.name));
        }
        if let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Idle) {
            return Some(format!("slot {i} of app {name} has no worker"));
        }
        None
    }

    /// Whether this host holds the app's cluster singleton lease.
    pub fn holds_lease(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.token.is_some())
    }

    /// The app as handed over at `now` (call when [`App::not_upgradable`] is `None`).
    pub fn export(&self, now: Instant) -> AdoptedApp {
        let slots = self
            .slots
            .iter()
            .map(|s| {
                let worker = match s.state {
                    SlotState::Serving(id) => self.workers.get(&id).map(|w| adopted(w, now)),
                    _ => None,
                };
                AdoptedSlot {
                    generation: s.generation,
                    restarts: s.restarts,
                    consecutive_failures: s.consecutive_failures,
                    recent_failures_ago: s
                        .recent_failures
                        .iter()
                        .map(|t| now.saturating_duration_since(*t))
                        .collect(),
                    last_exit: s.last_exit.clone(),
                    worker,
                    restart_in: match s.state {
                        SlotState::BackingOff(at) => Some(at.saturating_duration_since(now)),
                        _ => None,
                    },
                }
            })
            .collect();
        AdoptedApp {
            name: self.name().to_string(),
            generation: self.generation,
            last_generation: Some(self.last_generation),
            next_id: self.next_id,
            restarts_total: self.restarts_total,
            memory_recycles: self.memory_recycles,
            memory_recycle_failures: self.memory_recycle_failures,
            last_reload: self.last_reload.as_ref().map(AdoptedReload::from),
            scaled: self.scaled,
            slots,
            draining: self
                .workers
                .values()
                .filter(|w| w.state == WorkerState::Draining)
                .map(|w| adopted(w, now))
                .collect(),
        }
    }

    /// The app at `index` with `settings` (the config file read again), taking over the running
    /// workers of `state` at `now`. A backing-off slot gets its restart deadline again
    /// ([`App::take_actions`]); a cluster singleton stands by until its lease task reports.
    pub fn adopt(index: AppIndex, settings: AppSettings, state: AdoptedApp, now: Instant) -> App {
        let mut app = App::new(index, settings);
        app.generation = state.generation;
        app.last_generation = state
            .last_generation
            .unwrap_or(state.generation)
            .max(state.generation);
        app.next_id = state.next_id.max(app.next_id);
        app.restarts_total = state.restarts_total;
        app.memory_recycles = state.memory_recycles;
        app.memory_recycle_failures = state.memory_recycle_failures;
        app.last_reload = state.last_reload.map(ReloadReport::from);
        app.scaled = state.scaled;
        app.phase = if app.lease.is_some() {
            Phase::Standby
        } else {
            Phase::Running
        };
        let spec = app.settings.spec.clone();
        app.slots = Vec::with_capacity(state.slots.len());
        for (i, s) in state.slots.into_iter().enumerate() {
            let mut slot = Slot::new(spec.clone(), s.generation);
            slot.restarts = s.restarts;
            slot.consecutive_failures = s.consecutive_failures;
            slot.recent_failures = s
                .recent_failures_ago
                .iter()
                .map(|ago| now.checked_sub(*ago).unwrap_or(now))
                .collect();
            slot.last_exit = s.last_exit;
            if let Some(w) = s.worker {
                slot.state = SlotState::Serving(w.id);
                let started_at = now.checked_sub(w.age).unwrap_or(now);
                if w.state == WorkerState::Starting {
                    app.out.push(Action::Arm {
                        timer: TimerKey::Ready(w.id),
                        at: started_at + spec.ready_timeout,
                    });
                }
                app.workers.insert(
                    w.id,
                    Worker {
                        id: w.id,
                        slot: i,
                        generation: w.generation,
                        name: format!("{}.{i}", spec.name),
                        pid: Some(w.pid),
                        state: w.state,
                        started_at,
                        status_text: w.status_text,
                        spec: spec.clone(),
                        over_memory: None,
                        kill_at: None,
                    },
                );
            } else if let Some(delay) = s.restart_in {
                slot.state = SlotState::BackingOff(now + delay);
                app.out.push(Action::Arm {
                    timer: app.restart_key(i),
                    at: now + delay,
                });
            }
            app.slots.push(slot);
        }
        for w in state.draining {
            let started_at = now.checked_sub(w.age).unwrap_or(now);
            let kill_at = now + w.kill_in.unwrap_or_default();
            app.out.push(Action::Arm {
                timer: TimerKey::Kill(w.id),
                at: kill_at,
            });
            app.workers.insert(
                w.id,
                Worker {
                    id: w.id,
                    slot: w.slot,
                    generation: w.generation,
                    name: format!("{}.{}", spec.name, w.slot),
                    pid: Some(w.pid),
                    state: WorkerState::Draining,
                    started_at,
                    status_text: w.status_text,
                    spec: spec.clone(),
                    over_memory: None,
                    kill_at: Some(kill_at),
                },
            );
        }
        app
    }
}

/// A worker as handed over at `now`.
fn adopted(w: &Worker, now: Instant) -> AdoptedWorker {
    AdoptedWorker {
        id: w.id,
        generation: w.generation,
        pid: w.pid.unwrap_or(0),
        slot: w.slot,
        state: w.state,
        kill_in: w.kill_at.map(|at| at.saturating_duration_since(now)),
        age: now.saturating_duration_since(w.started_at),
        status_text: w.status_text.clone(),
    }
}

/// The lease state a new app starts with: none for a host app, not held for a singleton.
fn settings_lease(settings: &AppSettings) -> Option<LeaseState> {
    settings.singleton.map(|_| LeaseState::default())
}

impl Slot {
    fn new(spec: Arc<WorkerSpec>, generation: u64) -> Slot {
        Slot {
            state: SlotState::Idle,
            spec,
            generation,
            restarts: 0,
            consecutive_failures: 0,
            recent_failures: VecDeque::new(),
            last_exit: None,
        }
    }

    /// More unstable exits than `max_restarts` in a row, or within the window: with the backoff
    /// capped above the window, the window alone would stop counting a slot that never comes up.
    fn crash_looping(&self, max_restarts: u32) -> bool {
        self.consecutive_failures > max_restarts || self.recent_failures.len() as u32 > max_restarts
    }
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
