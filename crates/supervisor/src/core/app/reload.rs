//! The app's side of a rolling reload: it reads the config file (or is queued behind the reload
//! under way, coalesced), then replaces its slots as the surge and unavailability allow, each old
//! worker drained once its replacement is ready. A new worker that fails aborts the reload: the
//! slots replaced keep their new workers, the others their old ones, and the app goes back to
//! the last good config. The bookkeeping of the slots is in [`super::rolling`].

use tokio::time::Instant;

use super::rolling::{InFlight, Reload};
use super::slots::{Slot, SlotState};
use super::{App, AppReport};
use crate::core::report::{ReloadOutcome, ReloadReport};
use crate::core::{Action, AppSettings, Phase, Waiter};

/// The reload in progress.
#[derive(Debug)]
pub(super) enum Reloading {
    /// Waiting for [`crate::core::Event::Config`]; these wait for the outcome (a canary
    /// reload's: for its canary to hold).
    ReadingConfig { waiters: Vec<Waiter>, canary: bool },
    /// Replacing slots.
    Rolling(Box<Reload>),
}

impl App {
    /// A reload is asked for, by `waiter` if any (what a canary holds refuses first:
    /// [`App::reload_refusal`]): it reads the config file, or is queued behind the reload under
    /// way, or refused when the app does not run. `canary`: a canary reload.
    pub(super) fn request_reload(&mut self, waiter: Option<Waiter>, canary: bool) {
        if !matches!(self.phase, Phase::Running | Phase::Standby) {
            let stopped = format!(
                "it is stopped (`supervisor start {}` starts it)",
                self.name()
            );
            let why = match self.phase {
                Phase::Waiting => "it has not started yet (waiting for the apps it is `after`)",
                Phase::Starting => "its first workers are still starting",
                Phase::Stopped => stopped.as_str(),
                _ => "it is stopping",
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
        self.reloading = Some(Reloading::ReadingConfig {
            waiters: waiter.into_iter().collect(),
            canary,
        });
        self.out.push(Action::ReadConfig);
    }

    /// Whether it waits for [`App::config_read`].
    pub fn wants_config(&self) -> bool {
        matches!(self.reloading, Some(Reloading::ReadingConfig { .. }))
    }

    /// The answer to its [`Action::ReadConfig`]: its settings from the file read again.
    pub fn config_read(&mut self, settings: Result<AppSettings, String>, now: Instant) {
        let Some(Reloading::ReadingConfig { waiters, canary }) = self.reloading.take() else {
            return;
        };
        self.roll_onto(settings, waiters, canary, now);
    }

    /// A reload onto `settings` (the file read once for a reload of every app), for `waiters`:
    /// rolled like [`App::request_reload`]'s; queued behind a reload under way (it reads the
    /// file again then). An app that is stopped, or waits for the apps it is `after`, takes the
    /// settings for when it starts. `Err` is why the reload cannot run (said as it is).
    pub fn reload_into(
        &mut self,
        settings: Result<AppSettings, String>,
        waiters: Vec<Waiter>,
        now: Instant,
    ) {
        if let Some(why) = self.held_reason() {
            tracing::warn!(app = %self.name(), "reload refused: {why}");
            self.refuse_reload(waiters, &why);
            return;
        }
        self.roll_onto(settings, waiters, false, now);
    }

    /// [`App::reload_into`], as a canary reload if asked for (`canary`: `waiters` wait for the
    /// canary to hold) or if its `canary_hold` says so.
    fn roll_onto(
        &mut self,
        settings: Result<AppSettings, String>,
        waiters: Vec<Waiter>,
        canary: bool,
        now: Instant,
    ) {
        if self.reloading.is_some() {
            self.queued_reload
                .get_or_insert_with(Vec::new)
                .extend(waiters);
            return;
        }
        if matches!(self.phase, Phase::Starting | Phase::Stopping) {
            let why = if self.phase == Phase::Starting {
                "its first workers are still starting"
            } else {
                "it is stopping"
            };
            self.answer_aborted(waiters, why);
            return;
        }
        // Every reload that reads the file gets a number of its own, aborted or not.
        self.last_generation += 1;
        let generation = self.last_generation;
        let settings = match settings {
            Ok(s) => s,
            Err(e) => {
                let report = self.aborted_report(generation, &e);
                tracing::error!(app = %self.name(), "reload aborted: {e}");
                self.reply_all(waiters, &report);
                self.finish_reload(report, now);
                return;
            }
        };
        self.cancel_recycle("a reload replaces every slot", now);
        let spec = settings.spec.clone();
        let new_n = spec.instances;
        if matches!(self.phase, Phase::Standby | Phase::Stopped | Phase::Waiting) {
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
        // (A canary reload adds them when it continues: while it holds, the app runs as many
        // workers as before.)
        let sockets = self.settings.sockets;
        let hold = self.settings.reload.canary_hold;
        let asked = canary;
        let canary = canary || hold.is_some();
        while self.slots.len() < new_n && !canary {
            self.slots
                .push(Slot::new(spec.clone(), sockets, generation));
        }
        let mut reload = Reload::new(
            generation,
            spec,
            sockets,
            self.settings.reload,
            0..new_n,
            now,
        );
        if canary {
            tracing::info!(app = %self.name(), generation, slots = new_n, "canary reload started: one slot first");
            // Who asked for the canary hears of it when it holds; a reload made a canary one by
            // `canary_hold` is answered when it ends.
            let (at_hold, at_end) = if asked {
                (waiters, Vec::new())
            } else {
                (Vec::new(), waiters)
            };
            reload = reload.canary(hold, at_hold);
            reload.add_waiters(at_end);
        } else {
            tracing::info!(app = %self.name(), generation, slots = new_n, "rolling reload started");
            reload.add_waiters(waiters);
        }
        reload.note = note;
        self.reloading = Some(Reloading::Rolling(Box::new(reload)));
        self.advance_reload(now);
    }

    /// A reload of an app none of whose workers runs here (a cluster singleton standing by, an
    /// app stopped by hand or waiting for the apps it is `after`): the new settings simply
    /// become the ones its workers start with.
    fn reload_standing_by(
        &mut self,
        settings: AppSettings,
        generation: u64,
        waiters: Vec<Waiter>,
        now: Instant,
    ) {
        let (lease, sockets) = (self.settings.singleton, self.settings.sockets);
        self.settings = settings;
        // The lease task runs with the policy it was started with.
        self.settings.singleton = lease;
        self.scaled = None;
        self.generation = generation;
        let note = if self.phase == Phase::Stopped {
            // Closed: it gets sockets bound again when it is started, and its slots (with their
            // restart counts) take the new settings then.
            self.settings.sockets = sockets;
            format!(
                "stopped: the new config applies when it is started (`supervisor start {}`)",
                self.name()
            )
        } else {
            let (spec, sockets) = (self.settings.spec.clone(), self.settings.sockets);
            self.slots = (0..spec.instances)
                .map(|_| Slot::new(spec.clone(), sockets, generation))
                .collect();
            if self.phase == Phase::Waiting {
                "not started yet: it starts with the new config once the apps it is `after` are up"
                    .to_string()
            } else {
                "standby: no worker runs on this host; the new config applies when it takes the lease"
                    .to_string()
            }
        };
        tracing::info!(app = %self.name(), generation, "reloaded with no worker running: {note}");
        let report = ReloadReport {
            app: self.name().to_string(),
            generation,
            outcome: ReloadOutcome::Ok,
            reason: None,
            note: Some(note),
            slots: vec![],
            duration_secs: 0.0,
            change: None,
            changed: Vec::new(),
        };
        self.reply_all(waiters, &report);
        self.finish_reload(report, now);
    }

    /// Starts as many replacements as the surge allows; finishes the reload when all are done.
    pub(super) fn advance_reload(&mut self, now: Instant) {
        loop {
            let Some(Reloading::Rolling(reload)) = &mut self.reloading else {
                return;
            };
            if reload.canary_due() {
                self.hold_canary(now);
                return;
            }
            if reload.is_complete() {
                break;
            }
            let Some(slot) = reload.next_slot() else {
                return;
            };
            let drain_early = reload.may_drain_early();
            let (spec, sockets, generation) =
                (reload.spec.clone(), reload.sockets, reload.generation);
            // A slot the new config adds (a canary reload adds them only as their turn comes).
            while self.slots.len() <= slot {
                let s = Slot::new(spec.clone(), sockets, generation);
                self.slots.push(s);
            }
            let old = self
                .slot_worker(slot)
                .and_then(|id| Some((id, self.workers.get(&id)?.pid?)));
            let new = self.spawn(slot, spec, sockets, generation, now);
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
            let what = match report.outcome {
                ReloadOutcome::RolledBack => {
                    "rolled back: the canary's slots serve this generation again"
                }
                _ => "rolling reload finished",
            };
            tracing::info!(
                app = %self.name(),
                generation = report.generation,
                "{what} in {}",
                crate::units::duration(report.duration_secs)
            );
            self.reply_all(waiters, &report);
            self.finish_reload(report, now);
        }
    }

    /// The new worker of a slot is ready: it becomes the slot's worker and the old one drains.
    pub(super) fn slot_replaced(&mut self, f: InFlight, now: Instant) {
        let (spec, sockets, generation) = match &self.reloading {
            Some(Reloading::Rolling(r)) => (r.spec.clone(), r.sockets, r.generation),
            _ => return,
        };
        let s = &mut self.slots[f.slot];
        let previous = std::mem::replace(&mut s.state, SlotState::Serving(f.new));
        s.spec = spec;
        s.sockets = sockets;
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

    /// Ends the rolling reload under way, if any, for `reason`: its new workers still starting
    /// drain, the app goes back to the last good config.
    pub(super) fn abort_reload(&mut self, reason: String, now: Instant) {
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

    /// A reload ended with `report`: the reload queued behind it runs now, or the scale that
    /// waited for it.
    pub(super) fn finish_reload(&mut self, report: ReloadReport, now: Instant) {
        self.last_reload = Some(report);
        if let Some(waiters) = self.queued_reload.take() {
            // Stopping answered the queued clients already; only a running app reloads again.
            if self.phase == Phase::Running {
                self.reloading = Some(Reloading::ReadingConfig {
                    waiters,
                    canary: false,
                });
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

    /// Refuses the reload `waiters` asked for, for `why` (said as an error, not counted as a
    /// reload that was aborted).
    pub(super) fn refuse_reload(&mut self, waiters: impl IntoIterator<Item = Waiter>, why: &str) {
        let waiters: Vec<Waiter> = waiters.into_iter().collect();
        if !waiters.is_empty() {
            let report = self.aborted_report(self.last_generation + 1, why);
            self.reports.push(AppReport::Refused { report, waiters });
        }
    }

    /// Answers `waiters` that their reload did not run, for `why`.
    pub(super) fn answer_aborted(&mut self, waiters: impl IntoIterator<Item = Waiter>, why: &str) {
        let report = self.aborted_report(self.last_generation + 1, why);
        self.reply_all(waiters, &report);
    }

    /// Tells the core that a reload ended with `report`, for `waiters`.
    pub(super) fn reply_all(
        &mut self,
        waiters: impl IntoIterator<Item = Waiter>,
        report: &ReloadReport,
    ) {
        self.reports.push(AppReport::Reloaded {
            report: report.clone(),
            waiters: waiters.into_iter().collect(),
        });
    }

    /// The report of a reload into `generation` aborted for `reason`, before any slot.
    pub(super) fn aborted_report(&self, generation: u64, reason: &str) -> ReloadReport {
        ReloadReport {
            app: self.name().to_string(),
            generation,
            outcome: ReloadOutcome::Aborted,
            reason: Some(reason.to_string()),
            note: None,
            slots: vec![],
            duration_secs: 0.0,
            change: None,
            changed: Vec::new(),
        }
    }

    /// The answer to a reload not waited for, once asked for: it started, towards the
    /// generation of its reload (or of the one under way it is queued behind); the current
    /// generation when it did not start.
    pub fn started_report(&self) -> ReloadReport {
        let held = self.held_reason();
        ReloadReport {
            app: self.name().to_string(),
            generation: self.reload_generation().unwrap_or(self.generation),
            // A canary that holds refuses any other reload (a reload of every app included).
            outcome: if held.is_some() {
                ReloadOutcome::Aborted
            } else {
                ReloadOutcome::Started
            },
            reason: held,
            note: None,
            slots: vec![],
            duration_secs: 0.0,
            change: None,
            changed: Vec::new(),
        }
    }
}
