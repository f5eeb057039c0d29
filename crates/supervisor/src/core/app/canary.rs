//! Canary reloads: `reload APP --canary` (or any reload of an app with `canary_hold`) replaces
//! one slot and holds once that worker is ready, the other slots serving the previous
//! generation. `--continue` rolls the other slots; `--rollback` puts the previous generation
//! back on the canary's slot (the graceful way: its worker ready before the canary drains).
//! With `canary_hold`, the reload continues by itself when the hold is over, unless the canary
//! exited or hung meanwhile: then, as for a canary that fails while held by hand, it is rolled
//! back at once. While a canary holds, other reloads are refused with what to do.

use tokio::time::Instant;

use super::reload::Reloading;
use super::rolling::{Canary, Reload};
use super::slots::SlotState;
use super::{App, AppReport};
use crate::core::report::ReloadMode;
use crate::core::{Action, TimerKey, Waiter, WorkerState};

impl App {
    /// A reload asked for in `mode`, by `waiter` if any.
    pub fn reload_request(&mut self, mode: ReloadMode, waiter: Option<Waiter>, now: Instant) {
        if let Some(why) = self.reload_refusal(mode) {
            tracing::warn!(app = %self.name(), "reload refused: {why}");
            self.refuse_reload(waiter, &why);
            return;
        }
        match mode {
            ReloadMode::Rolling => self.request_reload(waiter, false),
            ReloadMode::Canary => self.request_reload(waiter, true),
            ReloadMode::Continue => self.continue_reload(waiter, now),
            ReloadMode::Rollback => {
                let why = "asked for (`reload --rollback`)".to_string();
                self.roll_back(waiter, why, now);
            }
        }
    }

    /// Why a reload asked for in `mode` is refused now, if it is: a canary holds (for any other
    /// reload), a reload is under way (for a canary), nothing holds (for `--continue` and
    /// `--rollback`).
    pub fn reload_refusal(&self, mode: ReloadMode) -> Option<String> {
        match mode {
            ReloadMode::Rolling => self.held_reason(),
            ReloadMode::Canary => self.held_reason().or_else(|| {
                let busy = self.reloading.is_some() || self.queued_reload.is_some();
                busy.then(|| {
                    format!(
                        "a reload of {} is under way (generation {}): ask for the canary once it ended",
                        self.name(),
                        self.reload_generation().unwrap_or(self.generation)
                    )
                })
            }),
            ReloadMode::Continue => self
                .held()
                .is_none()
                .then(|| self.not_held("nothing to continue")),
            ReloadMode::Rollback => self
                .held()
                .is_none()
                .then(|| self.not_held("nothing to roll back")),
        }
    }

    /// The canary reload that holds, if any.
    fn held(&self) -> Option<&Reload> {
        match &self.reloading {
            Some(Reloading::Rolling(r)) if matches!(r.canary_state(), Canary::Held { .. }) => {
                Some(r)
            }
            _ => None,
        }
    }

    /// Why no other reload may start: a canary reload holds (and what to do).
    pub(super) fn held_reason(&self) -> Option<String> {
        let r = self.held()?;
        let name = self.name();
        Some(format!(
            "a canary reload to generation {} holds: `supervisor reload {name} --continue` rolls \
             it out, `supervisor reload {name} --rollback` takes it back",
            r.generation
        ))
    }

    /// Why `--continue` or `--rollback` has nothing to act on.
    fn not_held(&self, what: &str) -> String {
        let under_way = match &self.reloading {
            Some(Reloading::Rolling(r)) => format!(
                " (its reload to generation {} is under way{})",
                r.generation,
                match r.canary_state() {
                    Canary::First { .. } => ": the canary is starting",
                    _ => "",
                }
            ),
            Some(Reloading::ReadingConfig { .. }) => {
                " (a reload is reading the config file)".into()
            }
            None => String::new(),
        };
        format!(
            "no canary reload of {} holds{under_way}: {what}",
            self.name()
        )
    }

    /// The canary is ready: the reload holds (until told, or for `canary_hold`), and who asked
    /// for the canary hears of it.
    pub(super) fn hold_canary(&mut self, now: Instant) {
        let previous = self.before_reload.as_ref().map_or(0, |(_, g, _)| *g);
        let (name, id) = (self.name().to_string(), self.id);
        let Some(Reloading::Rolling(r)) = &mut self.reloading else {
            return;
        };
        let generation = r.generation;
        let others = r.total().saturating_sub(r.replaced_slots().len());
        let (until, mut report, waiters) = r.hold(now);
        if let Some(at) = until {
            self.out.push(Action::Arm {
                timer: TimerKey::CanaryHold {
                    app: id,
                    generation,
                },
                at,
            });
        }
        let canary = report
            .slots
            .first()
            .map(|s| format!("slot {} (pid {})", s.slot, s.new_pid))
            .unwrap_or_default();
        let next = match until {
            Some(at) => format!(
                "it continues by itself in {} unless the canary exits or misses its watchdog",
                crate::units::span(at.saturating_duration_since(now))
            ),
            None => format!(
                "`supervisor reload {name} --continue` rolls the other slots, \
                 `supervisor reload {name} --rollback` puts generation {previous} back"
            ),
        };
        let rest = match others {
            0 => "it is the app's only slot".to_string(),
            n => format!("the other {n} slot(s) keep generation {previous}"),
        };
        tracing::info!(app = %name, generation, "canary ready on {canary}: the reload holds, {rest}; {next}");
        report.note = Some(format!(
            "generation {generation} serves {canary}; {rest}: {next}"
        ));
        if !waiters.is_empty() {
            self.reports.push(AppReport::Held { report, waiters });
        }
    }

