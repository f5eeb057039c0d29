//! Every system call of the supervisor in one place: binding the listeners (and the
//! `SO_REUSEPORT` groups of sockets per worker slot, with their BPF program), fork/exec of a
//! worker, signals and exit through its pidfd, `/proc` for cpu and memory, the kernel's socket
//! diagnostics for connections, reaping adopted orphans, and the supervisor's own service
//! manager notifications. The rest of the crate asks
//! these modules; the core never calls them.

pub mod cgroup;
pub mod child;
pub mod connections;
pub mod detach;
pub mod listeners;
pub mod lock;
pub mod procstat;
pub mod reaper;
pub mod reuseport;
pub mod sdnotify;
pub mod sockdiag;
pub mod spawn;

/// Gives the memory freed by the allocator back to the system. After a reload settles, the
/// allocator otherwise keeps the high-water mark of every worker that was draining at once
/// (about 1 MB with 48 workers replaced back to back).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes no
    // pointers and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
