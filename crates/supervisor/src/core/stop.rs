//! Stopping: the supervisor's stop (apps in reverse order, one after the other once the one
//! before it has no worker left; an app stopped by hand is skipped), a fast stop (every app at
//! once, every group killed), an app removed by a reload forgotten once stopped, and a first
//! start that fails as a whole.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::app::App;
use super::apps::Core;
use super::report::{ReloadOutcome, ReloadReport};
use super::{Action, Answer, AppId, Event, Phase, ReplyTo};

impl Core {
    pub(super) fn stop(&mut self, reply: Option<ReplyTo>, fast: bool, now: Instant) {
        if self.phase == Phase::Stopped {
            // Done already (the shell is on its way out): nothing left to stop.
            self.answer(reply, Answer::Stopped);
            return;
        }
        self.stop_waiters.extend(reply);
        let ids: VecDeque<AppId> = self.apps.iter().rev().map(|e| e.app.id()).collect();
        if fast {
            // Every app at once, every group killed.
            self.phase = Phase::Stopping;
            self.abort_reload_all();
            self.stopping = ids.clone();
            for id in ids {
                self.route(id, Event::FastStop, now);
            }
            self.advance_stop(now);
            return;
        }
        if self.phase == Phase::Stopping || self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopping;
        self.abort_reload_all();
        self.stopping = ids;
        self.advance_stop(now);
    }

    /// Stops the next app in reverse order once the one before it has stopped; answers when
    /// none is left.
    fn advance_stop(&mut self, now: Instant) {
        if self.advancing_stop || self.phase != Phase::Stopping {
            return;
        }
        self.advancing_stop = true;
        loop {
            let Some(&id) = self.stopping.front() else {
                self.all_stopped();
                break;
            };
            match self.app(id).map(App::phase) {
                None | Some(Phase::Stopped) => {
                    self.stopping.pop_front();
                }
                Some(Phase::Stopping) => break,
                Some(_) => self.route(id, Event::Stop { reply: None }, now),
            }
        }
        self.advancing_stop = false;
    }

    pub(super) fn abort_reload_all(&mut self) {
        let waiting = self
            .queued_all
            .take()
            .into_iter()
            .flatten()
            .chain(
                self.reload_all
                    .take()
                    .into_iter()
                    .flat_map(|a| a.waiters.into_iter().chain(a.not_waiting)),
            )
            .collect::<Vec<_>>();
        for to in waiting {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Reload(vec![ReloadReport {
                    app: "(every app)".into(),
                    generation: 0,
                    outcome: ReloadOutcome::Aborted,
                    reason: Some("the supervisor is stopping".into()),
                    note: None,
                    slots: vec![],
                    duration_secs: 0.0,
                    change: None,
                    changed: Vec::new(),
                }]),
            });
        }
    }

    /// App `id` has no worker left: a removed app is forgotten; while the supervisor stops,
    /// the next app stops, in reverse file order.
    pub(super) fn app_stopped(&mut self, id: AppId, now: Instant) {
        let Some(e) = self.entry(id) else { return };
        tracing::info!(app = %e.app.name(), "stopped");
        if e.removing {
            tracing::info!(app = %e.app.name(), "removed");
            self.apps.retain(|e| e.app.id() != id);
        }
        if self.phase == Phase::Stopping {
            self.advance_stop(now);
        }
    }

    fn all_stopped(&mut self) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        for to in std::mem::take(&mut self.stop_waiters) {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Stopped,
            });
        }
        self.out.push(Action::Exit(Ok(())));
    }

    /// No worker of app `id`'s first start could be executed: the supervisor does not run half
    /// a config. Every worker is killed and it exits with the reason.
    pub(super) fn start_failed(&mut self, id: AppId, reason: String, now: Instant) {
        let name = self
            .app(id)
            .map(|a| a.name().to_string())
            .unwrap_or_default();
        let reason = format!("app {name}: {reason}");
        self.phase = Phase::Stopped;
        for e in self.apps.iter_mut().filter(|e| e.app.id() != id) {
            e.app.handle(Event::FastStop, now);
            for action in e.app.take_actions() {
                if matches!(action, Action::Signal { .. }) {
                    self.out.push(action);
                }
            }
            // Nothing to answer or go on with: the supervisor exits.
            e.app.take_reports();
        }
        self.out.push(Action::Exit(Err(reason)));
    }
}
