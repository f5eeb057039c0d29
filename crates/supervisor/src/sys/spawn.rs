//! Fork/exec of one worker: listeners at fd 3.., the notification fd after them, `LISTEN_*`
//! environment with `LISTEN_PID` written after fork, its own process group, a parent-death
//! signal, its resource limits and user ([`Confine`]), and a pidfd so the supervisor learns of
//! its exit without `SIGCHLD` or pid reuse races.
//!
//! Everything is allocated (and every user looked up) before `fork`; the child runs only
//! async-signal-safe calls, and raw system calls for its limits and credentials.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A system call in the supervisor failed (pipe, fork, pidfd_open).
    #[error("{call} failed: {cause}")]
    Sys {
        /// The failed call.
        call: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The child could not execute the program.
    #[error("cannot execute {program}: {cause}")]
    Exec {
        /// The program path.
        program: String,
        /// The error `execve` (or `chdir`) returned in the child.
        cause: std::io::Error,
    },
    /// The child could not take on its limits, user or directory before `execve`.
    #[error("cannot start {program}: {step} failed: {cause}")]
    Setup {
        /// The program path.
        program: String,
        /// What failed (`setuid(65534)`, `chdir(/srv/app)`).
        step: String,
        /// The error the call returned in the child.
        cause: std::io::Error,
    },
    /// An argument or environment entry contains a NUL byte.
    #[error("argument or environment entry contains a NUL byte: {0:?}")]
    Nul(String),
}

/// What to start.
#[derive(Debug)]
pub struct Exec<'a> {
    /// Absolute program path.
    pub program: &'a Path,
    /// argv[1..].
    pub args: &'a [String],
    /// Full environment (`LISTEN_PID` is added by `spawn`).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: &'a Path,
    /// Listening sockets, placed at fd 3, 4, ... in this order.
    pub listeners: Vec<BorrowedFd<'a>>,
    /// Its limits and user.
    pub confine: Confine,
}

/// What the child sets before `execve`, as numbers: its resource limits, then its groups, group
/// and user (in that order: the limits may need the privilege the user change drops).
#[derive(Debug, Clone, Default)]
pub struct Confine {
    /// `(name, resource, soft, hard)`, set with `prlimit64`.
    pub rlimits: Vec<(&'static str, libc::__rlimit_resource_t, u64, u64)>,
    /// The user to become, if any.
    pub creds: Option<Creds>,
    /// The app's `cgroup.procs`, open for writing: the child joins the cgroup (writes `0`)
    /// before it changes user.
    pub cgroup: Option<RawFd>,
}

impl Confine {
    /// What the config's `user`, `group` and `[app.rlimits]` ask for (the user only when the
    /// supervisor changes users: root), and the app's open `cgroup.procs`, if any.
    pub fn of(c: &crate::config::Confinement, cgroup: Option<RawFd>) -> Confine {
        Confine {
            rlimits: c
                .rlimits
                .iter()
                .map(|r| (r.resource.name(), r.resource.number(), r.soft, r.hard))
                .collect(),
            creds: c.user.as_ref().filter(|u| u.switch).map(|u| Creds {
                uid: u.uid,
                gid: u.gid,
                groups: u.groups.clone(),
            }),
            cgroup,
        }
    }
}

/// A user's ids: `setgroups(groups)`, `setresgid(gid)`, `setresuid(uid)`.
#[derive(Debug, Clone)]
pub struct Creds {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
}

/// What the child reports on the error pipe with the errno: which step failed.
const STAGE_EXEC: u32 = 0;
const STAGE_CHDIR: u32 = 1;
const STAGE_SETGROUPS: u32 = 2;
const STAGE_SETGID: u32 = 3;
const STAGE_SETUID: u32 = 4;
const STAGE_CGROUP: u32 = 5;
/// `STAGE_RLIMIT + i`: the `i`th limit.
const STAGE_RLIMIT: u32 = 16;

/// A started child.
#[derive(Debug)]
pub struct Child {
    /// Process id (also its process group id).
    pub pid: i32,
    /// pidfd: readable once the child has exited.
    pub pidfd: OwnedFd,
    /// Read end of the child's stdout.
    pub stdout: OwnedFd,
    /// Read end of the child's stderr.
    pub stderr: OwnedFd,
    /// Read end of the s6-style notification fd (the child has the write end at `READY_FD`).
    pub ready: OwnedFd,
}

fn sys(call: &'static str) -> SpawnError {
    SpawnError::Sys {
        call,
        cause: std::io::Error::last_os_error(),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints; O_CLOEXEC so no other child inherits them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(bytes).into_owned()))
}

