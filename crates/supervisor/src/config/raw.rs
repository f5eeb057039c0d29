//! The file as it is written: serde structs mirroring the TOML tables (`[supervisor]`, `[cron]`,
//! `[[app]]`, `[[job]]`), every value an error can name kept [`Spanned`] for its line, and the
//! reading of a file into them (a parse error names the file, the line and the dotted key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::human::{ByteSize, HumanDuration};
use super::model::{Balance, Readiness, Runtime, Scope};
use super::validate::bounds::MAX_FILE;
use super::{ConfigError, Location};

/// A value with its byte range in the file, for errors with a line number.
pub(super) type Spanned<T> = toml::Spanned<T>;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) supervisor: RawSupervisor,
    #[serde(default)]
    pub(super) app: Vec<RawApp>,
    #[serde(default)]
    pub(super) cron: RawCron,
    #[serde(default)]
    pub(super) job: Vec<RawJob>,
}

/// Only `[supervisor]` and `[cron]`: what the client commands read (see
/// [`super::endpoints_of`]). Not `deny_unknown_fields`: the other sections are not read at all.
#[derive(Debug, Deserialize)]
pub(super) struct RawEndpoints {
    #[serde(default)]
    pub(super) supervisor: RawSupervisor,
    #[serde(default)]
    pub(super) cron: RawCron,
}

/// One `[[job]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) name: Spanned<String>,
    pub(super) schedule: Spanned<String>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) overlap: Option<cronlock::Overlap>,
    pub(super) misfire: Option<Spanned<String>>,
    pub(super) misfire_grace: Option<Spanned<HumanDuration>>,
    pub(super) lease_ttl: Option<Spanned<HumanDuration>>,
    pub(super) timeout: Option<Spanned<HumanDuration>>,
    pub(super) kill_timeout: Option<Spanned<HumanDuration>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) http: Option<Spanned<String>>,
    pub(super) app: Option<Spanned<String>>,
}

/// `[supervisor]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervisor {
    pub(super) name: Option<Spanned<String>>,
    pub(super) control_socket: Option<Spanned<PathBuf>>,
    pub(super) metrics: Option<String>,
    /// Where the apps' log files go by default.
    pub(super) log_dir: Option<Spanned<PathBuf>>,
    /// The rotation of its own log under `start -d` (`supervisor.log`), as an app's.
    pub(super) log_max_size: Option<Spanned<ByteSize>>,
    pub(super) log_max_age: Option<Spanned<HumanDuration>>,
    pub(super) log_retain: Option<Spanned<usize>>,
    pub(super) log_compress: Option<bool>,
}

/// One `[[app.listen]]` table (spanned as a whole by its app: the table's own errors point at it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) backlog: Option<Spanned<i32>>,
}

/// One `[[app]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: Spanned<String>,
    /// The list as a whole (for a cycle) and each name in it.
    pub(super) after: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) listen: Vec<Spanned<RawListen>>,
    #[serde(default)]
    pub(super) restart: RawRestart,
    #[serde(default)]
    pub(super) reload: RawReload,
    pub(super) command: Spanned<String>,
    #[serde(default)]
    pub(super) args: Vec<Spanned<String>>,
    /// Spanned values, not keys: a bad variable name is reported at its value's line (a spanned
    /// key would hide its name from the key path of a parse error).
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    /// A dotenv file read before `env` (relative to the config file's directory).
    pub(super) env_file: Option<Spanned<PathBuf>>,
    /// Named sets of variables laid over `env`, one chosen with `start --env NAME` (PM2's
    /// `env_production`).
    #[serde(default)]
    pub(super) env_profiles: BTreeMap<String, BTreeMap<String, Spanned<String>>>,
    pub(super) cwd: Option<Spanned<PathBuf>>,
    pub(super) instances: Option<Spanned<usize>>,
    /// `shared` (one accept queue), `sticky` or `spread` (a socket per slot).
    pub(super) balance: Option<Balance>,
    pub(super) readiness: Option<Spanned<Readiness>>,
    pub(super) runtime: Option<Spanned<Runtime>>,
    pub(super) ready_timeout: Option<Spanned<HumanDuration>>,
    pub(super) kill_timeout: Option<Spanned<HumanDuration>>,
    pub(super) max_memory: Option<Spanned<ByteSize>>,
    pub(super) max_memory_grace: Option<Spanned<HumanDuration>>,
    pub(super) scope: Option<Spanned<Scope>>,
    pub(super) lease_ttl: Option<Spanned<HumanDuration>>,
    pub(super) standby_poll: Option<Spanned<HumanDuration>>,
    /// Hand the cron backend's URL to the workers (`SUPERVISOR_CRON_URL`).
    pub(super) cron_backend: Option<bool>,
    /// PM2's names: the drain signal, readiness by `process.send('ready')`, the shutdown message.
    pub(super) kill_signal: Option<Spanned<String>>,
    pub(super) wait_ready: Option<Spanned<bool>>,
    pub(super) shutdown_with_message: Option<Spanned<bool>>,
    /// Its output in files, PM2's names and the rotation and rate limit of [`crate::logs`].
    pub(super) out_file: Option<Spanned<PathBuf>>,
    pub(super) error_file: Option<Spanned<PathBuf>>,
    pub(super) merge_logs: Option<bool>,
    pub(super) log_date_format: Option<Spanned<String>>,
    pub(super) log_max_size: Option<Spanned<ByteSize>>,
    pub(super) log_max_age: Option<Spanned<HumanDuration>>,
    pub(super) log_retain: Option<Spanned<usize>>,
    pub(super) log_compress: Option<bool>,
    pub(super) log_rate_lines: Option<Spanned<u64>>,
    pub(super) log_rate_bytes: Option<Spanned<ByteSize>>,
    pub(super) log_burst: Option<Spanned<HumanDuration>>,
    /// PM2's reload triggers: file changes and a schedule.
    pub(super) watch: Option<Spanned<RawWatch>>,
    pub(super) ignore_watch: Option<Spanned<RawWatchList>>,
    pub(super) watch_delay: Option<Spanned<HumanDuration>>,
    pub(super) cron_restart: Option<Spanned<String>>,
    /// Hung workers (systemd's protocol) and old ones.
    pub(super) watchdog: Option<Spanned<HumanDuration>>,
    pub(super) max_age: Option<Spanned<HumanDuration>>,
    pub(super) max_age_jitter: Option<Spanned<HumanDuration>>,
    /// Who the workers run as (a name or a number), and their resource limits.
    pub(super) user: Option<Spanned<RawId>>,
    pub(super) group: Option<Spanned<RawId>>,
    #[serde(default)]
    pub(super) rlimits: RawRlimits,
    #[serde(default)]
    pub(super) cgroup: RawCgroup,
}

