//! `monit`'s edges, each on a task (or thread) of its own so that none holds up the screen: the
//! keyboard (a thread: crossterm reads blocking), the status every second, the log stream of
//! the selected row (bounded: a flood loses lines, counted, never the keys), the actions (one
//! at a time, each answered on the status line), and the signals that end `monit`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossterm::event::{self, Event as TermEvent, KeyEvent, KeyEventKind};
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc};

use super::keys::Action;
use super::model::{self, Message};
use crate::cli::render::{render_answer, render_reload_request};
use crate::control::client;
use crate::control::protocol::{self, LogLine, ReloadMode, Request, Response, StatusReport};

/// How often the status is asked.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// How many log frames wait for the screen at most (beyond: lines lost, counted).
pub(super) const LOG_FRAMES: usize = 64;

/// How many lines the log pane starts with.
const LOG_TAIL: usize = 100;

/// What comes to the screen's loop (besides log lines).
#[derive(Debug)]
pub(super) enum Event {
    /// A key pressed.
    Key(KeyEvent),
    /// The terminal's size changed.
    Resize,
    /// A status report, or why there is none.
    Status(Result<Box<StatusReport>, String>),
    /// An action's result.
    Done(Message),
    /// A signal: leave.
    Quit,
    /// The keyboard cannot be read.
    InputError(String),
}

/// What a log follower sends, tagged with its number (a stale follower's frames are dropped).
#[derive(Debug)]
pub(super) struct LogEvent {
    /// The follower's number.
    pub(super) id: u64,
    /// What happened.
    pub(super) kind: LogKind,
}

/// A log follower's news.
#[derive(Debug)]
pub(super) enum LogKind {
    /// The stream is open: the last lines.
    Opened(Vec<LogLine>),
    /// New lines, and how many were lost before them.
    Lines(Vec<LogLine>, u64),
    /// The stream ended or could not open (tried again in a second).
    Ended(String),
}

/// Reads the keyboard on a thread until `stop` (checked every 100 ms) or the loop is gone.
pub(super) fn spawn_input(tx: mpsc::Sender<Event>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let got = match event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => event::read(),
                Err(e) => Err(e),
            };
            let sent = match got {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                    tx.blocking_send(Event::Key(k))
                }
                Ok(TermEvent::Resize(..)) => tx.blocking_send(Event::Resize),
                Ok(_) => Ok(()),
                Err(e) => {
                    let _ = tx.blocking_send(Event::InputError(e.to_string()));
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
}

/// SIGTERM, SIGHUP and SIGINT end `monit` the way `q` does (the terminal given back).
pub(super) fn spawn_signals(tx: mpsc::Sender<Event>) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGHUP, SIGINT])?;
    tokio::spawn(async move {
        if signals.next().await.is_some() {
            let _ = tx.send(Event::Quit).await;
        }
    });
    Ok(())
}

/// Asks the status every [`REFRESH`], or at once when `refresh` is notified (after an action).
pub(super) fn spawn_status(socket: PathBuf, tx: mpsc::Sender<Event>, refresh: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            let answer = status(&socket).await.map(Box::new);
            if tx.send(Event::Status(answer)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = refresh.notified() => {}
            }
        }
    });
}