/// The variables whose value is the worker's own pid, written after fork: `LISTEN_PID` (always)
/// and `WATCHDOG_PID` (when the environment has `WATCHDOG_USEC`), as systemd sets them.
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const WATCHDOG_PID_PREFIX: &[u8] = b"WATCHDOG_PID=";
/// The longest prefix plus room for any pid and the NUL.
const PID_VAR_LEN: usize = 13 + 20 + 1;

/// A `NAME=` prefix in a buffer with room for the pid.
fn pid_var(prefix: &[u8]) -> [u8; PID_VAR_LEN] {
    let mut buf = [0u8; PID_VAR_LEN];
    buf[..prefix.len()].copy_from_slice(prefix);
    buf
}

/// Writes `pid` as decimal after the `NAME=` prefix. Async-signal-safe: no allocation.
fn write_pid(buf: &mut [u8; PID_VAR_LEN], pid: i32) {
    let mut digits = [0u8; 20];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = buf.iter().position(|b| *b == b'=').map_or(0, |i| i + 1);
    for i in 0..len {
        buf[start + i] = digits[len - 1 - i];
    }
    buf[start + len] = 0;
}

/// Starts the program. The fd number of the notification pipe in the child is
/// `3 + listeners.len()`; the caller puts it in `READY_FD` beforehand.
pub fn spawn(cmd: Exec<'_>) -> Result<Child, SpawnError> {
    spawn_with(cmd, true)
}

/// Starts a program that is not a worker (a `[[job]]` command): the same process group,
/// parent-death signal, output pipes and pidfd as [`spawn`], but no notification fd (the child
/// gets nothing above fd 2 besides `cmd.listeners`; `Child::ready` only ever reads EOF).
pub fn spawn_plain(cmd: Exec<'_>) -> Result<Child, SpawnError> {
    spawn_with(cmd, false)
}

fn spawn_with(cmd: Exec<'_>, notify_fd: bool) -> Result<Child, SpawnError> {
    let program = cstring(cmd.program.as_os_str().as_bytes())?;
    let mut argv_c = vec![program.clone()];
    for a in cmd.args {
        argv_c.push(cstring(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());

    let env_c: Vec<CString> = cmd
        .env
        .iter()
        .filter(|(k, _)| k != "LISTEN_PID" && k != "WATCHDOG_PID")
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut listen_pid = pid_var(LISTEN_PID_PREFIX);
    let mut watchdog_pid = pid_var(WATCHDOG_PID_PREFIX);
    let watchdog = cmd.env.iter().any(|(k, _)| k == "WATCHDOG_USEC");
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(listen_pid.as_ptr().cast());
    if watchdog {
        envp.push(watchdog_pid.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let listen_pid_ptr: *mut [u8; PID_VAR_LEN] = &mut listen_pid;
    let watchdog_pid_ptr: *mut [u8; PID_VAR_LEN] = if watchdog {
        &mut watchdog_pid
    } else {
        std::ptr::null_mut()
    };

    let cwd = cstring(cmd.cwd.as_os_str().as_bytes())?;
    let devnull = cstring(OsStr::new("/dev/null").as_bytes())?;

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;

    let sources: Vec<RawFd> = cmd
        .listeners
        .iter()
        .map(|l| l.as_raw_fd())
        .chain(notify_fd.then(|| ready_w.as_raw_fd()))
        .collect();
    // fds >= this are outside the child's fixed layout
    let first_free = 3 + sources.len() as RawFd;
    let mut temps: Vec<RawFd> = vec![-1; sources.len()];
    let parent_pid = std::process::id() as libc::pid_t;

    // SAFETY: fork in a program that may have other threads. The child branch below calls only
    // async-signal-safe functions (setpgid, prctl, getppid, sigprocmask, signal, open, dup2, fcntl,
    // syscall(close_range), chdir, getpid, execve, write, _exit) and touches only memory
    // allocated before the fork; it never returns into Rust code that could allocate or lock.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork"));
    }
    if pid == 0 {
        // SAFETY: we are the child of the fork above; see the comment there. All pointers are to
        // buffers that stay alive (the parent's copies, duplicated by fork) until execve.
        unsafe {
            child_after_fork(ChildPlan {
                parent_pid,
                stdin: devnull.as_ptr(),
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
                exec_err: exec_w.as_raw_fd(),
                sources: &sources,
                temps: &mut temps,
                first_free,
                cwd: cwd.as_ptr(),
                program: program.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                listen_pid: listen_pid_ptr,
                watchdog_pid: watchdog_pid_ptr,
                confine: &cmd.confine,
            })
        }
    }

    // Parent.
    drop((out_w, err_w, ready_w, exec_w));
    let mut report = [0u8; 8];
    let n = read_full(&exec_r, &mut report);
    if n == 8 {
        // The child failed before or at execve and exits with 127: reap it now.
        let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
        let stage = u32::from_ne_bytes([s0, s1, s2, s3]);
        let cause = std::io::Error::from_raw_os_error(i32::from_ne_bytes([e0, e1, e2, e3]));
        let mut status = 0;
        // SAFETY: `pid` is our child; blocking wait is short since it is exiting.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(setup_error(&cmd, stage, cause));
    }
    // SAFETY: plain syscall with a pid of our own unreaped child (it cannot be reused meanwhile).
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = sys("pidfd_open");
        // SAFETY: `pid` is our child; kill and reap it so nothing is left half-started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(e);
    }
    // SAFETY: pidfd_open returned a new fd that we own; pidfds are created close-on-exec.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    Ok(Child {
        pid,
        pidfd,
        stdout: out_r,
        stderr: err_r,
        ready: ready_r,
    })
}

