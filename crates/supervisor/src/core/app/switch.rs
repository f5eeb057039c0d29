//! An app stopped and started by hand, one at a time, while the others run on: `stop APP`
//! drains its workers and gives up its sockets (connections are refused, not left waiting in a
//! queue nobody accepts from), and it stays stopped, through reloads too, until `start APP`
//! starts it again on sockets bound again; `reset APP` clears the restart counts `status` shows.
//! A reload that adds an app starts it the same way (its clients wait until it is up).

use super::lease::LeaseState;
use super::slots::{Slot, SlotState};
use super::{App, AppReport};
use crate::core::{Action, Answer, Phase, ReplyTo, SocketSet, Switched, Waiter, WorkerState};

impl App {
    /// `stop APP` (or its removal from the file, for `why`): every worker drains, the app's
    /// sockets are closed, and `reply` is answered once the last worker is gone.
    pub fn stop_by_hand(&mut self, reply: Option<ReplyTo>, why: &str, now: tokio::time::Instant) {
        match self.phase {
            Phase::Stopped => {
                if let Some(to) = reply {
                    self.out.push(Action::Reply {
                        to,
                        answer: Answer::Switched(Switched::Stopped {
                            app: self.name().to_string(),
                            workers: 0,
                            already: true,
                        }),
                    });
                }
            }
            Phase::Stopping => self.stop_waiters.extend(reply),
            _ => {
                tracing::info!(app = %self.name(), "stopping the app: {why}");
                self.stop_waiters.extend(reply);
                self.stop_with(why, now);
                // An app with no worker (waiting for the apps it is `after`) is stopped now.
                self.check_stopped();
            }
        }
    }

    /// `start APP`: a stopped app starts again on `sockets` once the apps it is `after` are
    /// up (it waits as at the first start); `reply` is answered when every slot has a ready
    /// worker, or with the first failure. An app that runs already is answered at once.
    pub(super) fn start_by_hand(&mut self, sockets: SocketSet, reply: Option<ReplyTo>) {
        let waiter = reply.map(Waiter::Client);
        match self.phase {
            Phase::Stopped => {}
            Phase::Stopping => {
                if let Some(to) = reply {
                    self.out.push(Action::Reply {
                        to,
                        answer: Answer::Refused(format!(
                            "{} is stopping: start it once its workers are gone",
                            self.name()
                        )),
                    });
                }
                return;
            }
            Phase::Waiting | Phase::Starting => {
                self.start_waiters.extend(waiter);
                return;
            }
            Phase::Running | Phase::Standby => {
                if let Some(to) = reply {
                    let pids = self.ready_pids();
                    self.out.push(Action::Reply {
                        to,
                        answer: Answer::Switched(Switched::Started {
                            app: self.name().to_string(),
                            pids,
                            already: true,
                            note: None,
                        }),
                    });
                }
                return;
            }
        }
        tracing::info!(app = %self.name(), "starting the app again");
        self.settings.sockets = sockets;
        let (spec, generation) = (self.settings.spec.clone(), self.generation);
        self.slots.truncate(spec.instances);
        for s in &mut self.slots {
            // A fresh start: the slots keep their restart counts, not a crash loop.
            s.state = SlotState::Idle;
            s.spec = spec.clone();
            s.sockets = sockets;
            s.generation = generation;
            s.consecutive_failures = 0;
            s.recent_failures.clear();
        }
        while self.slots.len() < spec.instances {
            self.slots
                .push(Slot::new(spec.clone(), sockets, generation));
        }
        if self.lease.is_some() {
            self.lease = Some(LeaseState::default());
            self.out.push(Action::WatchLease(self.id));
        }
        self.initial = false;
        self.phase = Phase::Waiting;
        self.start_waiters.extend(waiter);
    }

    /// `reset`: the restart counts `status` shows and the crash-loop history are cleared (the
    /// metrics' counters keep counting: a Prometheus counter never goes down).
    pub(super) fn reset(&mut self, reply: Option<ReplyTo>) {
        for s in &mut self.slots {
            s.restarts = 0;
            s.consecutive_failures = 0;
            s.recent_failures.clear();
        }
        tracing::info!(app = %self.name(), "restart counters reset");
        if let Some(to) = reply {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Switched(Switched::Reset {
                    apps: vec![self.name().to_string()],
                }),
            });
        }
    }

    /// Adds a waiter for the app to be up (a reload that added it).
    pub fn wait_until_up(&mut self, waiter: Waiter) {
        self.start_waiters.push(waiter);
        self.check_started();
    }

    /// Answers the clients waiting for the app to be up, once it is (every slot ready, or
    /// standing by for its lease).
    pub(super) fn check_started(&mut self) {
        if self.start_waiters.is_empty() {
            return;
        }
        let note = match self.phase {
            Phase::Running if self.is_up() => None,
            Phase::Standby => Some(
                "cluster singleton: standing by while another host holds its lease".to_string(),
            ),
            _ => return,
        };
        let pids = self.ready_pids();
        self.answer_start(Ok((pids, note)));
    }

    /// Tells every client waiting for the app to be up how its start went.
    pub(super) fn answer_start(&mut self, outcome: Result<(Vec<i32>, Option<String>), String>) {
        let waiters = std::mem::take(&mut self.start_waiters);
        if !waiters.is_empty() {
            self.reports.push(AppReport::Started { waiters, outcome });
        }
    }

    /// The pids of its ready workers, by slot.
    fn ready_pids(&self) -> Vec<i32> {
        let mut ready: Vec<(usize, i32)> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready && self.slot_worker(w.slot) == Some(w.id))
            .filter_map(|w| Some((w.slot, w.pid?)))
            .collect();
        ready.sort();
        ready.into_iter().map(|(_, pid)| pid).collect()
    }
}
