use super::*;
use crate::control::protocol::{
    MemoryLimit, MemoryRecycleProgress, ProcessInfo, ReloadOutcome, WorkerInfo,
};
use crate::core::report::SlotReplacement;
use crate::core::{Phase, WorkerState};

fn app(max_memory: Option<MemoryLimit>, recycles: u64, failures: u64) -> AppStatus {
    AppStatus {
        name: "demo".into(),
        phase: Phase::Running,
        removed: false,
        waiting_for: vec![],
        generation: 1,
        instances: 1,
        listeners: vec![],
        balance: Default::default(),
        workers: vec![WorkerInfo {
            slot: 1,
            name: "demo.1".into(),
            generation: 1,
            state: WorkerState::Ready,
            restarts: 0,
            process: ProcessInfo {
                pid: 1234,
                uptime_secs: 60.0,
                cpu_percent: 0.0,
                rss_bytes: 612_300_000,
            },
            status_text: Some("serving".into()),
            over_max_memory_secs: Some(12.0),
            hung: false,
            event_loop_lag_ms: Some(3.0),
            connections: None,
        }],
        waiting: vec![],
        reload_in_progress: None,
        last_reload: None,
        max_memory,
        memory_recycles: recycles,
        memory_recycle_failures: failures,
        watchdog_replacements: 0,
        watchdog_timeouts: 0,
        age_replacements: 0,
        memory_recycling: None,
        singleton: None,
    }
}

#[test]
fn status_shows_where_a_cluster_singleton_runs() {
    let mut a = app(None, 0, 0);
    a.singleton = Some(SingletonStatus {
        role: crate::core::SingletonRole::Holder,
        holder: Some("vm1:4242".into()),
        token: Some(17),
        lease_ttl_secs: 10.0,
    });
    let text = render_app(&a);
    assert!(
        text.contains("scope cluster: holder vm1:4242 token 17 (this host), lease ttl 10s"),
        "{text}"
    );
    a.phase = Phase::Standby;
    a.workers.clear();
    a.singleton = Some(SingletonStatus {
        role: crate::core::SingletonRole::Standby,
        holder: Some("vm2:77".into()),
        token: Some(18),
        lease_ttl_secs: 10.0,
    });
    let text = render_app(&a);
    assert!(text.contains("app demo  generation 1  standby"), "{text}");
    assert!(
        text.contains("scope cluster: holder vm2:77 token 18 (standby)"),
        "{text}"
    );
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["singleton"]["role"], "standby");
    assert_eq!(json["singleton"]["holder"], "vm2:77");
    assert_eq!(json["singleton"]["token"], 18);
    assert_eq!(json["phase"], "standby");
}

#[test]
fn status_shows_the_balance_and_the_connections_of_each_worker() {
    let mut a = app(None, 0, 0);
    let text = render_app(&a);
    assert!(
        !text.contains("balance"),
        "no listener, nothing balanced: {text}"
    );
    assert!(!text.contains("conns"), "{text}");
    a.listeners = vec![crate::control::protocol::ListenerInfo {
        name: "http".into(),
        address: "127.0.0.1:3000".into(),
        fd: 3,
    }];
    a.balance = crate::config::Balance::Spread;
    let mut second = a.workers[0].clone();
    (second.slot, second.name, second.process.pid) = (2, "demo.2".into(), 1235);
    a.workers[0].connections = Some(97);
    second.connections = Some(103);
    a.workers.push(second);
    a.waiting.push(crate::control::protocol::SlotInfo {
        slot: 0,
        state: crate::core::WaitState::Backoff,
        restarts: 3,
        restart_in_secs: 1.0,
        last_exit: "exit 1".into(),
    });
    let text = render_app(&a);
    assert!(
        text.starts_with(
            "app demo  generation 1  running  balance spread
"
        ),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().find(|l| l.starts_with("slot")).unwrap();
    assert!(header.ends_with("mem       conns  status"), "{text}");
    let row = |pid: &str| *lines.iter().find(|l| l.contains(pid)).unwrap();
    assert!(
        row("1234").contains("612.3 MB  97     above max_memory"),
        "{text}"
    );
    assert!(
        row("1235").contains("612.3 MB  103    above max_memory"),
        "{text}"
    );
    assert!(
        row("backoff").contains("-         -      restart in"),
        "{text}"
    );
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["balance"], "spread");
    assert_eq!(json["workers"][1]["connections"], 103);
    // From a supervisor before either: shared, and no column.
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("balance");
    for w in old["workers"].as_array_mut().unwrap() {
        w.as_object_mut().unwrap().remove("connections");
    }
    let old: AppStatus = serde_json::from_value(old).unwrap();
    assert_eq!(old.balance, crate::config::Balance::Shared);
    assert!(!render_app(&old).contains("conns"));
}

