//! PM2's app options -> the supervisor's keys: each app of an ecosystem file (as JSON: what
//! node made of the `.js`/`.cjs`, or the `.json` as written) becomes an [`Imported`] app, and
//! every option that has no equivalent, or a different one, becomes a [`Note`] saying why.
//! Pure: the port discovery and the file system are given to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::values::{clean_name, duration, interpreter_for, looks_like_regex, size, split_words};

/// Something the user should know about an option: not carried over, or carried over
/// differently from what PM2 does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The app (`(file)` for a top-level key).
    pub app: String,
    /// The PM2 option.
    pub option: String,
    /// What became of it and why.
    pub why: String,
}

/// One app, in the supervisor's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Imported {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// The working directory (absolute).
    pub cwd: PathBuf,
    /// The script as PM2 runs it (absolute), when it is a Node script: what discovery runs.
    pub node_script: Option<PathBuf>,
    /// The script's own arguments (without node's options).
    pub script_args: Vec<String>,
    /// 0: one per CPU.
    pub instances: usize,
    /// `(key, TOML value)` lines of the `[[app]]` table, in order.
    pub keys: Vec<(String, String, Option<String>)>,
    pub env: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, BTreeMap<String, String>>,
    /// `[app.restart]` keys.
    pub restart: Vec<(String, String)>,
    /// The port PM2's `port` option gives (`PORT`), if any.
    pub port: Option<u16>,
}

/// The apps of an ecosystem file: `{apps: [...]}`, `{apps: {...}}` or a bare array of apps.
pub fn apps_of(value: &Value) -> Result<Vec<Map<String, Value>>, String> {
    let apps = match value {
        Value::Array(a) => a.clone(),
        Value::Object(o) => match o.get("apps") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Object(one)) => vec![Value::Object(one.clone())],
            _ => return Err("no `apps`: an ecosystem file exports { apps: [ ... ] }".into()),
        },
        _ => {
            return Err(
                "not an ecosystem file: it exports neither { apps: [...] } nor an array".into(),
            );
        }
    };
    apps.into_iter()
        .enumerate()
        .map(|(i, a)| match a {
            Value::Object(o) => Ok(o),
            _ => Err(format!("apps[{i}] is not an object")),
        })
        .collect()
}

/// Top-level keys other than `apps`, as notes.
pub fn file_notes(value: &Value) -> Vec<Note> {
    let Value::Object(o) = value else {
        return Vec::new();
    };
    o.keys()
        .filter(|k| *k != "apps")
        .map(|k| Note {
            app: "(file)".into(),
            option: k.clone(),
            why: if k == "deploy" {
                "deployment is not the supervisor's job: keep `pm2 deploy` or your CD pipeline, \
                 and have it run `supervisor reload`"
                    .into()
            } else {
                "not an app option: not carried over".into()
            },
        })
        .collect()
}

