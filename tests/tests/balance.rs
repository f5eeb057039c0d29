//! `balance = "sticky" | "spread"`, end to end: a socket per worker slot and the kernel program
//! that picks one. Every connection from one client address reaches one worker (sticky), keep-
//! alive connections spread over the workers (spread), and no request fails through reloads,
//! scale downs and ups, or an in-place upgrade, which hands the slot sockets over.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, wait_for};

fn app(balance: &str, instances: usize) -> String {
    format!(
        "[[app]]\nname = \"demo\"\ncommand = \"{{demo}}\"\ninstances = {instances}\nbalance = \"{balance}\"\nkill_timeout = \"5s\"\nready_timeout = \"5s\"\n"
    )
}

/// A connection from source address `from` to `to` with a request written: `GET /`, closed
/// after its answer.
fn request_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from.into(), 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    s
}

/// The pid that answers a request on a new connection from `from`.
fn pid_from(from: Ipv4Addr, to: SocketAddr) -> String {
    let mut s = request_from(from, to);
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split("pid=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
        .to_string()
}

/// For 50 source addresses (127.0.0.2 to 127.0.0.51), the one pid that answers each: every
/// address's 4 connections must reach the same worker.
fn pid_by_address(to: SocketAddr) -> BTreeMap<Ipv4Addr, String> {
    (2..52)
        .map(|i| {
            let from = Ipv4Addr::new(127, 0, 0, i);
            let pids: BTreeSet<String> = (0..4).map(|_| pid_from(from, to)).collect();
            assert_eq!(pids.len(), 1, "{from} reached {pids:?}");
            (from, pids.into_iter().next().unwrap())
        })
        .collect()
}

fn reloads_under_load(s: &Supervisor, rounds: usize) -> e2e::LoadReport {
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        3,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    load.wait_answered().unwrap();
    let n = s.ready_workers().unwrap().len();
    e2e::reload_rounds(s, rounds as u64, n).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    load.stop()
}

#[test]
fn sticky_sends_each_address_to_one_worker_through_ten_reloads_that_fail_nothing() {
    let s = Supervisor::start(&app("sticky", 4), 4).unwrap();
    let addr = s.addr().unwrap();
    let before = slot_by_address(&s, &pid_by_address(addr));
    let slots: BTreeSet<u64> = before.values().copied().collect();
    assert!(slots.len() >= 3, "50 addresses over 4 workers: {before:?}");
    let report = reloads_under_load(&s, 10);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 200, "{report:?}");
    // Still one worker per address, of the same slot: the slot's socket outlives its workers.
    let after = slot_by_address(&s, &pid_by_address(addr));
    assert_eq!(after, before, "addresses moved to other slots");
    let log = s.log_text();
    assert!(!log.contains("still queued"), "{log}");
}

/// The slot of the worker each address reached.
fn slot_by_address(s: &Supervisor, pids: &BTreeMap<Ipv4Addr, String>) -> BTreeMap<Ipv4Addr, u64> {
    let by_pid: BTreeMap<String, u64> = s
        .ready_workers()
        .unwrap()
        .into_iter()
        .map(|w| (w.pid.to_string(), w.slot))
        .collect();
    pids.iter()
        .map(|(a, p)| {
            (
                *a,
                *by_pid
                    .get(p)
                    .unwrap_or_else(|| panic!("{p} is not a ready worker")),
            )
        })
        .collect()
}

#[test]
fn spread_evens_keep_alive_connections_and_ten_reloads_fail_nothing() {
    let s = Supervisor::start(&app("spread", 4), 4).unwrap();
    let addr = s.addr().unwrap();
    // 200 keep-alive connections from one address: each is a worker's for its life.
    let mut per_pid: BTreeMap<String, usize> = BTreeMap::new();
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let pid = text
            .split("pid=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        *per_pid.entry(pid.to_string()).or_default() += 1;
        held.push(c);
    }
    assert_eq!(per_pid.len(), 4, "{per_pid:?}");
    assert!(per_pid.values().all(|n| *n >= 25), "uneven: {per_pid:?}");
    drop(held);
    let report = reloads_under_load(&s, 10);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
}

