//! Starting the supervisor in the background (`start -d`): the same binary run with
//! `start ... --ready-fd N` in a session of its own (no controlling terminal: closing the
//! terminal does not reach it), stdin from `/dev/null`, stdout and stderr appended to its log
//! file, and the write end of a pipe at fd N on which it reports its first ready.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A supervisor started in the background.
#[derive(Debug)]
pub struct Detached {
    /// The process (our child until we exit; then init's, or a subreaper's).
    pub child: Child,
    /// The read end of its ready pipe: a line once every app is ready, end of file when the
    /// start failed.
    pub ready: OwnedFd,
}

/// Set in the environment of a supervisor started by `start -d`, to the path of its own log,
/// `supervisor.log` (it rotates that file, and does not copy its workers' lines into it, as
/// their files have them).
pub const DETACHED_VAR: &str = "SUPERVISOR_DETACHED";

/// Runs `program args... --ready-fd N` detached, its output appended to `log` (the file open at
/// `log_path`).
pub fn spawn(
    program: &Path,
    args: &[&OsStr],
    log_path: &Path,
    log: &File,
) -> std::io::Result<Detached> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints; O_CLOEXEC so no other child inherits them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors; nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg("--ready-fd")
        .arg(write_fd.to_string())
        .env(DETACHED_VAR, log_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid and
    // fcntl, both async-signal-safe; it touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The write end survives exec (the child's only inherited descriptor besides 0-2).
            if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(write);
    Ok(Detached { child, ready: read })
}

/// Asks the detached supervisor `pid` (our child, not reaped yet) to stop: SIGTERM.
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) on the pid of a child of ours that we have not reaped: no other process
    // can have that pid yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// Points this process's stdout and stderr at `file` (the supervisor's own log, opened again
/// or anew after a rotation): what is written to them from now on, a panic message included,
/// goes there.
pub fn redirect_output(file: &File) -> std::io::Result<()> {
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 on a descriptor `file` owns and a standard descriptor number; it touches
        // no memory, and the descriptor it replaces is the process's own stdout or stderr.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The ready pipe a detached supervisor was given (`--ready-fd N`), made close-on-exec so
/// that no worker inherits it (the parent sees end of file only when this process closes it).
pub fn ready_pipe(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor number only queries or sets its flags; an invalid one
    // fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is valid (fcntl succeeded) and was handed to this process for it
    // alone by `start -d`; nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_gets_its_own_session_and_the_pipe_at_the_fd_it_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("log")).unwrap();
        // The "supervisor": says its session id and writes a line to the fd it is given.
        let script = "echo sid=$(ps -o sid= -p $$ | tr -d ' ') pid=$$; echo ready >&$2";
        let words = ["-c", script, "sh"];
        let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
        let mut d = spawn(Path::new("/bin/sh"), &args, &dir.path().join("log"), &log).unwrap();
        let mut line = String::new();
        use std::io::Read;
        File::from(d.ready).read_to_string(&mut line).unwrap();
        assert_eq!(line, "ready\n", "the line, then end of file");
        assert!(d.child.wait().unwrap().success());
        let out = std::fs::read_to_string(dir.path().join("log")).unwrap();
        let pid = d.child.id();
        assert!(
            out.contains(&format!("sid={pid} pid={pid}")),
            "a session leader: {out}"
        );
    }
}
