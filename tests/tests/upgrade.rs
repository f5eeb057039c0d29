//! In-place upgrade of the supervisor, end to end: under load, ten upgrades alternating between
//! two copies of the binary keep the supervisor's pid and every worker's pid and fail no request;
//! the upgraded supervisor still restarts a crashed worker and reloads; a preflight that fails
//! leaves everything serving and `upgrade` exits 1 with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, bin, wait_for, workers};

const DEMO2: &str = "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 2\nkill_timeout = \"5s\"\nready_timeout = \"5s\"\n";

/// A second copy of the supervisor binary, in the test's temp dir.
fn second_copy(s: &Supervisor) -> PathBuf {
    let copy = s.dir.path().join("supervisor-copy");
    std::fs::copy(bin("supervisor"), &copy).unwrap();
    copy
}

fn pids(s: &Supervisor) -> Vec<i32> {
    s.ready_workers().unwrap().iter().map(|w| w.pid).collect()
}

/// The descriptors of `pid` without close-on-exec (`O_CLOEXEC` in `/proc/PID/fdinfo`).
fn inheritable_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let info = std::fs::read_to_string(e.path()).ok()?;
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())?;
            (flags & libc::O_CLOEXEC as u32 == 0).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    fds
}

fn upgrade_to(s: &Supervisor, binary: &Path) -> (bool, String) {
    s.cli_text(&["upgrade", "--binary", &binary.display().to_string()])
        .unwrap()
}

#[test]
fn ten_upgrades_under_load_keep_every_pid_and_fail_no_request() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let copy = second_copy(&s);
    let original = bin("supervisor");
    let workers_before = pids(&s);
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        3,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    load.wait_answered().unwrap();
    for round in 0..10u64 {
        let binary = if round % 2 == 0 { &copy } else { &original };
        let (ok, text) = upgrade_to(&s, binary);
        assert!(ok, "upgrade {round}: {text}\n{}", s.log_text());
        assert!(text.contains("upgraded in place"), "{text}");
        let v = s.status().unwrap();
        assert_eq!(v["supervisor"]["pid"], s.pid(), "same pid: {v}");
        assert_eq!(v["upgrades"]["count"], round + 1, "{v}");
        assert!(v["upgrades"]["last_at_unix"].as_f64().is_some(), "{v}");
        assert_eq!(v["binary"], binary.display().to_string(), "{v}");
        assert!(!v["build"].as_str().unwrap_or("").is_empty(), "{v}");
        assert_eq!(pids(&s), workers_before, "no worker restarted");
    }
    // SIGUSR2 does the same, to the binary it runs now (the original).
    s.signal(libc::SIGUSR2);
    wait_for(Duration::from_secs(20), "the SIGUSR2 upgrade", || {
        let v = s.status().ok()?;
        (v["upgrades"]["count"] == 11).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(
        report.failed, 0,
        "failed requests during upgrades: {:?}",
        report.errors
    );
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(pids(&s), workers_before, "no worker restarted");
    assert!(e2e::alive(s.pid()));

    // The upgraded supervisor still watches its adopted workers: a SIGKILLed one is restarted.
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(workers_before[0], libc::SIGKILL) };
    let v = wait_for(
        Duration::from_secs(20),
        "the killed worker's restart",
        || {
            let v = s.status().ok()?;
            let ws = workers(&v);
            (ws.len() == 2
                && ws.iter().all(|w| w.state == "ready")
                && !ws.iter().any(|w| w.pid == workers_before[0]))
            .then_some(v)
        },
    )
    .unwrap();
    let restarted = workers(&v).into_iter().find(|w| w.slot == 0).unwrap();
    assert_eq!(restarted.restarts, 1, "{v}");
    // ... and reloads.
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok && text.contains("generation 2: ok"), "{text}");
    let after = s.ready_workers().unwrap();
    assert!(after.iter().all(|w| w.generation == 2), "{after:?}");
    let log = s.log_text();
    assert_eq!(log.matches("supervisor upgraded in place").count(), 11);
    assert!(log.contains("worker adopted"), "{log}");
}

