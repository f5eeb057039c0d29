//! The log writer: one thread that owns every log file. Readers hand it lines over a channel
//! and never wait for it there; what each worker stream may have waiting is bounded by its
//! [`Budget`] instead (past it, that stream's reader stops reading its pipe: backpressure onto
//! that worker alone). It formats each line (timestamp, worker, pid, stream, level), writes
//! through a buffer flushed whenever the channel is empty, rotates a file once it is due
//! ([`super::rotate`]), gzips rotated copies on a thread of their own, and serves `reopen-logs`
//! and `flush` ([`Cmd`]). A line that cannot be written (a file that cannot be opened or
//! written) is dropped and counted.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::budget::{self, Budget};
use super::record::{Record, Stamper, write_line};
use super::rotate::{self, Rotation};

/// Lines of one app written and dropped, since the supervisor started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Written to its files.
    pub written: AtomicU64,
    /// Dropped by the rate limit.
    pub dropped_rate: AtomicU64,
    /// Dropped because they could not be written (a file that cannot be opened or written).
    pub dropped_error: AtomicU64,
}

/// Where one worker's stream goes: the file, how it rotates, the timestamp format.
#[derive(Debug)]
pub struct Route {
    /// The app (for `flush APP`).
    pub app: String,
    /// The file.
    pub path: PathBuf,
    /// Its rotation.
    pub rotation: Rotation,
    /// strftime format of the timestamps ("" for none).
    pub date_format: String,
    /// The app's counters.
    pub counters: Arc<Counters>,
}

/// What else the writer is asked.
#[derive(Debug)]
pub enum Cmd {
    /// Close every file (an external logrotate moved them); each opens again at its next line.
    /// Answers how many were open.
    Reopen(oneshot::Sender<usize>),
    /// Empty the files of `app` (its open files and `paths`) and delete their rotated copies.
    /// Answers the files emptied.
    Flush {
        /// The app (`None`: every app).
        app: Option<String>,
        /// Its configured files.
        paths: Vec<PathBuf>,
        /// Where the answer goes.
        done: oneshot::Sender<Vec<PathBuf>>,
    },
    /// Write what is queued, close everything and end.
    Stop(oneshot::Sender<()>),
}

enum Msg {
    /// The lines of one read of a stream, the budget of that stream, and what they cost it.
    Lines(Arc<Route>, Vec<Arc<Record>>, Arc<Budget>, usize),
    /// A command is waiting.
    Wake,
}

/// The handle readers send lines to (cheap to share).
#[derive(Debug)]
pub struct Writer {
    tx: Sender<Msg>,
    cmds: Sender<Cmd>,
}

impl Writer {
    /// Starts the writer thread.
    pub fn start() -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let (cmds, cmd_rx) = mpsc::channel();
        let mut state = State {
            files: HashMap::new(),
            line: String::with_capacity(512),
        };
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || state.run(&rx, &cmd_rx))?;
        Ok(Writer { tx, cmds })
    }

    /// Queues lines for `route`'s file, on `budget` (their stream's); how many were lost when
    /// the writer has stopped.
    pub fn send(
        &self,
        route: &Arc<Route>,
        lines: Vec<Arc<Record>>,
        budget: &Arc<Budget>,
    ) -> Result<(), usize> {
        let cost = lines.iter().map(|r| budget::cost(r.text.len())).sum();
        budget.take(cost);
        let msg = Msg::Lines(route.clone(), lines, budget.clone(), cost);
        if let Err(mpsc::SendError(msg)) = self.tx.send(msg) {
            budget.give(cost);
            return Err(match msg {
                Msg::Lines(_, lines, ..) => lines.len(),
                Msg::Wake => 0,
            });
        }
        Ok(())
    }

    /// Hands the writer a command (never lost: commands have a channel of their own).
    pub fn command(&self, cmd: Cmd) {
        if self.cmds.send(cmd).is_ok() {
            // A busy writer reads commands between batches too.
            let _ = self.tx.send(Msg::Wake);
        }
    }
}

/// One open file.
struct Open {
    file: BufWriter<File>,
    size: u64,
    /// Since when it has been written (its creation, or its last rotation): for `log_max_age`.
    since: SystemTime,
    stamper: Stamper,
    route: Arc<Route>,
    /// Written to since the last flush.
    dirty: bool,
}

