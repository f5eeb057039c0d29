//! `logs [APP|WORKER] [-f] [--lines N] [--err|--out] [--since T] [--json]`, `flush [APP]` and
//! `reopen-logs`: the last lines come from the supervisor's ring per app, or from the files when
//! the ring no longer holds as many (the files are read here, by the client, never by the
//! supervisor); `-f` then prints every new line as the control socket streams it, saying on
//! stderr how many a slow terminal lost.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::net::UnixStream;

use crate::control::client::{self, ClientError};
use crate::control::protocol::{self, LogLine, Request, Response, Stream};

/// What `logs` asks.
#[derive(Debug, Clone)]
pub(super) struct LogsArgs {
    /// An app or a worker.
    pub(super) target: Option<String>,
    /// How many of the last lines.
    pub(super) lines: usize,
    /// Only one stream.
    pub(super) stream: Option<Stream>,
    /// Only lines since (Unix milliseconds).
    pub(super) since_ms: Option<i64>,
    /// Keep printing new lines.
    pub(super) follow: bool,
    /// One JSON object per line.
    pub(super) json: bool,
}

/// `--since`: a duration back from now (`10m`) or a time (`2024-05-01T10:00:00Z`), as Unix
/// milliseconds.
pub(super) fn parse_since(text: &str) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        let now = chrono::Utc::now().timestamp_millis();
        return Ok(now - i64::try_from(d.as_millis()).unwrap_or(i64::MAX).min(now));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!("{text:?} is neither a duration (\"10m\") nor an RFC 3339 time (\"2024-05-01T10:00:00Z\")")
        })
}

/// `logs`.
pub(super) async fn logs(socket: &Path, args: LogsArgs) -> Result<ExitCode> {
    let request = Request::Logs {
        target: args.target.clone(),
        lines: args.lines,
        stream: args.stream,
        since_ms: args.since_ms,
        follow: args.follow,
    };
    let io = |cause| ClientError::Io {
        path: socket.to_path_buf(),
        cause,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|cause| client::connect_error(socket, cause))?;
    let mut conn = protocol::framed(stream);
    protocol::send(&mut conn, &request).await.map_err(io)?;
    let first = tokio::time::timeout(Duration::from_secs(10), protocol::recv(&mut conn))
        .await
        .map_err(|_| ClientError::Timeout {
            path: socket.to_path_buf(),
            timeout: Duration::from_secs(10),
        })?
        .map_err(io)?;
    let mut out = std::io::stdout().lock();
    match first {
        Some(Response::Logs {
            lines,
            files,
            complete,
        }) => {
            let from_files = (!complete && args.since_ms.is_none())
                .then(|| file_tail(&files, &args))
                .flatten();
            match from_files {
                Some(text) => text
                    .iter()
                    .try_for_each(|l| print_raw(&mut out, l, &args))?,
                None => lines
                    .iter()
                    .try_for_each(|l| print_line(&mut out, l, &args))?,
            }
            out.flush()?;
        }
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer: {other:?}"),
        None => bail!("{}", ClientError::NoAnswer(socket.to_path_buf())),
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        match protocol::recv::<Response>(&mut conn).await.map_err(io)? {
            Some(Response::LogLines { lines, lost }) => {
                if lost > 0 {
                    eprintln!("[logs] {lost} lines lost: this terminal reads too slowly");
                }
                lines
                    .iter()
                    .try_for_each(|l| print_line(&mut out, l, &args))?;
                out.flush()?;
            }
            Some(other) => bail!("unexpected answer: {other:?}"),
            // The supervisor stopped.
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print_line(out: &mut impl Write, line: &LogLine, args: &LogsArgs) -> std::io::Result<()> {
    if args.json {
        let text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        writeln!(out, "{text}")
    } else {
        out.write_all(line.render().as_bytes())
    }
}

fn print_raw(out: &mut impl Write, line: &str, args: &LogsArgs) -> std::io::Result<()> {
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "raw": line }))
    } else {
        writeln!(out, "{line}")
    }
}

