//! Node apps, unchanged, under the supervisor (the built-in preload): the seeds' Express app
//! (ESM, hard-coded port 3000), a CommonJS app reading PORT and an app with its own SIGTERM
//! handler each go through 10 reloads under keep-alive load and 10 under new-connection load with
//! 0 failed requests; Node's own fetch as a keep-alive client sees none either; and the bad inputs
//! (not Node, never listening, a port the supervisor does not hold, NODE_OPTIONS) are reported.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{
    ConnMode, Load, Supervisor, free_loopback_with_port, node_example, reloads_under_load,
    run_with_deadline,
};

/// A config running `node <script>` as 2 workers, on `listen` (`None`: 127.0.0.1:0).
fn node_config(script: &str, listen: Option<SocketAddr>, extra: &str) -> String {
    let dir = node_example();
    let listen = listen
        .map(|a| format!("[[app.listen]]\nname = \"http\"\naddress = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "[[app]]\nname = \"web\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 2\n\
         ready_timeout = \"10s\"\nkill_timeout = \"5s\"\n{extra}{listen}",
        dir.join(script).display()
    )
}

/// 10 reloads under keep-alive load, then 10 under new-connection-per-request load: 0 failures.
fn twenty_reloads_fail_nothing(s: &Supervisor) {
    for mode in [ConnMode::KeepAlive, ConnMode::PerRequest] {
        let report = reloads_under_load(s, "/heavy", mode, 4, 10).unwrap();
        assert_eq!(
            report.failed, 0,
            "{mode:?}: failed requests during reloads: {:?}",
            report.errors
        );
        assert!(report.ok > 50, "{mode:?}: too few answers: {report:?}");
    }
}

#[test]
fn the_seeds_esm_app_unchanged_reloads_without_a_failed_request() {
    let addr = free_loopback_with_port(3000);
    let s = Supervisor::start(&node_config("index.js", Some(addr), ""), 2).unwrap();
    assert_eq!(s.addr().unwrap(), addr);
    twenty_reloads_fail_nothing(&s);
    let log = s.log_text();
    assert!(
        log.contains("App listening on port 3000"),
        "the app's own callback ran: {log}"
    );
    assert!(!log.contains("does not hold"), "{log}");
}

#[test]
fn a_commonjs_app_reading_port_reloads_without_a_failed_request() {
    let s = Supervisor::start(&node_config("commonjs.cjs", None, ""), 2).unwrap();
    twenty_reloads_fail_nothing(&s);
}

#[test]
fn an_app_with_its_own_sigterm_handler_drains_without_a_failed_request() {
    let addr = free_loopback_with_port(3000);
    let s = Supervisor::start(&node_config("shutdown.cjs", Some(addr), ""), 2).unwrap();
    twenty_reloads_fail_nothing(&s);
    let log = s.log_text();
    assert!(
        log.contains("SIGTERM: closing the server") && log.contains("server closed; bye"),
        "the app's own handler ran to its end: {log}"
    );
    assert!(!log.contains("drain deadline"), "{log}");
}

#[test]
fn nodes_own_fetch_as_a_keep_alive_client_sees_no_failure_through_reloads() {
    let s = Supervisor::start(&node_config("commonjs.cjs", None, ""), 2).unwrap();
    let url = format!("http://{}/", s.addr().unwrap());
    let script = e2e::workspace_root().join("tests/clients/fetch-client.mjs");
    let client = std::thread::spawn(move || {
        run_with_deadline(
            std::process::Command::new("node")
                .arg(script)
                .arg(url)
                .arg("8"),
            Duration::from_secs(40),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..10 {
        let out = s.cli(&["reload"]).unwrap();
        assert!(out.status.success(), "reload {round}: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = client.join().unwrap().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("fetch client printed {line:?} ({e}); stderr: {out:?}"));
    assert_eq!(v["failed"], 0, "fetch saw failures: {v}");
    assert!(v["ok"].as_u64().unwrap() > 100, "{v}");
}

/// Starts the CommonJS app, rewrites the config to `worker`, reloads: the reload is aborted with
/// `reason`, the old workers keep serving without a failed request. Returns the supervisor's log.
fn reload_into_is_aborted(worker: &str, reason: &str) -> String {
    let s = Supervisor::start(&node_config("commonjs.cjs", None, ""), 2).unwrap();
    let before: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    s.rewrite(worker).unwrap();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(!ok, "reload must fail: {text}");
    assert!(text.contains("aborted") && text.contains(reason), "{text}");
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let after: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    assert_eq!(before, after, "the old workers keep serving");
    s.log_text()
}

/// A node worker running `code` with `node -e`.
fn node_eval(code: &str, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"web\"\ncommand = \"node\"\nargs = [\"-e\", {code:?}]\ninstances = 2\n\
         ready_timeout = \"2s\"\nkill_timeout = \"2s\"\n{extra}"
    )
}

#[test]
fn a_node_app_that_never_listens_aborts_the_reload_saying_so() {
    reload_into_is_aborted(
        &node_eval("setInterval(() => {}, 1000)", ""),
        "did not listen on 127.0.0.1:",
    );
}

#[test]
fn a_node_app_on_a_port_the_supervisor_does_not_hold_is_named_once_and_aborts_the_reload() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let code = format!("require('http').createServer((q, s) => s.end('x')).listen({port})");
    let log = reload_into_is_aborted(&node_eval(&code, ""), "did not listen on");
    let warning = format!("listens on port {port}, which the supervisor does not hold");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&warning)).collect();
    // The one new worker started (the reload stops at its timeout) warned once.
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("web.0"), "{}", lines[0]);
}

#[test]
fn a_node_options_node_rejects_aborts_the_reload_with_nodes_message() {
    let worker = node_config(
        "commonjs.cjs",
        None,
        "env = { NODE_OPTIONS = \"--no-such-flag\" }\n",
    );
    let log = reload_into_is_aborted(&worker, "exited before it was ready");
    assert!(
        log.contains("--no-such-flag is not allowed in NODE_OPTIONS"),
        "node's own message is logged with the worker's name: {log}"
    );
}

#[test]
fn the_users_node_options_are_kept_after_the_preload() {
    let s = Supervisor::start(
        &node_config(
            "commonjs.cjs",
            None,
            "env = { NODE_OPTIONS = \"--max-http-header-size=20000\" }\n",
        ),
        2,
    )
    .unwrap();
    let pid = s.ready_workers().unwrap()[0].pid;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let options = environ
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .find_map(|kv| kv.strip_prefix("NODE_OPTIONS=").map(str::to_string))
        .expect("NODE_OPTIONS set");
    assert!(
        options.starts_with("--require \"") && options.ends_with("\" --max-http-header-size=20000"),
        "{options}"
    );
}

#[test]
fn runtime_node_for_a_program_that_is_not_node_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        e2e::config_text("[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nruntime = \"node\"\n"),
    )
    .unwrap();
    let out = run_with_deadline(
        std::process::Command::new(e2e::bin("supervisor"))
            .args(["check", "-c"])
            .arg(&cfg),
        Duration::from_secs(10),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("app[0].runtime") && err.contains("/bin/sh"),
        "{err}"
    );
}

