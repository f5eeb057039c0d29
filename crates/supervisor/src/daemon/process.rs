//! One worker process, the OS side: fork/exec with its environment, the tasks that watch it
//! (exit via pidfd, readiness, output forwarding) and the signals sent to it. What state it is
//! in and what to do with it is the core's ([`crate::core`]).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{RunAs, WorkerSpec};
pub use crate::core::{ExitStatus, WorkerId};
use crate::logs::{Logs, Sink};
use crate::notify::{Channels, Notification};
use crate::runtimes::RuntimeFiles;
use crate::sys::child;
use crate::sys::listeners::BoundListener;
use crate::sys::spawn::{self, SpawnError};

/// What the per-worker tasks report to the daemon.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A readiness notification.
    Notify(Notification),
    /// The process exited (not reaped yet: [`Process::reap`] after handling this).
    Exited(ExitStatus),
}

/// A started worker process: its pid, the pidfd its signals go through, and the tasks that watch
/// it (exit, readiness, output). Its lifecycle state lives in the core ([`crate::core::Worker`]).
#[derive(Debug)]
pub struct Process {
    /// Process id (= process group id).
    pub pid: i32,
    pidfd: Arc<OwnedFd>,
    tasks: Vec<JoinHandle<()>>,
    reaped: bool,
    /// Duplicates of the descriptors its watch tasks read, for an upgrade's handover.
    handover: Handover,
}

/// Duplicates (close-on-exec) of a worker's notify socket, `READY_FD` read end and output pipe
/// read ends: the tasks own the originals, an upgrade hands these over.
#[derive(Debug, Default)]
struct Handover {
    notify_path: std::path::PathBuf,
    notify: Option<OwnedFd>,
    ready: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// A worker process and its descriptors, to be watched ([`Process::watch`]).
struct Watched<'a> {
    id: WorkerId,
    name: &'a str,
    pid: i32,
    pidfd: OwnedFd,
    channels: Channels,
    notify_path: std::path::PathBuf,
    ready: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// Where its stdout and stderr lines go.
    sinks: Option<(Sink, Sink)>,
}

/// Everything needed to start a worker.
#[derive(Debug)]
pub struct StartArgs<'a> {
    /// Unique id.
    pub id: WorkerId,
    /// Slot index.
    pub slot: usize,
    pub generation: u64,
    /// What to run.
    pub spec: Arc<WorkerSpec>,
    /// Sockets to pass.
    pub listeners: &'a [BoundListener],
    /// Directory for the notify socket.
    pub runtime_dir: &'a Path,
    /// What the runtimes add to the environment.
    pub runtime_files: &'a RuntimeFiles,
    /// Cron lock backend URL, for a worker whose app has `cron_backend = true`.
    pub cron_url: &'a str,
    /// A cluster singleton's fencing token (`SUPERVISOR_FENCING_TOKEN`).
    pub fencing_token: Option<u64>,
    /// Where the watch tasks report.
    pub events: mpsc::UnboundedSender<(WorkerId, WorkerEvent)>,
    /// Where its output goes.
    pub logs: &'a Logs,
    /// Its app's `cgroup.procs`, open for writing, when the app has a cgroup.
    pub cgroup: Option<std::os::fd::BorrowedFd<'a>>,
}

