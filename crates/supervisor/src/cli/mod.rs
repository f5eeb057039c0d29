//! Command line: `start | check | init | import | status | ls | reload | restart | scale | stop |
//! reset | jobs | logs | monit | flush | reopen-logs | upgrade | startup`, by phase: `args` parses
//! (clap), `target` says which supervisor a client command talks to, one function per command
//! runs it (`check`, the control socket's client commands in `commands`, `jobs`, `logs` for
//! `logs`, `flush` and `reopen-logs`, `monit` for the live view, `detach` for `start -d`, `script`
//! for `start app.js -i max` and `init`, `import` for PM2's ecosystem file, `startup` for the
//! systemd unit), and `render` (with `table`) turns the answers into text for people; `--json`
//! prints them for scripts. Each command picks its exit code.

mod args;
mod check;
mod commands;
mod detach;
mod import;
mod jobs;
mod logs;
mod monit;
mod render;
mod script;
mod startup;
mod table;
mod target;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

pub use args::{Cli, Cmd, JobsCmd, LogFormat, Target};
use target::{default_config, resolve};

use crate::config::Config;
use crate::control::protocol::{self, ReloadMode, Request};
use crate::daemon::{self, Command};

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
pub fn run(mut cli: Cli, signals: SignalInstaller) -> Result<ExitCode> {
    if let Cmd::Start {
        env_profile: Some(profile),
        ..
    }
    | Cmd::Check {
        env_profile: Some(profile),
        ..
    } = &cli.command
    {
        // The config reads the chosen profile from the environment, so that a reload, a
        // `start -d`'s background process and an upgrade's new binary keep it.
        // SAFETY: no other thread exists yet: the runtime is built below, and main started none.
        unsafe { std::env::set_var(crate::config::PROFILE_VAR, profile) };
    }
    // `start app.js -i max`: the config is written from the script (its port discovered), then
    // started like any other.
    let mut written: Option<PathBuf> = None;
    if let Cmd::Start {
        app,
        instances,
        script_args,
        target,
        pm2,
        detach,
        ..
    } = &mut cli.command
    {
        if let (Some(name), true) = (app.as_deref().filter(|a| !script::is_script(a)), *detach) {
            anyhow::bail!(
                "`start {name}` starts an app of the running supervisor again: it takes no -d \
                 (`start -d` starts a supervisor in the background; `start app.js -d` a script)"
            );
        }
        if let Some(script) = app.as_deref().filter(|a| script::is_script(a)) {
            let plan = script::Plan::new(
                script,
                instances.as_deref(),
                target.name.take().as_deref(),
                script_args,
                pm2,
            )?;
            written = Some(script::write_config(&plan)?);
            *app = None;
        } else if instances.is_some() || !script_args.is_empty() || !pm2.pm2_options().is_empty() {
            anyhow::bail!(
                "-i, PM2's options (--watch, --max-memory-restart, ...) and -- ARGS go with a \
                 script to run (`supervisor start app.js -i max --watch`); for a config file, \
                 write them in it"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the async runtime")?;
    let given = written.or_else(|| cli.config.clone());
    let starts_a_supervisor = matches!(
        cli.command,
        Cmd::Start { app: None, .. } | Cmd::Check { .. }
    );
    if let (None, true, Some(e)) = (&given, starts_a_supervisor, target::no_default_config()) {
        return Err(e);
    }
    let file = || -> PathBuf { given.clone().unwrap_or_else(default_config) };
    let to = |target: &Target| resolve(given.as_deref(), target);
    rt.block_on(async {
        match cli.command {
            Cmd::Start {
                app: Some(app),
                target,
                json,
                ..
            } => {
                let request = Request::StartApp { app };
                commands::answer(&to(&target)?, request, json, Duration::from_secs(600)).await
            }
            Cmd::Start {
                detach: true,
                log_format,
                timeout,
                ..
            } => detach::start(&file(), log_format, timeout).await,
            Cmd::Start {
                log_format,
                resume_fd,
                ready_fd,
                ..
            } => {
                let config = Config::load(&file())?;
                let commands = signals().context("cannot install signal handlers")?;
                let options = daemon::RunOptions {
                    resume_fd,
                    log_format: match log_format {
                        LogFormat::Text => "text".into(),
                        LogFormat::Json => "json".into(),
                    },
                    ready_fd: ready_fd.map(detach::take_ready_fd).transpose()?,
                };
                daemon::run(config, commands, options).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Upgrade {
                binary,
                target,
                json,
                timeout,
            } => commands::upgrade(&to(&target)?.socket, binary, json, timeout).await,
            Cmd::UpgradePreflight { state_version } => {
                Config::load(&file())?;
                crate::upgrade::check_version(state_version)?;
                println!("supervisor {}", crate::upgrade::version_line());
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Check { json, .. } => check::check(&file(), json).await,
            Cmd::Ls { json } => target::ls(json).await,
            Cmd::Init {
                script,
                instances,
                name,
                output,
                script_args,
                pm2,
            } => {
                let plan = script::Plan::new(
                    &script,
                    instances.as_deref(),
                    name.as_deref(),
                    &script_args,
                    &pm2,
                )?;
                script::init(&plan, &output)?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Import { file, output } => {
                import::import(&file, &output)?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Startup { install, user } => startup::startup(&file(), install, user.as_deref()),
            Cmd::Status {
                app,
                target,
                json,
                pid,
            } => {
                let to = to(&target)?;
                if pid {
                    return commands::status_pid(&to).await;
                }
                commands::status(&to, app, json).await
            }
            Cmd::Reload {
                app,
                target,
                no_wait,
                canary,
                r#continue,
                rollback,
                json,
                timeout,
            } => {
                let mode = match (canary, r#continue, rollback) {
                    (true, _, _) => ReloadMode::Canary,
                    (_, true, _) => ReloadMode::Continue,
                    (_, _, true) => ReloadMode::Rollback,
                    _ => ReloadMode::Rolling,
                };
                let request = Request::Reload {
                    app,
                    wait: !no_wait,
                    mode,
                };
                commands::reload(&to(&target)?.socket, request, json, timeout).await
            }
            Cmd::Restart { app, target, json } => {
                let request = Request::Restart { app };
                commands::answer(&to(&target)?, request, json, Duration::from_secs(60)).await
            }
            Cmd::Scale {
                app,
                instances,
                target,
                json,
            } => {
                let request = Request::Scale { app, instances };
                commands::answer(&to(&target)?, request, json, Duration::from_secs(60)).await
            }
            Cmd::Reset { app, target, json } => {
                let request = Request::Reset { app };
                commands::answer(&to(&target)?, request, json, Duration::from_secs(60)).await
            }
            Cmd::Stop {
                app: Some(app),
                target,
                timeout,
                json,
            } => commands::answer(&to(&target)?, Request::StopApp { app }, json, timeout).await,
            Cmd::Stop {
                app: None,
                target,
                timeout,
                json,
            } => commands::stop(&to(&target)?.socket, json, timeout).await,
            Cmd::Logs {
                what,
                follow,
                lines,
                err,
                out,
                since,
                json,
                target,
            } => {
                let args = logs::LogsArgs {
                    target: what,
                    lines,
                    stream: match (err, out) {
                        (true, _) => Some(protocol::Stream::Err),
                        (_, true) => Some(protocol::Stream::Out),
                        _ => None,
                    },
                    since_ms: since,
                    follow,
                    json,
                };
                logs::logs(&to(&target)?.socket, args).await
            }
            Cmd::Monit { target } => monit::monit(&to(&target)?.socket).await,
            Cmd::Flush { app, target, json } => logs::flush(&to(&target)?.socket, app, json).await,
            Cmd::ReopenLogs { target, json } => logs::reopen(&to(&target)?.socket, json).await,
            Cmd::Jobs {
                target,
                json,
                action,
            } => {
                let config = match (&given, &target.socket) {
                    (Some(c), _) => c.clone(),
                    (None, _) => to(&target)?.config.unwrap_or_else(file),
                };
                jobs::run(&config, json, action.unwrap_or(JobsCmd::List)).await
            }
        }
    })
}

/// The config file's path as given, made absolute (what a detached supervisor and a systemd
/// unit must name, whatever their working directory).
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}
