//! The system side of an in-place upgrade: the handover document in a memfd (not close-on-exec),
//! clearing `FD_CLOEXEC` on exactly the descriptors handed over, the preflight run of the new
//! binary (with a deadline), `execve` itself (which keeps the pid), and, in the new process,
//! taking ownership of what was inherited.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::PREFLIGHT_TIMEOUT;
use super::handover::{HandoverState, STATE_VERSION, StateError};
use crate::orphans::{OwnChildren, OwnKind};

/// Writes `text` to a new memfd (not close-on-exec: it is handed over) and rewinds it.
pub fn write_memfd(text: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"supervisor-state".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// Reads the whole state from the inherited descriptor `fd` and closes it.
pub fn read_state_fd(fd: RawFd) -> Result<HandoverState, StateError> {
    let mut text = String::new();
    // SAFETY: `fd` is the memfd the previous binary handed over (its number came on our command
    // line); nothing else in this process owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.read_to_string(&mut text)?;
    HandoverState::from_json(&text)
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl F_GETFD/F_SETFD on a descriptor number; an invalid one fails with EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Replaces this process with `binary args...` (same pid), `fds` inherited: clears their
/// `FD_CLOEXEC`, then `execve`. Only returns on failure, with every flag restored. Call from
/// the main thread (the workers' parent-death signal is tied to the thread that forked them,
/// and `execve` keeps the calling thread).
pub fn exec(binary: &Path, args: &[String], fds: &[RawFd]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut cleared = Vec::with_capacity(fds.len());
    for &fd in fds {
        if let Err(e) = set_cloexec(fd, false) {
            restore(&cleared);
            return std::io::Error::new(e.kind(), format!("fd {fd}: {e}"));
        }
        cleared.push(fd);
    }
    // std's exec resets SIGPIPE to its default and empties the signal mask before execve, as
    // for a child: after a failed execve this process must ignore SIGPIPE again (a write to a
    // control client that went away would kill it), with the mask it had.
    let saved = SignalState::save();
    let e = std::process::Command::new(binary).args(args).exec();
    if let Some(saved) = saved {
        saved.restore();
    }
    restore(&cleared);
    e
}

/// The SIGPIPE disposition and the signal mask of the calling thread.
struct SignalState {
    sigpipe: libc::sigaction,
    mask: libc::sigset_t,
}

impl SignalState {
    fn save() -> Option<SignalState> {
        // SAFETY: sigaction and pthread_sigmask with null new values only read the current
        // state into the zeroed out-parameters.
        unsafe {
            let mut sigpipe: libc::sigaction = std::mem::zeroed();
            let mut mask: libc::sigset_t = std::mem::zeroed();
            if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut sigpipe) != 0
                || libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut mask) != 0
            {
                return None;
            }
            Some(SignalState { sigpipe, mask })
        }
    }

    fn restore(&self) {
        // SAFETY: sets back exactly what `save` read.
        unsafe {
            libc::sigaction(libc::SIGPIPE, &self.sigpipe, std::ptr::null_mut());
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut());
        }
    }
}

fn restore(fds: &[RawFd]) {
    for &fd in fds {
        let _ = set_cloexec(fd, true);
    }
}

/// Runs `binary upgrade-preflight -c config --state-version V` with a deadline: `Ok` with what
/// it printed when it exited 0, else why not.
/// The child is listed in `children` while it runs (the sweep of adopted orphans leaves it
/// alone).
pub async fn preflight(
    binary: PathBuf,
    config: PathBuf,
    children: OwnChildren,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.arg("upgrade-preflight")
        .arg("-c")
        .arg(&config)
        .arg("--state-version")
        .arg(STATE_VERSION.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let listed = child
        .id()
        .map(|pid| children.register(pid as i32, OwnKind::Preflight));
    let out = tokio::time::timeout(PREFLIGHT_TIMEOUT, child.wait_with_output()).await;
    drop(listed);
    let out = match out {
        Err(_) => {
            return Err(format!(
                "{} upgrade-preflight did not finish within {}",
                binary.display(),
                crate::units::span(PREFLIGHT_TIMEOUT)
            ));
        }
        Ok(Err(e)) => return Err(format!("{} upgrade-preflight: {e}", binary.display())),
        Ok(Ok(out)) => out,
    };
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(said(&out.stdout))
    } else {
        let mut why = said(&out.stderr);
        if why.is_empty() {
            why = said(&out.stdout);
        }
        Err(format!(
            "{} upgrade-preflight failed ({}){}",
            binary.display(),
            out.status,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.chars().take(500).collect::<String>())
            }
        ))
    }
}

/// Takes ownership of an inherited descriptor named in the state.
///
/// # Safety
/// `fd` must be a descriptor handed over by the previous binary and owned by nothing else.
pub unsafe fn inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec again: workers and job commands must not inherit it.
    let _ = set_cloexec(owned.as_raw_fd(), true);
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memfd_holds_the_state_and_is_inherited() {
        let fd = write_memfd(crate::upgrade::handover::tests::V1).unwrap();
        // SAFETY: F_GETFD on the fd just created.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, 0, "not close-on-exec");
        set_cloexec(fd.as_raw_fd(), true).unwrap();
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let back = read_state_fd(raw).unwrap();
        assert_eq!(back.upgrades, 1);
    }

    #[test]
    fn a_failed_execve_restores_close_on_exec_and_returns() {
        let fd = write_memfd("{}").unwrap();
        set_cloexec(fd.as_raw_fd(), true).unwrap();
        let e = exec(
            Path::new("/nonexistent/supervisor"),
            &["start".into()],
            &[fd.as_raw_fd()],
        );
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        // SAFETY: F_GETFD on our own fd.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "close-on-exec again");
        // SAFETY: reading the SIGPIPE disposition into a zeroed out-parameter.
        let sigpipe = unsafe {
            let mut a: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut a);
            a.sa_sigaction
        };
        assert_eq!(
            sigpipe,
            libc::SIG_IGN,
            "SIGPIPE ignored again, as Rust set it"
        );
        let e = exec(Path::new("/bin/true"), &[], &[-1]);
        assert!(e.to_string().contains("fd -1"), "{e}");
    }
}
