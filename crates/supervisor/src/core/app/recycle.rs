//! Memory recycling (`max_memory`): each sample marks a serving worker above the limit with the
//! instant it was first seen above (a sample below clears it). One whose mark is older than
//! `max_memory_grace` is replaced like one slot of a rolling reload: a new worker for its slot,
//! same generation and program, and the old one drains only once the new one is ready. One slot
//! at a time per app, never while the app reloads or stops. A replacement that fails (exits,
//! cannot be executed, is not ready within `ready_timeout`) leaves the old worker serving, and
//! its mark starts over: it is tried again once it has stayed above the limit for another grace.

use tokio::time::Instant;

use super::App;
use super::slots::SlotState;
use crate::core::{Action, Phase, WorkerId, WorkerState};

/// A worker being replaced for its memory: its replacement starts beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recycle {
    /// The slot.
    pub(super) slot: usize,
    /// The worker replaced (it serves the slot until the replacement is ready).
    pub(super) old: WorkerId,
    /// The replacement.
    pub(super) new: WorkerId,
    /// The old worker's memory when its replacement was started.
    pub(super) rss: u64,
    /// When the replacement was started.
    pub(super) started: Instant,
}

impl App {
    /// Its `max_memory` in bytes, if it has one (the supervisor samples memory while some app
    /// does).
    pub fn max_memory(&self) -> Option<u64> {
        self.settings.memory.max_bytes
    }

    /// A memory sample of its workers (bytes of resident memory of each one's process group) at
    /// `now`: marks the serving workers above `max_memory`, clears the others, and replaces one
    /// whose mark is older than the grace, if nothing else is being replaced.
    pub(super) fn memory(&mut self, samples: &[(WorkerId, u64)], now: Instant) {
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
        let s = &self.slots[slot];
        let (spec, sockets, generation) = (s.spec.clone(), s.sockets, s.generation);
        let new = self.spawn(slot, spec, sockets, generation, now);
        self.recycling = Some(Recycle {
            slot,
            old,
            new,
            rss,
            started: now,
        });
    }

    /// The replacement for memory is ready: it serves the slot and the old worker drains.
    pub(super) fn recycle_done(&mut self, r: Recycle, new_pid: i32, now: Instant) {
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
    pub(super) fn recycle_failed(&mut self, r: Recycle, why: String, now: Instant) {
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
    pub(super) fn cancel_recycle(&mut self, why: &str, now: Instant) {
        if let Some(r) = self.recycling.take() {
            tracing::info!(app = %self.name(), slot = r.slot, "replacement for memory given up: {why}");
            self.drain(r.new, now);
        }
    }
}
