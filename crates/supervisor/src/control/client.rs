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
    /// The socket exists but this user may not connect to it.
    #[error(
        "control socket {path} exists but permission is denied ({cause}){owner}; run the command as the user that started the supervisor (or root)"
    )]
    PermissionDenied {
        /// Socket path.
        path: PathBuf,
        /// Who owns the socket (`, owned by uid N`), when it can be read.
        owner: String,
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

/// What a failed connect means: permission denied (the socket, or a directory on its path, is not
/// accessible to this user) is not "nothing is running".
pub fn connect_error(path: &Path, cause: std::io::Error) -> ClientError {
    use std::os::unix::fs::MetadataExt;
    if cause.kind() == std::io::ErrorKind::PermissionDenied {
        let owner = std::fs::metadata(path)
            .map(|m| format!(", owned by uid {}", m.uid()))
            .unwrap_or_default();
        ClientError::PermissionDenied {
            path: path.to_path_buf(),
            owner,
            cause,
        }
    } else {
        ClientError::NotRunning {
            path: path.to_path_buf(),
            cause,
        }
    }
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
            .map_err(|cause| connect_error(path, cause))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_is_not_reported_as_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = connect_error(&path, denied).to_string();
        assert!(
            e.contains(&format!(
                "control socket {} exists but permission is denied",
                path.display()
            )),
            "{e}"
        );
        assert!(
            e.contains("owned by uid") && e.contains("as the user that started"),
            "{e}"
        );
        assert!(!e.contains("no supervisor is running"), "{e}");

        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let e = connect_error(&path, refused).to_string();
        assert!(e.contains("no supervisor is running"), "{e}");
    }
}
