//! The command line's grammar (clap): the global options, the subcommands and their flags, and
//! the value parsers that refuse a bad argument before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Graceful-restart process supervisor with zero-downtime reload.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version, about)]
pub struct Cli {
    /// Config file (`start` and `check`: default config/supervisor.toml, else ./supervisor.toml
    /// when only it exists, as `init` and `import` write it; the other commands
    /// find the running supervisor without it when only one runs).
    #[arg(short, long, global = true, env = "SUPERVISOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which supervisor a client command talks to: `--socket`, else the one of `-c FILE`, else the
/// one named `-n NAME`, else the only one of this user that runs (`supervisor ls`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// Control socket (default: the config file's, or the running supervisor's).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The running supervisor of this name (`supervisor ls` lists them); with `start SCRIPT`,
    /// the name to give it (and its app), as PM2's `--name`.
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

/// `pm2 start app.js`'s options, under PM2's names, for a script started with no config file
/// (`start app.js`, `init app.js`): written into the config as `import` maps them.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "With a script: PM2's options")]
pub struct ScriptOptions {
    /// Reload the app (rolling, zero downtime) when a file under its directory changes, or under
    /// PATH (`--watch=src`).
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = ".")]
    pub watch: Option<String>,
    /// What `--watch` ignores: globs, space-separated (`"uploads *.tmp"`).
    #[arg(long = "ignore-watch", value_name = "GLOBS")]
    pub ignore_watch: Option<String>,
    /// Replace a worker gracefully above this memory (`300M`, `1G`).
    #[arg(long = "max-memory-restart", value_name = "SIZE")]
    pub max_memory_restart: Option<String>,
    /// Reload the app on this schedule (`"0 3 * * *"`).
    #[arg(long = "cron-restart", visible_alias = "cron", value_name = "EXPR")]
    pub cron_restart: Option<String>,
    /// Ready when the app calls `process.send('ready')`, not at `listen()`.
    #[arg(long = "wait-ready")]
    pub wait_ready: bool,
    /// How long a new worker may take to be ready, in milliseconds.
    #[arg(long = "listen-timeout", value_name = "MS")]
    pub listen_timeout: Option<u64>,
    /// How long a stopping worker may drain before it is killed, in milliseconds.
    #[arg(long = "kill-timeout", value_name = "MS")]
    pub kill_timeout: Option<u64>,
    /// The app also gets the 'shutdown' message when it must drain.
    #[arg(long = "shutdown-with-message")]
    pub shutdown_with_message: bool,
    /// Options for node itself (`"--max-old-space-size=512"`).
    #[arg(long = "node-args", value_name = "ARGS", allow_hyphen_values = true)]
    pub node_args: Option<String>,
    /// Crash-loop limit: restarts within the restart window.
    #[arg(long = "max-restarts", value_name = "N")]
    pub max_restarts: Option<u32>,
    /// A worker up for less than this (milliseconds) has crashed while starting.
    #[arg(long = "min-uptime", value_name = "MS")]
    pub min_uptime: Option<u64>,
    /// A fixed delay before a crashed worker is started again, in milliseconds.
    #[arg(long = "restart-delay", value_name = "MS")]
    pub restart_delay: Option<u64>,
    /// A growing delay before a crashed worker is started again, from this many milliseconds.
    #[arg(long = "exp-backoff-restart-delay", value_name = "MS")]
    pub exp_backoff_restart_delay: Option<u64>,
}

