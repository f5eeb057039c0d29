//! The whole file applied by a reload of every app (apps added, removed, moved onto new
//! sockets; a file that cannot be applied refused as a whole), and apps stopped, started and
//! reset by hand, driven with plain instants and no processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use super::report::{AppChange, ReloadMode, ReloadOutcome};
use super::test_support::Sim;
use super::*;

fn settings(name: &str, instances: usize, sockets: u64) -> AppSettings {
    let mut s = super::test_support::settings(name, instances, 1, 0);
    s.sockets = SocketSet(sockets);
    s
}

fn read(name: &str, after: &[&str], s: AppSettings, changed: &[&str]) -> AppRead {
    AppRead {
        name: name.into(),
        after: after.iter().map(|a| a.to_string()).collect(),
        settings: Ok(s),
        changed: changed.iter().map(|c| c.to_string()).collect(),
    }
}

/// api (2 workers, sockets 1), web (1 worker, sockets 2), both ready.
fn api_and_web() -> Sim {
    let mut sim = Sim::new(vec![
        (settings("api", 2, 1), vec![]),
        (settings("web", 1, 2), vec![]),
    ]);
    sim.send(Event::Start);
    sim.ready_all(0);
    sim.ready_all(1);
    sim
}

fn live(sim: &Sim, app: AppId) -> usize {
    sim.core
        .app(app)
        .map_or(0, |a| a.snapshot(sim.now).workers.len())
}

fn exit_draining(sim: &mut Sim, app: AppId) {
    for id in sim.workers(app, WorkerState::Draining) {
        sim.exit(id, ExitStatus::Code(0));
    }
}

#[test]
fn a_reload_adds_removes_and_moves_apps_and_says_so() {
    let mut sim = api_and_web();
    let web_workers = sim.workers(1, WorkerState::Ready);
    // The file: api moved to new sockets (3), web gone, queue new (after api).
    sim.file = Some(Ok(FileRead {
        apps: vec![
            read("api", &[], settings("api", 2, 3), &["listen"]),
            read("queue", &["api"], settings("queue", 1, 4), &[]),
        ],
        refused: vec![],
    }));
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    // web drains at once, its sockets closed before its workers are gone.
    assert!(
        web_workers
            .iter()
            .all(|w| sim.signalled(*w) == [Signal::Term])
    );
    assert!(sim.closed.contains(&SocketSet(2)), "{:?}", sim.closed);
    assert_eq!(sim.applied, [None], "the whole file is the running config");
    // queue is added with the next id, and starts at once (api was up).
    let queue: AppId = 2;
    assert_eq!(sim.app(queue).name(), "queue");
    assert_eq!(sim.workers(queue, WorkerState::Starting).len(), 1);
    // api rolls onto its new sockets; the old ones stay open until it is done.
    let spawned_api: Vec<_> = sim.spawned.iter().filter(|(a, _)| *a == 0).collect();
    assert_eq!(
        spawned_api.len(),
        3,
        "2 at the start, 1 new so far (surge 1)"
    );
    assert!(!sim.closed.contains(&SocketSet(1)));
    assert!(!sim.replies.contains_key(&1), "waits for api and queue");
    sim.ready_all(queue);
    sim.ready_all(0);
    sim.ready_all(0);
    assert!(
        sim.closed.contains(&SocketSet(1)),
        "api's old sockets closed once rolled"
    );
    assert!(!sim.closed.contains(&SocketSet(3)) && !sim.closed.contains(&SocketSet(4)));
    let reports = sim.reports(1);
    let by: Vec<(&str, Option<AppChange>, ReloadOutcome)> = reports
        .iter()
        .map(|r| (r.app.as_str(), r.change, r.outcome))
        .collect();
    assert_eq!(
        by,
        [
            ("api", Some(AppChange::Changed), ReloadOutcome::Ok),
            ("queue", Some(AppChange::Added), ReloadOutcome::Ok),
            ("web", Some(AppChange::Removed), ReloadOutcome::Ok),
        ],
        "the running config's order, removed apps last"
    );
    assert_eq!(reports[0].changed, ["listen"]);
    assert_eq!(reports[1].slots.len(), 1);
    assert!(
        reports[2]
            .note
            .as_deref()
            .unwrap()
            .contains("1 worker(s) drain")
    );
    // web is forgotten once its workers are gone; its name is no more.
    assert!(
        sim.core.app_named("web").is_none() && sim.core.app(1).is_some(),
        "draining, no longer known by name"
    );
    exit_draining(&mut sim, 1);
    assert!(sim.core.app(1).is_none(), "forgotten");
    assert!(sim.core.app_named("web").is_none());
    let names: Vec<&str> = sim.core.apps().map(|v| v.app.name()).collect();
    assert_eq!(names, ["api", "queue"]);
    // Worker ids of the new app say it is app 2.
    let queue_worker = sim.workers(queue, WorkerState::Ready)[0];
    assert_eq!(app_of(queue_worker), queue);
}

