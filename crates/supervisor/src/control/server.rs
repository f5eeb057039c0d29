//! Control socket server: a 0600 Unix socket; each request is handed to the daemon loop with a
//! oneshot for the answer. A stale socket file from a dead supervisor is replaced; a live one is
//! refused. The server protects the daemon from its clients, and its clients from each other:
//! accept errors (fd limit reached) are retried after a pause; connections are capped in number,
//! and a new one always gets in, in place of the connection that has waited longest for a request
//! ([`super::fair`]), so idle or slow clients never starve the owner; every read and write has a
//! deadline; request frames are capped in size; a request that cannot be read gets an error
//! answer. Requests about logs are served by the connection itself from the logs hub
//! ([`super::logs`]), never through the event loop.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fair::{Admission, ConnId, Slots};
use super::protocol::{self, Request, Response};
use crate::logs::Logs;
use crate::sys::listeners::clear_stale_socket;

/// What the server tolerates from its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; a newcomer beyond it takes the place of the one idle the
    /// longest (one waiting for the daemon's answer is never closed: when all are, newcomers
    /// wait in the socket's backlog).
    pub max_connections: usize,
    /// How long a connection may take to send a whole request, or to take its answer, before it
    /// is dropped.
    pub idle_timeout: Duration,
    /// The largest request frame read; a longer length prefix is answered with an error.
    pub max_request: usize,
    /// Pause after a failed `accept` (e.g. `EMFILE`) before the next try.
    pub accept_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            idle_timeout: Duration::from_secs(5),
            max_request: protocol::MAX_REQUEST_FRAME,
            accept_backoff: Duration::from_millis(100),
        }
    }
}

/// A request waiting for the daemon's answer.
#[derive(Debug)]
pub struct ControlRequest {
    /// What was asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: Reply,
}

/// The way back to one waiting client. An answer sent counts as unwritten until its connection
/// has written it (or failed to), so that the daemon can wait for every answer it gave to be
/// written before it execs a new binary ([`ControlSocket::answers_written`]).
#[derive(Debug)]
pub struct Reply {
    tx: oneshot::Sender<Response>,
    unwritten: Arc<Unwritten>,
}

impl Reply {
    /// Answers the client; `Err` gives the answer back if the client is gone.
    pub fn send(self, response: Response) -> Result<(), Response> {
        self.unwritten.add();
        self.tx
            .send(response)
            .inspect_err(|_| self.unwritten.done())
    }
}

/// Answers handed to connections and not written yet.
#[derive(Debug, Default)]
struct Unwritten {
    count: std::sync::atomic::AtomicUsize,
    zero: tokio::sync::Notify,
}

impl Unwritten {
    fn add(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.zero.notify_waiters();
        }
    }

    async fn none_left(&self) {
        loop {
            let zero = self.zero.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            zero.await;
        }
    }
}

/// The control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another supervisor answers on this socket.
    #[error(
        "another supervisor is running on control socket {} (stop it with `supervisor stop -c {}`, or give this config its own `[supervisor] name` or `control_socket`)",
        socket.display(),
        config.display()
    )]
    InUse {
        /// The control socket.
        socket: PathBuf,
        /// The config file naming it (what `supervisor stop -c` needs).
        config: PathBuf,
    },
    /// Binding failed.
    #[error("cannot create control socket {path}: {cause}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// The bound control socket; removes its file on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    connections: TaskTracker,
    unwritten: Arc<Unwritten>,
    /// The logs hub, for the requests about logs.
    logs: Option<Logs>,
}

/// Refuses early if a live supervisor owns `path` (before anything else is bound or started);
/// `config` is the file naming it, for the hint.
pub fn check_free(path: &Path, config: &Path) -> Result<(), ControlError> {
    match clear_stale_socket(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ControlError::InUse {
            socket: path.to_path_buf(),
            config: config.to_path_buf(),
        }),
        Err(cause) => Err(ControlError::Bind {
            path: path.to_path_buf(),
            cause,
        }),
    }
}

impl ControlSocket {
    /// Binds the socket with mode 0600 (`config`: the file naming it, for the errors).
    pub fn bind(path: &Path, config: &Path) -> Result<ControlSocket, ControlError> {
        check_free(path, config)?;
        let bind_err = |cause| ControlError::Bind {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(ControlSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            connections: TaskTracker::new(),
            unwritten: Arc::default(),
            logs: None,
        })
    }

