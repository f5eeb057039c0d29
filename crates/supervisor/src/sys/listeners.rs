//! Binds the configured listening sockets once; the supervisor owns them for its whole life and
//! every worker of every generation inherits the same sockets (one shared accept queue each).
//! An address of an app with a socket per worker slot is bound here as its group's first
//! socket ([`super::reuseport`]); the shell's groups bind the others.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::{ListenAddr, ListenerSpec};

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `bind`/`listen` failed (port in use, permission denied, ...).
    #[error("{key}: cannot listen on {addr}: {cause}")]
    Bind {
        /// Config key of the listener.
        key: String,
        /// The address.
        addr: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// An address kept by a reload whose `balance` changed between one shared socket and a
    /// socket per slot: its sockets would have to be bound again while they serve.
    #[error(
        "{key} ({addr}): `balance` changed from {from} to {to}, which needs the address bound again, not possible while it serves"
    )]
    BalanceChanged {
        /// Config key of the listener.
        key: String,
        /// The address.
        addr: String,
        /// The running balance.
        from: crate::config::Balance,
        /// The file's.
        to: crate::config::Balance,
    },
    /// A Unix socket path is served by a live process.
    #[error("{key}: {path} is in use by a running process")]
    InUse {
        /// Config key of the listener.
        key: String,
        /// The socket path.
        path: PathBuf,
    },
}

/// One bound listening socket.
#[derive(Debug)]
pub struct BoundListener {
    /// Name for `LISTEN_FDNAMES`.
    pub name: String,
    /// The actual address (port 0 resolved).
    pub local: String,
    /// The actual TCP port (port 0 resolved); `None` for a Unix socket.
    pub port: Option<u16>,
    /// The `listen(2)` backlog it was bound with.
    pub backlog: i32,
    fd: OwnedFd,
    unix_path: Option<PathBuf>,
    /// Removes the socket file of a Unix listener when dropped (the last of the listeners
    /// sharing the socket does).
    unlink: bool,
}

impl BoundListener {
    /// A listener bound by another process (the previous binary of an in-place upgrade): `fd`
    /// is the inherited socket, the rest what that process said of it.
    pub fn adopted(
        name: String,
        local: String,
        port: Option<u16>,
        backlog: i32,
        unix_path: Option<PathBuf>,
        fd: OwnedFd,
    ) -> BoundListener {
        BoundListener {
            name,
            local,
            port,
            backlog,
            unlink: unix_path.is_some(),
            fd,
            unix_path,
        }
    }

    /// The same socket again (a duplicate of its descriptor), under `spec`'s name and backlog:
    /// what a reload that keeps an address gives the new generation, so that the accept queue
    /// is the same and nothing is bound twice. The copy leaves a Unix socket's file alone when
    /// it is dropped (see [`BoundListener::set_unlink`]).
    pub fn share(&self, spec: &ListenerSpec) -> std::io::Result<BoundListener> {
        let fd = self.fd.try_clone()?;
        if spec.backlog != self.backlog {
            resize_queue(fd.as_fd(), spec.backlog)?;
        }
        Ok(BoundListener {
            name: spec.name.clone(),
            local: self.local.clone(),
            port: self.port,
            backlog: spec.backlog,
            fd,
            unix_path: self.unix_path.clone(),
            unlink: false,
        })
    }

    /// Whether dropping it removes a Unix socket's file: of the listeners sharing a socket,
    /// the one closed last must.
    pub fn set_unlink(&mut self, unlink: bool) {
        self.unlink = unlink && self.unix_path.is_some();
    }