#[test]
fn an_added_app_waits_for_the_apps_it_is_after_and_the_answer_waits_for_it() {
    let mut sim = api_and_web();
    sim.file = Some(Ok(FileRead {
        apps: vec![
            read("api", &[], settings("api", 2, 1), &[]),
            read("web", &[], settings("web", 1, 2), &[]),
            read("db", &[], settings("db", 1, 5), &[]),
            read("cache", &["db"], settings("cache", 1, 6), &[]),
        ],
        refused: vec![],
    }));
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let (db, cache) = (2, 3);
    assert_eq!(sim.app(cache).phase(), Phase::Waiting, "after db");
    assert_eq!(sim.workers(db, WorkerState::Starting).len(), 1);
    for _ in 0..3 {
        sim.ready_all(0);
        sim.ready_all(1);
        exit_draining(&mut sim, 0);
        exit_draining(&mut sim, 1);
    }
    assert!(!sim.replies.contains_key(&1), "db and cache are not up yet");
    sim.ready_all(db);
    assert_eq!(
        sim.workers(cache, WorkerState::Starting).len(),
        1,
        "now it starts"
    );
    sim.ready_all(cache);
    let reports = sim.reports(1);
    let added: Vec<&str> = reports
        .iter()
        .filter(|r| r.change == Some(AppChange::Added))
        .map(|r| r.app.as_str())
        .collect();
    assert_eq!(added, ["db", "cache"]);
    assert!(reports.iter().all(|r| r.outcome == ReloadOutcome::Ok));
}

#[test]
fn a_file_that_cannot_be_applied_is_refused_whole_and_its_new_sockets_closed() {
    let mut sim = api_and_web();
    sim.file = Some(Ok(FileRead {
        apps: vec![
            read("api", &[], settings("api", 2, 3), &["listen"]),
            AppRead {
                settings: Err("app[1].listen[0].address: cannot listen on 127.0.0.1:80: Address already in use".into()),
                ..read("web", &[], settings("web", 1, 2), &["listen"])
            },
            read("new", &[], settings("new", 1, 7), &[]),
        ],
        refused: vec!["supervisor.metrics changed: that needs a restart".into()],
    }));
    let spawned = sim.spawned.len();
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let reports = sim.reports(1);
    assert_eq!(reports.len(), 2, "api and web: nothing added");
    for r in &reports {
        assert_eq!(r.outcome, ReloadOutcome::Aborted);
        let why = r.reason.as_deref().unwrap();
        assert!(
            why.contains("cannot be applied while the supervisor runs, nothing changed"),
            "{why}"
        );
        assert!(
            why.contains("supervisor.metrics changed") && why.contains("Address already in use"),
            "{why}"
        );
    }
    assert_eq!(sim.spawned.len(), spawned, "nothing started");
    assert!(sim.signals.is_empty(), "nothing stopped");
    assert!(sim.core.app_named("new").is_none());
    let mut closed = sim.closed.clone();
    closed.sort();
    assert_eq!(
        closed,
        [SocketSet(3), SocketSet(7)],
        "bound for the read, closed again"
    );
    assert!(sim.applied.is_empty());
    assert_eq!(sim.core.service_state(), ServiceState::Ready);
}