/// The last lines `args` asks for from the files (`None` when none can be read).
fn file_tail(files: &[PathBuf], args: &LogsArgs) -> Option<Vec<String>> {
    let mut all: Vec<String> = Vec::new();
    let mut read_any = false;
    for f in files {
        let Some(text) = read_tail(f, 8 << 20) else {
            continue;
        };
        read_any = true;
        all.extend(text.lines().filter(|l| wanted(l, args)).map(str::to_string));
    }
    if !read_any {
        return None;
    }
    if files.len() > 1 {
        // Two files (stdout and stderr apart): in time order, by the leading timestamp.
        all.sort();
    }
    let skip = all.len().saturating_sub(args.lines);
    Some(all.split_off(skip))
}

/// Whether a file line (`STAMP WORKER[PID] out|err LEVEL TEXT`) is of the worker and stream
/// asked for.
fn wanted(line: &str, args: &LogsArgs) -> bool {
    let Some((worker, stream)) = parse_file_line(line) else {
        return args.target.is_none() && args.stream.is_none();
    };
    let worker_ok = match &args.target {
        Some(t) if t.contains('.') => worker == t,
        Some(app) => worker.rsplit_once('.').is_some_and(|(a, _)| a == app),
        None => true,
    };
    worker_ok && args.stream.is_none_or(|s| s.as_str() == stream)
}

/// The worker and stream of a file line.
fn parse_file_line(line: &str) -> Option<(&str, &str)> {
    for (at, _) in line.match_indices("] ") {
        let rest = &line[at + 2..];
        let stream = ["out ", "err "].into_iter().find(|s| rest.starts_with(s))?;
        let open = line[..at].rfind('[')?;
        let pid = &line[open + 1..at];
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let start = line[..open].rfind(' ').map_or(0, |i| i + 1);
        return Some((&line[start..open], stream.trim_end()));
    }
    None
}

/// The last `max` bytes of a file, from its first whole line.
fn read_tail(path: &Path, max: u64) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start == 0 {
        return Some(text);
    }
    Some(
        text.split_once('\n')
            .map_or(String::new(), |(_, r)| r.to_string()),
    )
}

/// `flush [APP]`.
pub(super) async fn flush(socket: &Path, app: Option<String>, json: bool) -> Result<ExitCode> {
    match client::request(socket, Request::Flush { app }, Duration::from_secs(30)).await? {
        Response::Flushed { files } => {
            if json {
                println!("{}", serde_json::json!({ "flushed": files }));
            } else if files.is_empty() {
                println!("no log file to empty");
            } else {
                for f in files {
                    println!("emptied {}", f.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("flush refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `reopen-logs`.
pub(super) async fn reopen(socket: &Path, json: bool) -> Result<ExitCode> {
    match client::request(socket, Request::ReopenLogs, Duration::from_secs(30)).await? {
        Response::Reopened { files } => {
            if json {
                println!("{}", serde_json::json!({ "reopened": files }));
            } else {
                println!("log files reopened ({files} were open)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("reopen-logs refused: {message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Option<&str>, stream: Option<Stream>) -> LogsArgs {
        LogsArgs {
            target: target.map(str::to_string),
            lines: 10,
            stream,
            since_ms: None,
            follow: false,
            json: false,
        }
    }

    #[test]
    fn file_lines_are_filtered_by_worker_and_stream() {
        let line = "2024-05-01T10:00:00.007Z web.0[42] err WARN oops [x] out y";
        assert_eq!(parse_file_line(line), Some(("web.0", "err")));
        assert_eq!(
            parse_file_line("2024-05-01 10:00 api.12[7] out INFO hi"),
            Some(("api.12", "out"))
        );
        assert!(wanted(line, &args(Some("web"), None)));
        assert!(wanted(line, &args(Some("web.0"), Some(Stream::Err))));
        assert!(!wanted(line, &args(Some("web.1"), None)));
        assert!(!wanted(line, &args(Some("api"), None)));
        assert!(!wanted(line, &args(None, Some(Stream::Out))));
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        assert_eq!(parse_since("2024-05-01T10:00:00Z"), Ok(1_714_557_600_000));
        let ten_min = parse_since("10m").unwrap_or_default();
        let now = chrono::Utc::now().timestamp_millis();
        assert!((now - 600_000 - 1000..=now - 600_000).contains(&ten_min));
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn the_tail_of_a_file_starts_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f.log");
        std::fs::write(&p, "first line\nsecond\nthird\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_tail(&p, 12).as_deref(), Some("third\n"));
        assert_eq!(
            read_tail(&p, 1000).as_deref(),
            Some("first line\nsecond\nthird\n")
        );
    }
}
