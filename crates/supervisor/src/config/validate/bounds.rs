//! The upper bound of every quantity a config file sets: durations, sizes, counts and name
//! lengths. Each is far above any sane setting and low enough that nothing downstream can
//! overflow (an instant plus the longest duration, a `Vec` of that many workers, a file name
//! built from a job name), so that a typo (an extra digit, `"18446744073709551615s"`) is refused
//! by `check` with its key and line instead of passing it and panicking in `start`.

use std::ops::Range;
use std::time::Duration;

use super::super::human::HumanDuration;
use super::super::raw::Spanned;
use super::{ConfigError, Validator};

/// A longest duration, with how the file would write it (for the message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    pub(crate) max: Duration,
    pub(crate) text: &'static str,
}

/// A worker's `ready_timeout` and `kill_timeout`, a job's `kill_timeout`, restart backoffs,
/// `min_uptime`, a singleton's `lease_ttl` and `standby_poll`: one hour.
pub(crate) const MAX_WAIT: Bound = Bound {
    max: Duration::from_secs(3600),
    text: "1h",
};

/// `restart.window`, `max_memory_grace` and a job's `misfire_grace`: one day.
pub(crate) const MAX_WINDOW: Bound = Bound {
    max: Duration::from_secs(86_400),
    text: "1day",
};

/// A `[[job]]`'s `timeout`: a week.
pub(crate) const MAX_JOB_TIMEOUT: Bound = Bound {
    max: Duration::from_secs(7 * 86_400),
    text: "7days",
};

/// An app's `max_age` and `max_age_jitter`: a year.
pub(crate) const MAX_AGE: Bound = Bound {
    max: Duration::from_secs(365 * 86_400),
    text: "365days",
};

/// The largest `max_memory`: 16 TiB (the message says so in these words).
pub(crate) const MAX_MEMORY: u64 = 1 << 44;

/// The largest `restart.max_restarts`.
pub(crate) const MAX_RESTARTS: u32 = 10_000;

/// The largest listen backlog (the kernel caps it at `net.core.somaxconn` anyway).
pub(crate) const MAX_BACKLOG: i32 = 65_535;

/// The most `[[app]]` tables in a file.
pub(crate) const MAX_APPS: usize = 256;

/// The most `[[job]]` tables in a file.
pub(crate) const MAX_JOBS: usize = 1024;

/// The most `[[app.listen]]` sockets of one app.
pub(crate) const MAX_LISTENERS: usize = 64;

/// The longest app name, in bytes (ASCII: characters).
pub(crate) const MAX_NAME: usize = 64;

/// The most arguments, and environment variables, of one app or job.
pub(crate) const MAX_STRINGS: usize = 4096;

/// The longest argument or `NAME=value` environment entry: Linux's `MAX_ARG_STRLEN` (32 pages)
/// less its NUL; `execve` refuses a longer one with `E2BIG`.
pub(crate) const MAX_STRING: usize = 32 * 4096 - 1;

/// The longest Unix socket path: `sun_path` is 108 bytes, NUL included.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// The largest config file read: far above any real one, so that a wrong file (a log, a
/// binary) is refused at once instead of filling the memory.
pub(crate) const MAX_FILE: u64 = 4 << 20;

impl Validator<'_> {
    /// A duration from a spanned value, or `default`: greater than zero and at most `bound`.
    pub(super) fn duration(
        &self,
        key: &str,
        d: Option<&Spanned<HumanDuration>>,
        default: Duration,
        bound: Bound,
    ) -> Result<Duration, ConfigError> {
        match d {
            None => Ok(default),
            Some(d) if d.get_ref().0.is_zero() => {
                Err(self.err_at(d.span(), key, "must be greater than zero"))
            }
            Some(d) => self.at_most(key, d, bound),
        }
    }

    /// A spanned duration that may be zero but not above `bound`.
    pub(super) fn at_most(
        &self,
        key: &str,
        d: &Spanned<HumanDuration>,
        bound: Bound,
    ) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if value > bound.max {
            // As written (`"18446744073709551615s"`), not as a count of years.
            let written = self.text.get(d.span()).unwrap_or_default();
            return Err(self.err_at(
                d.span(),
                key,
                format!(
                    "{written} is more than the limit of {} (write e.g. \"30s\" or \"10m\")",
                    bound.text
                ),
            ));
        }
        Ok(value)
    }

    /// A count of at most `max` entries of what `key` lists.
    pub(super) fn count(
        &self,
        span: impl Into<Option<Range<usize>>>,
        key: &str,
        n: usize,
        max: usize,
        what: &str,
    ) -> Result<(), ConfigError> {
        if n > max {
            return Err(self.err_at(span, key, format!("{n} {what}: at most {max}")));
        }
        Ok(())
    }

    /// An argument or environment entry (`len` bytes) that `execve` takes.
    pub(super) fn exec_string(
        &self,
        span: Range<usize>,
        key: &str,
        len: usize,
    ) -> Result<(), ConfigError> {
        if len > MAX_STRING {
            return Err(self.err_at(
                span,
                key,
                format!(
                    "is {len} bytes long: at most {MAX_STRING} (what execve takes for one entry)"
                ),
            ));
        }
        Ok(())
    }

    /// A Unix socket path that fits `sun_path` (what `bind` refuses otherwise).
    pub(super) fn socket_path(
        &self,
        span: impl Into<Option<Range<usize>>>,
        key: &str,
        path: &std::path::Path,
    ) -> Result<(), ConfigError> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(self.err_at(
                span,
                key,
                format!(
                    "{} is {len} bytes long: a Unix socket path has at most {MAX_SOCKET_PATH} \
                     (sun_path); use a shorter one",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}
