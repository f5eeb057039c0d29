//! The shell's side of worker processes: starting one (fork/exec with its app's listeners, its
//! slot's own socket where the app has one per slot, the runtime files and its fencing token),
//! signalling it, turning what its watch tasks report (readiness, `STATUS=`, exit) into core
//! events, reaping it once the core has handled its exit, measuring every worker's memory for
//! `max_memory`, and sweeping adopted orphans (every pid that is neither a worker nor one of the
//! shell's own children).

use std::sync::Arc;

use super::process::{Process, StartArgs, StartError, WorkerEvent};
use super::shell::Shell;
use crate::config::{WorkerSpec, missing_interpreter};
use crate::core::{AppId, Event, Signal, SocketSet, WorkerId, WorkerState};
use crate::notify::Notification;
use crate::orphans;
use crate::sys::procstat::GroupScan;
use crate::sys::spawn::SpawnError;

/// Why a worker could not be started, in words: `execve` says "No such file or directory" for
/// a script whose `#!` interpreter is missing, as if the script were; then the interpreter is
/// named (the file may have changed since the config was checked).
fn exec_error(spec: &WorkerSpec, e: StartError) -> String {
    if let StartError::Spawn(SpawnError::Exec { cause, .. }) = &e
        && cause.kind() == std::io::ErrorKind::NotFound
        && let Some(why) = missing_interpreter(
            &spec.program,
            spec.env.get("PATH").map(std::ffi::OsStr::new),
        )
    {
        return format!("cannot execute {why}");
    }
    e.to_string()
}

impl Shell {
    /// Forks and executes a worker on the sockets of set `sockets`; the event says whether it
    /// runs. (The arguments are the fields of [`crate::core::Action::Spawn`].)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        &mut self,
        app: AppId,
        worker: WorkerId,
        slot: usize,
        generation: u64,
        spec: Arc<WorkerSpec>,
        sockets: SocketSet,
        fencing_token: Option<u64>,
    ) -> Event {
        if let Some(user) = spec.confine.user.as_ref().filter(|u| u.switch)
            && let Err(error) = self.runtime_dir.open_to(user)
        {
            return Event::SpawnFailed { worker, error };
        }
        let cgroup = spec
            .confine
            .cgroup
            .as_ref()
            .and_then(|limits| self.cgroups.procs_for(&spec.name, limits));
        let listeners = match self.sockets.for_worker(sockets, slot) {
            Ok(l) => l,
            Err(error) => return Event::SpawnFailed { worker, error },
        };
        let started = Process::start(StartArgs {
            id: worker,
            slot,
            generation,
            spec: spec.clone(),
            listeners: &listeners,
            runtime_dir: &self.runtime_dir.path,
            runtime_files: &self.runtime_dir.files,
            cron_url: &self.config.cron_url,
            fencing_token,
            events: self.worker_tx.clone(),
            logs: &self.logs,
            cgroup: cgroup.as_ref().map(std::os::fd::AsFd::as_fd),
        });
        match started {
            Ok(p) => {
                tracing::debug!(app, worker, sockets = sockets.0, pid = p.pid, "spawned");
                let pid = p.pid;
                self.processes.insert(worker, p);
                Event::Spawned { worker, pid }
            }
            Err(e) => Event::SpawnFailed {
                worker,
                error: exec_error(&spec, e),
            },
        }
    }

    /// Signals a live worker (one already reaped is left alone).
    pub(super) fn signal(&self, worker: WorkerId, signal: Signal) {
        if let Some(p) = self.processes.get(&worker) {
            match signal {
                // The drain signal of the worker's own generation (`kill_signal`).
                Signal::Term => p.term(
                    self.core
                        .worker(worker)
                        .map_or(libc::SIGTERM, |w| w.spec.contract.kill_signal.number()),
                ),
                Signal::KillGroup => p.kill_group(),
            }
        }
    }

    /// What a worker's watch tasks report.
    pub(super) fn worker_event(&mut self, id: WorkerId, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Notify(Notification::Ready) => self.feed(Event::Ready(id)),
            WorkerEvent::Notify(Notification::Status(text)) => {
                self.feed(Event::StatusText(id, text))
            }
            WorkerEvent::Notify(Notification::Watchdog { trigger }) => self.feed(Event::Watchdog {
                worker: id,
                trigger,
            }),
            WorkerEvent::Notify(Notification::EventLoopLag(lag)) => {
                self.feed(Event::LoopLag(id, lag))
            }
            WorkerEvent::Notify(Notification::Stopping) => {
                if let Some(w) = self.core.worker(id)
                    && w.state != WorkerState::Draining
                {
                    tracing::info!(worker = %w.name, pid = w.pid.unwrap_or(0), "worker is stopping on its own");
                }
            }
            WorkerEvent::Exited(status) => {
                self.feed(Event::Exited { worker: id, status });
                // Reaped only now: until the core handled the exit, the pid could not be reused.
                if let Some(mut p) = self.processes.remove(&id) {
                    p.reap();
                    self.cpu.retain(|pid| pid != p.pid);
                    self.sweep_orphans(Some(p.pid));
                }
                if !self.core.any_draining() {
                    crate::sys::release_free_memory();
                }
            }
        }
    }

    /// The resident memory of every worker's process group, from one scan of `/proc` (the same
    /// measure `status` shows).
    pub(super) fn sample_memory(&self) -> Vec<(WorkerId, u64)> {
        let scan = GroupScan::scan();
        self.processes
            .iter()
            .filter_map(|(id, p)| Some((*id, scan.group(p.pid)?.rss_bytes)))
            .collect()
    }

    /// Whether `pid` is a worker or another child of the shell's own (left to whoever waits for
    /// it).
    pub(super) fn is_own(&self, pid: i32) -> bool {
        self.processes.values().any(|p| p.pid == pid) || self.own_children.contains(pid)
    }

    /// Reaps adopted orphans that exited, and kills those left in the process group of the worker
    /// that just exited (`exited_group`).
    pub(super) fn sweep_orphans(&self, exited_group: Option<i32>) {
        orphans::sweep(|pid| self.is_own(pid), exited_group, false);
    }
}