    /// Takes over the listening control socket at `path` handed over by an upgrade.
    pub fn inherited(path: &Path, fd: std::os::fd::OwnedFd) -> Result<ControlSocket, ControlError> {
        let bind_err = |cause| ControlError::Bind {
            path: path.to_path_buf(),
            cause,
        };
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(ControlSocket {
            listener: Some(UnixListener::from_std(std_listener).map_err(bind_err)?),
            path: path.to_path_buf(),
            connections: TaskTracker::new(),
            unwritten: Arc::default(),
            logs: None,
        })
    }

    /// Serves the requests about logs from `logs` (before [`Self::serve`]).
    pub fn set_logs(&mut self, logs: Logs) {
        self.logs = Some(logs);
    }

    /// The listening socket's descriptor, for an upgrade's handover (before [`Self::serve`]:
    /// the accepting task owns it from then on, for the life of the process).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listener.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Serves connections with the default [`Limits`] until the daemon's request channel closes.
    pub fn serve(&mut self, requests: mpsc::Sender<ControlRequest>) {
        self.serve_with(requests, Limits::default());
    }

    /// Serves connections with `limits` until the daemon's request channel closes.
    pub fn serve_with(&mut self, requests: mpsc::Sender<ControlRequest>, limits: Limits) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let connections = self.connections.clone();
        let unwritten = self.unwritten.clone();
        let logs = self.logs.clone();
        let served = Arc::new(Served::new(limits.max_connections));
        tokio::spawn(async move {
            // Set while accept keeps failing: the failure is logged once per episode.
            let mut failing = false;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(
                                error = %e,
                                retry_ms = limits.accept_backoff.as_millis() as u64,
                                "control socket: accept failed; retrying until it works again"
                            );
                            failing = true;
                        }
                        tokio::time::sleep(limits.accept_backoff).await;
                        continue;
                    }
                };
                if failing {
                    tracing::info!("control socket: accepting again");
                    failing = false;
                }
                // A place for it, if need be in place of the connection idle the longest; when
                // every connection waits for an answer, until one is answered.
                let (id, evicted) = loop {
                    let changed = served.changed.notified();
                    if let Some(admitted) = served.admit() {
                        break admitted;
                    }
                    changed.await;
                };
                if requests.is_closed() {
                    return;
                }
                let requests = requests.clone();
                let unwritten = unwritten.clone();
                let conn = Conn {
                    id,
                    evicted,
                    served: served.clone(),
                };
                let ends = Ends {
                    requests,
                    unwritten,
                    logs: logs.clone(),
                };
                connections.spawn(serve_connection(stream, conn, ends, limits));
                // Let it read what it sent before the next one is accepted: a client's request is
                // usually there already, and a connection with a request is never evicted.
                tokio::task::yield_now().await;
            }
        });
    }
}

/// The connections served, shared by the accepting task and the connections.
#[derive(Debug)]
struct Served {
    state: std::sync::Mutex<(Slots, HashMap<ConnId, CancellationToken>)>,
    /// A connection ended or waits for a request again: a place may be free.
    changed: tokio::sync::Notify,
}

impl Served {
    fn new(max: usize) -> Served {
        Served {
            state: std::sync::Mutex::new((Slots::new(max), HashMap::new())),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Slots, &mut HashMap<ConnId, CancellationToken>) -> T,
    ) -> T {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (slots, evictions) = &mut *guard;
        f(slots, evictions)
    }

    /// A place for a new connection (closing the one idle the longest if need be), or `None`
    /// when every connection waits for an answer.
    fn admit(&self) -> Option<(ConnId, CancellationToken)> {
        self.with(
            |slots, evictions| match slots.admit(tokio::time::Instant::now()) {
                Admission::Full => None,
                Admission::Admit { id, evict } => {
                    if let Some(old) = evict.and_then(|e| evictions.remove(&e)) {
                        old.cancel();
                    }
                    let token = CancellationToken::new();
                    evictions.insert(id, token.clone());
                    Some((id, token))
                }
            },
        )
    }
}

