//! Control socket server: a 0600 Unix socket; each request is handed to the daemon loop with a
//! oneshot for the answer. A stale socket file from a dead supervisor is replaced; a live one is
//! refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::protocol::{self, Request, Response};
use crate::listeners::clear_stale_socket;

/// A request waiting for the daemon's answer.
#[derive(Debug)]
pub struct ControlRequest {
    /// What was asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// The control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another supervisor answers on this socket.
    #[error(
        "another supervisor is running on control socket {0} (stop it with `supervisor stop`, or set supervisor.control_socket)"
    )]
    InUse(PathBuf),
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
}

/// Refuses early if a live supervisor owns `path` (before anything else is bound or started).
pub fn check_free(path: &Path) -> Result<(), ControlError> {
    match clear_stale_socket(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ControlError::InUse(path.to_path_buf())),
        Err(cause) => Err(ControlError::Bind {
            path: path.to_path_buf(),
            cause,
        }),
    }
}

impl ControlSocket {
    /// Binds the socket with mode 0600.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        check_free(path)?;
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
        })
    }

    /// Serves connections until the daemon's request channel closes.
    pub fn serve(&mut self, requests: mpsc::Sender<ControlRequest>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let connections = self.connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let requests = requests.clone();
                connections.spawn(async move {
                    let mut conn = protocol::framed(stream);
                    while let Ok(Some(request)) = protocol::recv::<Request>(&mut conn).await {
                        let (reply, answer) = oneshot::channel();
                        if requests
                            .send(ControlRequest { request, reply })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let Ok(response) = answer.await else { return };
                        if protocol::send(&mut conn, &response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

impl ControlSocket {
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
