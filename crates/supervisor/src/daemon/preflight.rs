//! What `start` tries before it starts anything, in one function that `check` runs too, so that
//! whatever `start` would refuse, `check` refuses first with the same message: no supervisor
//! answers on the control socket, the socket's directory can hold it, and every listener and the
//! metrics address bind. `start` keeps what was bound; `check` closes it at once. (What the file
//! alone decides, from bounds to a missing `#!` interpreter or a state directory that is not one
//! of its own, is refused by [`crate::config::Config::load`], which both run first.)

use std::net::TcpListener;
use std::path::Path;

use super::{METRICS_KEY, StartupError};
use crate::config::{Config, creatable_dir};
use crate::control::server::{self, ControlError};
use crate::sys::listeners::{self, BoundListener};

/// The sockets bound by [`preflight`].
#[derive(Debug)]
pub(crate) struct Bound {
    /// Each app's listeners, in app order.
    pub(crate) listeners: Vec<Vec<BoundListener>>,
    /// The metrics listener, if the config has one.
    pub(crate) metrics: Option<TcpListener>,
}

/// The checks `start` makes before its first worker, binding every listener and the metrics
/// address (see the module's documentation). A live supervisor on the control socket is
/// [`ControlError::InUse`], before anything is bound.
pub(crate) fn preflight(config: &Config) -> Result<Bound, StartupError> {
    server::check_free(&config.control_socket, &config.path)?;
    control_dir(&config.control_socket)?;
    let listen_err = |cause| StartupError::Listen {
        path: config.path.clone(),
        cause,
    };
    let listeners = config
        .apps
        .iter()
        .map(|a| listeners::bind_all(&a.listeners))
        .collect::<Result<Vec<_>, _>>()
        .map_err(listen_err)?;
    let metrics = config
        .metrics
        .map(|addr| listeners::bind_own(METRICS_KEY, addr))
        .transpose()
        .map_err(listen_err)?;
    Ok(Bound { listeners, metrics })
}

/// The control socket's directory is one this user may create the socket in (or, as `start`
/// creates it, its nearest existing ancestor is).
fn control_dir(socket: &Path) -> Result<(), ControlError> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    creatable_dir(dir).map_err(|why| ControlError::Bind {
        path: socket.to_path_buf(),
        cause: std::io::Error::other(why),
    })
}
