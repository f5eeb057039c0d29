//! The requests about logs (`logs`, `logs -f`, `flush`, `reopen-logs`), served by their
//! connection from the logs hub: the event loop never sees them. A follower gets the tail, then
//! every new line that matches, in frames of whatever has arrived; one that reads too slowly
//! loses lines (the broadcast moves on without it) and is told how many, and a follower that
//! does not take a frame within the idle timeout is dropped: it never holds anyone back.

use futures_util::{SinkExt, StreamExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::protocol::{Request, Response};
use super::server::Limits;
use crate::logs::Logs;

/// Lines per frame of the live stream, at most.
const FRAME_LINES: usize = 512;

/// What became of a request about logs.
#[derive(Debug)]
pub(super) enum Served {
    /// Answer this.
    Answer(Response),
    /// A stream ended; the connection may ask again.
    Done,
    /// The connection is over.
    Close,
}

/// Serves `request` (one about logs, [`Request::is_about_logs`]).
pub(super) async fn serve(
    request: Request,
    logs: &Logs,
    reader: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    limits: Limits,
) -> Served {
    match request {
        Request::ReopenLogs => {
            let files = logs.reopen().await;
            tracing::info!("log files reopened ({files} were open)");
            Served::Answer(Response::Reopened { files })
        }
        Request::Flush { app } => match logs.resolve(app.as_deref()) {
            Err(message) => Served::Answer(Response::Error { message }),
            Ok(filter) if filter.worker.is_some() => Served::Answer(Response::Error {
                message: "flush takes an app, not a worker (its files are the app's)".into(),
            }),
            Ok(filter) => {
                let files = logs.flush(filter.app.as_deref()).await;
                Served::Answer(Response::Flushed { files })
            }
        },
        Request::Logs {
            target,
            lines,
            stream,
            since_ms,
            follow,
        } => {
            let mut filter = match logs.resolve(target.as_deref()) {
                Ok(f) => f,
                Err(message) => return Served::Answer(Response::Error { message }),
            };
            filter.stream = stream;
            filter.since = since_ms.map(|ms| ms as f64 / 1000.0);
            // Subscribed before the tail is taken: no line falls between the two.
            let live = follow.then(|| logs.subscribe());
            let (tail, complete) = logs.tail(&filter, lines);
            let after = tail.last().map_or(0, |r| r.seq);
            let answer = Response::Logs {
                lines: tail.iter().map(|r| r.to_line()).collect(),
                files: logs.files(filter.app.as_deref()),
                complete,
            };
            let Some(mut live) = live else {
                return Served::Answer(answer);
            };
            if write(writer, &answer, limits).await.is_err() {
                return Served::Close;
            }
            filter.since = None;
            let mut after = after;
            loop {
                let first = tokio::select! {
                    first = live.recv() => first,
                    // The client sent something or left: the stream ends.
                    _ = reader.next() => return Served::Close,
                };
                let mut lost = 0;
                let mut batch = Vec::new();
                let mut push = |r: std::sync::Arc<crate::logs::record::Record>,
                                batch: &mut Vec<_>| {
                    if r.seq > after && filter.matches(&r) {
                        after = r.seq;
                        batch.push(r.to_line());
                    }
                };
                match first {
                    Ok(r) => push(r, &mut batch),
                    Err(RecvError::Lagged(n)) => lost += n,
                    Err(RecvError::Closed) => return Served::Close,
                }
                while batch.len() < FRAME_LINES {
                    match live.try_recv() {
                        Ok(r) => push(r, &mut batch),
                        Err(TryRecvError::Lagged(n)) => lost += n,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Closed) => return Served::Close,
                    }
                }
                if batch.is_empty() && lost == 0 {
                    continue;
                }
                let frame = Response::LogLines { lines: batch, lost };
                if write(writer, &frame, limits).await.is_err() {
                    return Served::Close;
                }
            }
        }
        _ => Served::Done,
    }
}

/// Writes one frame, within the idle timeout.
async fn write(
    writer: &mut FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    response: &Response,
    limits: Limits,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    tokio::time::timeout(limits.idle_timeout, writer.send(bytes::Bytes::from(bytes)))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
