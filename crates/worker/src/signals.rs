//! Shutdown on `SIGTERM`/`SIGINT`: a `CancellationToken` the application's `main` creates once and
//! passes to the server and the scheduler (the library never installs handlers by itself).

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

/// Installs handlers for `SIGTERM` and `SIGINT`; the token is cancelled at the first of them.
/// Must be called inside a tokio runtime.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if let Some(sig) = signals.next().await {
            tracing::info!(signal = sig, "shutdown requested: draining");
            t.cancel();
        }
    });
    Ok(token)
}
