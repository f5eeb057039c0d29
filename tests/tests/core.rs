//! Supervisor core, end to end: shared socket, crash restart with backoff, stop without orphans,
//! config errors, control socket ownership, status that matches /proc (processes, memory,
//! connections).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, alive, bin, get, group_members, wait_for, workers};

const DEMO2: &str =
    "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 2\nkill_timeout = \"5s\"\n";

#[test]
fn two_workers_share_the_port_and_both_answer() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let addr = s.addr().unwrap();
    let pids: Vec<String> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    // Concurrent clients, one connection per request: the kernel hands connections to whichever
    // worker accepts first, so both pids show up.
    let load = Load::start(addr, "/", 4, &[ConnMode::PerRequest]);
    wait_for(Duration::from_secs(15), "answers from both workers", || {
        std::thread::sleep(Duration::from_millis(100));
        (load.ok_so_far() > 50).then_some(())
    })
    .unwrap();
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    for pid in &pids {
        assert!(
            report.by_pid.contains_key(pid),
            "no answer from worker {pid}: {:?}",
            report.by_pid
        );
    }
    let (code, body) = get(addr, "/heavy").unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, "The result of the CPU intensive task is 5000000\n");
}

#[test]
fn sigkilled_worker_is_replaced_while_the_other_keeps_serving() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let addr = s.addr().unwrap();
    let before = workers(&s.status().unwrap());
    let victim = before[0].pid;
    let clients = 4;
    let load = Load::start(
        addr,
        "/",
        clients,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let after = wait_for(Duration::from_secs(10), "a replacement worker", || {
        let ws = workers(&s.status().ok()?);
        (ws.len() == 2 && ws.iter().all(|w| w.state == "ready" && w.pid != victim)).then_some(ws)
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    let replaced = after.iter().find(|w| w.slot == before[0].slot).unwrap();
    assert_eq!(replaced.restarts, 1);
    // Only requests in flight on the killed worker may fail: at most one per client.
    assert!(
        report.failed <= (2 * clients) as u64,
        "{} failed: {:?}",
        report.failed,
        report.errors
    );
    assert!(report.ok > 100, "{report:?}");
    assert!(
        report.by_pid.contains_key(&replaced.pid.to_string()),
        "replacement never answered: {:?}",
        report.by_pid
    );
}

#[test]
fn crashing_worker_is_backed_off_not_restarted_in_a_loop() {
    let s = Supervisor::spawn(
        "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"exit 3\"]\ninstances = 1\n\
         [app.restart]\nbackoff_initial = \"100ms\"\nbackoff_max = \"2s\"\nmax_restarts = 3\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let v = s.status().unwrap();
    let waiting = v["apps"][0]["waiting"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let restarts = waiting
        .first()
        .map(|w| w["restarts"].as_u64().unwrap_or(0))
        .or_else(|| workers(&v).first().map(|w| w.restarts))
        .unwrap();
    // 100 + 200 + 400 + 800 + 1600 ms: about 5 starts in 3 s, not hundreds.
    assert!(
        (3..=7).contains(&restarts),
        "restarts in 3 s: {restarts}\n{}",
        s.log_text()
    );
    let v = wait_for(Duration::from_secs(5), "crash-loop state", || {
        let v = s.status().ok()?;
        v["apps"][0]["waiting"]
            .as_array()?
            .iter()
            .any(|w| w["state"] == "crash-loop")
            .then_some(v)
    })
    .unwrap();
    assert!(
        v["apps"][0]["waiting"][0]["last_exit"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{v}"
    );
    let text = s.cli(&["status"]).unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("crash-loop"));
}

fn assert_all_gone(pgids: &[i32]) {
    wait_for(
        Duration::from_secs(5),
        "every worker process to be gone",
        || {
            pgids
                .iter()
                .all(|&g| group_members(g).is_empty())
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: left {:?}",
            pgids
                .iter()
                .flat_map(|&g| group_members(g))
                .collect::<Vec<_>>()
        )
    });
}

/// Workers that also fork a child of their own (a grandchild of the supervisor).
const WITH_GRANDCHILD: &str = "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 300 & exec {demo}\"]\ninstances = 2\nkill_timeout = \"3s\"\n";

#[test]
fn stop_command_leaves_no_process_behind() {
    let mut s = Supervisor::start(WITH_GRANDCHILD, 2).unwrap();
    let pgids: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    assert!(
        pgids.iter().all(|&g| group_members(g).len() == 2),
        "worker + its sleep child"
    );
    let out = s.cli(&["stop"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    assert_all_gone(&pgids);
    assert!(
        !s.dir.path().join("control.sock").exists(),
        "control socket removed"
    );
}

#[test]
fn sigterm_stops_everything_gracefully() {
    let mut s = Supervisor::start(WITH_GRANDCHILD, 2).unwrap();
    let pgids: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    assert_all_gone(&pgids);
    let log = s.log_text();
    assert!(
        log.contains("draining (SIGTERM)") && log.contains("exit code 0"),
        "{log}"
    );
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_worker_behind() {
    let mut s = Supervisor::start(DEMO2, 2).unwrap();
    let pids: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    s.signal(libc::SIGKILL);
    let _ = s.wait_exit(Duration::from_secs(5)).unwrap();
    wait_for(
        Duration::from_secs(5),
        "workers to die with the supervisor",
        || pids.iter().all(|&p| !alive(p)).then_some(()),
    )
    .unwrap();
}

fn start_fails(body: &str) -> String {
    let mut s = Supervisor::spawn(body).unwrap();
    let code = s.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(1), "must exit non-zero");
    assert!(
        !s.dir.path().join("control.sock").exists(),
        "nothing left behind"
    );
    s.log_text()
}

#[test]
fn bad_configs_fail_naming_the_key_and_start_nothing() {
    let log = start_fails("[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\nkill_timout = \"1s\"\n");
    assert!(
        log.contains("app[0].kill_timout") && log.contains("did you mean `kill_timeout`?"),
        "{log}"
    );
    let log = start_fails("[[app]]\nname = \"demo\"\ncommand = \"/no/such/program\"\n");
    assert!(
        log.contains("app[0].command") && log.contains("/no/such/program"),
        "{log}"
    );
    let log =
        start_fails("[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\nready_timeout = \"soon\"\n");
    assert!(
        log.contains("app[0].ready_timeout") && log.contains("invalid duration"),
        "{log}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let log = start_fails(&format!(
        "[[app]]\nname = \"demo\"\ncommand = \"{{demo}}\"\n[[app.listen]]\naddress = \"127.0.0.1:{port}\"\n"
    ));
    assert!(
        log.contains("app[0].listen[0].address")
            && log.contains(&port.to_string())
            && log.contains("in use"),
        "{log}"
    );
    assert!(
        !log.contains("worker started"),
        "no worker may start: {log}"
    );
}

#[test]
fn second_start_on_the_same_control_socket_is_refused() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let out = e2e::run_with_deadline(
        std::process::Command::new(bin("supervisor"))
            .args(["start", "-c"])
            .arg(&s.config),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another supervisor is running"), "{err}");
    // The first one is untouched.
    s.wait_ready(2, Duration::from_secs(5)).unwrap();
}

#[test]
fn status_json_matches_the_processes() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let v = s.status().unwrap();
    assert_eq!(v["supervisor"]["pid"].as_i64().unwrap() as i32, s.pid());
    assert_eq!(v["apps"][0]["generation"], 1);
    let ws = workers(&v);
    assert_eq!(ws.iter().map(|w| w.slot).collect::<Vec<_>>(), vec![0, 1]);
    for w in &ws {
        assert!(alive(w.pid));
        let exe = std::fs::read_link(format!("/proc/{}/exe", w.pid)).unwrap();
        assert_eq!(exe, bin("demo-app"));
        let env = std::fs::read(format!("/proc/{}/environ", w.pid)).unwrap();
        let env = String::from_utf8_lossy(&env);
        assert!(
            env.split('\0')
                .any(|e| e == format!("LISTEN_PID={}", w.pid)),
            "LISTEN_PID is the worker's own pid"
        );
        assert!(env.split('\0').any(|e| e == "LISTEN_FDS=1"));
        assert!(env.split('\0').any(|e| e == "LISTEN_FDNAMES=http"));
        assert!(
            env.split('\0')
                .any(|e| e == format!("SUPERVISOR_WORKER_ID={}", w.slot))
        );
        // The listening socket is fd 3 in the worker.
        let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", w.pid)).unwrap();
        assert!(fd3.to_string_lossy().starts_with("socket:"), "{fd3:?}");
    }
    let rss = v["apps"][0]["workers"][0]["process"]["rss_bytes"]
        .as_u64()
        .unwrap();
    assert!(rss > 100_000, "memory from /proc: {rss}");
    let addr = s.addr().unwrap();
    let (code, body) = get(addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        ws.iter().any(|w| body.contains(&format!("pid={}", w.pid))),
        "{body}"
    );
    let table = String::from_utf8_lossy(&s.cli(&["status"]).unwrap().stdout).to_string();
    for w in &ws {
        assert!(table.contains(&w.pid.to_string()), "{table}");
    }
}

#[test]
fn worker_output_is_prefixed_with_name_and_pid() {
    let s = Supervisor::start("[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo hello from $$; exec {demo}\"]\ninstances = 1\n", 1).unwrap();
    let pid = workers(&s.status().unwrap())[0].pid;
    let log = wait_for(
        Duration::from_secs(5),
        "the worker's line in the log",
        || {
            let log = s.log_text();
            log.contains(&format!("hello from {pid}")).then_some(log)
        },
    )
    .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("hello from {pid}")))
        .unwrap();
    assert!(line.contains("demo.0") || line.contains("sh.0"), "{line}");
    assert!(line.contains(&format!("pid={pid}")), "{line}");
}

#[test]
fn ipv6_and_unix_socket_listeners_are_passed_in_order() {
    use std::io::{Read, Write};
    let body = "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 1\n\
                [[app.listen]]\nname = \"v6\"\naddress = \"[::1]:0\"\n[[app.listen]]\nname = \"local\"\npath = \"app.sock\"\n";
    let s = Supervisor::start(body, 1).unwrap();
    let v = s.status().unwrap();
    assert_eq!(v["apps"][0]["listeners"][0]["name"], "v6");
    assert_eq!(v["apps"][0]["listeners"][1]["fd"], 4);
    let addr: std::net::SocketAddr = v["apps"][0]["listeners"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(addr.is_ipv6());
    let (code, _) = get(addr, "/healthz").unwrap();
    assert_eq!(code, 200);
    let path = s.dir.path().join("app.sock");
    let mut u = std::os::unix::net::UnixStream::connect(&path).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        u,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    u.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let pid = workers(&v)[0].pid;
    let env = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .to_string();
    assert!(
        env.split('\0').any(|e| e == "LISTEN_FDNAMES=v6:local"),
        "{env}"
    );
}

#[test]
fn second_sigint_kills_workers_that_ignore_sigterm_at_once() {
    let stubborn = "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM INT; while true; do sleep 1; done\"]\n\
                    instances = 2\nreadiness = \"exec\"\nkill_timeout = \"60s\"\n";
    let mut s = Supervisor::start(stubborn, 2).unwrap();
    let pgids: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    s.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pgids.iter().all(|&g| !group_members(g).is_empty()),
        "first SIGINT: graceful, they ignore it"
    );
    s.signal(libc::SIGINT);
    assert_eq!(
        s.wait_exit(Duration::from_secs(5)).unwrap(),
        Some(0),
        "second SIGINT: fast stop"
    );
    assert_all_gone(&pgids);
}

/// User + system CPU ticks of `pid`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    f[0] + f[1]
}

