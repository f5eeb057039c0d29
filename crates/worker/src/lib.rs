//! What a Rust worker under `supervisor` uses: take the inherited listeners ([`listeners`]),
//! report readiness ([`ready`]), serve an axum `Router` and drain without client errors on
//! `SIGTERM` ([`serve`], [`signals`]), and run cluster-once cron jobs next to it ([`cron`]).
//!
//! ```no_run
//! # async fn demo(router: axum::Router) -> Result<(), worker::Error> {
//! let shutdown = worker::signals::shutdown_on_signals()?; // in main: the only signal handlers
//! let listeners = worker::listeners::take_or_bind("127.0.0.1:3000".parse().unwrap())?;
//! worker::run(listeners, router, vec![], shutdown).await?; // vec![]: no cron jobs
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod cron;
pub mod listeners;
pub mod ready;
pub mod serve;
pub mod signals;

use tokio_util::sync::CancellationToken;

pub use serve::{DrainOptions, DrainReport};

/// A worker could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listener problem.
    #[error(transparent)]
    Listener(#[from] listeners::ListenerError),
    /// Readiness or signal setup failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A cron job is invalid (bad expression, unknown timezone) or the backend URL is.
    #[error(transparent)]
    Cron(#[from] cronlock::Error),
}

/// Serves `router` on `listeners` and runs `jobs` (cluster-once, see [`cron`]); reports READY
/// once the accept loops run; on `shutdown` drains both (see [`serve`]). Returns when the drain
/// is over. Invalid jobs fail here, before READY, so a reload to a broken version is aborted.
pub async fn run(
    listeners: Vec<listeners::NamedListener>,
    router: axum::Router,
    jobs: Vec<cronlock::Job>,
    shutdown: CancellationToken,
) -> Result<DrainReport, Error> {
    let opts = DrainOptions::from_env();
    let scheduler = cron::spawn(jobs, shutdown.clone(), opts.deadline)?;
    for l in &listeners {
        tracing::info!(listener = %l.name, inherited = l.inherited, "serving");
    }
    let server = tokio::spawn(serve::serve(listeners, router, shutdown, opts));
    ready::notify_ready()?;
    let watchdog = ready::spawn_watchdog();
    let report = server
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(s) = scheduler {
        match s.await {
            // The scheduler logged its counters itself when it stopped.
            Ok(_stats) => {}
            Err(e) => tracing::warn!("cron scheduler task failed: {e}"),
        }
    }
    Ok(report)
}

/// Logging for a worker: text to stderr; without timestamps under the supervisor, which adds its
/// own and prefixes each line with the worker's name and pid; JSON if `SUPERVISOR_LOG_FORMAT=json`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let supervised = std::env::var_os("SUPERVISOR_WORKER_ID").is_some();
    if std::env::var("SUPERVISOR_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else if supervised {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
