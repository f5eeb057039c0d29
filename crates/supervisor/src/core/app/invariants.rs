//! What must hold of an app after every event, whatever happened before: checked by the
//! randomized simulation of the core ([`crate::core::simulation`]) after each of its steps.

use std::collections::BTreeSet;

use super::App;
use super::reload::Reloading;
use super::slots::SlotState;
use crate::config::MAX_INSTANCES;
use crate::core::{WorkerId, WorkerState};

/// The view of one slot the simulation checks its timers against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotView {
    /// Served by this worker.
    Serving(WorkerId),
    /// Backing off: a restart deadline must be armed.
    BackingOff,
    /// Nothing.
    Idle,
}

impl App {
    /// Every slot's state, in order.
    pub(crate) fn slot_views(&self) -> Vec<SlotView> {
        self.slots
            .iter()
            .map(|s| match s.state {
                SlotState::Serving(id) => SlotView::Serving(id),
                SlotState::BackingOff(_) => SlotView::BackingOff,
                SlotState::Idle => SlotView::Idle,
            })
            .collect()
    }

    /// How many new workers may run beside the slots' own: the reload's surge, or the one
    /// replacement for memory.
    pub(crate) fn surge(&self) -> usize {
        self.settings.reload.max_surge.max(1)
    }

    /// The app's own bookkeeping is consistent: every slot's worker exists, is that slot's and
    /// is not draining; no worker serves two slots; every worker that is not draining belongs to
    /// its slot, to the reload under way or to the replacement for memory (else nothing would
    /// ever replace, restart or stop it); generations only grow.
    pub(crate) fn invariants(&self) -> Result<(), String> {
        let name = self.name();
        if self.slots.len() > MAX_INSTANCES {
            return Err(format!("{name}: {} slots", self.slots.len()));
        }
        let rolling = match &self.reloading {
            Some(Reloading::Rolling(r)) => Some(r),
            _ => None,
        };
        let mut served = BTreeSet::new();
        for (i, s) in self.slots.iter().enumerate() {
            let SlotState::Serving(id) = s.state else {
                continue;
            };
            // Drained early (`max_unavailable`) while its replacement starts: the slot is still
            // its old worker's until then, draining or gone.
            let replaced = rolling.is_some_and(|r| {
                self.workers
                    .values()
                    .any(|n| n.slot == i && r.is_in_flight(n.id))
            });
            let Some(w) = self.workers.get(&id) else {
                if replaced {
                    continue;
                }
                return Err(format!(
                    "{name}: slot {i} is served by worker {id}, which is gone"
                ));
            };
            if w.slot != i {
                return Err(format!("{name}: slot {i} is served by {}", w.name));
            }
            if w.state == WorkerState::Draining && !replaced {
                return Err(format!(
                    "{name}: slot {i} is served by a draining worker {id}"
                ));
            }
            if !served.insert(id) {
                return Err(format!("{name}: worker {id} serves two slots"));
            }
        }
        for w in self.workers.values() {
            if w.state == WorkerState::Draining {
                if w.kill_at.is_none() {
                    return Err(format!("{name}: {} drains with no kill deadline", w.name));
                }
                continue;
            }
            let owned = served.contains(&w.id)
                || rolling.is_some_and(|r| r.is_in_flight(w.id))
                || self
                    .recycling
                    .is_some_and(|r| r.new == w.id || r.old == w.id);
            if !owned {
                return Err(format!(
                    "{name}: worker {} ({}, id {}) is {} but nobody's: not its slot's, the reload's \
                     or the memory replacement's",
                    w.name, w.generation, w.id, w.state
                ));
            }
        }
        if let Some(r) = self.recycling {
            for (what, id) in [("replacement", r.new), ("replaced worker", r.old)] {
                if !self.workers.contains_key(&id) {
                    return Err(format!("{name}: the memory {what} {id} is gone"));
                }
            }
        }
        if self.generation > self.last_generation {
            return Err(format!(
                "{name}: generation {} above the last one given out, {}",
                self.generation, self.last_generation
            ));
        }
        Ok(())
    }
}
