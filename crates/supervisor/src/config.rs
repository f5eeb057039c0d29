//! Configuration: TOML file -> raw serde structs -> validated [`Config`]; every check lives here
//! and every error names the file and the key (`app[0].listen[1].address`, `app[1].kill_timeout`,
//! ...). A file holds `[supervisor]`, `[cron]`, one or more `[[app]]` tables, each with its own
//! `[[app.listen]]` sockets and `[app.restart]` / `[app.reload]` policies, and any number of
//! `[[job]]` tables: cluster-once cron jobs the supervisor itself runs (see [`JobConfig`]).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

/// A duration written as a human string in the file ("10s", "500ms", "1m 30s").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: {e} (write e.g. \"10s\" or \"500ms\")"
                ))
            })
    }
}

/// A size in bytes written with a unit in the file: `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), e.g. "300MB", "1GiB", "1.5 GB". A value that is not one is
/// a parse error, so it is reported with the file, line and key like a bad duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSize(u64);

/// Parses a size such as "512MB" or "1GiB" into bytes (see [`ByteSize`]); the error says why.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "" => return Err("no unit".into()),
        other => return Err(format!("unknown unit {other:?}")),
    };
    let bytes = if let Some((int, frac)) = number.split_once('.') {
        let value: f64 = format!("{}.{frac}", if int.is_empty() { "0" } else { int })
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        let bytes = (value * multiplier as f64).round();
        if bytes >= u64::MAX as f64 {
            return Err("too large".into());
        }
        bytes as u64
    } else {
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        value.checked_mul(multiplier).ok_or("too large")?
    };
    if bytes == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(bytes)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"512MB\" or \"1GiB\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_size(text).map(ByteSize).map_err(|why| {
                    E::custom(format!(
                        "invalid size {text:?}: {why} (write e.g. \"512MB\" or \"1GiB\"; \
                         units B, KB, MB, GB, KiB, MiB, GiB)"
                    ))
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    supervisor: RawSupervisor,
    #[serde(default)]
    app: Vec<RawApp>,
    #[serde(default)]
    cron: RawCron,
    #[serde(default)]
    job: Vec<RawJob>,
}

/// A value with its byte range in the file, for errors with a line number.
type Spanned<T> = toml::Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
    overlap: Option<cronlock::Overlap>,
    misfire: Option<Spanned<String>>,
    misfire_grace: Option<Spanned<HumanDuration>>,
    lease_ttl: Option<Spanned<HumanDuration>>,
    timeout: Option<Spanned<HumanDuration>>,
    kill_timeout: Option<Spanned<HumanDuration>>,
    command: Option<Spanned<Vec<String>>>,
    http: Option<Spanned<String>>,
    app: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    control_socket: Option<PathBuf>,
    metrics: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    name: Option<String>,
    address: Option<String>,
    path: Option<PathBuf>,
    backlog: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    listen: Vec<RawListen>,
    #[serde(default)]
    restart: RawRestart,
    #[serde(default)]
    reload: RawReload,
    command: Spanned<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    instances: Option<usize>,
    readiness: Option<Readiness>,
    runtime: Option<Runtime>,
    ready_timeout: Option<HumanDuration>,
    kill_timeout: Option<HumanDuration>,
    max_memory: Option<ByteSize>,
    max_memory_grace: Option<HumanDuration>,
    scope: Option<Scope>,
    lease_ttl: Option<HumanDuration>,
    standby_poll: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    min_uptime: Option<HumanDuration>,
    max_restarts: Option<u32>,
    window: Option<HumanDuration>,
    backoff_initial: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReload {
    max_surge: Option<usize>,
    max_unavailable: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCron {
    redis_url: Option<String>,
    state_dir: Option<PathBuf>,
}

/// How the supervisor learns that a worker is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// The worker says `READY=1` on `NOTIFY_SOCKET` or writes a newline to `READY_FD`.
    Notify,
    /// The worker counts as ready as soon as its program was executed (systemd `Type=exec`).
    Exec,
}

/// Where an app runs: on every host (each supervisor runs its workers), or on exactly one host
/// of those sharing the cron backend at a time (a cluster singleton).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every supervisor runs it (the default).
    #[default]
    Host,
    /// One supervisor at a time runs it: the holder of its lease in the cron backend.
    Cluster,
}

/// The lease of a cluster singleton app (`scope = "cluster"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingletonPolicy {
    /// Lease TTL: how long the lease outlives its holder's last renewal; renewed every ttl/3.
    pub lease_ttl: Duration,
    /// How often a standby host tries to take the lease.
    pub standby_poll: Duration,
}

impl SingletonPolicy {
    /// How often the holder renews: a third of the TTL.
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// What the supervisor adds to a worker for the language it runs (see [`crate::runtimes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Node: the built-in preload takes the inherited sockets for the app's own `listen()`,
    /// reports readiness and drains on SIGTERM, so an unchanged app reloads without failures.
    Node,
    /// Nothing: the program follows the worker protocol itself.
    None,
}

impl Runtime {
    /// The default for a program: `node` for a program whose file name is `node` (or `nodejs`,
    /// `node20`, ...), otherwise `none`.
    pub fn detect(program: &Path) -> Runtime {
        if looks_like_node(program) {
            Runtime::Node
        } else {
            Runtime::None
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::Node => "node",
            Runtime::None => "none",
        })
    }
}

/// Whether the program is Node by its file name (`node`, `nodejs`, `node20`): what `runtime`
/// defaults on.
fn looks_like_node(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("node"))
}

/// Package managers that start the app in a child process: `LISTEN_PID` is theirs, not the app's,
/// so the app cannot take the sockets (they are themselves `#!/usr/bin/env node` scripts).
const NODE_WRAPPERS: &[&str] = &["npm", "npx", "yarn", "pnpm", "corepack"];

/// Whether the program is Node by its file name, or is a script run by Node (`#!/usr/bin/env
/// node`) other than a package manager: what `runtime = "node"` accepts.
fn runs_node(program: &Path) -> bool {
    if looks_like_node(program) {
        return true;
    }
    let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let target = std::fs::canonicalize(program).ok();
    let target_name = target
        .as_deref()
        .and_then(|t| t.file_stem())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if NODE_WRAPPERS
        .iter()
        .any(|w| name == *w || target_name.starts_with(w))
    {
        return false;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = &head[..n];
    head.starts_with(b"#!")
        && head
            .split(|b| *b == b'\n')
            .next()
            .is_some_and(|line| String::from_utf8_lossy(line).contains("node"))
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (IPv4 or IPv6). Port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One listening socket to bind once and pass to every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Address to bind.
    pub addr: ListenAddr,
    /// `listen(2)` backlog.
    pub backlog: i32,
    /// The config key this came from, for errors (`listen[0]`).
    pub key: String,
}

/// What to run as a worker; one generation of workers shares one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The app's name, used in worker names (`web.0`).
    pub name: String,
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Extra environment on top of the supervisor's own.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Number of worker slots.
    pub instances: usize,
    /// Readiness protocol.
    pub readiness: Readiness,
    /// What the supervisor adds for the program's language.
    pub runtime: Runtime,
    /// How long a new worker may take to become ready.
    pub ready_timeout: Duration,
    /// How long a stopping worker may drain before its process group is killed.
    pub kill_timeout: Duration,
}

