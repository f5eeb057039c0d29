//! Replacing a serving worker beside its slot, for one of three reasons ([`ReplaceReason`]):
//! it is hung (missed its watchdog: see `health`), it stayed above `max_memory`, or it is older
//! than `max_age` (plus its share of the jitter), in that order of priority. The replacement is
//! like one slot of a rolling reload: a new worker for its slot, same generation and program,
//! and the old one drains only once the new one is ready. One slot at a time per app, never
//! while the app reloads or stops.
//!
//! Memory: each sample marks a serving worker above the limit with the instant it was first seen
//! above (a sample below clears it); one whose mark is older than `max_memory_grace` is due. A
//! replacement that fails (exits, cannot be executed, is not ready within `ready_timeout`) leaves
//! the old worker serving: for memory its mark starts over (tried again after another grace), a
//! hung worker is tried again after another watchdog period, an old one after the grace.

use tokio::time::Instant;

use super::App;
use super::slots::SlotState;
use crate::core::report::ReplaceReason;
use crate::core::{Action, Phase, TimerKey, WorkerId, WorkerState, later};

/// A worker being replaced: its replacement starts beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recycle {
    /// Why.
    pub(super) why: ReplaceReason,
    /// The slot.
    pub(super) slot: usize,
    /// The worker replaced (it serves the slot until the replacement is ready).
    pub(super) old: WorkerId,
    /// The replacement.
    pub(super) new: WorkerId,
    /// The old worker's memory when its replacement was started (0 unless for memory).
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
            // The same tick checks the ages.
            self.maybe_recycle(now);
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

    /// Starts the replacement of the worker most due: a hung one, else the one longest above
    /// `max_memory` for at least the grace, else the oldest past its age; unless the app is not
    /// running, reloads, or is already replacing one.
    pub(super) fn maybe_recycle(&mut self, now: Instant) {
        if self.phase != Phase::Running || self.reloading.is_some() || self.recycling.is_some() {
            return;
        }
        let serving: Vec<&crate::core::Worker> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready && self.slot_worker(w.slot) == Some(w.id))
            .collect();
        let hung = serving.iter().find(|w| w.hung).map(|w| {
            let why = "hung (missed its watchdog)".to_string();
            (w.slot, w.id, ReplaceReason::Watchdog, 0, why)
        });
        let memory = || {
            let policy = self.settings.memory;
            let max = policy.max_bytes?;
            let (since, slot, id, rss) = serving
                .iter()
                .filter_map(|w| {
                    let (since, rss) = w.over_memory?;
                    (now.saturating_duration_since(since) >= policy.grace)
                        .then_some((since, w.slot, w.id, rss))
                })
                .min()?;
            let why = format!(
                "used {} > max_memory {} for {}",
                crate::units::bytes(rss),
                crate::units::size(max),
                crate::units::span(now.saturating_duration_since(since))
            );
            Some((slot, id, ReplaceReason::Memory, rss, why))
        };
        let age = || {
            if self.age_retry_at.is_some_and(|at| now < at) {
                return None;
            }
            let policy = self.settings.age;
            let (started, slot, id, limit) = serving
                .iter()
                .filter_map(|w| {
                    let limit = policy.limit_for(w.id)?;
                    (now.saturating_duration_since(w.started_at) >= limit).then_some((
                        w.started_at,
                        w.slot,
                        w.id,
                        limit,
                    ))
                })
                .min()?;
            let why = format!(
                "is {} old, past its max_age ({} with its share of the jitter)",
                crate::units::span(now.saturating_duration_since(started)),
                crate::units::span(limit)
            );
            Some((slot, id, ReplaceReason::MaxAge, 0, why))
        };
        let Some((slot, old, why, rss, text)) = hung.or_else(memory).or_else(age) else {
            return;
        };
        let Some(w) = self.workers.get(&old) else {
            return;
        };
        tracing::warn!("{} pid {} {text}: replacing it", w.name, w.pid.unwrap_or(0),);
        let s = &self.slots[slot];
        let (spec, sockets, generation) = (s.spec.clone(), s.sockets, s.generation);
        let new = self.spawn(slot, spec, sockets, generation, now);
        self.recycling = Some(Recycle {
            why,
            slot,
            old,
            new,
            rss,
            started: now,
        });
    }

    /// The replacement is ready: it serves the slot and the old worker drains.
    pub(super) fn recycle_done(&mut self, r: Recycle, new_pid: i32, now: Instant) {
        self.recycling = None;
        let Some(s) = self.slots.get_mut(r.slot) else {
            self.drain(r.new, now);
            return;
        };
        let previous = std::mem::replace(&mut s.state, SlotState::Serving(r.new));
        let count = match r.why {
            ReplaceReason::Memory => &mut self.memory_recycles,
            ReplaceReason::Watchdog => &mut self.watchdog_recycles,
            ReplaceReason::MaxAge => &mut self.age_recycles,
        };
        *count += 1;
        let count = *count;
        let old_pid = self.workers.get(&r.old).and_then(|w| w.pid).unwrap_or(0);
        tracing::info!(
            app = %self.name(),
            slot = r.slot,
            reason = r.why.text(),
            count,
            "replaced ({}): pid {old_pid} -> {new_pid}, ready in {}; draining the old worker",
            r.why.text(),
            crate::units::duration(now.saturating_duration_since(r.started).as_secs_f64())
        );
        match previous {
            SlotState::Serving(old) if old != r.new => self.drain(old, now),
            SlotState::BackingOff(_) => self.out.push(Action::Cancel(self.restart_key(r.slot))),
            _ => {}
        }
        // Another worker may be due meanwhile (a second hung one).
        self.maybe_recycle(now);
    }

    /// The replacement failed (the caller stopped it if it runs): the old worker keeps serving,
    /// and is tried again later: for memory once it stayed above the limit for another grace, a
    /// hung one after another watchdog period, an old one after the grace.
    pub(super) fn recycle_failed(&mut self, r: Recycle, why: String, now: Instant) {
        self.recycling = None;
        self.memory_recycle_failures += 1;
        let grace = self.settings.memory.grace;
        match r.why {
            ReplaceReason::Memory => {}
            ReplaceReason::Watchdog => {
                if let Some(w) = self.workers.get(&r.old)
                    && let Some(period) = w.spec.watchdog
                {
                    tracing::error!(worker = %w.name, "replacement of a hung worker failed: {why}; tried again in {}", crate::units::span(period));
                    self.out.push(Action::Arm {
                        timer: TimerKey::Watchdog(r.old),
                        at: later(now, period),
                    });
                }
                return;
            }
            ReplaceReason::MaxAge => {
                self.age_retry_at = Some(later(now, grace));
                tracing::error!(app = %self.name(), slot = r.slot, "replacement for age failed: {why}; tried again in {}", crate::units::span(grace));
                return;
            }
        }
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

    /// Gives up the replacement under way (a reload, restart, scale or stop takes over): its new
    /// worker drains, the old one stays the slot's.
    pub(super) fn cancel_recycle(&mut self, why: &str, now: Instant) {
        if let Some(r) = self.recycling.take() {
            tracing::info!(app = %self.name(), slot = r.slot, reason = r.why.text(), "replacement given up: {why}");
            self.drain(r.new, now);
        }
    }
}
