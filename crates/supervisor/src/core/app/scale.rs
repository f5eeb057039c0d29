//! `scale` (run another number of workers until the next reload, applied after a reload under
//! way) and `restart` (new workers for every slot at once, for an app that is stuck).

use std::sync::Arc;

use tokio::time::Instant;

use super::App;
use super::slots::{Slot, SlotState};
use crate::config::MAX_INSTANCES;
use crate::core::{Action, Answer, Phase, ReplyTo};

impl App {
    /// Runs `n` workers from now on: new slots start at once, the highest slots beyond `n` drain.
    /// Asked for during a reload, it applies when the reload ends.
    pub(super) fn scale(&mut self, n: usize, reply: Option<ReplyTo>, now: Instant) {
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
        if let Some(held) = self.held_reason() {
            // Queued, it would wait for as long as the canary holds.
            if let Some(to) = reply {
                let why = format!("cannot scale app {} now: {held}", self.name());
                self.out.push(Action::Reply {
                    to,
                    answer: Answer::Refused(why),
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
            self.slots.push(Slot::new(
                self.settings.spec.clone(),
                self.settings.sockets,
                generation,
            ));
            if started {
                self.start_slot(self.slots.len() - 1, now);
            }
        }
        self.retire_slots_beyond(n, now);
        tracing::info!(app = %self.name(), from, to = n, "scaled");
        if let Some(to) = reply {
            let mut note = (from != n).then(|| {
                "kept until the next reload, which takes `instances` from the config file again"
                    .to_string()
            });
            if n == 0 {
                // Its sockets stay bound: what is queued is served once it is scaled up again.
                note = Some(format!(
                    "no worker runs: its sockets stay bound and new connections wait in their queue (`supervisor stop {}` refuses them); {}",
                    self.name(),
                    note.unwrap_or_default()
                ));
            }
            self.out.push(Action::Reply {
                to,
                answer: answer(self, note),
            });
        }
    }

    /// Drains the workers of the slots at `n` and above, and forgets those slots.
    pub(super) fn retire_slots_beyond(&mut self, n: usize, now: Instant) {
        while self.slots.len() > n {
            let index = self.slots.len() - 1;
            match self.slots.pop().map(|s| s.state) {
                // Off its own socket first (the shell re-points the kernel's choice after this
                // step), then drained once what was routed to it is accepted.
                Some(SlotState::Serving(id))
                    if self.settings.balance.per_slot()
                        && self
                            .workers
                            .get(&id)
                            .is_some_and(|w| w.state == crate::core::WorkerState::Ready) =>
                {
                    self.drain_after(id, crate::core::UNROUTE_GRACE, now)
                }
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
    pub(super) fn restart(&mut self, reply: Option<ReplyTo>, now: Instant) {
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
            s.sockets = self.settings.sockets;
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
}