/// The writer thread's state.
struct State {
    files: HashMap<PathBuf, Open>,
    /// The line being formatted (reused).
    line: String,
}

impl State {
    fn run(&mut self, rx: &Receiver<Msg>, cmds: &Receiver<Cmd>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(msg) => {
                    self.handle(msg);
                    // Everything already queued, then one flush.
                    let mut n = 0u32;
                    while let Ok(msg) = rx.try_recv() {
                        self.handle(msg);
                        n += 1;
                        if n.is_multiple_of(4096) && self.commands(cmds, rx) {
                            return;
                        }
                    }
                    self.flush_all();
                }
                Err(RecvTimeoutError::Timeout) => self.rotate_aged(SystemTime::now()),
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush_all();
                    return;
                }
            }
            if self.commands(cmds, rx) {
                return;
            }
        }
    }

    /// Serves the waiting commands; `true` after `Stop`.
    fn commands(&mut self, cmds: &Receiver<Cmd>, rx: &Receiver<Msg>) -> bool {
        while let Ok(cmd) = cmds.try_recv() {
            // The lines sent before the command come first.
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
            match cmd {
                Cmd::Reopen(done) => {
                    self.flush_all();
                    let n = self.files.len();
                    self.files.clear();
                    let _ = done.send(n);
                }
                Cmd::Flush { app, paths, done } => {
                    let _ = done.send(self.empty(app.as_deref(), paths));
                }
                Cmd::Stop(done) => {
                    self.flush_all();
                    self.files.clear();
                    let _ = done.send(());
                    return true;
                }
            }
        }
        false
    }

    fn handle(&mut self, msg: Msg) {
        let Msg::Lines(route, lines, budget, cost) = msg else {
            return;
        };
        let mut rest = &lines[..];
        while !rest.is_empty() {
            rest = self.write(&route, rest);
        }
        budget.give(cost);
    }

    /// Writes lines to their file (opened if need be) until it is due for rotation, and rotates
    /// it then; the lines not written yet.
    fn write<'a>(&mut self, route: &Arc<Route>, lines: &'a [Arc<Record>]) -> &'a [Arc<Record>] {
        let counters = &route.counters;
        if !self.files.contains_key(&route.path) {
            match open(route) {
                Ok(o) => {
                    self.files.insert(route.path.clone(), o);
                }
                Err(e) => {
                    let n = lines.len() as u64;
                    counters.dropped_error.fetch_add(n, Ordering::Relaxed);
                    warn_once(&route.path, &e);
                    return &[];
                }
            }
        }
        let Some(open) = self.files.get_mut(&route.path) else {
            return &[];
        };
        let (mut written, mut failed) = (0, 0);
        let mut rotate_at = None;
        for (i, record) in lines.iter().enumerate() {
            self.line.clear();
            let who = (record.tag.worker.as_str(), record.tag.pid);
            write_line(
                &mut self.line,
                &mut open.stamper,
                record.time,
                who,
                record.stream,
                record.level,
                &record.text,
            );
            match open.file.write_all(self.line.as_bytes()) {
                Ok(()) => {
                    open.size += self.line.len() as u64;
                    open.dirty = true;
                    written += 1;
                }
                Err(e) => {
                    failed += 1;
                    warn_once(&route.path, &e);
                }
            }
            if route.rotation.due(open.size, open.since, record.time) {
                rotate_at = Some((i + 1, record.time));
                break;
            }
        }
        counters.written.fetch_add(written, Ordering::Relaxed);
        counters.dropped_error.fetch_add(failed, Ordering::Relaxed);
        match rotate_at {
            Some((next, time)) => {
                self.rotate(&route.path.clone(), time);
                &lines[next..]
            }
            None => &[],
        }
    }

    fn flush_all(&mut self) {
        for (path, o) in &mut self.files {
            if o.dirty {
                o.dirty = false;
                if let Err(e) = o.file.flush() {
                    warn_once(path, &e);
                }
            }
        }
    }

    /// Rotates the files due by age.
    fn rotate_aged(&mut self, now: SystemTime) {
        let due: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, o)| o.route.rotation.due(o.size, o.since, now))
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            self.rotate(&p, now);
        }
    }

    /// Closes the file and rotates it ([`rotate_file`]); the next line opens a new file.
    fn rotate(&mut self, path: &Path, now: SystemTime) {
        let Some(mut o) = self.files.remove(path) else {
            return;
        };
        let _ = o.file.flush();
        drop(o.file);
        if let Err(e) = rotate_file(path, o.route.rotation, now) {
            warn_once(path, &e);
        }
    }

    /// `flush`: empties the files of `app` (every app for `None`) and deletes their copies.
    fn empty(&mut self, app: Option<&str>, mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
        let now = SystemTime::now();
        for (path, o) in &mut self.files {
            if app.is_some_and(|a| a != o.route.app) {
                continue;
            }
            let _ = o.file.flush();
            match o.file.get_ref().set_len(0) {
                Ok(()) => {
                    o.size = 0;
                    o.since = now;
                }
                Err(e) => warn_once(path, &e),
            }
            paths.push(path.clone());
        }
        paths.sort();
        paths.dedup();
        let mut emptied = Vec::new();
        for path in paths {
            if !self.files.contains_key(&path) {
                match OpenOptions::new().write(true).truncate(true).open(&path) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        warn_once(&path, &e);
                        continue;
                    }
                }
            }
            if let (Some(dir), Some(base)) = (path.parent(), path.file_name()) {
                let base = base.to_string_lossy();
                for old in rotate::to_delete(&base, &list(dir), 0) {
                    let _ = std::fs::remove_file(dir.join(old));
                }
            }
            emptied.push(path);
        }
        emptied
    }
}