/// When and how fast crashed workers are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A worker that ran at least this long before exiting was stable: restart at once.
    pub min_uptime: Duration,
    /// More unstable restarts than this within `window` mark the slot as crash-looping.
    pub max_restarts: u32,
    /// The window for `max_restarts`.
    pub window: Duration,
    /// First backoff delay after an unstable exit; doubles each time.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
}

impl RestartPolicy {
    /// Delay before the restart that follows `consecutive` unstable exits in a row (1-based).
    pub fn backoff(&self, consecutive: u32) -> Duration {
        if consecutive == 0 {
            return Duration::ZERO;
        }
        let shift = (consecutive - 1).min(30);
        self.backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }
}

/// How a rolling reload proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadPolicy {
    /// How many new workers may be starting at once.
    pub max_surge: usize,
    /// How many slots may be without a ready worker during the reload.
    pub max_unavailable: usize,
}

/// When a worker is replaced for using too much memory (like PM2's `max_memory_restart`, but
/// gracefully: the replacement is started and ready before the worker is drained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Resident memory of a worker's whole process group above which it is replaced; `None`:
    /// never.
    pub max_bytes: Option<u64>,
    /// How long a worker must stay above `max_bytes` before it is replaced.
    pub grace: Duration,
}

/// A cluster-once cron job the supervisor runs itself (`[[job]]`): each tick once across every
/// supervisor sharing the cron backend, under cronlock's claim, lease and fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The config key it came from (`job[0]`).
    pub key: String,
    /// Name, schedule, timezone, lease and policies, as cronlock takes them.
    pub spec: cronlock::JobSpec,
    /// A run still going after this long is stopped and recorded `failed`.
    pub timeout: Duration,
    /// How long a command may take to exit after SIGTERM (timeout, supervisor stop) before its
    /// process group is killed.
    pub kill_timeout: Duration,
    /// What a run does.
    pub action: JobAction,
}

/// What one run of a `[[job]]` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobAction {
    /// Run a program as a child of the supervisor, in its own process group.
    Command {
        /// Absolute path of the program.
        program: PathBuf,
        /// Arguments after the program name.
        args: Vec<String>,
        /// Extra environment (the app's `env` when the job names an app).
        env: BTreeMap<String, String>,
        /// Working directory (the app's `cwd`, else the config file's directory).
        cwd: PathBuf,
        /// The app whose environment and directory it takes, if any.
        app: Option<String>,
    },
    /// Send a request to an app through its own first listener.
    Http {
        /// Request method (`POST`).
        method: String,
        /// Request path and query (`/tasks/report`).
        path: String,
        /// The app whose first listener receives it.
        app: String,
    },
}

impl JobAction {
    /// `command` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            JobAction::Command { .. } => "command",
            JobAction::Http { .. } => "http",
        }
    }
}

/// Default `[[job]] timeout`.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `[[job]] kill_timeout` of a job that names no app.
pub const DEFAULT_JOB_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `[[job]] misfire_grace` with `misfire = "run_late"`.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// The most workers an app may run, from the file or from `supervisor scale`: far above what
/// one host serves, low enough that a typo cannot fork-storm the host or exhaust the
/// supervisor's memory.
pub const MAX_INSTANCES: usize = 1024;

/// The default `lease_ttl` of a cluster singleton.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
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
}

impl Config {}

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
    /// The worker program.
    pub worker: WorkerSpec,
    /// Crash restart policy.
    pub restart: RestartPolicy,
    /// Rolling reload policy.
    pub reload: ReloadPolicy,
    /// Memory recycling policy.
    pub memory: MemoryPolicy,
    /// `Some` for a cluster singleton (`scope = "cluster"`): its lease.
    pub singleton: Option<SingletonPolicy>,
}

/// Reads and deserializes a TOML file; errors name the file and the dotted key.
fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let parse_err = |key: String, e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        at: Location::of_span(&text, e.span()),
        key,
        message: e.message().trim_end().to_string(),
    };
    let de = toml::Deserializer::parse(&text).map_err(|e| parse_err("(syntax)".into(), e))?;
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".to_string()
        } else {
            key
        };
        parse_err(key, e.into_inner())
    })?;
    Ok((value, text))
}

/// The directory relative paths in the file are resolved against.
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// What the client commands need to reach a running supervisor and its cron backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Cron lock backend URL.
    pub cron_url: String,
}

/// Reads only `[supervisor]` and `[cron]` of a config file: the client commands must reach the
/// supervisor while it holds the ports, and also after someone broke the rest of the file (so
/// that `reload` can report that the new config is invalid).
pub fn endpoints_of(path: &Path) -> Result<Endpoints, ConfigError> {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        supervisor: RawSupervisor,
        #[serde(default)]
        cron: RawCron,
    }
    // Not `deny_unknown_fields`: the other sections are not read at all.
    let (partial, text): (Partial, String) = parse_toml(path)?;
    let control_socket = control_socket_path(path, partial.supervisor.control_socket.as_deref());
    let v = Validator {
        path,
        base: base_dir(path),
        text: &text,
    };
    let cron_url = v.cron(&partial.cron, &control_socket)?;
    Ok(Endpoints {
        control_socket,
        cron_url,
    })
}

fn control_socket_path(path: &Path, configured: Option<&Path>) -> PathBuf {
    let base = base_dir(path);
    match configured {
        Some(p) => resolve(&base, p),
        None => base.join("supervisor.sock"),
    }
}

impl Config {
    /// Reads and validates a config file. Performs no binding and starts nothing.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (raw, text): (RawFile, String) = parse_toml(path)?;
        Validator {
            path,
            base: base_dir(path),
            text: &text,
        }
        .validate(raw)
    }
}