#[test]
fn status_shows_max_memory_the_recycle_count_and_who_is_above() {
    let limit = MemoryLimit {
        bytes: 512_000_000,
        grace_secs: 30.0,
    };
    let mut a = app(Some(limit), 2, 1);
    a.memory_recycling = Some(MemoryRecycleProgress {
        reason: Default::default(),
        slot: 1,
        old_pid: 1234,
        new_pid: Some(1240),
        rss_bytes: 612_300_000,
        elapsed_secs: 0.25,
    });
    let text = render_app(&a);
    assert!(
        text.contains(
            "max_memory 512 MB (grace 30s): recycled 2 (memory), 1 replacement(s) failed\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("above max_memory for 12.0s; event loop lag 3 ms; serving"),
        "{text}"
    );
    assert!(
        text.contains(
            "replacing slot 1 for memory: pid 1234 (612.3 MB) -> pid 1240 starting for 250 ms"
        ),
        "{text}"
    );
    let none = render_app(&app(None, 0, 0));
    assert!(!none.contains("memory)"), "{none}");
    assert!(render_app(&app(None, 3, 0)).contains("recycled 3 (memory)\n"));
}

#[test]
fn reload_reports_each_slot_and_why_it_was_aborted() {
    let mut r = ReloadReport {
        app: "web".into(),
        generation: 3,
        outcome: ReloadOutcome::Aborted,
        reason: Some("slot 2: not ready within 5s".into()),
        note: Some("scale undone".into()),
        slots: vec![SlotReplacement {
            slot: 1,
            old_pid: Some(100),
            new_pid: 200,
            ready_secs: 0.5,
        }],
        duration_secs: 5.5,
        change: None,
        changed: vec![],
    };
    assert_eq!(
        render_reload(&r),
        "web: reload to generation 3: aborted in 5.5s\n\
         reason: slot 2: not ready within 5s\n\
         note: scale undone\n\
         slot  old pid  new pid  ready in\n\
         1     100      200      500 ms\n"
    );
    assert_eq!(
        render_reload_request(&r),
        "web: reload to generation 3 aborted: slot 2: not ready within 5s\n"
    );
    r.outcome = ReloadOutcome::Started;
    r.reason = None;
    assert_eq!(
        render_reload_request(&r),
        "web: reload to generation 3 started\n"
    );
}

#[test]
fn answers_to_restart_scale_and_stop() {
    let restarted = Response::Restarted {
        app: "web".into(),
        generation: 2,
        workers: 4,
    };
    assert_eq!(
        render_answer(&restarted).as_deref(),
        Some(
            "web: restarting 4 worker(s) in generation 2 (no readiness gating; `status web` shows them)\n"
        )
    );
    let scaled = Response::Scaled {
        app: "web".into(),
        from: 4,
        to: 2,
        note: Some("until the next reload".into()),
    };
    assert_eq!(
        render_answer(&scaled).as_deref(),
        Some("web: scaled from 4 to 2 worker(s)\nnote: until the next reload\n")
    );
    assert_eq!(
        render_answer(&Response::Stopped).as_deref(),
        Some("stopped\n")
    );
    assert_eq!(render_answer(&Response::Reload { reports: vec![] }), None);
}
