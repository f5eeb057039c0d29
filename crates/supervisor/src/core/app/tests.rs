//! One app's rules, driven with plain instants and no processes: a small stand-in for the shell
//! answers spawns and config reads, keeps the armed deadlines and fires them as time advances.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Readiness;
use crate::core::report::{ReloadMode, ReloadOutcome};
use crate::core::test_support::Sim;
use crate::core::{ExitStatus, Signal, TimerKey};

const MS: Duration = Duration::from_millis(1);

fn settings(instances: usize, surge: usize, unavailable: usize) -> AppSettings {
    crate::core::test_support::settings("web", instances, surge, unavailable)
}

/// A supervisor of the one app `s`, started.
fn started(s: AppSettings) -> Sim {
    let mut sim = Sim::new(vec![(s, vec![])]);
    sim.send(Event::Start);
    sim
}

/// A started app of `n` workers, all ready.
fn ready(n: usize) -> Sim {
    let mut sim = started(settings(n, 1, 0));
    sim.ready_all(0);
    sim
}

/// The one app's view of the simulation.
trait OneApp {
    fn ids(&self, state: WorkerState) -> Vec<WorkerId>;
    fn reload(&mut self, reply: ReplyTo, next: AppSettings);
    fn ask_reload(&mut self, reply: ReplyTo);
    fn reload_report(&self, reply: ReplyTo) -> ReloadReport;
}

impl OneApp for Sim {
    fn ids(&self, state: WorkerState) -> Vec<WorkerId> {
        self.workers(0, state)
    }

    /// Asks for a reload that will read `next` from the config file.
    fn reload(&mut self, reply: ReplyTo, next: AppSettings) {
        self.config = Ok(vec![next]);
        self.ask_reload(reply);
    }

    /// Asks for a reload of the one app, for client `reply`.
    fn ask_reload(&mut self, reply: ReplyTo) {
        self.send(Event::Reload {
            app: Some(0),
            reply: Some(reply),
            wait: true,
            mode: ReloadMode::Rolling,
        });
    }

    fn reload_report(&self, reply: ReplyTo) -> ReloadReport {
        self.reports(reply).remove(0)
    }
}

#[test]
fn start_spawns_every_slot_and_waits_for_readiness() {
    let mut sim = started(settings(3, 1, 0));
    let starting = sim.ids(WorkerState::Starting);
    assert_eq!(starting.len(), 3);
    assert_eq!(sim.app(0).phase(), Phase::Running);
    for id in &starting {
        assert!(sim.timers.contains_key(&TimerKey::Ready(*id)));
    }
    sim.send(Event::Ready(starting[0]));
    assert!(!sim.timers.contains_key(&TimerKey::Ready(starting[0])));
    assert_eq!(sim.ids(WorkerState::Ready), vec![starting[0]]);
}

#[test]
fn exec_readiness_is_ready_once_spawned() {
    let mut s = settings(2, 1, 0);
    Arc::make_mut(&mut s.spec).readiness = Readiness::Exec;
    let sim = started(s);
    assert_eq!(sim.ids(WorkerState::Ready).len(), 2);
    assert!(sim.timers.is_empty());
}

#[test]
fn unstable_exits_back_off_doubling_then_show_a_crash_loop() {
    let mut sim = ready(1);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let id = sim.ids(WorkerState::Ready)[0];
        sim.exit(id, ExitStatus::Code(3)); // well within min_uptime: unstable
        let at = sim.timers[&TimerKey::Restart { app: 0, slot: 0 }];
        delays.push((at - sim.now).as_millis());
        sim.advance(at - sim.now);
        let new = sim.ids(WorkerState::Starting)[0];
        sim.send(Event::Ready(new));
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000]);
    let id = sim.ids(WorkerState::Ready)[0];
    sim.exit(id, ExitStatus::Code(3));
    let snap = sim.app(0).snapshot(sim.now);
    assert_eq!(snap.waiting.len(), 1);
    assert_eq!(snap.waiting[0].state, WaitState::CrashLoop);
    assert_eq!(snap.waiting[0].restarts, 7);
    assert!(snap.waiting[0].last_exit.contains("exit code 3"));
}

