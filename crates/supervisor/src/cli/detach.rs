//! `supervisor start -d`: the supervisor in the background, the way `pm2 start` returns. The
//! config is checked here first (an error names the file, line and key, and nothing starts),
//! then the supervisor runs detached (`sys::detach`), logging to `supervisor.log` in its log
//! directory ([`crate::logs::dir`]), and this command returns once every app's first workers
//! are ready, with the status screen. A start that fails exits 1 with the supervisor's own
//! error; one that is not ready in time stops the supervisor and exits 1 with what was not
//! ready and why: nothing is left running either way.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;

use super::args::LogFormat;
use super::render::render_status;
use crate::config::Config;
use crate::control::client;
use crate::control::protocol::{Request, Response, StatusReport};
use crate::control::registry;
use crate::core::{Phase, WorkerState};
use crate::rundir;
use crate::sys::detach;
use crate::units;

/// `--ready-fd N` of the detached supervisor, taken over.
pub(super) fn take_ready_fd(fd: i32) -> Result<OwnedFd> {
    detach::ready_pipe(fd).with_context(|| format!("--ready-fd {fd}"))
}

/// Starts the supervisor of `config` in the background; returns once every app is ready.
pub(super) async fn start(config: &Path, format: LogFormat, timeout: Duration) -> Result<ExitCode> {
    let path = super::absolute(config);
    let c = Config::load(&path)?;
    // What would refuse the start, said here and now.
    crate::control::server::check_free(&c.control_socket, &c.path)?;
    if let Some(e) = registry::find(&rundir::candidates(), &c.name) {
        bail!(
            "a supervisor named {:?} is running already (pid {}, config {}): `supervisor ls` lists them; give this config its own `[supervisor] name`",
            e.name,
            e.pid,
            e.config.display()
        );
    }
    let dir = crate::logs::dir::default_dir(&c.name);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    let log_path = dir.join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let offset = log.metadata().map_or(0, |m| m.len());
    let exe = crate::upgrade::own_binary();
    let format = match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let args: Vec<&OsStr> = vec![
        OsStr::new("start"),
        OsStr::new("-c"),
        path.as_os_str(),
        OsStr::new("--log-format"),
        OsStr::new(format),
    ];
    let started = Instant::now();
    let mut d = detach::spawn(&exe, &args, &log_path, &log)
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let pid = d.child.id();
    let said = tokio::time::timeout(timeout, first_line(d.ready)).await;
    match said {
        Ok(Ok(line)) if line.starts_with("ready") => {
            println!(
                "supervisor {} started in the background (pid {pid}): every app ready in {}",
                c.name,
                units::duration(started.elapsed().as_secs_f64())
            );
            println!("log: {}", log_path.display());
            if let Ok(report) = status(&c.control_socket).await {
                print!("\n{}", render_status(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            // End of file without the line: the start failed and the process exits.
            let code = wait(&mut d.child, Duration::from_secs(10)).await;
            bail!(
                "the supervisor did not start ({code}): {} (log: {})",
                last_error(&log_path, offset),
                log_path.display()
            );
        }
        Err(_) => {
            let why = match status(&c.control_socket).await {
                Ok(report) => not_ready(&report),
                Err(e) => format!("its control socket did not answer ({e})"),
            };
            // Nothing is left running: it drains what it started and exits.
            detach::terminate(pid);
            let grace = c
                .apps
                .iter()
                .map(|a| a.worker.kill_timeout)
                .sum::<Duration>()
                + Duration::from_secs(5);
            let code = wait(&mut d.child, grace).await;
            bail!(
                "not every app was ready within {}: {why}; the supervisor was stopped ({code}; log: {})",
                units::span(timeout),
                log_path.display()
            );
        }
    }
}

/// The first line written to the ready pipe ("" at end of file).
async fn first_line(fd: OwnedFd) -> std::io::Result<String> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut text = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 || buf[..n].contains(&b'\n') {
            text.extend_from_slice(&buf[..n]);
            return Ok(String::from_utf8_lossy(&text).into_owned());
        }
        text.extend_from_slice(&buf[..n]);
    }
}

async fn status(socket: &Path) -> Result<StatusReport> {
    match client::request(
        socket,
        Request::Status { app: None },
        Duration::from_secs(5),
    )
    .await?
    {
        Response::Status(r) => Ok(*r),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Waits for the child to exit, SIGKILLs it after `grace`; says how it ended.
async fn wait(child: &mut std::process::Child, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => format!("{status}"),
                };
            }
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "killed after it did not stop in time".into();
            }
        }
    }
}

/// The supervisor's own error line (`error: ...`) among what it logged since `offset`, or its
/// last lines.
fn last_error(log: &PathBuf, offset: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
    if let Some(line) = text.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        return line.to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// What is not ready, and why, from the status screen.
fn not_ready(r: &StatusReport) -> String {
    let mut why = Vec::new();
    for a in &r.apps {
        match a.phase {
            Phase::Waiting => why.push(format!(
                "app {} waits for {}",
                a.name,
                a.waiting_for.join(", ")
            )),
            Phase::Starting | Phase::Running => {
                for s in &a.waiting {
                    why.push(format!(
                        "{}.{} is in {} ({} restarts; last exit: {})",
                        a.name, s.slot, s.state, s.restarts, s.last_exit
                    ));
                }
                for w in a
                    .workers
                    .iter()
                    .filter(|w| w.state == WorkerState::Starting)
                {
                    why.push(format!(
                        "{} (pid {}) has not said it is ready after {}",
                        w.name,
                        w.process.pid,
                        units::duration(w.process.uptime_secs)
                    ));
                }
            }
            _ => {}
        }
    }
    if why.is_empty() {
        "every app is still starting".into()
    } else {
        why.join("; ")
    }
}