#[test]
fn a_failed_preflight_leaves_everything_serving() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let workers_before = pids(&s);
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    let script = s.dir.path().join("broken-supervisor");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, text) = upgrade_to(&s, &script);
    assert!(!ok, "upgrade must exit 1: {text}");
    assert!(
        text.contains("upgrade failed") && text.contains("broken build: cannot start"),
        "{text}"
    );
    assert!(text.contains("exit status: 1"), "{text}");

    let not_executable = s.dir.path().join("not-executable");
    std::fs::copy(bin("supervisor"), &not_executable).unwrap();
    std::fs::set_permissions(
        &not_executable,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (ok, text) = upgrade_to(&s, &not_executable);
    assert!(!ok, "upgrade must exit 1: {text}");
    assert!(text.contains("Permission denied"), "{text}");

    let missing = s.dir.path().join("no-such-binary");
    let (ok, text) = upgrade_to(&s, &missing);
    assert!(!ok && text.contains("No such file"), "{text}");

    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let v = s.status().unwrap();
    assert_eq!(v["supervisor"]["pid"], s.pid());
    assert_eq!(v["upgrades"]["count"], 0, "{v}");
    assert!(
        v["upgrades"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-binary")),
        "{v}"
    );
    assert_eq!(pids(&s), workers_before);
    for pid in workers_before.iter().map(|p| p.to_string()) {
        assert!(report.by_pid.contains_key(&pid), "{:?}", report.by_pid);
    }
    // The new binary reads the file again: it must still hold the apps that run (a reload
    // applies an edited file first).
    let copy = second_copy(&s);
    s.rewrite(&format!(
        "{DEMO2}\n[[app]]\nname = \"extra\"\ncommand = \"{{demo}}\"\ninstances = 1\n"
    ))
    .unwrap();
    let (ok, text) = upgrade_to(&s, &copy);
    assert!(
        !ok && text.contains("changed since the last reload")
            && text.contains("`supervisor reload` applies them"),
        "{text}"
    );
    s.rewrite(DEMO2).unwrap();
    assert_eq!(pids(&s), workers_before);
    // It still upgrades once a good binary is given.
    let (ok, text) = upgrade_to(&s, &copy);
    assert!(ok, "{text}");
    assert_eq!(pids(&s), workers_before);
}

#[test]
fn an_upgrade_waits_for_a_running_job_command_and_a_fresh_scheduler_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs");
    let body = format!(
        "[[app]]\nname = \"web\"\ncommand = \"{{demo}}\"\ninstances = 1\nenv = {{ DEMO_JOBS = \"off\" }}\n\n\
         [[job]]\nname = \"slow\"\nschedule = \"*/2 * * * * *\"\n\
         command = [\"sh\", \"-c\", \"echo start >> {f}; sleep 1.2; echo end >> {f}\"]\n",
        f = file.display()
    );
    let s = Supervisor::start(&body, 1).unwrap();
    let worker = pids(&s);
    let count = |what: &str| {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == what)
            .count()
    };
    // Ask while a run is under way: the upgrade waits for it to end.
    wait_for(Duration::from_secs(10), "a run under way", || {
        (count("start") > count("end")).then_some(())
    })
    .unwrap();
    let copy = second_copy(&s);
    let (ok, text) = upgrade_to(&s, &copy);
    assert!(ok, "{text}\n{}", s.log_text());
    let log = s.log_text();
    assert!(
        log.contains("upgrade waits: a [[job]] command is running"),
        "{log}"
    );
    // In the log: the wait, then the command's exit, then the exec.
    let waits = log
        .find("upgrade waits: a [[job]] command is running")
        .unwrap();
    let exec = log.find("upgrading in place: exec").unwrap();
    let exited = log[waits..].find("exited: exit code 0").map(|p| waits + p);
    assert!(
        exited.is_some_and(|e| e < exec),
        "the run ended before the exec: {log}"
    );
    let runs = count("end");
    assert_eq!(pids(&s), worker);
    // The new binary's scheduler runs the next ticks.
    wait_for(Duration::from_secs(10), "a tick after the upgrade", || {
        (count("end") > runs).then_some(())
    })
    .unwrap();
}

