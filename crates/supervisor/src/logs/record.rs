//! One line of a worker's output as the supervisor keeps it ([`Record`]: who wrote it, on which
//! stream, when, at which level), its wire form for `logs` ([`LogLine`]), and its text form in a
//! log file (`2024-05-01T10:00:00.123Z web.0[4242] err WARN text`), with the timestamp in the
//! app's `log_date_format` (strftime; default RFC 3339 in UTC with milliseconds).

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The default `log_date_format`: RFC 3339, UTC, milliseconds.
pub const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

impl Stream {
    /// `out` or `err`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

/// A line's level: its own (`ERROR ...`, `WARNING: ...`), else INFO on stdout and WARN on
/// stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Errors.
    Error,
    /// Warnings (and stderr lines without a level).
    Warn,
    /// Information (and stdout lines without a level).
    Info,
    /// Debugging.
    Debug,
    /// Tracing.
    Trace,
}

impl Level {
    /// `ERROR`, `WARN`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

/// Who writes: one worker process (shared by all its lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The app.
    pub app: String,
    /// The worker (`web.0`).
    pub worker: String,
    /// Its pid.
    pub pid: i32,
}

/// One line of output (or a note of the supervisor's about the output, such as lines dropped).
#[derive(Debug, Clone)]
pub struct Record {
    /// Its place among every line the supervisor read (a follower that already has the tail
    /// skips what it holds).
    pub seq: u64,
    /// Who wrote it.
    pub tag: Arc<Tag>,
    /// Which pipe.
    pub stream: Stream,
    /// Its level.
    pub level: Level,
    /// When it was read.
    pub time: SystemTime,
    /// The text, without its level word and newline.
    pub text: String,
}

impl Record {
    /// The wire form.
    pub fn to_line(&self) -> LogLine {
        LogLine {
            app: self.tag.app.clone(),
            worker: self.tag.worker.clone(),
            pid: self.tag.pid,
            stream: self.stream,
            level: self.level,
            time: unix_secs(self.time),
            text: self.text.clone(),
        }
    }
}

/// A line as `logs --json` prints it and the control socket carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// The app.
    pub app: String,
    /// The worker (`web.0`).
    pub worker: String,
    /// Its pid.
    pub pid: i32,
    /// `out` or `err`.
    pub stream: Stream,
    /// Its level.
    pub level: Level,
    /// When it was read (Unix seconds).
    pub time: f64,
    /// The text.
    pub text: String,
}

impl LogLine {
    /// The line as a log file has it, with an RFC 3339 timestamp.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(self.time.max(0.0));
        let mut stamp = Stamper::new(DEFAULT_DATE_FORMAT);
        write_line(
            &mut out,
            &mut stamp,
            time,
            (&self.worker, self.pid),
            self.stream,
            self.level,
            &self.text,
        );
        out
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Whether `format` is a strftime format chrono can render (what the config checks).
pub fn valid_date_format(format: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    !StrftimeItems::new(format).any(|i| matches!(i, Item::Error))
}

/// Formats timestamps in one format; the default one is cached per second (a flood writes
/// thousands of lines in the same second).
#[derive(Debug)]
pub struct Stamper {
    format: String,
    default: bool,
    /// The second cached, and its text up to the seconds.
    cached: Option<(u64, String)>,
}

impl Stamper {
    /// A stamper for `format` (strftime).
    pub fn new(format: &str) -> Stamper {
        Stamper {
            format: format.to_string(),
            default: format == DEFAULT_DATE_FORMAT,
            cached: None,
        }
    }

