//! Adopted orphans: what the supervisor does with children that are not workers. As child
//! subreaper (or PID 1) it inherits every orphaned descendant, e.g. a worker's child whose parent
//! died. A sweep (on `SIGCHLD` and after each worker exit) reaps those that exited and kills those
//! still in the process group of a worker that just exited; at stop every one left is killed and
//! reaped. Workers are never touched here: their exit goes through their pidfd. Nor are the
//! shell's own children that are not workers ([`OwnChildren`]: `[[job]]` commands), each waited
//! for by whoever started it. The decision is [`plan`]; the system calls are
//! [`crate::sys::reaper`]'s.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys::reaper::{self, Child};

/// The pids of the shell's own children that are not workers (`[[job]]` commands): each is
/// reaped by whoever started it (through its pidfd, like a worker), so the sweep of adopted
/// orphans must leave them alone (peek with `waitid(P_ALL, WNOWAIT)`, then reap only pids that
/// are neither workers nor listed here). One set per supervisor, made by the daemon; a cheap
/// handle: its clones share the set, and anyone holding one can list a pid.
#[derive(Debug, Clone, Default)]
pub struct OwnChildren(Arc<Mutex<BTreeSet<i32>>>);

impl OwnChildren {
    fn set(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `pid` until [`OwnChildren::remove`]; `false` if it was listed already.
    pub fn insert(&self, pid: i32) -> bool {
        self.set().insert(pid)
    }

    /// Unlists `pid` (once it is reaped); `false` if it was not listed.
    pub fn remove(&self, pid: i32) -> bool {
        self.set().remove(&pid)
    }

    /// Lists `pid` until the returned guard is dropped (drop it once the child is reaped).
    pub fn register(&self, pid: i32) -> Registration {
        self.insert(pid);
        Registration {
            children: self.clone(),
            pid,
        }
    }

    /// Whether `pid` is listed.
    pub fn contains(&self, pid: i32) -> bool {
        self.set().contains(&pid)
    }

    /// The listed pids, in ascending order.
    pub fn pids(&self) -> Vec<i32> {
        self.set().iter().copied().collect()
    }
}

/// A pid listed in [`OwnChildren`] until this is dropped.
#[derive(Debug)]
#[must_use = "the pid is unlisted as soon as this is dropped"]
pub struct Registration {
    children: OwnChildren,
    pid: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.children.remove(self.pid);
    }
}

/// What to do with one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It exited: reap it.
    Reap(i32),
    /// Kill it (it is reaped by a later sweep).
    Kill(i32),
}

/// What to do with `children`: nothing with workers; reap every other zombie; kill the others
/// that are in `exited_group` (the process group of a worker that just exited), or all of them
/// when `everything` (the supervisor is about to exit).
pub fn plan(
    children: &[Child],
    is_worker: impl Fn(i32) -> bool,
    exited_group: Option<i32>,
    everything: bool,
) -> Vec<Step> {
    children
        .iter()
        .filter(|c| !is_worker(c.pid))
        .filter_map(|c| {
            if c.zombie {
                Some(Step::Reap(c.pid))
            } else if everything || exited_group == Some(c.pgid) {
                Some(Step::Kill(c.pid))
            } else {
                None
            }
        })
        .collect()
}

/// Carries out [`plan`] on the current children; returns how many non-worker children were
/// found.
pub fn sweep(
    is_worker: impl Fn(i32) -> bool,
    exited_group: Option<i32>,
    everything: bool,
) -> usize {
    let children = reaper::children();
    let steps = plan(&children, &is_worker, exited_group, everything);
    for step in &steps {
        match *step {
            Step::Reap(pid) => {
                if let Some(status) = reaper::reap(pid) {
                    tracing::debug!(
                        pid,
                        "reaped an adopted process ({})",
                        reaper::describe(status)
                    );
                }
            }
            Step::Kill(pid) => {
                tracing::info!(pid, "killing an adopted process left by a worker");
                reaper::kill(pid);
            }
        }
    }
    children.iter().filter(|c| !is_worker(c.pid)).count()
}

/// At exit: kills every adopted process still alive and reaps them all, for at most `timeout`
/// (a process stuck in the kernel cannot be waited for forever).
pub fn kill_all(is_worker: impl Fn(i32) -> bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut first = true;
    loop {
        let left = sweep(&is_worker, None, true);
        if left == 0 {
            return;
        }
        if first {
            tracing::info!(
                processes = left,
                "killing the adopted processes left at stop"
            );
            first = false;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                processes = left,
                "adopted processes not gone within {} ms of SIGKILL",
                timeout.as_millis()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_children_are_one_set_shared_by_every_handle() {
        let children = OwnChildren::default();
        let other = children.clone();
        assert!(children.insert(30));
        assert!(!other.insert(30), "listed once");
        assert!(other.insert(20));
        assert!(children.contains(30) && children.contains(20));
        assert!(!children.contains(40));
        assert_eq!(children.pids(), vec![20, 30]);
        assert!(other.remove(30));
        assert!(!children.remove(30), "unlisted once");
        assert!(!children.contains(30));
        assert_eq!(other.pids(), vec![20]);
    }

    #[test]
    fn a_registration_unlists_its_pid_when_dropped() {
        let children = OwnChildren::default();
        let first = children.register(50);
        let second = children.clone().register(51);
        assert_eq!(children.pids(), vec![50, 51]);
        drop(first);
        assert!(!children.contains(50));
        assert!(children.contains(51));
        drop(second);
        assert!(children.pids().is_empty());
    }

    #[test]
    fn a_listed_child_is_left_alone_like_a_worker() {
        let children = OwnChildren::default();
        let _job = children.register(40);
        let listed = [child(40, 40, true), child(41, 41, false)];
        assert_eq!(
            plan(&listed, |p| children.contains(p), None, true),
            vec![Step::Kill(41)]
        );
    }

    fn child(pid: i32, pgid: i32, zombie: bool) -> Child {
        Child { pid, pgid, zombie }
    }

    #[test]
    fn workers_are_never_reaped_or_killed_here() {
        let children = [child(10, 10, true), child(11, 11, false)];
        assert!(plan(&children, |p| p == 10 || p == 11, Some(10), true).is_empty());
    }

    #[test]
    fn zombies_are_reaped_and_live_orphans_left_alone_while_running() {
        let children = [
            child(10, 10, false),
            child(20, 10, true),
            child(21, 21, false),
        ];
        assert_eq!(
            plan(&children, |p| p == 10, None, false),
            vec![Step::Reap(20)]
        );
    }

    #[test]
    fn orphans_of_an_exited_workers_group_are_killed_others_kept() {
        let children = [
            child(20, 10, false), // was in worker 10's group
            child(21, 21, false), // left the group (setsid)
            child(22, 30, false), // another worker's
        ];
        assert_eq!(
            plan(&children, |p| p == 30, Some(10), false),
            vec![Step::Kill(20)]
        );
    }

    #[test]
    fn at_exit_every_non_worker_is_killed() {
        let children = [
            child(20, 10, false),
            child(21, 21, false),
            child(22, 22, true),
        ];
        assert_eq!(
            plan(&children, |_| false, None, true),
            vec![Step::Kill(20), Step::Kill(21), Step::Reap(22)]
        );
    }
}