#[test]
fn a_draining_worker_is_handed_over_and_killed_at_its_deadline_by_the_new_binary() {
    let body = "[[app]]\nname = \"stubborn\"\ncommand = \"/bin/sh\"\n\
                args = [\"-c\", \"trap '' TERM; while true; do sleep 0.1; done\"]\n\
                readiness = \"exec\"\ninstances = 1\nkill_timeout = \"3s\"\n";
    let s = Supervisor::start(body, 1).unwrap();
    let old = pids(&s)[0];
    let reloaded = std::time::Instant::now();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    // The old worker ignores SIGTERM: it drains until its kill timeout.
    let copy = second_copy(&s);
    let (ok, text) = upgrade_to(&s, &copy);
    assert!(ok, "{text}\n{}", s.log_text());
    assert!(
        reloaded.elapsed() < Duration::from_millis(2500),
        "the upgrade did not wait for the drain"
    );
    let v = s.status().unwrap();
    let ws = workers(&v);
    assert!(
        ws.iter().any(|w| w.pid == old && w.state == "draining"),
        "the draining worker was handed over: {v}"
    );
    wait_for(Duration::from_secs(10), "the kill at the deadline", || {
        let v = s.status().ok()?;
        (!workers(&v).iter().any(|w| w.pid == old)).then_some(())
    })
    .unwrap();
    let took = reloaded.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "killed {took:?} after the reload (kill_timeout 3s)"
    );
    assert!(!e2e::alive(old));
    assert!(
        s.log_text()
            .contains("after SIGTERM (kill_timeout): SIGKILL")
    );
}

#[test]
fn an_upgrade_is_refused_while_this_host_holds_a_singleton_lease() {
    let body = "[[app]]\nname = \"once\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 60\"]\n\
                readiness = \"exec\"\ninstances = 1\nscope = \"cluster\"\nlease_ttl = \"2s\"\n\n\
                [cron]\nstate_dir = \"cron-state\"\n";
    let s = Supervisor::start(body, 1).unwrap();
    let worker = pids(&s);
    let copy = second_copy(&s);
    let (ok, text) = upgrade_to(&s, &copy);
    assert!(!ok, "{text}");
    assert!(
        text.contains("cluster singleton whose lease this host holds"),
        "{text}"
    );
    assert_eq!(pids(&s), worker);
    assert_eq!(s.status().unwrap()["upgrades"]["count"], 0);
}

#[test]
fn a_failed_execve_keeps_the_old_binary_running() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let workers_before = pids(&s);
    // Passes the preflight, then is gone when the supervisor execs it.
    let vanishing = s.dir.path().join("vanishing-supervisor");
    std::fs::write(
        &vanishing,
        "#!/bin/sh\n[ \"$1\" = upgrade-preflight ] && rm -f \"$0\" && echo fine && exit 0\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &vanishing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let inheritable = inheritable_fds(s.pid());
    let (ok, text) = upgrade_to(&s, &vanishing);
    assert!(!ok, "{text}");
    assert!(
        text.contains("execve") && text.contains("No such file"),
        "{text}"
    );
    let v = s.status().unwrap();
    assert_eq!(v["supervisor"]["pid"], s.pid());
    assert_eq!(v["upgrades"]["count"], 0);
    assert_eq!(pids(&s), workers_before);
    // Still serving, and every descriptor handed over is close-on-exec again.
    assert_eq!(e2e::get(s.addr().unwrap(), "/").unwrap().0, 200);
    assert_eq!(inheritable_fds(s.pid()), inheritable);
    let (ok, text) = upgrade_to(&s, &second_copy(&s));
    assert!(ok, "{text}");
    assert_eq!(pids(&s), workers_before);
}