/// What the options say of one app (`i` is its index, for a default name). `base` is the
/// ecosystem file's directory, `cpus` the number of CPUs (for PM2's negative `instances`).
pub fn convert(
    app: &Map<String, Value>,
    i: usize,
    base: &Path,
    cpus: usize,
) -> Result<(Imported, Vec<Note>), Note> {
    let mut c = Conv {
        app,
        notes: Vec::new(),
        name: String::new(),
    };
    let script = c.str("script");
    let raw_name = c.str("name").unwrap_or_else(|| {
        script
            .as_deref()
            .map(|s| {
                Path::new(s.trim_end_matches('/'))
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .unwrap_or_else(|| format!("app{i}"))
    });
    c.name = clean_name(&raw_name);
    if c.name != raw_name {
        c.note(
            "name",
            format!(
                "{raw_name:?} is {:?} here (letters, digits, '-' and '_')",
                c.name
            ),
        );
    }
    let Some(script) = script else {
        return Err(c.skip("script", "no script: the app is left out".into()));
    };
    let cwd = match c.str("cwd") {
        Some(d) => absolute(base, Path::new(&d)),
        None => base.to_path_buf(),
    };
    let script_path = absolute(&cwd, Path::new(&script));
    if !script_path.is_file() {
        return Err(c.skip(
            "script",
            format!(
                "{} is not a file (pm2 start fails on it too): the app is left out",
                script_path.display()
            ),
        ));
    }
    let mut out = Imported {
        name: c.name.clone(),
        cwd: cwd.clone(),
        ..Imported::default()
    };
    out.script_args = c.list("args");
    let interpreter = c
        .str("interpreter")
        .or_else(|| c.str("exec_interpreter"))
        .unwrap_or_else(|| interpreter_for(&script).to_owned());
    let interpreter_args = {
        let mut a = c.list("interpreter_args");
        a.extend(c.list("node_args"));
        a
    };
    let is_node = Path::new(&interpreter)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("node"));
    if interpreter == "none" || interpreter.is_empty() {
        out.command = script.clone();
        out.args = out.script_args.clone();
    } else {
        out.command = interpreter.clone();
        out.args = interpreter_args;
        out.args.push(script.clone());
        out.args.extend(out.script_args.iter().cloned());
    }
    if is_node {
        out.node_script = Some(script_path);
    }
    out.instances = c.instances(cpus);
    if let Some(mode) = c.str("exec_mode")
        && mode.starts_with("fork")
        && out.instances != 1
    {
        c.note(
            "exec_mode",
            "fork: every worker shares the app's sockets here, as in cluster mode".into(),
        );
    }
    // The environment, and PM2's env_<name> as profiles (`start --env NAME`).
    out.env = c.env("env");
    for key in app.keys().filter(|k| k.starts_with("env_")) {
        let profile = &key[4..];
        if profile.is_empty()
            || !profile
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            c.note(key, "not a profile name this file can hold".into());
            continue;
        }
        out.profiles.insert(profile.to_owned(), c.env(key));
    }
    if let Some(port) = c.number("port") {
        match u16::try_from(port) {
            Ok(p) if p > 0 => {
                out.port = Some(p);
                out.env.insert("PORT".into(), p.to_string());
            }
            _ => c.note("port", format!("{port} is not a port")),
        }
    }
    c.keys(&mut out, is_node);
    c.restart(&mut out);
    c.watch(&mut out);
    c.rest();
    Ok((out, c.notes))
}

/// Options read by [`Conv::keys`], [`Conv::restart`], [`Conv::watch`] and [`convert`].
const MAPPED: &[&str] = &[
    "name",
    "script",
    "cwd",
    "args",
    "interpreter",
    "exec_interpreter",
    "interpreter_args",
    "node_args",
    "instances",
    "exec_mode",
    "env",
    "port",
    "kill_timeout",
    "listen_timeout",
    "wait_ready",
    "shutdown_with_message",
    "kill_signal",
    "max_memory_restart",
    "cron_restart",
    "watch",
    "ignore_watch",
    "watch_delay",
    "min_uptime",
    "max_restarts",
    "restart_delay",
    "exp_backoff_restart_delay",
    "out_file",
    "error_file",
    "merge_logs",
    "combine_logs",
    "uid",
    "gid",
];

/// Options with no equivalent, and why.
const UNMAPPED: &[(&str, &str)] = &[
    (
        "autorestart",
        "a worker that exits is always started again here, with backoff (`supervisor stop APP` \
         keeps an app stopped)",
    ),
    (
        "stop_exit_codes",
        "a worker that exits is always started again here, with backoff",
    ),
    (
        "out_file",
        "worker output goes to the supervisor's log, each line prefixed with the worker's name \
         and pid (journald or Docker keep it; `start -d` writes supervisor.log)",
    ),
    (
        "log_file",
        "both streams go to one file per app by default (out_file), no third copy",
    ),
    (
        "log_type",
        "the supervisor logs text or JSON: `start --log-format json`",
    ),
    (
        "log_date_format",
        "PM2's is a moment.js format: write it as strftime (`%Y-%m-%d %H:%M:%S`); the default is RFC 3339 with milliseconds",
    ),
    ("time", "every log line carries an RFC 3339 timestamp"),
    (
        "disable_logs",
        "worker output always goes to the supervisor's log",
    ),
    (
        "pid_file",
        "the supervisor tracks pids itself: `supervisor status --json`",
    ),
    (
        "instance_var",
        "the slot is NODE_APP_INSTANCE (and SUPERVISOR_WORKER_ID)",
    ),
    (
        "increment_var",
        "no equivalent: give each worker its port through its slot",
    ),
    ("vizion", "no version metadata is collected"),
    ("automation", "no PM2.io monitoring"),
    ("pmx", "no PM2.io monitoring"),
    (
        "treekill",
        "a worker's whole process group is always stopped",
    ),
    (
        "source_map_support",
        "pass --enable-source-maps in node_args",
    ),
    ("force", "not needed: each app runs once per supervisor"),
    (
        "namespace",
        "one supervisor per file: `supervisor -n NAME` names it",
    ),
    ("append_env_to_name", "the app's name is kept as written"),
    (
        "user",
        "not carried over: PM2's `uid` is what becomes `user`",
    ),
    ("post_update", "no equivalent"),
    (
        "filter_env",
        "the supervisor's own environment is passed on, then `env`",
    ),
    ("disable_trace", "no PM2.io tracing"),
    ("trace", "no PM2.io tracing"),
    ("max_memory_restart_percentage", "max_memory is a size"),
    ("version", "not needed"),
];

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p.strip_prefix(".").unwrap_or(p))
    }
}

