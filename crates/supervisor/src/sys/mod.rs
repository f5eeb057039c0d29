//! Every system call of the supervisor in one place: binding the listeners, fork/exec of a
//! worker, signals and exit through its pidfd, and `/proc` for cpu and memory. The rest of the
//! crate asks these modules; the core never calls them.

pub mod listeners;
pub mod process;
pub mod procstat;
pub mod spawn;