#[test]
fn a_node_app_on_a_port_the_supervisor_does_not_hold_fails_the_start_at_once_saying_how_to_fix_it()
{
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let code = format!("require('http').createServer((q, s) => s.end('x')).listen({port})");
    // A ready timeout far above what the start may take.
    let body = node_eval(&code, "").replace("ready_timeout = \"2s\"", "ready_timeout = \"30s\"");
    let started = std::time::Instant::now();
    let mut s = e2e::Supervisor::spawn(&body).unwrap();
    let exit = s.wait_exit(Duration::from_secs(20)).unwrap();
    let took = started.elapsed();
    let log = s.log_text();
    assert_eq!(exit, Some(1), "the start fails: {log}");
    assert!(
        took < Duration::from_secs(10),
        "at once, not at the ready timeout: {took:?}"
    );
    let said: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "listens on port {port}, which the supervisor does not hold"
            ))
        })
        .collect();
    assert_eq!(said.len(), 1, "said once for both workers: {log}");
    assert!(said[0].contains("WARN"), "at WARN: {}", said[0]);
    assert!(
        said[0].contains(&format!("[[app.listen]] address = \"0.0.0.0:{port}\""))
            && said[0].contains("process.env.PORT"),
        "with the fix: {}",
        said[0]
    );
    assert!(
        !log.contains("EADDRINUSE"),
        "no second worker crash-looping: {log}"
    );
    assert!(log.contains("EX_CONFIG"), "{log}");
}
