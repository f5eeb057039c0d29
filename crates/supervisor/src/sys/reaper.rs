//! Adopted orphans, the system side: becoming the child subreaper, listing our own children
//! (pid, process group, zombie or not) from `/proc`, reaping one child by pid and killing one.
//! Never `waitpid(-1)`: a worker's exit status belongs to its pidfd watcher and the daemon.

/// One child process of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    /// Its pid.
    pub pid: i32,
    /// Its process group.
    pub pgid: i32,
    /// Whether it exited and waits to be reaped.
    pub zombie: bool,
}

/// Makes orphaned descendants (a worker's child whose parent died) children of the supervisor
/// instead of init's: `PR_SET_CHILD_SUBREAPER`. As PID 1 it already adopts every orphan: returns
/// `Ok(false)` without a call.
pub fn become_subreaper() -> std::io::Result<bool> {
    if std::process::id() == 1 {
        return Ok(false);
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag of this process; no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// The supervisor's children: from `/proc/self/task/*/children`, or by scanning every process's
/// parent when the kernel has no such file.
pub fn children() -> Vec<Child> {
    let mut pids = Vec::new();
    let mut found_files = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                found_files = true;
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !found_files {
        let me = std::process::id() as i32;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            pids.extend(
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|pid| stat(*pid).is_some_and(|s| s.ppid == me)),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .filter_map(|pid| {
            let s = stat(pid)?;
            Some(Child {
                pid,
                pgid: s.pgid,
                zombie: s.state == 'Z',
            })
        })
        .collect()
}

struct Stat {
    state: char,
    ppid: i32,
    pgid: i32,
}

/// State, parent and process group from `/proc/<pid>/stat` (after the command name, which may
/// hold spaces and parentheses).
fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = text.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgid })
}

/// Reaps child `pid` if it has exited; its wait status when it did.
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG; `status` is a valid out-parameter. The caller
    // passes only children that are not workers, so no worker's exit status is taken.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (rc == pid).then_some(status)
}

/// SIGKILL to child `pid`.
pub fn kill(pid: i32) {
    // SAFETY: kill(2) of our own child that has not been reaped: its pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A wait status in words: `exit code N` or `signal N`.
pub fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit code {}", libc::WEXITSTATUS(status))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    #[test]
    fn lists_reaps_and_kills_a_child_by_pid() {
        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mine = children().into_iter().find(|c| c.pid == pid).unwrap();
        assert!(!mine.zombie);
        assert_eq!(reap(pid), None, "still running");
        kill(pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(s) = reap(pid) {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "not reaped");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(describe(status), "signal 9");
        assert!(children().iter().all(|c| c.pid != pid));
        drop(child);
    }
}
