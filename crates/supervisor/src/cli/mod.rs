//! Command line: `start | check | status | reload | restart | scale | stop | jobs | upgrade`, by
//! phase: `args` parses (clap), one function per command runs it (`check`, the control
//! socket's client commands in `commands`, `jobs`), and `render` (with `table`) turns the
//! answers into text for people; `--json` prints them for scripts. Each command picks its exit
//! code.

mod args;
mod check;
mod commands;
mod jobs;
mod render;
mod table;

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

pub use args::{Cli, Cmd, JobsCmd, LogFormat, Target};
use commands::socket;

use crate::config::Config;
use crate::control::protocol::Request;
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
            } => commands::upgrade(&socket(&cli.config, &target)?, binary, json, timeout).await,
            Cmd::UpgradePreflight { state_version } => {
                Config::load(&cli.config)?;
                crate::upgrade::check_version(state_version)?;
                println!("supervisor {}", crate::upgrade::version_line());
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Check { json } => check::check(&cli.config, json),
            Cmd::Status {
                app,
                target,
                json,
                pid,
            } => {
                if pid {
                    return commands::status_pid(&cli.config, &target).await;
                }
                commands::status(&cli.config, app, &target, json).await
            }
            Cmd::Reload {
                app,
                target,
                no_wait,
                json,
                timeout,
            } => {
                let socket = socket(&cli.config, &target)?;
                commands::reload(&socket, app, !no_wait, json, timeout).await
            }
            Cmd::Restart { app, target, json } => {
                commands::answer(&cli.config, &target, Request::Restart { app }, json).await
            }
            Cmd::Scale {
                app,
                instances,
                target,
                json,
            } => {
                let request = Request::Scale { app, instances };
                commands::answer(&cli.config, &target, request, json).await
            }
            Cmd::Stop {
                target,
                timeout,
                json,
            } => commands::stop(&socket(&cli.config, &target)?, json, timeout).await,
            Cmd::Jobs { json, action } => {
                jobs::run(&cli.config, json, action.unwrap_or(JobsCmd::List)).await
            }
        }
    })
}
