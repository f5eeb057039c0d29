//! socket.io, the real npm packages (examples/socketio: its chat server, unchanged, and its load
//! client `load.js`, 100 socket.io-client connections from 100 source addresses), as 4 workers:
//! with `balance = "sticky"` every HTTP long-polling request of a session reaches the worker
//! that holds it (0 session errors), with `balance = "shared"` they do not (engine.io answers
//! 400 "Session ID unknown"), and through 5 reloads the clients, upgraded to WebSocket, are
//! closed with 1012 and each is connected again within 2 s, with no failed HTTP request.
//! Skipped, saying so, when examples/socketio/node_modules is missing (`scripts/test` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use e2e::Supervisor;
use serde_json::Value;

/// examples/socketio with its npm packages installed, or `None` (and why, on stderr).
fn example(test: &str) -> Option<PathBuf> {
    let dir = e2e::workspace_root().join("examples/socketio");
    let node = Command::new("node").arg("--version").output();
    if !node.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped {test}: `node` is not on the PATH (scripts/test installs Node.js)");
        return None;
    }
    for package in ["socket.io", "socket.io-client"] {
        if !dir.join("node_modules").join(package).is_dir() {
            eprintln!(
                "skipped {test}: {}/node_modules/{package} is missing: run `npm ci` there (scripts/test does)",
                dir.display()
            );
            return None;
        }
    }
    Some(dir)
}

/// The example's server as 4 workers balanced by `balance`, on 127.0.0.1:0 (the server listens
/// on PORT).
fn start(dir: &std::path::Path, balance: &str) -> Supervisor {
    let body = format!(
        "[[app]]\nname = \"chat\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 4\n\
         balance = \"{balance}\"\nready_timeout = \"10s\"\nkill_timeout = \"10s\"\n",
        dir.join("server.js").display()
    );
    Supervisor::start(&body, 4).unwrap()
}

/// A running `load.js`: killed when dropped; its stdout (the summary) and stderr (progress lines)
/// read by threads, so neither pipe can fill.
struct LoadJs {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Receiver<String>,
    summary: Receiver<String>,
}

impl LoadJs {
    /// `node load.js --url http://ADDR --clients 100 --sources 100 ARGS`.
    fn start(dir: &std::path::Path, addr: SocketAddr, args: &[&str]) -> LoadJs {
        let mut child = Command::new("node")
            .arg(dir.join("load.js"))
            .args(["--url", &format!("http://{addr}")])
            .args(["--clients", "100", "--sources", "100"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node load.js");
        let (progress_tx, progress) = channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = progress_tx.send(line);
            }
        });
        let (summary_tx, summary) = channel();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            let _ = summary_tx.send(text);
        });
        let stdin = child.stdin.take();
        LoadJs {
            child,
            stdin,
            progress,
            summary,
        }
    }

    /// Waits for its `{"event":"connected"}` line (every client connected, and upgraded unless
    /// polling); panics with what it said instead.
    fn wait_connected(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.progress.recv_timeout(left) {
                Ok(line) if line.contains(r#""event":"connected""#) => return,
                Ok(line) => said.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("load.js: not every client connected within {timeout:?}: {said:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("load.js ended early: {said:?}"),
            }
        }
    }

    /// Closes its stdin (with `--until-stdin-closes`, it stops sending) and returns its summary.
    fn finish(mut self, timeout: Duration) -> Value {
        drop(self.stdin.take());
        let text = self
            .summary
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("load.js printed no summary within {timeout:?}"));
        let rest: Vec<String> = self.progress.try_iter().collect();
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("load.js summary is not JSON ({e}): {text:?} {rest:?}"))
    }
}

impl Drop for LoadJs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A summary without its long per-client part, for assertion messages.
fn brief(summary: &Value) -> String {
    let mut s = summary.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("per_client");
    }
    s.to_string()
}

/// 100 clients forced to long-polling, sending acked messages for 5 s (after every one has
/// connected, at most 10 s): the summary.
fn polling_load(dir: &std::path::Path, s: &Supervisor) -> Value {
    let load = LoadJs::start(
        dir,
        s.addr().unwrap(),
        &[
            "--polling",
            "--duration-ms",
            "5000",
            "--connect-timeout-ms",
            "10000",
            "--settle-ms",
            "1000",
        ],
    );
    load.finish(Duration::from_secs(40))
}