/// The status report of every app (or of one).
async fn status_of(socket: &Path, app: Option<String>) -> Result<StatusReport, String> {
    match client::request(socket, Request::Status { app }, Duration::from_secs(5)).await {
        Ok(Response::Status(report)) => Ok(*report),
        Ok(Response::Error { message }) => Err(format!("status refused: {message}")),
        Ok(other) => Err(format!("unexpected answer: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The status report of every app.
pub(super) async fn status(socket: &Path) -> Result<StatusReport, String> {
    status_of(socket, None).await
}

/// Carries out the actions one at a time (a second `+` counts from the first one's result),
/// each answered with a [`Event::Done`] and a status asked at once.
pub(super) fn spawn_actions(
    socket: PathBuf,
    tx: mpsc::Sender<Event>,
    refresh: Arc<Notify>,
) -> mpsc::Sender<Action> {
    let (act_tx, mut act_rx) = mpsc::channel::<Action>(4);
    tokio::spawn(async move {
        while let Some(action) = act_rx.recv().await {
            let message = match act(&socket, action).await {
                Ok(text) => Message::info(text),
                Err(text) => Message::error(text),
            };
            refresh.notify_one();
            if tx.send(Event::Done(message)).await.is_err() {
                return;
            }
        }
    });
    act_tx
}

/// One action, as the CLI's `reload --no-wait`, `restart` and `scale` ask it: the answer in
/// one line.
async fn act(socket: &Path, action: Action) -> Result<String, String> {
    let (request, what) = match action {
        Action::Reload(app) => (
            Request::Reload {
                app: Some(app),
                wait: false,
                mode: ReloadMode::Rolling,
            },
            "reload",
        ),
        Action::Restart(app) => (Request::Restart { app }, "restart"),
        Action::Scale { app, delta } => {
            // Counted from the supervisor's answer now, not from the screen's last second.
            let report = status_of(socket, Some(app.clone())).await?;
            let now = report.apps.first().map_or(0, model::instances);
            let instances = model::scaled(&app, now, delta)?;
            (Request::Scale { app, instances }, "scale")
        }
        Action::None | Action::Quit => return Ok(String::new()),
    };
    let answer = client::request(socket, request, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    let text = match &answer {
        Response::Error { message } => return Err(format!("{what} refused: {message}")),
        Response::Reload { reports } => reports
            .iter()
            .map(render_reload_request)
            .collect::<String>(),
        other => render_answer(other).ok_or_else(|| format!("unexpected answer: {other:?}"))?,
    };
    Ok(one_line(&text))
}

/// Several lines as one (`a; note: b`).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Follows the output of `target` (`web`, `web.0`) as `logs -f` does, until aborted; a stream
/// that ends or cannot open is tried again every second. Never waits for the screen: frames it
/// cannot hand over are lost and counted.
pub(super) fn spawn_follower(
    socket: PathBuf,
    target: String,
    id: u64,
    tx: mpsc::Sender<LogEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let why = match follow(&socket, &target, id, &tx).await {
                Ok(()) => "the log stream ended (the supervisor stopped?)".to_string(),
                Err(e) => format!("cannot follow the logs of {target}: {e}"),
            };
            if tx.is_closed() {
                return;
            }
            let _ = tx.try_send(LogEvent {
                id,
                kind: LogKind::Ended(why),
            });
            tokio::time::sleep(REFRESH).await;
        }
    })
}

async fn follow(
    socket: &Path,
    target: &str,
    id: u64,
    tx: &mpsc::Sender<LogEvent>,
) -> Result<(), String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| client::connect_error(socket, e).to_string())?;
    let mut conn = protocol::framed(stream);
    let request = Request::Logs {
        target: Some(target.to_string()),
        lines: LOG_TAIL,
        stream: None,
        since_ms: None,
        follow: true,
    };
    protocol::send(&mut conn, &request)
        .await
        .map_err(|e| e.to_string())?;
    let first = tokio::time::timeout(Duration::from_secs(10), protocol::recv(&mut conn))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| e.to_string())?;
    match first {
        Some(Response::Logs { lines, .. }) => {
            // The pane starts over with these: waiting for room is right (it is one frame).
            if tx
                .send(LogEvent {
                    id,
                    kind: LogKind::Opened(lines),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        Some(Response::Error { message }) => return Err(message),
        Some(other) => return Err(format!("unexpected answer: {other:?}")),
        None => return Err("the supervisor closed the connection".into()),
    }
    let mut lost = 0u64;
    loop {
        match protocol::recv::<Response>(&mut conn)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(Response::LogLines { lines, lost: l }) => {
                let n = lines.len() as u64;
                let event = LogEvent {
                    id,
                    kind: LogKind::Lines(lines, lost + l),
                };
                match tx.try_send(event) {
                    Ok(()) => lost = 0,
                    Err(mpsc::error::TrySendError::Full(_)) => lost += l + n,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            }
            Some(other) => return Err(format!("unexpected answer: {other:?}")),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_fit_the_status_line() {
        assert_eq!(
            one_line("web: scaled from 2 to 3 worker(s)\nnote: kept until the next reload\n"),
            "web: scaled from 2 to 3 worker(s); note: kept until the next reload"
        );
    }
}
