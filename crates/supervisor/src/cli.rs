//! Command line: `start | check | status | reload | stop | jobs` (clap), and how each command
//! prints its result (tables for people, `--json` for scripts) and picks its exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use crate::config::{Config, endpoints_of};
use crate::control::client;
use crate::control::protocol::{ReloadOutcome, ReloadReport, Request, Response, StatusReport};
use crate::control::server::{ControlError, check_free};
use crate::daemon::{self, Command, StartupError};
use crate::jobs;
use crate::listeners;
use crate::table::{self, Table};

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
    /// Log format of the supervisor (and of forwarded worker output).
    #[arg(long, global = true, env = "SUPERVISOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    Start,
    /// Validate the config file and print what it would run.
    Check,
    /// Show every worker and the last reload.
    Status {
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the workers one at a time (like `kill -HUP`); exits non-zero if aborted.
    Reload {
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
    /// Stop every worker gracefully and the supervisor; waits until all are gone.
    Stop {
        /// Which supervisor.
        #[command(flatten)]
        target: Target,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
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

/// Deadline for one backend call of `status`/`jobs`.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// Installs the process's signal handlers and returns what they ask of the daemon (from `main`).
pub type SignalInstaller = fn() -> std::io::Result<mpsc::Receiver<Command>>;

/// Runs a client command or the supervisor; `start` calls `signals` inside the runtime.
pub fn run(cli: Cli, signals: SignalInstaller) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Start => {
                let config = Config::load(&cli.config)?;
                let commands = signals().context("cannot install signal handlers")?;
                daemon::run(config, commands).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Check => check(&cli.config),
            Cmd::Status { target, json } => status(&cli.config, &target, json).await,
            Cmd::Reload {
                target,
                no_wait,
                json,
                timeout,
            } => reload(&socket(&cli.config, &target)?, !no_wait, json, timeout).await,
            Cmd::Stop { target, timeout } => stop(&socket(&cli.config, &target)?, timeout).await,
            Cmd::Jobs { json, action } => {
                jobs_cmd(&cli.config, json, action.unwrap_or(JobsCmd::List)).await
            }
        }
    })
}

fn socket(config: &Path, target: &Target) -> Result<PathBuf> {
    match &target.socket {
        Some(s) => Ok(s.clone()),
        None => Ok(endpoints_of(config)?.control_socket),
    }
}

fn backend(config: &Path) -> Result<cronlock::Backend> {
    let url = endpoints_of(config)?.cron_url;
    cronlock::Backend::from_url(&url)
        .with_context(|| format!("cron backend of {}", config.display()))
}

/// What `start` would find before starting a worker: every listener binds (each is closed again
/// at once) and the control socket can be created. With a supervisor already running on the
/// control socket its ports are taken by design (`check` before `reload`): binding is not tried,
/// and the returned note says so.
fn try_start(c: &Config) -> Result<Option<String>, StartupError> {
    if let Err(ControlError::InUse(socket)) = check_free(&c.control_socket) {
        return Ok(Some(format!(
            "a supervisor is running on control socket {}: its listeners were not bound again",
            socket.display()
        )));
    }
    check_free(&c.control_socket)?;
    drop(
        listeners::bind_all(&c.listeners).map_err(|cause| StartupError::Listen {
            path: c.path.clone(),
            cause,
        })?,
    );
    control_dir_writable(&c.control_socket)?;
    Ok(None)
}

/// The control socket's directory (or, as `start` creates it, its nearest existing ancestor) is a
/// directory this user may create files in.
fn control_dir_writable(socket: &Path) -> Result<(), ControlError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |cause| ControlError::Bind {
        path: socket.to_path_buf(),
        cause,
    };
    let parent = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        )));
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: access(2) with a valid NUL-terminated path; it only reads it.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let os = std::io::Error::last_os_error();
        return Err(err(std::io::Error::new(
            os.kind(),
            format!("directory {} is not writable: {os}", dir.display()),
        )));
    }
    Ok(())
}