    /// Appends `time` in the format to `out`.
    pub fn write(&mut self, out: &mut String, time: SystemTime) {
        use std::fmt::Write;
        if !self.default {
            let dt: chrono::DateTime<chrono::Utc> = time.into();
            let _ = write!(out, "{}", dt.format(&self.format));
            return;
        }
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        if self.cached.as_ref().is_none_or(|(s, _)| *s != secs) {
            let dt: chrono::DateTime<chrono::Utc> = time.into();
            self.cached = Some((secs, dt.format("%Y-%m-%dT%H:%M:%S").to_string()));
        }
        if let Some((_, prefix)) = &self.cached {
            out.push_str(prefix);
        }
        let ms = since.subsec_millis();
        out.push('.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push('Z');
    }
}

/// Appends one file line: `STAMP WORKER[PID] out|err LEVEL TEXT\n` (no stamp and no space for
/// an empty format).
pub fn write_line(
    out: &mut String,
    stamp: &mut Stamper,
    time: SystemTime,
    (worker, pid): (&str, i32),
    stream: Stream,
    level: Level,
    text: &str,
) {
    // Pushed piece by piece: this runs for every line of a flood (the formatting machinery
    // cost a third of the writer's time).
    if !stamp.format.is_empty() {
        stamp.write(out, time);
        out.push(' ');
    }
    out.push_str(worker);
    out.push('[');
    push_int(out, pid);
    out.push_str("] ");
    out.push_str(stream.as_str());
    out.push(' ');
    out.push_str(level.as_str());
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

/// Appends `n` in decimal.
fn push_int(out: &mut String, n: i32) {
    if n < 0 {
        out.push('-');
    }
    let mut n = n.unsigned_abs();
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// A line that starts with its own level (`INFO serving`, ` WARN ...`, `WARNING: ...`: what
/// tracing, env_logger or Python's logging print) has that level, without repeating it; any
/// other line has `default`, as it is.
pub fn split_level(line: &str, default: Level) -> (Level, &str) {
    let trimmed = line.trim_start();
    let word_end = trimmed
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let level = match &trimmed[..word_end] {
        "ERROR" | "CRITICAL" | "FATAL" => Level::Error,
        "WARN" | "WARNING" => Level::Warn,
        "INFO" => Level::Info,
        "DEBUG" => Level::Debug,
        "TRACE" => Level::Trace,
        _ => return (default, line),
    };
    let rest = &trimmed[word_end..];
    // The level must stand alone: followed by a space, a colon or the end of the line.
    match rest.chars().next() {
        None => (level, rest),
        Some(' ' | ':') => (level, rest.trim_start_matches(':').trim_start()),
        Some(_) => (default, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_leading_level_is_taken_not_repeated() {
        let i = Level::Info;
        assert_eq!(split_level(" INFO serving", i), (Level::Info, "serving"));
        assert_eq!(
            split_level(" WARN cron backend unreachable", i),
            (Level::Warn, "cron backend unreachable")
        );
        assert_eq!(split_level("ERROR boom", i), (Level::Error, "boom"));
        assert_eq!(
            split_level("WARNING:root:disk low", i),
            (Level::Warn, "root:disk low")
        );
        assert_eq!(split_level("DEBUG", i), (Level::Debug, ""));
    }

    #[test]
    fn other_lines_stay_as_they_are_at_the_default_level() {
        let i = Level::Info;
        assert_eq!(
            split_level("Example app listening on port 3000", i),
            (Level::Info, "Example app listening on port 3000")
        );
        assert_eq!(split_level("INFORMATION", i), (Level::Info, "INFORMATION"));
        assert_eq!(split_level("Errors: 0", i), (Level::Info, "Errors: 0"));
        assert_eq!(split_level("WARN-ish", i), (Level::Info, "WARN-ish"));
        assert_eq!(split_level("", i), (Level::Info, ""));
        // A Python traceback on stderr is a warning, not information.
        assert_eq!(
            split_level("TypeError: unsupported operand", Level::Warn),
            (Level::Warn, "TypeError: unsupported operand")
        );
    }

    fn at(secs: u64, ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn file_lines_carry_the_stamp_the_worker_and_its_pid() {
        let mut s = Stamper::new(DEFAULT_DATE_FORMAT);
        let mut out = String::new();
        let t = at(1_714_557_600, 7);
        write_line(
            &mut out,
            &mut s,
            t,
            ("web.0", 42),
            Stream::Err,
            Level::Warn,
            "oops",
        );
        assert_eq!(out, "2024-05-01T10:00:00.007Z web.0[42] err WARN oops\n");
        // The cached second moves on.
        out.clear();
        s.write(&mut out, at(1_714_557_601, 999));
        assert_eq!(out, "2024-05-01T10:00:01.999Z");
        // Another format; none at all.
        let mut custom = Stamper::new("%Y-%m-%d %H:%M");
        out.clear();
        custom.write(&mut out, t);
        assert_eq!(out, "2024-05-01 10:00");
        let mut none = Stamper::new("");
        out.clear();
        write_line(
            &mut out,
            &mut none,
            t,
            ("a.1", 1),
            Stream::Out,
            Level::Info,
            "x",
        );
        assert_eq!(out, "a.1[1] out INFO x\n");
    }

    #[test]
    fn pids_in_decimal() {
        for n in [0, 7, 10, 4242, -1, i32::MAX, i32::MIN] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn date_formats_are_checked() {
        assert!(valid_date_format(DEFAULT_DATE_FORMAT));
        assert!(valid_date_format("%Y-%m-%d %H:%M:%S %z"));
        assert!(!valid_date_format("%Q"));
    }

    #[test]
    fn the_wire_line_renders_like_the_file() {
        let line = LogLine {
            app: "web".into(),
            worker: "web.1".into(),
            pid: 9,
            stream: Stream::Out,
            level: Level::Info,
            time: 1_714_557_600.5,
            text: "hello".into(),
        };
        assert_eq!(
            line.render(),
            "2024-05-01T10:00:00.500Z web.1[9] out INFO hello\n"
        );
        let json = serde_json::to_string(&line).unwrap_or_default();
        assert!(json.contains(r#""stream":"out","level":"INFO""#), "{json}");
    }
}
