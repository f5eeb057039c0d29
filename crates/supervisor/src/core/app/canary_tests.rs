//! Canary reloads with plain instants: one slot, hold, then continue or roll back (by hand, by
//! `canary_hold`, or because the canary failed while held).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use crate::core::report::{CanaryStage, ReloadMode, ReloadOutcome, ReloadReport};
use crate::core::test_support::{Sim, settings};
use crate::core::{
    Answer, AppSettings, Event, ExitStatus, ReplyTo, Signal, TimerKey, WorkerId, WorkerState,
};

const SEC: Duration = Duration::from_secs(1);

/// App `web` (`instances` workers, all ready in generation 1), and the settings its reloads
/// read (`change` applied to them: a new program, a hold).
fn web(instances: usize, change: impl FnOnce(&mut AppSettings)) -> Sim {
    Sim::running_one(settings("web", instances, 1, 0), change)
}

fn reload(sim: &mut Sim, mode: ReloadMode, reply: ReplyTo) {
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(reply),
        wait: true,
        mode,
    });
}

fn ready(sim: &Sim) -> Vec<WorkerId> {
    sim.workers(0, WorkerState::Ready)
}

fn starting(sim: &Sim) -> Vec<WorkerId> {
    sim.workers(0, WorkerState::Starting)
}

fn generation(sim: &Sim, id: WorkerId) -> u64 {
    sim.core.worker(id).unwrap().generation
}

fn answered(sim: &Sim, reply: ReplyTo) -> Option<ReloadReport> {
    sim.replies
        .get(&reply)
        .map(|_| sim.reports(reply)[0].clone())
}

/// Why the request of `reply` was refused.
fn refused(sim: &Sim, reply: ReplyTo) -> String {
    match sim.replies.get(&reply).and_then(|r| r.first()) {
        Some(Answer::Refused(why)) => why.clone(),
        other => panic!("{reply} was not refused: {other:?}"),
    }
}

/// A 3-worker app whose canary (slot 0, generation 2) is ready and holds; `canary` and the old
/// workers.
fn held(change: impl FnOnce(&mut AppSettings)) -> (Sim, WorkerId, Vec<WorkerId>) {
    let mut sim = web(3, change);
    let old = ready(&sim);
    reload(&mut sim, ReloadMode::Canary, 1);
    let canary = starting(&sim);
    assert_eq!(canary.len(), 1, "one slot first");
    sim.send(Event::Ready(canary[0]));
    (sim, canary[0], old)
}

#[test]
fn a_canary_holds_after_one_slot_and_continue_rolls_the_rest() {
    let (mut sim, canary, old) = held(|_| {});
    let report = answered(&sim, 1).expect("answered when it holds");
    assert_eq!(report.outcome, ReloadOutcome::Held);
    assert_eq!(report.generation, 2);
    assert_eq!(report.slots.len(), 1);
    assert!(report.note.unwrap().contains("--continue"));
    // It holds: slot 0's old worker drains, the others serve on in generation 1.
    assert_eq!(sim.signalled(old[0]), [Signal::Term]);
    assert!(sim.signalled(old[1]).is_empty() && sim.signalled(old[2]).is_empty());
    assert!(starting(&sim).is_empty());
    sim.advance(3600 * SEC);
    assert!(starting(&sim).is_empty(), "held until told");
    let progress = sim.app(0).snapshot(sim.now).reload_in_progress.unwrap();
    let c = progress.canary.unwrap();
    assert_eq!((c.stage, c.slot), (CanaryStage::Held, Some(0)));
    assert_eq!(c.continues_in_secs, None);
    assert!(sim.ended.is_empty(), "not a finished reload");
    // Another reload is refused with what to do; the held one goes on when continued.
    reload(&mut sim, ReloadMode::Rolling, 2);
    assert!(refused(&sim, 2).contains("--rollback"), "says what to do");
    // Not waited for: refused all the same, not answered "started".
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(8),
        wait: false,
        mode: ReloadMode::Rolling,
    });
    assert!(refused(&sim, 8).contains("--continue"));
    sim.send(Event::Reload {
        app: None,
        reply: Some(10),
        wait: false,
        mode: ReloadMode::Rolling,
    });
    let every = sim.reports(10);
    assert_eq!(every[0].outcome, ReloadOutcome::Aborted, "{every:?}");
    assert!(every[0].reason.as_ref().unwrap().contains("--rollback"));
    sim.send(Event::Scale {
        app: 0,
        instances: 5,
        reply: Some(9),
    });
    assert!(
        refused(&sim, 9).contains("--continue"),
        "not queued behind a hold"
    );
    reload(&mut sim, ReloadMode::Continue, 3);
    for _ in 0..2 {
        let next = starting(&sim);
        assert_eq!(next.len(), 1, "one at a time again");
        assert_eq!(generation(&sim, next[0]), 2);
        sim.send(Event::Ready(next[0]));
    }
    let done = answered(&sim, 3).expect("answered when it ended");
    assert_eq!(done.outcome, ReloadOutcome::Ok);
    assert_eq!(done.slots.len(), 3);
    assert!(
        old.iter()
            .all(|o| sim.signalled(*o).first() == Some(&Signal::Term)),
        "every old worker drained"
    );
    assert!(sim.signalled(canary).is_empty());
    assert!(ready(&sim).iter().all(|w| generation(&sim, *w) == 2));
    assert_eq!(sim.app(0).generation(), 2);
}

