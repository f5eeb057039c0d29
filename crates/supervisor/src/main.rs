//! `supervisor` binary: parse the command line, set up logging, install the signal handlers for
//! `start`, run the library, print the error chain once, and exit with its code.

use std::process::ExitCode;

use futures_util::StreamExt;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use supervisor::Command;
use supervisor::cli::{Cmd, LogFormat};
use tokio::sync::mpsc;

fn main() -> ExitCode {
    let cli = supervisor::cli::parse();
    // Only the supervisor itself logs; a client command prints its answer and, on failure, the
    // error below (RUST_LOG=... still turns its logs on, for debugging).
    if !matches!(cli.command, Cmd::Start { detach: false, .. }) {
        // A client command whose output is piped into `head` ends quietly when the pipe closes,
        // like any Unix tool (Rust ignores SIGPIPE, and println! would panic on EPIPE); so does
        // `start -d`, a client of the supervisor it starts. The supervisor itself keeps
        // ignoring it: a worker's closed pipe must not kill it.
        // SAFETY: setting a signal's disposition to the default before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Cmd::Start { log_format, .. } => init_tracing(log_format, "info"),
        _ if std::env::var_os("RUST_LOG").is_some() => init_tracing(LogFormat::Text, "off"),
        _ => {}
    }
    match supervisor::cli::run(cli, install_signals) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (under `start -d`, to `supervisor.log`, rotated: `logs::own`),
/// each line with an RFC 3339 timestamp (UTC), as text or one JSON object per line.
fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| supervisor::LogWriter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// SIGHUP -> reload, SIGUSR1 -> reopen the log files, SIGUSR2 -> upgrade in place, SIGTERM -> stop, SIGINT -> stop (a second SIGINT: fast stop), SIGCHLD ->
/// reap adopted orphans (workers are watched through their pidfds, not through SIGCHLD). Called
/// by `start` inside the runtime, before anything is bound or started.
fn install_signals() -> std::io::Result<mpsc::Receiver<Command>> {
    let signals =
        signal_hook_tokio::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGCHLD, SIGUSR1, SIGUSR2])?;
    let (tx, rx) = mpsc::channel(16);
    let forward = async move {
        let mut signals = signals;
        let mut interrupts = 0;
        while let Some(sig) = signals.next().await {
            let cmd = match sig {
                SIGHUP => Command::Reload,
                SIGCHLD => Command::ChildExited,
                SIGUSR2 => Command::Upgrade,
                SIGUSR1 => Command::ReopenLogs,
                SIGINT => {
                    interrupts += 1;
                    if interrupts > 1 {
                        Command::FastStop
                    } else {
                        Command::Stop
                    }
                }
                _ => Command::Stop,
            };
            if tx.send(cmd).await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(forward);
    Ok(rx)
}
