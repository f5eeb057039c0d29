//! Adopted orphans: what the supervisor does with children that are not workers. As child
//! subreaper (or PID 1) it inherits every orphaned descendant, e.g. a worker's child whose parent
//! died. A sweep (on `SIGCHLD` and after each worker exit) reaps those that exited and kills those
//! still in the process group of a worker that just exited; at stop every one left is killed and
//! reaped. Workers are never touched here: their exit goes through their pidfd. The decision is
//! [`plan`]; the system calls are [`crate::sys::reaper`]'s.

use std::time::{Duration, Instant};

use crate::sys::reaper::{self, Child};

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