#[test]
fn rollback_puts_the_previous_generation_back_on_the_canary_slot_first() {
    let (mut sim, canary, old) = held(|_| {});
    reload(&mut sim, ReloadMode::Rollback, 4);
    let back = starting(&sim);
    assert_eq!(back.len(), 1);
    assert_eq!(generation(&sim, back[0]), 1, "the previous generation");
    assert_eq!(sim.core.worker(back[0]).unwrap().slot, 0);
    assert!(
        sim.signalled(canary).is_empty(),
        "the canary serves until its replacement is ready"
    );
    sim.send(Event::Ready(back[0]));
    assert_eq!(sim.signalled(canary), [Signal::Term]);
    let report = answered(&sim, 4).unwrap();
    assert_eq!(report.outcome, ReloadOutcome::RolledBack);
    assert_eq!(report.generation, 1);
    assert_eq!(sim.app(0).generation(), 1);
    assert!(sim.signalled(old[1]).is_empty() && sim.signalled(old[2]).is_empty());
    assert_eq!(sim.ended.last().unwrap().outcome, ReloadOutcome::RolledBack);
    // Generation numbers are never reused: the next reload brings 3.
    reload(&mut sim, ReloadMode::Rolling, 5);
    assert_eq!(generation(&sim, starting(&sim)[0]), 3);
}

#[test]
fn canary_hold_continues_by_itself_and_the_reload_is_answered_when_it_ended() {
    let mut sim = web(2, |s| s.reload.canary_hold = Some(30 * SEC));
    // A plain reload of an app with `canary_hold` is a canary reload.
    reload(&mut sim, ReloadMode::Rolling, 1);
    sim.ready_all(0);
    assert!(answered(&sim, 1).is_none(), "waits for the whole reload");
    let c = sim
        .app(0)
        .snapshot(sim.now)
        .reload_in_progress
        .unwrap()
        .canary;
    assert_eq!(c.unwrap().continues_in_secs, Some(30.0));
    sim.advance(29 * SEC);
    assert!(starting(&sim).is_empty());
    sim.advance(SEC);
    assert_eq!(starting(&sim).len(), 1, "continued by itself");
    sim.ready_all(0);
    let report = answered(&sim, 1).unwrap();
    assert_eq!((report.outcome, report.slots.len()), (ReloadOutcome::Ok, 2));
}