/// Starting a worker failed before it ran.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The notify socket could not be created.
    #[error("cannot create notify socket {path}: {cause}")]
    Notify {
        /// Socket path.
        path: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// fork/exec failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// The variable that hands the cron backend's URL to the apps that ask for it.
const CRON_URL: &str = "SUPERVISOR_CRON_URL";

/// A worker's environment: the supervisor's own (less what belongs to the supervisor itself), the
/// runtime's additions, the app's `env`, then the worker protocol's variables; a later entry
/// replaces an earlier one of the same name, so each name appears once.
fn environment(args: &StartArgs<'_>, name: &str, notify_path: &Path) -> Vec<(String, String)> {
    let spec = &args.spec;
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| {
            !k.starts_with("LISTEN_")
                && k != "NOTIFY_SOCKET"
                && k != "READY_FD"
                && k != "SUPERVISOR_FENCING_TOKEN"
                && k != "SUPERVISOR_WAIT_READY"
                && k != "SUPERVISOR_SHUTDOWN_MESSAGE"
                && k != "WATCHDOG_USEC"
                && k != "WATCHDOG_PID"
                && k != crate::sys::detach::DETACHED_VAR
                && k != CRON_URL
        })
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    args.runtime_files
        .apply(spec.runtime, &mut env, &spec.env, args.listeners);
    let n = args.listeners.len();
    let names: Vec<&str> = args.listeners.iter().map(|l| l.name.as_str()).collect();
    env.extend([
        ("LISTEN_FDS".to_string(), n.to_string()),
        ("LISTEN_FDNAMES".to_string(), names.join(":")),
        (
            "SUPERVISOR_LISTENERS".to_string(),
            crate::sys::listeners::describe(args.listeners),
        ),
        (
            "NOTIFY_SOCKET".to_string(),
            notify_path.display().to_string(),
        ),
        ("READY_FD".to_string(), (3 + n).to_string()),
        ("SUPERVISOR_APP".to_string(), spec.name.clone()),
        ("SUPERVISOR_WORKER_ID".to_string(), args.slot.to_string()),
        ("SUPERVISOR_WORKER_NAME".to_string(), name.to_string()),
        (
            "SUPERVISOR_GENERATION".to_string(),
            args.generation.to_string(),
        ),
        (
            "SUPERVISOR_KILL_TIMEOUT_MS".to_string(),
            spec.kill_timeout.as_millis().to_string(),
        ),
    ]);
    // PM2's contract, carried out by the Node preload; NODE_APP_INSTANCE as PM2 sets it.
    if spec.runtime == crate::config::Runtime::Node {
        let c = &spec.contract;
        env.insert(
            "SUPERVISOR_KILL_SIGNAL".to_string(),
            c.kill_signal.name().to_string(),
        );
        if c.wait_ready {
            env.insert("SUPERVISOR_WAIT_READY".to_string(), "1".to_string());
        }
        if c.shutdown_with_message {
            env.insert("SUPERVISOR_SHUTDOWN_MESSAGE".to_string(), "1".to_string());
        }
        if !spec.env.contains_key("NODE_APP_INSTANCE") {
            env.insert("NODE_APP_INSTANCE".to_string(), args.slot.to_string());
        }
    }
    // systemd's watchdog protocol (WATCHDOG_PID, the worker's own pid, is written after fork).
    if let Some(period) = spec.watchdog {
        env.insert("WATCHDOG_USEC".to_string(), period.as_micros().to_string());
    }
    // The backend's URL carries its password: only for the apps that run jobs in-process.
    if spec.cron_backend {
        env.insert(CRON_URL.to_string(), args.cron_url.to_string());
    }
    if let Some(token) = args.fencing_token {
        env.insert("SUPERVISOR_FENCING_TOKEN".to_string(), token.to_string());
    }
    if let Some(user) = &spec.confine.user {
        user_env(&mut env, user, &spec.env);
    }
    env.into_iter().collect()
}

/// `HOME`, `USER` and `LOGNAME` of the worker's user (as systemd's `User=` sets them), unless
/// the app's `env` sets them.
fn user_env(env: &mut BTreeMap<String, String>, user: &RunAs, app_env: &BTreeMap<String, String>) {
    for (k, v) in user.env_vars() {
        if !app_env.contains_key(k) {
            env.insert(k.to_string(), v);
        }
    }
}

