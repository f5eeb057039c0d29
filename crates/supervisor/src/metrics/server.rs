//! The metrics endpoint: a small HTTP/1 server on the `supervisor.metrics` listener (bound at
//! startup with the other sockets) that answers `GET /metrics` and 404 elsewhere. Each scrape
//! asks the daemon for a [`Snapshot`] through a channel (a oneshot reply, like a control
//! request) and, at the same time, reads the cron jobs from the lock backend with a deadline, so
//! neither a slow scrape nor an unreachable Redis ever holds up the event loop.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cronlock::Backend;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{JobMetrics, JobsMetrics, Snapshot};

/// A scrape's question to the daemon: where to send the snapshot.
pub type SnapshotRequest = oneshot::Sender<Snapshot>;

/// How long a scrape waits for the daemon's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the cron backend (all its reads together); past it the backend
/// counts as down for that scrape.
const JOBS_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

struct State {
    snapshots: mpsc::Sender<SnapshotRequest>,
    cron_url: String,
    /// Built on the first scrape that can (a local state dir may not exist yet).
    backend: Mutex<Option<Backend>>,
}

/// Serves `listener` until the returned task is aborted (the daemon does when it exits).
pub fn spawn(
    listener: std::net::TcpListener,
    snapshots: mpsc::Sender<SnapshotRequest>,
    cron_url: String,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let state = Arc::new(State {
        snapshots,
        cron_url,
        backend: Mutex::new(None),
    });
    Ok(tokio::spawn(serve(listener, state)))
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds, most likely: try again a little later.
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue; // too many scrapes at once: this one is closed
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&state, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let (snapshot, jobs) = tokio::join!(daemon_snapshot(state), read_jobs(state));
    let Some(mut snapshot) = snapshot else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor did not answer (stopping?)\n",
        );
    };
    snapshot.jobs = Some(jobs);
    match super::render(snapshot) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        ),
    }
}

/// The daemon's snapshot, or `None` if it does not answer in time (it is stopping).
async fn daemon_snapshot(state: &State) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    tokio::time::timeout(SNAPSHOT_TIMEOUT, async {
        state.snapshots.send(tx).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// The cron jobs from the backend; the backend is down for this scrape if it fails or is slow.
async fn read_jobs(state: &State) -> JobsMetrics {
    let Some(backend) = backend(state) else {
        return JobsMetrics::default();
    };
    // The topology (one round to every node) and the histories, within the one deadline.
    let read = async {
        let topology = backend.topology().await;
        let jobs =
            crate::jobs::registry::histories(&backend, cronlock::HISTORY_LEN, JOBS_TIMEOUT).await;
        (topology, jobs)
    };
    let read = tokio::time::timeout(JOBS_TIMEOUT, read).await;
    // Counted in this process whether or not the backend answers now.
    let down = JobsMetrics {
        failovers_seen: backend.failovers_seen(),
        ..JobsMetrics::default()
    };
    match read {
        Ok((topology, Ok(jobs))) => JobsMetrics {
            backend_up: true,
            backend_healthy: Some(topology.is_healthy()),
            failovers_seen: backend.failovers_seen(),
            jobs: jobs
                .iter()
                .map(|(name, runs)| JobMetrics::from_history(name, runs))
                .collect(),
        },
        Ok((_, Err(e))) => {
            tracing::debug!("metrics: {e}");
            down
        }
        Err(_) => {
            tracing::debug!("metrics: cron backend: no answer within {JOBS_TIMEOUT:?}");
            down
        }
    }
}

fn backend(state: &State) -> Option<Backend> {
    let mut cached = state.backend.lock().ok()?;
    if cached.is_none() {
        match Backend::from_url(&state.cron_url) {
            Ok(b) => *cached = Some(b),
            Err(e) => tracing::debug!("metrics: cron backend: {e}"),
        }
    }
    cached.clone()
}
