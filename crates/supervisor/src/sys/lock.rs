//! Advisory file locks (`flock`) taken without waiting: what tells a running supervisor's entry
//! in the list `supervisor ls` reads from one left by a supervisor that was killed.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Which lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Many holders (a reader checking that the owner still holds its lock).
    Shared,
    /// One holder (the owner, for as long as it runs).
    Exclusive,
}

/// Takes a lock on `file` without waiting: `Ok(false)` when someone else holds a conflicting
/// one. The lock goes with the open file (closed, or the process gone).
pub fn try_lock(file: &File, lock: Lock) -> std::io::Result<bool> {
    let kind = match lock {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