#[test]
fn control_socket_at_the_fd_limit_backs_off_and_recovers() {
    let s = Supervisor::start(
        "[[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 1\nkill_timeout = \"5s\"\n",
        1,
    )
    .unwrap();
    let pid = s.pid();
    let victim = workers(&s.status().unwrap())[0].pid;
    let sock = s.dir.path().join("control.sock");
    // EMFILE is about fd numbers: a new fd takes the lowest free number, and fails when that is
    // at or above the limit. Set the limit so exactly 16 numbers are free below it: room for a
    // worker restart (pipes, notify socket, pidfd, and the child's own copies before exec) once
    // the clients are gone, but not for the clients below.
    let limit_with_free = |free: usize| {
        let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        (0u64..)
            .filter(|n| !open.contains(n))
            .nth(free - 1)
            .unwrap()
            + 1
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child, reading into a valid rlimit struct.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    limit.rlim_cur = limit_with_free(16);
    // SAFETY: prlimit on our own child with a valid rlimit struct.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // More clients than free fds: the first ones are accepted and sit idle, every one after them
    // makes accept fail with EMFILE while it waits in the backlog.
    let clients: Vec<_> = (0..40)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - t0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 100 < hz * 20,
        "supervisor used {used} ticks of {hz} in 1 s at the fd limit (spinning on accept?)"
    );
    let log = s.log_text();
    assert_eq!(
        log.matches("accept failed").count(),
        1,
        "the accept error is logged once per episode: {log}"
    );
    // Once the clients are gone (and the idle ones dropped), fds are free again: status answers
    // and a killed worker is replaced, the limit still as tight.
    drop(clients);
    wait_for(
        Duration::from_secs(15),
        "status at the tight fd limit",
        || s.status().ok(),
    )
    .unwrap();
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_for(Duration::from_secs(15), "a replacement worker", || {
        let ws = workers(&s.status().ok()?);
        (ws.len() == 1 && ws[0].state == "ready" && ws[0].pid != victim).then_some(())
    })
    .unwrap_or_else(|e| {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| {
                    let e = e.ok()?;
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some(format!(
                        "{} -> {}",
                        e.file_name().to_str()?,
                        target.display()
                    ))
                })
                .collect()
            })
            .unwrap_or_default();
        panic!(
            "{e} (limit {}; open fds: {fds:?}): {}",
            limit.rlim_cur,
            s.log_text()
        )
    });
    assert!(s.log_text().contains("accepting again"), "{}", s.log_text());
}

