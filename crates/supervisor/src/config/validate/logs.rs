//! An app's log keys (`out_file`, `error_file`, `merge_logs`, `log_date_format`, `log_max_size`,
//! `log_max_age`, `log_retain`, `log_compress`, `log_rate_lines`, `log_rate_bytes`,
//! `log_burst`) and `[supervisor] log_dir`, the directory of the default files: `logs/` beside a
//! `control_socket` the file sets, else the supervisor's log directory ([`crate::logs::dir`]);
//! `[supervisor] log_max_size`, `log_max_age`, `log_retain`, `log_compress`: the rotation of the
//! supervisor's own log under `start -d`, with the apps' defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::human::{ByteSize, HumanDuration};
use super::super::model::{
    DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_RATE_BYTES, DEFAULT_LOG_RATE_LINES, DEFAULT_LOG_RETAIN,
};
use super::super::raw::{RawApp, RawSupervisor, Spanned};
use super::bounds::{MAX_WAIT, MAX_WINDOW};
use super::{ConfigError, Validator, resolve};
use crate::logs::LogPolicy;
use crate::logs::rate::RateLimit;
use crate::logs::record::{DEFAULT_DATE_FORMAT, valid_date_format};
use crate::logs::rotate::Rotation;

/// The most rotated copies kept of one file.
const MAX_RETAIN: usize = 1000;

impl Validator<'_> {
    /// `supervisor.log_dir`, or its default.
    pub(super) fn log_dir(&self, s: &RawSupervisor, name: &str) -> Result<PathBuf, ConfigError> {
        let dir = match (&s.log_dir, &s.control_socket) {
            (Some(d), _) => resolve(&self.base, d.get_ref()),
            (None, Some(socket)) => resolve(&self.base, socket.get_ref())
                .parent()
                .map_or_else(|| PathBuf::from("logs"), |p| p.join("logs")),
            (None, None) => crate::logs::dir::default_dir(name),
        };
        std::path::absolute(&dir).map_err(|e| {
            self.err_at(
                s.log_dir.as_ref().map(Spanned::span),
                "supervisor.log_dir",
                format!("{}: {e}", dir.display()),
            )
        })
    }

    /// `[supervisor] log_max_size`, `log_max_age`, `log_retain`, `log_compress`: how the
    /// supervisor's own log rotates under `start -d`.
    pub(super) fn own_log_rotation(&self, s: &RawSupervisor) -> Result<Rotation, ConfigError> {
        self.rotation(
            "supervisor",
            s.log_max_size.as_ref(),
            s.log_max_age.as_ref(),
            s.log_retain.as_ref(),
            s.log_compress,
        )
    }

    /// The rotation keys of the table at `key`, their defaults for those not given.
    fn rotation(
        &self,
        key: &str,
        max_size: Option<&Spanned<ByteSize>>,
        max_age: Option<&Spanned<HumanDuration>>,
        retain: Option<&Spanned<usize>>,
        compress: Option<bool>,
    ) -> Result<Rotation, ConfigError> {
        if let Some(r) = retain.filter(|r| *r.get_ref() > MAX_RETAIN) {
            return Err(self.err_at(
                r.span(),
                format!("{key}.log_retain"),
                format!("{} is more than {MAX_RETAIN}", r.get_ref()),
            ));
        }
        let max_age = max_age
            .map(|a| self.at_most(&format!("{key}.log_max_age"), a, MAX_WINDOW))
            .transpose()?
            .filter(|a| !a.is_zero());
        Ok(Rotation {
            max_size: max_size.map_or(DEFAULT_LOG_MAX_SIZE, |s| s.get_ref().0),
            max_age,
            retain: retain.map_or(DEFAULT_LOG_RETAIN, |r| *r.get_ref()),
            compress: compress.unwrap_or(false),
        })
    }

    /// An app's log keys, its default files in `log_dir`.
    pub(super) fn logs(
        &self,
        key: &str,
        ra: &RawApp,
        log_dir: &Path,
    ) -> Result<LogPolicy, ConfigError> {
        let name = ra.name.get_ref();
        let file =
            |f: &Option<Spanned<PathBuf>>| f.as_ref().map(|p| resolve(&self.base, p.get_ref()));
        for (k, f) in [("out_file", &ra.out_file), ("error_file", &ra.error_file)] {
            if let Some(p) = f
                && (p.get_ref().as_os_str().is_empty() || p.get_ref().ends_with(".."))
            {
                return Err(self.err_at(
                    p.span(),
                    format!("{key}.{k}"),
                    "must name a file (relative to the config file's directory, or absolute)",
                ));
            }
        }
        let out_file = file(&ra.out_file).unwrap_or_else(|| log_dir.join(format!("{name}.log")));
        let error_file = file(&ra.error_file).unwrap_or_else(|| out_file.clone());
        let date_format = match &ra.log_date_format {
            None => DEFAULT_DATE_FORMAT.to_string(),
            Some(f) if valid_date_format(f.get_ref()) => f.get_ref().clone(),
            Some(f) => {
                return Err(self.err_at(
                    f.span(),
                    format!("{key}.log_date_format"),
                    format!(
                        "{:?} is not a strftime format (write e.g. \"%Y-%m-%d %H:%M:%S%.3f\")",
                        f.get_ref()
                    ),
                ));
            }
        };
        let rotation = self.rotation(
            key,
            ra.log_max_size.as_ref(),
            ra.log_max_age.as_ref(),
            ra.log_retain.as_ref(),
            ra.log_compress,
        )?;
        let burst = self.duration(
            &format!("{key}.log_burst"),
            ra.log_burst.as_ref(),
            Duration::from_secs(1),
            MAX_WAIT,
        )?;
        let rate = RateLimit {
            lines_per_sec: ra
                .log_rate_lines
                .as_ref()
                .map_or(DEFAULT_LOG_RATE_LINES, |r| *r.get_ref()),
            bytes_per_sec: ra
                .log_rate_bytes
                .as_ref()
                .map_or(DEFAULT_LOG_RATE_BYTES, |r| r.get_ref().0),
            burst,
        };
        Ok(LogPolicy {
            out_file,
            error_file,
            merge: ra.merge_logs.unwrap_or(true),
            date_format,
            rotation,
            rate,
        })
    }
}
