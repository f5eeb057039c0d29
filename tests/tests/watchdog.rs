//! Hung workers, replaced through systemd's watchdog protocol with no change to the app: a
//! Python worker (the standard-library example, its heartbeat sent from its accept loop) whose
//! heartbeat stops is replaced within the watchdog plus a second, with 0 failed requests under
//! load; a Node app whose handler spins forever (`while (true) {}`) on one request stops the
//! preload's heartbeat from its event loop and is replaced while the other worker serves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, get, wait_for};

/// The standard-library worker, with its heartbeat silenced after `SILENT_AFTER` seconds in the
/// first worker to get there (`MARKER` records when, as Unix seconds): a bug in the heartbeat,
/// the worker itself keeps serving and drains as usual.
const SILENCED: &str = r#"
import os, sys, time
sys.path.insert(0, os.environ["EXAMPLE"])
import stdlib_worker as w

started = time.monotonic()
chosen = None  # this worker stops its heartbeat: undecided, True, False
real = w.notify

def notify(state):
    global chosen
    if state.startswith("WATCHDOG="):
        if chosen is None and time.monotonic() - started > float(os.environ["SILENT_AFTER"]):
            try:
                fd = os.open(os.environ["MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(time.time()).encode())
                os.close(fd)
                chosen = True
            except FileExistsError:
                chosen = False
        if chosen:
            return
    real(state)

w.notify = notify
w.main()
"#;

fn pids(s: &Supervisor) -> BTreeSet<i32> {
    s.ready_workers()
        .unwrap_or_default()
        .iter()
        .map(|w| w.pid)
        .collect()
}

/// The instant (Unix seconds) of the first log line containing `what`.
fn logged_at(log: &str, what: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let stamp = line.split_whitespace().next()?;
    let t = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

#[test]
fn a_python_worker_whose_heartbeat_stops_is_replaced_within_the_watchdog_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silenced.py");
    std::fs::write(&script, SILENCED).unwrap();
    let marker = dir.path().join("silenced-at");
    let example = e2e::workspace_root().join("examples/python");
    let body = format!(
        "[[app]]\nname = \"py\"\ncommand = \"python3\"\nargs = [\"{}\"]\ninstances = 2\n\
         readiness = \"notify\"\nready_timeout = \"10s\"\nkill_timeout = \"5s\"\nwatchdog = \"2s\"\n\
         env = {{ PYTHONUNBUFFERED = \"1\", EXAMPLE = \"{}\", MARKER = \"{}\", SILENT_AFTER = \"3\" }}\n",
        script.display(),
        example.display(),
        marker.display()
    );
    let s = Supervisor::start(&body, 2).unwrap();
    let first = pids(&s);
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    let replaced = wait_for(
        Duration::from_secs(20),
        "the silent worker replaced",
        || {
            let now = pids(&s);
            (std::fs::metadata(&marker).is_ok_and(|m| m.len() > 0)
                && now.len() == 2
                && now.difference(&first).count() == 1
                && s.log_text().contains("replaced (watchdog)"))
            .then_some(now)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let log = s.log_text();
    let replaced = replaced.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 50, "{report:?}");
    let silenced: f64 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let hung = logged_at(&log, "hung: sent no WATCHDOG=1").unwrap_or_else(|| panic!("{log}"));
    let ready = logged_at(&log, "replaced (watchdog)").unwrap();
    // The last ping came at most a quarter period before the first silenced one.
    let detected = hung - silenced;
    assert!(
        detected <= 2.0 + 1.0,
        "hung detected {detected:.2} s after the heartbeat stopped (watchdog 2 s)\n{log}"
    );
    eprintln!(
        "watchdog 2 s: hung {:.0} ms after the first missed ping, replacement ready {:.0} ms later; \
         {} requests, 0 failed; pids {first:?} -> {replaced:?}",
        detected * 1000.0,
        (ready - hung) * 1000.0,
        report.ok
    );
    let status = s.cli_text(&["status"]).unwrap().1;
    assert!(
        status.contains("replaced: 1 hung (watchdog missed 1)"),
        "{status}"
    );
}

/// Express-free Node app: `/spin` never returns (a runaway handler), `/` answers with its pid.
const SPINS: &str = r#"
const http = require("http");
http
  .createServer((req, res) => {
    if (req.url === "/spin") while (true) {}
    res.end(`ok pid=${process.pid}\n`);
  })
  .listen(process.env.PORT);
"#;

#[test]
fn a_node_app_whose_handler_spins_forever_is_replaced_with_no_change_to_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("spins.js");
    std::fs::write(&script, SPINS).unwrap();
    let body = format!(
        "[[app]]\nname = \"web\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 2\n\
         ready_timeout = \"10s\"\nkill_timeout = \"2s\"\nwatchdog = \"1s\"\n",
        script.display()
    );
    let s = Supervisor::start(&body, 2).unwrap();
    let addr = s.addr().unwrap();
    // The heartbeat reports the event loop's lag, shown by status.
    let status = wait_for(
        Duration::from_secs(5),
        "the event loop's lag in status",
        || {
            let (_, text) = s.cli_text(&["status"]).ok()?;
            text.contains("event loop lag").then_some(text)
        },
    )
    .unwrap();
    let first = pids(&s);
    // One request spins one worker's event loop forever (its client gives up).
    let spin = std::thread::spawn(move || get(addr, "/spin"));
    let replaced = wait_for(
        Duration::from_secs(20),
        "the spinning worker replaced",
        || {
            let now = pids(&s);
            (now.len() == 2 && now.difference(&first).count() == 1).then_some(now)
        },
    );
    let log = s.log_text();
    let replaced = replaced.unwrap_or_else(|e| panic!("{e}\n{log}"));
    // Meanwhile and after, the app answers.
    for _ in 0..20 {
        let (code, body) = get(addr, "/").unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert!(log.contains("hung: sent no WATCHDOG=1 for 1s"), "{log}");
    let gone: Vec<i32> = first.difference(&replaced).copied().collect();
    wait_for(
        Duration::from_secs(10),
        "the spinning worker killed",
        || (!gone.iter().any(|p| e2e::alive(*p))).then_some(()),
    )
    .unwrap();
    assert!(
        spin.join().unwrap().is_err(),
        "the spinning request never got an answer"
    );
    eprintln!("node while(true): {first:?} -> {replaced:?}\n{status}");
}

#[test]
fn workers_older_than_max_age_are_replaced_one_at_a_time_with_no_failed_request() {
    let s = Supervisor::start(
        "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 2\nkill_timeout = \"5s\"\n\
         max_age = \"2s\"\nmax_age_jitter = \"1s\"\n",
        2,
    )
    .unwrap();
    let first = pids(&s);
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    let replaced = wait_for(
        Duration::from_secs(20),
        "both workers replaced for age",
        || {
            let now = pids(&s);
            (now.len() == 2 && now.is_disjoint(&first)).then_some(now)
        },
    );
    let report = load.stop();
    let log = s.log_text();
    let replaced = replaced.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(log.contains("past its max_age"), "{log}");
    // Never two at once: each replacement was started after the previous one was ready.
    let starts = log.matches(": replacing it").count();
    let dones = log.matches("replaced (max_age)").count();
    assert!(starts >= 2 && dones >= 2, "{log}");
    eprintln!(
        "max_age 2s: {first:?} -> {replaced:?}, {} requests, 0 failed",
        report.ok
    );
}
