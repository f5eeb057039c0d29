//! The rules across apps, driven with plain instants and no processes: start order (`after`),
//! reloading every app one at a time, stopping in reverse order, scale and restart, and a first
//! start that fails as a whole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use super::report::ReloadOutcome;
use super::test_support::Sim;
use super::*;

fn settings(name: &str, instances: usize) -> AppSettings {
    super::test_support::settings(name, instances, 1, 0)
}

/// The simulation's view of apps by index.
trait Apps {
    fn exit_all_draining(&mut self, app: usize);
    fn phase(&self, app: usize) -> Phase;
}

impl Apps for Sim {
    fn exit_all_draining(&mut self, app: usize) {
        for id in self.workers(app, WorkerState::Draining) {
            self.exit(id, ExitStatus::Code(0));
        }
    }

    fn phase(&self, app: usize) -> Phase {
        self.app(app).phase()
    }
}

/// db (1 worker), web after db (2 workers), jobs (1 worker, no dependency).
fn three_apps() -> Sim {
    let mut sim = Sim::new(vec![
        (settings("db", 1), vec![]),
        (settings("web", 2), vec![0]),
        (settings("jobs", 1), vec![]),
    ]);
    sim.send(Event::Start);
    sim
}

/// The three apps, each with every worker ready.
fn three_apps_ready() -> Sim {
    let mut sim = three_apps();
    for app in 0..3 {
        sim.ready_all(app);
    }
    sim
}

#[test]
fn an_app_starts_once_the_apps_it_is_after_are_ready() {
    let mut sim = three_apps();
    assert_eq!(sim.phase(0), Phase::Running);
    assert_eq!(sim.phase(1), Phase::Waiting, "web waits for db");
    assert_eq!(sim.phase(2), Phase::Running, "jobs has no `after`");
    let waiting: Vec<Vec<String>> = sim.core.apps().map(|v| v.waiting_for).collect();
    assert_eq!(waiting, vec![vec![], vec!["db".to_string()], vec![]]);
    assert!(sim.spawned.iter().all(|(app, _)| *app != 1));
    sim.ready_all(0);
    assert_eq!(sim.phase(1), Phase::Running);
    assert_eq!(sim.workers(1, WorkerState::Starting).len(), 2);
    // Worker ids say which app they belong to.
    assert!(sim.spawned.iter().all(|(app, id)| app_of(*id) == *app));
}

#[test]
fn reload_of_every_app_goes_one_app_at_a_time() {
    let mut sim = three_apps_ready();
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    assert_eq!(sim.workers(0, WorkerState::Starting).len(), 1, "db first");
    assert!(sim.workers(1, WorkerState::Starting).is_empty());
    assert!(sim.workers(2, WorkerState::Starting).is_empty());
    sim.ready_all(0);
    assert_eq!(sim.workers(1, WorkerState::Starting).len(), 1, "then web");
    sim.ready_all(1);
    sim.ready_all(1);
    assert_eq!(sim.workers(2, WorkerState::Starting).len(), 1, "then jobs");
    assert!(!sim.replies.contains_key(&1));
    sim.ready_all(2);
    let reports = sim.reports(1);
    let apps: Vec<&str> = reports.iter().map(|r| r.app.as_str()).collect();
    assert_eq!(apps, vec!["db", "web", "jobs"]);
    assert!(reports.iter().all(|r| r.outcome == ReloadOutcome::Ok));
}