impl ScriptOptions {
    /// The options given, as an ecosystem file's app would hold them.
    pub fn pm2_options(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("watch", self.watch.clone().map(Value::from));
        put(
            "ignore_watch",
            self.ignore_watch
                .as_ref()
                .map(|g| g.split_whitespace().collect::<Vec<_>>().into()),
        );
        put(
            "max_memory_restart",
            self.max_memory_restart.clone().map(Value::from),
        );
        put("cron_restart", self.cron_restart.clone().map(Value::from));
        put("wait_ready", self.wait_ready.then_some(Value::Bool(true)));
        put("listen_timeout", self.listen_timeout.map(Value::from));
        put("kill_timeout", self.kill_timeout.map(Value::from));
        put(
            "shutdown_with_message",
            self.shutdown_with_message.then_some(Value::Bool(true)),
        );
        put("node_args", self.node_args.clone().map(Value::from));
        put("max_restarts", self.max_restarts.map(Value::from));
        put("min_uptime", self.min_uptime.map(Value::from));
        put("restart_delay", self.restart_delay.map(Value::from));
        put(
            "exp_backoff_restart_delay",
            self.exp_backoff_restart_delay.map(Value::from),
        );
        m
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the supervisor in the foreground (what systemd or Docker runs), or in the background
    /// with `-d`; `start APP` starts an app stopped with `stop APP` again.
    Start {
        /// Start this app of the running supervisor again (after `stop APP`); or a Node script
        /// (`app.js`, `.mjs`, `.cjs`) to run clustered with no config file, the PM2 way.
        app: Option<String>,
        /// With a script: how many workers (`max`: one per CPU).
        #[arg(short = 'i', long = "instances", value_name = "N|max")]
        instances: Option<String>,
        /// With a script: its arguments (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        script_args: Vec<String>,
        /// Run in the background: return once every app's first workers are ready (or exit 1
        /// with the reason, nothing left running); the supervisor logs to `supervisor.log` in
        /// its log directory.
        #[arg(short = 'd', long = "daemon")]
        detach: bool,
        /// With `-d`: how long to wait for every app to be ready.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Which supervisor (for `start APP`).
        #[command(flatten)]
        target: Target,
        /// Print JSON (`start APP`).
        #[arg(long)]
        json: bool,
        /// Log format of the supervisor's own lines and of the workers' forwarded output.
        #[arg(long, env = "SUPERVISOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Lay the env profile NAME (`[app.env_profiles.NAME]`, PM2's `--env`) over each app's
        /// `env`; kept by reloads and upgrades.
        #[arg(long = "env", value_name = "NAME")]
        env_profile: Option<String>,
        /// Take over from the previous binary of an in-place upgrade (its state memfd).
        #[arg(long, hide = true)]
        resume_fd: Option<i32>,
        /// Write a line to this pipe once every app is ready (what `start -d` waits on).
        #[arg(long, hide = true)]
        ready_fd: Option<i32>,
        /// With a script: PM2's options (last: their help heading holds what follows).
        #[command(flatten)]
        pm2: ScriptOptions,
    },
    /// Validate the config file, try what `start` would bind, and print what it would run.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Check with this env profile laid over each app's `env` (as `start --env NAME`).
        #[arg(long = "env", value_name = "NAME")]
        env_profile: Option<String>,
    },
    /// Show every app's workers, and the jobs.
    Status {
        /// Only this app.
        app: Option<String>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print only the supervisor's pid (for `kill -HUP "$(supervisor status --pid)"`).
        #[arg(long, conflicts_with = "json")]
        pid: bool,
    },
    /// List the running supervisors of this user: name, pid, uptime, apps, config.
    #[command(visible_alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace an app's workers one at a time, or every app's, one app at a time (like
    /// `kill -HUP`), applying the config file read again (apps added and removed, listeners
    /// moved); exits non-zero if a reload was aborted or refused.
    Reload {
        /// Only this app.
        app: Option<String>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Return at once instead of waiting for the outcome.
        #[arg(long)]
        no_wait: bool,
        /// Replace one slot and hold (the canary): the other slots keep the running generation
        /// until `--continue` (or the app's `reload.canary_hold` passes) or `--rollback`.
        #[arg(long, conflicts_with_all = ["continue", "rollback"])]
        canary: bool,
        /// Roll the other slots of the canary reload that holds.
        #[arg(long, conflicts_with = "rollback")]
        r#continue: bool,
        /// Put the running generation back on the held canary's slot (its worker ready before
        /// the canary drains).
        #[arg(long)]
        rollback: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// New workers for every slot of an app at once, without waiting for readiness (for a stuck
    /// app; `reload` is the zero-downtime way).
    Restart {
        /// The app.
        app: String,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run N workers of an app: new ones start at once, the highest slots drain. Kept until the
    /// next reload, which takes `instances` from the config file again.
    Scale {
        /// The app.
        app: String,
        /// How many workers (0 to 1024).
        #[arg(value_parser = parse_instances)]
        instances: usize,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop every app gracefully (in reverse order) and the supervisor; waits until all are gone.
    /// `stop APP` stops one app (its connections are refused) and the others run on.
    Stop {
        /// Only this app: it stays stopped, through reloads too, until `start APP`.
        app: Option<String>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Clear the restart counts `status` shows (and the crash-loop history) of an app, or of
    /// every app.
    Reset {
        /// Only this app.
        app: Option<String>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the running supervisor's binary in place (like `kill -USR2`): same pid, same
    /// sockets, every worker kept. The new binary is tried first (`upgrade-preflight`); any
    /// failure leaves the supervisor as it was and exits 1 with the reason.
    Upgrade {
        /// The new binary (default: the path the supervisor was started from, read again).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON (the status after the upgrade).
        #[arg(long)]
        json: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run by an upgrading supervisor on the new binary before it execs it: checks that this
    /// binary starts, parses the config and reads the state version; exits 0 if so.
    #[command(hide = true)]
    UpgradePreflight {
        /// The handover state's format version.
        #[arg(long)]
        state_version: u32,
    },
    /// Print a systemd unit that starts this config's supervisor at boot (as this user, with
    /// this binary), or write and enable it with `--install`.
    Startup {
        /// Write the unit to /etc/systemd/system and enable it (needs root).
        #[arg(long)]
        install: bool,
        /// The user the supervisor runs as (default: the one running this command, or the one
        /// who ran sudo).
        #[arg(long)]
        user: Option<String>,
    },
    /// Write the config that runs a Node script clustered (what `start app.js` runs), its port
    /// discovered from the app's own listen(), commented, to edit and `start -c`.
    Init {
        /// The script (`.js`, `.mjs`, `.cjs`).
        script: String,
        /// How many workers (`max`: one per CPU).
        #[arg(short = 'i', long = "instances", value_name = "N|max")]
        instances: Option<String>,
        /// The app's and the supervisor's name; default the script's name.
        #[arg(short = 'n', long = "name", value_name = "NAME")]
        name: Option<String>,
        /// Where to write it (refused if it exists; `-` for stdout).
        #[arg(short = 'o', long = "output", default_value = "supervisor.toml")]
        output: PathBuf,
        /// The script's arguments (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        script_args: Vec<String>,
        /// PM2's options.
        #[command(flatten)]
        pm2: ScriptOptions,
    },
    /// Convert PM2's ecosystem file (`.js`, `.cjs`, `.mjs`, evaluated by node, or `.json`) into a
    /// config: every option mapped, those without an equivalent listed with the reason; each
    /// Node app is run once up to its listen() to learn its port.
    Import {
        /// The ecosystem file.
        file: PathBuf,
        /// Where to write the config (refused if it exists; `-` for stdout).
        #[arg(short = 'o', long = "output", default_value = "supervisor.toml")]
        output: PathBuf,
    },
    /// The workers' output: the last lines of every app, of one app or of one worker (`web.0`),
    /// and with `-f` every new line as it is written.
    Logs {
        /// An app (`web`) or a worker (`web.0`); every app by default.
        #[arg(value_name = "APP|WORKER")]
        what: Option<String>,
        /// Keep printing new lines as they come (Ctrl-C to stop).
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the last lines.
        #[arg(long, default_value_t = 15)]
        lines: usize,
        /// Only stderr.
        #[arg(long, conflicts_with = "out")]
        err: bool,
        /// Only stdout.
        #[arg(long)]
        out: bool,
        /// Only lines since this long ago (`10m`) or this time (`2024-05-01T10:00:00Z`).
        #[arg(long, value_parser = super::logs::parse_since, value_name = "DURATION|TIME")]
        since: Option<i64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
    },
    /// A live view of every app and worker (state, cpu, memory, restarts, uptime, reloads)
    /// with the logs of the selected one; keys reload, restart and scale the selected app (`?`
    /// lists them). Without a terminal on stdout, the status once.
    Monit {
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
    },
    /// Empty the log files of every app, or of one, and delete their rotated copies.
    Flush {
        /// Only this app.
        app: Option<String>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close and reopen every log file, after an external logrotate moved them (as `kill -USR1`).
    ReopenLogs {
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cluster-once cron jobs: schedule, next tick, last run, current holder (from the backend).
    Jobs {
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<JobsCmd>,
    },
}

/// A worker count for `scale`: refused here, before anything is sent, above
/// [`crate::config::MAX_INSTANCES`] (the supervisor refuses it too).
fn parse_instances(text: &str) -> Result<usize, String> {
    let max = crate::config::MAX_INSTANCES;
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("at most {max} workers per app")),
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("at most {max} workers per app"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `supervisor jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Every registered job (the default).
    List,
    /// Trigger one run now, through the same claim/lease path as a scheduled tick.
    Run {
        /// Job name.
        name: String,
        /// Return once requested, without waiting for the run's record.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the run to finish.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The last runs of a job, newest first.
    History {
        /// Job name.
        name: String,
        /// How many.
        #[arg(short, default_value_t = 20)]
        n: usize,
    },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Cmd};

    #[test]
    fn the_command_line_is_well_formed() {
        // Names in `conflicts_with` and the like exist (clap checks them only at run time).
        Cli::command().debug_assert();
    }

    #[test]
    fn reload_takes_one_of_canary_continue_rollback() {
        let cli = Cli::try_parse_from(["supervisor", "reload", "web", "--continue"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Reload {
                r#continue: true,
                canary: false,
                ..
            }
        ));
        let both = Cli::try_parse_from(["supervisor", "reload", "--canary", "--rollback"]);
        assert!(both.is_err(), "one step at a time");
    }
}