/// The error for a child that failed at `stage`.
fn setup_error(cmd: &Exec<'_>, stage: u32, cause: std::io::Error) -> SpawnError {
    let program = cmd.program.display().to_string();
    let creds = cmd.confine.creds.as_ref();
    let step = match stage {
        STAGE_EXEC => return SpawnError::Exec { program, cause },
        STAGE_CHDIR => format!("chdir({})", cmd.cwd.display()),
        STAGE_SETGROUPS => format!("setgroups({:?})", creds.map(|c| &c.groups)),
        STAGE_SETGID => format!("setgid({})", creds.map_or(0, |c| c.gid)),
        STAGE_SETUID => format!("setuid({})", creds.map_or(0, |c| c.uid)),
        STAGE_CGROUP => "joining the app's cgroup (cgroup.procs)".to_string(),
        n => match cmd
            .confine
            .rlimits
            .get(n.saturating_sub(STAGE_RLIMIT) as usize)
        {
            Some((name, _, soft, hard)) => format!(
                "setrlimit({name}, soft {}, hard {})",
                crate::config::show_limit(*soft),
                crate::config::show_limit(*hard)
            ),
            None => format!("step {n}"),
        },
    };
    SpawnError::Setup {
        program,
        step,
        cause,
    }
}

/// Reads until `buf` is full or EOF; returns the count (EINTR retried).
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of a valid buffer from an fd we own.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    got
}

/// Reports the failed step and errno on the exec-error pipe (one write of 8 bytes) and exits.
/// Async-signal-safe.
///
/// # Safety
/// Only for the child between fork and exec.
unsafe fn fail_at(err_fd: RawFd, stage: u32) -> ! {
    // SAFETY: errno location is thread-local and valid; write and _exit are async-signal-safe.
    unsafe {
        let errno = (*libc::__errno_location()).to_ne_bytes();
        let stage = stage.to_ne_bytes();
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&stage);
        bytes[4..].copy_from_slice(&errno);
        libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// [`fail_at`] the `execve` step (or an fd-layout step before it).
///
/// # Safety
/// Only for the child between fork and exec.
unsafe fn fail(err_fd: RawFd) -> ! {
    // SAFETY: the caller's contract is ours.
    unsafe { fail_at(err_fd, STAGE_EXEC) }
}

struct ChildPlan<'a> {
    parent_pid: libc::pid_t,
    stdin: *const libc::c_char,
    stdout: RawFd,
    stderr: RawFd,
    exec_err: RawFd,
    sources: &'a [RawFd],
    temps: &'a mut [RawFd],
    first_free: RawFd,
    cwd: *const libc::c_char,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    listen_pid: *mut [u8; PID_VAR_LEN],
    /// Null when the worker has no watchdog.
    watchdog_pid: *mut [u8; PID_VAR_LEN],
    confine: &'a Confine,
}

