//! Every input bounded: what a client or a worker can send the supervisor must never take it
//! down or freeze a worker. `scale` past the cap is refused at once (from the CLI and from a raw
//! client) while the workers keep serving; a worker printing over-long lines (20,000 bytes, or
//! megabytes with no newline) has them logged truncated, every later line logged, and keeps
//! serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::time::Duration;

use e2e::{Supervisor, get, node_example, wait_for, workers};

const DEMO2: &str =
    "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 2\nkill_timeout = \"5s\"\n";

/// One request on the control socket, framed as the protocol does (4-byte big-endian length,
/// then JSON); the answer's JSON.
fn raw_request(socket: &std::path::Path, json: &str) -> serde_json::Value {
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&(json.len() as u32).to_be_bytes()).unwrap();
    conn.write_all(json.as_bytes()).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn scale_past_the_cap_is_refused_at_once_and_the_workers_keep_serving() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let addr = s.addr().unwrap();
    let before: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    for n in ["18446744073709551615", "100000", "1025"] {
        let started = std::time::Instant::now();
        let (ok, text) = s.cli_text(&["scale", "demo", n]).unwrap();
        assert!(!ok, "scale {n} must fail: {text}");
        assert!(text.contains("at most 1024"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A client that skips the CLI's check gets the same refusal from the supervisor.
    let socket = s.dir.path().join("control.sock");
    let answer = raw_request(
        &socket,
        r#"{"request":"scale","app":"demo","instances":18446744073709551615}"#,
    );
    assert_eq!(answer["response"], "error", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("at most 1024"),
        "{answer}"
    );
    let answer = raw_request(
        &socket,
        r#"{"request":"scale","app":"demo","instances":100000}"#,
    );
    assert_eq!(answer["response"], "error", "{answer}");
    // Nothing started or stopped; the app serves.
    let after: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    assert_eq!(before, after);
    assert_eq!(get(addr, "/").unwrap().0, 200);
    // The cap itself is a valid request (not run here: 1024 processes).
    let (ok, text) = s.cli_text(&["scale", "demo", "3"]).unwrap();
    assert!(ok, "{text}");
    s.wait_ready(3, Duration::from_secs(20)).unwrap();
}

/// A Node app that prints a 20,000-byte line then 1,000 short ones at start, and on each
/// `/flood` request 1 MiB with no newline followed by a short line (Node writes to a pipe
/// synchronously: a pipe nobody reads blocks it in `write()` for good).
const PRINTER: &str = r#"
const http = require('http');
process.stdout.write('x'.repeat(20000) + '\n');
for (let i = 0; i < 1000; i++) process.stdout.write(`short line ${i}\n`);
http.createServer((req, res) => {
  if (req.url === '/flood') {
    process.stdout.write('z'.repeat(1 << 20));
    process.stdout.write('\nafter the flood\n');
  }
  res.end('ok\n');
}).listen(process.env.PORT);
"#;

#[test]
fn a_worker_printing_over_long_lines_has_every_later_line_logged_and_keeps_serving() {
    node_example(); // node must be installed
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("printer.cjs");
    std::fs::write(&script, PRINTER).unwrap();
    let s = Supervisor::start(
        &format!(
            "[[app]]\nname = \"printer\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 1\n\
             ready_timeout = \"10s\"\n",
            script.display()
        ),
        1,
    )
    .unwrap();
    let addr = s.addr().unwrap();
    wait_for(Duration::from_secs(10), "the 1,000th short line", || {
        s.log_text().contains("short line 999").then_some(())
    })
    .unwrap();
    let log = s.log_text();
    let short = (0..1000)
        .filter(|i| log.contains(&format!("short line {i}\n")))
        .count();
    assert_eq!(short, 1000, "every short line after the long one is logged");
    assert!(
        log.contains("[line longer than 16 KiB: truncated]"),
        "{log}"
    );
    assert!(
        !log.contains(&"x".repeat(16 * 1024 + 1)),
        "the long line is cut at 16 KiB"
    );
    // 10 MiB without a newline in all, well past a pipe's 64 KiB: the worker never blocks.
    for _ in 0..10 {
        let (code, body) = get(addr, "/flood").unwrap();
        assert_eq!((code, body.as_str()), (200, "ok\n"));
    }
    wait_for(
        Duration::from_secs(10),
        "the lines after the floods",
        || (s.log_text().matches("after the flood").count() == 10).then_some(()),
    )
    .unwrap();
    assert_eq!(get(addr, "/").unwrap().0, 200);
}

/// Runs `supervisor <command> -c <config>` with a deadline: (exit code, stderr).
fn run(command: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let out = e2e::run_with_deadline(
        std::process::Command::new(e2e::bin("supervisor"))
            .args([command, "-c"])
            .arg(config)
            .env_remove("RUST_LOG"),
        Duration::from_secs(20),
    )
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `error: ...` line of a failed command.
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
        .to_string()
}

#[test]
fn what_start_would_refuse_check_refuses_first_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::write(&script, "#!/usr/bin/python9\nprint(1)\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = |body: &str| format!("[supervisor]\ncontrol_socket = \"c.sock\"\n{body}");
    let app =
        "[[app]]\nname = \"a\"\ncommand = \"/bin/sleep\"\nargs = [\"60\"]\nreadiness = \"exec\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a huge ready_timeout",
            socket(&format!("{app}ready_timeout = \"18446744073709551615s\"\n")),
            "app[0].ready_timeout: \"18446744073709551615s\" is more than the limit of 1h",
        ),
        (
            "an app name of 100,000 characters",
            socket(&app.replace(
                "name = \"a\"",
                &format!("name = \"{}\"", "n".repeat(100_000)),
            )),
            "app[0].name: ",
        ),
        (
            "a control socket path over sun_path",
            format!(
                "[supervisor]\ncontrol_socket = \"{}/{}.sock\"\n{app}",
                dir.path().display(),
                "s".repeat(110)
            ),
            "supervisor.control_socket: ",
        ),
        (
            "a state_dir that is a file",
            socket(&format!("[cron]\nstate_dir = \"/etc/passwd\"\n{app}")),
            "cron.state_dir: /etc/passwd is not a directory",
        ),
        (
            "state_dir = \"/\"",
            socket(&format!("[cron]\nstate_dir = \"/\"\n{app}")),
            "cron.state_dir: / already holds other files",
        ),
        (
            "a script whose interpreter is missing",
            socket("[[app]]\nname = \"py\"\ncommand = \"./app.py\"\n"),
            "its interpreter /usr/bin/python9 (from its `#!/usr/bin/python9` line) is not found",
        ),
        (
            "a control socket in a directory that is a file",
            socket(app).replace("c.sock", "app.py/c.sock"),
            "app.py is not a directory",
        ),
    ];
    let config = dir.path().join("s.toml");
    for (what, text, says) in cases {
        std::fs::write(&config, &text).unwrap();
        let (check_code, check_err) = run("check", &config);
        let (start_code, start_err) = run("start", &config);
        for (cmd, code, err) in [
            ("check", check_code, &check_err),
            ("start", start_code, &start_err),
        ] {
            assert_eq!(code, Some(1), "{what}: {cmd} exits 1 (no panic): {err}");
            assert!(!err.contains("panicked"), "{what}: {cmd}: {err}");
            assert!(err.contains(says), "{what}: {cmd} says {says:?}: {err}");
            assert!(
                err.len() < 2000,
                "{what}: {cmd}: a short message: {} bytes",
                err.len()
            );
        }
        assert_eq!(
            error_line(&check_err),
            error_line(&start_err),
            "{what}: the same message"
        );
        assert!(
            !dir.path().join("c.sock").exists(),
            "{what}: start left nothing behind"
        );
    }
}

