//! In-place upgrade, the OS side: the state handed to the next binary (versioned JSON in a
//! memfd), the file descriptors that go with it (listeners, control socket, metrics listener,
//! and per worker its pidfd, notify socket, `READY_FD` read end and output pipes), the preflight
//! run of the new binary, and the `execve` itself, which keeps the pid. The decisions (when the
//! supervisor is settled enough to hand over) are the core's; the daemon drives the steps.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::WorkerId;
use crate::core::adopt::AdoptedApp;

/// The version of the handover state this binary writes.
pub const STATE_VERSION: u32 = 1;

/// The state versions this binary can read.
pub const KNOWN_STATE_VERSIONS: &[u32] = &[1];

/// How long the preflight run of the new binary may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an upgrade waits for the supervisor to settle (no reload, no worker starting or
/// draining, no `[[job]]` command running) before it is refused.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The pid of the preflight child while it runs (the reaper of adopted orphans leaves it alone).
static PREFLIGHT_PID: AtomicI32 = AtomicI32::new(0);

/// Whether `pid` is the running preflight child.
pub fn is_preflight_child(pid: i32) -> bool {
    pid != 0 && PREFLIGHT_PID.load(Ordering::Relaxed) == pid
}

/// The build: the git commit it was built from, or else the binary's modification time.
pub fn build_id() -> String {
    if let Some(commit) = option_env!("SUPERVISOR_GIT_COMMIT") {
        return format!("git {commit}");
    }
    let mtime = std::fs::metadata("/proc/self/exe")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    format!("binary mtime {mtime}")
}

/// `0.1.0 (git 0123abcd4567)`: what `--version` and `status` show.
pub fn version_line() -> String {
    format!("{} ({})", env!("CARGO_PKG_VERSION"), build_id())
}

/// The binary this process was started from (`/proc/self/exe`, resolved now: after a
/// deployment replaced the file, the link would name a deleted file).
pub fn own_binary() -> PathBuf {
    std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// A listening socket of an app, handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerFd {
    /// `LISTEN_FDNAMES` name.
    pub name: String,
    /// The bound address.
    pub local: String,
    /// The TCP port, if TCP.
    pub port: Option<u16>,
    /// Its backlog.
    pub backlog: i32,
    /// The socket file of a Unix listener.
    pub unix_path: Option<PathBuf>,
    /// The inherited descriptor.
    pub fd: RawFd,
}

/// One app's sockets, handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppFds {
    /// The app.
    pub name: String,
    /// Its listeners, in fd order.
    pub listeners: Vec<ListenerFd>,
}

/// One worker's descriptors, handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerFds {
    /// The worker.
    pub id: WorkerId,
    /// Its pid.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: RawFd,
    /// Its notify socket (bound at `notify_path`).
    pub notify: RawFd,
    /// The socket's path.
    pub notify_path: PathBuf,
    /// The read end of its `READY_FD` pipe.
    pub ready: Option<RawFd>,
    /// The read end of its stdout pipe.
    pub stdout: Option<RawFd>,
    /// The read end of its stderr pipe.
    pub stderr: Option<RawFd>,
}

/// Everything the next binary needs to take over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoverState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Upgrades so far, this one included.
    pub upgrades: u64,
    /// When this upgrade happened (Unix seconds).
    pub upgraded_at_unix: f64,
    /// When the supervisor was first started (Unix seconds).
    pub started_unix: f64,
    /// The version line of the binary handing over.
    pub from_version: String,
    /// The private runtime directory (notify sockets, Node preload): kept.
    pub runtime_dir: PathBuf,
    /// The control socket's listening descriptor.
    pub control_fd: RawFd,
    /// The metrics listener's descriptor, if any.
    pub metrics_fd: Option<RawFd>,
    /// Every app's listeners.
    pub apps: Vec<AppFds>,
    /// The core's state.
    pub core: Vec<AdoptedApp>,
    /// Every worker's descriptors.
    pub workers: Vec<WorkerFds>,
    /// What the metrics accumulated (reload counters and durations).
    #[serde(default)]
    pub metrics: crate::metrics::Registry,
}

/// The handover state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON of the expected shape.
    #[error("handover state unreadable: {0}")]
    Malformed(String),
    /// A version this binary does not know.
    #[error("handover state version {found} is not supported by this binary (it reads {known:?})")]
    Version {
        /// The version found.
        found: u32,
        /// The versions this binary reads.
        known: &'static [u32],
    },
    /// Reading the memfd failed.
    #[error("cannot read the handover state: {0}")]
    Io(#[from] std::io::Error),
}

/// Refuses a state version this binary does not know.
pub fn check_version(version: u32) -> Result<(), StateError> {
    if KNOWN_STATE_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(StateError::Version {
            found: version,
            known: KNOWN_STATE_VERSIONS,
        })
    }
}

