//! A started child, through its pidfd: signals that cannot hit a reused pid, the wait for its
//! exit (after which whatever is left of its process group is killed), and reaping.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::core::ExitStatus;

/// Sends `signal` to the child behind `pidfd`.
pub fn signal(pidfd: &OwnedFd, signal: libc::c_int) {
    // SAFETY: pidfd_send_signal on our child's pidfd: cannot hit a reused pid.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// Reaps the exited child behind `pidfd` (its pid may be reused from then on).
pub fn reap(pidfd: &OwnedFd) {
    let _ = wait_pidfd(pidfd, libc::WNOHANG);
}

/// SIGKILL to a process group.
pub fn kill_group(pgid: i32) {
    // SAFETY: plain kill(2) on a negative pid (a process group). The leader is our child and is
    // reaped only by the daemon after it processed the exit, so the id has not been reused.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// `signal` to a process group whose leader is our unreaped child (a `[[job]]` command).
pub fn signal_group(pgid: i32, signal: libc::c_int) {
    // SAFETY: plain kill(2) on a negative pid (a process group). The leader is our child, reaped
    // only after its exit was handled, so the id has not been reused.
    unsafe { libc::kill(-pgid, signal) };
}

/// waitid(2) on a pidfd; `None` if the child has not exited (with `WNOHANG`).
fn wait_pidfd(pidfd: &OwnedFd, flags: libc::c_int) -> Option<ExitStatus> {
    // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a pidfd of our own child; `info` is a valid out-parameter.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | flags,
        )
    };
    // SAFETY: reading si_pid of a siginfo filled by waitid (zero when nothing was reported).
    if rc != 0 || unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: waitid reported a child, so the SIGCHLD fields of the union are set.
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_KILLED | libc::CLD_DUMPED => ExitStatus::Signal(status),
        _ => ExitStatus::Code(status),
    })
}

/// Waits for the child to exit and kills whatever is left of its process group (no orphans).
/// The child stays a zombie (`WNOWAIT`) until the daemon reaps it, so its pid is not reused while
/// the daemon may still signal it.
pub async fn watch_exit(pid: i32, pidfd: Arc<OwnedFd>) -> ExitStatus {
    // SAFETY: the Arc keeps the pidfd open and unchanged for the AsyncFd's whole life (it owns a
    // clone of the Arc and nothing closes or replaces the fd while any clone exists).
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd.clone(), tokio::io::Interest::READABLE) };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await.map(|mut g| g.retain_ready());
        }
        Err(e) => {
            tracing::warn!(pid, "pidfd not pollable ({}); polling for exit", e);
            while wait_pidfd(&pidfd, libc::WNOHANG | libc::WNOWAIT).is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    kill_group(pid);
    wait_pidfd(&pidfd, libc::WNOWAIT).unwrap_or(ExitStatus::Code(-1))
}