#[test]
fn the_longest_app_name_runs_and_its_status_prints() {
    let name = "n".repeat(64);
    let s = Supervisor::start(
        &DEMO2.replace("name = \"demo\"", &format!("name = \"{name}\"")),
        2,
    )
    .unwrap();
    let (ok, text) = s.cli_text(&["status"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains(&format!("{name}.0")), "{text}");
}

#[test]
fn a_restart_whose_script_lost_its_interpreter_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = Supervisor::start(
        &format!(
            "[[app]]\nname = \"sh\"\ncommand = \"{}\"\ninstances = 1\nreadiness = \"exec\"\n\
             [app.restart]\nbackoff_initial = \"50ms\"\n",
            script.display()
        ),
        1,
    )
    .unwrap();
    let pid = workers(&s.status().unwrap())[0].pid;
    std::fs::write(&script, "#!/no/such/interpreter\nexec sleep 60\n").unwrap();
    // SAFETY: kill(2) on the worker this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let want = format!(
        "cannot execute {}: its interpreter /no/such/interpreter (from its `#!/no/such/interpreter` line) is not found",
        script.display()
    );
    wait_for(Duration::from_secs(10), "the restart's error", || {
        s.log_text().contains(&want).then_some(())
    })
    .unwrap();
}

#[test]
fn a_second_start_says_how_to_stop_the_first_with_its_config() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    for cmd in ["start", "check"] {
        let (code, err) = run(cmd, &s.config);
        if cmd == "check" {
            // `check` beside a running supervisor is fine: it says why nothing was bound.
            assert_eq!(code, Some(0), "{err}");
            continue;
        }
        assert_eq!(code, Some(1), "{err}");
        let hint = format!("stop it with `supervisor stop -c {}`", s.config.display());
        assert!(err.contains(&hint), "{hint:?}: {err}");
    }
    assert_eq!(
        workers(&s.status().unwrap()).len(),
        2,
        "the first one runs on"
    );
}

