//! `supervisor jobs`: list the cluster-once cron jobs, show one job's history, or run one now;
//! and the jobs section of `status`. Reads the cron backend through
//! [`crate::jobs`] (never the daemon, which must not wait on Redis) and renders its
//! answers as tables or JSON.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::args::JobsCmd;
use crate::config::endpoints_of;
use crate::control::client;
use crate::control::protocol::Request;
use crate::jobs::{self as registry, JobView};

/// Deadline for one backend call of `status`/`jobs`.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// The cron backend named by the config file.
fn backend(config: &Path) -> Result<cronlock::Backend> {
    let url = endpoints_of(config)?.cron_url;
    cronlock::Backend::from_url(&url)
        .with_context(|| format!("cron backend of {}", config.display()))
}

/// The jobs for `status`, or why they cannot be read: an unreachable backend does not fail
/// `status`, which says so instead.
pub(super) async fn for_status(config: &Path) -> Result<Vec<JobView>, String> {
    match backend(config) {
        Ok(b) => registry::collect(&b, BACKEND_TIMEOUT)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `jobs [list | history NAME | run NAME]`; a manual run that did not succeed exits 1.
pub(super) async fn run(config: &Path, json: bool, action: JobsCmd) -> Result<ExitCode> {
    let backend = backend(config)?;
    match action {
        JobsCmd::List => {
            let list = registry::collect(&backend, BACKEND_TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", registry::render(&list));
            }
        }
        JobsCmd::History { name, n } => {
            let runs = registry::history(&backend, &name, n, BACKEND_TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", registry::render_history(&runs));
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
            let (id, record) = registry::run_now(&backend, &name, wait).await?;
            if json {
                println!("{}", serde_json::json!({ "request": id, "run": record }));
            } else if let Some(r) = &record {
                print!("{}", registry::render_history(std::slice::from_ref(r)));
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
