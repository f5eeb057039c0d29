//! `supervisor jobs`: list the cluster-once cron jobs, show one job's history, or run one now;
//! and the jobs section of `status`. Reads the cron backend through
//! [`crate::jobs::registry`] (never the daemon, which must not wait on Redis) and renders its
//! answers as tables or JSON.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use cronlock::RunRecord;

use super::args::JobsCmd;
use super::table::Table;
use crate::config::endpoints_of;
use crate::control::client;
use crate::control::protocol::Request;
use crate::jobs::registry::{self, JobView};
use crate::units;

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

/// The topology and health of the Redis deployment behind `url` (one server, Sentinel or
/// Cluster), read within [`BACKEND_TIMEOUT`]; `None` for a local state directory, which has
/// none (and is not created by asking).
pub(super) async fn topology(url: &str) -> Option<Result<cronlock::Topology, String>> {
    if url.trim_start().starts_with("file://") {
        return None;
    }
    let b = match cronlock::Backend::from_url(url) {
        Ok(b) => b,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(
        tokio::time::timeout(BACKEND_TIMEOUT, b.topology())
            .await
            .map_err(|_| {
                format!(
                    "cron backend {}: no answer within {}",
                    b.describe(),
                    units::span(BACKEND_TIMEOUT)
                )
            }),
    )
}

/// The topology for `status` (the backend of the supervisor's config file).
pub(super) async fn topology_for_status(
    config: &Path,
) -> Option<Result<cronlock::Topology, String>> {
    match endpoints_of(config) {
        Ok(e) => topology(&e.cron_url).await,
        Err(e) => Some(Err(e.to_string())),
    }
}

/// A topology after `heading`: the backend on the heading's line, then its nodes and problems.
/// The failovers this CLI process saw (none) are left out: the supervisor's own count is in
/// its metrics.
pub(super) fn render_topology(heading: &str, t: &Result<cronlock::Topology, String>) -> String {
    match t {
        Ok(t) => {
            let text = t.to_string();
            let nodes: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
            format!(
                "{heading}{} (min_replicas_ack {})\n{nodes}",
                t.backend, t.min_replicas_ack
            )
        }
        Err(e) => format!("{heading}{e}\n"),
    }
}

/// A topology as JSON, without the failovers this CLI process saw (see [`render_topology`]).
pub(super) fn topology_json(
    t: &Result<cronlock::Topology, String>,
) -> serde_json::Result<serde_json::Value> {
    Ok(match t {
        Ok(t) => {
            let mut v = serde_json::to_value(t)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("failovers_seen");
            }
            v
        }
        Err(e) => serde_json::json!({ "error": e }),
    })
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
                print!("{}", render(&list));
            }
        }
        JobsCmd::History { name, n } => {
            let runs = registry::history(&backend, &name, n, BACKEND_TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", render_history(&runs));
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
                print!("{}", render_history(std::slice::from_ref(r)));
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

/// How long ago `t` was, for people.
fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_milliseconds() as f64 / 1000.0;
    format!("{} ago", units::duration(secs))
}

/// The jobs table.
pub(super) fn render(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no cron jobs registered (workers, and supervisors with [[job]] tables, register theirs when they start)\n".into();
    }
    let mut t = Table::new(&["job", "schedule", "next tick", "last run", "running"]);
    for j in jobs {
        let schedule = format!("{} {}", j.meta.schedule, j.meta.timezone);
        let next = j
            .next_tick
            .map(|n| {
                let secs = (n - Utc::now()).num_milliseconds() as f64 / 1000.0;
                // The time alone within a day; the date too beyond it.
                let at = if secs < 86_400.0 {
                    n.format("%H:%M:%S")
                } else {
                    n.format("%Y-%m-%d %H:%M:%S")
                };
                format!("{at} (in {})", units::duration(secs))
            })
            .unwrap_or_else(|| "-".into());
        let last = j
            .last_run
            .as_ref()
            .map(|r| {
                format!(
                    "{} {} on {}:{} token {} in {}, {}",
                    r.outcome,
                    r.tick,
                    r.host,
                    r.pid,
                    r.token.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    units::duration(r.duration_ms as f64 / 1000.0),
                    ago(r.started_at)
                )
            })
            .unwrap_or_else(|| "-".into());
        let running = j
            .holder
            .as_ref()
            .map(|h| {
                format!(
                    "{}:{} token {} since {}",
                    h.host,
                    h.pid,
                    h.token,
                    ago(h.started_at)
                )
            })
            .unwrap_or_else(|| "-".into());
        t.row(vec![j.meta.name.clone(), schedule, next, last, running]);
    }
    t.to_string()
}

/// The last `n` runs of one job.
pub(super) fn render_history(runs: &[RunRecord]) -> String {
    let mut t = Table::new(&[
        "tick", "outcome", "host", "pid", "token", "started", "duration", "error",
    ]);
    for r in runs {
        t.row(vec![
            r.tick.clone(),
            r.outcome.to_string(),
            r.host.clone(),
            r.pid.to_string(),
            r.token.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            r.started_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            units::duration(r.duration_ms as f64 / 1000.0),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lists_each_run_and_no_jobs_says_who_registers_them() {
        let started_at = DateTime::parse_from_rfc3339("2026-11-30T02:30:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let runs = [
            RunRecord {
                job: "report".into(),
                tick: "2026-11-30T02:30:00Z".into(),
                host: "vm1".into(),
                pid: 42,
                token: Some(7),
                started_at,
                duration_ms: 1500,
                outcome: cronlock::Outcome::Failed,
                error: Some("exit status 2".into()),
            },
            RunRecord {
                job: "report".into(),
                tick: "2026-11-30T02:29:00Z".into(),
                host: "vm2".into(),
                pid: 9,
                token: None,
                started_at,
                duration_ms: 0,
                outcome: cronlock::Outcome::Missed,
                error: None,
            },
        ];
        assert_eq!(
            render_history(&runs),
            "tick                  outcome  host  pid  token  started                   duration  error\n\
             2026-11-30T02:30:00Z  failed   vm1   42   7      2026-11-30T02:30:00.250Z  1.5s      exit status 2\n\
             2026-11-30T02:29:00Z  missed   vm2   9    -      2026-11-30T02:30:00.250Z  0 ms\n"
        );
        assert!(render(&[]).starts_with("no cron jobs registered"));
    }
}