/// Under load, resizes a sticky app of 4 workers to 2, 4, 1 and 3 in turn with `resize`: after
/// each, once the workers taken away are gone, every address reaches a serving worker; no
/// request fails, and no connection is left queued on a socket that closes.
fn resized_under_load(resize: impl Fn(&Supervisor, usize)) {
    let s = Supervisor::start(&app("sticky", 4), 4).unwrap();
    let addr = s.addr().unwrap();
    let load = Load::start(addr, "/", 3, &[ConnMode::KeepAlive, ConnMode::PerRequest]);
    load.wait_answered().unwrap();
    for n in [2usize, 4, 1, 3] {
        resize(&s, n);
        // Until the workers scaled away are gone (drained after a second off their socket).
        wait_for(Duration::from_secs(20), "the resize to settle", || {
            let ws = e2e::workers(&s.status().ok()?);
            (ws.len() == n && ws.iter().all(|w| w.state == "ready")).then_some(())
        })
        .unwrap();
        let pids: BTreeSet<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
        for (from, pid) in pid_by_address(addr) {
            assert!(
                pids.contains(&pid.parse().unwrap()),
                "{from} reached {pid}, not one of {pids:?}"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let log = s.log_text();
    assert!(log.contains("taken off its socket"), "{log}");
    assert!(!log.contains("still queued"), "{log}");
}

#[test]
fn scaling_down_and_up_under_load_fails_nothing_and_addresses_stay_on_serving_workers() {
    resized_under_load(|s, n| {
        let (ok, text) = s.cli_text(&["scale", "demo", &n.to_string()]).unwrap();
        assert!(ok, "{text}");
    });
}

#[test]
fn an_upgrade_in_place_hands_the_slot_sockets_over_and_keeps_every_address_on_its_worker() {
    let s = Supervisor::start(&app("sticky", 3), 3).unwrap();
    let addr = s.addr().unwrap();
    let before = pid_by_address(addr);
    let load = Load::start(addr, "/", 3, &[ConnMode::KeepAlive, ConnMode::PerRequest]);
    load.wait_answered().unwrap();
    let binary = e2e::bin("supervisor");
    let (ok, text) = s
        .cli_text(&["upgrade", "--binary", &binary.display().to_string()])
        .unwrap();
    assert!(ok, "{text}\n{}", s.log_text());
    assert_eq!(
        pid_by_address(addr),
        before,
        "the same workers, the same addresses"
    );
    // The new process routes the slots it was handed: a reload under load fails nothing.
    e2e::reload_rounds(&s, 2, 3).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let after = pid_by_address(addr);
    assert_eq!(after.len(), 50);
}

#[test]
fn a_connection_queued_on_a_crashed_workers_socket_is_answered_by_its_restart() {
    let s = Supervisor::start(&app("sticky", 2), 2).unwrap();
    let addr = s.addr().unwrap();
    let by_address = slot_by_address(&s, &pid_by_address(addr));
    let (&from, _) = by_address.iter().find(|(_, slot)| **slot == 0).unwrap();
    let victim = s.ready_workers().unwrap()[0].pid;
    // Stopped, it accepts nothing: the connection waits in slot 0's queue.
    // SAFETY: kill takes no pointers; `victim` is our supervisor's worker.
    unsafe { libc::kill(victim, libc::SIGSTOP) };
    let mut c = request_from(from, addr);
    // Its worker crashes: the supervisor holds the slot's socket, the restart takes the queue.
    // SAFETY: as above.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let restarted = s.ready_workers().unwrap()[0].pid;
    assert_ne!(restarted, victim);
    assert!(body.contains(&format!("pid={restarted}")), "{body}");
}

#[test]
fn reloads_that_change_the_number_of_workers_under_load_fail_nothing() {
    resized_under_load(|s, n| {
        s.rewrite(&app("sticky", n)).unwrap();
        let (ok, text) = s.cli_text(&["reload"]).unwrap();
        assert!(ok, "{text}");
    });
}

#[test]
fn scaled_to_zero_and_back_under_load_every_connection_waits_and_is_answered() {
    for balance in ["sticky", "spread"] {
        let s = Supervisor::start(&app(balance, 3), 3).unwrap();
        let load = Load::start(
            s.addr().unwrap(),
            "/",
            4,
            &[ConnMode::KeepAlive, ConnMode::PerRequest],
        );
        load.wait_answered().unwrap();
        let (ok, text) = s.cli_text(&["scale", "demo", "0"]).unwrap();
        assert!(ok, "{text}");
        wait_for(Duration::from_secs(20), "every worker gone", || {
            e2e::workers(&s.status().ok()?).is_empty().then_some(())
        })
        .unwrap();
        // Connections made meanwhile wait in slot 0's queue, the one socket kept.
        std::thread::sleep(Duration::from_millis(500));
        let (ok, text) = s.cli_text(&["scale", "demo", "3"]).unwrap();
        assert!(ok, "{text}");
        s.wait_ready(3, Duration::from_secs(20)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let report = load.stop();
        assert_eq!(report.failed, 0, "{balance}: {:?}", report.errors);
        let log = s.log_text();
        assert!(!log.contains("still queued"), "{balance}: {log}");
    }
}

#[test]
fn a_change_between_shared_and_sticky_is_told_by_check_and_refused_by_reload_with_the_way() {
    let s = Supervisor::start(&app("shared", 2), 2).unwrap();
    // The same address (127.0.0.1:0, kept by a reload), a socket per worker asked for.
    s.rewrite(&app("sticky", 2)).unwrap();
    let (ok, text) = s.cli_text(&["check"]).unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: app demo: `balance` changes from shared to sticky")
            && text.contains("supervisor stop demo"),
        "{text}"
    );
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("changed from shared to sticky")
            && text.contains("`supervisor stop demo`, then `supervisor reload`"),
        "{text}"
    );
    // The way it says works.
    for args in [&["stop", "demo"][..], &["reload"], &["start", "demo"]] {
        let (ok, text) = s.cli_text(args).unwrap();
        assert!(ok, "{args:?}: {text}");
    }
    let status = s.status().unwrap();
    assert_eq!(status["apps"][0]["balance"], "sticky", "{status}");
    s.wait_ready(2, Duration::from_secs(20)).unwrap();
}
