//! Control socket client: one request, one answer, with a deadline and errors that say what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::protocol::{self, Request, Response};

/// Talking to the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no supervisor is running on control socket {path} ({cause}); start one with `supervisor start`"
    )]
    NotRunning {
        /// Socket path.
        path: PathBuf,
        /// The connect error.
        cause: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket {path}: {cause}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The supervisor closed the connection without an answer.
    #[error("control socket {0}: the supervisor closed the connection without answering")]
    NoAnswer(PathBuf),
    /// No answer in time.
    #[error("control socket {path}: no answer within {timeout:?}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
}

/// Sends `request` and waits up to `timeout` for the answer.
pub async fn request(
    path: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let exchange = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|cause| ClientError::NotRunning {
                path: path.to_path_buf(),
                cause,
            })?;
        let mut conn = protocol::framed(stream);
        let io = |cause| ClientError::Io {
            path: path.to_path_buf(),
            cause,
        };
        protocol::send(&mut conn, &request).await.map_err(io)?;
        protocol::recv::<Response>(&mut conn)
            .await
            .map_err(io)?
            .ok_or_else(|| ClientError::NoAnswer(path.to_path_buf()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            path: path.to_path_buf(),
            timeout,
        })?
}