    /// `--continue`: the held reload rolls the other slots; `waiter` hears when it ended.
    fn continue_reload(&mut self, waiter: Option<Waiter>, now: Instant) {
        let id = self.id;
        if let Some(Reloading::Rolling(r)) = &mut self.reloading {
            let generation = r.generation;
            r.release();
            r.add_waiters(waiter);
            self.out.push(Action::Cancel(TimerKey::CanaryHold {
                app: id,
                generation,
            }));
            tracing::info!(app = %self.name(), generation, "canary reload continued: rolling the other slots");
        }
        self.advance_reload(now);
    }

    /// The hold of generation `generation`'s canary is over (`canary_hold`): the reload goes on
    /// if every canary still serves, ready and not hung; else it is rolled back.
    pub(super) fn canary_hold_over(&mut self, generation: u64, now: Instant) {
        let Some(r) = self.held().filter(|r| r.generation == generation) else {
            return;
        };
        let sick = r.replaced_slots().into_iter().find(|&slot| {
            let worker = self.slot_worker(slot).and_then(|id| self.workers.get(&id));
            !worker.is_some_and(|w| w.state == WorkerState::Ready && !w.hung)
        });
        if let Some(slot) = sick {
            let why = format!("the canary of slot {slot} was not serving when its hold ended");
            self.roll_back(None, why, now);
            return;
        }
        tracing::info!(app = %self.name(), generation, "the canary held its `canary_hold`: continuing");
        self.continue_reload(None, now);
    }

    /// The worker of `slot` exited or hung (`what`): if it is a held canary, the previous
    /// generation goes back on its slot at once.
    pub(super) fn canary_failed(&mut self, slot: usize, what: String, now: Instant) {
        let Some(r) = self.held() else {
            return;
        };
        if r.replaced_slots().contains(&slot) {
            let why = format!("generation {}'s canary {what}", r.generation);
            self.roll_back(None, why, now);
        }
    }

    /// Takes the held canary back, for `why`: the app goes back to the last good config, and a
    /// reload of the canary's slots into it (its report says "rolled back") replaces the
    /// canary; who waited for the canary reload to end, and `waiter`, hear when it is done.
    fn roll_back(&mut self, waiter: Option<Waiter>, why: String, now: Instant) {
        let Some(Reloading::Rolling(held)) = self.reloading.take() else {
            return;
        };
        let canary_generation = held.generation;
        let canary_slots = held.replaced_slots();
        self.out.push(Action::Cancel(TimerKey::CanaryHold {
            app: self.id,
            generation: canary_generation,
        }));
        let (_, _, waiters) = held.finish(None, now);
        let Some((settings, generation, scaled)) = self.before_reload.take() else {
            return;
        };
        let n = settings.spec.instances;
        let (spec, sockets, policy) = (settings.spec.clone(), settings.sockets, settings.reload);
        self.settings = settings;
        self.generation = generation;
        self.scaled = scaled;
        // A canary on a slot the new config added is simply retired.
        self.retire_slots_beyond(n, now);
        let mut slots = Vec::new();
        for slot in canary_slots.into_iter().filter(|s| *s < n) {
            if matches!(self.slots[slot].state, SlotState::BackingOff(_)) {
                // The canary crashed: its slot's restart, after the backoff, starts the
                // previous generation (like any crash restart: a spawn that fails is retried).
                let s = &mut self.slots[slot];
                (s.spec, s.sockets, s.generation) = (spec.clone(), sockets, generation);
            } else {
                slots.push(slot);
            }
        }
        tracing::warn!(app = %self.name(), generation, "rolling back generation {canary_generation}'s canary: {why}; generation {generation} goes back on slot(s) {slots:?}");
        let mut rollback = Reload::new(generation, spec, sockets, policy, slots, now)
            .rollback(canary_generation, why);
        rollback.add_waiters(waiters);
        rollback.add_waiters(waiter);
        self.reloading = Some(Reloading::Rolling(Box::new(rollback)));
        self.advance_reload(now);
    }
}

#[cfg(test)]
#[path = "canary_tests.rs"]
mod tests;