struct Validator<'a> {
    path: &'a Path,
    base: PathBuf,
    /// The file's text, for the line of a spanned value.
    text: &'a str,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            at: Location::default(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error at the value whose byte range is `span`.
    fn err_at(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            at: Location::of_span(self.text, Some(span)),
            key: key.into(),
            message: message.into(),
        }
    }

    /// `e` with the location of `span` if it has none yet.
    fn located(&self, e: ConfigError, span: std::ops::Range<usize>) -> ConfigError {
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

    fn positive(
        &self,
        key: &str,
        d: Option<HumanDuration>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = d.map(|h| h.0).unwrap_or(default);
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn validate(&self, raw: RawFile) -> Result<Config, ConfigError> {
        let control_socket =
            control_socket_path(self.path, raw.supervisor.control_socket.as_deref());
        let metrics = raw
            .supervisor
            .metrics
            .as_deref()
            .map(|a| self.socket_addr("supervisor.metrics", a))
            .transpose()?;
        if raw.app.is_empty() {
            return Err(self.err(
                "app",
                "no app: add at least one [[app]] with `name` and `command`",
            ));
        }
        let mut apps: Vec<AppConfig> = Vec::with_capacity(raw.app.len());
        for (i, ra) in raw.app.into_iter().enumerate() {
            let app = self.app(&format!("app[{i}]"), ra)?;
            if let Some(prev) = apps.iter().find(|a| a.name == app.name) {
                return Err(self.err(
                    format!("{}.name", app.key),
                    format!("{:?} is already the name of {}", app.name, prev.key),
                ));
            }
            for l in &app.listeners {
                let taken = apps.iter().flat_map(|a| &a.listeners).find(|o| {
                    o.addr == l.addr && !matches!(&l.addr, ListenAddr::Tcp(a) if a.port() == 0)
                });
                if let Some(prev) = taken {
                    return Err(self.err(
                        &l.key,
                        format!("{} is already listed as {}", l.addr, prev.key),
                    ));
                }
            }
            apps.push(app);
        }
        self.check_after(&apps)?;
        let cron_url = self.cron(&raw.cron, &control_socket)?;
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
            control_socket,
            apps,
            cron_url,
            metrics,
            jobs,
        })
    }

    /// A positive duration from a spanned value, or `default`.
    fn positive_at(
        &self,
        key: &str,
        d: Option<Spanned<HumanDuration>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match d {
            None => Ok(default),
            Some(d) if d.get_ref().0.is_zero() => {
                Err(self.err_at(d.span(), key, "must be greater than zero"))
            }
            Some(d) => Ok(d.get_ref().0),
        }
    }

    /// One `[[job]]` table, checked against the apps.
    fn job(&self, key: &str, rj: RawJob, apps: &[AppConfig]) -> Result<JobConfig, ConfigError> {
        let name_span = rj.name.span();
        let name = rj.name.into_inner();
        let mut spec = cronlock::JobSpec::new(name.clone(), rj.schedule.get_ref().clone());
        // Name checks first (cronlock's rules: the name is part of the backend's keys).
        if let Err(e) = cronlock::JobSpec::new(name.clone(), "* * * * * *").validate() {
            return Err(self.err_at(name_span, format!("{key}.name"), e.to_string()));
        }
        if let Some(tz) = &rj.timezone {
            spec = spec.timezone_name(tz.get_ref()).map_err(|_| {
                self.err_at(
                    tz.span(),
                    format!("{key}.timezone"),
                    format!(
                        "unknown timezone {:?} (an IANA name such as \"Europe/Berlin\" or \"UTC\")",
                        tz.get_ref()
                    ),
                )
            })?;
        }
        if let Err(e) = spec.validate() {
            return Err(self.err_at(
                rj.schedule.span(),
                format!("{key}.schedule"),
                format!("{e} (6 fields with seconds, e.g. \"0 30 2 * * *\", or 7 with a year)"),
            ));
        }
        if let Some(ttl) = &rj.lease_ttl {
            if ttl.get_ref().0 < Duration::from_millis(300) {
                return Err(self.err_at(
                    ttl.span(),
                    format!("{key}.lease_ttl"),
                    "must be at least 300ms",
                ));
            }
            spec = spec.lease_ttl(ttl.get_ref().0);
        }
        if let Some(o) = rj.overlap {
            spec = spec.overlap(o);
        }
        let grace = rj.misfire_grace;
        match rj
            .misfire
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("skip", _)) => {
                if let Some(g) = grace {
                    return Err(self.err_at(
                        g.span(),
                        format!("{key}.misfire_grace"),
                        "only with misfire = \"run_late\"",
                    ));
                }
            }
            Some(("run_late", _)) => {
                let grace = self.positive_at(
                    &format!("{key}.misfire_grace"),
                    grace,
                    DEFAULT_MISFIRE_GRACE,
                )?;
                spec = spec.misfire(cronlock::Misfire::RunLate { grace });
            }
            Some((other, span)) => {
                return Err(self.err_at(
                    span,
                    format!("{key}.misfire"),
                    format!("{other:?}: use \"skip\" or \"run_late\""),
                ));
            }
        }
        let timeout =
            self.positive_at(&format!("{key}.timeout"), rj.timeout, DEFAULT_JOB_TIMEOUT)?;
        let app = match &rj.app {
            None => None,
            Some(a) => match apps.iter().find(|x| &x.name == a.get_ref()) {
                Some(app) => Some((app, a.span())),
                None => {
                    let names: Vec<&str> = apps.iter().map(|o| o.name.as_str()).collect();
                    return Err(self.err_at(
                        a.span(),
                        format!("{key}.app"),
                        format!(
                            "no app is named {:?} (apps: {})",
                            a.get_ref(),
                            names.join(", ")
                        ),
                    ));
                }
            },
        };
        let kill_timeout = self.positive_at(
            &format!("{key}.kill_timeout"),
            rj.kill_timeout,
            app.as_ref()
                .map_or(DEFAULT_JOB_KILL_TIMEOUT, |(a, _)| a.worker.kill_timeout),
        )?;
        let action = match (rj.command, rj.http) {
            (Some(_), Some(h)) => {
                return Err(self.err_at(
                    h.span(),
                    key,
                    "give either `command` or `http`, not both",
                ));
            }
            (None, None) => {
                return Err(self.err_at(
                    name_span,
                    key,
                    "needs `command = [\"prog\", \"arg\"]` or `http = \"POST /path\"` (with `app`)",
                ));
            }
            (Some(c), None) => {
                let span = c.span();
                let argv = c.into_inner();
                let Some((prog, args)) = argv.split_first() else {
                    return Err(self.err_at(span, format!("{key}.command"), "is empty"));
                };
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(self.err_at(span, format!("{key}.command"), "contains a NUL byte"));
                }
                let program = self
                    .program(key, prog)
                    .map_err(|e| self.located(e, span.clone()))?;
                let (env, cwd) = match &app {
                    Some((a, _)) => (a.worker.env.clone(), a.worker.cwd.clone()),
                    None => (BTreeMap::new(), self.base.clone()),
                };
                JobAction::Command {
                    program,
                    args: args.to_vec(),
                    env,
                    cwd,
                    app: app.map(|(a, _)| a.name.clone()),
                }
            }
            (None, Some(h)) => {
                let (method, path) = parse_http(h.get_ref())
                    .map_err(|m| self.err_at(h.span(), format!("{key}.http"), m))?;
                let Some((app, app_span)) = app else {
                    return Err(self.err_at(
                        h.span(),
                        format!("{key}.http"),
                        "needs `app = \"NAME\"`: the request goes to that app's first listener",
                    ));
                };
                if app.listeners.is_empty() {
                    return Err(self.err_at(
                        app_span,
                        format!("{key}.app"),
                        format!(
                            "app {:?} has no listener to send the request to (add [[app.listen]] to it)",
                            app.name
                        ),
                    ));
                }
                JobAction::Http {
                    method,
                    path,
                    app: app.name.clone(),
                }
            }
        };
        Ok(JobConfig {
            key: key.to_string(),
            spec,
            timeout,
            kill_timeout,
            action,
        })
    }

    /// Every `after` names another app, and no app waits for itself through others.
    fn check_after(&self, apps: &[AppConfig]) -> Result<(), ConfigError> {
        for a in apps {
            for (j, dep) in a.after.iter().enumerate() {
                if dep == &a.name {
                    return Err(self.err(
                        format!("{}.after[{j}]", a.key),
                        "an app cannot wait for itself",
                    ));
                }
                if !apps.iter().any(|o| &o.name == dep) {
                    let names: Vec<&str> = apps.iter().map(|o| o.name.as_str()).collect();
                    return Err(self.err(
                        format!("{}.after[{j}]", a.key),
                        format!("no app is named {dep:?} (apps: {})", names.join(", ")),
                    ));
                }
            }
        }
        // A cycle: following `after` from an app comes back to it.
        for a in apps {
            let mut seen = vec![a.name.as_str()];
            let mut frontier: Vec<&str> = a.after.iter().map(String::as_str).collect();
            while let Some(name) = frontier.pop() {
                if name == a.name {
                    return Err(self.err(
                        format!("{}.after", a.key),
                        format!(
                            "{:?} waits for itself through {}",
                            a.name,
                            seen[1..].join(" -> ")
                        ),
                    ));
                }
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                if let Some(o) = apps.iter().find(|o| o.name == name) {
                    frontier.extend(o.after.iter().map(String::as_str));
                }
            }
        }
        Ok(())
    }

    fn app(&self, key: &str, ra: RawApp) -> Result<AppConfig, ConfigError> {
        let name = ra.name.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(self.err(
                format!("{key}.name"),
                format!(
                    "{name:?}: use letters, digits, '-' and '_' (worker names are `name.slot`)"
                ),
            ));
        }
        let listeners = self.listeners(key, &ra.listen)?;
        let restart = self.restart(key, &ra.restart)?;
        let after = ra.after.clone();
        let reload_raw = (ra.reload.max_surge, ra.reload.max_unavailable);
        let memory = MemoryPolicy {
            max_bytes: ra.max_memory.map(|b| b.0),
            grace: self.positive(
                &format!("{key}.max_memory_grace"),
                ra.max_memory_grace,
                Duration::from_secs(30),
            )?,
        };
        let singleton = self.singleton(key, &ra)?;
        let worker = self.worker(key, ra)?;
        let reload = ReloadPolicy {
            max_surge: reload_raw.0.unwrap_or(1),
            max_unavailable: reload_raw.1.unwrap_or(0),
        };
        if reload.max_surge == 0 {
            return Err(self.err(format!("{key}.reload.max_surge"), "must be at least 1"));
        }
        if reload.max_unavailable >= worker.instances.max(1) {
            return Err(self.err(
                format!("{key}.reload.max_unavailable"),
                format!("must be less than instances ({})", worker.instances),
            ));
        }
        Ok(AppConfig {
            name,
            key: key.to_string(),
            after,
            listeners,
            worker,
            restart,
            reload,
            memory,
            singleton,
        })
    }

    /// `scope`, `lease_ttl` and `standby_poll`: the lease of a cluster singleton.
    fn singleton(&self, key: &str, ra: &RawApp) -> Result<Option<SingletonPolicy>, ConfigError> {
        if ra.scope.unwrap_or_default() == Scope::Host {
            for (k, set) in [
                ("lease_ttl", ra.lease_ttl.is_some()),
                ("standby_poll", ra.standby_poll.is_some()),
            ] {
                if set {
                    return Err(self.err(
                        format!("{key}.{k}"),
                        "only for a cluster singleton: add `scope = \"cluster\"`",
                    ));
                }
            }
            return Ok(None);
        }
        let lease_ttl = ra.lease_ttl.map_or(DEFAULT_LEASE_TTL, |h| h.0);
        if lease_ttl < Duration::from_millis(300) {
            return Err(self.err(
                format!("{key}.lease_ttl"),
                "must be at least 300ms (it is renewed every third of it)",
            ));
        }
        let standby_poll = self.positive(
            &format!("{key}.standby_poll"),
            ra.standby_poll,
            lease_ttl / 3,
        )?;
        Ok(Some(SingletonPolicy {
            lease_ttl,
            standby_poll,
        }))
    }

    fn listeners(&self, app: &str, raw: &[RawListen]) -> Result<Vec<ListenerSpec>, ConfigError> {
        let mut out: Vec<ListenerSpec> = Vec::with_capacity(raw.len());
        for (i, l) in raw.iter().enumerate() {
            let key = format!("{app}.listen[{i}]");
            let addr = match (&l.address, &l.path) {
                (Some(a), None) => ListenAddr::Tcp(self.socket_addr(&format!("{key}.address"), a)?),
                (None, Some(p)) => ListenAddr::Unix(resolve(&self.base, p)),
                (Some(_), Some(_)) => {
                    return Err(self.err(key, "give either `address` or `path`, not both"));
                }
                (None, None) => {
                    return Err(self.err(
                        key,
                        "needs `address = \"host:port\"` or `path = \"/a/unix.sock\"`",
                    ));
                }
            };
            let name = l.name.clone().unwrap_or_else(|| format!("listen{i}"));
            if name.is_empty()
                || name.len() > 255
                || !name.chars().all(|c| c.is_ascii_graphic() && c != ':')
            {
                return Err(self.err(format!("{key}.name"), format!("{name:?} is not a valid fd name (printable ASCII, no ':', at most 255 bytes)")));
            }
            if let Some(prev) = out.iter().find(|o| o.name == name) {
                return Err(self.err(
                    format!("{key}.name"),
                    format!("{name:?} is already used by {}", prev.key),
                ));
            }
            if let Some(prev) = out
                .iter()
                .find(|o| o.addr == addr && !matches!(&addr, ListenAddr::Tcp(a) if a.port() == 0))
            {
                return Err(self.err(key, format!("{addr} is already listed as {}", prev.key)));
            }
            let backlog = l.backlog.unwrap_or(1024);
            if backlog <= 0 {
                return Err(self.err(format!("{key}.backlog"), "must be positive"));
            }
            out.push(ListenerSpec {
                name,
                addr,
                backlog,
                key,
            });
        }
        Ok(out)
    }

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

    fn worker(&self, key: &str, rw: RawApp) -> Result<WorkerSpec, ConfigError> {
        let program = self
            .program(key, rw.command.get_ref())
            .map_err(|e| self.located(e, rw.command.span()))?;
        let name = rw.name;
        for k in rw.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(self.err(
                    format!("{key}.env.{k}"),
                    "not a valid environment variable name",
                ));
            }
        }
        for (i, a) in rw.args.iter().enumerate() {
            if a.contains('\0') {
                return Err(self.err(format!("{key}.args[{i}]"), "contains a NUL byte"));
            }
        }
        let cwd = rw
            .cwd
            .map(|c| resolve(&self.base, &c))
            .unwrap_or_else(|| self.base.clone());
        if !cwd.is_dir() {
            return Err(self.err(
                format!("{key}.cwd"),
                format!("{} is not a directory", cwd.display()),
            ));
        }
        let instances = match rw.instances {
            None | Some(0) => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            Some(n) if n > MAX_INSTANCES => {
                return Err(self.err(
                    format!("{key}.instances"),
                    format!("{n} is more than {MAX_INSTANCES}"),
                ));
            }
            Some(n) => n,
        };
        let runtime = match rw.runtime {
            None => Runtime::detect(&program),
            Some(Runtime::Node) if !runs_node(&program) => {
                return Err(self.err(
                    format!("{key}.runtime"),
                    format!(
                        "\"node\" needs Node as the program, but {key}.command is {} (run node itself: \
                         command = \"node\", args = [\"app.js\"]; a wrapper such as npm or a shell \
                         starts Node in another process, which cannot take the sockets)",
                        program.display()
                    ),
                ));
            }
            Some(r) => r,
        };
        let readiness = rw.readiness.unwrap_or(Readiness::Notify);
        if runtime == Runtime::Node && readiness == Readiness::Exec {
            return Err(self.err(
                format!("{key}.readiness"),
                "\"exec\" with runtime \"node\": the Node preload reports readiness once the app \
                 listens; remove `readiness` (or set runtime = \"none\")",
            ));
        }
        Ok(WorkerSpec {
            name,
            program,
            args: rw.args,
            env: rw.env,
            cwd,
            instances,
            readiness,
            runtime,
            ready_timeout: self.positive(
                &format!("{key}.ready_timeout"),
                rw.ready_timeout,
                Duration::from_secs(30),
            )?,
            kill_timeout: self.positive(
                &format!("{key}.kill_timeout"),
                rw.kill_timeout,
                Duration::from_secs(10),
            )?,
        })
    }

    /// Resolves an app's `command`: a path with a slash is taken relative to the config file; a
    /// bare name is looked up next to the supervisor's own executable first, then in `PATH`.
    fn program(&self, app: &str, command: &str) -> Result<PathBuf, ConfigError> {
        let key = format!("{app}.command");
        let key = key.as_str();
        if command.is_empty() {
            return Err(self.err(key, "is empty"));
        }
        let candidates: Vec<PathBuf> = if command.contains('/') {
            vec![resolve(&self.base, Path::new(command))]
        } else {
            let mut dirs: Vec<PathBuf> = Vec::new();
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
            {
                dirs.push(dir);
            }
            dirs.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
            dirs.into_iter().map(|d| d.join(command)).collect()
        };
        for c in &candidates {
            if let Ok(meta) = std::fs::metadata(c)
                && meta.is_file()
                && meta.permissions().mode() & 0o111 != 0
            {
                return std::path::absolute(c)
                    .map_err(|e| self.err(key, format!("{}: {e}", c.display())));
            }
        }
        let hint = if command.contains('/') {
            String::new()
        } else if command == "demo-app" {
            " (looked next to the supervisor binary and in PATH; build it with `cargo build --release`)".to_string()
        } else {
            " (looked next to the supervisor binary and in PATH)".to_string()
        };
        Err(self.err(
            key,
            format!("program {command:?} not found or not executable{hint}"),
        ))
    }

    fn restart(&self, app: &str, r: &RawRestart) -> Result<RestartPolicy, ConfigError> {
        let key = |k: &str| format!("{app}.restart.{k}");
        let policy = RestartPolicy {
            min_uptime: self.positive(&key("min_uptime"), r.min_uptime, Duration::from_secs(1))?,
            max_restarts: r.max_restarts.unwrap_or(5),
            window: self.positive(&key("window"), r.window, Duration::from_secs(60))?,
            backoff_initial: self.positive(
                &key("backoff_initial"),
                r.backoff_initial,
                Duration::from_millis(100),
            )?,
            backoff_max: self.positive(
                &key("backoff_max"),
                r.backoff_max,
                Duration::from_secs(30),
            )?,
        };
        if policy.backoff_max < policy.backoff_initial {
            return Err(self.err(
                key("backoff_max"),
                "must not be smaller than backoff_initial",
            ));
        }
        Ok(policy)
    }

    fn cron(&self, c: &RawCron, control_socket: &Path) -> Result<String, ConfigError> {
        match (&c.redis_url, &c.state_dir) {
            (Some(_), Some(_)) => {
                Err(self.err("cron", "give either `redis_url` or `state_dir`, not both"))
            }
            (Some(url), None) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(self.err("cron.redis_url", "must start with redis:// or rediss://"));
                }
                Ok(url.clone())
            }
            (None, dir) => {
                let dir = match dir {
                    Some(d) => resolve(&self.base, d),
                    None => control_socket.with_extension("cron"),
                };
                let dir = std::path::absolute(&dir)
                    .map_err(|e| self.err("cron.state_dir", e.to_string()))?;
                Ok(format!("file://{}", dir.display()))
            }
        }
    }
}