/// Opens (creating it and its directory) a route's file for appending.
fn open(route: &Arc<Route>) -> std::io::Result<Open> {
    if let Some(dir) = route.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&route.path)?;
    let meta = file.metadata()?;
    let since = meta
        .created()
        .or_else(|_| meta.modified())
        .unwrap_or_else(|_| SystemTime::now());
    Ok(Open {
        file: BufWriter::with_capacity(64 * 1024, file),
        size: meta.len(),
        since: if meta.len() == 0 {
            SystemTime::now()
        } else {
            since
        },
        stamper: Stamper::new(&route.date_format),
        route: route.clone(),
        dirty: false,
    })
}

/// Renames the (closed) file `path` to its rotated name, gzips that copy on a thread of its own
/// if asked, and deletes the copies beyond `retain`. Logs nothing itself (the supervisor's own
/// log rotates with it, from inside its tracing writer), except from the gzip thread.
pub(super) fn rotate_file(path: &Path, rotation: Rotation, now: SystemTime) -> std::io::Result<()> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let base = base.to_string_lossy().into_owned();
    let name = rotate::rotated_name(&base, &rotate::stamp(now), |n| dir.join(n).exists());
    let rotated = dir.join(&name);
    std::fs::rename(path, &rotated)?;
    for old in rotate::to_delete(&base, &list(dir), rotation.retain) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    if rotation.compress && rotation.retain > 0 {
        let _ = std::thread::Builder::new()
            .name("log-gzip".into())
            .spawn(move || {
                if let Err(e) = gzip(&rotated) {
                    tracing::warn!("cannot compress {}: {e}", rotated.display());
                }
            });
    }
    Ok(())
}

/// The file names in `dir`.
fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// `path` to `path.gz`, then `path` removed.
fn gzip(path: &Path) -> std::io::Result<()> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let gz_path = PathBuf::from(gz_name);
    let mut input = File::open(path)?;
    let out = File::create(&gz_path)?;
    let mut enc = flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::fast());
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?.flush()?;
    match std::fs::remove_file(path) {
        // Deleted meanwhile as beyond `retain`: so is its copy.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::remove_file(&gz_path),
        other => other,
    }
}