/// The notify socket of a worker that runs as another user: its own (a datagram needs write
/// permission on the socket), mode 0600; any other stays the supervisor's, mode 0600.
fn own_socket(path: &Path, user: Option<&RunAs>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(u) = user.filter(|u| u.switch) {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

impl Process {
    /// Forks and executes the worker and starts its watch tasks.
    pub fn start(args: StartArgs<'_>) -> Result<Process, StartError> {
        let spec = args.spec.clone();
        let name = format!("{}.{}", spec.name, args.slot);
        let notify_path = args.runtime_dir.join(format!("notify-{}.sock", args.id));
        let channels = Channels::bind(&notify_path).map_err(|cause| StartError::Notify {
            path: notify_path.display().to_string(),
            cause,
        })?;
        own_socket(&notify_path, spec.confine.user.as_ref()).map_err(|cause| {
            StartError::Notify {
                path: notify_path.display().to_string(),
                cause,
            }
        })?;

        let env = environment(&args, &name, &notify_path);
        let child = spawn::spawn(spawn::Exec {
            program: &spec.program,
            args: &spec.args,
            env,
            cwd: &spec.cwd,
            listeners: args.listeners.iter().map(|l| l.fd()).collect(),
            confine: spawn::Confine::of(
                &spec.confine,
                args.cgroup.map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd)),
            ),
        })?;
        let sinks = args.logs.sinks(&spec.name, &name, args.slot, child.pid);
        Ok(Process::watch(
            Watched {
                id: args.id,
                name: &name,
                pid: child.pid,
                pidfd: child.pidfd,
                channels,
                notify_path,
                ready: Some(child.ready),
                stdout: Some(child.stdout),
                stderr: Some(child.stderr),
                sinks,
            },
            args.events,
        ))
    }

    /// The descriptors an upgrade hands over for this worker (`None` if its notify socket
    /// could not be duplicated at start).
    pub fn handover_fds(&self, id: WorkerId) -> Option<crate::upgrade::WorkerFds> {
        use std::os::fd::AsRawFd;
        let h = &self.handover;
        Some(crate::upgrade::WorkerFds {
            id,
            pid: self.pid,
            pidfd: self.pidfd.as_raw_fd(),
            notify: h.notify.as_ref()?.as_raw_fd(),
            notify_path: h.notify_path.clone(),
            ready: h.ready.as_ref().map(AsRawFd::as_raw_fd),
            stdout: h.stdout.as_ref().map(AsRawFd::as_raw_fd),
            stderr: h.stderr.as_ref().map(AsRawFd::as_raw_fd),
        })
    }

    /// Takes over a running worker handed over by an upgrade: its descriptors (see
    /// [`crate::upgrade::WorkerFds`]) and the same watch tasks as [`Process::start`].
    ///
    /// # Safety
    /// Every descriptor in `fds` must be one the previous binary handed over, owned by nothing
    /// else in this process.
    pub unsafe fn adopt(
        fds: &crate::upgrade::WorkerFds,
        name: &str,
        events: mpsc::UnboundedSender<(WorkerId, WorkerEvent)>,
        logs: &Logs,
    ) -> std::io::Result<Process> {
        use crate::upgrade::inherited;
        // SAFETY: the caller guarantees each descriptor is ours alone.
        let take = |fd: Option<i32>| fd.map(|fd| unsafe { inherited(fd) });
        // SAFETY: as above, the pidfd handed over for this worker alone.
        let pidfd = unsafe { inherited(fds.pidfd) };
        // SAFETY: as above, its notify socket.
        let notify = unsafe { inherited(fds.notify) };
        let (ready, stdout, stderr) = (take(fds.ready), take(fds.stdout), take(fds.stderr));
        let (id, pid) = (fds.id, fds.pid);
        let channels = Channels::from_inherited(&fds.notify_path, notify)?;
        let sinks = name
            .rsplit_once('.')
            .and_then(|(app, slot)| logs.sinks(app, name, slot.parse().ok()?, pid));
        Ok(Process::watch(
            Watched {
                id,
                name,
                pid,
                pidfd,
                channels,
                notify_path: fds.notify_path.clone(),
                ready,
                stdout,
                stderr,
                sinks,
            },
            events,
        ))
    }

    /// The tasks that watch a worker (exit through its pidfd, readiness, output forwarding),
    /// and the duplicates of its descriptors an upgrade would hand over; for a worker just
    /// started or one taken over from the previous binary alike.
    fn watch(w: Watched<'_>, events: mpsc::UnboundedSender<(WorkerId, WorkerEvent)>) -> Process {
        let Watched {
            id,
            name,
            pid,
            pidfd,
            mut channels,
            notify_path,
            ready,
            stdout,
            stderr,
            sinks,
        } = w;
        let handover = Handover {
            notify_path,
            notify: channels.dup_socket().ok(),
            ready: ready.as_ref().and_then(|f| f.try_clone().ok()),
            stdout: stdout.as_ref().and_then(|f| f.try_clone().ok()),
            stderr: stderr.as_ref().and_then(|f| f.try_clone().ok()),
        };
        let span = tracing::info_span!("worker", id = %name, pid);
        // Output forwarders end by themselves at EOF, so the last lines of a crash are kept.
        match sinks {
            Some((out_sink, err_sink)) => {
                for (fd, sink) in [(stdout, out_sink), (stderr, err_sink)] {
                    if let Some(fd) = fd {
                        let task = crate::logs::forward_worker(fd, sink);
                        tokio::spawn(task.instrument(span.clone()));
                    }
                }
            }
            None => {
                for out in [stdout, stderr].into_iter().flatten() {
                    tokio::spawn(crate::logs::forward_output(out).instrument(span.clone()));
                }
            }
        }
        if let Some(r) = ready
            && let Err(e) = channels.attach_pipe(r)
        {
            tracing::warn!(worker = %name, "notification pipe unusable: {e}");
        }
        let mut tasks = Vec::with_capacity(2);
        let notify_events = events.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = channels.next().await;
                if notify_events.send((id, WorkerEvent::Notify(n))).is_err() {
                    return;
                }
            }
        }));
        let pidfd = Arc::new(pidfd);
        let watched = pidfd.clone();
        tasks.push(tokio::spawn(async move {
            let status = child::watch_exit(pid, watched).await;
            let _ = events.send((id, WorkerEvent::Exited(status)));
        }));
        Process {
            pid,
            pidfd,
            tasks,
            reaped: false,
            handover,
        }
    }

    /// The drain signal (SIGTERM, or the app's `kill_signal`) to the worker process.
    pub fn term(&self, signal: i32) {
        if !self.reaped {
            child::signal(&self.pidfd, signal);
        }
    }

    /// SIGKILL to the worker's whole process group (unless it was already reaped).
    pub fn kill_group(&self) {
        if !self.reaped {
            child::kill_group(self.pid);
        }
    }

    /// Reaps the exited process; call once the exit event was handled.
    pub fn reap(&mut self) {
        self.reaped = true;
        child::reap(&self.pidfd);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    /// The environment a worker of `spec` gets.
    fn env_of(cron_backend: bool) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let files = RuntimeFiles::install(dir.path()).unwrap();
        let mut spec = crate::core::test_support::settings("web", 1, 1, 0).spec;
        Arc::make_mut(&mut spec).cron_backend = cron_backend;
        let (events, _rx) = mpsc::unbounded_channel();
        let logs = Logs::start(false).unwrap();
        let args = StartArgs {
            id: 1,
            slot: 0,
            generation: 1,
            spec,
            listeners: &[],
            runtime_dir: dir.path(),
            runtime_files: &files,
            cron_url: "redis://:s3cret@redis:6379/0",
            fencing_token: None,
            events,
            logs: &logs,
            cgroup: None,
        };
        environment(&args, "web.0", &dir.path().join("n.sock"))
            .into_iter()
            .collect()
    }

    #[test]
    fn only_an_app_that_asks_for_it_gets_the_cron_backend_url() {
        assert!(!env_of(false).contains_key(CRON_URL));
        assert!(
            !env_of(false).values().any(|v| v.contains("s3cret")),
            "the password is nowhere in the environment"
        );
        assert_eq!(env_of(true)[CRON_URL], "redis://:s3cret@redis:6379/0");
    }

    #[test]
    fn a_worker_of_another_user_gets_its_home_and_name_unless_the_app_sets_them() {
        let user = RunAs::nobody(true);
        let mut env = BTreeMap::from([("HOME".to_string(), "/root".to_string())]);
        user_env(&mut env, &user, &BTreeMap::new());
        assert_eq!(env["HOME"], "/nonexistent");
        assert_eq!(
            (env["USER"].as_str(), env["LOGNAME"].as_str()),
            ("nobody", "nobody")
        );
        let app = BTreeMap::from([("HOME".to_string(), "/srv/app".to_string())]);
        let mut env = app.clone();
        user_env(&mut env, &user, &app);
        assert_eq!(env["HOME"], "/srv/app", "the app's env wins");
    }
}
