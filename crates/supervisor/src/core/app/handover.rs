//! The in-place upgrade: handing the app over to the next process (its slots, workers with
//! their deadlines, counters and last reload) and taking it back.

use tokio::time::Instant;

use super::App;
use super::slots::{Slot, SlotState};
use crate::core::adopt::{AdoptedApp, AdoptedReload, AdoptedSlot, AdoptedWorker};
use crate::core::report::ReloadReport;
use crate::core::{Action, AppId, AppSettings, Phase, TimerKey, Worker, WorkerState, later};

impl App {
    /// Why this app cannot be handed over to an upgraded supervisor now, if it cannot: a
    /// reload, scale, restart or memory replacement under way, a worker starting or draining,
    /// or a cluster singleton's lease held (the lease is not handed over).
    pub fn not_upgradable(&self) -> Option<String> {
        let name = self.name();
        if !matches!(self.phase, Phase::Running | Phase::Standby | Phase::Stopped) {
            return Some(format!("app {name} is {}", self.phase));
        }
        if self.sockets_in_use().len() > 1 {
            return Some(format!(
                "app {name} serves on its old and its new sockets (a reload that moved its listeners was aborted): reload it first"
            ));
        }
        if let Some(held) = self.held_reason() {
            return Some(format!("app {name}: {held}"));
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
        if let Some(w) = self.workers.values().find(|w| w.term_at.is_some()) {
            return Some(format!(
                "worker {} was just taken off its socket and is told to drain in a moment",
                w.name
            ));
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
        let stopped = self.phase == Phase::Stopped;
        if let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Idle)
            && !stopped
        {
            return Some(format!("slot {i} of app {name} has no worker"));
        }
        None
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
            id: Some(self.id),
            name: self.name().to_string(),
            stopped: self.phase == Phase::Stopped,
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
    pub fn adopt(id: AppId, settings: AppSettings, state: AdoptedApp, now: Instant) -> App {
        let mut app = App::new(id, settings);
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
        app.phase = if state.stopped {
            Phase::Stopped
        } else if app.lease.is_some() {
            Phase::Standby
        } else {
            Phase::Running
        };
        let spec = app.settings.spec.clone();
        app.slots = Vec::with_capacity(state.slots.len());
        for (i, s) in state.slots.into_iter().enumerate() {
            let mut slot = Slot::new(spec.clone(), app.settings.sockets, s.generation);
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
                        at: later(started_at, spec.ready_timeout),
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
                        hung: false,
                        event_loop_lag: None,
                        kill_at: None,
                        sockets: app.settings.sockets,
                        term_at: None,
                    },
                );
            } else if let Some(delay) = s.restart_in {
                slot.state = SlotState::BackingOff(later(now, delay));
                app.out.push(Action::Arm {
                    timer: app.restart_key(i),
                    at: later(now, delay),
                });
            }
            app.slots.push(slot);
        }
        for w in state.draining {
            let started_at = now.checked_sub(w.age).unwrap_or(now);
            let kill_at = later(now, w.kill_in.unwrap_or_default());
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
                    hung: false,
                    event_loop_lag: None,
                    kill_at: Some(kill_at),
                    sockets: app.settings.sockets,
                    term_at: None,
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
