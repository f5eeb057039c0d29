//! Python workers, end to end, with the configs shipped in `examples/python/`: gunicorn, uvicorn
//! through `serve_uvicorn.py`, and a standard-library `http.server`. Each is reloaded 10 times
//! under keep-alive and new-connection-per-request load with no failed request; a Python
//! `requests.Session` (which never retries) sees no failure through reloads either; a reload into
//! an app that fails at import is aborted while the old workers keep serving.
//!
//! Needs the examples' virtualenv (`examples/python/.venv`); without it these tests fail and say
//! how to create it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{ConnMode, Load, Supervisor, alive, wait_for};

/// `examples/python` of this workspace.
fn examples() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The examples' virtualenv, or a failure that says how to create it.
fn venv() -> PathBuf {
    let venv = examples().join(".venv");
    for bin in ["python", "gunicorn"] {
        assert!(
            venv.join("bin").join(bin).exists(),
            "{} is missing: the Python tests need the examples' virtualenv. Run `scripts/test`, or:\n  \
             python3 -m venv examples/python/.venv && \
             examples/python/.venv/bin/pip install -r examples/python/requirements.txt",
            venv.join("bin").join(bin).display()
        );
    }
    venv
}

/// The shipped config `examples/python/<name>.toml`, made to run from a test's temp dir: a free
/// port, the control socket in the temp dir, an absolute command, and the example dir as the
/// workers' working directory (where the app modules and scripts are).
fn shipped_config(name: &str, extra_env: &str) -> String {
    let examples = examples();
    let venv = venv();
    let path = examples.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let mut replaced = 0;
    for line in text.lines() {
        let line = if line.starts_with("address = ") {
            replaced += 1;
            "address = \"127.0.0.1:0\"".to_string()
        } else if line.starts_with("control_socket = ") {
            replaced += 1;
            "control_socket = \"control.sock\"".to_string()
        } else if let Some(cmd) = line.strip_prefix("command = \".venv/") {
            replaced += 1;
            format!("command = \"{}/{cmd}", venv.display())
        } else if line.starts_with("env = { ") && !extra_env.is_empty() {
            line.replacen("env = { ", &format!("env = {{ {extra_env}, "), 1)
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
        if line == "[[app]]" {
            replaced += 1;
            out.push_str(&format!("cwd = \"{}\"\n", examples.display()));
        }
    }
    assert!(
        replaced >= 3 && out.contains("instances = 2") && out.contains("cwd = "),
        "{} no longer has the lines this test adapts:\n{out}",
        path.display()
    );
    out
}

fn reload(s: &Supervisor) -> (bool, String) {
    s.cli_text(&["reload"]).unwrap()
}

/// Waits until every worker in `pids` but the ready ones has exited, then checks the log: each
/// exited with code 0 (it drained within the kill timeout) and none needed SIGKILL.
fn old_workers_exited_cleanly(s: &Supervisor, pids: &HashSet<i32>) {
    let ready: HashSet<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    wait_for(Duration::from_secs(20), "the old workers to exit", || {
        pids.iter()
            .filter(|p| !ready.contains(p))
            .all(|&p| !alive(p))
            .then_some(())
    })
    .unwrap();
    let log = s.log_text();
    let exits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker exited"))
        .collect();
    assert!(
        exits.len() >= pids.len() - ready.len(),
        "every old worker's exit is logged: {exits:#?}"
    );
    for line in &exits {
        assert!(line.contains("exit code 0"), "unclean exit: {line}");
    }
    assert!(
        !log.contains("SIGKILL to its process group"),
        "a drain ran out of time:\n{log}"
    );
}

/// 10 reloads under 3 keep-alive and 3 new-connection-per-request clients: every reload exits 0,
/// every reload brings 2 new workers, no request fails, the old workers exit 0 by themselves.
fn ten_reloads_under_load(config: &str) {
    let s = Supervisor::start(config, 2).unwrap();
    let addr = s.addr().unwrap();
    let load = Load::start(addr, "/", 3, &[ConnMode::KeepAlive, ConnMode::PerRequest]);
    wait_for(Duration::from_secs(10), "the first responses", || {
        (load.ok_so_far() > 20).then_some(())
    })
    .unwrap();
    let seen = e2e::reload_rounds(&s, 10, 2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(
        report.failed,
        0,
        "failed requests during reloads: {:?}\n{}",
        report.errors,
        s.log_text()
    );
    assert!(report.ok > 200, "{report:?}");
    assert!(
        report.by_pid.len() >= 10,
        "answers from many generations: {:?}",
        report.by_pid
    );
    old_workers_exited_cleanly(&s, &seen);
}

#[test]
fn gunicorn_ten_reloads_under_load_fail_no_request() {
    ten_reloads_under_load(&shipped_config("gunicorn", ""));
}

#[test]
fn uvicorn_launcher_ten_reloads_under_load_fail_no_request() {
    ten_reloads_under_load(&shipped_config("uvicorn", ""));
}

#[test]
fn stdlib_worker_ten_reloads_under_load_fail_no_request() {
    ten_reloads_under_load(&shipped_config("stdlib", ""));
}

/// `client_requests.py` against `s` while it is reloaded 5 times; returns its `ok=N failed=M
/// pids=K` line.
fn requests_client_through_reloads(s: &Supervisor) -> String {
    let addr = s.addr().unwrap();
    let mut client = Command::new(venv().join("bin/python"))
        .arg(examples().join("client_requests.py"))
        .arg(addr.to_string())
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut reloads = Vec::new();
    for _ in 0..5 {
        reloads.push(reload(s));
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: SIGTERM to the client this test started; it finishes its request and reports.
    unsafe { libc::kill(client.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = client.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            panic!("client_requests.py did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    for (ok, text) in &reloads {
        assert!(ok, "reload: {text}\n{}", s.log_text());
    }
    let line = out.lines().last().unwrap_or_default().to_string();
    assert!(
        status.success() && line.contains(" failed=0 "),
        "requests.Session saw failures: {line}\n{err}\n{}",
        s.log_text()
    );
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(field("ok=") > 50, "too few requests: {line}");
    assert!(field("pids=") >= 3, "served by several generations: {line}");
    line
}

#[test]
fn requests_session_sees_no_failure_through_reloads() {
    for name in ["gunicorn", "uvicorn", "stdlib"] {
        let s = Supervisor::start(&shipped_config(name, ""), 2).unwrap();
        let line = requests_client_through_reloads(&s);
        eprintln!("{name}: {line}");
    }
}

/// gunicorn with `--preload` imports the app before it reports READY=1, and serve_uvicorn.py
/// imports it before serving: a new version that fails at import never becomes ready, so the
/// reload is aborted and the old workers go on serving.
#[test]
fn reload_into_an_app_failing_at_import_is_aborted() {
    for name in ["gunicorn", "uvicorn"] {
        let s = Supervisor::start(&shipped_config(name, ""), 2).unwrap();
        let before: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
        let load = Load::start(
            s.addr().unwrap(),
            "/",
            2,
            &[ConnMode::KeepAlive, ConnMode::PerRequest],
        );
        s.rewrite(&shipped_config(name, "APP_FAIL_AT_IMPORT = \"1\""))
            .unwrap();
        let (ok, text) = reload(&s);
        assert!(!ok, "{name}: the reload must fail: {text}");
        assert!(
            text.contains("aborted") && text.contains("exited before it was ready"),
            "{name}: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
        let report = load.stop();
        assert_eq!(report.failed, 0, "{name}: {:?}", report.errors);
        assert!(report.ok > 20, "{name}: {report:?}");
        let after: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
        assert_eq!(after, before, "{name}: the old workers keep serving");
    }
}
