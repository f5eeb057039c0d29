//! The bookkeeping of one app's rolling reload: which slots are still to replace, which new
//! workers are starting, what has been replaced, who waits for the outcome.
//!
//! Policy on failure: a new worker that exits or is not ready within `ready_timeout` aborts the
//! reload. Slots already replaced keep their new (ready, proven) workers; every other slot keeps
//! its old worker, which was never signalled. No rollback is needed because an old worker is told
//! to drain only after its replacement is ready (unless `max_unavailable` allows otherwise).
//!
//! A canary reload ([`Canary`]) replaces one slot and holds once that worker is ready: the other
//! slots keep the previous generation until it is continued (by hand, or by itself after
//! `canary_hold`). A rollback is a reload of the canary's slot back into the previous generation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ReloadPolicy, WorkerSpec};
use crate::core::report::{
    CanaryProgress, CanaryStage, ReloadOutcome, ReloadProgress, ReloadReport, SlotReplacement,
};
use crate::core::{SocketSet, Waiter, WorkerId};

/// A new worker being started for a slot.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Slot being replaced.
    pub slot: usize,
    /// The new worker.
    pub new: WorkerId,
    /// The old worker and its pid, if the slot had one.
    pub old: Option<(WorkerId, i32)>,
    /// The old worker was told to drain before the new one was ready (`max_unavailable`).
    pub old_drained_early: bool,
    /// When the new worker was started.
    pub started: Instant,
}

/// Where a reload stands with its canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// Not a canary reload: every slot rolls.
    None,
    /// Only the first slot rolls; the reload holds once it is replaced, for `hold` if given
    /// (then it continues by itself), else until told.
    First { hold: Option<Duration> },
    /// The first slot is replaced: nothing more rolls until it is continued or rolled back.
    Held {
        since: Instant,
        /// When it continues by itself.
        until: Option<Instant>,
    },
    /// Continued: the other slots roll.
    Continued,
}

/// A rolling reload in progress.
#[derive(Debug)]
pub struct Reload {
    /// Generation the slots move to.
    pub generation: u64,
    /// What the new generation runs.
    pub spec: Arc<WorkerSpec>,
    /// The sockets the new generation gets.
    pub sockets: SocketSet,
    policy: ReloadPolicy,
    pending: VecDeque<usize>,
    in_flight: Vec<InFlight>,
    done: Vec<SlotReplacement>,
    total: usize,
    started: Instant,
    waiters: Vec<Waiter>,
    /// Said in the report (the `scale` the file's `instances` undid).
    pub note: Option<String>,
    canary: Canary,
    /// Who asked for the canary: answered when it holds.
    canary_waiters: Vec<Waiter>,
    /// A rollback: the generation whose canary it takes back, and why.
    rollback_of: Option<(u64, String)>,
}

impl Reload {
    /// Plans a reload of `slots` (in order) into `generation`, beginning `now`.
    pub fn new(
        generation: u64,
        spec: Arc<WorkerSpec>,
        sockets: SocketSet,
        policy: ReloadPolicy,
        slots: impl IntoIterator<Item = usize>,
        now: Instant,
    ) -> Reload {
        let pending: VecDeque<usize> = slots.into_iter().collect();
        Reload {
            generation,
            spec,
            sockets,
            policy,
            total: pending.len(),
            pending,
            in_flight: Vec::new(),
            done: Vec::new(),
            started: now,
            waiters: Vec::new(),
            note: None,
            canary: Canary::None,
            canary_waiters: Vec::new(),
            rollback_of: None,
        }
    }

    /// Makes it a canary reload (holding for `hold`, or until told); `waiters` are answered
    /// when the canary holds.
    pub fn canary(mut self, hold: Option<Duration>, waiters: Vec<Waiter>) -> Reload {
        self.canary = Canary::First { hold };
        self.canary_waiters = waiters;
        self
    }

    /// Makes it the rollback of generation `of`'s canary, for `why`.
    pub fn rollback(mut self, of: u64, why: String) -> Reload {
        self.rollback_of = Some((of, why));
        self
    }

    /// Where it stands with its canary.
    pub fn canary_state(&self) -> Canary {
        self.canary
    }

    /// Whether its canary is ready and it is to hold now.
    pub fn canary_due(&self) -> bool {
        matches!(self.canary, Canary::First { .. })
            && !self.done.is_empty()
            && self.in_flight.is_empty()
    }

