//! Control socket server: a 0600 Unix socket; each request is handed to the daemon loop with a
//! oneshot for the answer. A stale socket file from a dead supervisor is replaced; a live one is
//! refused. The server protects the daemon from its clients, and its clients from each other:
//! accept errors (fd limit reached) are retried after a pause; connections are capped in number,
//! and a new one always gets in, in place of the connection that has waited longest for a request
//! ([`super::fair`]), so idle or slow clients never starve the owner; every read and write has a
//! deadline; request frames are capped in size; a request that cannot be read gets an error
//! answer.

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
        })
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
                connections.spawn(serve_connection(stream, conn, requests, limits, unwritten));
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

/// Answers the requests of one connection until it ends, is idle too long, gives its place to a
/// newcomer, or sends a frame that cannot be read.
async fn serve_connection(
    stream: UnixStream,
    conn: Conn,
    requests: mpsc::Sender<ControlRequest>,
    limits: Limits,
    unwritten: Arc<Unwritten>,
) {
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
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(5);

    /// A served control socket whose "daemon" answers every request with `Stopped`.
    fn serve(limits: Limits) -> (tempfile::TempDir, PathBuf, ControlSocket) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let mut socket = ControlSocket::bind(&path, Path::new("s.toml")).unwrap();
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(8);
        socket.serve_with(tx, limits);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let _ = r.reply.send(Response::Stopped);
            }
        });
        (dir, path, socket)
    }

    async fn raw(conn: &mut protocol::Conn, bytes: &[u8]) -> Option<Response> {
        conn.send(bytes::Bytes::copy_from_slice(bytes))
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, protocol::recv::<Response>(conn))
            .await
            .expect("no answer in time")
            .unwrap()
    }

    fn error_text(r: Option<Response>) -> String {
        match r {
            Some(Response::Error { message }) => message,
            other => panic!("expected an error answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_and_malformed_requests_get_an_error_answer() {
        let (_d, path, _s) = serve(Limits::default());
        let mut conn = protocol::framed(UnixStream::connect(&path).await.unwrap());
        let e = error_text(raw(&mut conn, br#"{"request":"resize","n":3}"#).await);
        assert!(
            e.contains("malformed request") && e.contains("resize"),
            "{e}"
        );
        let e = error_text(raw(&mut conn, b"not json").await);
        assert!(e.contains("malformed request"), "{e}");
        // The connection still serves a good request afterwards.
        let ok = raw(&mut conn, br#"{"request":"status"}"#).await;
        assert!(matches!(ok, Some(Response::Stopped)), "{ok:?}");
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_from_its_length_prefix() {
        let (_d, path, _s) = serve(Limits::default());
        let mut stream = UnixStream::connect(&path).await.unwrap();
        // A 16 MiB length prefix and nothing else: answered at once, nothing allocated for it.
        stream
            .write_all(&(16u32 << 20).to_be_bytes())
            .await
            .unwrap();
        let mut conn = protocol::framed(stream);
        let answer = tokio::time::timeout(DEADLINE, protocol::recv::<Response>(&mut conn))
            .await
            .expect("no answer in time")
            .unwrap();
        let e = error_text(answer);
        assert!(e.contains("longer than 65536 bytes"), "{e}");
        let end = tokio::time::timeout(DEADLINE, protocol::recv::<Response>(&mut conn))
            .await
            .expect("connection not closed");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[tokio::test]
    async fn answers_given_are_waited_for_until_written_and_waiting_clients_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let mut socket = ControlSocket::bind(&path, Path::new("s.toml")).unwrap();
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(8);
        socket.serve(tx);
        // Nothing given: nothing to wait for.
        assert!(socket.answers_written(Duration::from_millis(10)).await);
        // One client waits for an answer the daemon never gives (an `upgrade` request).
        let mut waiting = protocol::framed(UnixStream::connect(&path).await.unwrap());
        protocol::send(&mut waiting, &Request::Upgrade { binary: None })
            .await
            .unwrap();
        let _held = rx.recv().await.unwrap();
        assert!(socket.answers_written(Duration::from_millis(10)).await);
        // Another gets its answer: once written, the wait ends and the client has it.
        let mut answered = protocol::framed(UnixStream::connect(&path).await.unwrap());
        protocol::send(&mut answered, &Request::Status { app: None })
            .await
            .unwrap();
        let req = rx.recv().await.unwrap();
        req.reply.send(Response::Stopped).unwrap();
        assert!(socket.answers_written(DEADLINE).await);
        let got = protocol::recv::<Response>(&mut answered).await.unwrap();
        assert!(matches!(got, Some(Response::Stopped)), "{got:?}");
        // An answer to a client that left does not count.
        let mut gone = protocol::framed(UnixStream::connect(&path).await.unwrap());
        protocol::send(&mut gone, &Request::Status { app: None })
            .await
            .unwrap();
        let req = rx.recv().await.unwrap();
        drop(gone);
        let _ = req.reply.send(Response::Stopped);
        assert!(socket.answers_written(DEADLINE).await);
    }

    #[tokio::test]
    async fn idle_connection_is_dropped() {
        let limits = Limits {
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (_d, path, _s) = serve(limits);
        let mut stream = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("idle connection still open")
            .unwrap();
        assert_eq!(n, 0, "closed by the server");
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_takes_the_place_of_the_longest_idle_one() {
        let limits = Limits {
            max_connections: 2,
            idle_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let (_d, path, _s) = serve(limits);
        let mut idle = vec![];
        for _ in 0..2 {
            let mut c = protocol::framed(UnixStream::connect(&path).await.unwrap());
            // Answered, so the server has taken this connection (and holds its place).
            assert!(raw(&mut c, br#"{"request":"status"}"#).await.is_some());
            idle.push(c);
        }
        // A third one is served at once.
        let mut third = protocol::framed(UnixStream::connect(&path).await.unwrap());
        let answer = raw(&mut third, br#"{"request":"status"}"#).await;
        assert!(matches!(answer, Some(Response::Stopped)), "{answer:?}");
        // In place of the first, idle the longest: closed by the server; the second still served.
        let end = tokio::time::timeout(DEADLINE, protocol::recv::<Response>(&mut idle[0]))
            .await
            .expect("the longest idle connection is closed");
        assert!(matches!(end, Ok(None)), "{end:?}");
        let still = raw(&mut idle[1], br#"{"request":"status"}"#).await;
        assert!(matches!(still, Some(Response::Stopped)), "{still:?}");
    }

    #[tokio::test]
    async fn connections_waiting_for_an_answer_keep_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let mut socket = ControlSocket::bind(&path, Path::new("s.toml")).unwrap();
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(8);
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        socket.serve_with(tx, limits);
        // Two requests the daemon holds: both connections are busy.
        let mut held = vec![];
        let mut waiting = vec![];
        for _ in 0..2 {
            let mut c = protocol::framed(UnixStream::connect(&path).await.unwrap());
            protocol::send(&mut c, &Request::Stop).await.unwrap();
            held.push(rx.recv().await.unwrap());
            waiting.push(c);
        }
        let mut third = protocol::framed(UnixStream::connect(&path).await.unwrap());
        protocol::send(&mut third, &Request::Status { app: None })
            .await
            .unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(early.is_err(), "served over the cap: {early:?}");
        // One is answered: its place goes to the third (after it, it waits idle).
        held.pop().unwrap().reply.send(Response::Stopped).unwrap();
        let req = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("the third is served once a place is free")
            .unwrap();
        req.reply.send(Response::Stopped).unwrap();
        let got = protocol::recv::<Response>(&mut third).await.unwrap();
        assert!(matches!(got, Some(Response::Stopped)), "{got:?}");
        // The one still waiting was never closed.
        held.pop().unwrap().reply.send(Response::Stopped).unwrap();
        let got = protocol::recv::<Response>(&mut waiting[0]).await.unwrap();
        assert!(matches!(got, Some(Response::Stopped)), "{got:?}");
    }

    #[tokio::test]
    async fn a_flood_of_idle_connections_does_not_delay_an_answer() {
        let (_d, path, _s) = serve(Limits::default());
        let mut flood = Vec::new();
        for _ in 0..1000 {
            flood.push(UnixStream::connect(&path).await.unwrap());
        }
        let started = std::time::Instant::now();
        let mut c = protocol::framed(UnixStream::connect(&path).await.unwrap());
        let answer = raw(&mut c, br#"{"request":"status"}"#).await;
        assert!(matches!(answer, Some(Response::Stopped)), "{answer:?}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
}
