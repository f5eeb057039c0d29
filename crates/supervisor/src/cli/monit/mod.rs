//! `supervisor monit`: a live view of every app and worker (the control socket's status every
//! second) with the log stream of the selected row, and keys to reload, restart and scale the
//! selected app. By layer: `model` (what is shown, plain data), `view` (the model drawn into a
//! ratatui frame, pure), `keys` (a key's effect on the model and the action it asks, pure), `io`
//! (the control socket, the keyboard and signals, each on its own task) and `terminal` (raw
//! mode and the alternate screen, given back on every way out). Without a terminal on stdout it
//! prints the status once and says why.

mod io;
mod keys;
mod model;
mod terminal;
mod view;

#[cfg(test)]
mod fixture;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use io::{Event, LogEvent, LogKind};
use keys::Action;
use model::{LogPane, Message, Model};

/// The screen is drawn at most this often (a log flood must not cost a draw per frame).
const FRAME: Duration = Duration::from_millis(50);

/// `monit`.
pub(super) async fn monit(socket: &Path) -> Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        return once(socket).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let result = run(socket, stop.clone()).await;
    stop.store(true, Ordering::Relaxed);
    result
}

/// Not on a terminal: the status once, as `status` prints it, and a note on stderr.
async fn once(socket: &Path) -> Result<ExitCode> {
    let report = match io::status(socket).await {
        Ok(r) => r,
        Err(e) => bail!("{e}"),
    };
    print!("{}", super::render::render_status(&report));
    eprintln!(
        "supervisor monit: stdout is not a terminal: the status printed once (monit needs a terminal; `supervisor status` and `supervisor logs -f` are the commands for scripts)"
    );
    Ok(ExitCode::SUCCESS)
}

/// The log follower of the moment.
#[derive(Debug)]
struct Follower {
    target: String,
    id: u64,
    task: tokio::task::JoinHandle<()>,
}

/// The live view, until `q` (or a signal): the terminal is given back on every way out.
async fn run(socket: &Path, stop: Arc<AtomicBool>) -> Result<ExitCode> {
    // The status before the screen: a supervisor that does not run is an error in plain text.
    let first = io::status(socket).await.map_err(anyhow::Error::msg)?;
    let (tx, mut events) = mpsc::channel::<Event>(64);
    let (log_tx, mut log_events) = mpsc::channel::<LogEvent>(io::LOG_FRAMES);
    let refresh = Arc::new(Notify::new());
    io::spawn_signals(tx.clone()).context("cannot install signal handlers")?;
    let actions = io::spawn_actions(socket.to_path_buf(), tx.clone(), refresh.clone());

    let guard = terminal::enter().context("cannot take the terminal")?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    io::spawn_input(tx.clone(), stop);
    let mut model = Model::default();
    model.set_status(first);
    io::spawn_status(socket.to_path_buf(), tx, refresh);

    let mut follower: Option<Follower> = None;
    let mut followers = 0u64;
    let mut dirty = true;
    let mut drawn = long_ago();
    loop {
        // The log pane follows the selected row.
        let want = model.log_target();
        if follower.as_ref().map(|f| &f.target) != want.as_ref() {
            if let Some(f) = follower.take() {
                f.task.abort();
            }
            model.logs = LogPane::default();
            if let Some(target) = want {
                followers += 1;
                follower = Some(Follower {
                    task: io::spawn_follower(
                        socket.to_path_buf(),
                        target.clone(),
                        followers,
                        log_tx.clone(),
                    ),
                    target,
                    id: followers,
                });
            }
            dirty = true;
        }
        if dirty && drawn.elapsed() >= FRAME {
            term.draw(|f| view::draw(f, &model))?;
            drawn = Instant::now();
            dirty = false;
        }
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    Event::Key(key) => {
                        let (ui, action) = keys::on_key(&model, key);
                        model.ui = ui;
                        match action {
                            Action::Quit => break,
                            Action::None => {}
                            action => {
                                if actions.try_send(action).is_err() {
                                    model.ui.message = Some(Message::error(
                                        "busy: the actions asked before are still running",
                                    ));
                                }
                            }
                        }
                        // A key is answered on screen at once.
                        drawn = long_ago();
                    }
                    Event::Resize => {}
                    Event::Status(Ok(report)) => model.set_status(*report),
                    Event::Status(Err(e)) => model.status_error = Some(e),
                    Event::Done(message) => model.ui.message = Some(message),
                    Event::Quit => break,
                    Event::InputError(e) => bail!("cannot read the keyboard: {e}"),
                }
                dirty = true;
            }
            Some(event) = log_events.recv() => {
                let current = follower.as_ref().map(|f| f.id);
                let mut next = Some(event);
                // Everything that waits, in one go.
                while let Some(e) = next {
                    if Some(e.id) == current {
                        apply_log(&mut model, follower.as_ref(), e.kind);
                        dirty = true;
                    }
                    next = log_events.try_recv().ok();
                }
            }
            _ = tokio::time::sleep_until(drawn + FRAME), if dirty => {}
        }
    }
    if let Some(f) = follower {
        f.task.abort();
    }
    drop(term);
    drop(guard);
    Ok(ExitCode::SUCCESS)
}

/// An instant a frame ago: the next draw is due.
fn long_ago() -> Instant {
    let now = Instant::now();
    now.checked_sub(FRAME).unwrap_or(now)
}

fn apply_log(model: &mut Model, follower: Option<&Follower>, kind: LogKind) {
    match kind {
        LogKind::Opened(lines) => {
            let target = follower.map(|f| f.target.clone()).unwrap_or_default();
            model.logs.reset(target, lines);
        }
        LogKind::Lines(lines, lost) => model.logs.push(lines, lost),
        LogKind::Ended(why) => model.logs.note = Some(why),
    }
}