    /// Holds from `now`: returns until when (if it continues by itself), the report for who
    /// asked for the canary, and them.
    pub fn hold(&mut self, now: Instant) -> (Option<Instant>, ReloadReport, Vec<Waiter>) {
        let hold = match self.canary {
            Canary::First { hold } => hold,
            _ => None,
        };
        let until = hold.map(|h| crate::core::later(now, h));
        self.canary = Canary::Held { since: now, until };
        let mut report = self.report(None, now);
        report.outcome = ReloadOutcome::Held;
        (until, report, std::mem::take(&mut self.canary_waiters))
    }

    /// The held reload goes on with the other slots.
    pub fn release(&mut self) {
        if matches!(self.canary, Canary::Held { .. }) {
            self.canary = Canary::Continued;
        }
    }

    /// How many slots it replaces in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The slots it has replaced so far, in order (a held reload's: its canary).
    pub fn replaced_slots(&self) -> Vec<usize> {
        self.done.iter().map(|d| d.slot).collect()
    }

    /// Adds waiters for the outcome.
    pub fn add_waiters(&mut self, w: impl IntoIterator<Item = Waiter>) {
        self.waiters.extend(w);
    }

    /// The next slot to start a new worker for, if the surge allows one more now.
    pub fn next_slot(&mut self) -> Option<usize> {
        if self.in_flight.len() >= self.policy.max_surge {
            return None;
        }
        let canary_out = !self.done.is_empty() || !self.in_flight.is_empty();
        match self.canary {
            Canary::Held { .. } => return None,
            Canary::First { .. } if canary_out => return None,
            _ => {}
        }
        self.pending.pop_front()
    }

    /// Whether the old worker of a slot being started now may be drained before its replacement is
    /// ready (only within `max_unavailable`).
    pub fn may_drain_early(&self) -> bool {
        self.in_flight
            .iter()
            .filter(|f| f.old_drained_early)
            .count()
            < self.policy.max_unavailable
    }

    /// Records a started replacement.
    pub fn started(&mut self, f: InFlight) {
        self.in_flight.push(f);
    }

    /// Whether `id` is a new worker of this reload that is not ready yet.
    pub fn is_in_flight(&self, id: WorkerId) -> bool {
        self.in_flight.iter().any(|f| f.new == id)
    }

    /// The new worker `id` is ready: its slot is replaced. Returns the replacement for the daemon
    /// to swap in (and drain the old worker).
    pub fn ready(&mut self, id: WorkerId, new_pid: i32, now: Instant) -> Option<InFlight> {
        let pos = self.in_flight.iter().position(|f| f.new == id)?;
        let f = self.in_flight.remove(pos);
        self.done.push(SlotReplacement {
            slot: f.slot,
            old_pid: f.old.map(|(_, pid)| pid),
            new_pid,
            ready_secs: (now - f.started).as_secs_f64(),
        });
        Some(f)
    }

