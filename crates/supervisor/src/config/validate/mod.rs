//! The validator: raw file -> [`Config`], one file per section (`supervisor` for `[supervisor]`
//! and `[cron]`, `app`, `listen`, `job`, and `program` for resolving a command and telling Node
//! apart). This file holds the top-level pass, the checks that span several apps or jobs, and the
//! shared helpers: errors at a value's position, positive durations, paths relative to the file.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::model::JobConfig;
use super::raw::{RawFile, Spanned};
use super::{AppConfig, Config, ConfigError, Location};
use bounds::{MAX_APPS, MAX_JOBS};

mod app;
mod cgroup;
mod confine;
pub(crate) use confine::show_limit;
pub(crate) mod bounds;
mod job;
mod listen;
mod logs;
mod paths;
pub(crate) use paths::{creatable_dir, missing_interpreter};
mod contract;
mod env;
mod health;
pub use env::PROFILE_VAR;
mod program;
mod supervisor;
mod triggers;

/// Checks a file against the rules; every error names the file, the key and, for a value read
/// with its span, its line and column.
pub(super) struct Validator<'a> {
    /// The config file.
    path: &'a Path,
    /// The directory relative paths in the file are resolved against.
    base: PathBuf,
    /// The file's text, for the line of a spanned value.
    text: &'a str,
}

impl<'a> Validator<'a> {
    /// A validator for the file at `path` whose text is `text`.
    pub(super) fn new(path: &'a Path, text: &'a str) -> Validator<'a> {
        Validator {
            path,
            base: base_dir(path),
            text,
        }
    }
}

impl Validator<'_> {
    /// An error with no position in the file.
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            at: Location::default(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error at the value whose byte range is `span` (no position when `None`).
    fn err_at(
        &self,
        span: impl Into<Option<Range<usize>>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            at: Location::of_span(self.text, span.into()),
            key: key.into(),
            message: message.into(),
        }
    }

    /// `e` with the location of `span` if it has none yet.
    fn located(&self, e: ConfigError, span: Range<usize>) -> ConfigError {
        match e {
            ConfigError::Invalid {
                path,
                at: Location(None),
                key,
                message,
            } => ConfigError::Invalid {
                path,
                at: Location::of_span(self.text, Some(span)),
                key,
                message,
            },
            other => other,
        }
    }

    /// A `host:port` address, resolved now (the first address a name resolves to).
    fn socket_addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(a);
        }
        let mut addrs = text
            .to_socket_addrs()
            .map_err(|e| self.err(key, format!("{text:?} is not a host:port address ({e})")))?;
        addrs
            .next()
            .ok_or_else(|| self.err(key, format!("{text:?} resolves to no address")))
    }

    /// The whole file: each section, then what ties them together (unique names and addresses,
    /// `after` between apps, jobs naming apps).
    pub(super) fn validate(&self, raw: RawFile) -> Result<Config, ConfigError> {
        let name = self.name(&raw.supervisor)?;
        let control_socket = self.control_socket(&raw.supervisor, &name)?;
        self.socket_path(
            raw.supervisor.control_socket.as_ref().map(Spanned::span),
            "supervisor.control_socket",
            &control_socket,
        )?;
        let metrics = self.metrics(&raw.supervisor)?;
        let log_dir = self.log_dir(&raw.supervisor, &name)?;
        let log_rotation = self.own_log_rotation(&raw.supervisor)?;
        if raw.app.is_empty() {
            return Err(self.err(
                "app",
                "no app: add at least one [[app]] with `name` and `command`",
            ));
        }
        self.profile_exists(&raw.app.iter().collect::<Vec<_>>())?;
        let later = |tables: &[Range<usize>], max: usize| tables.get(max).cloned();
        let app_spans: Vec<Range<usize>> = raw.app.iter().map(|a| a.name.span()).collect();
        self.count(
            later(&app_spans, MAX_APPS),
            "app",
            raw.app.len(),
            MAX_APPS,
            "[[app]] tables",
        )?;
        let job_spans: Vec<Range<usize>> = raw.job.iter().map(|j| j.name.span()).collect();
        self.count(
            later(&job_spans, MAX_JOBS),
            "job",
            raw.job.len(),
            MAX_JOBS,
            "[[job]] tables",
        )?;
        let mut apps: Vec<AppConfig> = Vec::with_capacity(raw.app.len());
        let mut spans = Vec::with_capacity(raw.app.len());
        for (i, ra) in raw.app.into_iter().enumerate() {
            let (app, at) = self.app(&format!("app[{i}]"), ra, &log_dir)?;
            if let Some(prev) = apps.iter().find(|a| a.name == app.name) {
                return Err(self.err_at(
                    at.name,
                    format!("{}.name", app.key),
                    format!("{:?} is already the name of {}", app.name, prev.key),
                ));
            }
            for (l, span) in app.listeners.iter().zip(&at.listeners) {
                let taken = apps
                    .iter()
                    .flat_map(|a| &a.listeners)
                    .find(|o| listen::same_socket(&o.addr, &l.addr));
                if let Some(prev) = taken {
                    return Err(self.err_at(
                        span.clone(),
                        &l.key,
                        format!("{} is already listed as {}", l.addr, prev.key),
                    ));
                }
            }
            apps.push(app);
            spans.push(at);
        }
        self.check_after(&apps, &spans)?;
        let cron_url = self.cron(&raw.cron, &raw.supervisor, &name)?;
        self.check_state_dir(&raw.cron, &cron_url)?;
        let mut jobs: Vec<JobConfig> = Vec::with_capacity(raw.job.len());
        for (i, rj) in raw.job.into_iter().enumerate() {
            let key = format!("job[{i}]");
            let name_span = rj.name.span();
            let job = self.job(&key, rj, &apps)?;
            if let Some(prev) = jobs.iter().find(|j| j.spec.name == job.spec.name) {
                return Err(self.err_at(
                    name_span,
                    format!("{key}.name"),
                    format!("{:?} is already the name of {}", job.spec.name, prev.key),
                ));
            }
            jobs.push(job);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            name,
            control_socket,
            apps,
            cron_url,
            metrics,
            jobs,
            log_dir,
            log_rotation,
        })
    }
}

/// The directory relative paths in the file are resolved against.
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `p`, relative to `base` unless it is absolute.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A file of one app `web` (`command = "/bin/sh"`) with `extra` keys, loaded from a temporary
/// directory that also holds `src/`: what the validators' unit tests read.
#[cfg(test)]
fn load_app(extra: &str) -> Result<Config, String> {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    let path = dir.path().join("s.toml");
    let text = format!("[[app]]\nname = \"web\"\ncommand = \"/bin/sh\"\n{extra}\n");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string())
}