/// One served connection's place.
struct Conn {
    id: ConnId,
    /// Cancelled when a newcomer takes its place (only while it waits for a request).
    evicted: CancellationToken,
    served: Arc<Served>,
}

impl Conn {
    fn busy(&self) {
        self.served.with(|slots, _| slots.busy(self.id));
    }

    fn idle(&self) {
        self.served
            .with(|slots, _| slots.idle(self.id, tokio::time::Instant::now()));
        self.served.changed.notify_one();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.served.with(|slots, evictions| {
            slots.close(self.id);
            evictions.remove(&self.id);
        });
        self.served.changed.notify_one();
    }
}

/// Where a connection's requests go: the daemon, and the logs hub.
struct Ends {
    requests: mpsc::Sender<ControlRequest>,
    unwritten: Arc<Unwritten>,
    logs: Option<Logs>,
}

/// Answers the requests of one connection until it ends, is idle too long, gives its place to a
/// newcomer, or sends a frame that cannot be read.
async fn serve_connection(stream: UnixStream, conn: Conn, ends: Ends, limits: Limits) {
    let Ends {
        requests,
        unwritten,
        logs,
    } = ends;
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, protocol::codec(limits.max_request));
    let mut writer = FramedWrite::new(write, protocol::codec(protocol::MAX_RESPONSE_FRAME));
    loop {
        conn.idle();
        let next = tokio::select! {
            biased;
            next = tokio::time::timeout(limits.idle_timeout, reader.next()) => next,
            () = conn.evicted.cancelled() => {
                tracing::debug!("control socket: closing the connection idle the longest for a new one");
                return;
            }
        };
        conn.busy();
        let frame = match next {
            Err(_) => {
                tracing::debug!(
                    "control socket: dropping a connection idle for {:?}",
                    limits.idle_timeout
                );
                return;
            }
            Ok(None) => return,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                // The codec refuses an oversized length prefix before allocating for it; any other
                // read error means the peer is gone.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    let message = format!(
                        "request refused: frame longer than {} bytes ({e})",
                        limits.max_request
                    );
                    let _ = tokio::time::timeout(
                        limits.idle_timeout,
                        answer(&mut writer, &Response::Error { message }),
                    )
                    .await;
                }
                return;
            }
        };
        let (response, counted) = match serde_json::from_slice::<Request>(&frame) {
            Ok(request) if request.is_about_logs() && logs.is_some() => {
                let Some(logs) = &logs else { return };
                match super::logs::serve(request, logs, &mut reader, &mut writer, limits).await {
                    super::logs::Served::Answer(response) => (response, false),
                    super::logs::Served::Done => continue,
                    super::logs::Served::Close => return,
                }
            }
            Ok(request) => {
                let (tx, answer) = oneshot::channel();
                let reply = Reply {
                    tx,
                    unwritten: unwritten.clone(),
                };
                if requests
                    .send(ControlRequest { request, reply })
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(response) = answer.await else { return };
                (response, true)
            }
            Err(e) => {
                let message = format!("malformed request: {e}");
                (Response::Error { message }, false)
            }
        };
        // A client that does not read its answer gives its place up after the deadline.
        let written = tokio::time::timeout(limits.idle_timeout, answer(&mut writer, &response))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        if counted {
            unwritten.done();
        }
        if written.is_err() {
            return;
        }
    }
}

async fn answer<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, tokio_util::codec::LengthDelimitedCodec>,
    response: &Response,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    writer.send(bytes::Bytes::from(bytes)).await
}

impl ControlSocket {
    /// Waits (at most `deadline`) until every answer the daemon has given so far is written to
    /// its connection: the last thing before an upgrade's `execve`, which would end the
    /// connection tasks with their answers unwritten. Connections still waiting for an answer
    /// are not waited for.
    pub async fn answers_written(&self, deadline: std::time::Duration) -> bool {
        tokio::time::timeout(deadline, self.unwritten.none_left())
            .await
            .is_ok()
    }

    /// Lets connections deliver their last answers (e.g. to `stop`) before the process exits.
    pub async fn flush(&self, deadline: std::time::Duration) {
        self.connections.close();
        let _ = tokio::time::timeout(deadline, self.connections.wait()).await;
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
