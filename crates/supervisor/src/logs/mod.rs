//! Worker output: bytes from a worker's (or a `[[job]]` command's) stdout and stderr pipes, framed
//! into lines ([`lines`]) and logged in the worker's span. Reading never stops before end of file:
//! a pipe nobody reads fills up and blocks the worker in `write()`. [`dir`]: where a
//! supervisor's log files go by default.

pub mod dir;
pub mod lines;

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use lines::LineFramer;

/// The longest line logged whole; the head of a longer one is logged, marked as truncated, and
/// the rest of it is skipped.
pub const MAX_LINE: usize = 16 * 1024;

/// Forwards a worker's (or a `[[job]]` command's) output line by line as log events in the
/// current span, until end of file.
pub(crate) async fn forward_output(fd: OwnedFd) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut framer = LineFramer::new(MAX_LINE);
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(target: "worker", "cannot read the output pipe any more: {e}");
                break;
            }
        };
        framer.push(&buf[..n], &mut log_line);
    }
    framer.finish(&mut log_line);
}

/// Logs one line of output at the level it starts with (INFO otherwise).
fn log_line(line: &[u8], truncated: bool) {
    let text = String::from_utf8_lossy(line);
    let (level, text) = split_level(text.trim_end_matches('\r'));
    let note = if truncated {
        " [line longer than 16 KiB: truncated]"
    } else {
        ""
    };
    match level {
        tracing::Level::ERROR => tracing::error!(target: "worker", "{text}{note}"),
        tracing::Level::WARN => tracing::warn!(target: "worker", "{text}{note}"),
        tracing::Level::DEBUG => tracing::debug!(target: "worker", "{text}{note}"),
        tracing::Level::TRACE => tracing::trace!(target: "worker", "{text}{note}"),
        _ => tracing::info!(target: "worker", "{text}{note}"),
    }
}

/// A worker line that starts with its own level (`INFO serving`, ` WARN ...`, `WARNING: ...`: what
/// tracing, env_logger or Python's logging print) is logged at that level without repeating it;
/// any other line at INFO, as it is.
fn split_level(line: &str) -> (tracing::Level, &str) {
    let trimmed = line.trim_start();
    let word_end = trimmed
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let level = match &trimmed[..word_end] {
        "ERROR" | "CRITICAL" | "FATAL" => tracing::Level::ERROR,
        "WARN" | "WARNING" => tracing::Level::WARN,
        "INFO" => tracing::Level::INFO,
        "DEBUG" => tracing::Level::DEBUG,
        "TRACE" => tracing::Level::TRACE,
        _ => return (tracing::Level::INFO, line),
    };
    let rest = &trimmed[word_end..];
    // The level must stand alone: followed by a space, a colon or the end of the line.
    match rest.chars().next() {
        None => (level, rest),
        Some(' ' | ':') => (level, rest.trim_start_matches(':').trim_start()),
        Some(_) => (tracing::Level::INFO, line),
    }
}

#[cfg(test)]
mod tests {
    use super::split_level;
    use tracing::Level;

    #[test]
    fn a_leading_level_is_taken_not_repeated() {
        assert_eq!(split_level(" INFO serving"), (Level::INFO, "serving"));
        assert_eq!(
            split_level(" WARN cron backend unreachable"),
            (Level::WARN, "cron backend unreachable")
        );
        assert_eq!(split_level("ERROR boom"), (Level::ERROR, "boom"));
        assert_eq!(
            split_level("WARNING:root:disk low"),
            (Level::WARN, "root:disk low")
        );
        assert_eq!(split_level("DEBUG"), (Level::DEBUG, ""));
    }

    #[test]
    fn other_lines_stay_as_they_are_at_info() {
        assert_eq!(
            split_level("Example app listening on port 3000"),
            (Level::INFO, "Example app listening on port 3000")
        );
        assert_eq!(split_level("INFORMATION"), (Level::INFO, "INFORMATION"));
        assert_eq!(split_level("Errors: 0"), (Level::INFO, "Errors: 0"));
        assert_eq!(split_level("WARN-ish"), (Level::INFO, "WARN-ish"));
        assert_eq!(split_level(""), (Level::INFO, ""));
    }
}