#[test]
fn a_slot_that_never_comes_up_stays_a_crash_loop_when_the_backoff_exceeds_the_window() {
    let mut s = settings(1, 1, 0);
    s.restart.window = Duration::from_secs(1);
    s.restart.backoff_max = Duration::from_secs(30);
    let mut sim = started(s);
    for _ in 0..12 {
        let id = sim.ids(WorkerState::Starting)[0];
        sim.exit(id, ExitStatus::Code(1));
        let at = sim.timers[&TimerKey::Restart { app: 0, slot: 0 }];
        sim.advance(at - sim.now);
    }
    let id = sim.ids(WorkerState::Starting)[0];
    sim.exit(id, ExitStatus::Code(1));
    let waiting = sim.app(0).snapshot(sim.now).waiting;
    assert_eq!(waiting[0].state, WaitState::CrashLoop, "{waiting:?}");
}

#[test]
fn a_stable_worker_is_restarted_at_once_and_resets_the_backoff() {
    let mut sim = ready(1);
    let id = sim.ids(WorkerState::Ready)[0];
    sim.advance(Duration::from_secs(5));
    sim.exit(id, ExitStatus::Signal(9));
    assert_eq!(
        sim.timers[&TimerKey::Restart { app: 0, slot: 0 }],
        sim.now,
        "no backoff"
    );
    sim.advance(Duration::ZERO);
    assert_eq!(sim.ids(WorkerState::Starting).len(), 1);
}

#[test]
fn a_worker_not_ready_in_time_is_drained_then_killed_and_its_slot_backs_off() {
    let mut sim = started(settings(1, 1, 0));
    let id = sim.ids(WorkerState::Starting)[0];
    sim.advance(Duration::from_secs(5));
    assert_eq!(
        sim.signalled(id),
        vec![Signal::Term],
        "SIGTERM first, not SIGKILL"
    );
    let waiting = sim.app(0).snapshot(sim.now).waiting;
    assert!(
        waiting[0].last_exit.contains("not ready within 5s"),
        "{waiting:?}"
    );
    sim.advance(Duration::from_secs(10) - MS);
    assert_eq!(sim.signalled(id), vec![Signal::Term]);
    sim.advance(MS);
    assert_eq!(sim.signalled(id), vec![Signal::Term, Signal::KillGroup]);
    sim.exit(id, ExitStatus::Signal(9));
    assert_eq!(
        sim.ids(WorkerState::Starting).len(),
        1,
        "the slot was started again"
    );
}