#[test]
fn a_canary_that_exits_while_held_is_rolled_back_at_once() {
    let mut sim = web(2, |s| s.reload.canary_hold = Some(30 * SEC));
    reload(&mut sim, ReloadMode::Rolling, 1);
    let canary = starting(&sim)[0];
    sim.send(Event::Ready(canary));
    sim.advance(5 * SEC);
    sim.exit(canary, ExitStatus::Signal(11));
    let report = answered(&sim, 1).expect("the reload ended");
    assert_eq!(report.outcome, ReloadOutcome::RolledBack);
    assert!(report.reason.unwrap().contains("exited"), "says why");
    assert!(
        !sim.timers
            .keys()
            .any(|k| matches!(k, TimerKey::CanaryHold { .. })),
        "the hold is over"
    );
    // Its slot restarts after the backoff, in the previous generation.
    sim.advance(SEC);
    let back = starting(&sim);
    assert_eq!(back.len(), 1);
    assert_eq!(generation(&sim, back[0]), 1);
    sim.send(Event::Ready(back[0]));
    sim.advance(60 * SEC);
    assert!(starting(&sim).is_empty(), "nothing rolls on");
    assert!(ready(&sim).iter().all(|w| generation(&sim, *w) == 1));
    assert_eq!(sim.app(0).ready_slots(), (2, 2));
}

#[test]
fn a_canary_that_hangs_while_held_is_rolled_back() {
    let (mut sim, canary, _) = held(|s| {
        let mut spec = (*s.spec).clone();
        spec.watchdog = Some(10 * SEC);
        s.spec = Arc::new(spec);
    });
    sim.advance(10 * SEC);
    assert!(sim.core.worker(canary).unwrap().hung);
    let back = starting(&sim);
    assert_eq!(back.len(), 1);
    assert_eq!(generation(&sim, back[0]), 1);
    sim.send(Event::Ready(back[0]));
    assert_eq!(sim.signalled(canary), [Signal::Term]);
    let snap = sim.app(0).snapshot(sim.now);
    let last = snap.last_reload.unwrap();
    assert_eq!(last.outcome, ReloadOutcome::RolledBack);
    assert!(last.reason.unwrap().contains("hung"));
}

#[test]
fn continue_and_rollback_with_nothing_held_are_refused_and_change_nothing() {
    let mut sim = web(2, |_| {});
    reload(&mut sim, ReloadMode::Continue, 1);
    reload(&mut sim, ReloadMode::Rollback, 2);
    for reply in [1, 2] {
        assert!(refused(&sim, reply).contains("no canary reload of web holds"));
    }
    assert!(starting(&sim).is_empty() && sim.signals.is_empty());
    // A canary asked for while a reload rolls is refused too.
    reload(&mut sim, ReloadMode::Rolling, 3);
    reload(&mut sim, ReloadMode::Canary, 4);
    assert!(refused(&sim, 4).contains("under way"));
    assert!(sim.ended.is_empty(), "refusals are not reloads that ended");
}

#[test]
fn a_canary_reload_that_adds_workers_adds_them_only_when_continued() {
    let (mut sim, _, _) = held(|s| {
        let mut spec = (*s.spec).clone();
        spec.instances = 5;
        s.spec = Arc::new(spec);
    });
    assert_eq!(sim.app(0).ready_slots(), (3, 3), "3 slots while it holds");
    reload(&mut sim, ReloadMode::Continue, 2);
    for _ in 0..4 {
        sim.ready_all(0);
    }
    assert_eq!(answered(&sim, 2).unwrap().outcome, ReloadOutcome::Ok);
    assert_eq!(sim.app(0).ready_slots(), (5, 5));
}

#[test]
fn a_canary_that_fails_to_start_aborts_like_any_reload() {
    let mut sim = web(2, |_| {});
    let old = ready(&sim);
    reload(&mut sim, ReloadMode::Canary, 1);
    let canary = starting(&sim)[0];
    sim.exit(canary, ExitStatus::Code(1));
    let r = answered(&sim, 1).unwrap();
    assert_eq!(r.outcome, ReloadOutcome::Aborted);
    assert!(old.iter().all(|o| sim.signalled(*o).is_empty()));
    assert_eq!(sim.app(0).generation(), 1);
}