#[test]
fn reloading_one_app_leaves_the_others_alone() {
    let mut sim = three_apps_ready();
    let before = sim.spawned.len();
    sim.send(Event::Reload {
        app: Some(2),
        reply: Some(7),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    sim.ready_all(2);
    assert_eq!(sim.spawned.len(), before + 1);
    assert!(sim.spawned[before..].iter().all(|(app, _)| *app == 2));
    assert_eq!(sim.reports(7)[0].app, "jobs");
    assert!(sim.signals.iter().all(|(id, _)| app_of(*id) == 2));
}

#[test]
fn a_reload_not_waited_for_is_answered_at_once_with_the_generation_it_brings() {
    let mut sim = three_apps_ready();
    // One app: answered before its new worker is even ready, towards generation 2.
    sim.send(Event::Reload {
        app: Some(1),
        reply: Some(1),
        wait: false,
        mode: ReloadMode::Rolling,
    });
    let started = sim.reports(1);
    assert_eq!(started.len(), 1);
    assert_eq!((started[0].app.as_str(), started[0].generation), ("web", 2));
    assert_eq!(started[0].outcome, ReloadOutcome::Started);
    assert!(started[0].slots.is_empty() && started[0].reason.is_none());
    assert_eq!(started[0].duration_secs, 0.0);
    assert_eq!(sim.workers(1, WorkerState::Starting).len(), 1, "it runs");
    // Asked again while it runs: queued behind it, answered with its generation.
    sim.send(Event::Reload {
        app: Some(1),
        reply: Some(2),
        wait: false,
        mode: ReloadMode::Rolling,
    });
    assert_eq!(sim.reports(2)[0].generation, 2);
    // Every app: the first app's reload starts now, web's runs, jobs' waits its turn.
    sim.send(Event::Reload {
        app: None,
        reply: Some(3),
        wait: false,
        mode: ReloadMode::Rolling,
    });
    let all: Vec<(String, u64, ReloadOutcome)> = sim
        .reports(3)
        .into_iter()
        .map(|r| (r.app, r.generation, r.outcome))
        .collect();
    assert_eq!(
        all,
        vec![
            ("db".to_string(), 2, ReloadOutcome::Started),
            ("web".to_string(), 2, ReloadOutcome::Started),
            ("jobs".to_string(), 1, ReloadOutcome::Started),
        ]
    );
    // Everything runs to its end, and nobody is answered twice.
    for _ in 0..8 {
        for app in 0..3 {
            sim.ready_all(app);
        }
    }
    assert_eq!(
        sim.app(1).snapshot(sim.now).generation,
        3,
        "web: the two reloads asked while its first ran are one, after it"
    );
    assert_eq!(sim.app(2).snapshot(sim.now).generation, 2);
    assert_eq!(sim.core.service_state(), ServiceState::Ready);
    for client in 1..=3 {
        assert_eq!(sim.replies[&client].len(), 1, "client {client}");
    }
}

#[test]
fn a_reload_not_waited_for_of_an_app_that_does_not_run_yet_says_its_generation() {
    let mut sim = three_apps();
    sim.send(Event::Reload {
        app: Some(1),
        reply: Some(1),
        wait: false,
        mode: ReloadMode::Rolling,
    });
    let started = &sim.reports(1)[0];
    assert_eq!(
        (started.generation, started.outcome),
        (1, ReloadOutcome::Started)
    );
    assert!(
        sim.spawned.iter().all(|(app, _)| *app != 1),
        "web still waits"
    );
}

#[test]
fn stop_goes_in_reverse_order_one_app_after_the_other() {
    let mut sim = three_apps_ready();
    sim.send(Event::Stop { reply: Some(9) });
    assert_eq!(sim.phase(2), Phase::Stopping, "the last app first");
    assert_eq!(sim.phase(1), Phase::Running);
    sim.exit_all_draining(2);
    assert_eq!(sim.phase(1), Phase::Stopping);
    assert_eq!(sim.phase(0), Phase::Running);
    sim.exit_all_draining(1);
    assert_eq!(sim.phase(0), Phase::Stopping);
    assert!(sim.exit.is_none());
    sim.exit_all_draining(0);
    assert!(matches!(sim.exit, Some(Ok(()))));
    assert!(matches!(sim.replies[&9][..], [Answer::Stopped]));
}

#[test]
fn an_app_still_waiting_stops_at_once() {
    let mut sim = three_apps();
    sim.send(Event::Stop { reply: None });
    sim.exit_all_draining(2);
    assert_eq!(sim.phase(1), Phase::Stopped, "never started");
    assert_eq!(sim.phase(0), Phase::Stopping);
}

#[test]
fn a_first_start_that_cannot_execute_an_app_stops_everything_with_the_reason() {
    let mut sim = Sim::new(vec![
        (settings("ok", 2), vec![]),
        (settings("broken", 2), vec![]),
    ]);
    sim.fail_app = Some(1);
    sim.send(Event::Start);
    match &sim.exit {
        Some(Err(reason)) => assert!(
            reason.starts_with(
                "app broken: no worker could be started: broken.0: No such file or directory"
            ),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    let ok_workers: Vec<WorkerId> = sim
        .spawned
        .iter()
        .filter(|(a, _)| *a == 0)
        .map(|(_, id)| *id)
        .collect();
    for id in ok_workers {
        assert!(
            sim.signals.contains(&(id, Signal::KillGroup)),
            "nothing left running"
        );
    }
}

#[test]
fn scale_past_the_cap_is_refused_at_once_and_nothing_starts() {
    let mut sim = Sim::new(vec![(settings("web", 2), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    let spawned = sim.spawned.len();
    for (reply, instances) in [(1, usize::MAX), (2, crate::config::MAX_INSTANCES + 1)] {
        sim.send(Event::Scale {
            app: 0,
            instances,
            reply: Some(reply),
        });
        match &sim.replies[&reply][..] {
            [Answer::Refused(message)] => {
                assert!(message.contains("at most 1024"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sim.spawned.len(), spawned, "nothing started");
    assert!(sim.signals.is_empty(), "nothing stopped");
    assert_eq!(sim.workers(0, WorkerState::Ready).len(), 2);
    // The cap itself is allowed (queued behind nothing: it starts at once).
    sim.send(Event::Scale {
        app: 0,
        instances: 3,
        reply: Some(3),
    });
    assert!(matches!(
        sim.replies[&3][..],
        [Answer::Scaled { to: 3, .. }]
    ));
}

#[test]
fn scale_up_and_down_is_graceful_and_waits_for_a_reload_under_way() {
    let mut sim = Sim::new(vec![(settings("web", 2), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    sim.send(Event::Scale {
        app: 0,
        instances: 4,
        reply: Some(1),
    });
    assert_eq!(sim.workers(0, WorkerState::Starting).len(), 2);
    assert!(
        sim.signals.is_empty(),
        "scaling up touches no running worker"
    );
    sim.ready_all(0);
    // A reload runs: the scale down waits for it.
    sim.config = Ok(vec![settings("web", 4)]);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(2),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    sim.send(Event::Scale {
        app: 0,
        instances: 1,
        reply: Some(3),
    });
    assert!(!sim.replies.contains_key(&3));
    for _ in 0..4 {
        sim.ready_all(0);
    }
    assert_eq!(sim.reports(2)[0].outcome, ReloadOutcome::Ok);
    match &sim.replies[&3][..] {
        [Answer::Scaled { from, to, .. }] => assert_eq!((*from, *to), (4, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.workers(0, WorkerState::Ready).len(), 1);
    // The next reload takes `instances` from the file again, and says so.
    sim.config = Ok(vec![settings("web", 2)]);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(4),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    sim.ready_all(0);
    sim.ready_all(0);
    let report = &sim.reports(4)[0];
    assert_eq!(report.outcome, ReloadOutcome::Ok);
    assert!(
        report
            .note
            .as_deref()
            .unwrap()
            .contains("back to 2 from the config file"),
        "{report:?}"
    );
    assert_eq!(sim.workers(0, WorkerState::Ready).len(), 2);
}

#[test]
fn restart_replaces_every_worker_at_once_without_waiting() {
    let mut sim = Sim::new(vec![(settings("web", 3), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    let old = sim.workers(0, WorkerState::Ready);
    sim.send(Event::Restart {
        app: 0,
        reply: Some(5),
    });
    for id in &old {
        assert!(sim.signals.contains(&(*id, Signal::Term)));
    }
    assert_eq!(sim.workers(0, WorkerState::Starting).len(), 3);
    match &sim.replies[&5][..] {
        [
            Answer::Restarted {
                generation,
                workers,
                ..
            },
        ] => assert_eq!((*generation, *workers), (2, 3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_crash_during_the_reload_of_every_app_is_restarted_and_the_reload_goes_on() {
    let mut sim = three_apps_ready();
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    // jobs' worker crashes while db reloads.
    let jobs = sim.workers(2, WorkerState::Ready)[0];
    sim.send(Event::Exited {
        worker: jobs,
        status: ExitStatus::Signal(9),
    });
    assert!(
        sim.timers
            .contains_key(&TimerKey::Restart { app: 2, slot: 0 })
    );
    sim.ready_all(0);
    sim.ready_all(1);
    sim.ready_all(1);
    sim.ready_all(2);
    let reports = sim.reports(1);
    assert_eq!(reports.len(), 3);
    assert!(
        reports.iter().all(|r| r.outcome == ReloadOutcome::Ok),
        "{reports:?}"
    );
}

#[test]
fn memory_recycling_is_per_app_one_at_a_time_each_and_a_reload_of_one_leaves_the_other_alone() {
    let limited = |name: &str, n: usize| {
        let mut s = settings(name, n);
        s.memory.max_bytes = Some(100_000_000);
        s
    };
    let mut sim = Sim::new(vec![
        (limited("a", 2), vec![]),
        (limited("b", 2), vec![]),
        (settings("c", 1), vec![]),
    ]);
    sim.send(Event::Start);
    for app in 0..3 {
        sim.ready_all(app);
    }
    for app in 0..3 {
        for id in sim.workers(app, WorkerState::Ready) {
            sim.memory.insert(id, 200_000_000);
        }
    }
    // Every worker is above 100 MB from the first sample (1 s). App a reloads from 27 s (its new
    // worker is not ready yet at 31 s); apps b and c do not.
    sim.advance(Duration::from_secs(27));
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    sim.advance(Duration::from_secs(4));
    assert_eq!(
        sim.workers(0, WorkerState::Starting).len(),
        1,
        "a: the reload's worker only"
    );
    assert_eq!(
        sim.workers(1, WorkerState::Starting).len(),
        1,
        "b: one at a time"
    );
    assert!(
        sim.workers(2, WorkerState::Starting).is_empty(),
        "c has no max_memory"
    );
    assert!(sim.signals.is_empty());
    let b = sim.workers(1, WorkerState::Starting)[0];
    sim.send(Event::Ready(b));
    let recycles = |sim: &Sim, app| sim.app(app).snapshot(sim.now).memory_recycles;
    assert_eq!((recycles(&sim, 0), recycles(&sim, 1)), (0, 1));
    assert_eq!(sim.signals.len(), 1);
    assert_eq!(app_of(sim.signals[0].0), 1);
}

#[test]
fn a_reload_that_sets_the_first_max_memory_starts_sampling_and_one_that_removes_it_stops() {
    let mut sim = Sim::new(vec![(settings("web", 1), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    assert!(!sim.timers.contains_key(&TimerKey::MemorySample));
    let mut limited = settings("web", 1);
    limited.memory.max_bytes = Some(1_000_000);
    sim.config = Ok(vec![limited]);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    sim.ready_all(0);
    assert!(sim.timers.contains_key(&TimerKey::MemorySample));
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.memory_samples, 3);
    sim.config = Ok(vec![settings("web", 1)]);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(2),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    sim.ready_all(0);
    assert!(!sim.timers.contains_key(&TimerKey::MemorySample));
}

#[test]
fn service_state_is_ready_once_every_app_is_up_then_reloading_and_stopping() {
    let mut sim = three_apps();
    assert_eq!(sim.service_states(), vec![ServiceState::Starting]);
    assert_eq!(
        sim.service.last().unwrap().1,
        "starting; db: 0/1 ready, web: waiting for db, jobs: 0/1 ready"
    );
    sim.ready_all(0);
    sim.ready_all(2);
    assert_eq!(
        sim.core.service_state(),
        ServiceState::Starting,
        "web not up"
    );
    sim.ready_all(1);
    assert_eq!(
        sim.service.last().unwrap(),
        &(
            ServiceState::Ready,
            "db: 1/1 ready, web: 2/2 ready, jobs: 1/1 ready".to_string()
        )
    );
    // A crash after the first start does not make it "starting" again: only the line changes.
    let db = sim.workers(0, WorkerState::Ready)[0];
    sim.exit(db, ExitStatus::Signal(9));
    assert_eq!(
        sim.service.last().unwrap(),
        &(
            ServiceState::Ready,
            "db: 0/1 ready, web: 2/2 ready, jobs: 1/1 ready".to_string()
        )
    );
    sim.advance(std::time::Duration::from_secs(1));
    sim.ready_all(0);

    // Reload of every app: reloading from the request to the last app's end, then ready.
    let emitted = sim.service.len();
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    assert_eq!(sim.service[emitted].0, ServiceState::Reloading);
    assert_eq!(
        sim.service.last().unwrap().1,
        "reloading db (generation 2); db: 1/1 ready, web: 2/2 ready, jobs: 1/1 ready"
    );
    for app in 0..3 {
        for _ in 0..2 {
            sim.ready_all(app);
        }
        sim.exit_all_draining(app);
    }
    assert!(!sim.reports(1).is_empty());
    let states: Vec<ServiceState> = sim.service[emitted..].iter().map(|(s, _)| *s).collect();
    let ended = states
        .iter()
        .position(|s| *s == ServiceState::Ready)
        .unwrap();
    assert!(
        states[..ended]
            .iter()
            .all(|s| *s == ServiceState::Reloading)
    );
    assert_eq!(sim.core.service_state(), ServiceState::Ready);

    // A reload that fails (bad config) ends too: ready again.
    let emitted = sim.service.len();
    sim.config = Err("bad".into());
    sim.send(Event::Reload {
        app: Some(2),
        reply: Some(2),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    assert_eq!(sim.reports(2)[0].outcome, ReloadOutcome::Aborted);
    assert_eq!(
        sim.service[emitted..]
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        vec![ServiceState::Reloading, ServiceState::Ready],
        "the config read ends it"
    );

    sim.send(Event::Stop { reply: None });
    assert_eq!(
        sim.service.last().unwrap(),
        &(
            ServiceState::Stopping,
            "stopping: 4 worker(s) left".to_string()
        )
    );
    for app in (0..3).rev() {
        sim.exit_all_draining(app);
    }
    assert!(matches!(sim.exit, Some(Ok(()))));
    assert_eq!(sim.service.last().unwrap().1, "stopping: 0 worker(s) left");
}

#[test]
fn an_upgrade_waits_for_a_reload_and_hands_over_workers_slots_and_backoffs() {
    let mut sim = three_apps_ready();
    assert_eq!(sim.core.not_upgradable(), None, "settled");
    sim.send(Event::Reload {
        app: Some(1),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let why = sim.core.not_upgradable().expect("a reload is under way");
    assert!(why.contains("web"), "{why}");
    for _ in 0..4 {
        sim.ready_all(1);
        sim.exit_all_draining(1);
    }
    assert_eq!(sim.core.not_upgradable(), None, "the reload ended");
    // A crash: the slot backs off; that is carried over as the delay left.
    let crashed = sim.workers(2, WorkerState::Ready)[0];
    sim.exit(crashed, ExitStatus::Signal(9));
    sim.advance(Duration::from_millis(30));
    let before: Vec<(WorkerId, Option<i32>, u64)> = (0..3)
        .flat_map(|a| sim.app(a).snapshot(sim.now).workers)
        .map(|(w, _)| (w.id, w.pid, w.generation))
        .collect();
    let exported = sim.core.export(sim.now);
    assert_eq!(exported[1].generation, 2);
    let backoff = exported[2].slots[0].restart_in.expect("backing off");
    // Through JSON, as the memfd carries it.
    let text = serde_json::to_string(&exported).unwrap();
    let adopted: Vec<adopt::AdoptedApp> = serde_json::from_str(&text).unwrap();

    let mut next = Sim::new(vec![]);
    next.now = sim.now + Duration::from_secs(5); // a fresh clock: only durations carry over
    let (core, actions) = Core::adopt(
        vec![
            (settings("db", 1), vec![]),
            (settings("web", 2), vec![0]),
            (settings("jobs", 1), vec![]),
        ],
        adopted,
        next.now,
    );
    next.core = core;
    let restart = TimerKey::Restart { app: 2, slot: 0 };
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Arm { timer, at } if *timer == restart && *at == next.now + backoff)),
        "{actions:?}"
    );
    let after: Vec<(WorkerId, Option<i32>, u64)> = (0..3)
        .flat_map(|a| next.app(a).snapshot(next.now).workers)
        .map(|(w, _)| (w.id, w.pid, w.generation))
        .collect();
    assert_eq!(after, before, "the same workers, pids and generations");
    assert!(next.spawned.is_empty(), "nothing restarted");
    assert_eq!(next.core.phase(), Phase::Running);
    let snapshot = next.app(2).snapshot(next.now);
    assert_eq!(snapshot.restarts_total, 1);
    assert_eq!(snapshot.waiting.len(), 1, "slot 0 still backs off");
    assert_eq!(next.app(1).snapshot(next.now).generation, 2);
    // The adopted core goes on: a crash is restarted with a new id.
    let web = next.workers(1, WorkerState::Ready)[0];
    next.timers.insert(restart, next.now + backoff);
    next.exit(web, ExitStatus::Signal(9));
    next.advance(Duration::from_secs(2));
    assert_eq!(
        next.spawned.len(),
        2,
        "web's slot and jobs' slot started again"
    );
    assert!(
        next.spawned
            .iter()
            .all(|(_, id)| !before.iter().any(|b| b.0 == *id))
    );
}

#[test]
fn starting_and_draining_workers_are_handed_over_with_their_deadlines() {
    let mut sim = three_apps_ready();
    // web's reload ends with its old workers still draining.
    sim.send(Event::Reload {
        app: Some(1),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    for _ in 0..4 {
        sim.ready_all(1);
    }
    assert_eq!(sim.workers(1, WorkerState::Draining).len(), 2);
    // jobs' worker crashed and its replacement is starting.
    let crashed = sim.workers(2, WorkerState::Ready)[0];
    sim.exit(crashed, ExitStatus::Code(1));
    sim.advance(Duration::from_secs(2));
    let starting = sim.workers(2, WorkerState::Starting);
    assert_eq!(starting.len(), 1);
    assert_eq!(
        sim.core.not_upgradable(),
        None,
        "{:?}",
        sim.core.not_upgradable()
    );
    let draining: Vec<(WorkerId, Instant)> = sim
        .workers(1, WorkerState::Draining)
        .into_iter()
        .map(|id| (id, sim.timers[&TimerKey::Kill(id)]))
        .collect();
    let ready_at = sim.timers[&TimerKey::Ready(starting[0])];
    let exported = sim.core.export(sim.now);

    let shift = Duration::from_secs(100);
    let now = sim.now + shift;
    let (core, actions) = Core::adopt(
        vec![
            (settings("db", 1), vec![]),
            (settings("web", 2), vec![0]),
            (settings("jobs", 1), vec![]),
        ],
        serde_json::from_str(&serde_json::to_string(&exported).unwrap()).unwrap(),
        now,
    );
    let armed = |key: TimerKey| {
        actions.iter().find_map(|a| match a {
            Action::Arm { timer, at } if *timer == key => Some(*at),
            _ => None,
        })
    };
    for (id, at) in &draining {
        assert_eq!(armed(TimerKey::Kill(*id)), Some(*at + shift));
        assert_eq!(core.worker(*id).unwrap().state, WorkerState::Draining);
    }
    assert_eq!(armed(TimerKey::Ready(starting[0])), Some(ready_at + shift));
    assert_eq!(
        core.worker(starting[0]).unwrap().state,
        WorkerState::Starting
    );
}

#[test]
fn a_configuration_error_at_the_first_start_fails_it_at_once() {
    let mut sim = Sim::new(vec![(settings("web", 2), vec![])]);
    sim.send(Event::Start);
    let ids = sim.workers(0, WorkerState::Starting);
    assert_eq!(ids.len(), 2);
    sim.exit(ids[0], ExitStatus::Code(EX_CONFIG));
    let reason = match &sim.exit {
        Some(Err(reason)) => reason.clone(),
        other => panic!("the start must fail: {other:?}"),
    };
    assert!(
        reason.contains("web.0")
            && reason.contains("EX_CONFIG")
            && reason.contains("not restarted"),
        "{reason}"
    );
    assert_eq!(
        sim.signalled(ids[1]),
        vec![Signal::KillGroup],
        "its sibling is killed"
    );
    assert!(
        !sim.timers
            .keys()
            .any(|k| matches!(k, TimerKey::Restart { .. })),
        "no restart is scheduled"
    );
}

#[test]
fn a_configuration_error_after_the_start_is_a_crash_and_aborts_a_reload_at_once() {
    let mut sim = Sim::new(vec![(settings("web", 2), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    // A crash restart that exits 78: backoff, as any crash.
    let ready = sim.workers(0, WorkerState::Ready);
    sim.exit(ready[0], ExitStatus::Code(EX_CONFIG));
    assert!(sim.exit.is_none());
    assert!(
        sim.timers
            .keys()
            .any(|k| matches!(k, TimerKey::Restart { slot: 0, .. }))
    );
    sim.advance(Duration::from_millis(150));
    sim.ready_all(0);
    // A reload into a configuration error is aborted at once, not at its ready timeout.
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let new = sim.workers(0, WorkerState::Starting);
    assert_eq!(new.len(), 1);
    sim.exit(new[0], ExitStatus::Code(EX_CONFIG));
    let report = &sim.reports(1)[0];
    assert_eq!(report.outcome, report::ReloadOutcome::Aborted);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("exit code 78 (EX_CONFIG"),
        "{report:?}"
    );
    assert!(sim.exit.is_none());
}

#[test]
fn a_fast_stop_after_a_graceful_stop_stopped_some_apps_still_ends() {
    // Found by the simulation (seed 380): the second SIGINT once the first had stopped an app.
    let mut sim = three_apps_ready();
    sim.send(Event::Stop { reply: Some(1) });
    // Reverse order: jobs first; it is gone.
    sim.exit_all_draining(2);
    assert_eq!(sim.phase(2), Phase::Stopped);
    assert!(sim.exit.is_none());
    sim.send(Event::FastStop);
    for app in 0..3 {
        for id in sim.workers(app, WorkerState::Draining) {
            sim.exit(id, ExitStatus::Signal(9));
        }
    }
    assert_eq!(sim.exit, Some(Ok(())), "the supervisor exits");
    assert!(matches!(sim.replies[&1][..], [Answer::Stopped]));
}
