//! The bookkeeping of one app's rolling reload: which slots are still to replace, which new
//! workers are starting, what has been replaced, who waits for the outcome.
//!
//! Policy on failure: a new worker that exits or is not ready within `ready_timeout` aborts the
//! reload. Slots already replaced keep their new (ready, proven) workers; every other slot keeps
//! its old worker, which was never signalled. No rollback is needed because an old worker is told
//! to drain only after its replacement is ready (unless `max_unavailable` allows otherwise).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{ReloadPolicy, WorkerSpec};
use crate::core::report::{ReloadOutcome, ReloadProgress, ReloadReport, SlotReplacement};
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
        }
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

    /// Whether every slot has been replaced.
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// Ends the reload. Returns the new workers still starting (to stop), the report, and who
    /// waits for it.
    pub fn finish(
        mut self,
        reason: Option<String>,
        now: Instant,
    ) -> (Vec<InFlight>, ReloadReport, Vec<Waiter>) {
        let report = ReloadReport {
            app: self.spec.name.clone(),
            generation: self.generation,
            outcome: if reason.is_none() {
                ReloadOutcome::Ok
            } else {
                ReloadOutcome::Aborted
            },
            reason,
            note: self.note.take(),
            slots: std::mem::take(&mut self.done),
            duration_secs: (now - self.started).as_secs_f64(),
            change: None,
            changed: Vec::new(),
        };
        (
            std::mem::take(&mut self.in_flight),
            report,
            std::mem::take(&mut self.waiters),
        )
    }

    /// Progress for `status`.
    pub fn progress(&self, queued: bool, now: Instant) -> ReloadProgress {
        ReloadProgress {
            generation: self.generation,
            done: self.done.len(),
            total: self.total,
            elapsed_secs: (now - self.started).as_secs_f64(),
            queued,
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
