//! Serving an axum `Router` on the listeners with a drain that no client sees as an error.
//!
//! On shutdown: every listener is closed at once (the supervisor and the other workers keep the
//! shared socket, so the kernel queues new connections for them); in-flight requests finish;
//! every HTTP/1 response from then on carries `Connection: close`, so a keep-alive client's next
//! request is answered and the connection then closed cleanly; a connection is closed without a
//! response only after it was idle for `idle_grace` since the drain began or its last request.
//!
//! The one race HTTP/1.1 cannot remove: a client that sends a request on an idle keep-alive
//! connection at the instant the server closes it sees the connection close without an answer.
//! The grace period makes this vanish for clients that keep sending (each of their connections
//! gets a request, and a `Connection: close`, within the grace); a client idle longer than the
//! grace should retry its idempotent request on a new connection, as RFC 9112 section 9.3.1 allows.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use http::header::{CONNECTION, HeaderValue};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listeners::{Listener, NamedListener};

/// How the drain behaves.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// An idle keep-alive connection is closed only after this long without a request.
    pub idle_grace: Duration,
    /// After this long, whatever is still open is dropped and `serve` returns.
    pub deadline: Duration,
}

impl DrainOptions {
    /// Defaults from the supervisor's environment: the deadline stays 500 ms inside the
    /// supervisor's kill timeout (`SUPERVISOR_KILL_TIMEOUT_MS`, else 30 s); the idle grace is
    /// `DRAIN_IDLE_GRACE_MS` or 1 s.
    pub fn from_env() -> DrainOptions {
        let ms = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let kill = ms("SUPERVISOR_KILL_TIMEOUT_MS").unwrap_or(30_000);
        let deadline = Duration::from_millis(kill.saturating_sub(500).max(100));
        let idle_grace =
            Duration::from_millis(ms("DRAIN_IDLE_GRACE_MS").unwrap_or(1000)).min(deadline);
        DrainOptions {
            idle_grace,
            deadline,
        }
    }
}

/// What the drain did.
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainReport {
    /// Connections still open when the drain began.
    pub open_at_drain: usize,
    /// Connections dropped at the deadline.
    pub dropped_at_deadline: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// Shared state of all connections of one server.
#[derive(Debug, Default)]
struct Shared {
    open: AtomicUsize,
    draining_since: std::sync::OnceLock<Instant>,
}

/// Per-connection activity, for the idle rule.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request start or end.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the connection has been idle, counted from `not_before` at the earliest; `None`
    /// while a request is in flight.
    fn idle_for(&self, not_before: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(Instant::now().saturating_duration_since(last.max(not_before)))
    }
}

/// Serves `router` on `listeners` until `shutdown`, then drains. Returns when every connection
/// is closed or the drain deadline passed.
pub async fn serve(
    listeners: Vec<NamedListener>,
    router: Router,
    shutdown: CancellationToken,
    opts: DrainOptions,
) -> DrainReport {
    let shared = Arc::new(Shared::default());
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    let mut accept_loops = Vec::new();
    for l in listeners {
        let ctx = ConnCtx {
            router: router.clone(),
            shared: shared.clone(),
            draining: draining.clone(),
            grace: opts.idle_grace,
        };
        let tracker = connections.clone();
        let stop = shutdown.clone();
        accept_loops.push(tokio::spawn(accept_loop(l, ctx, tracker, stop)));
    }
    shutdown.cancelled().await;
    // Close our copies of the listening sockets first: from now on the kernel hands new
    // connections to the other workers.
    for a in accept_loops {
        let _ = a.await;
    }
    let started = Instant::now();
    let _ = shared.draining_since.set(started);
    let open_at_drain = shared.open.load(Ordering::Relaxed);
    crate::ready::notify_stopping();
    tracing::info!(
        open_connections = open_at_drain,
        "listeners closed; draining connections"
    );
    draining.cancel();
    connections.close();
    let finished = tokio::time::timeout(opts.deadline, connections.wait())
        .await
        .is_ok();
    let report = DrainReport {
        open_at_drain,
        dropped_at_deadline: if finished {
            0
        } else {
            shared.open.load(Ordering::Relaxed)
        },
        took: started.elapsed(),
    };
    tracing::info!(
        took_ms = report.took.as_millis() as u64,
        dropped = report.dropped_at_deadline,
        "drained"
    );
    report
}

#[derive(Clone)]
struct ConnCtx {
    router: Router,
    shared: Arc<Shared>,
    draining: CancellationToken,
    grace: Duration,
}

async fn accept_loop(
    l: NamedListener,
    ctx: ConnCtx,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return, // drops the listener: our fd is closed now
            a = accept(&l.listener) => a,
        };
        match accepted {
            Ok(Accepted::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                tracker.spawn(serve_conn(s, ctx.clone()));
                single_accept().await;
            }
            Ok(Accepted::Unix(s)) => {
                tracker.spawn(serve_conn(s, ctx.clone()));
                single_accept().await;
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %l.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// After each accept, step off the CPU for a moment before accepting again. Every worker blocked
/// in `accept` on the shared socket is woken by a burst of new connections, but the one already
/// running would otherwise drain the whole queue before the others get a core; keep-alive
/// connections never move between workers afterwards, so the spread at connect time is the load
/// balance. This is libuv's `UV_TCP_SINGLE_ACCEPT` for Node's cluster: a 1 ns `nanosleep`, which
/// the kernel's timer slack turns into tens of microseconds during which a woken peer can run.
/// Blocking the event loop that briefly is the point; it only happens right after an accept.
async fn single_accept() {
    std::thread::sleep(Duration::from_nanos(1));
    tokio::task::yield_now().await;
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Tcp(t) => t.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(u) => u.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

async fn serve_conn<IO>(io: IO, ctx: ConnCtx)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ctx.shared.open.fetch_add(1, Ordering::Relaxed);
    let activity = Arc::new(Activity::new());
    let svc = {
        let (router, activity, draining) =
            (ctx.router.clone(), activity.clone(), ctx.draining.clone());
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let mut router = router.clone();
            let (activity, draining) = (activity.clone(), draining.clone());
            async move {
                activity.in_flight.fetch_add(1, Ordering::Relaxed);
                activity.touch();
                let http1 = req.version() <= http::Version::HTTP_11;
                let mut resp = match tower::Service::call(&mut router, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if http1 && draining.is_cancelled() {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                activity.touch();
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {
            ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        _ = ctx.draining.cancelled() => {}
    }
    let since = ctx
        .shared
        .draining_since
        .get()
        .copied()
        .unwrap_or_else(Instant::now);
    loop {
        let wait = match activity.idle_for(since) {
            Some(idle) if idle >= ctx.grace => {
                conn.as_mut().graceful_shutdown();
                break;
            }
            Some(idle) => ctx.grace - idle,
            None => ctx.grace,
        };
        tokio::select! {
            _ = conn.as_mut() => {
                ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = conn.await;
    ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
}
