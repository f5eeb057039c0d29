//! Rolling reload, end to end: zero failed requests through many reloads under load, aborts that
//! keep the old workers serving, and the awkward cases (crash, SIGTERM, stubborn worker, bursts).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, group_members, wait_for, workers};

const DEMO2: &str = "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 2\nkill_timeout = \"5s\"\nready_timeout = \"5s\"\n";
/// Workers that take half a second to become ready, so a reload is slow enough to interfere with.
const SLOW3: &str = "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 0.5; exec {demo}\"]\ninstances = 3\nkill_timeout = \"5s\"\n";

fn reload(s: &Supervisor) -> (bool, String) {
    s.cli_text(&["reload"]).unwrap()
}

#[test]
fn ten_reloads_under_load_fail_no_request() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let addr = s.addr().unwrap();
    let load = Load::start(addr, "/", 3, &[ConnMode::KeepAlive, ConnMode::PerRequest]);
    std::thread::sleep(Duration::from_millis(200));
    e2e::reload_rounds(&s, 10, 2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(
        report.failed, 0,
        "failed requests during reloads: {:?}",
        report.errors
    );
    assert!(report.ok > 200, "{report:?}");
    assert!(
        report.by_pid.len() >= 10,
        "answers from many generations: {:?}",
        report.by_pid
    );
}

fn aborted_reload_keeps_old_workers(new_worker: &str, reason: &str) {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let before = s.ready_workers().unwrap();
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    s.rewrite(new_worker).unwrap();
    let (ok, text) = reload(&s);
    assert!(!ok, "reload must exit non-zero: {text}");
    assert!(text.contains("aborted") && text.contains(reason), "{text}");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let after = s.ready_workers().unwrap();
    assert_eq!(
        after.iter().map(|w| w.pid).collect::<Vec<_>>(),
        before.iter().map(|w| w.pid).collect::<Vec<_>>()
    );
    let v = s.status().unwrap();
    assert_eq!(v["apps"][0]["last_reload"]["outcome"], "aborted");
    assert_eq!(workers(&v).len(), 2, "the failed new worker is gone: {v}");
    for pid in before.iter().map(|w| w.pid.to_string()) {
        assert!(
            report.by_pid.contains_key(&pid),
            "old worker {pid} kept serving: {:?}",
            report.by_pid
        );
    }
}

#[test]
fn new_worker_never_ready_aborts_the_reload() {
    aborted_reload_keeps_old_workers(
        "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 60\"]\ninstances = 2\nready_timeout = \"1s\"\n",
        "was not ready within 1s",
    );
}

#[test]
fn new_worker_exiting_at_start_aborts_the_reload() {
    aborted_reload_keeps_old_workers(
        "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo broken >&2; exit 2\"]\ninstances = 2\n",
        "exited before it was ready: exit code 2",
    );
}

#[test]
fn invalid_config_aborts_the_reload_before_anything_changes() {
    aborted_reload_keeps_old_workers(
        "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = \"many\"\n",
        "app[0].instances",
    );
}

#[test]
fn crash_of_an_old_worker_during_a_reload_is_restarted_and_the_reload_completes() {
    let s = Supervisor::start(SLOW3, 3).unwrap();
    let before = s.ready_workers().unwrap();
    let out = s.cli(&["reload", "--no-wait"]).unwrap();
    assert!(out.status.success());
    // Slot 2 is replaced last: kill its old worker while slot 0 is still being replaced.
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(before[2].pid, libc::SIGKILL) };
    let v = wait_for(Duration::from_secs(20), "the reload to finish", || {
        let v = s.status().ok()?;
        (v["apps"][0]["reload_in_progress"].is_null()
            && v["apps"][0]["last_reload"]["generation"] == 2)
            .then_some(v)
    })
    .unwrap();
    assert_eq!(v["apps"][0]["last_reload"]["outcome"], "ok", "{v}");
    let after = s.wait_ready(3, Duration::from_secs(10)).unwrap();
    let ws = workers(&after);
    assert!(ws.iter().all(|w| w.generation == 2), "{ws:?}");
    assert!(ws.iter().all(|w| before.iter().all(|b| b.pid != w.pid)));
}

#[test]
fn sigterm_during_a_reload_stops_everything() {
    let mut s = Supervisor::start(SLOW3, 3).unwrap();
    let out = s.cli(&["reload", "--no-wait"]).unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(200));
    let pgids: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    assert_eq!(pgids.len(), 4, "3 old + 1 new starting");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(15)).unwrap(), Some(0));
    wait_for(Duration::from_secs(5), "no worker left", || {
        pgids
            .iter()
            .all(|&g| group_members(g).is_empty())
            .then_some(())
    })
    .unwrap();
    assert!(
        s.log_text()
            .contains("reload aborted: the supervisor is stopping"),
        "{}",
        s.log_text()
    );
}

