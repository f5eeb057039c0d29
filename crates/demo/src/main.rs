//! `demo-app`: the seeds' Express app on the worker library. `GET /heavy` does the seeds'
//! CPU-bound loop, `GET /` names the process, `GET /healthz` answers `ok`, and
//! `POST /tasks/report` is a target for a supervisor `[[job]] http`: it logs the
//! `Supervisor-Job-*` headers and answers 200 (400 when they are missing). One event loop per
//! process, like Node: scale it with `supervisor` (instances), not with threads.
//!
//! Two sample cron jobs run in every worker, each tick once across the cluster:
//! - `heartbeat`, every second: logs its tick and fencing token and, if `DEMO_JOB_LOG` names a
//!   file, appends `tick token host pid` to it (a downstream write that carries the token);
//! - `slow-report`, every 20 s: works 5 s under a 2 s lease, so the lease is renewed while it runs.
//!
//! `DEMO_JOBS=off` disables both; under a supervisor they run only when the app has
//! `cron_backend = true` (else the supervisor hands over no backend, and they are left out).

use std::net::SocketAddr;
use std::process::ExitCode;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use cronlock::{Job, JobContext, JobSpec};

/// The seeds' loop: 5,000,000 increments the optimizer may not fold away.
fn heavy_work() -> u64 {
    let mut total: u64 = 0;
    for _ in 0..5_000_000u32 {
        total = std::hint::black_box(total + 1);
    }
    total
}

async fn heavy() -> String {
    format!("The result of the CPU intensive task is {}\n", heavy_work())
}

async fn index() -> String {
    let generation = std::env::var("SUPERVISOR_GENERATION").unwrap_or_else(|_| "-".into());
    let worker = std::env::var("SUPERVISOR_WORKER_NAME").unwrap_or_else(|_| "standalone".into());
    format!(
        "demo-app pid={} generation={generation} worker={worker}\n",
        std::process::id()
    )
}

/// `POST /tasks/report`: what a supervisor `[[job]] http` calls once per tick.
async fn task_report(headers: HeaderMap) -> (StatusCode, String) {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match (
        h("supervisor-job-name"),
        h("supervisor-job-tick"),
        h("supervisor-job-token"),
    ) {
        (Some(job), Some(tick), Some(token)) => {
            tracing::info!(%job, %tick, %token, "task report");
            (StatusCode::OK, format!("reported {job} {tick} {token}\n"))
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "missing Supervisor-Job-Name/-Tick/-Token headers\n".into(),
        ),
    }
}

fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/heavy", get(heavy))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/tasks/report", post(task_report))
}

/// `heartbeat`: record the tick, with its token, where a downstream reader can check it.
async fn heartbeat(ctx: JobContext) -> Result<(), String> {
    tracing::info!(tick = %ctx.tick_id, token = ctx.token, "heartbeat");
    if let Ok(path) = std::env::var("DEMO_JOB_LOG") {
        let host = cronlock::Identity::current().host;
        let line = format!(
            "{} {} {host} {}\n",
            ctx.tick_id,
            ctx.token,
            std::process::id()
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        // One write(2) of a short line with O_APPEND: lines from many processes never interleave.
        f.write_all(line.as_bytes())
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// `slow-report`: longer than its lease, stops early if the lease is lost or on drain.
async fn slow_report(ctx: JobContext) -> Result<(), String> {
    tracing::info!(tick = %ctx.tick_id, token = ctx.token, "slow report started");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::info!(token = ctx.token, "slow report done");
            Ok(())
        }
        _ = ctx.cancel.cancelled() => Err("cancelled: lease lost or shutting down".into()),
    }
}

fn jobs() -> anyhow::Result<Vec<Job>> {
    if std::env::var("DEMO_JOBS").is_ok_and(|v| v == "off") {
        return Ok(vec![]);
    }
    if !worker::cron::backend_available() {
        tracing::info!(
            "no cron backend handed over (add `cron_backend = true` to this app in the \
             supervisor's config): the sample jobs do not run"
        );
        return Ok(vec![]);
    }
    Ok(vec![
        Job::new(
            JobSpec::new("heartbeat", "* * * * * *").lease_ttl(Duration::from_secs(5)),
            heartbeat,
        ),
        Job::new(
            JobSpec::new("slow-report", "*/20 * * * * *").lease_ttl(Duration::from_secs(2)),
            slow_report,
        ),
    ])
}

fn listen_arg() -> anyhow::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:3000".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "-h" | "--help" => {
                println!(
                    "usage: demo-app [--listen HOST:PORT]  (ignored when sockets are inherited via LISTEN_FDS)"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not a HOST:PORT address"))
}

async fn run() -> anyhow::Result<()> {
    let fallback = listen_arg()?;
    let shutdown = worker::signals::shutdown_on_signals()?;
    let listeners = worker::listeners::take_or_bind(fallback)?;
    worker::run(listeners, router(), jobs()?, shutdown).await?;
    Ok(())
}

fn main() -> ExitCode {
    worker::init_tracing();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_counts_like_the_seed() {
        assert_eq!(heavy_work(), 5_000_000);
    }
}