impl HandoverState {
    /// Every descriptor that must survive `execve`.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.control_fd];
        fds.extend(self.metrics_fd);
        for a in &self.apps {
            fds.extend(a.listeners.iter().map(|l| l.fd));
        }
        for w in &self.workers {
            fds.extend([w.pidfd, w.notify]);
            fds.extend(w.ready);
            fds.extend(w.stdout);
            fds.extend(w.stderr);
        }
        fds
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON text, checking the version first.
    pub fn from_json(text: &str) -> Result<HandoverState, StateError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_str(text).map_err(|e| StateError::Malformed(e.to_string()))?;
        check_version(v.version)?;
        serde_json::from_str(text).map_err(|e| StateError::Malformed(e.to_string()))
    }
}

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
pub async fn preflight(binary: PathBuf, config: PathBuf) -> Result<String, String> {
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
    PREFLIGHT_PID.store(child.id().map_or(0, |p| p as i32), Ordering::Relaxed);
    let out = tokio::time::timeout(PREFLIGHT_TIMEOUT, child.wait_with_output()).await;
    PREFLIGHT_PID.store(0, Ordering::Relaxed);
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
    use crate::core::WorkerState;
    use crate::core::adopt::{AdoptedSlot, AdoptedWorker};

    fn state() -> HandoverState {
        HandoverState {
            version: STATE_VERSION,
            upgrades: 2,
            upgraded_at_unix: 1_800_000_000.5,
            started_unix: 1_700_000_000.0,
            from_version: "0.1.0 (git abc)".into(),
            runtime_dir: "/tmp/supervisor-42".into(),
            control_fd: 5,
            metrics_fd: Some(6),
            apps: vec![AppFds {
                name: "demo".into(),
                listeners: vec![ListenerFd {
                    name: "http".into(),
                    local: "127.0.0.1:3000".into(),
                    port: Some(3000),
                    backlog: 1024,
                    unix_path: None,
                    fd: 7,
                }],
            }],
            core: vec![AdoptedApp {
                name: "demo".into(),
                generation: 3,
                last_generation: Some(4),
                next_id: (1 << 32) + 9,
                restarts_total: 4,
                memory_recycles: 1,
                memory_recycle_failures: 0,
                last_reload: None,
                scaled: Some(1),
                slots: vec![AdoptedSlot {
                    generation: 3,
                    restarts: 4,
                    consecutive_failures: 1,
                    recent_failures_ago: vec![Duration::from_millis(1500)],
                    last_exit: Some("signal 9 while ready".into()),
                    worker: Some(AdoptedWorker {
                        id: (1 << 32) + 8,
                        generation: 3,
                        pid: 4242,
                        slot: 0,
                        state: WorkerState::Ready,
                        kill_in: None,
                        age: Duration::from_millis(2500),
                        status_text: Some("serving".into()),
                    }),
                    restart_in: None,
                }],
                draining: vec![],
            }],
            workers: vec![WorkerFds {
                id: (1 << 32) + 8,
                pid: 4242,
                pidfd: 8,
                notify: 9,
                notify_path: "/tmp/supervisor-42/notify-1.sock".into(),
                ready: Some(10),
                stdout: Some(11),
                stderr: None,
            }],
            metrics: Default::default(),
        }
    }

    #[test]
    fn the_state_survives_a_round_trip_through_json() {
        let s = state();
        let back = HandoverState::from_json(&s.to_json()).unwrap();
        assert_eq!(back.to_json(), s.to_json());
        assert_eq!(back.core[0].slots[0].worker.as_ref().unwrap().pid, 4242);
        assert_eq!(
            back.core[0].slots[0].recent_failures_ago,
            vec![Duration::from_millis(1500)]
        );
        assert_eq!(back.fds(), vec![5, 6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn an_unknown_version_is_refused_before_the_rest_is_read() {
        let mut s = state();
        s.version = STATE_VERSION + 1;
        let e = HandoverState::from_json(&s.to_json())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("version {}", STATE_VERSION + 1)), "{e}");
        assert!(check_version(STATE_VERSION).is_ok());
        assert!(check_version(0).is_err());
        let e = HandoverState::from_json("{\"version\": 1, \"upgrades\": \"x\"}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unreadable"), "{e}");
    }

    #[test]
    fn the_memfd_holds_the_state_and_is_inherited() {
        let s = state();
        let fd = write_memfd(&s.to_json()).unwrap();
        // SAFETY: F_GETFD on the fd just created.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, 0, "not close-on-exec");
        set_cloexec(fd.as_raw_fd(), true).unwrap();
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let back = read_state_fd(raw).unwrap();
        assert_eq!(back.upgrades, 2);
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