#[test]
fn old_worker_that_ignores_sigterm_is_killed_after_the_kill_timeout() {
    let stubborn = "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; while true; do sleep 1; done\"]\n\
                    instances = 1\nreadiness = \"exec\"\nkill_timeout = \"1s\"\n";
    let s = Supervisor::start(stubborn, 1).unwrap();
    let old = s.ready_workers().unwrap()[0].pid;
    let (ok, text) = reload(&s);
    assert!(ok, "{text}");
    wait_for(
        Duration::from_secs(5),
        "the stubborn worker's group to be killed",
        || group_members(old).is_empty().then_some(()),
    )
    .unwrap();
    assert!(
        s.log_text().contains("SIGKILL to its process group"),
        "{}",
        s.log_text()
    );
}

#[test]
fn reloads_requested_during_a_reload_are_coalesced_into_one() {
    let s = Supervisor::start(SLOW3, 3).unwrap();
    for _ in 0..3 {
        s.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = wait_for(Duration::from_secs(30), "the reloads to settle", || {
        let v = s.status().ok()?;
        let settled = v["apps"][0]["reload_in_progress"].is_null()
            && v["apps"][0]["last_reload"]["generation"] == 3;
        settled.then_some(v)
    })
    .unwrap();
    assert_eq!(
        v["apps"][0]["generation"], 3,
        "one reload plus one coalesced: {v}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        s.status().unwrap()["apps"][0]["generation"],
        3,
        "no third reload"
    );
    assert!(s.log_text().contains("queued to run once after it"));
}

/// Samples `status` every 30 ms until the reload to `generation` is over; returns, per sample,
/// (ready workers, starting workers).
fn sample_reload(s: &Supervisor, generation: u64) -> Vec<(usize, usize)> {
    let mut samples = Vec::new();
    wait_for(Duration::from_secs(30), "the reload to finish", || {
        let v = s.status().ok()?;
        let ws = workers(&v);
        samples.push((
            ws.iter().filter(|w| w.state == "ready").count(),
            ws.iter().filter(|w| w.state == "starting").count(),
        ));
        (v["apps"][0]["reload_in_progress"].is_null()
            && v["apps"][0]["last_reload"]["generation"] == generation)
            .then_some(())
    })
    .unwrap();
    samples
}

#[test]
fn never_fewer_ready_workers_than_instances_during_a_reload() {
    let s = Supervisor::start(SLOW3, 3).unwrap();
    assert!(s.cli(&["reload", "--no-wait"]).unwrap().status.success());
    let samples = sample_reload(&s, 2);
    assert!(samples.len() > 5, "sampled the reload: {samples:?}");
    assert!(
        samples.iter().all(|(ready, _)| *ready >= 3),
        "max_unavailable = 0: {samples:?}"
    );
    assert!(
        samples.iter().all(|(_, starting)| *starting <= 1),
        "max_surge = 1: {samples:?}"
    );
}

#[test]
fn max_surge_starts_several_new_workers_at_once() {
    let s = Supervisor::start(&format!("{SLOW3}[app.reload]\nmax_surge = 3\n"), 3).unwrap();
    assert!(s.cli(&["reload", "--no-wait"]).unwrap().status.success());
    let samples = sample_reload(&s, 2);
    assert!(
        samples.iter().any(|(_, starting)| *starting == 3),
        "three new workers starting together: {samples:?}"
    );
    assert!(samples.iter().all(|(ready, _)| *ready >= 3), "{samples:?}");
}

#[test]
fn reload_picks_up_a_changed_instance_count_both_ways() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    s.rewrite(&DEMO2.replace("instances = 2", "instances = 3"))
        .unwrap();
    let (ok, text) = reload(&s);
    assert!(ok, "{text}");
    let ws = s.wait_ready(3, Duration::from_secs(10)).unwrap();
    assert!(workers(&ws).iter().all(|w| w.generation == 2), "{ws}");
    s.rewrite(&DEMO2.replace("instances = 2", "instances = 1"))
        .unwrap();
    let (ok, text) = reload(&s);
    assert!(ok, "{text}");
    let v = s.wait_ready(1, Duration::from_secs(10)).unwrap();
    let ws = workers(&v);
    assert_eq!((ws[0].slot, ws[0].generation), (0, 3), "{v}");
    let (code, _) = e2e::get(s.addr().unwrap(), "/").unwrap();
    assert_eq!(code, 200);
}