#[test]
fn status_counts_the_workers_whole_process_group() {
    // The worker (sh) does nothing itself; the child it forked burns a core: what gunicorn's
    // arbiter and its workers look like.
    let s = Supervisor::start(
        "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"while :; do :; done & wait\"]\n\
         readiness = \"exec\"\ninstances = 1\nkill_timeout = \"1s\"\n",
        1,
    )
    .unwrap();
    let first = workers(&s.status().unwrap())[0].pid;
    std::thread::sleep(Duration::from_secs(1));
    let v = s.status().unwrap();
    let w = &v["apps"][0]["workers"][0];
    assert_eq!(w["process"]["pid"].as_i64(), Some(i64::from(first)));
    let cpu = w["process"]["cpu_percent"].as_f64().unwrap();
    assert!(
        cpu > 30.0,
        "the busy child's cpu counts for its worker: {w}"
    );
    assert!(group_members(first).len() >= 2, "sh and its child");
    let own_rss = std::fs::read_to_string(format!("/proc/{first}/statm")).unwrap();
    let own_pages: u64 = own_rss.split_whitespace().nth(1).unwrap().parse().unwrap();
    let rss = w["process"]["rss_bytes"].as_u64().unwrap();
    assert!(
        rss > own_pages * 4096,
        "the child's memory counts: {rss} bytes: {w}"
    );
}

