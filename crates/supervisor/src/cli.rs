//! Command line: `start | check | status | reload | restart | scale | stop | jobs | upgrade` (clap), and
//! how each command prints its result (tables for people, `--json` for scripts) and picks its
//! exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use crate::config::{Config, endpoints_of};
use crate::control::client;
use crate::control::protocol::{
    AppStatus, ReloadOutcome, ReloadReport, Request, Response, SingletonStatus, StatusReport,
};
use crate::control::server::{ControlError, check_free};
use crate::daemon::{self, Command, StartupError};
use crate::jobs;
use crate::sys::listeners;
use crate::table::Table;
use crate::units;

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

/// Deadline for one backend call of `status`/`jobs`.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// Parses the command line; `--version` shows the build too.
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let version: &'static str = Box::leak(crate::upgrade::version_line().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

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
            Cmd::Start {
                log_format,
                resume_fd,
            } => {
                let config = Config::load(&cli.config)?;
                let commands = signals().context("cannot install signal handlers")?;
                let options = daemon::RunOptions {
                    resume_fd,
                    log_format: match log_format {
                        LogFormat::Text => "text".into(),
                        LogFormat::Json => "json".into(),
                    },
                };
                daemon::run(config, commands, options).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Upgrade {
                binary,
                target,
                json,
                timeout,
            } => upgrade_cmd(&socket(&cli.config, &target)?, binary, json, timeout).await,
            Cmd::UpgradePreflight { state_version } => {
                Config::load(&cli.config)?;
                crate::upgrade::check_version(state_version)?;
                println!("supervisor {}", crate::upgrade::version_line());
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Check { json } => check(&cli.config, json),
            Cmd::Status {
                app,
                target,
                json,
                pid,
            } => {
                if pid {
                    return match ask(&cli.config, &target, Request::Status { app: None }).await? {
                        Response::Status(report) => {
                            println!("{}", report.supervisor.pid);
                            Ok(ExitCode::SUCCESS)
                        }
                        other => bail!("unexpected answer: {other:?}"),
                    };
                }
                status(&cli.config, app, &target, json).await
            }
            Cmd::Reload {
                app,
                target,
                no_wait,
                json,
                timeout,
            } => {
                let socket = socket(&cli.config, &target)?;
                reload(&socket, app, !no_wait, json, timeout).await
            }
            Cmd::Restart { app, target, json } => {
                let answer = ask(&cli.config, &target, Request::Restart { app }).await?;
                print_answer(&answer, json)
            }
            Cmd::Scale {
                app,
                instances,
                target,
                json,
            } => {
                let answer = ask(&cli.config, &target, Request::Scale { app, instances }).await?;
                print_answer(&answer, json)
            }
            Cmd::Stop {
                target,
                timeout,
                json,
            } => {
                let socket = socket(&cli.config, &target)?;
                // The pid first: the answer comes when every worker is gone, and the process
                // still finishes its [[job]] commands and lease releases after that.
                let pid = match client::request(
                    &socket,
                    Request::Status { app: None },
                    Duration::from_secs(10),
                )
                .await
                {
                    Ok(Response::Status(report)) => Some(report.supervisor.pid),
                    _ => None,
                };
                let started = std::time::Instant::now();
                let answer = client::request(&socket, Request::Stop, timeout).await?;
                if let (Some(pid), Response::Stopped) = (pid, &answer) {
                    wait_exited(pid, timeout.saturating_sub(started.elapsed())).await?;
                }
                print_answer(&answer, json)
            }
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
    let listen_err = |cause| StartupError::Listen {
        path: c.path.clone(),
        cause,
    };
    for app in &c.apps {
        drop(listeners::bind_all(&app.listeners).map_err(listen_err)?);
    }
    if let Some(addr) = c.metrics {
        drop(listeners::bind_own(daemon::METRICS_KEY, addr).map_err(listen_err)?);
    }
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

fn check(path: &Path, json: bool) -> Result<ExitCode> {
    let checked = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|c| Ok(try_start(&c).map(|note| (c, note))?));
    let (c, note) = match checked {
        Ok(ok) => ok,
        Err(e) if json => {
            // Scripts get the verdict on stdout too, as JSON, besides the exit code.
            let v = serde_json::json!({ "config": path, "ok": false, "error": format!("{e:#}") });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e),
    };
    // The cron URL may carry a password: shown redacted, like in every log line.
    let cron = cronlock::redact_url(&c.cron_url);
    if json {
        let apps: Vec<serde_json::Value> = c
            .apps
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "program": a.worker.program,
                    "args": a.worker.args,
                    "instances": a.worker.instances,
                    "runtime": a.worker.runtime,
                    "readiness": a.worker.readiness,
                    "ready_timeout_ms": a.worker.ready_timeout.as_millis() as u64,
                    "kill_timeout_ms": a.worker.kill_timeout.as_millis() as u64,
                    "listen": a.listeners.iter().map(|l| serde_json::json!({
                        "name": l.name, "address": l.addr.to_string(),
                    })).collect::<Vec<_>>(),
                    "after": a.after,
                    "max_memory": a.memory.max_bytes,
                    "max_memory_grace_ms": a.memory.grace.as_millis() as u64,
                    "scope": if a.singleton.is_some() { "cluster" } else { "host" },
                    "lease_ttl_ms": a.singleton.map(|p| p.lease_ttl.as_millis() as u64),
                    "standby_poll_ms": a.singleton.map(|p| p.standby_poll.as_millis() as u64),
                })
            })
            .collect();
        let jobs: Vec<serde_json::Value> = c
            .jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "name": j.spec.name,
                    "schedule": j.spec.schedule,
                    "timezone": j.spec.timezone.name(),
                    "kind": j.action.kind(),
                    "run": job_action_text(&j.action),
                    "timeout_ms": j.timeout.as_millis() as u64,
                    "kill_timeout_ms": j.kill_timeout.as_millis() as u64,
                    "lease_ttl_ms": j.spec.lease_ttl.as_millis() as u64,
                    "overlap": j.spec.overlap,
                    "misfire": j.spec.misfire,
                })
            })
            .collect();
        let v = serde_json::json!({
            "config": path,
            "ok": true,
            "apps": apps,
            "jobs": jobs,
            "control_socket": c.control_socket,
            "metrics": c.metrics.map(|a| a.to_string()),
            "cron_backend": cron,
            "note": note,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: ok", path.display());
    for app in &c.apps {
        let w = &app.worker;
        let args: String = w.args.iter().map(|a| format!(" {a}")).collect();
        println!("app {}", app.name);
        println!("  program:        {}{args}", w.program.display());
        println!("  instances:      {}", w.instances);
        println!("  runtime:        {}", w.runtime);
        for l in &app.listeners {
            println!("  listen:         {} {}", l.name, l.addr);
        }
        if !app.after.is_empty() {
            println!("  after:          {}", app.after.join(", "));
        }
        if let Some(p) = app.singleton {
            println!(
                "  scope:          cluster (lease ttl {}, standby poll {})",
                units::span(p.lease_ttl),
                units::span(p.standby_poll)
            );
        }
        if let Some(max) = app.memory.max_bytes {
            println!(
                "  max_memory:     {} (grace {})",
                units::size(max),
                units::span(app.memory.grace)
            );
        }
    }
    for j in &c.jobs {
        println!(
            "job {}  {} {}  {}: {}",
            j.spec.name,
            j.spec.schedule,
            j.spec.timezone.name(),
            j.action.kind(),
            job_action_text(&j.action)
        );
    }
    println!("control socket:   {}", c.control_socket.display());
    if let Some(addr) = c.metrics {
        println!("metrics:          http://{addr}/metrics");
    }
    println!("cron backend:     {cron}");
    if let Some(note) = note {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a `[[job]]` runs, in one line: the command line, or `POST /path -> app`.
fn job_action_text(a: &crate::config::JobAction) -> String {
    match a {
        crate::config::JobAction::Command { program, args, .. } => {
            let args: String = args.iter().map(|a| format!(" {a}")).collect();
            format!("{}{args}", program.display())
        }
        crate::config::JobAction::Http { method, path, app } => {
            format!("{method} {path} -> app {app}")
        }
    }
}

/// Sends `request` to the supervisor of `config` (or `target`) and returns the answer.
/// Waits until process `pid` has exited (gone, or a zombie its parent has not reaped yet).
async fn wait_exited(pid: i32, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                Some(
                    s[s.rfind(')')? + 1..]
                        .split_whitespace()
                        .next()?
                        .to_string(),
                )
            });
        if state.as_deref().is_none_or(|s| s == "Z" || s == "X") {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "the supervisor (pid {pid}) stopped its workers but was still running after {}",
                crate::units::span(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ask(config: &Path, target: &Target, request: Request) -> Result<Response> {
    Ok(client::request(&socket(config, target)?, request, Duration::from_secs(60)).await?)
}

/// Prints the answer to `restart`, `scale` or `stop`; an error answer is an error.
fn print_answer(answer: &Response, json: bool) -> Result<ExitCode> {
    if let Response::Error { message } = answer {
        bail!("{message}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    match answer {
        Response::Restarted {
            app,
            generation,
            workers,
        } => println!(
            "{app}: restarting {workers} worker(s) in generation {generation} (no readiness gating; `status {app}` shows them)"
        ),
        Response::Scaled {
            app,
            from,
            to,
            note,
        } => {
            println!("{app}: scaled from {from} to {to} worker(s)");
            if let Some(note) = note {
                println!("note: {note}");
            }
        }
        Response::Stopped => println!("stopped"),
        other => bail!("unexpected answer: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The supervisor's status report, from its control socket.
async fn status_report(socket: &Path) -> Result<StatusReport> {
    match client::request(
        socket,
        Request::Status { app: None },
        Duration::from_secs(10),
    )
    .await?
    {
        Response::Status(report) => Ok(*report),
        Response::Error { message } => bail!("status refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `supervisor upgrade`: asks for the upgrade; an error answer means it was refused or failed
/// and the old binary runs on. When the connection ends without an answer, the old image is
/// gone (`execve`): the new one must answer `status` with one more upgrade.
async fn upgrade_cmd(
    socket: &Path,
    binary: Option<PathBuf>,
    json: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let before = status_report(socket).await?;
    let binary = binary.map(std::path::absolute).transpose()?;
    let deadline = tokio::time::Instant::now() + timeout;
    match client::request(socket, Request::Upgrade { binary }, timeout).await {
        Ok(Response::Error { message }) => bail!("upgrade failed: {message}"),
        Ok(other) => bail!("unexpected answer: {other:?}"),
        // The connection ended with the old process image.
        Err(client::ClientError::NoAnswer(_) | client::ClientError::Io { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let after = loop {
        if let Ok(r) = status_report(socket).await {
            if r.upgrades.count > before.upgrades.count {
                break r;
            }
            if r.upgrades.last_error.is_some()
                && r.upgrades.last_error != before.upgrades.last_error
            {
                bail!(
                    "upgrade failed: {}",
                    r.upgrades.last_error.unwrap_or_default()
                );
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the supervisor did not answer as upgraded within {}",
                units::span(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&after)?);
        return Ok(ExitCode::SUCCESS);
    }
    let workers: usize = after.apps.iter().map(|a| a.workers.len()).sum();
    println!(
        "upgraded in place: pid {} (was {}), {} {} -> {} {} ({}), {workers} worker(s) kept",
        after.supervisor.pid,
        before.supervisor.pid,
        before.version,
        before.build,
        after.version,
        after.build,
        after.binary
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(
    config: &Path,
    app: Option<String>,
    target: &Target,
    json: bool,
) -> Result<ExitCode> {
    let socket = socket(config, target)?;
    let report =
        match client::request(&socket, Request::Status { app }, Duration::from_secs(10)).await? {
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
            let endpoints = endpoints_of(config)?;
            if endpoints.cron_url.starts_with("file:") {
                // The local backend's jobs run on this host only: without its supervisor nobody
                // would take the request.
                client::request(
                    &endpoints.control_socket,
                    Request::Status { app: None },
                    Duration::from_secs(5),
                )
                .await
                .with_context(|| {
                    format!("cannot run {name}: the local cron backend's jobs run in this host's supervisor")
                })?;
            }
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

/// The `status` screen: the supervisor, then each app with its listeners and workers.
pub fn render_status(r: &StatusReport) -> String {
    let s = &r.supervisor;
    let mut out = format!(
        "supervisor {} pid {}  up {}  cpu {:.1}%  mem {}  {}\nconfig {}\n",
        r.version,
        s.pid,
        units::duration(s.uptime_secs),
        s.cpu_percent,
        units::bytes(s.rss_bytes),
        r.phase,
        r.config
    );
    if !r.build.is_empty() {
        out.push_str(&format!("build {}  binary {}\n", r.build, r.binary));
    }
    if let Some(at) = r.upgrades.last_at_unix {
        let when = chrono::DateTime::from_timestamp(at as i64, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "upgraded in place {} time(s), last at {when} from {}\n",
            r.upgrades.count,
            r.upgrades.last_from.as_deref().unwrap_or("?")
        ));
    }
    if let Some(e) = &r.upgrades.last_error {
        out.push_str(&format!("last upgrade attempt failed: {e}\n"));
    }
    for app in &r.apps {
        out.push('\n');
        out.push_str(&render_app(app));
    }
    out
}

/// `scope cluster: holder host:pid token N (this host|standby)`.
fn render_singleton(s: &SingletonStatus) -> String {
    let holder = match (&s.holder, s.token) {
        (Some(h), Some(t)) => format!("holder {h} token {t}"),
        (Some(h), None) => format!("holder {h}"),
        _ => "holder none".to_string(),
    };
    format!(
        "scope cluster: {holder} ({}), lease ttl {}\n",
        s.role,
        units::span(Duration::try_from_secs_f64(s.lease_ttl_secs).unwrap_or_default())
    )
}

fn render_app(a: &AppStatus) -> String {
    let mut out = format!("app {}  generation {}  {}", a.name, a.generation, a.phase);
    if !a.waiting_for.is_empty() {
        out.push_str(&format!(" for {}", a.waiting_for.join(", ")));
    }
    out.push('\n');
    if let Some(s) = &a.singleton {
        out.push_str(&render_singleton(s));
    }
    for l in &a.listeners {
        out.push_str(&format!("listen {} {} (fd {})\n", l.name, l.address, l.fd));
    }
    let mut t = Table::new(&[
        "slot", "name", "pid", "gen", "state", "uptime", "restarts", "cpu", "mem", "status",
    ]);
    for w in &a.workers {
        let over = w
            .over_max_memory_secs
            .map(|secs| format!("above max_memory for {}", units::duration(secs)));
        let status = [over, w.status_text.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        t.row(vec![
            w.slot.to_string(),
            w.name.clone(),
            w.process.pid.to_string(),
            w.generation.to_string(),
            w.state.to_string(),
            units::duration(w.process.uptime_secs),
            w.restarts.to_string(),
            format!("{:.1}%", w.process.cpu_percent),
            units::bytes(w.process.rss_bytes),
            status,
        ]);
    }
    for s in &a.waiting {
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
                units::duration(s.restart_in_secs),
                s.last_exit
            ),
        ]);
    }
    if !a.workers.is_empty() || !a.waiting.is_empty() {
        out.push_str(&t.to_string());
    }
    if let Some(m) = &a.max_memory {
        out.push_str(&format!(
            "max_memory {} (grace {}): recycled {} (memory)",
            units::size(m.bytes),
            units::span(Duration::try_from_secs_f64(m.grace_secs).unwrap_or_default()),
            a.memory_recycles
        ));
    } else if a.memory_recycles > 0 {
        out.push_str(&format!("recycled {} (memory)", a.memory_recycles));
    }
    if a.max_memory.is_some() || a.memory_recycles > 0 {
        if a.memory_recycle_failures > 0 {
            out.push_str(&format!(
                ", {} replacement(s) failed",
                a.memory_recycle_failures
            ));
        }
        out.push('\n');
    }
    if let Some(r) = &a.memory_recycling {
        out.push_str(&format!(
            "replacing slot {} for memory: pid {} ({}) -> {} starting for {}\n",
            r.slot,
            r.old_pid,
            units::bytes(r.rss_bytes),
            r.new_pid
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "new worker".into()),
            units::duration(r.elapsed_secs)
        ));
    }
    if let Some(p) = &a.reload_in_progress {
        out.push_str(&format!(
            "reload to generation {} in progress: {}/{} slots, {}{}\n",
            p.generation,
            p.done,
            p.total,
            units::duration(p.elapsed_secs),
            if p.queued { " (one more queued)" } else { "" }
        ));
    }
    if let Some(l) = &a.last_reload {
        out.push_str(&format!(
            "last reload: generation {} {} in {}{}\n",
            l.generation,
            l.outcome,
            units::duration(l.duration_secs),
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
        "{}: reload to generation {}: {} in {}\n",
        r.app,
        r.generation,
        r.outcome,
        units::duration(r.duration_secs)
    );
    if let Some(reason) = &r.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    if let Some(note) = &r.note {
        out.push_str(&format!("note: {note}\n"));
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
                units::duration(s.ready_secs),
            ]);
        }
        out.push_str(&t.to_string());
    }
    out
}

async fn reload(
    socket: &Path,
    app: Option<String>,
    wait: bool,
    json: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    match client::request(socket, Request::Reload { app, wait }, timeout).await? {
        Response::Reload { reports } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else if wait {
                for r in &reports {
                    print!("{}", render_reload(r));
                }
            } else {
                for r in &reports {
                    println!(
                        "{}: reload to generation {} {}",
                        r.app, r.generation, r.outcome
                    );
                }
            }
            Ok(
                if reports.iter().any(|r| r.outcome == ReloadOutcome::Aborted) {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                },
            )
        }
        Response::Error { message } => bail!("reload refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{MemoryLimit, MemoryRecycleProgress, ProcessInfo, WorkerInfo};
    use crate::core::{Phase, WorkerState};

    fn app(max_memory: Option<MemoryLimit>, recycles: u64, failures: u64) -> AppStatus {
        AppStatus {
            name: "demo".into(),
            phase: Phase::Running,
            waiting_for: vec![],
            generation: 1,
            listeners: vec![],
            workers: vec![WorkerInfo {
                slot: 1,
                name: "demo.1".into(),
                generation: 1,
                state: WorkerState::Ready,
                restarts: 0,
                process: ProcessInfo {
                    pid: 1234,
                    uptime_secs: 60.0,
                    cpu_percent: 0.0,
                    rss_bytes: 612_300_000,
                },
                status_text: Some("serving".into()),
                over_max_memory_secs: Some(12.0),
            }],
            waiting: vec![],
            reload_in_progress: None,
            last_reload: None,
            max_memory,
            memory_recycles: recycles,
            memory_recycle_failures: failures,
            memory_recycling: None,
            singleton: None,
        }
    }

    #[test]
    fn status_shows_where_a_cluster_singleton_runs() {
        let mut a = app(None, 0, 0);
        a.singleton = Some(SingletonStatus {
            role: crate::core::SingletonRole::Holder,
            holder: Some("vm1:4242".into()),
            token: Some(17),
            lease_ttl_secs: 10.0,
        });
        let text = render_app(&a);
        assert!(
            text.contains("scope cluster: holder vm1:4242 token 17 (this host), lease ttl 10s"),
            "{text}"
        );
        a.phase = Phase::Standby;
        a.workers.clear();
        a.singleton = Some(SingletonStatus {
            role: crate::core::SingletonRole::Standby,
            holder: Some("vm2:77".into()),
            token: Some(18),
            lease_ttl_secs: 10.0,
        });
        let text = render_app(&a);
        assert!(text.contains("app demo  generation 1  standby"), "{text}");
        assert!(
            text.contains("scope cluster: holder vm2:77 token 18 (standby)"),
            "{text}"
        );
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["singleton"]["role"], "standby");
        assert_eq!(json["singleton"]["holder"], "vm2:77");
        assert_eq!(json["singleton"]["token"], 18);
        assert_eq!(json["phase"], "standby");
    }

    #[test]
    fn status_shows_max_memory_the_recycle_count_and_who_is_above() {
        let limit = MemoryLimit {
            bytes: 512_000_000,
            grace_secs: 30.0,
        };
        let mut a = app(Some(limit), 2, 1);
        a.memory_recycling = Some(MemoryRecycleProgress {
            slot: 1,
            old_pid: 1234,
            new_pid: Some(1240),
            rss_bytes: 612_300_000,
            elapsed_secs: 0.25,
        });
        let text = render_app(&a);
        assert!(
            text.contains(
                "max_memory 512 MB (grace 30s): recycled 2 (memory), 1 replacement(s) failed\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("above max_memory for 12.0s; serving"),
            "{text}"
        );
        assert!(
            text.contains(
                "replacing slot 1 for memory: pid 1234 (612.3 MB) -> pid 1240 starting for 250 ms"
            ),
            "{text}"
        );
        let none = render_app(&app(None, 0, 0));
        assert!(!none.contains("memory)"), "{none}");
        assert!(render_app(&app(None, 3, 0)).contains("recycled 3 (memory)\n"));
    }
}
