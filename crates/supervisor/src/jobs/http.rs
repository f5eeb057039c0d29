//! One run of a `[[job]] http`: a request to the app through its own first listener (so any
//! ready worker of the app answers it, on this host), carrying the job's name, tick and fencing
//! token as `Supervisor-Job-*` headers, and the supervisor's secret
//! ([`crate::runtimes::JOB_SECRET_HEADER`]), which the workers have in their environment: the
//! proof that the request is the supervisor's. 2xx is `ok`; anything else, no answer within the
//! timeout, or a cancelled run (lease lost, supervisor stopping) is `failed` with the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cronlock::JobContext;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::{Runner, Stops};

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
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The app's name (for logs).
    pub app: String,
    /// The app's first listener.
    pub target: Target,
    /// The request is cancelled after this long.
    pub timeout: Duration,
    /// The supervisor's job secret.
    pub secret: Arc<str>,
}

impl Runner for HttpJob {
    /// Sends the request once; `Ok` on a 2xx answer.
    async fn run(self: Arc<Self>, ctx: JobContext, stops: Stops) -> Result<(), String> {
        let what = format!(
            "{} {} to {} ({})",
            self.method, self.path, self.app, self.target
        );
        tokio::select! {
            r = send(&self, &ctx) => r.map_err(|e| format!("{what}: {e}")),
            () = tokio::time::sleep(self.timeout) => Err(format!(
                "{what}: no answer within {}: request cancelled",
                humantime::format_duration(self.timeout)
            )),
            () = ctx.cancel.cancelled() => Err(format!(
                "{what}: cancelled (lease lost or shutdown)"
            )),
            () = stops.term.cancelled() => Err(format!(
                "{what}: cancelled: the supervisor is stopping"
            )),
        }
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
        .header(http::header::USER_AGENT, "supervisor-job")
        .header(crate::runtimes::JOB_SECRET_HEADER, &*job.secret);
    if job.method != "GET" && job.method != "HEAD" {
        builder = builder.header(http::header::CONTENT_LENGTH, "0");
    }
    for (k, v) in super::run_vars(ctx) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    fn ctx() -> JobContext {
        crate::jobs::test_context(7, CancellationToken::new())
    }

    fn job(addr: SocketAddr, timeout: Duration) -> Arc<HttpJob> {
        Arc::new(HttpJob {
            method: "POST".into(),
            path: "/tasks/report?x=1".into(),
            app: "web".into(),
            target: Target::Tcp(addr),
            timeout,
            secret: "s3cret".into(),
        })
    }

    /// A one-connection server answering `answer`; returns its address and the request it read.
    async fn server(answer: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf[got..]).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            if !answer.is_empty() {
                s.write_all(answer.as_bytes()).await.unwrap();
                s.flush().await.unwrap();
            } else {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            String::from_utf8_lossy(&buf[..got]).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_2xx_is_ok_and_the_request_carries_the_run() {
        let (addr, req) = server("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
        let r = job(addr, Duration::from_secs(5))
            .run(ctx(), Stops::default())
            .await;
        assert_eq!(r, Ok(()));
        let req = req.await.unwrap().to_ascii_lowercase();
        assert!(
            req.starts_with("post /tasks/report?x=1 http/1.1\r\n"),
            "{req}"
        );
        for h in [
            "supervisor-job-name: report",
            "supervisor-job-tick: 2026-11-30t02:30:00.000z",
            "supervisor-job-token: 7",
            "supervisor-job-run: 2026-11-30t02:30:00.000z",
            "supervisor-job-secret: s3cret",
            "content-length: 0",
        ] {
            assert!(req.contains(&format!("\r\n{h}\r\n")), "{h}: {req}");
        }
    }

    #[tokio::test]
    async fn another_status_fails_with_the_status_and_the_body() {
        let (addr, _req) = server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n",
        )
        .await;
        let e = job(addr, Duration::from_secs(5))
            .run(ctx(), Stops::default())
            .await
            .unwrap_err();
        assert!(e.ends_with("status 503 Service Unavailable: busy"), "{e}");
    }

    #[tokio::test]
    async fn the_timeout_cancels_a_request_without_an_answer() {
        let (addr, _req) = server("").await;
        let e = job(addr, Duration::from_millis(200))
            .run(ctx(), Stops::default())
            .await
            .unwrap_err();
        assert!(e.contains("no answer within 200ms"), "{e}");
    }
}