/// The environment of process `pid`, as `NAME=value` entries.
fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

#[test]
fn the_cron_backend_url_reaches_only_the_apps_that_ask_and_is_never_printed() {
    const PASSWORD: &str = "s3cret-pw-21";
    // A Redis that refuses connections: every reader of it says so, naming the backend.
    let url = format!("redis://:{PASSWORD}@127.0.0.1:1/0");
    let body = format!(
        "[[app]]\nname = \"plain\"\ncommand = \"/bin/sleep\"\nargs = [\"60\"]\nreadiness = \"exec\"\n\
         instances = 1\n\
         [[app]]\nname = \"jobs\"\ncommand = \"/bin/sleep\"\nargs = [\"60\"]\nreadiness = \"exec\"\n\
         instances = 1\ncron_backend = true\n\
         [cron]\nredis_url = \"{url}\"\n\
         [[job]]\nname = \"tick\"\nschedule = \"* * * * * *\"\ncommand = [\"/bin/true\"]\n"
    );
    // Even when the supervisor's own environment has it (a shell that exported it).
    let s = Supervisor::spawn_with_env(&body, &[("SUPERVISOR_CRON_URL", &url)]).unwrap();
    s.wait_ready(2, Duration::from_secs(20)).unwrap();
    let status = s.status().unwrap();
    let pid_of = |app: &str| {
        workers(&status)
            .into_iter()
            .find(|w| w.name.starts_with(&format!("{app}.")))
            .unwrap()
            .pid
    };
    let plain = environ(pid_of("plain"));
    assert!(
        !plain.iter().any(|e| e.contains(PASSWORD)),
        "the password is nowhere in the plain app's environment: {plain:?}"
    );
    assert!(!plain.iter().any(|e| e.starts_with("SUPERVISOR_CRON_URL=")));
    let jobs = environ(pid_of("jobs"));
    assert!(
        jobs.contains(&format!("SUPERVISOR_CRON_URL={url}")),
        "{jobs:?}"
    );
    // A tick or two on the unreachable backend, logged.
    std::thread::sleep(Duration::from_millis(1500));
    let mut printed = vec![("log".to_string(), s.log_text())];
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["check"],
        vec!["check", "--json"],
        vec!["jobs"],
    ] {
        let (_, text) = s.cli_text(&args).unwrap();
        printed.push((args.join(" "), text));
    }
    for (what, text) in &printed {
        assert!(
            !text.contains(PASSWORD),
            "{what} prints the password: {text}"
        );
    }
    let (_, check) = &printed[3];
    assert!(
        check.contains("redis://"),
        "check names the backend, redacted: {check}"
    );
    assert!(
        check.contains("cron backend:   handed to its workers"),
        "check says which app gets it: {check}"
    );
}

/// How long `supervisor status` takes to answer, at most 10 s.
fn timed_status(s: &Supervisor) -> Duration {
    let started = std::time::Instant::now();
    let (ok, text) = s.cli_text(&["status"]).unwrap();
    assert!(ok, "{text}");
    started.elapsed()
}

#[test]
fn status_answers_within_a_second_through_idle_and_busy_clients() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let socket = s.dir.path().join("control.sock");
    // 3,000 connections that never send anything.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..3000)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let took = timed_status(&s);
    assert!(
        took < Duration::from_secs(1),
        "3,000 idle connections: status took {took:?}"
    );
    drop(idle);
    // 64 clients on connections of their own, each asking for the status every 3 s (and
    // connecting again when their connection was given to someone else).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let request = br#"{"request":"status"}"#;
                let mut conn = None;
                // Spread over the 3 s.
                std::thread::sleep(Duration::from_millis(i * 45));
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let c = conn.get_or_insert_with(|| {
                        let c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        c
                    });
                    let mut asked = || -> std::io::Result<()> {
                        c.write_all(&(request.len() as u32).to_be_bytes())?;
                        c.write_all(request)?;
                        let mut len = [0u8; 4];
                        c.read_exact(&mut len)?;
                        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                        c.read_exact(&mut body)
                    };
                    if asked().is_err() {
                        conn = None;
                        continue;
                    }
                    for _ in 0..30 {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let took: Vec<Duration> = (0..3)
        .map(|_| {
            let t = timed_status(&s);
            std::thread::sleep(Duration::from_millis(500));
            t
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(1)),
        "64 busy clients: status took {took:?}"
    );
}