/// `"POST /tasks/report"` -> (`POST`, `/tasks/report`).
fn parse_http(text: &str) -> Result<(String, String), String> {
    let mut parts = text.split_whitespace();
    let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{text:?}: write the method and the path, e.g. \"POST /tasks/report\""
        ));
    };
    if !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{method:?} is not a method (GET, POST, PUT, ...: upper case)"
        ));
    }
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("{path:?} is not a path starting with '/'"));
    }
    Ok((method.to_string(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    const OK: &str = r#"
        [[app]]
        name = "sh"
        command = "/bin/sh"
        instances = 2
        [[app.listen]]
        address = "127.0.0.1:0"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(OK).unwrap();
        let a = &c.apps[0];
        assert_eq!(a.worker.instances, 2);
        assert_eq!(a.worker.name, "sh");
        assert_eq!(a.worker.kill_timeout, Duration::from_secs(10));
        assert_eq!(a.listeners[0].name, "listen0");
        assert_eq!(a.reload.max_surge, 1);
        assert!(c.cron_url.starts_with("file:///"), "{}", c.cron_url);
        assert!(c.control_socket.ends_with("supervisor.sock"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load(&format!("{OK}\nkill_timout = \"1s\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("app[0].listen[0].kill_timout"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn syntax_error_keeps_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, format!("{OK}\naddress = \"127.0.0.1:1\"\n")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        // OK is 8 lines (a leading newline, a trailing indented one): the second `address` is 9:1.
        let want = format!("{}:9:1: (syntax): ", path.display());
        assert!(e.starts_with(&want), "{e}");
        assert!(e.contains("duplicate key"), "{e}");
    }

    #[test]
    fn type_error_has_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let text = OK.replace("instances = 2", "instances = \"two\"");
        std::fs::write(&path, &text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        let want = format!("{}:5:", path.display());
        assert!(
            e.starts_with(&want) && e.contains("app[0].instances"),
            "{e}"
        );
    }

    #[test]
    fn location_counts_lines_and_characters() {
        assert_eq!(Location::of_offset("ab\ncd", 4).to_string(), ":2:2");
        assert_eq!(Location::of_offset("", 0).to_string(), ":1:1");
        assert_eq!(Location::of_offset("\u{e9}x", 2).to_string(), ":1:2");
        assert_eq!(Location(None).to_string(), "");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = load(&OK.replace(
            "instances = 2",
            "instances = 2\nkill_timeout = \"10 parsecs\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("app[0].kill_timeout"), "{e}");
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn missing_program_is_named() {
        let e = load(&OK.replace("/bin/sh", "/nonexistent/prog"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("app[0].command") && e.contains("/nonexistent/prog"),
            "{e}"
        );
    }

    #[test]
    fn bad_address_is_named() {
        let e = load(&OK.replace("127.0.0.1:0", "127.0.0.1:99999"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("app[0].listen[0].address"), "{e}");
    }

    #[test]
    fn no_app_is_an_error() {
        let e = load("[supervisor]\n").unwrap_err().to_string();
        assert!(e.contains("app: no app"), "{e}");
    }

    #[test]
    fn an_app_without_listeners_is_fine() {
        let c = load("[[app]]\nname = \"queue\"\ncommand = \"/bin/sh\"\ninstances = 1\n").unwrap();
        assert!(c.apps[0].listeners.is_empty());
    }

    /// OK with a second app `name` appended (listening on port 0).
    fn two_apps(second: &str) -> String {
        format!("{OK}\n[[app]]\ncommand = \"/bin/sh\"\ninstances = 1\n{second}\n")
    }

    #[test]
    fn apps_need_unique_names_and_addresses() {
        let e = load(&two_apps("name = \"sh\"")).unwrap_err().to_string();
        assert!(
            e.contains("app[1].name") && e.contains("already the name of app[0]"),
            "{e}"
        );
        let e = load(&two_apps("name = \"sh.x\"")).unwrap_err().to_string();
        assert!(e.contains("app[1].name"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let text = format!(
            "[[app]]\nname = \"a\"\ncommand = \"/bin/sh\"\n[[app.listen]]\npath = \"{0}\"\n\
             [[app]]\nname = \"b\"\ncommand = \"/bin/sh\"\n[[app.listen]]\npath = \"{0}\"\n",
            sock.display()
        );
        let e = load(&text).unwrap_err().to_string();
        assert!(
            e.contains("app[1].listen[0]") && e.contains("already listed as app[0].listen[0]"),
            "{e}"
        );
    }

    #[test]
    fn after_must_name_other_apps_without_a_cycle() {
        let e = load(&two_apps("name = \"b\"\nafter = [\"nope\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("app[1].after[0]") && e.contains("no app is named \"nope\""),
            "{e}"
        );
        let e = load(&two_apps("name = \"b\"\nafter = [\"b\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot wait for itself"), "{e}");
        let cyclic = two_apps("name = \"b\"\nafter = [\"sh\"]").replacen(
            "instances = 2",
            "instances = 2\nafter = [\"b\"]",
            1,
        );
        let e = load(&cyclic).unwrap_err().to_string();
        assert!(e.contains("waits for itself through b"), "{e}");
        let c = load(&two_apps("name = \"b\"\nafter = [\"sh\"]")).unwrap();
        assert_eq!(c.apps[1].after, vec!["sh"]);
    }

    #[test]
    fn keys_of_a_later_app_are_named_by_its_index() {
        let e = load(&two_apps("name = \"b\"\nkill_timeout = \"0s\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("app[1].kill_timeout"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = load(&OK.replace("instances = 2", "instances = \"two\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("app[0].instances"), "{e}");
    }

    #[test]
    fn instances_zero_means_cpus() {
        let c = load(&OK.replace("instances = 2", "instances = 0")).unwrap();
        assert!(c.apps[0].worker.instances >= 1);
    }

    #[test]
    fn endpoints_survive_a_broken_worker_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "[supervisor]\ncontrol_socket = \"c.sock\"\n[cron]\nredis_url = \"redis://:pw@h:1/0\"\n[[app]]\ninstances = \"x\"\n").unwrap();
        let e = endpoints_of(&path).unwrap();
        assert_eq!(e.control_socket, dir.path().join("c.sock"));
        assert_eq!(e.cron_url, "redis://:pw@h:1/0");
    }

    /// An executable file named `name` in a fresh directory (kept alive by the returned dir).
    fn program_named(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    }

    #[test]
    fn runtime_defaults_to_node_for_a_program_named_node() {
        let (_d, node) = program_named("node", "");
        let c = load(&OK.replace("/bin/sh", &node.display().to_string())).unwrap();
        assert_eq!(c.apps[0].worker.runtime, Runtime::Node);
        assert_eq!(load(OK).unwrap().apps[0].worker.runtime, Runtime::None);
        let c = load(
            &OK.replace("instances = 2", "instances = 2\nruntime = \"none\"")
                .replace("/bin/sh", &node.display().to_string()),
        )
        .unwrap();
        assert_eq!(
            c.apps[0].worker.runtime,
            Runtime::None,
            "runtime = \"none\" opts out"
        );
    }

    #[test]
    fn runtime_node_accepts_a_node_script_and_refuses_other_programs() {
        let (_d, script) = program_named("app", "#!/usr/bin/env node\nconsole.log(1)\n");
        let with = |program: &str| {
            load(
                &OK.replace("/bin/sh", program)
                    .replace("instances = 2", "instances = 2\nruntime = \"node\""),
            )
        };
        assert_eq!(
            with(&script.display().to_string()).unwrap().apps[0]
                .worker
                .runtime,
            Runtime::Node
        );
        let e = with("/bin/sh").unwrap_err().to_string();
        assert!(e.contains("app[0].runtime") && e.contains("/bin/sh"), "{e}");
    }

    #[test]
    fn runtime_node_refuses_a_package_manager_that_starts_node_in_a_child() {
        let (_d, npm) = program_named("npm", "#!/usr/bin/env node\nrequire('./npm-cli')\n");
        let e = load(
            &OK.replace("/bin/sh", &npm.display().to_string())
                .replace("instances = 2", "instances = 2\nruntime = \"node\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("app[0].runtime") && e.contains("wrapper such as npm"),
            "{e}"
        );
    }

    #[test]
    fn readiness_exec_with_the_node_preload_is_refused() {
        let (_d, node) = program_named("node", "");
        let e = load(
            &OK.replace("/bin/sh", &node.display().to_string())
                .replace("instances = 2", "instances = 2\nreadiness = \"exec\""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("app[0].readiness"), "{e}");
    }

    /// OK plus one `[[job]]` table with `keys`; the error text (with the file's path).
    fn job_error(keys: &str) -> String {
        load(&format!("{OK}\n[[job]]\n{keys}\n"))
            .unwrap_err()
            .to_string()
    }

    /// Asserts that `e` names `key` at line `line` of the file and says `what`.
    #[track_caller]
    fn assert_at(e: &str, line: usize, key: &str, what: &str) {
        assert!(e.contains(&format!("s.toml:{line}:")), "line {line}: {e}");
        assert!(e.contains(&format!(": {key}: ")), "key {key}: {e}");
        assert!(e.contains(what), "{what:?}: {e}");
    }

    // OK and a newline are 8 lines: the `[[job]]` header is line 9, the job's first key line 10.

    #[test]
    fn jobs_get_defaults_and_resolve_their_program() {
        let c = load(&format!(
            "{OK}\n[[job]]\nname = \"report\"\nschedule = \"*/5 * * * * *\"\ncommand = [\"sh\", \"-c\", \"true\"]\n\
             [[job]]\nname = \"ping\"\nschedule = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nhttp = \"POST /tasks/report\"\n\
             app = \"sh\"\noverlap = \"allow\"\nmisfire = \"run_late\"\nlease_ttl = \"5s\"\ntimeout = \"2m\"\n"
        ))
        .unwrap();
        let report = &c.jobs[0];
        assert_eq!(report.timeout, DEFAULT_JOB_TIMEOUT);
        assert_eq!(report.kill_timeout, DEFAULT_JOB_KILL_TIMEOUT);
        assert_eq!(report.spec.lease_ttl, Duration::from_secs(30));
        match &report.action {
            JobAction::Command {
                program, args, app, ..
            } => {
                assert!(
                    program.is_absolute() && program.ends_with("sh"),
                    "{program:?}"
                );
                assert_eq!(args, &["-c", "true"]);
                assert_eq!(app, &None);
            }
            other => panic!("{other:?}"),
        }
        let ping = &c.jobs[1];
        assert_eq!(ping.spec.timezone.name(), "Europe/Berlin");
        assert_eq!(ping.spec.overlap, cronlock::Overlap::Allow);
        assert_eq!(
            ping.spec.misfire,
            cronlock::Misfire::RunLate {
                grace: DEFAULT_MISFIRE_GRACE
            }
        );
        assert_eq!(ping.spec.lease_ttl, Duration::from_secs(5));
        assert_eq!(ping.timeout, Duration::from_secs(120));
        assert_eq!(
            ping.kill_timeout,
            Duration::from_secs(10),
            "the app's kill_timeout"
        );
        assert_eq!(
            ping.action,
            JobAction::Http {
                method: "POST".into(),
                path: "/tasks/report".into(),
                app: "sh".into()
            }
        );
    }

    #[test]
    fn job_with_a_bad_schedule_is_named_with_its_line() {
        let e = job_error("name = \"r\"\nschedule = \"every day\"\ncommand = [\"sh\"]");
        assert_at(&e, 11, "job[0].schedule", "every day");
    }

    #[test]
    fn job_with_an_unknown_timezone() {
        let e = job_error(
            "name = \"r\"\nschedule = \"* * * * * *\"\ntimezone = \"Mars/Olympus\"\ncommand = [\"sh\"]",
        );
        assert_at(
            &e,
            12,
            "job[0].timezone",
            "unknown timezone \"Mars/Olympus\"",
        );
    }

    #[test]
    fn job_needs_exactly_one_of_command_and_http() {
        let e = job_error(
            "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]\nhttp = \"GET /\"\napp = \"sh\"",
        );
        assert_at(&e, 13, "job[0]", "either `command` or `http`, not both");
        let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"");
        assert_at(&e, 10, "job[0]", "needs `command");
        let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\ncommand = []");
        assert_at(&e, 12, "job[0].command", "is empty");
        let e =
            job_error("name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"/nonexistent/x\"]");
        assert_at(&e, 12, "job[0].command", "not found");
    }

    #[test]
    fn http_job_needs_an_app_that_exists_and_listens() {
        let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"POST /x\"");
        assert_at(&e, 12, "job[0].http", "needs `app");
        let e = job_error(
            "name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"POST /x\"\napp = \"nope\"",
        );
        assert_at(&e, 13, "job[0].app", "no app is named \"nope\" (apps: sh)");
        let e = load(
            "[[app]]\nname = \"queue\"\ncommand = \"/bin/sh\"\ninstances = 1\n\
             [[job]]\nname = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"POST /x\"\napp = \"queue\"\n",
        )
        .unwrap_err()
        .to_string();
        assert_at(&e, 9, "job[0].app", "has no listener");
        let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"/x\"\napp = \"sh\"");
        assert_at(&e, 12, "job[0].http", "method and the path");
        let e =
            job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"post x\"\napp = \"sh\"");
        assert_at(&e, 12, "job[0].http", "not a method");
    }

    #[test]
    fn command_job_naming_a_missing_app_is_refused() {
        let e = job_error(
            "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]\napp = \"web\"",
        );
        assert_at(&e, 13, "job[0].app", "no app is named \"web\"");
    }

    #[test]
    fn job_names_are_unique_and_key_safe() {
        let one = "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]";
        let e = load(&format!("{OK}\n[[job]]\n{one}\n[[job]]\n{one}\n"))
            .unwrap_err()
            .to_string();
        assert_at(&e, 14, "job[1].name", "already the name of job[0]");
        let e = job_error("name = \"a b\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]");
        assert_at(&e, 10, "job[0].name", "whitespace");
    }

    #[test]
    fn job_policies_and_durations_are_checked() {
        let base = "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]";
        let e = job_error(&format!("{base}\nmisfire = \"later\""));
        assert_at(&e, 13, "job[0].misfire", "\"skip\" or \"run_late\"");
        let e = job_error(&format!("{base}\nmisfire_grace = \"5s\""));
        assert_at(&e, 13, "job[0].misfire_grace", "only with misfire");
        let e = job_error(&format!("{base}\ntimeout = \"0s\""));
        assert_at(&e, 13, "job[0].timeout", "greater than zero");
        let e = job_error(&format!("{base}\nlease_ttl = \"100ms\""));
        assert_at(&e, 13, "job[0].lease_ttl", "at least 300ms");
        let e = job_error(&format!("{base}\noverlap = \"queue\""));
        assert!(e.contains("job[0].overlap"), "{e}");
        let e = job_error(&format!("{base}\ncomand = [\"sh\"]"));
        assert!(e.contains("job[0]") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64kb"), Ok(64_000));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096B"), Ok(4096));
        for bad in [
            "",
            "512",
            "MB",
            "0MB",
            "5 parsecs",
            "-1MB",
            "1..5MB",
            "99999999999GB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn scope_defaults_to_host_and_cluster_gets_a_lease() {
        let c = load(OK).unwrap();
        assert_eq!(c.apps[0].singleton, None);
        let c = load(&OK.replace("instances = 2", "instances = 2\nscope = \"cluster\"")).unwrap();
        let p = c.apps[0].singleton.unwrap();
        assert_eq!(p.lease_ttl, Duration::from_secs(10));
        assert_eq!(p.standby_poll, Duration::from_secs(10) / 3);
        assert_eq!(p.renew_every(), Duration::from_secs(10) / 3);
        let c = load(&OK.replace(
            "instances = 2",
            "instances = 2\nscope = \"cluster\"\nlease_ttl = \"3s\"\nstandby_poll = \"500ms\"",
        ))
        .unwrap();
        let p = c.apps[0].singleton.unwrap();
        assert_eq!(p.lease_ttl, Duration::from_secs(3));
        assert_eq!(p.standby_poll, Duration::from_millis(500));
    }

    #[test]
    fn bad_singleton_settings_name_the_key() {
        for (extra, key, why) in [
            (
                "lease_ttl = \"3s\"",
                "app[0].lease_ttl",
                "scope = \"cluster\"",
            ),
            (
                "scope = \"cluster\"\nlease_ttl = \"100ms\"",
                "app[0].lease_ttl",
                "at least 300ms",
            ),
            (
                "scope = \"cluster\"\nstandby_poll = \"0s\"",
                "app[0].standby_poll",
                "greater than zero",
            ),
            ("scope = \"everywhere\"", "app[0].scope", "unknown variant"),
        ] {
            let e = load(&OK.replace("instances = 2", &format!("instances = 2\n{extra}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(why), "{extra}: {e}");
        }
    }

    #[test]
    fn max_memory_defaults_to_off_with_a_30s_grace() {
        let c = load(OK).unwrap();
        assert_eq!(c.apps[0].memory.max_bytes, None);
        assert_eq!(c.apps[0].memory.grace, Duration::from_secs(30));
        let c = load(&OK.replace(
            "instances = 2",
            "instances = 2\nmax_memory = \"512MB\"\nmax_memory_grace = \"5s\"",
        ))
        .unwrap();
        assert_eq!(
            c.apps[0].memory,
            MemoryPolicy {
                max_bytes: Some(512_000_000),
                grace: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn a_bad_max_memory_names_file_line_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        for (value, why) in [
            ("\"512XB\"", "unknown unit \"xb\""),
            ("\"512\"", "no unit"),
            ("\"0GiB\"", "must be greater than zero"),
            ("512", "expected a size such as"),
        ] {
            let text = OK.replace(
                "instances = 2",
                &format!("instances = 2\nmax_memory = {value}"),
            );
            std::fs::write(&path, &text).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            // The key is on line 6 (OK starts with an empty line).
            let want = format!("{}:6:", path.display());
            assert!(e.starts_with(&want), "{e}");
            assert!(e.contains("app[0].max_memory") && e.contains(why), "{e}");
            if value.starts_with('"') {
                assert!(e.contains(value), "names the value: {e}");
            }
        }
        let e = load(&OK.replace(
            "instances = 2",
            "instances = 2\nmax_memory = \"1GB\"\nmax_memory_grace = \"0s\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("app[0].max_memory_grace") && e.contains("greater than zero"),
            "{e}"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RestartPolicy {
            min_uptime: Duration::from_secs(1),
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(0), Duration::ZERO);
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(10), Duration::from_secs(1));
        assert_eq!(p.backoff(1000), Duration::from_secs(1));
    }

    #[test]
    fn metrics_address_is_optional_and_named_when_bad() {
        assert_eq!(load(OK).unwrap().metrics, None, "off unless configured");
        let c = load(&format!("[supervisor]\nmetrics = \"127.0.0.1:9090\"\n{OK}")).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9090".parse().unwrap()));
        let e = load(&format!("[supervisor]\nmetrics = \"9090\"\n{OK}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("supervisor.metrics") && e.contains("not a host:port address"),
            "{e}"
        );
        let e = load(&format!("[supervisor]\nmetrics = 9090\n{OK}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:11: supervisor.metrics: invalid type"), "{e}");
    }
}
