//! One run of a `[[job]] http`: a request to the app through its own first listener (so any
//! ready worker of the app answers it, on this host), carrying the job's name, tick and fencing
//! token as `Supervisor-Job-*` headers. 2xx is `ok`; anything else, no answer within the
//! timeout, or a cancelled run (lease lost, supervisor stopping) is `failed` with the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cronlock::JobContext;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::config_jobs::Stops;

/// Where the request goes: the app's first listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP listener (a wildcard address is reached on loopback).
    Tcp(SocketAddr),
    /// A Unix socket listener.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What an http job sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpJob {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The app's name (for logs).
    pub app: String,
    /// The app's first listener.
    pub target: Target,
    /// The request is cancelled after this long.
    pub timeout: Duration,
}

/// Sends the request once; `Ok` on a 2xx answer.
pub async fn run(job: Arc<HttpJob>, ctx: JobContext, stops: Stops) -> Result<(), String> {
    let what = format!(
        "{} {} to {} ({})",
        job.method, job.path, job.app, job.target
    );
    tokio::select! {
        r = send(&job, &ctx) => r.map_err(|e| format!("{what}: {e}")),
        () = tokio::time::sleep(job.timeout) => Err(format!(
            "{what}: no answer within {}: request cancelled",
            humantime::format_duration(job.timeout)
        )),
        () = ctx.cancel.cancelled() => Err(format!(
            "{what}: cancelled (lease lost or shutdown)"
        )),
        () = stops.term.cancelled() => Err(format!(
            "{what}: cancelled: the supervisor is stopping"
        )),
    }
}

/// Aborts the connection task when the request is done or dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send(job: &HttpJob, ctx: &JobContext) -> Result<(), String> {
    let host = match &job.target {
        Target::Tcp(a) => a.to_string(),
        Target::Unix(_) => "localhost".to_string(),
    };
    let mut builder = http::Request::builder()
        .method(job.method.as_str())
        .uri(job.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "supervisor-job");
    if job.method != "GET" && job.method != "HEAD" {
        builder = builder.header(http::header::CONTENT_LENGTH, "0");
    }
    for (k, v) in super::config_jobs::run_vars(ctx) {
        let name = format!("Supervisor-Job-{}{}", &k[..1], k[1..].to_ascii_lowercase());
        builder = builder.header(name, v);
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let (mut sender, _conn) = match &job.target {
        Target::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            handshake(TokioIo::new(s)).await?
        }
        Target::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            handshake(TokioIo::new(s)).await?
        }
    };
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        tracing::info!(job = %ctx.job, token = ctx.token, status = status.as_u16(), "{} {} answered", job.method, job.path);
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body);
    let text: String = text.trim().chars().take(200).collect();
    Err(if text.is_empty() {
        format!("status {status}")
    } else {
        format!("status {status}: {text}")
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn handshake<IO>(io: TokioIo<IO>) -> Result<(Sender, AbortOnDrop), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, AbortOnDrop(task)))
}
