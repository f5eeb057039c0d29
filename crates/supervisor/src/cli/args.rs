//! The command line's grammar (clap): the global options, the subcommands and their flags, and
//! the value parsers that refuse a bad argument before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Graceful-restart process supervisor with zero-downtime reload.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(
        short,
        long,
        global = true,
        env = "SUPERVISOR_CONFIG",
        default_value = "config/supervisor.toml"
    )]
    pub config: PathBuf,
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

/// Options shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Control socket (default: `supervisor.control_socket` of the config file).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the supervisor in the foreground (what systemd or Docker runs).
    Start {
        /// Log format of the supervisor's own lines and of the workers' forwarded output.
        #[arg(long, env = "SUPERVISOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Take over from the previous binary of an in-place upgrade (its state memfd).
        #[arg(long, hide = true)]
        resume_fd: Option<i32>,
    },
    /// Validate the config file, try what `start` would bind, and print what it would run.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    /// Replace an app's workers one at a time, or every app's, one app at a time (like
    /// `kill -HUP`); re-reads the config file; exits non-zero if a reload was aborted.
    Reload {
        /// Only this app.
        app: Option<String>,
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Return at once instead of waiting for the outcome.
        #[arg(long)]
        no_wait: bool,
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
    Stop {
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
    /// Cluster-once cron jobs: schedule, next tick, last run, current holder (from the backend).
    Jobs {
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
