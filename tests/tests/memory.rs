//! Memory recycling (`max_memory`), end to end: a worker whose memory grows past the limit is
//! replaced gracefully (the replacement is ready before the old worker gets SIGTERM), once, while
//! the workers below their limits keep running untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use e2e::{Supervisor, wait_for, workers};

/// A worker in Python: says READY=1 on `NOTIFY_SOCKET`, logs `app slot pid` to `started.log`,
/// drains on SIGTERM by writing `term-<pid>` and exiting 0. The first worker of `mem` slot 1 then
/// allocates (and touches) 60 MB, once: its replacement stays small. With
/// `REPLACEMENT=never-ready`, every worker started after that one never says READY=1.
const WORKER: &str = r#"
import os, signal, socket, sys
app, slot, pid = os.environ["SUPERVISOR_APP"], os.environ["SUPERVISOR_WORKER_ID"], os.getpid()
with open("started.log", "a") as f:
    f.write(f"{app} {slot} {pid}\n")
def term(*_):
    open(f"term-{pid}", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while os.environ.get("REPLACEMENT") == "never-ready" and os.path.exists("grown"):
    signal.pause()
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
blob = None
if app == "mem" and slot == "1" and not os.path.exists("grown"):
    with open("grown", "w") as f:
        f.write(str(pid))
    blob = b"x" * (60 * 1000 * 1000)
while True:
    signal.pause()
"#;

/// App `mem` (2 workers, max_memory 30 MB, `mem_keys` added) and app `steady` (1 worker,
/// max_memory 200 MB), both with a grace of 1 s.
fn config(mem_keys: &str) -> String {
    let app = |name: &str, instances: usize, max: &str, keys: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\ncommand = \"python3\"\nargs = [\"-c\", '''{WORKER}''']\n\
             instances = {instances}\nkill_timeout = \"5s\"\n\
             max_memory = \"{max}\"\nmax_memory_grace = \"1s\"\n{keys}\n"
        )
    };
    format!(
        "{}\n{}",
        app("mem", 2, "30MB", mem_keys),
        app("steady", 1, "200MB", "ready_timeout = \"10s\"")
    )
}

/// The pid of the worker that grew (once it did).
fn grown(s: &Supervisor) -> i32 {
    wait_for(Duration::from_secs(20), "mem.1 to grow", || {
        std::fs::read_to_string(s.dir.path().join("grown"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .unwrap()
}

/// `app slot pid` lines of every worker started so far.
fn started(s: &Supervisor) -> Vec<(String, u64, i32)> {
    std::fs::read_to_string(s.dir.path().join("started.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn a_worker_above_max_memory_is_replaced_gracefully_and_the_others_are_left_alone() {
    let s = Supervisor::spawn(&config("ready_timeout = \"10s\"")).unwrap();
    let grown = grown(&s);
    let v = wait_for(
        Duration::from_secs(30),
        "one memory recycle, settled",
        || {
            let v = s.status().ok()?;
            let ws = workers(&v);
            let settled = v["apps"][0]["memory_recycles"] == 1
                && ws.len() == 3
                && ws.iter().all(|w| w.state == "ready");
            settled.then_some(v)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let ws = workers(&v);
    let mem1 = ws.iter().find(|w| w.name == "mem.1").unwrap();
    assert_ne!(mem1.pid, grown, "a new worker serves slot 1");
    assert_eq!(mem1.generation, 1, "in the app's generation");
    assert_eq!(mem1.restarts, 0, "a replacement, not a crash restart");
    assert!(
        s.dir.path().join(format!("term-{grown}")).exists(),
        "the old worker was drained with SIGTERM"
    );
    assert_eq!(v["apps"][0]["max_memory"]["bytes"], 30_000_000, "{v}");
    assert_eq!(v["apps"][0]["memory_recycle_failures"], 0, "{v}");
    assert_eq!(v["apps"][1]["memory_recycles"], 0, "{v}");

    let log = s.log_text();
    let line = format!("mem.1 pid {grown} used ");
    assert!(
        log.lines().any(|l| l.contains(&line)
            && l.contains("> max_memory 30 MB for")
            && l.ends_with(": replacing it")),
        "{log}"
    );
    // The replacement was ready before the old worker was told to drain.
    let at = |what: &str, pid: i32| {
        let field = format!("pid={pid}");
        log.lines()
            .position(|l| l.contains(what) && l.split_whitespace().any(|t| t == field))
            .unwrap_or_else(|| panic!("no {what:?} line for pid {pid}: {log}"))
    };
    assert!(
        at("worker ready", mem1.pid) < at("draining (SIGTERM)", grown),
        "{log}"
    );

    let (ok, text) = s.cli_text(&["status", "mem"]).unwrap();
    assert!(
        ok && text.contains("max_memory 30 MB (grace 1s): recycled 1 (memory)"),
        "{text}"
    );

    // A few more samples: the workers below their limits (mem.0, steady.0, and mem.1's small
    // replacement) are never replaced.
    std::thread::sleep(Duration::from_secs(3));
    let all = started(&s);
    assert_eq!(all.len(), 4, "mem 0, mem 1 twice, steady 0: {all:?}");
    let v = s.status().unwrap();
    assert_eq!(v["apps"][0]["memory_recycles"], 1);
    let now: Vec<i32> = workers(&v).iter().map(|w| w.pid).collect();
    for (app, slot, pid) in &all {
        let replaced = app == "mem" && *slot == 1 && *pid == grown;
        assert_eq!(now.contains(pid), !replaced, "{app}.{slot} pid {pid}: {v}");
    }
}

#[test]
fn a_replacement_that_never_gets_ready_leaves_the_old_worker_serving_and_is_retried() {
    let s = Supervisor::spawn(&config(
        "ready_timeout = \"1s\"\nenv = { REPLACEMENT = \"never-ready\" }",
    ))
    .unwrap();
    let grown = grown(&s);
    // Above from about 1 s: a replacement after the 1 s grace, not ready within 1 s; another
    // grace, a second one.
    let v = wait_for(Duration::from_secs(30), "two failed replacements", || {
        let v = s.status().ok()?;
        (v["apps"][0]["memory_recycle_failures"].as_u64()? >= 2).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(v["apps"][0]["memory_recycles"], 0, "{v}");
    let mem1: Vec<_> = workers(&v)
        .into_iter()
        .filter(|w| w.name == "mem.1" && w.state == "ready")
        .collect();
    assert_eq!(mem1.len(), 1, "{v}");
    assert_eq!(mem1[0].pid, grown, "the old worker keeps serving: {v}");
    assert!(!s.dir.path().join(format!("term-{grown}")).exists());
    let log = s.log_text();
    assert!(
        log.contains("replacement for memory failed: new worker mem.1")
            && log.contains("was not ready within 1s; the worker keeps serving"),
        "{log}"
    );
    // Each failed replacement was drained with SIGTERM, like a new worker of an aborted reload.
    let attempts: Vec<i32> = started(&s)
        .into_iter()
        .filter(|(app, slot, pid)| app == "mem" && *slot == 1 && *pid != grown)
        .map(|(_, _, pid)| pid)
        .collect();
    assert!(attempts.len() >= 2, "{attempts:?}");
    wait_for(
        Duration::from_secs(10),
        "the failed replacements to drain",
        || {
            attempts[..2]
                .iter()
                .all(|pid| s.dir.path().join(format!("term-{pid}")).exists())
                .then_some(())
        },
    )
    .unwrap();
}
