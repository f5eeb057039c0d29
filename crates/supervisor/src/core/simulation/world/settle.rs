//! The end of a run: no more faults, and the supervisor must settle.

use std::time::Duration;

use super::World;
use crate::core::report::{CanaryStage, ReloadMode};
use crate::core::{AppId, Event, ExitStatus, Phase, TimerKey, WorkerId, WorkerState};

impl World {
    /// No more faults: time passes, every starting worker gets ready, every worker told to
    /// stop does, a canary that holds is continued or rolled back (in turn); then the supervisor
    /// must have settled: every slot of every running app served by a ready worker, no reload
    /// under way, every client answered once, a stop done.
    pub(crate) fn settle(&mut self) -> Result<(), String> {
        self.spawn_fails = false;
        for round in 0..600 {
            if self.exit.is_some() {
                break;
            }
            let held: Vec<AppId> = self
                .core
                .apps()
                .filter(|v| {
                    let progress = v.app.snapshot(self.now).reload_in_progress;
                    progress
                        .and_then(|p| p.canary)
                        .is_some_and(|c| c.stage == CanaryStage::Held)
                })
                .map(|v| v.app.id())
                .collect();
            for app in held {
                self.feed(Event::Reload {
                    app: Some(app),
                    reply: None,
                    wait: true,
                    mode: if (round + app).is_multiple_of(2) {
                        ReloadMode::Continue
                    } else {
                        ReloadMode::Rollback
                    },
                })?;
            }
            for id in std::mem::take(&mut self.dying) {
                if self.procs.contains_key(&id) {
                    self.exit_proc(id, ExitStatus::Signal(9))?;
                }
            }
            let starting: Vec<WorkerId> = self
                .procs
                .keys()
                .copied()
                .filter(|id| self.core_state(*id) == Some(WorkerState::Starting))
                .collect();
            for id in starting {
                self.feed(Event::Ready(id))?;
            }
            let termed: Vec<WorkerId> = self
                .procs
                .iter()
                .filter(|(_, p)| p.termed)
                .map(|(id, _)| *id)
                .collect();
            for id in termed {
                if self.procs.contains_key(&id) {
                    self.exit_proc(id, ExitStatus::Code(0))?;
                }
            }
            self.check()?;
            if self.quiet() {
                break;
            }
            self.advance(Duration::from_millis(500))?;
            self.check()?;
        }
        self.settled()
    }

    /// Nothing left to happen but the memory samples: no process starting or told to stop, no
    /// deadline but theirs, no reload under way (a canary held without `canary_hold` waits for
    /// the next round's continue or rollback, with no deadline).
    fn quiet(&self) -> bool {
        self.dying.is_empty()
            && self
                .core
                .apps()
                .all(|v| v.app.reload_generation().is_none())
            && self
                .procs
                .iter()
                .all(|(id, p)| !p.termed && self.core_state(*id) == Some(WorkerState::Ready))
            && self.timers.keys().all(|k| *k == TimerKey::MemorySample)
    }

    fn settled(&self) -> Result<(), String> {
        match &self.exit {
            Some(Err(_)) => {
                // The first start failed: whatever runs was killed; clients lose their
                // connection with the process.
                if let Some(id) = self.procs.keys().find(|id| !self.killed.contains(id)) {
                    return Err(format!("start failed, worker {id} left running"));
                }
                return Ok(());
            }
            Some(Ok(())) => {}
            None if self.stopping => return Err("a stop did not end: still running".into()),
            None => {
                for v in self.core.apps() {
                    let app = v.app;
                    match app.phase() {
                        Phase::Running => {
                            let (ready, slots) = app.ready_slots();
                            if ready != slots {
                                return Err(format!(
                                    "{}: settled with {ready} of {slots} slots ready: {:?}",
                                    app.name(),
                                    app.slot_views()
                                ));
                            }
                            if app.reload_generation().is_some() {
                                return Err(format!("{}: a reload never ends", app.name()));
                            }
                        }
                        // An app a reload added whose start failed is stopped, not the
                        // supervisor.
                        Phase::Stopped if app.stopped_on_its_own() => {}
                        // ... and the apps `after` it wait for it (said to their clients).
                        Phase::Waiting
                            if v.waiting_for.iter().any(|name| {
                                self.core
                                    .apps()
                                    .any(|o| o.app.name() == name && o.app.stopped_on_its_own())
                            }) => {}
                        Phase::Standby => {
                            if app.worker_count() > 0 {
                                return Err(format!("{}: standing by with workers", app.name()));
                            }
                        }
                        phase => {
                            return Err(format!("{}: settled while {phase}", app.name()));
                        }
                    }
                }
            }
        }
        for (to, what) in &self.asked {
            if self.answers.get(to).copied().unwrap_or(0) != 1 {
                return Err(format!("client {to} ({what}) never answered"));
            }
        }
        Ok(())
    }
}