#[test]
fn an_app_stopped_by_hand_refuses_at_once_stays_stopped_through_reloads_and_starts_again() {
    let mut sim = api_and_web();
    let api_pids: Vec<WorkerId> = sim.workers(0, WorkerState::Ready);
    let web = sim.workers(1, WorkerState::Ready);
    sim.send(Event::StopApp {
        app: 1,
        reply: Some(1),
    });
    assert_eq!(sim.closed, [SocketSet(2)], "closed as the drain begins");
    assert_eq!(sim.signalled(web[0]), [Signal::Term]);
    assert!(
        !sim.replies.contains_key(&1),
        "answered when its workers are gone"
    );
    exit_draining(&mut sim, 1);
    match &sim.replies[&1][..] {
        [
            Answer::Switched(Switched::Stopped {
                app,
                workers,
                already,
            }),
        ] => {
            assert_eq!((app.as_str(), *workers, *already), ("web", 1, false))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.app(1).phase(), Phase::Stopped);
    assert!(sim.core.status_line().contains("web: stopped"));
    // A reload of every app: web takes the new settings and stays stopped.
    let mut next = settings("web", 2, 2);
    std::sync::Arc::make_mut(&mut next.spec).args = vec!["v2".into()];
    sim.config = Ok(vec![settings("api", 2, 1), next]);
    sim.send(Event::Reload {
        app: None,
        reply: Some(2),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    for _ in 0..2 {
        sim.ready_all(0);
    }
    let web_report = sim.reports(2).into_iter().find(|r| r.app == "web").unwrap();
    assert!(web_report.note.unwrap().contains("stopped"));
    assert_eq!(live(&sim, 1), 0);
    assert_eq!(sim.app(1).phase(), Phase::Stopped);
    // api's workers were never touched by web's stop (only by the reload).
    assert!(api_pids.iter().all(|w| sim.signalled(*w).len() <= 1));
    // Started again on sockets bound again: answered once both slots are ready.
    sim.send(Event::StartApp {
        app: 1,
        sockets: SocketSet(9),
        reply: Some(3),
    });
    let starting = sim.workers(1, WorkerState::Starting);
    assert_eq!(starting.len(), 2, "the file's new instances");
    assert!(!sim.replies.contains_key(&3));
    sim.ready_all(1);
    match &sim.replies[&3][..] {
        [
            Answer::Switched(Switched::Started {
                app, pids, already, ..
            }),
        ] => {
            assert_eq!((app.as_str(), pids.len(), *already), ("web", 2, false))
        }
        other => panic!("{other:?}"),
    }
    assert!(!sim.closed.contains(&SocketSet(9)));
    // Starting it again: it runs already; the sockets it was given are not taken up.
    sim.send(Event::StartApp {
        app: 1,
        sockets: SocketSet(9),
        reply: Some(4),
    });
    assert!(matches!(
        &sim.replies[&4][..],
        [Answer::Switched(Switched::Started { already: true, .. })]
    ));
}

#[test]
fn a_start_by_hand_that_fails_stops_the_app_not_the_supervisor() {
    let mut sim = api_and_web();
    sim.send(Event::StopApp {
        app: 1,
        reply: None,
    });
    exit_draining(&mut sim, 1);
    sim.fail_app = Some(1);
    sim.send(Event::StartApp {
        app: 1,
        sockets: SocketSet(9),
        reply: Some(1),
    });
    match &sim.replies[&1][..] {
        [Answer::Refused(why)] => {
            assert!(why.contains("web: no worker could be started"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.exit, None, "the supervisor runs on");
    assert_eq!(sim.app(1).phase(), Phase::Stopped);
    assert!(sim.closed.contains(&SocketSet(9)));
    // A worker that starts and crashes: the client is told, the slot restarts with backoff.
    sim.fail_app = None;
    sim.send(Event::StartApp {
        app: 1,
        sockets: SocketSet(10),
        reply: Some(2),
    });
    let w = sim.workers(1, WorkerState::Starting)[0];
    sim.exit(w, ExitStatus::Code(2));
    match &sim.replies[&2][..] {
        [Answer::Refused(why)] => {
            assert!(
                why.contains("web.0: exit code 2 while starting; restarting it in 100 ms"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    sim.advance(Duration::from_millis(100));
    assert_eq!(sim.workers(1, WorkerState::Starting).len(), 1);
}

#[test]
fn reset_clears_the_restart_counts_status_shows_but_not_the_metrics() {
    let mut sim = api_and_web();
    for _ in 0..5 {
        let w = sim.workers(1, WorkerState::Ready);
        let w = w
            .first()
            .copied()
            .unwrap_or_else(|| sim.workers(1, WorkerState::Starting)[0]);
        sim.exit(w, ExitStatus::Signal(9));
        sim.advance(Duration::from_secs(3));
        sim.ready_all(1);
    }
    let restarts = |sim: &Sim| sim.app(1).snapshot(sim.now).workers[0].1;
    assert_eq!(restarts(&sim), 5);
    sim.send(Event::Reset {
        app: None,
        reply: Some(1),
    });
    assert_eq!(restarts(&sim), 0);
    assert_eq!(sim.app(1).snapshot(sim.now).restarts_total, 5, "a counter");
    assert!(matches!(
        &sim.replies[&1][..],
        [Answer::Switched(Switched::Reset { apps })] if apps == &["api", "web"]
    ));
}

#[test]
fn a_supervisor_stop_skips_apps_stopped_by_hand_and_exits() {
    let mut sim = api_and_web();
    sim.send(Event::StopApp {
        app: 0,
        reply: None,
    });
    exit_draining(&mut sim, 0);
    sim.send(Event::Stop { reply: Some(1) });
    exit_draining(&mut sim, 1);
    assert_eq!(sim.exit, Some(Ok(())));
    assert!(matches!(&sim.replies[&1][..], [Answer::Stopped]));
}

#[test]
fn app_ids_and_stopped_apps_survive_an_upgrade() {
    let mut sim = api_and_web();
    // web removed, queue added: ids 0 and 2.
    sim.file = Some(Ok(FileRead {
        apps: vec![
            read("api", &[], settings("api", 2, 1), &[]),
            read("queue", &[], settings("queue", 1, 4), &[]),
        ],
        refused: vec![],
    }));
    sim.send(Event::Reload {
        app: None,
        reply: None,
        wait: true,
        mode: ReloadMode::Rolling,
    });
    for _ in 0..3 {
        sim.ready_all(0);
        sim.ready_all(2);
        exit_draining(&mut sim, 0);
    }
    exit_draining(&mut sim, 1);
    sim.send(Event::StopApp {
        app: 2,
        reply: None,
    });
    exit_draining(&mut sim, 2);
    assert_eq!(sim.core.not_upgradable(), None, "a stopped app is settled");
    let text = serde_json::to_string(&sim.core.export(sim.now)).unwrap();
    let adopted: Vec<adopt::AdoptedApp> = serde_json::from_str(&text).unwrap();
    let api_workers = sim.workers(0, WorkerState::Ready);
    let (core, _) = Core::adopt(
        vec![
            (settings("api", 2, 11), vec![]),
            (settings("queue", 1, 12), vec![0]),
        ],
        adopted,
        sim.now,
    );
    assert_eq!(core.app_named("queue").unwrap().id(), 2, "its id kept");
    assert_eq!(core.app(2).unwrap().phase(), Phase::Stopped, "and stopped");
    let kept: Vec<WorkerId> = core
        .app(0)
        .unwrap()
        .snapshot(sim.now)
        .workers
        .iter()
        .map(|(w, _)| w.id)
        .collect();
    assert_eq!(kept, api_workers);
    // An app added after the upgrade gets a fresh id.
    let mut next = Sim::new(vec![]);
    next.core = core;
    next.file = Some(Ok(FileRead {
        apps: vec![
            read("api", &[], settings("api", 2, 11), &[]),
            read("queue", &["api"], settings("queue", 1, 12), &[]),
            read("mail", &[], settings("mail", 1, 13), &[]),
        ],
        refused: vec![],
    }));
    next.send(Event::Reload {
        app: None,
        reply: None,
        wait: true,
        mode: ReloadMode::Rolling,
    });
    assert_eq!(next.core.app_named("mail").unwrap().id(), 3);
}

#[test]
fn scale_to_zero_keeps_the_sockets_and_says_how_to_refuse_connections() {
    let mut sim = api_and_web();
    sim.send(Event::Scale {
        app: 1,
        instances: 0,
        reply: Some(1),
    });
    match &sim.replies[&1][..] {
        [
            Answer::Scaled {
                to: 0,
                note: Some(note),
                ..
            },
        ] => {
            assert!(note.contains("its sockets stay bound"), "{note}");
            assert!(
                note.contains("`supervisor stop web` refuses them"),
                "{note}"
            );
        }
        other => panic!("{other:?}"),
    }
    exit_draining(&mut sim, 1);
    assert!(
        sim.closed.is_empty(),
        "queued connections are served when it scales up"
    );
}

#[test]
fn an_app_stopped_by_hand_or_still_waiting_is_removed_at_once() {
    let mut sim = Sim::new(vec![
        (settings("api", 1, 1), vec![]),
        (settings("web", 1, 2), vec![0]),
        (settings("admin", 1, 3), vec![]),
    ]);
    sim.send(Event::Start);
    sim.ready_all(2);
    assert_eq!(sim.app(1).phase(), Phase::Waiting, "api is not up");
    sim.send(Event::StopApp {
        app: 2,
        reply: None,
    });
    exit_draining(&mut sim, 2);
    sim.ready_all(0);
    // The file keeps api only: web (running since api is up) drains, admin (stopped) goes.
    sim.file = Some(Ok(FileRead {
        apps: vec![read("api", &[], settings("api", 1, 1), &[])],
        refused: vec![],
    }));
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    assert!(
        sim.core.app(2).is_none(),
        "admin, stopped, is forgotten at once"
    );
    exit_draining(&mut sim, 1);
    sim.ready_all(0);
    assert!(sim.core.app(1).is_none(), "web is forgotten once drained");
    let removed: Vec<String> = sim
        .reports(1)
        .into_iter()
        .filter(|r| r.change == Some(AppChange::Removed))
        .map(|r| r.app)
        .collect();
    assert_eq!(removed.len(), 2, "{removed:?}");

    // An app still waiting for the apps it is `after`: nothing to drain.
    let mut sim = Sim::new(vec![
        (settings("api", 1, 1), vec![]),
        (settings("web", 1, 2), vec![0]),
    ]);
    sim.send(Event::Start);
    sim.send(Event::StopApp {
        app: 1,
        reply: Some(1),
    });
    assert_eq!(sim.app(1).phase(), Phase::Stopped);
    assert!(matches!(
        &sim.replies[&1][..],
        [Answer::Switched(Switched::Stopped { workers: 0, .. })]
    ));
}

#[test]
fn a_move_aborted_half_way_keeps_both_sockets_until_a_reload_completes_it() {
    let mut sim = Sim::new(vec![(settings("web", 2, 1), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    let moved = || FileRead {
        apps: vec![read("web", &[], settings("web", 2, 2), &["listen"])],
        refused: vec![],
    };
    sim.file = Some(Ok(moved()));
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    // Slot 0 moves; slot 1's new worker dies: aborted, slot 0 stays on the new sockets.
    sim.ready_all(0);
    let new1 = sim.workers(0, WorkerState::Starting)[0];
    sim.exit(new1, ExitStatus::Code(1));
    assert_eq!(sim.reports(1)[0].outcome, ReloadOutcome::Aborted);
    assert!(
        sim.closed.is_empty(),
        "old and new sockets both serve: {:?}",
        sim.closed
    );
    let why = sim.core.not_upgradable().expect("two sets of sockets");
    assert!(
        why.contains("serves on its old and its new sockets"),
        "{why}"
    );
    // The next reload of the same file completes the move: the old sockets close.
    sim.send(Event::Reload {
        app: None,
        reply: Some(2),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    for _ in 0..2 {
        sim.ready_all(0);
    }
    assert_eq!(sim.reports(2)[0].outcome, ReloadOutcome::Ok);
    assert_eq!(sim.closed, [SocketSet(1)]);
    exit_draining(&mut sim, 0);
    assert_eq!(sim.core.not_upgradable(), None);

    // A move whose first new worker fails: the new sockets close, the old ones serve on.
    let mut sim = Sim::new(vec![(settings("web", 1, 1), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    sim.file = Some(Ok(moved()));
    sim.send(Event::Reload {
        app: None,
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let new = sim.workers(0, WorkerState::Starting)[0];
    sim.exit(new, ExitStatus::Code(1));
    assert_eq!(sim.closed, [SocketSet(2)]);
}
