//! The shell's side of an in-place upgrade: it asks the pure [`Sequencer`] after every event and
//! carries out each step (the preflight child, the flush of the control answers already given,
//! the handover document and `execve`), and, in the new process, takes over what the previous
//! binary handed over (its record, the core's state, every worker's descriptors).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::reread::core_apps;
use super::shell::Shell;
use super::views::unix_now;
use crate::config::Config;
use crate::control::protocol::{Response, UpgradeInfo};
use crate::control::server::Reply;
use crate::core::{Core, Event, ExitStatus, Phase};
use crate::daemon::process::Process;
use crate::orphans::OwnKind;
use crate::upgrade::sequencer::{Sequencer, Situation, Step};
use crate::upgrade::{self, HandoverState};

/// How long the answers given before an exec may take to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What the shell hands over besides its state, and the upgrade under way.
#[derive(Debug)]
pub(super) struct UpgradeState {
    pub(super) sequencer: Sequencer<Reply>,
    handover: HandoverFds,
    /// The preflight's outcome comes back here.
    preflight_tx: mpsc::UnboundedSender<Result<String, String>>,
    pub(super) preflight_rx: mpsc::UnboundedReceiver<Result<String, String>>,
}

/// The descriptors an upgrade hands over besides the apps' and the workers', and how the next
/// binary logs.
#[derive(Debug, Default)]
pub(super) struct HandoverFds {
    pub(super) control: RawFd,
    pub(super) metrics: Option<RawFd>,
    pub(super) log_format: String,
}

impl UpgradeState {
    pub(super) fn new(handover: HandoverFds) -> UpgradeState {
        let (preflight_tx, preflight_rx) = mpsc::unbounded_channel();
        UpgradeState {
            sequencer: Sequencer::default(),
            handover,
            preflight_tx,
            preflight_rx,
        }
    }
}

impl Shell {
    /// An upgrade is asked for (`supervisor upgrade`, `SIGUSR2` with no client); by default to
    /// the binary this process was started from.
    pub(super) fn request_upgrade(&mut self, binary: Option<PathBuf>, reply: Option<Reply>) {
        let binary = binary.unwrap_or_else(|| self.record.binary.clone());
        if let Some(step) = self
            .upgrade
            .sequencer
            .request(binary, reply, Instant::now())
        {
            self.carry_out(step);
        }
    }

    /// What the sequencer needs to know now.
    fn situation(&self) -> Situation {
        let jobs = self.own_children.pids_of(OwnKind::JobCommand);
        Situation {
            stopping: matches!(self.core.phase(), Phase::Stopping | Phase::Stopped),
            lease_held: self.core.lease_held().map(str::to_string),
            unsettled: self.core.not_upgradable().or_else(|| {
                (!jobs.is_empty()).then(|| format!("a [[job]] command is running (pid {jobs:?})"))
            }),
        }
    }

    /// One step of the upgrade under way, if any; `true` when the loop should ask again at once
    /// (something was done that may let it go on).
    pub(super) async fn upgrade_turn(&mut self) -> bool {
        if !self.upgrade.sequencer.is_pending() {
            return false;
        }
        let seen = self.situation();
        match self.upgrade.sequencer.advance(&seen, Instant::now()) {
            Step::Wait => false,
            Step::Flush => {
                // Answers already given (e.g. a reload's) must reach their clients: the exec
                // would end the connection tasks before they write.
                if !self.control.answers_written(FLUSH_TIMEOUT).await {
                    tracing::warn!(
                        "upgrade: some control answers were not written within {}",
                        crate::units::span(FLUSH_TIMEOUT)
                    );
                }
                self.upgrade.sequencer.flushed();
                true
            }
            step => {
                self.carry_out(step);
                true
            }
        }
    }

    /// Carries out a step that needs no waiting.
    fn carry_out(&mut self, step: Step<Reply>) {
        match step {
            Step::Wait | Step::Flush => {}
            Step::Preflight { binary } => {
                let tx = self.upgrade.preflight_tx.clone();
                let (config, children) = (self.config.path.clone(), self.own_children.clone());
                tokio::spawn(async move {
                    let _ = tx.send(upgrade::preflight(binary, config, children).await);
                });
            }
            Step::Exec { binary } => {
                let why = self.exec(&binary);
                let step = self.upgrade.sequencer.exec_failed(why);
                self.carry_out(step);
            }
            Step::Refused { reason, reply } => {
                self.record.upgrades.last_error = Some(reason.clone());
                if let Some(r) = reply {
                    let _ = r.send(Response::Error { message: reason });
                }
            }
        }
    }

    /// The preflight child ended: the new process reads the file again, so it must still fit.
    pub(super) fn preflight_done(&mut self, outcome: Result<String, String>) {
        let outcome = outcome.and_then(|said| {
            let fresh = Config::load(&self.config.path).map_err(|e| format!("config: {e}"))?;
            // The running config follows the file as the last reload applied it.
            upgrade::same_shape(&self.config, &fresh)?;
            Ok(said)
        });
        let step = self
            .upgrade
            .sequencer
            .preflight_done(outcome, Instant::now());
        self.carry_out(step);
    }

