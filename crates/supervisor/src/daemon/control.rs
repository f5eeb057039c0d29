//! One handler per control request, and the one place a control answer is produced: the core's
//! [`Answer`]s become wire [`Response`]s here ([`response`]), the views answer `status`, the
//! upgrade sequencer answers `upgrade`, and a request naming no known app is refused here with
//! the names there are. `start APP` binds the app's sockets again here, before the core hears
//! of it: a port taken meanwhile refuses the start with the port's name, nothing started.

use super::shell::Shell;
use crate::control::protocol::{ReloadMode, Request, Response};
use crate::control::server::{ControlRequest, Reply};
use std::collections::HashMap;

use crate::core::{Answer, AppId, Event, Phase, ReplyTo, Switched};

impl Shell {
    /// Serves one control request.
    pub(super) fn control(&mut self, req: ControlRequest) {
        let ControlRequest { request, reply } = req;
        match request {
            Request::Status { app } => self.on_status(app.as_deref(), reply),
            Request::Reload { app, wait, mode } => {
                self.on_reload(app.as_deref(), wait, mode, reply)
            }
            Request::Restart { app } => self.on_restart(&app, reply),
            Request::Scale { app, instances } => self.on_scale(&app, instances, reply),
            Request::Stop => self.on_stop(reply),
            Request::Upgrade { binary } => self.request_upgrade(binary, Some(reply)),
            Request::StopApp { app } => self.on_stop_app(&app, reply),
            Request::StartApp { app } => self.on_start_app(&app, reply),
            Request::Reset { app } => self.on_reset(app.as_deref(), reply),
            // Served by the control socket itself, from the logs hub.
            Request::Logs { .. } | Request::Flush { .. } | Request::ReopenLogs => answer(
                reply,
                Response::Error {
                    message: "requests about logs are served by the control socket".into(),
                },
            ),
        }
    }

    fn on_stop_app(&mut self, app: &str, reply: Reply) {
        let Some(app) = self.named(app) else {
            return answer(reply, self.unknown_app(Some(app)));
        };
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::StopApp { app, reply });
    }

    fn on_start_app(&mut self, name: &str, reply: Reply) {
        let Some(app) = self.core.app_named(name) else {
            return answer(reply, self.unknown_app(Some(name)));
        };
        let (id, mut sockets) = (app.id(), app.settings().sockets);
        if app.phase() == Phase::Stopped {
            // Its listeners as the running config has them (a reload may have moved them).
            let specs = self
                .config
                .apps
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.listeners.clone())
                .unwrap_or_default();
            sockets = match self.sockets.open(&specs, &[]) {
                Ok(set) => set,
                Err(e) => {
                    return answer(
                        reply,
                        Response::Error {
                            message: format!("cannot start {name}: {e}"),
                        },
                    );
                }
            };
        }
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::StartApp {
            app: id,
            sockets,
            reply,
        });
    }

    fn on_reset(&mut self, app: Option<&str>, reply: Reply) {
        let Some(app) = self.target(app) else {
            return answer(reply, self.unknown_app(app));
        };
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::Reset { app, reply });
    }

    fn on_status(&mut self, app: Option<&str>, reply: Reply) {
        let Some(only) = self.target(app) else {
            return answer(reply, self.unknown_app(app));
        };
        let report = self.status(only);
        answer(reply, Response::Status(Box::new(report)));
    }

    fn on_reload(&mut self, app: Option<&str>, wait: bool, mode: ReloadMode, reply: Reply) {
        let Some(app) = self.target(app) else {
            return answer(reply, self.unknown_app(app));
        };
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::Reload {
            app,
            reply,
            wait,
            mode,
        });
    }

    fn on_restart(&mut self, app: &str, reply: Reply) {
        let Some(app) = self.named(app) else {
            return answer(reply, self.unknown_app(Some(app)));
        };
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::Restart { app, reply });
    }

    fn on_scale(&mut self, app: &str, instances: usize, reply: Reply) {
        let Some(app) = self.named(app) else {
            return answer(reply, self.unknown_app(Some(app)));
        };
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::Scale {
            app,
            instances,
            reply,
        });
    }

    fn on_stop(&mut self, reply: Reply) {
        self.stop_jobs(false);
        let reply = Some(self.replies.wait(reply));
        self.feed(Event::Stop { reply });
    }

    /// `Some(None)` for every app, `Some(Some(i))` for the app named, `None` for a name no app
    /// has.
    fn target(&self, app: Option<&str>) -> Option<Option<AppId>> {
        match app {
            None => Some(None),
            Some(name) => self.named(name).map(Some),
        }
    }

    fn named(&self, name: &str) -> Option<AppId> {
        self.core.app_named(name).map(|a| a.id())
    }

    /// The refusal of a request naming no known app: says which apps there are.
    fn unknown_app(&self, name: Option<&str>) -> Response {
        let names: Vec<&str> = self
            .core
            .apps()
            .filter(|v| !v.removing)
            .map(|v| v.app.name())
            .collect();
        Response::Error {
            message: format!(
                "no app is named {:?} (apps: {})",
                name.unwrap_or_default(),
                names.join(", ")
            ),
        }
    }

    /// Carries out the core's answer to a waiting client.
    pub(super) fn answer(&mut self, to: crate::core::ReplyTo, answer: Answer) {
        if let Some(reply) = self.replies.take(to) {
            self::answer(reply, response(answer));
        }
    }
}

/// Answers a client (one that left does not matter).
fn answer(reply: Reply, response: Response) {
    let _ = reply.send(response);
}

/// The wire form of the core's answer.
pub(super) fn response(answer: Answer) -> Response {
    match answer {
        Answer::Reload(reports) => Response::Reload { reports },
        Answer::Restarted {
            app,
            generation,
            workers,
        } => Response::Restarted {
            app,
            generation,
            workers,
        },
        Answer::Scaled {
            app,
            from,
            to,
            note,
        } => Response::Scaled {
            app,
            from,
            to,
            note,
        },
        Answer::Stopped => Response::Stopped,
        Answer::Switched(Switched::Stopped {
            app,
            workers,
            already,
        }) => Response::AppStopped {
            app,
            workers,
            already,
        },
        Answer::Switched(Switched::Started {
            app,
            pids,
            already,
            note,
        }) => Response::AppStarted {
            app,
            pids,
            already,
            note,
        },
        Answer::Switched(Switched::Reset { apps }) => Response::Reset { apps },
        Answer::Refused(message) => Response::Error { message },
    }
}

/// Clients waiting for the core's answer, by the id the core knows them by.
#[derive(Debug, Default)]
pub(super) struct Replies {
    waiting: HashMap<ReplyTo, Reply>,
    next: ReplyTo,
}

impl Replies {
    /// Keeps `reply` until the core answers the id returned.
    pub(super) fn wait(&mut self, reply: Reply) -> ReplyTo {
        self.next += 1;
        self.waiting.insert(self.next, reply);
        self.next
    }

    /// The client the core answers.
    pub(super) fn take(&mut self, to: ReplyTo) -> Option<Reply> {
        self.waiting.remove(&to)
    }
}