/// `[app.cgroup]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCgroup {
    pub(super) memory_max: Option<Spanned<RawLimitValue>>,
    pub(super) cpu_max: Option<Spanned<RawCpu>>,
    pub(super) pids_max: Option<Spanned<RawLimitValue>>,
}

/// CPUs: a number (`0.5`, `2`) or a string (`"50%"`, `"0.5"`, `"max"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawCpu {
    Number(f64),
    Word(String),
}

/// A user or group: a name or a numeric id.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawId {
    Id(u32),
    Name(String),
}

/// `[app.rlimits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRlimits {
    pub(super) nofile: Option<Spanned<RawLimit>>,
    pub(super) nproc: Option<Spanned<RawLimit>>,
    pub(super) core: Option<Spanned<RawLimit>>,
    pub(super) memlock: Option<Spanned<RawLimit>>,
    pub(super) stack: Option<Spanned<RawLimit>>,
}

/// One limit: a value for both soft and hard, or `[soft, hard]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawLimit {
    Both(RawLimitValue),
    Pair(Vec<RawLimitValue>),
}

/// A number, or `"infinity"` / `"unlimited"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawLimitValue {
    Number(i64),
    Word(String),
}

/// `watch`: `true` (the app's directory), a path, or a list of them (PM2's forms).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawWatch {
    On(bool),
    Paths(RawWatchList),
}

/// A path (or pattern), or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawWatchList {
    One(String),
    Many(Vec<String>),
}

impl RawWatchList {
    /// Every item.
    pub(super) fn items(&self) -> Vec<String> {
        match self {
            RawWatchList::One(s) => vec![s.clone()],
            RawWatchList::Many(v) => v.clone(),
        }
    }
}

/// `[app.restart]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestart {
    pub(super) min_uptime: Option<Spanned<HumanDuration>>,
    pub(super) max_restarts: Option<Spanned<u32>>,
    pub(super) window: Option<Spanned<HumanDuration>>,
    pub(super) backoff_initial: Option<Spanned<HumanDuration>>,
    pub(super) backoff_max: Option<Spanned<HumanDuration>>,
}

/// `[app.reload]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    pub(super) max_surge: Option<Spanned<usize>>,
    pub(super) max_unavailable: Option<Spanned<usize>>,
    pub(super) canary_hold: Option<Spanned<HumanDuration>>,
}

/// `[cron]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCron {
    pub(super) redis_url: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<PathBuf>>,
}

/// Reads and deserializes a TOML file; errors name the file and the dotted key. Returns the text
/// too, for the line of a spanned value.
pub(super) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<(T, String), ConfigError> {
    let text = read_bounded(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let value = parse_text(path, &text)?;
    Ok((value, text))
}

/// Deserializes `text`, the contents of `path`; errors name the file and the dotted key.
pub(super) fn parse_text<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let parse_err = |key: String, e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        at: Location::of_span(text, e.span()),
        key,
        message: super::suggest::unknown_key(e.message().trim_end()),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| parse_err("(syntax)".into(), e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = key_of(e.path());
        parse_err(key, e.into_inner())
    })
}

/// The file's text, refused past [`MAX_FILE`] bytes (a wrong file, a log or a binary, is not
/// read into memory whole).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "larger than {} (not a config file?)",
                crate::units::size(MAX_FILE)
            ),
        ));
    }
    Ok(text)
}

/// The dotted key of a serde error's path (`app[0].listen[1].address`), or `(top level)`: serde's
/// own rendering without the private field through which [`Spanned`] reads its value.
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        let name = match segment {
            Segment::Seq { index } => {
                key.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key: name } | Segment::Enum { variant: name } => name.as_str(),
            Segment::Unknown => "?",
        };
        if name.starts_with("$__serde_spanned_private") {
            continue;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(name);
    }
    if key.is_empty() {
        "(top level)".to_string()
    } else {
        key
    }
}