    /// The socket, to be duplicated into workers.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The socket file of a Unix listener.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        if let (Some(p), true) = (&self.unix_path, self.unlink) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A listening socket's accept queue resized to `backlog` (a second `listen` only resizes it).
pub fn resize_queue(fd: BorrowedFd<'_>, backlog: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is a valid socket; listen() takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SUPERVISOR_LISTENERS` for workers: the inherited sockets in fd order as a JSON array of
/// `{"name", "fd", "address", "port"}` (TCP) or `{"name", "fd", "path"}` (Unix), each with its
/// `"backlog"`, so a worker can tell which fd is which address without asking the socket.
pub fn describe(listeners: &[BoundListener]) -> String {
    let list: Vec<serde_json::Value> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut v = serde_json::json!({ "name": l.name, "fd": 3 + i, "backlog": l.backlog });
            match (l.port, l.unix_path()) {
                (Some(port), _) => {
                    v["address"] = l.local.clone().into();
                    v["port"] = port.into();
                }
                (None, Some(path)) => v["path"] = path.display().to_string().into(),
                (None, None) => {}
            }
            v
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Removes a socket file left by a dead process; refuses if a live process accepts on it.
/// Returns `Ok(false)` if the path is in use.
pub fn clear_stale_socket(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
        Ok(meta) if !meta.file_type().is_socket() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Ok(false),
            Err(_) => {
                std::fs::remove_file(path)?;
                Ok(true)
            }
        },
    }
}

/// Binds a TCP listener the supervisor serves itself (not passed to workers: close-on-exec, like
/// every socket std creates), e.g. the metrics endpoint; errors name the config key.
pub fn bind_own(
    key: &str,
    addr: std::net::SocketAddr,
) -> Result<std::net::TcpListener, ListenError> {
    std::net::TcpListener::bind(addr).map_err(|cause| ListenError::Bind {
        key: key.to_string(),
        addr: addr.to_string(),
        cause,
    })
}

/// Binds every listener, or none: on error the ones already bound are closed again.
pub fn bind_all(specs: &[ListenerSpec]) -> Result<Vec<BoundListener>, ListenError> {
    specs.iter().map(bind_one).collect()
}

/// Binds one listener.
pub fn bind_one(spec: &ListenerSpec) -> Result<BoundListener, ListenError> {
    let bind_err = |cause| ListenError::Bind {
        key: format!(
            "{}.{}",
            spec.key,
            if matches!(spec.addr, ListenAddr::Tcp(_)) {
                "address"
            } else {
                "path"
            }
        ),
        addr: spec.addr.to_string(),
        cause,
    };
    let (fd, local, port, unix_path): (OwnedFd, String, Option<u16>, Option<PathBuf>) =
        match &spec.addr {
            // The first socket of a group with one per worker slot: the address checked free
            // first (a plain bind), then bound with SO_REUSEPORT.
            ListenAddr::Tcp(addr) if spec.balance.per_slot() => {
                let local = super::reuseport::probe(*addr).map_err(bind_err)?;
                let fd = super::reuseport::bind(local, spec.backlog).map_err(bind_err)?;
                (fd, local.to_string(), Some(local.port()), None)
            }
            ListenAddr::Tcp(addr) => {
                // std sets SO_REUSEADDR (restart while old connections are in TIME_WAIT) and CLOEXEC.
                let l = std::net::TcpListener::bind(addr).map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                (
                    OwnedFd::from(l),
                    local.to_string(),
                    Some(local.port()),
                    None,
                )
            }
            ListenAddr::Unix(path) => {
                if !clear_stale_socket(path).map_err(bind_err)? {
                    return Err(ListenError::InUse {
                        key: format!("{}.path", spec.key),
                        path: path.clone(),
                    });
                }
                let l = UnixListener::bind(path).map_err(bind_err)?;
                (
                    OwnedFd::from(l),
                    format!("unix:{}", path.display()),
                    None,
                    Some(path.clone()),
                )
            }
        };
    // Raise the accept queue to the configured backlog.
    resize_queue(fd.as_fd(), spec.backlog).map_err(bind_err)?;
    Ok(BoundListener {
        name: spec.name.clone(),
        local,
        port,
        backlog: spec.backlog,
        fd,
        unlink: unix_path.is_some(),
        unix_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: ListenAddr) -> ListenerSpec {
        ListenerSpec {
            name: "http".into(),
            addr,
            backlog: 16,
            key: "listen[0]".into(),
            balance: crate::config::Balance::Shared,
        }
    }

    #[test]
    fn port_in_use_names_key_and_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_all(&[spec(ListenAddr::Tcp(addr))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen[0].address"), "{e}");
        assert!(e.contains(&addr.to_string()), "{e}");
        assert!(e.to_lowercase().contains("in use"), "{e}");
    }

    #[test]
    fn own_listener_in_use_names_key_and_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_own("supervisor.metrics", addr)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("supervisor.metrics: cannot listen on {addr}: ")),
            "{e}"
        );
        assert!(e.to_lowercase().contains("in use"), "{e}");
    }

    #[test]
    fn stale_unix_socket_is_replaced_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let live = UnixListener::bind(&path).unwrap();
        let e = bind_all(&[spec(ListenAddr::Unix(path.clone()))]).unwrap_err();
        assert!(matches!(e, ListenError::InUse { .. }), "{e}");
        drop(live); // the file stays behind, nobody accepts: stale
        let bound = bind_all(&[spec(ListenAddr::Unix(path.clone()))]).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(bound);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn a_shared_socket_is_the_same_queue_and_its_file_goes_with_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sock");
        let mut old = bind_one(&spec(ListenAddr::Unix(path.clone()))).unwrap();
        let mut renamed = spec(ListenAddr::Unix(path.clone()));
        renamed.name = "api".into();
        renamed.backlog = 32;
        let mut new = old.share(&renamed).unwrap();
        assert_eq!((new.name.as_str(), new.backlog), ("api", 32));
        old.set_unlink(false);
        new.set_unlink(true);
        drop(old);
        assert!(path.exists(), "the new one still listens there");
        let client = UnixStream::connect(&path).unwrap();
        let accepted = UnixListener::from(new.fd.try_clone().unwrap()).accept();
        assert!(accepted.is_ok(), "the same socket accepts");
        drop(client);
        drop(new);
        assert!(!path.exists(), "removed with the last one");
    }
}
