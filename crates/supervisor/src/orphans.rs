//! Adopted orphans: what the supervisor does with children that are not workers. As child
//! subreaper (or PID 1) it inherits every orphaned descendant, e.g. a worker's child whose parent
//! died. A sweep (on `SIGCHLD` and after each worker exit) reaps those that exited and kills those
//! still in the process group of a worker that just exited; at stop every one left is killed and
//! reaped. Workers are never touched here: their exit goes through their pidfd. Nor are the
//! shell's own children that are not workers ([`OwnChildren`]: `[[job]]` commands), each waited
//! for by whoever started it. The decision is [`plan`]; the system calls are
//! [`crate::sys::reaper`]'s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::sys::reaper::{self, Child};

/// The shell's own children that are not workers: `[[job]]` commands and the upgrade's
/// preflight run. Each is reaped by whoever started it (through its pidfd, like a worker), so the
/// sweep of adopted orphans must leave them alone (peek with `waitid(P_ALL, WNOWAIT)`, then reap
/// only pids that are neither workers nor listed here). One set per supervisor, made by the
/// daemon; a cheap handle: its clones share the set, and anyone holding one can list a pid (for
/// as long as it holds the [`Registration`]). Every change is counted on a watch channel, so the
/// daemon learns when, say, the last job command ended.
#[derive(Debug, Clone)]
pub struct OwnChildren(Arc<Listed>);

#[derive(Debug)]
struct Listed {
    pids: Mutex<BTreeMap<i32, OwnKind>>,
    changes: watch::Sender<u64>,
}

/// What an own child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnKind {
    /// A `[[job]]` command run.
    JobCommand,
    /// The new binary's preflight run during an upgrade.
    Preflight,
}

impl Default for OwnChildren {
    fn default() -> Self {
        OwnChildren(Arc::new(Listed {
            pids: Mutex::default(),
            changes: watch::Sender::new(0),
        }))
    }
}

impl OwnChildren {
    fn pids(&self) -> MutexGuard<'_, BTreeMap<i32, OwnKind>> {
        self.0.pids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.0.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Lists `pid` as a `kind` until the returned guard is dropped (drop it once the child is
    /// reaped).
    pub fn register(&self, pid: i32, kind: OwnKind) -> Registration {
        self.pids().insert(pid, kind);
        self.changed();
        Registration {
            children: self.clone(),
            pid,
        }
    }

    /// Whether `pid` is listed.
    pub fn contains(&self, pid: i32) -> bool {
        self.pids().contains_key(&pid)
    }

    /// The listed pids of one kind, in ascending order.
    pub fn pids_of(&self, kind: OwnKind) -> Vec<i32> {
        self.pids()
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Ticks on every change of the set.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.changes.subscribe()
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
        self.children.pids().remove(&self.pid);
        self.children.changed();
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
    fn own_children_are_one_set_shared_by_every_handle_and_unlisted_on_drop() {
        let children = OwnChildren::default();
        let mut changes = children.changes();
        let first = children.register(50, OwnKind::JobCommand);
        let second = children.clone().register(51, OwnKind::Preflight);
        let third = children.register(52, OwnKind::JobCommand);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(children.pids_of(OwnKind::JobCommand), vec![50, 52]);
        assert_eq!(children.pids_of(OwnKind::Preflight), vec![51]);
        drop(first);
        assert!(changes.has_changed().unwrap(), "an ended child is a change");
        assert!(!children.contains(50));
        assert!(children.contains(51) && children.contains(52));
        drop((second, third));
        assert!(children.pids_of(OwnKind::JobCommand).is_empty());
        assert!(!children.contains(51));
    }

    #[test]
    fn a_listed_child_is_left_alone_like_a_worker() {
        let children = OwnChildren::default();
        let _job = children.register(40, OwnKind::JobCommand);
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
