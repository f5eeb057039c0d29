//! Telling the supervisor about readiness: `READY=1` on `NOTIFY_SOCKET` (systemd protocol, via
//! the `sd-notify` crate) and a newline on `READY_FD` (s6 protocol). Both are no-ops when unset.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Reports readiness on every channel the environment offers, and closes `READY_FD`.
pub fn notify_ready() -> std::io::Result<()> {
    sd_notify::notify(false, &[sd_notify::NotifyState::Ready])?;
    if let Some(fd) = take_ready_fd() {
        // A supervisor that already saw READY=1 may have closed its end: ignore EPIPE.
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(b"\n");
    }
    Ok(())
}

/// Reports that the worker began draining (`STOPPING=1`).
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// Reports a free-form status line (`STATUS=...`), shown by `supervisor status`.
pub fn notify_status(text: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(text)]);
}

static READY_FD_TAKEN: AtomicBool = AtomicBool::new(false);

fn take_ready_fd() -> Option<std::os::fd::OwnedFd> {
    let fd: i32 = std::env::var("READY_FD").ok()?.parse().ok()?;
    if READY_FD_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: fcntl(F_GETFD) only queries the descriptor's flags.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open (checked above), was set up for this process by the supervisor, and
    // the flag above guarantees it is claimed only once.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