/// Opens a keep-alive connection, asks `/` on it and keeps it: the connection and the pid of the
/// worker that answered (the demo app says `pid=N`).
fn held_connection(addr: std::net::SocketAddr) -> (std::net::TcpStream, i32) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The whole response: its headers, then Content-Length bytes of body.
    let body = loop {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("Content-Length");
        if body.len() >= len {
            break body.to_string();
        }
    };
    let pid = body
        .split("pid=")
        .nth(1)
        .and_then(|p| {
            p.split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pid in {body}"));
    (c, pid)
}

#[test]
fn status_counts_each_workers_connections_and_shows_the_balance() {
    for balance in ["shared", "spread"] {
        counts_connections(balance);
    }
}

/// 7 keep-alive connections held open to a demo app with 2 workers and `balance`: each worker's
/// count in `status` is the number of them it answered, then 0 once they are closed.
fn counts_connections(balance: &str) {
    let config = if balance == "shared" {
        DEMO2.to_string() // the default
    } else {
        format!("{DEMO2}balance = \"{balance}\"\n")
    };
    let s = Supervisor::start(&config, 2).unwrap();
    let addr = s.addr().unwrap();
    let held: Vec<(std::net::TcpStream, i32)> = (0..7).map(|_| held_connection(addr)).collect();
    let mut expected = std::collections::BTreeMap::new();
    for (_, pid) in &held {
        *expected.entry(*pid).or_insert(0u64) += 1;
    }
    let v = s.status().unwrap();
    assert_eq!(v["apps"][0]["balance"], balance);
    let counted: std::collections::BTreeMap<i32, u64> = v["apps"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let pid = w["process"]["pid"].as_i64().unwrap() as i32;
            let n = w["connections"].as_u64();
            (pid, n.unwrap_or_else(|| panic!("not counted: {w}")))
        })
        .collect();
    assert_eq!(counted.values().sum::<u64>(), 7, "{counted:?}");
    for (pid, n) in &counted {
        assert_eq!(
            expected.get(pid).copied().unwrap_or(0),
            *n,
            "worker {pid}: answered on {expected:?}, counted {counted:?}"
        );
    }
    let table = String::from_utf8_lossy(&s.cli(&["status"]).unwrap().stdout).to_string();
    assert!(table.contains(&format!("balance {balance}")), "{table}");
    assert!(table.contains("conns"), "{table}");
    // Closed by the clients: counted no more.
    drop(held);
    wait_for(Duration::from_secs(10), "no connection left", || {
        let v = s.status().ok()?;
        let left: u64 = v["apps"][0]["workers"]
            .as_array()?
            .iter()
            .filter_map(|w| w["connections"].as_u64())
            .sum();
        (left == 0).then_some(())
    })
    .unwrap();
}
