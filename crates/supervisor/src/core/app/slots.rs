//! Starting and watching an app's workers: spawn, ready, exit and the ready and kill deadlines;
//! crash restarts with backoff (a slot that keeps failing is a crash loop); the first start,
//! which fails as a whole when no worker could even be executed; stopping. Whose a worker is
//! (a reload's, a memory replacement's, its slot's, or nobody's) is one lookup, [`Owner`].

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use super::recycle::Recycle;
use super::reload::Reloading;
use super::{App, AppReport};
use crate::config::{Readiness, WorkerSpec};
use crate::core::{
    Action, Answer, EX_CONFIG, ExitStatus, Phase, Signal, SocketSet, TimerKey, Worker, WorkerId,
    WorkerState, later,
};

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// Its worker (starting or ready).
    Serving(WorkerId),
    /// Waiting until then to start again.
    BackingOff(Instant),
    /// No worker and nothing scheduled: a slot a reload is about to fill, or a stopping one.
    Idle,
}

/// One of the app's `instances`: what it runs, its worker or backoff, its crash history.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: SlotState,
    /// What this slot runs (the generation it was last started or replaced in).
    pub(super) spec: Arc<WorkerSpec>,
    /// The sockets its workers get (those of the same generation).
    pub(super) sockets: SocketSet,
    pub(super) generation: u64,
    pub(super) restarts: u32,
    pub(super) consecutive_failures: u32,
    pub(super) recent_failures: VecDeque<Instant>,
    pub(super) last_exit: Option<String>,
}

/// The first start: `start` fails when no worker could even be executed.
#[derive(Debug)]
pub(super) struct FirstStart {
    pub(super) outstanding: usize,
    pub(super) errors: Vec<String>,
}

/// Which in-flight operation a worker belongs to ([`App::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A new worker of the rolling reload under way, not ready yet: its readiness replaces a
    /// slot, its failure aborts the reload.
    Reload,
    /// The new worker of the replacement for memory under way: its readiness completes the
    /// replacement, its failure gives it up (the old worker keeps serving).
    Recycle(Recycle),
    /// The worker that replacement replaces, still serving its slot: if it dies first, the
    /// replacement takes the slot.
    Recycled(Recycle),
    /// The worker serving this slot: its failure restarts the slot after the backoff.
    Slot(usize),
    /// None of those: a worker told to drain (a stop, an aborted reload, a scale down, one
    /// replaced), whose exit is expected.
    Draining,
}

impl App {
    /// The first start: every slot at once (a cluster singleton without its lease stands by).
    pub(super) fn start(&mut self, now: Instant) {
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
        self.starting_up = self.lease.is_none();
        for i in 0..self.slots.len() {
            self.start_slot(i, now);
        }
    }

    /// A new worker for slot `index`, with what the slot runs; it serves the slot from now on.
    pub(super) fn start_slot(&mut self, index: usize, now: Instant) {
        let s = &self.slots[index];
        let (spec, sockets, generation) = (s.spec.clone(), s.sockets, s.generation);
        let id = self.spawn(index, spec, sockets, generation, now);
        self.slots[index].state = SlotState::Serving(id);
    }

