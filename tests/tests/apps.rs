//! Several apps in one supervisor: two HTTP apps on their own ports (one `after` the other) and
//! one app with no listener. They start in order, show grouped in `status`, reload one at a time
//! without touching the others, scale up and down under load with no failed request, restart,
//! and stop in reverse order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, WorkerRow, wait_for, workers};

/// api (2 workers), web after api (2 workers), queue (1 worker, no listener, ready when executed).
const THREE_APPS: &str = "\
[[app]]
name = \"api\"
command = \"{demo}\"
instances = 2
kill_timeout = \"5s\"
[[app.listen]]
name = \"http\"
address = \"127.0.0.1:0\"

[[app]]
name = \"web\"
after = [\"api\"]
command = \"{demo}\"
instances = 2
kill_timeout = \"5s\"
[[app.listen]]
name = \"http\"
address = \"127.0.0.1:0\"

[[app]]
name = \"queue\"
command = \"/bin/sh\"
args = [\"-c\", \"trap 'exit 0' TERM; while :; do sleep 0.1; done\"]
readiness = \"exec\"
instances = 1
";

/// Pids by app name, of the ready workers.
fn pids(s: &Supervisor) -> BTreeMap<String, Vec<i32>> {
    let mut by_app: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for w in s.ready_workers().unwrap() {
        let app = w.name.split('.').next().unwrap_or_default().to_string();
        by_app.entry(app).or_default().push(w.pid);
    }
    by_app
}

fn app_addr(s: &Supervisor, app: usize) -> SocketAddr {
    let v = s.status().unwrap();
    v["apps"][app]["listeners"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn cli_ok(s: &Supervisor, args: &[&str]) -> String {
    let (ok, text) = s.cli_text(args).unwrap();
    assert!(ok, "{args:?}: {text}");
    text
}

/// Waits until app `name` has exactly `n` workers, all ready (none starting or draining).
fn wait_app_workers(s: &Supervisor, name: &str, n: usize) -> Vec<WorkerRow> {
    wait_for(
        Duration::from_secs(20),
        &format!("{n} ready {name} workers"),
        || {
            let ws: Vec<WorkerRow> = workers(&s.status().ok()?)
                .into_iter()
                .filter(|w| w.name.starts_with(&format!("{name}.")))
                .collect();
            (ws.len() == n && ws.iter().all(|w| w.state == "ready")).then_some(ws)
        },
    )
    .unwrap()
}

#[test]
fn three_apps_start_in_order_reload_one_at_a_time_scale_under_load_and_stop_in_reverse() {
    let mut s = Supervisor::start(THREE_APPS, 5).unwrap();
    let log = s.log_text();
    let ready_api = log.find("worker ready worker=api.").unwrap();
    let start_web = log.find("worker started worker=web.").unwrap();
    assert!(
        ready_api < start_web,
        "web starts after api is ready:\n{log}"
    );

    // status: grouped by app, in file order.
    let v = s.status().unwrap();
    let names: Vec<&str> = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "web", "queue"]);
    assert!(v["apps"][2]["listeners"].as_array().unwrap().is_empty());
    let text = cli_ok(&s, &["status"]);
    for app in ["app api", "app web", "app queue"] {
        assert!(text.contains(app), "{text}");
    }
    let only = s.cli(&["status", "web", "--json"]).unwrap();
    let only: serde_json::Value = serde_json::from_slice(&only.stdout).unwrap();
    assert_eq!(only["apps"].as_array().unwrap().len(), 1);
    let unknown = s.cli(&["status", "nope"]).unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no app is named \"nope\" (apps: api, web, queue)")
    );

    // Each app's workers know their app.
    let web_pid = pids(&s)["web"][0];
    let environ = std::fs::read(format!("/proc/{web_pid}/environ")).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == b"SUPERVISOR_APP=web")
    );

    // Reload one app: the others keep their pids.
    let before = pids(&s);
    let text = cli_ok(&s, &["reload", "web"]);
    assert!(text.contains("web: reload to generation 2: ok"), "{text}");
    let after = pids(&s);
    assert_eq!(after["api"], before["api"]);
    assert_eq!(after["queue"], before["queue"]);
    assert!(after["web"].iter().all(|p| !before["web"].contains(p)));

    // Reload every app: one app at a time, one report each.
    let text = cli_ok(&s, &["reload"]);
    for app in ["api: reload", "web: reload", "queue: reload"] {
        assert!(text.contains(app), "{text}");
    }

    // Scale web 2 -> 4 -> 1 under load: no request fails.
    let load = Load::start(
        app_addr(&s, 1),
        "/",
        3,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    wait_for(Duration::from_secs(10), "first answers", || {
        (load.ok_so_far() > 0).then_some(())
    })
    .unwrap();
    let text = cli_ok(&s, &["scale", "web", "4"]);
    assert!(text.contains("web: scaled from 2 to 4"), "{text}");
    assert!(text.contains("until the next reload"), "{text}");
    wait_app_workers(&s, "web", 4);
    std::thread::sleep(Duration::from_millis(300));
    cli_ok(&s, &["scale", "web", "1"]);
    wait_app_workers(&s, "web", 1);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 50, "{report:?}");

    // A reload takes `instances` from the file again, and says so.
    let text = cli_ok(&s, &["reload", "web"]);
    assert!(
        text.contains("note: instances back to 2 from the config file"),
        "{text}"
    );
    wait_app_workers(&s, "web", 2);

    // restart: new workers at once.
    let api_before = pids(&s)["api"].clone();
    let text = cli_ok(&s, &["restart", "api"]);
    assert!(text.contains("api: restarting 2 worker(s)"), "{text}");
    let api_after = wait_app_workers(&s, "api", 2);
    assert!(api_after.iter().all(|w| !api_before.contains(&w.pid)));

    // stop: reverse order, each app gone before the previous one is stopped.
    cli_ok(&s, &["stop"]);
    assert_eq!(s.wait_exit(Duration::from_secs(30)).unwrap(), Some(0));
    let log = s.log_text();
    let stopped = |app: &str| {
        log.find(&format!("stopped app={app}"))
            .unwrap_or_else(|| panic!("{app} not stopped:\n{log}"))
    };
    assert!(
        stopped("queue") < stopped("web") && stopped("web") < stopped("api"),
        "{log}"
    );
}