#[test]
fn sticky_keeps_every_long_polling_session_on_its_worker() {
    let Some(dir) = example("sticky_keeps_every_long_polling_session_on_its_worker") else {
        return;
    };
    let s = start(&dir, "sticky");
    let workers: Vec<i64> = s
        .ready_workers()
        .unwrap()
        .iter()
        .map(|w| i64::from(w.pid))
        .collect();
    let summary = polling_load(&dir, &s);
    let b = brief(&summary);
    eprintln!("load.js: {b}");
    assert_eq!(summary["connected"], 100, "{b}");
    assert_eq!(summary["connected_at_end"], 100, "{b}");
    assert_eq!(summary["session_errors"]["total"], 0, "{b}");
    assert_eq!(summary["session_errors"]["session_unknown"], 0, "{b}");
    assert_eq!(summary["session_errors"]["bad_request"], 0, "{b}");
    assert_eq!(summary["http_failures"]["total"], 0, "{b}");
    assert_eq!(summary["ack_failed"], 0, "{b}");
    assert!(summary["acked"].as_u64().unwrap() >= 1000, "{b}");
    // Each client was served by one worker only, and the 100 addresses spread over all four.
    assert_eq!(summary["clients_on_more_than_one_pid"], 0, "{b}");
    let served: Vec<i64> = summary["pids"]
        .as_object()
        .unwrap()
        .keys()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(served.len(), 4, "{b}");
    assert!(
        served.iter().all(|p| workers.contains(p)),
        "{workers:?}: {b}"
    );
}

#[test]
fn shared_loses_long_polling_sessions_to_other_workers() {
    let Some(dir) = example("shared_loses_long_polling_sessions_to_other_workers") else {
        return;
    };
    let s = start(&dir, "shared");
    let summary = polling_load(&dir, &s);
    let b = brief(&summary);
    eprintln!("load.js: {b}");
    // Requests of a session reach workers that do not hold it: engine.io answers 400.
    assert!(
        summary["session_errors"]["total"].as_u64().unwrap() > 0,
        "{b}"
    );
    assert!(
        summary["session_errors"]["session_unknown"]
            .as_u64()
            .unwrap()
            > 0,
        "{b}"
    );
    // Nothing else failed: the workers answered every request.
    assert_eq!(summary["http_failures"]["total"], 0, "{b}");
}

#[test]
fn five_reloads_close_websockets_with_1012_and_every_client_is_back_within_2s() {
    let Some(dir) =
        example("five_reloads_close_websockets_with_1012_and_every_client_is_back_within_2s")
    else {
        return;
    };
    let s = start(&dir, "sticky");
    // Default transports: each client upgrades to a WebSocket.
    let load = LoadJs::start(
        &dir,
        s.addr().unwrap(),
        &[
            "--until-stdin-closes",
            "--duration-ms",
            "120000",
            "--settle-ms",
            "5000",
        ],
    );
    load.wait_connected(Duration::from_secs(20));
    let mut seen = std::collections::HashSet::new();
    for round in 0..5 {
        let before: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
        seen.extend(before.iter().copied());
        let (ok, text) = s.cli_text(&["reload"]).unwrap();
        assert!(ok, "reload {round}: {text}\n{}", s.log_text());
        let after: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
        assert_eq!(after.len(), 4, "after reload {round}: {after:?}");
        assert!(
            after.iter().all(|p| !seen.contains(p)),
            "reload {round} kept a worker: {before:?} -> {after:?}"
        );
        // The clients of the old workers are closed after the drain's grace (500 ms here) and
        // are to be back within 2 s: let them, before the next reload (a client reconnecting
        // to a worker that the next reload drains may lose that new session).
        std::thread::sleep(Duration::from_millis(3000));
    }
    let summary = load.finish(Duration::from_secs(30));
    let b = brief(&summary);
    eprintln!("load.js: {b}");
    assert_eq!(summary["connected_at_end"], 100, "{b}");
    assert_eq!(summary["http_failures"]["total"], 0, "{b}");
    // Every client was closed by a reload (close code 1012), as a WebSocket, and nothing else.
    let per_client = summary["per_client"].as_array().unwrap();
    assert_eq!(per_client.len(), 100, "{b}");
    for c in per_client {
        let first = c["first"].as_array().unwrap();
        assert!(
            first
                .iter()
                .all(|d| d["reason"] == "transport close" && d["code"] == 1012),
            "{c}"
        );
    }
    assert_eq!(
        summary["disconnects"].as_object().unwrap().len(),
        1,
        "only 1012 closes: {b}"
    );
    let closes = summary["close_codes"]["1012"].as_u64().unwrap();
    assert!(closes >= 100, "{b}");
    // Each of them back within 2 s of its close.
    assert_eq!(
        summary["reconnect_ms"]["count"].as_u64().unwrap(),
        closes,
        "{b}"
    );
    assert_eq!(summary["reconnect_ms"]["never"], 0, "{b}");
    let max = summary["reconnect_ms"]["max"].as_u64().unwrap();
    assert!(max <= 2000, "a client took {max} ms to reconnect: {b}");
    let log = s.log_text();
    assert!(
        log.contains("WebSocket(s) closed with 1012, service restart"),
        "{log}"
    );
}
