//! `[supervisor]` (the control socket and the metrics address) and `[cron]` (the job backend):
//! the sections the client commands read too (see [`super::super::endpoints_of`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::super::raw::{RawCron, RawSupervisor};
use super::{ConfigError, Validator, resolve};

impl Validator<'_> {
    /// The control socket: `control_socket` relative to the file, or `supervisor.sock` beside it.
    pub(in crate::config) fn control_socket(&self, s: &RawSupervisor) -> PathBuf {
        match &s.control_socket {
            Some(p) => resolve(&self.base, p.get_ref()),
            None => self.base.join("supervisor.sock"),
        }
    }

    /// `supervisor.metrics`: where `GET /metrics` is served, if anywhere.
    pub(super) fn metrics(&self, s: &RawSupervisor) -> Result<Option<SocketAddr>, ConfigError> {
        s.metrics
            .as_deref()
            .map(|a| self.socket_addr("supervisor.metrics", a))
            .transpose()
    }

    /// `[cron]`: the backend URL handed to the jobs (a Redis URL, or a `file://` directory that
    /// defaults to one beside the control socket).
    pub(in crate::config) fn cron(
        &self,
        c: &RawCron,
        control_socket: &Path,
    ) -> Result<String, ConfigError> {
        match (&c.redis_url, &c.state_dir) {
            (Some(_), Some(dir)) => Err(self.err_at(
                dir.span(),
                "cron",
                "give either `redis_url` or `state_dir`, not both",
            )),
            (Some(url), None) => {
                let (span, url) = (url.span(), url.get_ref());
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(self.err_at(
                        span,
                        "cron.redis_url",
                        "must start with redis:// or rediss://",
                    ));
                }
                Ok(url.clone())
            }
            (None, dir) => {
                let dir = match dir {
                    Some(d) => resolve(&self.base, d.get_ref()),
                    None => control_socket.with_extension("cron"),
                };
                let dir = std::path::absolute(&dir)
                    .map_err(|e| self.err("cron.state_dir", e.to_string()))?;
                Ok(format!("file://{}", dir.display()))
            }
        }
    }
}