/// The child side between fork and exec. Never returns.
///
/// # Safety
/// Must be called only in the child right after `fork`; all pointers in `plan` must be valid.
unsafe fn child_after_fork(plan: ChildPlan<'_>) -> ! {
    // SAFETY: every call below is async-signal-safe and uses only memory prepared before fork.
    unsafe {
        // Keep the error pipe out of the way of the fd layout we are about to build.
        let exec_err = libc::fcntl(plan.exec_err, libc::F_DUPFD_CLOEXEC, plan.first_free);
        if exec_err < 0 {
            libc::_exit(127);
        }
        // The cgroup's `cgroup.procs` too: its number may be one of the layout's.
        let cgroup = match plan.confine.cgroup {
            Some(fd) => {
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, plan.first_free);
                if copy < 0 {
                    fail_at(exec_err, STAGE_CGROUP);
                }
                Some(copy)
            }
            None => None,
        };
        // Own process group: the supervisor can signal the worker and everything it forks.
        if libc::setpgid(0, 0) != 0 {
            fail(exec_err);
        }
        // Die with the supervisor, even if it is SIGKILLed.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(exec_err);
        }
        if libc::getppid() != plan.parent_pid {
            libc::_exit(1); // the supervisor died before prctl took effect
        }
        // Default signal state: Rust ignores SIGPIPE; an inherited mask would block signals.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        let null = libc::open(plan.stdin, libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 {
            fail(exec_err);
        }
        if libc::dup2(plan.stdout, 1) < 0 || libc::dup2(plan.stderr, 2) < 0 {
            fail(exec_err);
        }
        // Copy every cause above the layout first, then into place: a cause may sit on a
        // target number. dup2 clears close-on-exec on the targets; the copies keep it.
        for (i, &src) in plan.sources.iter().enumerate() {
            let t = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, plan.first_free);
            if t < 0 {
                fail(exec_err);
            }
            plan.temps[i] = t;
        }
        for (i, &t) in plan.temps.iter().enumerate() {
            if libc::dup2(t, 3 + i as RawFd) < 0 {
                fail(exec_err);
            }
        }
        // Belt and braces: nothing else the supervisor holds may leak into the worker.
        let first = (3 + plan.sources.len()) as libc::c_uint;
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );

        confine(plan.confine, cgroup, plan.parent_pid, exec_err);
        // As the worker's user: its directory must be its to enter.
        if libc::chdir(plan.cwd) != 0 {
            fail_at(exec_err, STAGE_CHDIR);
        }
        let pid = libc::getpid();
        write_pid(&mut *plan.listen_pid, pid);
        if !plan.watchdog_pid.is_null() {
            write_pid(&mut *plan.watchdog_pid, pid);
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(exec_err)
    }
}