    /// Writes the handover document into a memfd and execs `binary` with every descriptor to
    /// hand over; returns (why) only if that failed, with everything as it was.
    fn exec(&mut self, binary: &std::path::Path) -> String {
        let mut workers = Vec::with_capacity(self.processes.len());
        for (id, p) in &self.processes {
            match p.handover_fds(*id) {
                Some(fds) => workers.push(fds),
                None => return format!("worker {id}: its notify socket cannot be handed over"),
            }
        }
        let handover = &self.upgrade.handover;
        let state = HandoverState {
            version: upgrade::STATE_VERSION,
            upgrades: self.record.upgrades.count + 1,
            upgraded_at_unix: unix_now(),
            started_unix: self.record.started_unix,
            from_version: upgrade::version_line(),
            runtime_dir: self.runtime_dir.path.clone(),
            control_fd: handover.control,
            metrics_fd: handover.metrics,
            apps: self
                .core
                .apps()
                .map(|v| upgrade::AppFds {
                    name: v.app.name().to_string(),
                    listeners: match v.app.phase() {
                        // Stopped by hand: its sockets are closed.
                        Phase::Stopped => Vec::new(),
                        _ => self
                            .sockets
                            .get(v.app.settings().sockets)
                            .iter()
                            .map(upgrade::ListenerFd::of)
                            .collect(),
                    },
                })
                .collect(),
            groups: self.sockets.handover_groups(),
            core: self.core.export(Instant::now()),
            workers,
            metrics: self.record.metrics.clone(),
        };
        let memfd = match state.to_json().map(|json| upgrade::write_memfd(&json)) {
            Err(e) => return e.to_string(),
            Ok(Err(e)) => return format!("cannot write the state to a memfd: {e}"),
            Ok(Ok(fd)) => fd,
        };
        let memfd_raw = std::os::fd::AsRawFd::as_raw_fd(&memfd);
        let mut fds = state.fds();
        fds.push(memfd_raw);
        // Not named in the state: the new image finds it by its path, and the lock on the
        // runtime directory is never released in between.
        fds.push(self.runtime_dir.lock_fd());
        let mut args = vec![
            "start".to_string(),
            "-c".to_string(),
            self.config.path.display().to_string(),
            "--resume-fd".to_string(),
            memfd_raw.to_string(),
        ];
        if !handover.log_format.is_empty() {
            args.extend(["--log-format".to_string(), handover.log_format.clone()]);
        }
        tracing::info!(
            binary = %binary.display(),
            workers = state.workers.len(),
            fds = fds.len(),
            "upgrading in place: exec"
        );
        let e = upgrade::exec(binary, &args, &fds);
        drop(memfd);
        format!("execve {}: {e}", binary.display())
    }

    /// Takes over from the previous binary: its record, the core rebuilt from the config read
    /// again (each app on its inherited sockets, `sets`, in file order) plus the running
    /// workers, and each worker's watch tasks on its inherited descriptors.
    pub(super) fn adopt(&mut self, state: HandoverState, sets: Vec<crate::core::SocketSet>) {
        let up_for = Duration::from_secs_f64((unix_now() - state.started_unix).max(0.0));
        let record = &mut self.record;
        record.started = std::time::Instant::now()
            .checked_sub(up_for)
            .unwrap_or(record.started);
        record.started_unix = state.started_unix;
        record.metrics = state.metrics.clone();
        record.upgrades = UpgradeInfo {
            count: state.upgrades,
            last_at_unix: Some(state.upgraded_at_unix),
            last_from: Some(state.from_version.clone()),
            last_error: None,
        };
        let bound: Vec<_> = sets.iter().map(|s| (*s, self.sockets.get(*s))).collect();
        let (core, actions) =
            Core::adopt(core_apps(&self.config, &bound), state.core, Instant::now());
        self.core = core;
        let mut lost = Vec::new();
        for fds in &state.workers {
            let Some(w) = self.core.worker(fds.id) else {
                continue;
            };
            let name = w.name.clone();
            // SAFETY: these descriptors were handed over by the previous binary for this
            // worker alone, and nothing else here took them.
            match unsafe { Process::adopt(fds, &name, self.worker_tx.clone(), &self.logs) } {
                Ok(p) => {
                    tracing::info!(worker = %name, pid = fds.pid, "worker adopted");
                    self.processes.insert(fds.id, p);
                }
                Err(e) => {
                    tracing::error!(worker = %name, pid = fds.pid, "cannot adopt worker ({e}): killing it");
                    crate::sys::child::kill_group(fds.pid);
                    lost.push(fds.id);
                }
            }
        }
        let mut queue = VecDeque::new();
        for action in actions {
            self.act(action, &mut queue);
        }
        while let Some(event) = queue.pop_front() {
            self.feed(event);
        }
        for worker in lost {
            self.feed(Event::Exited {
                worker,
                status: ExitStatus::Signal(libc::SIGKILL),
            });
        }
    }
}
