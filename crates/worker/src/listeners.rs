//! The listening sockets a worker serves: inherited from the supervisor (`LISTEN_FDS`, via the
//! `listenfd` crate, names from `LISTEN_FDNAMES`), or bound directly for local development.

use std::net::SocketAddr;

use tokio::net::{TcpListener, UnixListener};

/// Taking or binding listeners failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// An inherited fd is not a listening socket of a supported kind.
    #[error("inherited fd {fd} ({name}) is neither a TCP nor a Unix stream listener: {cause}")]
    Inherited {
        /// fd number.
        fd: i32,
        /// Its name.
        name: String,
        /// Why.
        cause: std::io::Error,
    },
    /// Binding the fallback address failed.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// One listening socket, ready for tokio.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream.
    Unix(UnixListener),
}

/// A listener and its name.
#[derive(Debug)]
pub struct NamedListener {
    /// Name from `LISTEN_FDNAMES` (or the address).
    pub name: String,
    /// Passed by the supervisor (or systemd), not bound here.
    pub inherited: bool,
    /// The socket.
    pub listener: Listener,
}

/// Takes the inherited listeners, or, if none were passed, binds `fallback` (e.g. from a
/// `--listen` flag) so the same binary runs without a supervisor. Must run inside a tokio runtime.
pub fn take_or_bind(fallback: SocketAddr) -> Result<Vec<NamedListener>, ListenerError> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        let std = std::net::TcpListener::bind(fallback).map_err(|cause| ListenerError::Bind {
            addr: fallback.to_string(),
            cause,
        })?;
        let tcp = tcp(std).map_err(|cause| ListenerError::Bind {
            addr: fallback.to_string(),
            cause,
        })?;
        return Ok(vec![NamedListener {
            name: fallback.to_string(),
            inherited: false,
            listener: Listener::Tcp(tcp),
        }]);
    }
    let mut out = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let name = names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("fd{}", 3 + i));
        let inherited_err = |cause| ListenerError::Inherited {
            fd: 3 + i as i32,
            name: name.clone(),
            cause,
        };
        let listener = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => Listener::Tcp(tcp(l).map_err(inherited_err)?),
            _ => match fds.take_unix_listener(i) {
                Ok(Some(l)) => {
                    l.set_nonblocking(true).map_err(inherited_err)?;
                    Listener::Unix(UnixListener::from_std(l).map_err(inherited_err)?)
                }
                Ok(None) => continue, // already taken
                Err(e) => return Err(inherited_err(e)),
            },
        };
        out.push(NamedListener {
            name,
            inherited: true,
            listener,
        });
    }
    Ok(out)
}

fn tcp(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}
