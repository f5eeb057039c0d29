//! Orphans of workers: the supervisor is their child subreaper. A grandchild that left its
//! worker's process group (setsid) and was orphaned is killed when the supervisor stops; one that
//! exits is reaped (no zombie stays), and doing so never takes a worker's exit status.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use e2e::{Supervisor, alive, wait_for, workers};

/// (state, ppid, pgid) of a process, from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<String> = text
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
    ))
}

/// Zombie children of `parent`.
fn zombie_children(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| stat(*p).is_some_and(|(s, ppid, _)| s == 'Z' && ppid == parent))
        .collect()
}

/// The pids a worker wrote to `file` in the config's directory (one per line), once there are `n`.
fn pids_in(s: &Supervisor, file: &str, n: usize) -> Vec<i32> {
    let path = s.dir.path().join(file);
    wait_for(Duration::from_secs(10), file, || {
        let pids: Vec<i32> = std::fs::read_to_string(&path)
            .ok()?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (pids.len() >= n).then_some(pids)
    })
    .unwrap()
}

/// Kills what a test left behind, also when it fails.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                // SAFETY: kill(2) of a process this test's worker started (cleanup).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn a_grandchild_that_left_the_group_does_not_outlive_the_supervisor() {
    let mut s = Supervisor::start(
        "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"setsid sleep 1000 & echo $! >> escaped.pid; exec {demo}\"]\n\
         instances = 2\nkill_timeout = \"5s\"\n",
        2,
    )
    .unwrap();
    let escaped = pids_in(&s, "escaped.pid", 2);
    let _cleanup = KillOnDrop(escaped.clone());
    let worker_pids: Vec<i32> = workers(&s.status().unwrap())
        .iter()
        .map(|w| w.pid)
        .collect();
    for &pid in &escaped {
        let (_, _, pgid) = stat(pid).unwrap();
        assert!(
            !worker_pids.contains(&pgid),
            "{pid} left its worker's group (setsid), so the group kill misses it"
        );
    }
    let (ok, text) = s.cli_text(&["stop"]).unwrap();
    assert!(ok, "{text}");
    assert_eq!(s.wait_exit(Duration::from_secs(15)).unwrap(), Some(0));
    // Killed and reaped by the supervisor before it exited.
    let left: Vec<i32> = escaped.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "left running: {left:?}\n{}", s.log_text());
    assert!(
        s.log_text()
            .contains("killing the adopted processes left at stop"),
        "{}",
        s.log_text()
    );
}

#[test]
fn an_orphan_that_exits_is_reaped_and_workers_are_still_replaced() {
    let s = Supervisor::start(
        "[[app]]\nname = \"demo\"\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"(sleep 2 & echo $! >> orphan.pid); exec {demo}\"]\n\
         instances = 1\nkill_timeout = \"5s\"\n",
        1,
    )
    .unwrap();
    let sup = s.pid();
    let orphan = pids_in(&s, "orphan.pid", 1)[0];
    let _cleanup = KillOnDrop(vec![orphan]);
    // Its parent (the subshell) exited at once: the supervisor adopted it.
    let (_, ppid, _) = stat(orphan).expect("the orphan still sleeps");
    assert_eq!(ppid, sup, "adopted by the supervisor (child subreaper)");
    // It exits after 2 s: reaped, so /proc has no trace of it, not even a zombie.
    wait_for(Duration::from_secs(10), "the orphan to be reaped", || {
        stat(orphan).is_none().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", stat(orphan), s.log_text()));
    assert_eq!(zombie_children(sup), Vec::<i32>::new());

    // The worker's own exit still reaches the daemon through its pidfd: killed, it is replaced
    // and its status is the signal, not a status lost to the orphan reaper.
    let before = workers(&s.status().unwrap());
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(before[0].pid, libc::SIGKILL) };
    let after = wait_for(Duration::from_secs(10), "a replacement worker", || {
        let ws = workers(&s.status().ok()?);
        (ws.len() == 1 && ws[0].state == "ready" && ws[0].pid != before[0].pid).then_some(ws)
    })
    .unwrap();
    assert_eq!(after[0].restarts, 1);
    let log = s.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("worker exited unexpectedly") && l.contains("signal 9")),
        "{log}"
    );
    // The replacement's orphan is adopted and reaped as well.
    let second = pids_in(&s, "orphan.pid", 2)[1];
    let _cleanup2 = KillOnDrop(vec![second]);
    wait_for(
        Duration::from_secs(10),
        "the second orphan to be reaped",
        || stat(second).is_none().then_some(()),
    )
    .unwrap();
    assert_eq!(zombie_children(sup), Vec::<i32>::new());
}