#[test]
fn a_first_start_where_an_app_cannot_be_executed_exits_non_zero_and_leaves_nothing() {
    // Executable, but not a program (no `#!` line, no known format): execve fails (ENOEXEC) for
    // every worker. (A script whose `#!` interpreter is missing no longer gets this far: `check`
    // and `start` refuse it before anything starts, see tests/tests/bounds.rs.)
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.sh");
    std::fs::write(&script, [0x7fu8, b'E', b'L', b'F', 0, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let body = format!(
        "[[app]]\nname = \"api\"\ncommand = \"{{demo}}\"\ninstances = 2\n\
         [[app.listen]]\naddress = \"127.0.0.1:0\"\n\
         [[app]]\nname = \"broken\"\ncommand = \"{}\"\ninstances = 2\n",
        script.display()
    );
    let mut s = Supervisor::spawn(&body).unwrap();
    let code = s.wait_exit(Duration::from_secs(20)).unwrap();
    let log = s.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("app broken: no worker could be started: broken.0: cannot execute")
            && log.contains("Exec format error"),
        "{log}"
    );
    // The other app's workers were started, and are gone with the supervisor.
    let started: Vec<i32> = log
        .lines()
        .filter(|l| l.contains("worker started worker=api."))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(started.len(), 2, "{log}");
    wait_for(Duration::from_secs(5), "the api workers to be gone", || {
        started.iter().all(|p| !e2e::alive(*p)).then_some(())
    })
    .unwrap();
    assert!(
        !s.dir.path().join("control.sock").exists(),
        "control socket removed"
    );
}
