//! The reading side: a task per pipe reads a worker's stdout or stderr to its end, frames lines,
//! asks the worker's rate limiter, and publishes what passes to the [`super::Logs`] hub (and,
//! in the foreground, as log events in the worker's span). A `[[job]]` command's output is only
//! logged ([`forward_output`]). Reading never stops before end of file, but it pauses while the
//! stream has more than its [`Budget`] waiting for the writer: the pipe fills up and blocks the
//! worker in `write()` until the writer has caught up (no line lost, no other worker held up).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::budget::Budget;
use super::lines::LineFramer;
use super::rate::{Limiter, Verdict};
use super::record::{Level, Record, Stream, Tag, split_level};
use super::writer::Route;
use super::{AppLog, Logs, MAX_LINE, lock};

/// The note added to a line cut at [`MAX_LINE`].
const TRUNCATED: &str = " [line longer than 16 KiB: truncated]";

/// Where one stream of one worker goes.
#[derive(Debug)]
pub struct Sink {
    logs: Logs,
    app: Arc<AppLog>,
    route: Arc<Route>,
    tag: Arc<Tag>,
    stream: Stream,
    /// Shared by the worker's two streams.
    limiter: Arc<Mutex<Limiter>>,
    /// This stream's lines waiting for the writer.
    budget: Arc<Budget>,
    /// The lines of the current read, handed to the writer at its end (one message per read).
    batch: Vec<Arc<Record>>,
}

impl Sink {
    pub(super) fn new(
        logs: Logs,
        app: Arc<AppLog>,
        route: Arc<Route>,
        tag: Arc<Tag>,
        stream: Stream,
        limiter: Arc<Mutex<Limiter>>,
    ) -> Sink {
        Sink {
            logs,
            app,
            route,
            tag,
            stream,
            limiter,
            budget: Arc::default(),
            batch: Vec::new(),
        }
    }

    /// One line read at `now` (`wall`: the same instant on the clock).
    fn line(&mut self, bytes: &[u8], truncated: bool, now: Instant, wall: SystemTime) {
        let len = bytes.len();
        let verdict = lock(&self.limiter).check(len, now);
        let dropped_before = match verdict {
            Verdict::Drop => {
                self.app
                    .counters
                    .dropped_rate
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Verdict::Pass { dropped_before } => dropped_before,
        };
        if dropped_before > 0 {
            self.dropped(dropped_before, wall);
        }
        let text = String::from_utf8_lossy(bytes);
        let default = match self.stream {
            Stream::Out => Level::Info,
            Stream::Err => Level::Warn,
        };
        let (level, text) = split_level(text.trim_end_matches('\r'), default);
        let mut text = text.to_string();
        if truncated {
            text.push_str(TRUNCATED);
        }
        self.publish(level, text, wall);
    }

    /// The line that says how many lines the rate limit dropped.
    fn dropped(&mut self, n: u64, wall: SystemTime) {
        let rate = self.app.policy.rate;
        let text = format!(
            "[supervisor] {n} lines dropped (rate limit per worker: {} lines/s, {}/s)",
            rate.lines_per_sec,
            crate::units::size(rate.bytes_per_sec)
        );
        self.publish(Level::Warn, text, wall);
    }

    fn publish(&mut self, level: Level, text: String, wall: SystemTime) {
        if self.logs.echo() {
            echo(level, &text);
        }
        let record = Record {
            seq: 0,
            tag: self.tag.clone(),
            stream: self.stream,
            level,
            time: wall,
            text,
        };
        let record = self.logs.publish(&self.app, record);
        self.batch.push(record);
    }

    /// The end of a read: its lines go to the writer, in one message.
    fn end_of_read(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.logs.write(&self.app, &self.route, &self.budget, batch);
        }
    }

    /// End of the stream: the count of lines dropped at its very end.
    fn finish(&mut self) {
        let pending = lock(&self.limiter).take_pending();
        if pending > 0 {
            self.dropped(pending, SystemTime::now());
        }
        self.end_of_read();
    }
}

/// What [`read_lines`] hands its caller.
enum Piece<'a> {
    /// A line (truncated or not), read at this instant (on both clocks).
    Line(&'a [u8], bool, Instant, SystemTime),
    /// The lines of one read were all handed over.
    EndOfRead,
}

/// Reads a worker's stream to its end into `sink`, pausing while the writer is behind on it.
pub(crate) async fn forward_worker(fd: OwnedFd, mut sink: Sink) {
    let budget = sink.budget.clone();
    read_lines(fd, Some(&budget), |piece| match piece {
        Piece::Line(line, truncated, now, wall) => sink.line(line, truncated, now, wall),
        Piece::EndOfRead => sink.end_of_read(),
    })
    .await;
    sink.finish();
}

/// Forwards a `[[job]]` command's output line by line as log events in the current span, until
/// end of file.
pub(crate) async fn forward_output(fd: OwnedFd) {
    read_lines(fd, None, |piece| {
        let Piece::Line(line, truncated, _, _) = piece else {
            return;
        };
        let text = String::from_utf8_lossy(line);
        let (level, text) = split_level(text.trim_end_matches('\r'), Level::Info);
        let note = if truncated { TRUNCATED } else { "" };
        echo(level, &format!("{text}{note}"));
    })
    .await;
}

/// Reads `fd` to its end, calling `emit` with every line, then with the end of each read; after
/// each read, waits for room on `budget` if given.
async fn read_lines(fd: OwnedFd, budget: Option<&Budget>, mut emit: impl FnMut(Piece<'_>)) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut framer = LineFramer::new(MAX_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(target: "worker", "cannot read the output pipe any more: {e}");
                break;
            }
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        framer.push(&buf[..n], &mut |l: &[u8], t| {
            emit(Piece::Line(l, t, now, wall))
        });
        emit(Piece::EndOfRead);
        if let Some(budget) = budget {
            budget.room().await;
        }
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    framer.finish(&mut |l: &[u8], t| emit(Piece::Line(l, t, now, wall)));
    emit(Piece::EndOfRead);
}

/// Logs one line as an event at its level in the current span.
fn echo(level: Level, text: &str) {
    match level {
        Level::Error => tracing::error!(target: "worker", "{text}"),
        Level::Warn => tracing::warn!(target: "worker", "{text}"),
        Level::Debug => tracing::debug!(target: "worker", "{text}"),
        Level::Trace => tracing::trace!(target: "worker", "{text}"),
        Level::Info => tracing::info!(target: "worker", "{text}"),
    }
}
