//! `[supervisor]` (the name, the control socket and the metrics address) and `[cron]` (the job
//! backend): the sections the client commands read too (see [`super::super::endpoints_of`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::super::raw::{RawCron, RawSupervisor};
use super::{ConfigError, Validator, resolve};

impl Validator<'_> {
    /// `supervisor.name`: 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.` or
    /// `-`; by default derived from the file's path ([`super::super::default_name`]).
    pub(in crate::config) fn name(&self, s: &RawSupervisor) -> Result<String, ConfigError> {
        let Some(name) = &s.name else {
            return Ok(super::super::default_name(self.path));
        };
        let text = name.get_ref();
        let fits = !text.is_empty()
            && text.len() <= 64
            && !text.starts_with(['.', '-'])
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !fits {
            return Err(self.err_at(
                name.span(),
                "supervisor.name",
                format!(
                    "{text:?} is not a name: 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.` or `-` (it names the control socket and the log directory)"
                ),
            ));
        }
        Ok(text.clone())
    }

    /// The control socket: `control_socket` relative to the file, or `NAME.sock` in the user's
    /// private runtime directory ([`crate::rundir`]). Its length is checked by the caller
    /// (`sun_path`).
    pub(in crate::config) fn control_socket(
        &self,
        s: &RawSupervisor,
        name: &str,
    ) -> Result<PathBuf, ConfigError> {
        if let Some(p) = &s.control_socket {
            return Ok(resolve(&self.base, p.get_ref()));
        }
        match crate::rundir::base() {
            Some(base) => Ok(base.join(format!("{name}.sock"))),
            None => Err(self.err(
                "supervisor.control_socket",
                "no private runtime directory for the default control socket (XDG_RUNTIME_DIR and HOME are unset): set control_socket",
            )),
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
    /// defaults to one beside a `control_socket` the file sets, else to the supervisor's state
    /// directory, [`crate::rundir::state_dir_for`]).
    pub(in crate::config) fn cron(
        &self,
        c: &RawCron,
        s: &RawSupervisor,
        name: &str,
    ) -> Result<String, ConfigError> {
        match (&c.redis_url, &c.state_dir) {
            (Some(_), Some(dir)) => Err(self.err_at(
                dir.span(),
                "cron",
                "give either `redis_url` or `state_dir`, not both",
            )),
            (Some(url), None) => {
                let (span, url) = (url.span(), url.get_ref());
                // One server, Sentinel or Cluster, read the way the backend will read it, so
                // an unknown option or a missing master name is refused here, with the line.
                let scheme = url.trim().split_once("://").map(|(s, _)| s);
                if scheme.is_none_or(|s| s == "file") {
                    return Err(self.err_at(
                        span,
                        "cron.redis_url",
                        "must be a Redis URL (redis://, rediss://, redis+sentinel://, \
                         rediss+sentinel://, redis+cluster://, rediss+cluster://); for a \
                         local directory set `state_dir`",
                    ));
                }
                cronlock::Backend::check_url(url).map_err(|e| {
                    self.err_at(span, "cron.redis_url", format!("{e}{}", userinfo_hint(url)))
                })?;
                Ok(url.clone())
            }
            (None, dir) => {
                let dir = match (dir, &s.control_socket) {
                    (Some(d), _) => resolve(&self.base, d.get_ref()),
                    (None, Some(socket)) => {
                        resolve(&self.base, socket.get_ref()).with_extension("cron")
                    }
                    (None, None) => {
                        let env = crate::rundir::Env::current();
                        crate::rundir::state_dir_for(&env, name)
                            .ok_or_else(|| {
                                self.err(
                                    "cron.state_dir",
                                    "no home directory for the default cron state: set state_dir",
                                )
                            })?
                            .join("cron")
                    }
                };
                let dir = std::path::absolute(&dir)
                    .map_err(|e| self.err("cron.state_dir", e.to_string()))?;
                Ok(format!("file://{}", dir.display()))
            }
        }
    }
}

/// Why a URL may not parse that its (redacted) text cannot show: a user name or password with
/// a character that ends the user-info, which must be percent-encoded.
fn userinfo_hint(url: &str) -> &'static str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.rfind('@') {
        Some(at) if rest[..at].contains(['/', '#', '?', '@']) => {
            " (a user name or password with `/`, `?`, `#` or `@` must be percent-encoded: \
             %2F, %3F, %23, %40)"
        }
        _ => "",
    }
}