fn check(path: &Path) -> Result<ExitCode> {
    let c = Config::load(path)?;
    let note = try_start(&c)?;
    println!("{}: ok", path.display());
    println!(
        "  program:        {} {}",
        c.worker.program.display(),
        c.worker.args.join(" ")
    );
    println!("  instances:      {}", c.worker.instances);
    for l in &c.listeners {
        println!("  listen:         {} {}", l.name, l.addr);
    }
    println!("  control socket: {}", c.control_socket.display());
    println!("  cron backend:   {}", c.cron_url);
    if let Some(note) = note {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Path, target: &Target, json: bool) -> Result<ExitCode> {
    let socket = socket(config, target)?;
    let report = match client::request(&socket, Request::Status, Duration::from_secs(10)).await? {
        Response::Status(report) => report,
        Response::Error { message } => bail!("status refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    // The jobs live in the cron backend, shared by every host: read it here, not in the daemon,
    // which must never wait on Redis. Unreachable backend: status still answers, and says so.
    let jobs = match backend(config) {
        Ok(b) => jobs::collect(&b, BACKEND_TIMEOUT)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["jobs"] = match &jobs {
            Ok(j) => serde_json::to_value(j)?,
            Err(e) => serde_json::json!({ "error": e }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&report));
        match jobs {
            Ok(j) if j.is_empty() => {}
            Ok(j) => print!("\njobs\n{}", jobs::render(&j)),
            Err(e) => println!("\njobs: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn jobs_cmd(config: &Path, json: bool, action: JobsCmd) -> Result<ExitCode> {
    let backend = backend(config)?;
    match action {
        JobsCmd::List => {
            let list = jobs::collect(&backend, BACKEND_TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", jobs::render(&list));
            }
        }
        JobsCmd::History { name, n } => {
            let runs = jobs::history(&backend, &name, n, BACKEND_TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", jobs::render_history(&runs));
            }
        }
        JobsCmd::Run {
            name,
            no_wait,
            timeout,
        } => {
            let wait = if no_wait { Duration::ZERO } else { timeout };
            let (id, record) = jobs::run_now(&backend, &name, wait).await?;
            if json {
                println!("{}", serde_json::json!({ "request": id, "run": record }));
            } else if let Some(r) = &record {
                print!("{}", jobs::render_history(std::slice::from_ref(r)));
            } else {
                println!("requested run of {name} (request {id})");
            }
            if record.is_some_and(|r| r.outcome != cronlock::Outcome::Ok) {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `status` screen.
pub fn render_status(r: &StatusReport) -> String {
    let s = &r.supervisor;
    let mut out = format!(
        "supervisor pid {}  up {}  cpu {:.1}%  mem {}  generation {}  {}\nconfig {}\n",
        s.pid,
        table::duration(s.uptime_secs),
        s.cpu_percent,
        table::bytes(s.rss_bytes),
        r.generation,
        r.phase,
        r.config
    );
    for l in &r.listeners {
        out.push_str(&format!("listen {} {} (fd {})\n", l.name, l.address, l.fd));
    }
    out.push('\n');
    let mut t = Table::new(&[
        "slot", "name", "pid", "gen", "state", "uptime", "restarts", "cpu", "mem", "status",
    ]);
    for w in &r.workers {
        t.row(vec![
            w.slot.to_string(),
            w.name.clone(),
            w.process.pid.to_string(),
            w.generation.to_string(),
            w.state.to_string(),
            table::duration(w.process.uptime_secs),
            w.restarts.to_string(),
            format!("{:.1}%", w.process.cpu_percent),
            table::bytes(w.process.rss_bytes),
            w.status_text.clone().unwrap_or_default(),
        ]);
    }
    for s in &r.waiting {
        t.row(vec![
            s.slot.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            s.state.to_string(),
            "-".into(),
            s.restarts.to_string(),
            "-".into(),
            "-".into(),
            format!(
                "restart in {}: {}",
                table::duration(s.restart_in_secs),
                s.last_exit
            ),
        ]);
    }
    out.push_str(&t.to_string());
    if let Some(p) = &r.reload_in_progress {
        out.push_str(&format!(
            "\nreload to generation {} in progress: {}/{} slots, {}{}\n",
            p.generation,
            p.done,
            p.total,
            table::duration(p.elapsed_secs),
            if p.queued { " (one more queued)" } else { "" }
        ));
    }
    if let Some(l) = &r.last_reload {
        out.push_str(&format!(
            "\nlast reload: generation {} {} in {}{}\n",
            l.generation,
            l.outcome,
            table::duration(l.duration_secs),
            l.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }
    out
}

fn render_reload(r: &ReloadReport) -> String {
    let mut out = format!(
        "reload to generation {}: {} in {}\n",
        r.generation,
        r.outcome,
        table::duration(r.duration_secs)
    );
    if let Some(reason) = &r.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    if !r.slots.is_empty() {
        let mut t = Table::new(&["slot", "old pid", "new pid", "ready in"]);
        for s in &r.slots {
            t.row(vec![
                s.slot.to_string(),
                s.old_pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.new_pid.to_string(),
                format!("{:.2}s", s.ready_secs),
            ]);
        }
        out.push_str(&t.to_string());
    }
    out
}

async fn reload(socket: &Path, wait: bool, json: bool, timeout: Duration) -> Result<ExitCode> {
    match client::request(socket, Request::Reload { wait }, timeout).await? {
        Response::Reload(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if wait {
                print!("{}", render_reload(&report));
            } else {
                println!(
                    "reload to generation {} {}",
                    report.generation, report.outcome
                );
            }
            Ok(if report.outcome == ReloadOutcome::Aborted {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Response::Error { message } => bail!("reload refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn stop(socket: &Path, timeout: Duration) -> Result<ExitCode> {
    match client::request(socket, Request::Stop, timeout).await? {
        Response::Stopped => {
            println!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("stop refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