/// Sets the child's limits, joins its app's cgroup (`cgroup`: the copy of `cgroup.procs` made
/// above the fd layout), then sets its groups, group and user, with raw system calls (glibc's
/// wrappers of the id calls synchronise threads; the child has one). A change of credentials
/// clears the parent-death signal, so it is set again after.
///
/// # Safety
/// Only for the child between fork and exec.
unsafe fn confine(c: &Confine, cgroup: Option<RawFd>, parent_pid: libc::pid_t, exec_err: RawFd) {
    // SAFETY: raw system calls on memory prepared before fork; `fail_at` exits.
    unsafe {
        for (i, (_, resource, soft, hard)) in c.rlimits.iter().enumerate() {
            let limit = libc::rlimit64 {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            let rc = libc::syscall(
                libc::SYS_prlimit64,
                0 as libc::pid_t,
                *resource as libc::c_int,
                &limit as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>(),
            );
            if rc != 0 {
                fail_at(exec_err, STAGE_RLIMIT + i as u32);
            }
        }
        if let Some(fd) = cgroup
            && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
        {
            fail_at(exec_err, STAGE_CGROUP);
        }
        let Some(creds) = &c.creds else { return };
        if libc::syscall(
            libc::SYS_setgroups,
            creds.groups.len() as libc::c_int,
            creds.groups.as_ptr(),
        ) != 0
        {
            fail_at(exec_err, STAGE_SETGROUPS);
        }
        if libc::syscall(libc::SYS_setresgid, creds.gid, creds.gid, creds.gid) != 0 {
            fail_at(exec_err, STAGE_SETGID);
        }
        if libc::syscall(libc::SYS_setresuid, creds.uid, creds.uid, creds.uid) != 0 {
            fail_at(exec_err, STAGE_SETUID);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(exec_err);
        }
        if libc::getppid() != parent_pid {
            libc::_exit(1); // the supervisor died meanwhile
        }
    }
}

#[cfg(test)]
#[path = "spawn_tests.rs"]
mod confine_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_pid_formats_decimal() {
        let mut buf = pid_var(LISTEN_PID_PREFIX);
        write_pid(&mut buf, 40123);
        let s = std::ffi::CStr::from_bytes_until_nul(&buf).unwrap();
        assert_eq!(s.to_str().unwrap(), "LISTEN_PID=40123");
        write_pid(&mut buf, 7);
        let s = std::ffi::CStr::from_bytes_until_nul(&buf).unwrap();
        assert_eq!(s.to_str().unwrap(), "LISTEN_PID=7");
        let mut buf = pid_var(WATCHDOG_PID_PREFIX);
        write_pid(&mut buf, i32::MAX);
        let s = std::ffi::CStr::from_bytes_until_nul(&buf).unwrap();
        assert_eq!(s.to_str().unwrap(), "WATCHDOG_PID=2147483647");
    }

    fn wait(child: &Child) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out-parameter.
        unsafe { libc::waitpid(child.pid, &mut status, 0) };
        status
    }

    fn read_all(fd: OwnedFd) -> String {
        use std::io::Read;
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn child_sees_fd_layout_and_own_pid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: `l` outlives `fd` (both live until the end of this test).
        let fd = unsafe { BorrowedFd::borrow_raw(l.as_raw_fd()) };
        let script = "echo pid=$$ listen=$LISTEN_PID fds=$LISTEN_FDS; [ -e /proc/self/fd/3 ] && [ -e /proc/self/fd/4 ] && echo fd3 fd4; [ -e /proc/self/fd/5 ] || echo no-fd5; cut -d' ' -f5 /proc/$$/stat";
        let args = vec!["-c".to_string(), script.to_string()];
        let child = spawn(Exec {
            program: Path::new("/bin/sh"),
            args: &args,
            env: vec![
                ("LISTEN_FDS".into(), "1".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ],
            cwd: Path::new("/"),
            listeners: vec![fd],
            confine: Confine::default(),
        })
        .unwrap();
        let pid = child.pid;
        let status = wait(&child);
        let out = read_all(child.stdout);
        assert_eq!(status, 0, "{out}");
        assert!(
            out.contains(&format!("pid={pid} listen={pid} fds=1")),
            "{out}"
        );
        assert!(out.contains("fd3 fd4"), "{out}");
        assert!(out.contains("no-fd5"), "{out}");
        assert!(
            out.trim_end().ends_with(&pid.to_string()),
            "own process group: {out}"
        );
    }

    #[test]
    fn a_plain_child_gets_no_fd_above_stderr() {
        let args = vec![
            "-c".to_string(),
            "[ -e /proc/self/fd/3 ] && echo fd3 || echo no-fd3".to_string(),
        ];
        let child = spawn_plain(Exec {
            program: Path::new("/bin/sh"),
            args: &args,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: Path::new("/"),
            listeners: vec![],
            confine: Confine::default(),
        })
        .unwrap();
        let status = wait(&child);
        let out = read_all(child.stdout);
        assert_eq!(status, 0, "{out}");
        assert_eq!(out.trim(), "no-fd3");
    }

    #[test]
    fn exec_failure_is_reported() {
        let e = spawn(Exec {
            program: Path::new("/nonexistent/program"),
            args: &[],
            env: vec![],
            cwd: Path::new("/"),
            listeners: vec![],
            confine: Confine::default(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/program"), "{e}");
    }
}