/// The previous released supervisor (`tests/previous-release`), built by `scripts/test` into
/// `target/previous-release/bin/`; `None` (with the reason printed) when the clone does not hold
/// its commit.
fn previous_release() -> Option<PathBuf> {
    let dir = e2e::workspace_root().join("target/previous-release");
    let binary = dir.join("bin/supervisor");
    if binary.exists() {
        return Some(binary);
    }
    if let Ok(why) = std::fs::read_to_string(dir.join("unavailable")) {
        eprintln!(
            "SKIPPED: no previous release to upgrade from: {}",
            why.trim()
        );
        return None;
    }
    panic!(
        "{} is missing: run the tests with scripts/test, which builds the previous release (tests/previous-release) there",
        binary.display()
    );
}

#[test]
fn the_previous_release_upgrades_to_this_build_in_place_under_load() {
    let Some(old) = previous_release() else {
        return;
    };
    let body = format!(
        "{DEMO2}\n[[app]]\nname = \"queue\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 1000\"]\nreadiness = \"exec\"\ninstances = 1\nafter = [\"demo\"]\n"
    );
    let s = Supervisor::spawn_binary(&old, None, &body, &[]).unwrap();
    s.wait_ready(3, Duration::from_secs(20)).unwrap();
    // History for the handover to carry: a reload, a crash restart, a scale.
    let (ok, text) = s.cli_text(&["reload", "demo"]).unwrap();
    assert!(ok, "{text}");
    let queue = |v: &serde_json::Value| {
        workers(v)
            .into_iter()
            .filter(|w| w.name.starts_with("queue"))
            .collect::<Vec<_>>()
    };
    let first = queue(&s.status().unwrap())[0].pid;
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    s.wait_ready(3, Duration::from_secs(20)).unwrap();
    let (ok, text) = s.cli_text(&["scale", "queue", "2"]).unwrap();
    assert!(ok, "{text}");
    let before = s.wait_ready(4, Duration::from_secs(20)).unwrap();
    let old_build = before["build"].as_str().unwrap().to_string();
    let pids_before: Vec<i32> = workers(&before).iter().map(|w| w.pid).collect();
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        3,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    load.wait_answered().unwrap();

    let (ok, text) = upgrade_to(&s, &bin("supervisor"));
    assert!(ok, "{text}\n{}", s.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);

    let v = s.status().unwrap();
    assert_eq!(v["supervisor"]["pid"], s.pid(), "same pid: {v}");
    assert_eq!(v["upgrades"]["count"], 1, "{v}");
    assert!(
        v["upgrades"]["last_from"]
            .as_str()
            .unwrap()
            .contains(&old_build),
        "the old build is named: {v}"
    );
    assert_ne!(v["build"].as_str().unwrap(), old_build, "{v}");
    let pids_after: Vec<i32> = workers(&v).iter().map(|w| w.pid).collect();
    assert_eq!(pids_after, pids_before, "every worker kept");
    // What the old binary knew came across: the generation, the last reload, the restart, the
    // scale (kept until the next reload).
    let demo = &v["apps"][0];
    assert_eq!(demo["generation"], 2, "{v}");
    assert_eq!(demo["last_reload"]["outcome"], "ok", "{v}");
    assert_eq!(demo["last_reload"]["generation"], 2, "{v}");
    let q = queue(&v);
    assert_eq!(q.len(), 2, "{v}");
    assert_eq!(q[0].restarts, 1, "{v}");
    // The new binary runs them: it reloads, and the reload takes `instances` from the file again.
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("demo: reload to generation 3: ok"), "{text}");
    assert!(
        text.contains("instances back to 1 from the config file (`scale` had set 2)"),
        "{text}"
    );
    s.wait_ready(3, Duration::from_secs(20)).unwrap();
}