    /// Whether every slot has been replaced (and it does not hold).
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty()
            && self.in_flight.is_empty()
            && !matches!(self.canary, Canary::Held { .. })
            && !self.canary_due()
    }

    /// Ends the reload. Returns the new workers still starting (to stop), the report, and who
    /// waits for it.
    pub fn finish(
        mut self,
        reason: Option<String>,
        now: Instant,
    ) -> (Vec<InFlight>, ReloadReport, Vec<Waiter>) {
        let report = self.report(reason, now);
        let mut waiters = std::mem::take(&mut self.waiters);
        // A canary that never held: who asked for it hears how the reload ended.
        waiters.append(&mut self.canary_waiters);
        (std::mem::take(&mut self.in_flight), report, waiters)
    }

    /// Its report so far: aborted for `reason`, else ok (a rollback: rolled back).
    fn report(&mut self, reason: Option<String>, now: Instant) -> ReloadReport {
        let (outcome, reason) = match (reason, &self.rollback_of) {
            (Some(r), _) => (ReloadOutcome::Aborted, Some(r)),
            (None, Some((_, why))) => (ReloadOutcome::RolledBack, Some(why.clone())),
            (None, None) => (ReloadOutcome::Ok, None),
        };
        ReloadReport {
            app: self.spec.name.clone(),
            generation: self.generation,
            outcome,
            reason,
            note: self.note.clone(),
            slots: self.done.clone(),
            duration_secs: (now - self.started).as_secs_f64(),
            change: None,
            changed: Vec::new(),
        }
    }

    /// Progress for `status`; `pid` finds a worker's pid.
    pub fn progress(
        &self,
        queued: bool,
        now: Instant,
        pid: impl Fn(WorkerId) -> Option<i32>,
    ) -> ReloadProgress {
        let canary = |stage, held_secs, continues_in_secs| {
            let first = self.done.first();
            let starting = self.in_flight.first();
            Some(CanaryProgress {
                stage,
                slot: first.map(|d| d.slot).or(starting.map(|f| f.slot)),
                pid: first
                    .map(|d| d.new_pid)
                    .or(starting.and_then(|f| pid(f.new))),
                held_secs,
                continues_in_secs,
            })
        };
        ReloadProgress {
            generation: self.generation,
            done: self.done.len(),
            total: self.total,
            elapsed_secs: (now - self.started).as_secs_f64(),
            queued,
            canary: match self.canary {
                Canary::None => None,
                Canary::First { .. } => canary(CanaryStage::Starting, 0.0, None),
                Canary::Held { since, until } => canary(
                    CanaryStage::Held,
                    now.saturating_duration_since(since).as_secs_f64(),
                    until.map(|u| u.saturating_duration_since(now).as_secs_f64()),
                ),
                Canary::Continued => canary(CanaryStage::Continued, 0.0, None),
            },
            rolling_back: self.rollback_of.as_ref().map(|(g, _)| *g),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn spec() -> Arc<WorkerSpec> {
        Arc::new(WorkerSpec {
            name: "t".into(),
            program: PathBuf::from("/bin/true"),
            args: vec![],
            env: Default::default(),
            cwd: PathBuf::from("/"),
            instances: 3,
            readiness: crate::config::Readiness::Notify,
            runtime: crate::config::Runtime::None,
            ready_timeout: Duration::from_secs(1),
            kill_timeout: Duration::from_secs(1),
            cron_backend: false,
            contract: Default::default(),
            watchdog: None,
            confine: Default::default(),
        })
    }

    /// A reload of slots 0..3 into generation 2.
    fn reload(max_surge: usize, max_unavailable: usize) -> Reload {
        Reload::new(
            2,
            spec(),
            crate::core::SocketSet(1),
            ReloadPolicy {
                max_surge,
                max_unavailable,
                canary_hold: None,
            },
            0..3,
            Instant::now(),
        )
    }

    fn flight(slot: usize, new: WorkerId, early: bool) -> InFlight {
        InFlight {
            slot,
            new,
            old: Some((slot as u64, 100 + slot as i32)),
            old_drained_early: early,
            started: Instant::now(),
        }
    }

    #[test]
    fn one_slot_at_a_time_by_default() {
        let mut r = reload(1, 0);
        assert_eq!(r.next_slot(), Some(0));
        assert!(!r.may_drain_early());
        r.started(flight(0, 10, false));
        assert_eq!(r.next_slot(), None, "surge 1: wait for slot 0");
        assert!(r.is_in_flight(10));
        let f = r.ready(10, 1010, Instant::now()).unwrap();
        assert_eq!(f.slot, 0);
        assert_eq!(r.next_slot(), Some(1));
        r.started(flight(1, 11, false));
        r.ready(11, 1011, Instant::now()).unwrap();
        assert_eq!(r.next_slot(), Some(2));
        r.started(flight(2, 12, false));
        assert!(!r.is_complete());
        r.ready(12, 1012, Instant::now()).unwrap();
        assert!(r.is_complete());
        let (left, report, _) = r.finish(None, Instant::now());
        assert!(left.is_empty());
        assert_eq!(report.outcome, ReloadOutcome::Ok);
        assert_eq!(
            report
                .slots
                .iter()
                .map(|s| (s.old_pid, s.new_pid))
                .collect::<Vec<_>>(),
            vec![(Some(100), 1010), (Some(101), 1011), (Some(102), 1012)]
        );
    }

    #[test]
    fn surge_and_unavailable_bound_parallelism() {
        let mut r = reload(2, 1);
        assert_eq!(r.next_slot(), Some(0));
        assert!(r.may_drain_early());
        r.started(flight(0, 10, true));
        assert_eq!(r.next_slot(), Some(1));
        assert!(!r.may_drain_early(), "one slot already unavailable");
        r.started(flight(1, 11, false));
        assert_eq!(r.next_slot(), None);
    }

    #[test]
    fn abort_returns_starting_workers_and_the_waiters() {
        let mut r = reload(1, 0);
        r.add_waiters([Waiter::Client(7), Waiter::EveryApp]);
        r.next_slot();
        r.started(flight(0, 10, false));
        let (left, report, waiters) = r.finish(Some("new worker exited".into()), Instant::now());
        assert_eq!(left.len(), 1);
        assert_eq!(report.outcome, ReloadOutcome::Aborted);
        assert_eq!(report.reason.as_deref(), Some("new worker exited"));
        assert_eq!(waiters, vec![Waiter::Client(7), Waiter::EveryApp]);
    }
}
