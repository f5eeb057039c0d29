//! Configuration: TOML file -> raw serde structs -> validated [`Config`]; every check lives here
//! and every error names the file and the key (`app[0].listen[1].address`, `app[1].kill_timeout`,
//! ...). A file holds `[supervisor]`, `[cron]`, one or more `[[app]]` tables, each with its own
//! `[[app.listen]]` sockets and `[app.restart]` / `[app.reload]` policies, and any number of
//! `[[job]]` tables: cluster-once cron jobs the supervisor itself runs (see [`JobConfig`]).
//!
//! By phase: `raw` reads the file as written (values spanned, so errors carry `:LINE:COL`),
//! `validate` checks it one section per file, `model` holds the validated types, `human` the
//! durations and sizes the file writes with a unit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod human;
mod model;
mod raw;
mod suggest;
mod validate;

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod tests;

pub use model::{
    AgePolicy, Balance, CgroupLimits, Confinement, CronRestart, JobAction, JobConfig, ListenAddr,
    ListenerSpec, MAX_INSTANCES, MemoryPolicy, Readiness, ReloadPolicy, ReloadTriggers,
    RestartPolicy, RunAs, Runtime, SingletonPolicy, WatchPolicy, WorkerSpec,
};

pub use crate::logs::LogPolicy;
use raw::{RawEndpoints, RawFile, parse_toml};
pub use validate::PROFILE_VAR;
use validate::Validator;
pub(crate) use validate::{creatable_dir, missing_interpreter, show_limit};

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{path}{at}: {key}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where in the file, when the parser knows (`:LINE:COL`).
        at: Location,
        /// The dotted key path, or `(top level)`.
        key: String,
        /// What the parser said.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{path}{at}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Where in the file, when known (`:LINE:COL`).
        at: Location,
        /// The dotted key path.
        key: String,
        /// Why the value is rejected.
        message: String,
    },
}

/// A position in the config file, shown as `:LINE:COL` after the path (nothing when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location(pub Option<(usize, usize)>);

impl Location {
    /// The 1-based line and column (in characters) of byte offset `offset` of `text`.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        Location(Some((line, before[line_start..].chars().count() + 1)))
    }

    fn of_span(text: &str, span: Option<std::ops::Range<usize>>) -> Location {
        span.map(|s| Location::of_offset(text, s.start))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The supervisor's name (`[supervisor] name`, else derived from the file's path): its
    /// default control socket, its log directory, `supervisor ls` and `-n NAME`.
    pub name: String,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// The apps, in file order (the order they start in, unless `after` says otherwise).
    pub apps: Vec<AppConfig>,
    /// Cron lock backend URL handed to workers (`redis://...` or `file:///dir`).
    pub cron_url: String,
    /// Where `GET /metrics` is served (Prometheus text format); `None`: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// The `[[job]]` tables, in file order.
    pub jobs: Vec<JobConfig>,
    /// Where the apps' log files go unless they name their own (`[supervisor] log_dir`).
    pub log_dir: PathBuf,
    /// How the supervisor's own log (`supervisor.log` of `start -d`) rotates (`[supervisor]
    /// log_max_size`, `log_max_age`, `log_retain`, `log_compress`).
    pub log_rotation: crate::logs::rotate::Rotation,
}

/// One app: a program run as N workers sharing its own listening sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Unique name; workers are `name.slot`.
    pub name: String,
    /// The config key it came from (`app[0]`).
    pub key: String,
    /// Apps (by name) that must be ready before this one starts.
    pub after: Vec<String>,
    /// Its listening sockets, passed at fd 3.. to its workers only.
    pub listeners: Vec<ListenerSpec>,
    /// How its TCP connections are spread over its workers.
    pub balance: Balance,
    /// The worker program.
    pub worker: WorkerSpec,
    /// Crash restart policy.
    pub restart: RestartPolicy,
    /// Rolling reload policy.
    pub reload: ReloadPolicy,
    /// Memory recycling policy.
    pub memory: MemoryPolicy,
    /// Replacing workers for their age (`max_age`).
    pub age: AgePolicy,
    /// `Some` for a cluster singleton (`scope = "cluster"`): its lease.
    pub singleton: Option<SingletonPolicy>,
    /// What reloads it besides `supervisor reload`: file changes and a schedule.
    pub triggers: ReloadTriggers,
    /// Where its output is written, rotated, and how much of it is kept.
    pub logs: LogPolicy,
}

impl Config {
    /// Reads and validates a config file. Performs no binding and starts nothing.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (raw, text): (RawFile, String) = parse_toml(path)?;
        Validator::new(path, &text).validate(raw)
    }

    /// Validates `text` as the contents of `path` (relative paths in it are resolved against
    /// the directory of `path`): [`Config::load`] without reading the file.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawFile = raw::parse_text(path, text)?;
        Validator::new(path, text).validate(raw)
    }
}

/// What the client commands need to reach a running supervisor and its cron backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The supervisor's name.
    pub name: String,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Whether the file sets `control_socket` (else it is the default one, in the private
    /// runtime directory, which depends on the environment: a client looks the name up).
    pub explicit_socket: bool,
    /// Cron lock backend URL.
    pub cron_url: String,
}

/// Reads only `[supervisor]` and `[cron]` of a config file: the client commands must reach the
/// supervisor while it holds the ports, and also after someone broke the rest of the file (so
/// that `reload` can report that the new config is invalid).
pub fn endpoints_of(path: &Path) -> Result<Endpoints, ConfigError> {
    let (partial, text): (RawEndpoints, String) = parse_toml(path)?;
    let v = Validator::new(path, &text);
    let name = v.name(&partial.supervisor)?;
    let control_socket = v.control_socket(&partial.supervisor, &name)?;
    let cron_url = v.cron(&partial.cron, &partial.supervisor, &name)?;
    Ok(Endpoints {
        name,
        explicit_socket: partial.supervisor.control_socket.is_some(),
        control_socket,
        cron_url,
    })
}

/// The name of a supervisor whose file does not set `[supervisor] name`: the file's name
/// without its extension, after its directory's (`/srv/shop/supervisor.toml` is
/// `shop-supervisor`), so that two files do not share a name (their default control sockets
/// and log directories), kept to letters, digits, `.`, `_` and `-`.
pub fn default_name(path: &Path) -> String {
    let path = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let part = |p: Option<&std::ffi::OsStr>| -> String {
        p.map(|s| s.to_string_lossy())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_start_matches(['.', '-'])
            .to_string()
    };
    let stem = part(path.file_stem());
    let dir = part(path.parent().and_then(Path::file_name));
    let name = match (dir.is_empty(), stem.is_empty()) {
        (false, false) => format!("{dir}-{stem}"),
        (true, false) => stem,
        (false, true) => dir,
        (true, true) => "supervisor".to_string(),
    };
    name.chars().take(64).collect()
}
