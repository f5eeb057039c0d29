//! The supervisor under systemd `Type=notify`: a datagram socket in the test stands in for
//! systemd's `NOTIFY_SOCKET`. The supervisor says `READY=1` (with `MAINPID=`) once every first
//! worker is ready, `RELOADING=1` (with `MONOTONIC_USEC=`) then `READY=1` around a reload,
//! `STOPPING=1` on stop; its workers never see that socket (each has its own).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::Supervisor;

/// systemd's side of `NOTIFY_SOCKET`: every datagram received, in order.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    got: Vec<String>,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        FakeSystemd {
            socket,
            path,
            _dir: dir,
            got: Vec::new(),
        }
    }

    /// Receives until a datagram has `line` as one of its lines; returns that datagram. Fails
    /// after `timeout`, with everything received so far.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line:?} within {} ms; got {:#?}",
                timeout.as_millis(),
                self.got
            );
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.got.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }

    /// The state changes said so far (`READY=1`, `RELOADING=1`, `STOPPING=1`), in order.
    fn states(&self) -> Vec<&str> {
        self.got
            .iter()
            .flat_map(|m| m.lines())
            .filter(|l| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(l))
            .collect()
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Two workers that each write the `NOTIFY_SOCKET` they got to a file in the config's directory.
const TWO_WORKERS: &str = "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\n\
    args = [\"-c\", \"printf %s \\\"$NOTIFY_SOCKET\\\" > notify-$SUPERVISOR_WORKER_NAME.txt; exec {demo}\"]\n\
    instances = 2\nkill_timeout = \"5s\"\n";

#[test]
fn ready_reloading_stopping_reach_the_service_manager_and_not_the_workers() {
    let mut systemd = FakeSystemd::bind();
    let target = systemd.path.display().to_string();
    let mut s = Supervisor::spawn_with_env(TWO_WORKERS, &[("NOTIFY_SOCKET", &target)]).unwrap();

    let ready = systemd.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={}", s.pid())),
        "{ready}"
    );
    assert!(
        ready.lines().any(|l| l == "STATUS=demo: 2/2 ready"),
        "{ready}"
    );
    assert_eq!(systemd.states(), ["READY=1"], "{:#?}", systemd.got);
    // By then both workers are ready.
    s.wait_ready(2, Duration::from_secs(5)).unwrap();

    // Each worker got its own socket (in the supervisor's runtime directory), not systemd's.
    let runtime_dir = format!("supervisor-{}", s.pid());
    for slot in 0..2 {
        let file = s.dir.path().join(format!("notify-demo.{slot}.txt"));
        let got = std::fs::read_to_string(&file).unwrap();
        assert_ne!(got, target);
        assert!(got.contains(&runtime_dir), "worker {slot} got {got:?}");
    }

    // `supervisor reload` waits for the reload: RELOADING=1 before, READY=1 after.
    let before = monotonic_usec();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok && text.contains("generation 2: ok"), "{text}");
    let reloading = systemd.wait_for("RELOADING=1", Duration::from_secs(5));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!(
        (before..=monotonic_usec()).contains(&usec),
        "MONOTONIC_USEC={usec} not taken during the reload (from {before})"
    );
    assert!(
        reloading
            .lines()
            .any(|l| l.starts_with("STATUS=reloading demo (generation 2)")),
        "{reloading}"
    );
    let ready = systemd.wait_for("READY=1", Duration::from_secs(5));
    assert!(!ready.contains("MAINPID="), "MAINPID is said once: {ready}");
    assert_eq!(systemd.states(), ["READY=1", "RELOADING=1", "READY=1"]);
    // The reload's new workers got their own sockets too.
    let got = std::fs::read_to_string(s.dir.path().join("notify-demo.0.txt")).unwrap();
    assert_ne!(got, target);

    let (ok, text) = s.cli_text(&["stop"]).unwrap();
    assert!(ok, "{text}");
    systemd.wait_for("STOPPING=1", Duration::from_secs(5));
    assert_eq!(s.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    assert_eq!(
        systemd.states(),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    );
}

/// Without `NOTIFY_SOCKET` nothing is sent and nothing breaks (the harness runs every other test
/// that way); with an abstract socket (`@name`, as systemd may pass) it works the same.
#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("supervisor-e2e-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    let mut systemd = FakeSystemd {
        socket,
        path: PathBuf::new(),
        _dir: tempfile::tempdir().unwrap(),
        got: Vec::new(),
    };
    let mut s = Supervisor::spawn_with_env(
        "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 1\nkill_timeout = \"5s\"\n",
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    )
    .unwrap();
    let ready = systemd.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready.contains("STATUS=demo: 1/1 ready"), "{ready}");
    s.signal(libc::SIGTERM);
    systemd.wait_for("STOPPING=1", Duration::from_secs(5));
    assert_eq!(s.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
}

/// `WatchdogSec=` in the unit: systemd gives the supervisor `WATCHDOG_USEC` (and
/// `WATCHDOG_PID`, its own pid); the event loop pings `WATCHDOG=1` four times per period, and
/// the workers never see the supervisor's watchdog variables (they get their own only with the
/// app's `watchdog`).
#[test]
fn the_supervisor_pings_its_own_watchdog_from_its_event_loop() {
    let mut systemd = FakeSystemd::bind();
    let target = systemd.path.display().to_string();
    let mut s = Supervisor::spawn_with_env(
        "[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"env > env-$SUPERVISOR_WORKER_NAME.txt; exec {demo}\"]\n\
         instances = 1\nkill_timeout = \"5s\"\n",
        &[("NOTIFY_SOCKET", &target), ("WATCHDOG_USEC", "800000")],
    )
    .unwrap();
    systemd.wait_for("READY=1", Duration::from_secs(20));
    let start = Instant::now();
    for _ in 0..4 {
        systemd.wait_for("WATCHDOG=1", Duration::from_secs(2));
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "4 pings at 200 ms: {} ms",
        took.as_millis()
    );
    let env = std::fs::read_to_string(s.dir.path().join("env-sh.0.txt")).unwrap_or_default();
    assert!(env.contains("LISTEN_PID="), "{env}");
    assert!(
        !env.contains("WATCHDOG_USEC"),
        "the supervisor's own watchdog leaked: {env}"
    );
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
}
