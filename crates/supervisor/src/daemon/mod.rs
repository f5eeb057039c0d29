//! The daemon: the shell that carries out the core's decisions. Read it in this order:
//!
//! - [`run`] (here): open everything, run the loop, tear down; [`open`] binds and starts what
//!   must exist before any worker (sockets, control socket, leases, jobs, metrics), failing
//!   early with nothing started.
//! - [`shell`]: the one event loop that owns all state, the dispatch of the core's actions.
//! - [`control`]: one handler per control request; every answer takes its wire form there.
//! - [`workers`]: starting, signalling, reaping workers ([`process`]: one worker's OS handle and
//!   watch tasks), memory samples, the orphan sweep.
//! - [`views`]: `status` and the metrics as pure functions of the core's state.
//! - [`reread`]: what a reload applies from the file read again ([`config_read`]: reading it,
//!   binding the new sockets, making it the running config); [`sockets`]: the sets of sockets.
//! - [`upgrade`]: the shell's side of the in-place upgrade ([`crate::upgrade`] decides).
//! - [`preflight`]: what `start` tries before anything starts, shared with `check`.
//! - [`deadlines`], [`runtime_dir`], [`leases`] (the lease tasks of cluster singletons).
//!
//! The loop never waits on Redis (the `[[job]]` scheduler, the lease tasks and the metrics
//! endpoint run in tasks of their own) and never blocks on a client.

mod cgroups;
mod config_read;
mod control;
mod deadlines;
mod groups;
mod leases;
mod open;
pub(crate) mod preflight;
mod process;
mod reread;
mod runtime_dir;
mod shell;
mod sockets;
mod triggers;
mod upgrade;
mod views;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, ConfigError};
use crate::control::server::ControlError;
use crate::orphans;
use crate::sys::listeners::ListenError;

/// What the outside world (signal handlers in `main`) asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Rolling reload (`SIGHUP`).
    Reload,
    /// Graceful stop (`SIGTERM`, first `SIGINT`).
    Stop,
    /// Kill everything now (second `SIGINT`).
    FastStop,
    /// A child exited (`SIGCHLD`): reap the adopted orphans among them.
    ChildExited,
    /// Upgrade in place to the binary the supervisor was started from (`SIGUSR2`).
    Upgrade,
    /// Close and reopen the log files, after an external logrotate moved them (`SIGUSR1`).
    ReopenLogs,
}

/// How `start` runs beyond the config.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Take over from the previous binary: the memfd holding its
    /// [`crate::upgrade::HandoverState`].
    pub resume_fd: Option<i32>,
    /// The `--log-format` to pass on to the next binary of an upgrade.
    pub log_format: String,
    /// The pipe `start -d` waits on: a line is written once every app's first workers are
    /// ready, then it is closed.
    pub ready_fd: Option<std::os::fd::OwnedFd>,
}

/// The supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Bad config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("{path}: {cause}")]
    Listen {
        /// Config file.
        path: PathBuf,
        /// The bind error (names the key).
        cause: ListenError,
    },
    /// The control socket is taken or cannot be created.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Another supervisor runs under the same name.
    #[error("{0}")]
    Named(String),
    /// No worker of the first start could be executed (nothing is left running).
    #[error("{0}")]
    NoWorker(String),
    /// The `[[job]]` scheduler could not be set up (its cron backend URL).
    #[error("{path}: [[job]]: {cause}")]
    Jobs {
        /// Config file.
        path: PathBuf,
        /// What cronlock said.
        cause: cronlock::Error,
    },
    /// The lease backend of the cluster singletons cannot be used.
    #[error("cluster singletons: lease backend {url}: {cause}")]
    Singleton {
        /// The backend URL (password redacted).
        url: String,
        cause: cronlock::Error,
    },
    /// The state handed over by an upgrade cannot be used.
    #[error("cannot take over from the previous binary: {0}")]
    Resume(String),
    /// The log writer's thread could not be started.
    #[error("cannot start the log writer thread: {0}")]
    Logs(std::io::Error),
    /// The runtime directory for notify sockets could not be created.
    #[error("cannot create runtime directory {path}: {cause}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// The config key of the metrics listener, named in its errors.
pub const METRICS_KEY: &str = "supervisor.metrics";

/// Runs the supervisor until it is stopped: opens the listeners and the control socket, starts
/// the workers (or takes them over after an upgrade), then serves events. `commands` carries the
/// signals `main` translated.
pub async fn run(
    config: Config,
    commands: mpsc::Receiver<Command>,
    options: RunOptions,
) -> Result<(), StartupError> {
    let mut opened = open::open(config, commands, options)?;
    let metrics_server = opened.metrics_server.take();
    let resumed = opened.resume.is_some();
    let (mut shell, mut inputs) = shell::Shell::new(opened);
    let outcome = shell.run(&mut inputs, !resumed).await;
    if let Some(task) = metrics_server {
        task.abort();
    }
    teardown(&mut shell, &mut inputs.commands).await;
    match outcome {
        Ok(()) => {
            tracing::info!("supervisor stopped");
            Ok(())
        }
        Err(reason) => Err(StartupError::NoWorker(reason)),
    }
}

/// Once every worker is gone: running job commands finish (a fast stop, the second SIGINT,
/// kills them), the stopped singletons' leases are released so that other hosts take over at
/// once, whatever a worker left behind outside its process group is killed and reaped, and the
/// last control answers (to `stop`) are written.
async fn teardown(shell: &mut shell::Shell, commands: &mut mpsc::Receiver<Command>) {
    if let Some(jobs) = shell.jobs.take() {
        let stops = jobs.stops();
        let finish = jobs.finish();
        tokio::pin!(finish);
        loop {
            tokio::select! {
                () = &mut finish => break,
                Some(cmd) = commands.recv() => if cmd == Command::FastStop {
                    stops.term.cancel();
                    stops.kill.cancel();
                },
            }
        }
    }
    std::mem::take(&mut shell.leases)
        .finish(Duration::from_secs(3))
        .await;
    orphans::kill_all(|pid| shell.is_own(pid), Duration::from_millis(2000));
    shell.cgroups.remove_all(&shell.config);
    shell.control.flush(Duration::from_millis(500)).await;
    shell.logs.finish(Duration::from_secs(2)).await;
}
