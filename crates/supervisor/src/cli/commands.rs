//! The client commands `status`, `reload`, `restart`, `scale`, `stop`, `stop APP`, `start APP`,
//! `reset` and `upgrade`: each asks the supervisor on its control socket ([`super::target`]
//! says which), waits for what it promised (the reload's outcome, the app up or down, the
//! process gone, the new binary answering), prints the answer and picks the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use super::jobs;
use super::render::{
    render_answer, render_reload, render_reload_changes, render_reload_refused,
    render_reload_request, render_status, render_upgraded,
};
use super::target::Resolved;
use crate::control::client;
use crate::control::protocol::{
    ReloadMode, ReloadOutcome, ReloadReport, Request, Response, StatusReport,
};
use crate::units;

/// Sends `request` to the supervisor `to` and returns the answer (waiting at most `timeout`).
async fn ask(to: &Resolved, request: Request, timeout: Duration) -> Result<Response> {
    Ok(client::request(&to.socket, request, timeout).await?)
}

/// `status --pid`: the supervisor's pid alone.
pub(super) async fn status_pid(to: &Resolved) -> Result<ExitCode> {
    match ask(to, Request::Status { app: None }, Duration::from_secs(60)).await? {
        Response::Status(report) => {
            println!("{}", report.supervisor.pid);
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `status`: the supervisor's report and the jobs of its cron backend.
pub(super) async fn status(to: &Resolved, app: Option<String>, json: bool) -> Result<ExitCode> {
    let report = match client::request(&to.socket, Request::Status { app }, Duration::from_secs(10))
        .await?
    {
        Response::Status(report) => report,
        Response::Error { message } => bail!("status refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    // The jobs live in the cron backend, shared by every host: read it here, not in the daemon,
    // which must never wait on Redis. Unreachable backend: status still answers, and says so.
    let (jobs, topology) = match &to.config {
        Some(config) => (
            jobs::for_status(config).await,
            jobs::topology_for_status(config).await,
        ),
        None => (Ok(Vec::new()), None),
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["jobs"] = match &jobs {
            Ok(j) => serde_json::to_value(j)?,
            Err(e) => serde_json::json!({ "error": e }),
        };
        if let Some(t) = &topology {
            v["cron_backend"] = jobs::topology_json(t)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&report));
        match jobs {
            Ok(j) if j.is_empty() => {}
            Ok(j) => print!("\njobs\n{}", jobs::render(&j)),
            Err(e) => println!("\njobs: {e}"),
        }
        if let Some(t) = &topology {
            print!("\n{}", jobs::render_topology("cron backend: ", t));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `reload` (`request`, a [`Request::Reload`]): exits 1 if any app's reload was aborted, or
/// rolled back when that was not what was asked.
pub(super) async fn reload(
    socket: &Path,
    request: Request,
    json: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let (wait, mode) = match &request {
        Request::Reload { wait, mode, .. } => (*wait, *mode),
        _ => (true, ReloadMode::Rolling),
    };
    match client::request(socket, request, timeout).await? {
        Response::Reload { reports } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else if wait {
                if let Some(changes) = render_reload_changes(&reports) {
                    print!("{changes}");
                }
                match render_reload_refused(&reports) {
                    Some(refused) => print!("{refused}"),
                    None => {
                        for r in &reports {
                            print!("{}", render_reload(r));
                        }
                    }
                }
            } else {
                for r in &reports {
                    print!("{}", render_reload_request(r));
                }
            }
            let failed = |r: &&ReloadReport| match r.outcome {
                ReloadOutcome::Aborted => true,
                ReloadOutcome::RolledBack => mode != ReloadMode::Rollback,
                _ => false,
            };
            Ok(if reports.iter().any(|r| failed(&r)) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Response::Error { message } => bail!("reload refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `restart`, `scale`, `stop APP`, `start APP` and `reset`: one request, its answer printed.
pub(super) async fn answer(
    to: &Resolved,
    request: Request,
    json: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let answer = ask(to, request, timeout).await?;
    print_answer(&answer, json)
}

/// `stop`: waits for the answer (every worker gone), then for the supervisor's process to exit.
pub(super) async fn stop(socket: &Path, json: bool, timeout: Duration) -> Result<ExitCode> {
    // The pid first: the answer comes when every worker is gone, and the process
    // still finishes its [[job]] commands and lease releases after that.
    let pid = match client::request(
        socket,
        Request::Status { app: None },
        Duration::from_secs(10),
    )
    .await
    {
        Ok(Response::Status(report)) => Some(report.supervisor.pid),
        _ => None,
    };
    let started = std::time::Instant::now();
    let answer = client::request(socket, Request::Stop, timeout).await?;
    if let (Some(pid), Response::Stopped) = (pid, &answer) {
        wait_exited(pid, timeout.saturating_sub(started.elapsed())).await?;
    }
    print_answer(&answer, json)
}

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
                units::span(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints the answer to `restart`, `scale`, `stop`, `stop APP`, `start APP` or `reset`; an
/// error answer is an error.
fn print_answer(answer: &Response, json: bool) -> Result<ExitCode> {
    if let Response::Error { message } = answer {
        bail!("{message}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    match render_answer(answer) {
        Some(text) => print!("{text}"),
        None => bail!("unexpected answer: {answer:?}"),
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
pub(super) async fn upgrade(
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
    print!("{}", render_upgraded(&before, &after));
    Ok(ExitCode::SUCCESS)
}