#[test]
fn a_first_start_where_no_worker_can_be_executed_exits_with_the_reason() {
    let mut sim = Sim::new(vec![(settings(2, 1, 0), vec![])]);
    sim.fail_app = Some(0);
    sim.send(Event::Start);
    match &sim.exit {
        Some(Err(reason)) => {
            assert!(reason.contains("no worker could be started"), "{reason}");
            assert!(reason.contains("web.0: No such file"), "{reason}");
            assert!(reason.contains("(and 1 more)"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn after_the_first_start_spawn_failures_back_off_instead() {
    let mut sim = ready(1);
    sim.fail_app = Some(0);
    let id = sim.ids(WorkerState::Ready)[0];
    sim.advance(Duration::from_secs(5));
    sim.exit(id, ExitStatus::Code(1));
    sim.advance(Duration::from_secs(1));
    assert!(sim.exit.is_none());
    assert_eq!(sim.app(0).snapshot(sim.now).waiting.len(), 1);
}

#[test]
fn a_reload_replaces_one_slot_at_a_time_and_drains_old_workers_only_when_replaced() {
    let mut sim = ready(2);
    let old = sim.ids(WorkerState::Ready);
    sim.reload(1, settings(2, 1, 0));
    let new0 = sim.ids(WorkerState::Starting);
    assert_eq!(new0.len(), 1, "surge 1");
    assert!(
        sim.signals.is_empty(),
        "nothing drained before the new worker is ready"
    );
    sim.advance(30 * MS);
    sim.send(Event::Ready(new0[0]));
    assert_eq!(sim.signalled(old[0]), vec![Signal::Term]);
    assert!(sim.signalled(old[1]).is_empty());
    let new1 = sim.ids(WorkerState::Starting);
    assert_eq!(new1.len(), 1);
    sim.send(Event::Ready(new1[0]));
    assert_eq!(sim.signalled(old[1]), vec![Signal::Term]);
    let report = sim.reload_report(1);
    assert_eq!(report.outcome, ReloadOutcome::Ok);
    assert_eq!(report.generation, 2);
    assert_eq!(report.slots.len(), 2);
    assert_eq!(report.slots[0].old_pid, Some(101));
    assert_eq!(report.slots[0].ready_secs, 0.03);
    let snap = sim.app(0).snapshot(sim.now);
    assert_eq!(snap.generation, 2);
    assert!(
        snap.workers
            .iter()
            .all(|(w, _)| w.generation == 2 || w.state == WorkerState::Draining)
    );
}

#[test]
fn max_unavailable_drains_an_old_worker_before_its_replacement_is_ready() {
    let mut sim = ready(3);
    let old = sim.ids(WorkerState::Ready);
    sim.reload(1, settings(3, 2, 1));
    assert_eq!(sim.ids(WorkerState::Starting).len(), 2, "surge 2");
    assert_eq!(
        sim.signalled(old[0]),
        vec![Signal::Term],
        "one slot may be unavailable"
    );
    assert!(sim.signalled(old[1]).is_empty());
}

#[test]
fn reloads_asked_for_during_a_reload_run_once_after_it_for_every_caller() {
    let mut sim = ready(1);
    sim.reload(1, settings(1, 1, 0));
    sim.ask_reload(2);
    sim.ask_reload(3);
    sim.config = Ok(vec![settings(1, 1, 0)]);
    let first = sim.ids(WorkerState::Starting)[0];
    sim.send(Event::Ready(first));
    assert_eq!(sim.reload_report(1).generation, 2);
    let second = sim.ids(WorkerState::Starting);
    assert_eq!(second.len(), 1, "the queued reload started");
    sim.send(Event::Ready(second[0]));
    assert_eq!(sim.reload_report(2).generation, 3);
    assert_eq!(sim.reload_report(3).generation, 3);
    assert_eq!(sim.app(0).snapshot(sim.now).generation, 3, "+2 exactly");
}

#[test]
fn a_new_worker_that_exits_aborts_the_reload_and_old_workers_keep_serving() {
    let mut sim = ready(2);
    let old = sim.ids(WorkerState::Ready);
    sim.reload(1, settings(2, 1, 0));
    let new = sim.ids(WorkerState::Starting)[0];
    sim.exit(new, ExitStatus::Code(2));
    let report = sim.reload_report(1);
    assert_eq!(report.outcome, ReloadOutcome::Aborted);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("exited before it was ready: exit code 2")
    );
    assert!(sim.signals.is_empty(), "no old worker was signalled");
    assert_eq!(sim.ids(WorkerState::Ready), old);
    assert!(
        sim.app(0).snapshot(sim.now).waiting.is_empty(),
        "no restart for a reload's worker"
    );
}

#[test]
fn a_new_worker_not_ready_in_time_aborts_the_reload_and_is_drained() {
    let mut sim = ready(1);
    let mut next = settings(1, 1, 0);
    next.not_ready_hint = Some("the app did not listen".into());
    sim.reload(1, next);
    let new = sim.ids(WorkerState::Starting)[0];
    sim.advance(Duration::from_secs(5));
    let reason = sim.reload_report(1).reason.clone().unwrap();
    assert!(
        reason.contains("was not ready within 5s: the app did not listen"),
        "{reason}"
    );
    assert_eq!(sim.signalled(new), vec![Signal::Term]);
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.signalled(new), vec![Signal::Term, Signal::KillGroup]);
}

#[test]
fn an_invalid_config_aborts_the_reload_before_anything_changes() {
    let mut sim = ready(2);
    sim.config = Err("s.toml: app[0].instances: invalid type".into());
    sim.ask_reload(1);
    let report = sim.reload_report(1);
    assert_eq!(report.outcome, ReloadOutcome::Aborted);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("app[0].instances")
    );
    assert!(sim.ids(WorkerState::Starting).is_empty());
    assert_eq!(sim.app(0).snapshot(sim.now).generation, 1);
}

#[test]
fn stop_during_a_reload_aborts_it_drains_everything_and_exits_when_all_are_gone() {
    let mut sim = ready(2);
    sim.reload(1, settings(2, 1, 0));
    sim.ask_reload(2); // queued
    sim.send(Event::Stop { reply: Some(9) });
    assert!(
        sim.reload_report(1)
            .reason
            .as_deref()
            .unwrap()
            .contains("stopping")
    );
    assert!(
        sim.reload_report(2)
            .reason
            .as_deref()
            .unwrap()
            .contains("stopping")
    );
    let all: Vec<WorkerId> = sim
        .app(0)
        .snapshot(sim.now)
        .workers
        .iter()
        .map(|(w, _)| w.id)
        .collect();
    assert_eq!(all.len(), 3);
    for id in &all {
        assert_eq!(sim.signalled(*id), vec![Signal::Term]);
    }
    assert!(sim.exit.is_none());
    for id in all {
        sim.exit(id, ExitStatus::Code(0));
    }
    assert!(
        matches!(sim.exit, Some(Ok(()))),
        "the app reports it stopped"
    );
    assert!(sim.timers.is_empty(), "no deadline left: {:?}", sim.timers);
}

#[test]
fn a_crash_during_a_reload_is_restarted_and_the_slot_still_replaced() {
    let mut sim = ready(2);
    let old = sim.ids(WorkerState::Ready);
    sim.reload(1, settings(2, 1, 0));
    sim.advance(Duration::from_secs(2));
    sim.exit(old[1], ExitStatus::Signal(9)); // slot 1's old worker, not yet replaced
    assert!(
        sim.timers
            .contains_key(&TimerKey::Restart { app: 0, slot: 1 })
    );
    let new0 = sim
        .ids(WorkerState::Starting)
        .into_iter()
        .find(|id| sim.core.worker(*id).unwrap().slot == 0)
        .unwrap();
    sim.send(Event::Ready(new0));
    let new1 = sim.ids(WorkerState::Starting);
    assert_eq!(new1.len(), 1);
    sim.send(Event::Ready(new1[0]));
    assert!(
        !sim.timers
            .contains_key(&TimerKey::Restart { app: 0, slot: 1 }),
        "the pending restart is void"
    );
    assert_eq!(sim.reload_report(1).outcome, ReloadOutcome::Ok);
    let slots: Vec<(usize, u64)> = sim
        .app(0)
        .snapshot(sim.now)
        .workers
        .iter()
        .filter(|(w, _)| w.state == WorkerState::Ready)
        .map(|(w, _)| (w.slot, w.generation))
        .collect();
    assert_eq!(slots, vec![(0, 2), (1, 2)]);
}

#[test]
fn a_reload_scales_up_and_down() {
    let mut sim = ready(2);
    sim.reload(1, settings(3, 1, 0));
    for _ in 0..3 {
        let new = sim.ids(WorkerState::Starting)[0];
        sim.send(Event::Ready(new));
    }
    assert_eq!(sim.ids(WorkerState::Ready).len(), 3);
    sim.reload(2, settings(1, 1, 0));
    let new = sim.ids(WorkerState::Starting)[0];
    sim.send(Event::Ready(new));
    assert_eq!(sim.reload_report(2).outcome, ReloadOutcome::Ok);
    let ready = sim.ids(WorkerState::Ready);
    assert_eq!(ready, vec![new], "slots 1 and 2 retired: {ready:?}");
    // Slot 0's old worker and the retired slots 1 and 2, besides the 2 of the first reload.
    assert_eq!(sim.ids(WorkerState::Draining).len(), 5);
}

#[test]
fn every_ended_reload_is_recorded_once_with_its_outcome() {
    let mut sim = ready(1);
    sim.reload(1, settings(1, 1, 0));
    sim.ask_reload(2);
    sim.ask_reload(3);
    let first = sim.ids(WorkerState::Starting)[0];
    sim.now += Duration::from_millis(40);
    sim.send(Event::Ready(first));
    let second = sim.ids(WorkerState::Starting)[0];
    sim.exit(second, ExitStatus::Code(1));
    sim.config = Err("broken".into());
    sim.ask_reload(4);
    let ended: Vec<(u64, ReloadOutcome)> = sim
        .ended
        .iter()
        .map(|r| (r.generation, r.outcome))
        .collect();
    // The queued reload ran once for two callers: one record.
    assert_eq!(
        ended,
        vec![
            (2, ReloadOutcome::Ok),
            (3, ReloadOutcome::Aborted),
            (4, ReloadOutcome::Aborted)
        ]
    );
    assert_eq!(sim.ended[0].duration_secs, 0.04);
}

#[test]
fn the_restart_total_counts_crash_restarts_and_survives_retired_slots() {
    let mut sim = ready(2);
    let total = |sim: &Sim| sim.app(0).snapshot(sim.now).restarts_total;
    let first = sim.ids(WorkerState::Ready);
    sim.now += Duration::from_secs(5);
    sim.exit(first[1], ExitStatus::Signal(9));
    assert_eq!(total(&sim), 1);
    sim.advance(Duration::from_secs(1));
    sim.ready_all(0);
    // A reload replaces workers: not a restart.
    sim.reload(1, settings(2, 1, 0));
    for _ in 0..2 {
        let new = sim.ids(WorkerState::Starting)[0];
        sim.send(Event::Ready(new));
    }
    assert_eq!(sim.reload_report(1).outcome, ReloadOutcome::Ok);
    assert_eq!(total(&sim), 1);
    // The slot that restarted is retired: the count stays.
    sim.send(Event::Scale {
        app: 0,
        instances: 1,
        reply: None,
    });
    assert_eq!(total(&sim), 1);
}

#[test]
fn fast_stop_kills_every_group_at_once() {
    let mut sim = ready(2);
    sim.send(Event::FastStop);
    for id in sim
        .app(0)
        .snapshot(sim.now)
        .workers
        .iter()
        .map(|(w, _)| w.id)
    {
        assert_eq!(sim.signalled(id), vec![Signal::Term, Signal::KillGroup]);
    }
}

// ---- memory recycling ----

const MB: u64 = 1_000_000;
const SEC: Duration = Duration::from_secs(1);

/// A started app of `n` workers, all ready, with `max_memory` 100 MB and a 30 s grace.
fn ready_with_max_memory(n: usize) -> Sim {
    let mut s = settings(n, 1, 0);
    s.memory.max_bytes = Some(100 * MB);
    let mut sim = started(s);
    sim.ready_all(0);
    sim
}

impl Sim {
    /// Sets the memory every later sample reports for `id`.
    fn uses(&mut self, id: WorkerId, bytes: u64) {
        self.memory.insert(id, bytes);
    }

    /// The slot of a worker.
    fn slot_of(&self, id: WorkerId) -> usize {
        self.core.worker(id).unwrap().slot
    }

    fn recycles(&self) -> (u64, u64) {
        let snap = self.app(0).snapshot(self.now);
        (snap.memory_recycles, snap.memory_recycle_failures)
    }
}

#[test]
fn memory_is_sampled_once_a_second_only_while_an_app_has_max_memory() {
    let mut sim = ready(2);
    assert!(!sim.timers.contains_key(&TimerKey::MemorySample));
    sim.advance(5 * SEC);
    assert_eq!(sim.memory_samples, 0);

    let mut sim = ready_with_max_memory(2);
    assert!(sim.timers.contains_key(&TimerKey::MemorySample));
    sim.advance(5 * SEC);
    assert_eq!(sim.memory_samples, 5);
    sim.send(Event::Stop { reply: None });
    assert!(
        !sim.timers.contains_key(&TimerKey::MemorySample),
        "no sampling while stopping"
    );
    sim.advance(5 * SEC);
    assert_eq!(sim.memory_samples, 5);
}

#[test]
fn a_worker_above_max_memory_for_the_grace_is_replaced_once_like_a_reload_slot() {
    let mut sim = ready_with_max_memory(2);
    let old = sim.ids(WorkerState::Ready);
    sim.uses(old[0], 50 * MB);
    sim.uses(old[1], 150 * MB);
    sim.advance(SEC); // first sample above: the grace starts
    let since = sim.now;
    sim.advance(29 * SEC);
    assert!(sim.ids(WorkerState::Starting).is_empty(), "29 s: not yet");
    let w = sim.core.worker(old[1]).unwrap();
    assert_eq!(w.over_memory, Some((since, 150 * MB)));
    assert_eq!(sim.core.worker(old[0]).unwrap().over_memory, None);

    sim.advance(SEC);
    let new = sim.ids(WorkerState::Starting);
    assert_eq!(new.len(), 1, "30 s above: one replacement");
    assert_eq!(sim.slot_of(new[0]), 1);
    assert_eq!(
        sim.core.worker(new[0]).unwrap().generation,
        1,
        "same generation"
    );
    assert!(
        sim.signals.is_empty(),
        "the old worker serves until the new one is ready"
    );
    let progress = sim.app(0).snapshot(sim.now).memory_recycling.unwrap();
    assert_eq!((progress.slot, progress.rss_bytes), (1, 150 * MB));

    // Still above while the replacement starts: no second replacement.
    sim.advance(3 * SEC);
    assert_eq!(sim.ids(WorkerState::Starting), new);
    assert_eq!(
        sim.ids(WorkerState::Ready),
        old,
        "never fewer ready than instances"
    );

    sim.send(Event::Ready(new[0]));
    assert_eq!(sim.signalled(old[1]), vec![Signal::Term]);
    assert!(
        sim.signalled(old[0]).is_empty(),
        "the other slot is left alone"
    );
    assert_eq!(sim.recycles(), (1, 0));
    assert!(sim.app(0).snapshot(sim.now).memory_recycling.is_none());
    assert_eq!(sim.ids(WorkerState::Ready), vec![old[0], new[0]]);

    // The draining worker still reports its memory: it is not replaced again, and it is killed
    // after its kill timeout like any draining worker.
    sim.advance(60 * SEC);
    assert_eq!(sim.spawned.len(), 3, "exactly one replacement");
    assert_eq!(sim.signalled(old[1]), vec![Signal::Term, Signal::KillGroup]);
    sim.exit(old[1], ExitStatus::Signal(9));
    assert!(
        sim.app(0).snapshot(sim.now).waiting.is_empty(),
        "no crash restart"
    );
    assert_eq!(sim.recycles(), (1, 0));
}

#[test]
fn a_sample_below_max_memory_starts_the_grace_over() {
    let mut sim = ready_with_max_memory(1);
    let id = sim.ids(WorkerState::Ready)[0];
    sim.uses(id, 150 * MB);
    sim.advance(20 * SEC);
    sim.uses(id, 100 * MB); // at the limit is not above it
    sim.advance(SEC);
    assert_eq!(sim.core.worker(id).unwrap().over_memory, None);
    sim.uses(id, 150 * MB);
    sim.advance(SEC);
    sim.advance(29 * SEC);
    assert!(
        sim.ids(WorkerState::Starting).is_empty(),
        "the grace started over"
    );
    sim.advance(SEC);
    assert_eq!(sim.ids(WorkerState::Starting).len(), 1);
}

#[test]
fn no_replacement_for_memory_during_a_reload_and_the_next_sample_after_an_aborted_one() {
    let mut s = settings(2, 1, 0);
    s.memory.max_bytes = Some(100 * MB);
    Arc::make_mut(&mut s.spec).ready_timeout = Duration::from_secs(60);
    let mut sim = started(s.clone());
    sim.ready_all(0);
    let old = sim.ids(WorkerState::Ready);
    sim.uses(old[1], 150 * MB); // above from the first sample, at 1 s
    sim.advance(10 * SEC + 500 * MS); // between two samples
    sim.reload(1, s);
    assert_eq!(sim.ids(WorkerState::Starting).len(), 1);
    sim.advance(60 * SEC - MS); // 70 s: far beyond the grace, and the reload still runs
    assert_eq!(
        sim.spawned.len(),
        3,
        "only the reload's new worker was started"
    );
    sim.advance(MS); // its ready timeout: the reload is aborted
    assert_eq!(sim.reload_report(1).outcome, ReloadOutcome::Aborted);
    assert_eq!(sim.spawned.len(), 3);
    // The next sample replaces the worker above the limit for 70 s.
    sim.advance(SEC);
    assert_eq!(sim.spawned.len(), 4);
    let new = *sim.spawned.last().map(|(_, id)| id).unwrap();
    assert_eq!(sim.slot_of(new), 1);
}

#[test]
fn a_worker_the_reload_replaces_is_not_replaced_again_for_memory() {
    let mut s = settings(2, 1, 0);
    s.memory.max_bytes = Some(100 * MB);
    let mut sim = started(s.clone());
    sim.ready_all(0);
    let old = sim.ids(WorkerState::Ready);
    sim.uses(old[1], 150 * MB);
    sim.advance(29 * SEC);
    sim.reload(1, s);
    sim.advance(2 * SEC);
    assert_eq!(sim.spawned.len(), 3, "the reload's new worker only");
    sim.ready_all(0);
    sim.advance(2 * SEC);
    sim.ready_all(0);
    assert_eq!(sim.reload_report(1).outcome, ReloadOutcome::Ok);
    sim.advance(60 * SEC);
    assert_eq!(
        sim.spawned.len(),
        4,
        "both slots replaced by the reload, nothing else"
    );
    assert_eq!(sim.recycles(), (0, 0));
}

#[test]
fn no_replacement_for_memory_while_stopping() {
    let mut sim = ready_with_max_memory(1);
    let id = sim.ids(WorkerState::Ready)[0];
    sim.uses(id, 150 * MB);
    sim.advance(10 * SEC);
    sim.send(Event::Stop { reply: None });
    sim.advance(60 * SEC);
    assert_eq!(sim.spawned.len(), 1);
}

#[test]
fn a_replacement_not_ready_in_time_keeps_the_old_worker_and_is_tried_again_after_another_grace() {
    let mut sim = ready_with_max_memory(1);
    let old = sim.ids(WorkerState::Ready)[0];
    sim.uses(old, 150 * MB);
    sim.advance(31 * SEC);
    let new = sim.ids(WorkerState::Starting)[0];
    sim.advance(5 * SEC); // ready_timeout
    assert_eq!(
        sim.signalled(new),
        vec![Signal::Term],
        "drained like any worker"
    );
    assert!(
        sim.signalled(old).is_empty(),
        "the old worker keeps serving"
    );
    assert_eq!(sim.ids(WorkerState::Ready), vec![old]);
    assert_eq!(sim.recycles(), (0, 1));
    assert!(sim.app(0).snapshot(sim.now).waiting.is_empty());
    let failed_at = sim.now;
    sim.exit(new, ExitStatus::Code(0));
    // Another grace from the failure, then a second attempt.
    sim.advance(failed_at + 30 * SEC - sim.now - MS);
    assert_eq!(sim.spawned.len(), 2);
    sim.advance(SEC);
    assert_eq!(sim.spawned.len(), 3, "tried again");
    let second = sim.ids(WorkerState::Starting)[0];
    sim.send(Event::Ready(second));
    assert_eq!(sim.signalled(old), vec![Signal::Term]);
    assert_eq!(sim.recycles(), (1, 1));
}

#[test]
fn a_replacement_that_exits_or_cannot_start_keeps_the_old_worker() {
    let mut sim = ready_with_max_memory(1);
    let old = sim.ids(WorkerState::Ready)[0];
    sim.uses(old, 150 * MB);
    sim.advance(31 * SEC);
    let new = sim.ids(WorkerState::Starting)[0];
    sim.exit(new, ExitStatus::Code(1));
    assert_eq!(sim.recycles(), (0, 1));
    assert!(
        sim.app(0).snapshot(sim.now).waiting.is_empty(),
        "no crash restart for it"
    );
    sim.fail_app = Some(0);
    sim.advance(30 * SEC);
    assert_eq!(sim.recycles(), (0, 2), "spawn failure");
    assert!(sim.signals.is_empty());
    assert_eq!(sim.ids(WorkerState::Ready), vec![old]);
}

#[test]
fn one_replacement_at_a_time_the_longest_above_first() {
    let mut sim = ready_with_max_memory(3);
    let old = sim.ids(WorkerState::Ready);
    sim.uses(old[2], 150 * MB);
    sim.advance(SEC);
    sim.uses(old[0], 150 * MB);
    sim.uses(old[1], 150 * MB);
    sim.advance(30 * SEC);
    let first = sim.ids(WorkerState::Starting);
    assert_eq!(first.len(), 1, "one at a time");
    assert_eq!(sim.slot_of(first[0]), 2, "above the longest");
    sim.send(Event::Ready(first[0]));
    sim.advance(SEC);
    let second = sim.ids(WorkerState::Starting);
    assert_eq!(second.len(), 1);
    assert_eq!(sim.slot_of(second[0]), 0, "then by slot");
    sim.send(Event::Ready(second[0]));
    sim.advance(SEC);
    let third = sim.ids(WorkerState::Starting);
    assert_eq!(sim.slot_of(third[0]), 1);
    sim.send(Event::Ready(third[0]));
    assert_eq!(sim.recycles(), (3, 0));
    for id in old {
        assert_eq!(sim.signalled(id), vec![Signal::Term]);
    }
}

#[test]
fn a_reload_gives_up_a_replacement_for_memory_under_way() {
    let mut s = settings(1, 1, 0);
    s.memory.max_bytes = Some(100 * MB);
    let mut sim = started(s.clone());
    sim.ready_all(0);
    let old = sim.ids(WorkerState::Ready)[0];
    sim.uses(old, 150 * MB);
    sim.advance(31 * SEC);
    let recycling = sim.ids(WorkerState::Starting)[0];
    sim.reload(1, s);
    assert_eq!(sim.signalled(recycling), vec![Signal::Term]);
    assert!(sim.app(0).snapshot(sim.now).memory_recycling.is_none());
    let reload_new = sim.ids(WorkerState::Starting)[0];
    sim.send(Event::Ready(reload_new));
    assert_eq!(sim.reload_report(1).outcome, ReloadOutcome::Ok);
    assert_eq!(sim.signalled(old), vec![Signal::Term]);
    assert_eq!(sim.recycles(), (0, 0));
}

#[test]
fn when_the_old_worker_dies_first_its_replacement_takes_the_slot() {
    let mut sim = ready_with_max_memory(1);
    let old = sim.ids(WorkerState::Ready)[0];
    sim.uses(old, 150 * MB);
    sim.advance(31 * SEC);
    let new = sim.ids(WorkerState::Starting)[0];
    sim.exit(old, ExitStatus::Signal(9)); // the OOM killer came first
    assert!(
        !sim.timers
            .contains_key(&TimerKey::Restart { app: 0, slot: 0 }),
        "no crash restart: the replacement is already starting"
    );
    sim.send(Event::Ready(new));
    assert_eq!(sim.ids(WorkerState::Ready), vec![new]);
    let snap = sim.app(0).snapshot(sim.now);
    assert_eq!(snap.workers[0].1, 1, "counted as a restart of the slot");
    assert_eq!((snap.memory_recycles, snap.memory_recycle_failures), (0, 0));
    assert!(sim.signals.is_empty());
}

#[test]
fn with_exec_readiness_the_replacement_is_ready_at_once() {
    let mut s = settings(2, 1, 0);
    s.memory.max_bytes = Some(100 * MB);
    Arc::make_mut(&mut s.spec).readiness = Readiness::Exec;
    let mut sim = started(s);
    let old = sim.ids(WorkerState::Ready);
    sim.uses(old[0], 150 * MB);
    sim.advance(31 * SEC);
    assert_eq!(sim.signalled(old[0]), vec![Signal::Term]);
    assert_eq!(sim.ids(WorkerState::Ready).len(), 2);
    assert_eq!(sim.recycles(), (1, 0));
}

#[test]
fn scaling_away_the_slot_gives_up_its_replacement() {
    let mut sim = ready_with_max_memory(2);
    let old = sim.ids(WorkerState::Ready);
    sim.uses(old[1], 150 * MB);
    sim.advance(31 * SEC);
    let new = sim.ids(WorkerState::Starting)[0];
    sim.send(Event::Scale {
        app: 0,
        instances: 1,
        reply: None,
    });
    assert_eq!(sim.signalled(new), vec![Signal::Term]);
    assert_eq!(sim.signalled(old[1]), vec![Signal::Term]);
    assert_eq!(sim.ids(WorkerState::Ready), vec![old[0]]);
    assert!(sim.app(0).snapshot(sim.now).memory_recycling.is_none());
}

#[test]
fn after_an_aborted_reload_restarts_and_scaling_use_the_last_good_config() {
    let mut sim = ready(2);
    let mut broken = settings(3, 1, 0);
    Arc::make_mut(&mut broken.spec).program = "/bin/false".into();
    sim.reload(1, broken);
    let new = sim.ids(WorkerState::Starting)[0];
    sim.exit(new, ExitStatus::Code(1));
    assert_eq!(sim.reload_report(1).outcome, ReloadOutcome::Aborted);
    assert_eq!(sim.reload_report(1).generation, 2);
    let snapshot = sim.app(0).snapshot(sim.now);
    assert_eq!(
        snapshot.generation, 1,
        "the serving generation, not the aborted one"
    );
    assert_eq!(
        sim.ids(WorkerState::Ready).len(),
        2,
        "no slot of the aborted config"
    );

    // `restart` and `scale` start workers of the last good config, in a generation of their own.
    sim.send(Event::Restart {
        app: 0,
        reply: Some(2),
    });
    sim.send(Event::Scale {
        app: 0,
        instances: 3,
        reply: Some(3),
    });
    let started: Vec<&Worker> = sim
        .ids(WorkerState::Starting)
        .into_iter()
        .filter_map(|id| sim.core.worker(id))
        .collect();
    assert_eq!(started.len(), 3);
    for w in started {
        assert_eq!(
            w.spec.program,
            std::path::PathBuf::from("/bin/true"),
            "{w:?}"
        );
        assert_eq!(
            w.generation, 3,
            "generation 2 was the aborted reload's: {w:?}"
        );
    }

    // The next reload is generation 4: a number is never given out twice.
    sim.ready_all(0);
    sim.reload(4, settings(3, 1, 0));
    for _ in 0..3 {
        sim.ready_all(0);
    }
    assert_eq!(sim.reload_report(4).generation, 4);
    assert_eq!(sim.reload_report(4).outcome, ReloadOutcome::Ok);
}