/// Logs a file error (once per file and kind of error, so a full disk does not flood the log).
fn warn_once(path: &Path, e: &std::io::Error) {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<(PathBuf, std::io::ErrorKind)>> = Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (path.to_path_buf(), e.kind());
    if !seen.contains(&key) {
        seen.push(key);
        tracing::warn!("log file {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::super::record::{Level, Stream, Tag};
    use super::*;

    fn route(dir: &Path, rotation: Rotation) -> Arc<Route> {
        Arc::new(Route {
            app: "web".into(),
            path: dir.join("web.log"),
            rotation,
            date_format: super::super::record::DEFAULT_DATE_FORMAT.into(),
            counters: Arc::default(),
        })
    }

    fn rec(seq: u64, text: &str) -> Arc<Record> {
        Arc::new(Record {
            seq,
            tag: Arc::new(Tag {
                app: "web".into(),
                worker: "web.0".into(),
                pid: 7,
            }),
            stream: Stream::Err,
            level: Level::Warn,
            time: SystemTime::now(),
            text: text.into(),
        })
    }

    fn stop(w: &Writer) {
        let (tx, rx) = oneshot::channel();
        w.command(Cmd::Stop(tx));
        rx.blocking_recv().unwrap();
    }

    #[test]
    fn lines_are_written_stamped_and_rotation_keeps_retain_copies() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 1000,
            max_age: None,
            retain: 3,
            compress: false,
        };
        let r = route(dir.path(), rotation);
        let w = Writer::start().unwrap();
        let b = Arc::new(Budget::default());
        for i in 0..500 {
            w.send(&r, vec![rec(i, &format!("line {i}"))], &b).unwrap();
        }
        w.send(&r, vec![rec(500, "line 500")], &b).unwrap();
        stop(&w);
        let names = list(dir.path());
        let rotated = names.iter().filter(|n| n.starts_with("web.log.2")).count();
        assert_eq!(rotated, 3, "{names:?}");
        let text: String = names
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        assert!(
            text.lines()
                .any(|l| l.ends_with(" web.0[7] err WARN line 500")),
            "{text}"
        );
        assert!(text.lines().all(|l| l.len() < 100 && l.contains('Z')));
        assert_eq!(r.counters.written.load(Ordering::Relaxed), 501);
    }

    #[test]
    fn one_batch_rotates_wherever_its_lines_make_the_file_due() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 1000,
            max_age: None,
            retain: 100,
            compress: false,
        };
        let r = route(dir.path(), rotation);
        let w = Writer::start().unwrap();
        let b = Arc::new(Budget::default());
        let batch = (0..400).map(|i| rec(i, &format!("line {i}"))).collect();
        w.send(&r, batch, &b).unwrap();
        stop(&w);
        assert_eq!(r.counters.written.load(Ordering::Relaxed), 400);
        assert_eq!(b.waiting(), 0, "the budget is given back");
        let names = list(dir.path());
        assert!(names.len() > 10, "{names:?}");
        let mut lines = 0;
        for n in &names {
            let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
            assert!(text.len() < 1100, "{n}: {} bytes", text.len());
            lines += text.lines().count();
        }
        assert_eq!(lines, 400);
    }

    #[test]
    fn flush_empties_and_reopen_closes() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 0,
            max_age: None,
            retain: 3,
            compress: false,
        };
        let r = route(dir.path(), rotation);
        let w = Writer::start().unwrap();
        let b = Arc::new(Budget::default());
        w.send(&r, vec![rec(1, "one")], &b).unwrap();
        let (tx, rx) = oneshot::channel();
        w.command(Cmd::Reopen(tx));
        assert_eq!(rx.blocking_recv().unwrap(), 1);
        // Moved away by logrotate: the next line goes to a new file.
        std::fs::rename(dir.path().join("web.log"), dir.path().join("moved")).unwrap();
        w.send(&r, vec![rec(2, "two")], &b).unwrap();
        let (tx, rx) = oneshot::channel();
        w.command(Cmd::Flush {
            app: Some("web".into()),
            paths: vec![],
            done: tx,
        });
        assert_eq!(
            rx.blocking_recv().unwrap(),
            vec![dir.path().join("web.log")]
        );
        w.send(&r, vec![rec(3, "three")], &b).unwrap();
        stop(&w);
        let moved = std::fs::read_to_string(dir.path().join("moved")).unwrap();
        assert!(moved.contains("one") && !moved.contains("two"), "{moved}");
        let now = std::fs::read_to_string(dir.path().join("web.log")).unwrap();
        assert!(!now.contains("two") && now.contains("three"), "{now}");
    }

    #[test]
    fn rotated_copies_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 100,
            max_age: None,
            retain: 2,
            compress: true,
        };
        let r = route(dir.path(), rotation);
        let w = Writer::start().unwrap();
        let b = Arc::new(Budget::default());
        for i in 0..6 {
            w.send(&r, vec![rec(i, "a line of text long enough to rotate")], &b)
                .unwrap();
        }
        stop(&w);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let names = list(dir.path());
            if names.iter().filter(|n| n.ends_with(".gz")).count() == 2
                && names.iter().all(|n| n == "web.log" || n.ends_with(".gz"))
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{names:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
