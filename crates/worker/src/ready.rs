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

/// The watchdog period the supervisor (or systemd) gave this process (`WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is this process), if any.
pub fn watchdog_period() -> Option<std::time::Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| std::time::Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` four times per watchdog period from a task of the current tokio runtime,
/// so that a runtime that stops running its tasks (a deadlock, a blocked worker thread under
/// the current-thread runtime) stops the heartbeat and the supervisor replaces the worker. Does
/// nothing without a watchdog.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let period = watchdog_period()?;
    tracing::info!("watchdog: WATCHDOG=1 every {} ms", (period / 4).as_millis());
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(period / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }))
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