    /// Asks the shell to start a worker; the core knows it as starting from now on.
    pub(super) fn spawn(
        &mut self,
        slot: usize,
        spec: Arc<WorkerSpec>,
        sockets: SocketSet,
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
                hung: false,
                event_loop_lag: None,
                kill_at: None,
                sockets,
                term_at: None,
            },
        );
        self.out.push(Action::Spawn {
            app: self.id,
            worker: id,
            slot,
            generation,
            spec,
            sockets,
            fencing_token: self.lease.as_ref().and_then(|l| l.token),
        });
        id
    }

    /// The worker runs: it has until its ready deadline (or is ready now, with `exec` readiness).
    pub(super) fn spawned(&mut self, id: WorkerId, pid: i32, now: Instant) {
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
                at: later(now, timeout),
            }),
            // Executed = ready, through the same path as READY=1.
            Readiness::Exec => self.ready(id, now),
        }
    }

    /// The worker could not be executed: a failure for its owner, or for the first start.
    pub(super) fn spawn_failed(&mut self, id: WorkerId, error: String, now: Instant) {
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
                self.fail_start(errors, now);
                return;
            }
        }
        match self.owner(id, w.slot) {
            Owner::Reload => self.abort_reload(
                format!("cannot start new worker for slot {}: {error}", w.slot),
                now,
            ),
            Owner::Recycle(r) => {
                self.recycle_failed(r, format!("cannot start new worker: {error}"), now)
            }
            Owner::Slot(slot) | Owner::Recycled(Recycle { slot, .. }) => {
                self.slot_failed(slot, error, true, now)
            }
            Owner::Draining => {}
        }
    }

    /// No worker of the first start could be executed: exit with the reason, nothing left
    /// running. An app added by a reload or started by hand is stopped instead, and its clients
    /// are told why.
    fn fail_start(&mut self, errors: Vec<String>, now: Instant) {
        let mut reason = String::from("no worker could be started");
        if let Some(first) = errors.first() {
            reason = format!("{reason}: {first}");
        }
        if errors.len() > 1 {
            reason = format!("{reason} (and {} more)", errors.len() - 1);
        }
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, SlotState::BackingOff(_)) {
                self.out.push(Action::Cancel(self.restart_key(i)));
            }
            self.slots[i].state = SlotState::Idle;
        }
        if self.initial {
            self.phase = Phase::Stopped;
            self.reports.push(AppReport::StartFailed(reason));
            return;
        }
        tracing::error!(app = %self.name(), "{reason}: the app is stopped");
        self.answer_start(Err(format!("{}: {reason}", self.name())));
        // Its workers (if any is left) drain; it is stopped once they are gone.
        self.stop_with(&reason, now);
    }

    /// A worker of the first start exited with [`EX_CONFIG`] before any worker of the app was
    /// ready: the app cannot run as configured, and restarting cannot fix it. Its other workers
    /// are killed and the start fails at once, with the reason (its own lines said why).
    fn config_error_at_start(&mut self, w: &Worker, pid: i32, status: ExitStatus, now: Instant) {
        let mut reason = format!(
            "worker {} (pid {pid}) exited before it was ready with {status}: not restarted \
             (its last lines say why)",
            w.name
        );
        if let Some(hint) = &self.settings.not_ready_hint {
            reason = format!("{reason}; {hint}");
        }
        if !self.initial {
            // Added by a reload or started by hand: the app stops, the supervisor goes on.
            tracing::error!(app = %self.name(), "{reason}: the app is stopped");
            self.first_start = None;
            self.starting_up = false;
            self.answer_start(Err(format!("{}: {reason}", self.name())));
            self.stop_with(&reason, now);
            return;
        }
        for &worker in self.workers.keys() {
            self.out.push(Action::Signal {
                worker,
                signal: Signal::KillGroup,
            });
        }
        for s in &mut self.slots {
            s.state = SlotState::Idle;
        }
        self.first_start = None;
        self.starting_up = false;
        self.phase = Phase::Stopped;
        self.reports.push(AppReport::StartFailed(reason));
    }

    /// The worker said it is ready: a reload's replaces its slot, a memory replacement's
    /// completes it.
    pub(super) fn ready(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state != WorkerState::Starting {
            return;
        }
        w.state = WorkerState::Ready;
        self.starting_up = false;
        let (pid, slot) = (w.pid.unwrap_or(0), w.slot);
        tracing::info!(worker = %w.name, pid, generation = w.generation, ready_ms = (now - w.started_at).as_millis() as u64, "worker ready");
        self.out.push(Action::Cancel(TimerKey::Ready(id)));
        self.arm_watchdog(id, now);
        match self.owner(id, slot) {
            Owner::Reload => {
                let replaced = match &mut self.reloading {
                    Some(Reloading::Rolling(r)) => r.ready(id, pid, now),
                    _ => None,
                };
                if let Some(f) = replaced {
                    self.slot_replaced(f, now);
                    self.advance_reload(now);
                }
            }
            Owner::Recycle(r) => self.recycle_done(r, pid, now),
            // A crash restart's worker simply serves its slot.
            Owner::Slot(_) | Owner::Recycled(_) | Owner::Draining => {}
        }
    }

    /// The worker process exited: expected when it was draining, a failure for its owner
    /// otherwise.
    pub(super) fn exited(&mut self, id: WorkerId, status: ExitStatus, now: Instant) {
        self.disarm_watchdog(id);
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        self.out.push(Action::Cancel(TimerKey::Ready(id)));
        self.out.push(Action::Cancel(TimerKey::Kill(id)));
        if w.term_at.is_some() {
            self.out.push(Action::Cancel(TimerKey::Drain(id)));
        }
        let uptime = now - w.started_at;
        let pid = w.pid.unwrap_or(0);
        if w.state == WorkerState::Draining {
            tracing::info!(worker = %w.name, pid, %status, uptime_ms = uptime.as_millis() as u64, "worker exited");
            return;
        }
        tracing::warn!(worker = %w.name, pid, %status, uptime_ms = uptime.as_millis() as u64, "worker exited unexpectedly ({})", w.state);
        let config_error =
            status == ExitStatus::Code(EX_CONFIG) && w.state == WorkerState::Starting;
        if config_error && self.starting_up && self.phase == Phase::Running {
            self.config_error_at_start(&w, pid, status, now);
            return;
        }
        // What the runtime waits for, after a configuration error: the fix is the same.
        let hint = match (&self.settings.not_ready_hint, config_error) {
            (Some(hint), true) => format!(": {hint}"),
            _ => String::new(),
        };
        match self.owner(id, w.slot) {
            Owner::Reload => self.abort_reload(
                format!(
                    "new worker {} (pid {pid}) exited before it was ready: {status}{hint}",
                    w.name
                ),
                now,
            ),
            Owner::Recycle(r) => {
                let why = format!("new worker (pid {pid}) exited before it was ready: {status}");
                self.recycle_failed(r, why, now);
            }
            Owner::Recycled(r) => {
                // The worker being replaced died first: its replacement, already starting, takes
                // the slot at once instead of a crash restart (it is the slot's worker from now
                // on, with the slot's ready deadline and crash rules).
                self.recycling = None;
                tracing::warn!(worker = %w.name, pid, "exited while its replacement for memory was starting: the replacement takes the slot");
                if let Some(s) = self.slots.get_mut(r.slot) {
                    s.state = SlotState::Serving(r.new);
                    s.restarts += 1;
                    s.last_exit = Some(format!("{status} while {}", w.state));
                }
            }
            Owner::Slot(slot) => {
                let unstable =
                    w.state == WorkerState::Starting || uptime < self.settings.restart.min_uptime;
                self.slot_failed(slot, format!("{status} while {}", w.state), unstable, now);
                self.canary_failed(slot, format!("(pid {pid}) exited: {status}"), now);
            }
            Owner::Draining => {}
        }
    }

    /// A deadline of its own passed: a worker not ready in time (drained, a failure for its
    /// owner), a slot's backoff over, a draining worker to kill.
    pub(super) fn timer(&mut self, key: TimerKey, now: Instant) {
        match key {
            TimerKey::Drain(id) => self.drain_now(id),
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
                let owner = self.owner(id, w.slot);
                // It may already take connections from the shared socket: drain it like any
                // other worker (SIGTERM, SIGKILL after its kill timeout).
                self.drain(id, now);
                match owner {
                    Owner::Reload => self.abort_reload(msg, now),
                    Owner::Recycle(r) => self.recycle_failed(r, msg, now),
                    Owner::Slot(slot) | Owner::Recycled(Recycle { slot, .. }) => {
                        self.slot_failed(slot, msg, true, now)
                    }
                    Owner::Draining => {}
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
            TimerKey::Watchdog(id) => self.watchdog_missed(id, now),
            TimerKey::CanaryHold { generation, .. } => self.canary_hold_over(generation, now),
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

    /// The deadline of slot `slot`'s backoff.
    pub(super) fn restart_key(&self, slot: usize) -> TimerKey {
        TimerKey::Restart { app: self.id, slot }
    }

    /// The worker serving `slot`, if any.
    pub(super) fn slot_worker(&self, slot: usize) -> Option<WorkerId> {
        match self.slots.get(slot)?.state {
            SlotState::Serving(id) => Some(id),
            _ => None,
        }
    }

    /// Which in-flight operation owns worker `id` of `slot`: the one lookup behind what its
    /// readiness, its exit, a failed start or a missed ready deadline concerns.
    pub(super) fn owner(&self, id: WorkerId, slot: usize) -> Owner {
        if matches!(&self.reloading, Some(Reloading::Rolling(r)) if r.is_in_flight(id)) {
            Owner::Reload
        } else if let Some(r) = self.recycling.filter(|r| r.new == id) {
            Owner::Recycle(r)
        } else if let Some(r) = self.recycling.filter(|r| r.old == id) {
            Owner::Recycled(r)
        } else if self.slot_worker(slot) == Some(id) {
            Owner::Slot(slot)
        } else {
            Owner::Draining
        }
    }

    /// A slot lost its worker without being asked to: restart it after the backoff.
    pub(super) fn slot_failed(
        &mut self,
        index: usize,
        reason: String,
        unstable: bool,
        now: Instant,
    ) {
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
        s.state = SlotState::BackingOff(later(now, delay));
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
            at: later(now, delay),
        });
        if !self.start_waiters.is_empty() {
            let why = format!(
                "{}.{index}: {}; restarting it in {delay_text} (`supervisor stop {}` stops the app)",
                self.name(),
                self.slots[index].last_exit.clone().unwrap_or_default(),
                self.name()
            );
            self.answer_start(Err(why));
        }
    }

    /// SIGTERM to a starting or ready worker, and its kill deadline.
    pub(super) fn drain(&mut self, id: WorkerId, now: Instant) {
        self.drain_after(id, std::time::Duration::ZERO, now);
    }

    /// Drains a worker `delay` from now: until then it is draining (nobody's, its kill deadline
    /// armed that much later) but not told yet, so that it still accepts what the kernel routed
    /// to its slot's socket before the route changed ([`TimerKey::Drain`]).
    pub(super) fn drain_after(&mut self, id: WorkerId, delay: std::time::Duration, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Draining {
            return;
        }
        w.state = WorkerState::Draining;
        if w.spec.watchdog.is_some() {
            self.out.push(Action::Cancel(TimerKey::Watchdog(id)));
        }
        let at = later(now, delay + w.spec.kill_timeout);
        w.kill_at = Some(at);
        self.out.push(Action::Cancel(TimerKey::Ready(id)));
        if delay.is_zero() {
            tracing::info!(worker = %w.name, pid = w.pid.unwrap_or(0), "draining ({})", w.spec.contract.kill_signal.name());
            self.out.push(Action::Signal {
                worker: id,
                signal: Signal::Term,
            });
        } else {
            tracing::info!(worker = %w.name, pid = w.pid.unwrap_or(0), "taken off its socket: draining ({}) in {}", w.spec.contract.kill_signal.name(), crate::units::span(delay));
            let term = later(now, delay);
            w.term_at = Some(term);
            self.out.push(Action::Arm {
                timer: TimerKey::Drain(id),
                at: term,
            });
        }
        self.out.push(Action::Arm {
            timer: TimerKey::Kill(id),
            at,
        });
    }

    /// [`TimerKey::Drain`]: a worker taken off its socket is told to drain now.
    fn drain_now(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.term_at.take().is_none() {
            return;
        }
        tracing::info!(worker = %w.name, pid = w.pid.unwrap_or(0), "draining ({})", w.spec.contract.kill_signal.name());
        self.out.push(Action::Signal {
            worker: id,
            signal: Signal::Term,
        });
    }

    /// Drains every worker because the supervisor stops; [`AppReport::Stopped`] says when none
    /// is left (the core answers the clients waiting for the stop).
    pub(super) fn stop(&mut self, now: Instant) {
        self.stop_with("the supervisor is stopping", now);
    }

    /// Drains every worker, for the reason `stopping` (what the clients of a reload or a start
    /// it cuts short are told). Its sockets are no longer in use from now on.
    pub(super) fn stop_with(&mut self, stopping: &str, now: Instant) {
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
        self.stop_drained = self.workers.len();
        if !self.start_waiters.is_empty() {
            let why = format!("{} was stopped before it was up: {stopping}", self.name());
            self.answer_start(Err(why));
        }
        self.cancel_recycle(stopping, now);
        if let Some(waiters) = self.queued_reload.take() {
            self.answer_aborted(waiters, stopping);
        }
        if let Some((to, waiters)) = self.queued_scale.take() {
            for reply in waiters {
                self.out.push(Action::Reply {
                    to: reply,
                    answer: Answer::Refused(format!(
                        "app {} was not scaled to {to}: {stopping}",
                        self.name()
                    )),
                });
            }
        }
        match self.reloading.take() {
            Some(Reloading::ReadingConfig { waiters, .. }) => {
                self.answer_aborted(waiters, stopping)
            }
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

    /// Stops, and kills every worker's process group at once.
    pub(super) fn fast_stop(&mut self, now: Instant) {
        self.stop(now);
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for worker in ids {
            self.out.push(Action::Signal {
                worker,
                signal: Signal::KillGroup,
            });
        }
    }

    /// A stopping app whose last worker is gone is stopped (and gives its lease back); the
    /// clients of `stop APP` are answered.
    pub(super) fn check_stopped(&mut self) {
        if self.phase == Phase::Stopping && self.workers.is_empty() {
            self.phase = Phase::Stopped;
            if self.lease.is_some() {
                // Only now: another host may start the app the moment the lease is gone.
                self.out.push(Action::ReleaseLease(self.id));
            }
            for to in std::mem::take(&mut self.stop_waiters) {
                self.out.push(Action::Reply {
                    to,
                    answer: crate::core::Answer::Switched(crate::core::Switched::Stopped {
                        app: self.name().to_string(),
                        workers: self.stop_drained,
                        already: false,
                    }),
                });
            }
            self.reports.push(AppReport::Stopped);
        }
    }
}

impl Slot {
    /// A slot running `spec` on `sockets` in `generation`, with no worker yet.
    pub(super) fn new(spec: Arc<WorkerSpec>, sockets: SocketSet, generation: u64) -> Slot {
        Slot {
            state: SlotState::Idle,
            spec,
            sockets,
            generation,
            restarts: 0,
            consecutive_failures: 0,
            recent_failures: VecDeque::new(),
            last_exit: None,
        }
    }

    /// More unstable exits than `max_restarts` in a row, or within the window: with the backoff
    /// capped above the window, the window alone would stop counting a slot that never comes up.
    pub(super) fn crash_looping(&self, max_restarts: u32) -> bool {
        self.consecutive_failures > max_restarts || self.recent_failures.len() as u32 > max_restarts
    }
}
