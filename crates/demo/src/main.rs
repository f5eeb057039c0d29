//! `demo-app`: the seeds' Express app on the worker library. `GET /heavy` does the seeds'
//! CPU-bound loop, `GET /` names the process, `GET /healthz` answers `ok`. One event loop per
//! process, like Node: scale it with `supervisor` (instances), not with threads.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::routing::get;

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

fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/heavy", get(heavy))
        .route("/healthz", get(|| async { "ok\n" }))
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
    worker::run(listeners, router(), shutdown).await?;
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