/// A TOML string.
pub fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Reads one app's options.
struct Conv<'a> {
    app: &'a Map<String, Value>,
    notes: Vec<Note>,
    name: String,
}

impl Conv<'_> {
    fn note(&mut self, option: &str, why: String) {
        self.notes.push(Note {
            app: self.name.clone(),
            option: option.to_owned(),
            why,
        });
    }

    fn skip(&self, option: &str, why: String) -> Note {
        Note {
            app: self.name.clone(),
            option: option.to_owned(),
            why,
        }
    }

    fn str(&self, key: &str) -> Option<String> {
        match self.app.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn number(&self, key: &str) -> Option<i64> {
        match self.app.get(key)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.app.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A string split like a shell would (quotes kept together), or an array of strings.
    fn list(&self, key: &str) -> Vec<String> {
        match self.app.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(Value::String(s)) => split_words(s),
            _ => Vec::new(),
        }
    }

    /// An env object: values as strings (numbers and booleans as written, objects as JSON).
    fn env(&self, key: &str) -> BTreeMap<String, String> {
        let Some(Value::Object(o)) = self.app.get(key) else {
            return BTreeMap::new();
        };
        o.iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    fn instances(&mut self, cpus: usize) -> usize {
        match self.app.get("instances") {
            None => 1,
            Some(Value::String(s)) if s.trim() == "max" => 0,
            Some(_) => match self.number("instances") {
                Some(0) => 0,
                Some(n) if n > 0 => n as usize,
                Some(n) => {
                    let left = cpus.saturating_sub(n.unsigned_abs() as usize).max(1);
                    self.note(
                        "instances",
                        format!("{n} (CPUs minus {}): {left} on this machine", n.abs()),
                    );
                    left
                }
                None => {
                    self.note("instances", "not a number nor \"max\": 1 worker".into());
                    1
                }
            },
        }
    }

    /// The `[[app]]` keys other than the program.
    fn keys(&mut self, out: &mut Imported, is_node: bool) {
        let mut key = |k: &str, v: String, comment: Option<&str>| {
            out.keys.push((k.into(), v, comment.map(str::to_owned)));
        };
        for (pm2, ours) in [
            ("kill_timeout", "kill_timeout"),
            ("listen_timeout", "ready_timeout"),
        ] {
            if let Some(v) = self.app.get(pm2) {
                match duration(v) {
                    Some(d) => key(ours, q(&d), None),
                    None => self.note(pm2, format!("{v} is not a number of milliseconds")),
                }
            }
        }
        let signal = self.str("kill_signal").unwrap_or_else(|| "SIGINT".into());
        key(
            "kill_signal",
            q(&signal),
            Some("what PM2 sends: the app's SIGINT handlers run on every reload and stop"),
        );
        for flag in ["wait_ready", "shutdown_with_message"] {
            match self.bool(flag) {
                Some(true) if !is_node => self.note(
                    flag,
                    "Node apps only (the Node preload carries it out): another program says \
                     READY=1 on NOTIFY_SOCKET"
                        .into(),
                ),
                Some(true) => key(flag, "true".into(), None),
                _ => {}
            }
        }
        if let Some(v) = self.app.get("max_memory_restart") {
            match size(v) {
                Some(s) => key(
                    "max_memory",
                    q(&s),
                    Some("PM2's max_memory_restart: recycled gracefully"),
                ),
                None => self.note("max_memory_restart", format!("{v} is not a size")),
            }
        }
        for file in ["out_file", "error_file"] {
            if let Some(path) = self.str(file) {
                key(file, q(&path), None);
            }
        }
        if let Some(merge) = self
            .bool("merge_logs")
            .or_else(|| self.bool("combine_logs"))
        {
            key("merge_logs", merge.to_string(), None);
        }
        // PM2's uid/gid (a name or a number): `user`/`group`, which need a root supervisor.
        let id = |v: &Value| match v {
            Value::String(s) if !s.is_empty() => Some(q(s)),
            Value::Number(n) => n
                .as_u64()
                .filter(|n| *n <= u32::MAX as u64)
                .map(|n| n.to_string()),
            _ => None,
        };
        let uid = self.app.get("uid").map(|v| (v, id(v)));
        let gid = self.app.get("gid").map(|v| (v, id(v)));
        match &uid {
            Some((_, Some(user))) => key(
                "user",
                user.clone(),
                Some(
                    "PM2's uid: the supervisor must run as root (it binds, the workers run as this user)",
                ),
            ),
            Some((v, None)) => self.note("uid", format!("{v} is not a user name or id")),
            None => {}
        }
        match (gid, &uid) {
            (Some((_, Some(group))), Some((_, Some(_)))) => key("group", group, None),
            (Some((v, None)), _) => self.note("gid", format!("{v} is not a group name or id")),
            (Some(_), _) => self.note(
                "gid",
                "`group` needs `user` here (PM2's uid): not carried over alone".into(),
            ),
            (None, _) => {}
        }
        if let Some(expr) = self.str("cron_restart") {
            key(
                "cron_restart",
                q(&expr),
                Some("a rolling reload, not a restart"),
            );
        }
    }

    /// `[app.restart]` from PM2's restart options.
    fn restart(&mut self, out: &mut Imported) {
        if let Some(v) = self.app.get("min_uptime") {
            match duration(v) {
                Some(d) => out.restart.push(("min_uptime".into(), q(&d))),
                None => self.note("min_uptime", format!("{v} is not a duration")),
            }
        }
        if let Some(n) = self.number("max_restarts") {
            match u32::try_from(n) {
                Ok(n) => out.restart.push(("max_restarts".into(), n.to_string())),
                Err(_) => self.note("max_restarts", format!("{n} is not a count")),
            }
        }
        let fixed = self.app.get("restart_delay").and_then(duration);
        let exp = self.app.get("exp_backoff_restart_delay").and_then(duration);
        match (fixed, exp) {
            (_, Some(first)) => {
                out.restart.push(("backoff_initial".into(), q(&first)));
                out.restart.push(("backoff_max".into(), q("15s")));
            }
            (Some(delay), None) => {
                out.restart.push(("backoff_initial".into(), q(&delay)));
                out.restart.push(("backoff_max".into(), q(&delay)));
            }
            (None, None) => {}
        }
    }

    /// `watch`, `ignore_watch`, `watch_delay`.
    fn watch(&mut self, out: &mut Imported) {
        let paths: Vec<String> = match self.app.get("watch") {
            None | Some(Value::Bool(false)) => return,
            Some(Value::Bool(true)) => vec![".".into()],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(other) => {
                self.note(
                    "watch",
                    format!("{other} is not true, a path or a list of them"),
                );
                return;
            }
        };
        let list: Vec<String> = paths.iter().map(|p| q(p)).collect();
        out.keys.push((
            "watch".into(),
            format!("[{}]", list.join(", ")),
            Some("a change reloads the app (zero downtime), not a restart".into()),
        ));
        let mut globs = Vec::new();
        let ignore = match self.app.get("ignore_watch") {
            Some(Value::Array(a)) => a.clone(),
            Some(one) => vec![one.clone()],
            None => Vec::new(),
        };
        for pattern in ignore {
            match pattern {
                Value::String(s) if !looks_like_regex(&s) => globs.push(q(&s)),
                other => {
                    let shown = match &other {
                        Value::Object(o) => o
                            .get("$regexp")
                            .and_then(Value::as_str)
                            .map(|r| format!("/{r}/"))
                            .unwrap_or_else(|| other.to_string()),
                        _ => other.to_string(),
                    };
                    self.note(
                        "ignore_watch",
                        format!(
                            "{shown} is a regular expression: write it as a glob (`*.log`, \
                             `tmp`, `public/**`); node_modules, *.log and dot paths are always ignored"
                        ),
                    );
                }
            }
        }
        if !globs.is_empty() {
            out.keys.push((
                "ignore_watch".into(),
                format!("[{}]", globs.join(", ")),
                None,
            ));
        }
        if let Some(d) = self.app.get("watch_delay").and_then(duration) {
            out.keys.push(("watch_delay".into(), q(&d), None));
        }
    }

    /// Every other option: named with its reason.
    fn rest(&mut self) {
        let keys: Vec<String> = self.app.keys().cloned().collect();
        for k in keys {
            if MAPPED.contains(&k.as_str()) || k.starts_with("env_") {
                continue;
            }
            let why = UNMAPPED
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, why)| (*why).to_owned())
                .unwrap_or_else(|| "not a PM2 option this importer knows: not carried over".into());
            self.note(&k, why);
        }
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
