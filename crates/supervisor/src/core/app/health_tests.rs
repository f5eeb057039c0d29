//! Hung workers (the watchdog) and old ones (`max_age`), with plain instants: each replaced like
//! one slot of a reload, its replacement ready first, one at a time per app.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use crate::core::report::ReplaceReason;
use crate::core::test_support::{Sim, settings};
use crate::core::{Event, Signal, TimerKey, WorkerId, WorkerState};

const SEC: Duration = Duration::from_secs(1);

/// One app `web` of `n` workers with a 10 s watchdog, all ready.
fn watched(n: usize) -> Sim {
    let mut s = settings("web", n, 1, 0);
    let mut spec = (*s.spec).clone();
    spec.watchdog = Some(10 * SEC);
    s.spec = Arc::new(spec);
    let mut sim = Sim::new(vec![(s, vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    sim
}

fn ids(sim: &Sim, state: WorkerState) -> Vec<WorkerId> {
    sim.workers(0, state)
}

fn ping(sim: &mut Sim, id: WorkerId) {
    sim.send(Event::Watchdog {
        worker: id,
        trigger: false,
    });
}

#[test]
fn a_worker_that_stops_pinging_is_replaced_its_replacement_ready_first() {
    let mut sim = watched(2);
    let old = ids(&sim, WorkerState::Ready);
    // Pings keep both alive past several periods.
    for _ in 0..3 {
        sim.advance(8 * SEC);
        ping(&mut sim, old[0]);
        ping(&mut sim, old[1]);
    }
    assert!(ids(&sim, WorkerState::Starting).is_empty());
    // old[1] stops pinging: hung one period after its last ping.
    sim.advance(8 * SEC);
    ping(&mut sim, old[0]);
    assert!(ids(&sim, WorkerState::Starting).is_empty(), "8 s: not yet");
    sim.advance(2 * SEC);
    let new = ids(&sim, WorkerState::Starting);
    assert_eq!(new.len(), 1, "one replacement");
    assert_eq!(sim.core.worker(new[0]).unwrap().slot, 1);
    assert!(sim.core.worker(old[1]).unwrap().hung);
    assert!(
        sim.signals.is_empty(),
        "it serves until its replacement is ready"
    );
    let progress = sim.app(0).snapshot(sim.now).memory_recycling.unwrap();
    assert_eq!(progress.reason, ReplaceReason::Watchdog);
    sim.send(Event::Ready(new[0]));
    assert_eq!(sim.signalled(old[1]), [Signal::Term]);
    assert!(
        !sim.timers.contains_key(&TimerKey::Watchdog(old[1])),
        "disarmed when it drains"
    );
    assert!(
        sim.timers.contains_key(&TimerKey::Watchdog(new[0])),
        "armed when ready"
    );
    let snap = sim.app(0).snapshot(sim.now);
    assert_eq!((snap.watchdog_recycles, snap.watchdog_timeouts), (1, 1));
    assert!(sim.signalled(old[0]).is_empty());
}

#[test]
fn watchdog_trigger_replaces_at_once_and_pings_before_ready_do_not_count() {
    let mut sim = watched(1);
    let old = ids(&sim, WorkerState::Ready)[0];
    sim.send(Event::Watchdog {
        worker: old,
        trigger: true,
    });
    let new = ids(&sim, WorkerState::Starting);
    assert_eq!(new.len(), 1);
    // The new worker's pings while starting arm nothing: its period starts at ready.
    ping(&mut sim, new[0]);
    assert!(!sim.timers.contains_key(&TimerKey::Watchdog(new[0])));
    sim.send(Event::Ready(new[0]));
    assert!(sim.timers.contains_key(&TimerKey::Watchdog(new[0])));
}

#[test]
fn two_hung_workers_are_replaced_one_after_the_other() {
    let mut sim = watched(2);
    let old = ids(&sim, WorkerState::Ready);
    sim.advance(11 * SEC);
    assert!(old.iter().all(|id| sim.core.worker(*id).unwrap().hung));
    let first = ids(&sim, WorkerState::Starting);
    assert_eq!(first.len(), 1, "one at a time");
    sim.send(Event::Ready(first[0]));
    let second = ids(&sim, WorkerState::Starting);
    assert_eq!(second.len(), 1, "the next one at once");
    assert_ne!(first, second);
    sim.send(Event::Ready(second[0]));
    assert_eq!(sim.app(0).snapshot(sim.now).watchdog_recycles, 2);
}

#[test]
fn a_failed_replacement_of_a_hung_worker_is_tried_again_after_a_period() {
    let mut sim = watched(1);
    let old = ids(&sim, WorkerState::Ready)[0];
    sim.advance(10 * SEC);
    let new = ids(&sim, WorkerState::Starting)[0];
    sim.advance(5 * SEC); // ready timeout: the replacement failed
    assert!(ids(&sim, WorkerState::Starting).is_empty());
    assert_eq!(
        ids(&sim, WorkerState::Ready),
        [old],
        "the hung worker still holds its slot"
    );
    sim.exit(new, crate::core::ExitStatus::Signal(9));
    sim.advance(10 * SEC);
    assert_eq!(ids(&sim, WorkerState::Starting).len(), 1, "tried again");
}

/// One app `web` of `n` workers with `max_age` and no jitter, all ready.
fn aging(n: usize, max_age: Duration) -> Sim {
    let mut s = settings("web", n, 1, 0);
    s.age.max_age = Some(max_age);
    let mut sim = Sim::new(vec![(s, vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    sim
}

#[test]
fn workers_past_max_age_are_replaced_never_two_at_once() {
    let mut sim = aging(2, 60 * SEC);
    let old = ids(&sim, WorkerState::Ready);
    sim.advance(59 * SEC);
    assert!(ids(&sim, WorkerState::Starting).is_empty());
    sim.advance(2 * SEC);
    let first = ids(&sim, WorkerState::Starting);
    assert_eq!(first.len(), 1, "never two at once");
    assert_eq!(
        sim.app(0)
            .snapshot(sim.now)
            .memory_recycling
            .unwrap()
            .reason,
        ReplaceReason::MaxAge
    );
    sim.advance(2 * SEC);
    assert_eq!(ids(&sim, WorkerState::Starting), first, "still one");
    sim.send(Event::Ready(first[0]));
    let drained: Vec<_> = old
        .iter()
        .filter(|id| !sim.signalled(**id).is_empty())
        .collect();
    assert_eq!(drained.len(), 1);
    sim.advance(SEC);
    let second = ids(&sim, WorkerState::Starting);
    assert_eq!(second.len(), 1, "then the other");
    sim.send(Event::Ready(second[0]));
    assert_eq!(sim.app(0).snapshot(sim.now).age_recycles, 2);
    // The replacements are young: nothing more for another max_age.
    sim.advance(30 * SEC);
    assert!(ids(&sim, WorkerState::Starting).is_empty());
}
