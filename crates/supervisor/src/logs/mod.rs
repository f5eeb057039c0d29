//! Worker output, from the pipes to the files: each worker's stdout and stderr are read to the
//! end by a task of their own ([`forward`]), framed into lines ([`lines`]), rate limited per
//! worker ([`rate`]), stamped with their level ([`record`]), and published here, to the
//! [`Logs`] hub: into a bounded ring per app (what `logs` answers from), to the followers of
//! `logs -f` (a broadcast: a slow one loses lines, counted), and to the writer thread
//! ([`writer`]) that owns the files and rotates them ([`rotate`]). Nothing here ever waits for
//! a follower, and the event loop never waits for anything: a stream whose lines the writer has
//! not caught up with ([`budget`]) is not read until it has, so its worker blocks in `write()`
//! and every line is kept (up to the rate limit), while the other workers' lines flow on.
//! [`dir`]: where a supervisor's log files go by default; [`own`]: the supervisor's own log
//! under `start -d`, rotated likewise.

pub mod budget;
pub mod dir;
pub mod forward;
pub mod lines;
pub mod own;
pub mod rate;
pub mod record;
pub mod ring;
pub mod rotate;
pub mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};

pub use forward::Sink;
pub(crate) use forward::{forward_output, forward_worker};
use record::{Record, Stream, Tag};
use ring::{Filter, Ring};
use writer::{Cmd, Counters, Route, Writer};

/// The longest line logged whole; the head of a longer one is logged, marked as truncated, and
/// the rest of it is skipped.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines kept in memory per app for `logs`, at most (and bytes of text).
const RING_LINES: usize = 2000;
const RING_BYTES: usize = 1 << 20;

/// Lines a follower may lag behind before it loses some.
const FOLLOW_BUFFER: usize = 4096;

/// Where an app's output goes and how much of it is kept (PM2's `out_file`, `error_file`,
/// `merge_logs`, `log_date_format`, and the rotation and rate limit built in).
#[derive(Debug, Clone, PartialEq)]
pub struct LogPolicy {
    /// Where stdout lines go (by default `LOG_DIR/APP.log`).
    pub out_file: PathBuf,
    /// Where stderr lines go (by default the same file as stdout).
    pub error_file: PathBuf,
    /// Every worker in the same files (`true`, the default); `false`: one file per slot
    /// (`APP-0.log`, as PM2 does without `merge_logs`).
    pub merge: bool,
    /// The timestamp's strftime format ("" for none).
    pub date_format: String,
    /// When files rotate and how many copies are kept.
    pub rotation: rotate::Rotation,
    /// How much output one worker may write.
    pub rate: rate::RateLimit,
}

/// One app's logs: its policy, counters and ring.
#[derive(Debug)]
pub struct AppLog {
    name: String,
    policy: LogPolicy,
    counters: Arc<Counters>,
    ring: Arc<Mutex<Ring>>,
    /// The routes of its merged files (out, err).
    merged: (Arc<Route>, Arc<Route>),
}

impl AppLog {
    fn new(
        name: &str,
        policy: LogPolicy,
        counters: Arc<Counters>,
        ring: Arc<Mutex<Ring>>,
    ) -> AppLog {
        let route = |path: &PathBuf| {
            Arc::new(Route {
                app: name.to_string(),
                path: path.clone(),
                rotation: policy.rotation,
                date_format: policy.date_format.clone(),
                counters: counters.clone(),
            })
        };
        let merged = (route(&policy.out_file), route(&policy.error_file));
        AppLog {
            name: name.to_string(),
            policy,
            counters,
            ring,
            merged,
        }
    }

    /// The route of `slot`'s `stream`: the app's file, or with `merge_logs = false` the slot's
    /// own (`web-0.log`).
    fn route(&self, stream: Stream, slot: usize) -> Arc<Route> {
        let merged = match stream {
            Stream::Out => &self.merged.0,
            Stream::Err => &self.merged.1,
        };
        if self.policy.merge {
            return merged.clone();
        }
        Arc::new(Route {
            app: self.name.clone(),
            path: slot_path(&merged.path, slot),
            rotation: merged.rotation,
            date_format: merged.date_format.clone(),
            counters: self.counters.clone(),
        })
    }
}

/// `dir/web.log` -> `dir/web-0.log` (`dir/web` -> `dir/web-0`).
fn slot_path(path: &std::path::Path, slot: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let name = match (stem, path.extension()) {
        (Some(stem), Some(ext)) => format!("{stem}-{slot}.{}", ext.to_string_lossy()),
        (Some(stem), None) => format!("{stem}-{slot}"),
        (None, _) => format!("{slot}"),
    };
    path.with_file_name(name)
}

/// Lines of one app written and dropped (for the metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCounts {
    /// The app.
    pub app: String,
    /// Lines written to its files.
    pub written: u64,
    /// Lines dropped by the rate limit.
    pub dropped_rate: u64,
    /// Lines dropped because they could not be written (a file error).
    pub dropped_error: u64,
}

/// The hub every worker's output goes through (cheap to clone).
#[derive(Debug, Clone)]
pub struct Logs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    apps: Mutex<HashMap<String, Arc<AppLog>>>,
    live: broadcast::Sender<Arc<Record>>,
    writer: Writer,
    seq: AtomicU64,
    /// Also log every line on the supervisor's own stderr (in the foreground).
    echo: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Logs {
    /// Starts the writer thread (no app known until [`Logs::configure`]); `echo`: also log every
    /// line on the supervisor's stderr.
    pub fn start(echo: bool) -> std::io::Result<Logs> {
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        let logs = Logs {
            inner: Arc::new(Inner {
                apps: Mutex::new(HashMap::new()),
                live,
                writer: Writer::start()?,
                seq: AtomicU64::new(1),
                echo,
            }),
        };
        Ok(logs)
    }

    /// Takes the apps' policies, by app name (at start, after a reload): new workers write as
    /// they say; counters and rings are kept; apps not named are forgotten.
    pub fn configure<'a>(&self, policies: impl IntoIterator<Item = (&'a str, &'a LogPolicy)>) {
        let mut apps = lock(&self.inner.apps);
        let mut next = HashMap::new();
        for (name, policy) in policies {
            let (counters, ring) = match apps.remove(name) {
                Some(old) if old.policy == *policy => {
                    next.insert(name.to_string(), old);
                    continue;
                }
                Some(old) => (old.counters.clone(), old.ring.clone()),
                None => (
                    Arc::default(),
                    Arc::new(Mutex::new(Ring::new(RING_LINES, RING_BYTES))),
                ),
            };
            let app = AppLog::new(name, policy.clone(), counters, ring);
            next.insert(name.to_string(), Arc::new(app));
        }
        *apps = next;
    }

    /// The sinks of a worker's stdout and stderr (`None` for an app it does not know).
    pub fn sinks(&self, app: &str, worker: &str, slot: usize, pid: i32) -> Option<(Sink, Sink)> {
        let log = lock(&self.inner.apps).get(app)?.clone();
        let tag = Arc::new(Tag {
            app: app.to_string(),
            worker: worker.to_string(),
            pid,
        });
        let limiter = Arc::new(Mutex::new(rate::Limiter::new(log.policy.rate)));
        let sink = |stream| {
            Sink::new(
                self.clone(),
                log.clone(),
                log.route(stream, slot),
                tag.clone(),
                stream,
                limiter.clone(),
            )
        };
        Some((sink(Stream::Out), sink(Stream::Err)))
    }

    /// Publishes one line to the ring and the followers; the writer gets it with the other
    /// lines of its read ([`Logs::write`]).
    fn publish(&self, app: &AppLog, mut record: Record) -> Arc<Record> {
        record.seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(record);
        lock(&app.ring).push(record.clone());
        if self.inner.live.receiver_count() > 0 {
            let _ = self.inner.live.send(record.clone());
        }
        record
    }

    /// Hands the writer the lines of one read of a stream, on the `budget` of that stream
    /// (dropped and counted if the writer has stopped).
    fn write(
        &self,
        app: &AppLog,
        route: &Arc<Route>,
        budget: &Arc<budget::Budget>,
        lines: Vec<Arc<Record>>,
    ) {
        if let Err(lost) = self.inner.writer.send(route, lines, budget) {
            app.counters
                .dropped_error
                .fetch_add(lost as u64, Ordering::Relaxed);
        }
    }

    /// Whether lines are also logged on the supervisor's stderr.
    pub fn echo(&self) -> bool {
        self.inner.echo
    }

    /// The app and worker `target` names: an app (`web`), a worker (`web.0`), or everything.
    pub fn resolve(&self, target: Option<&str>) -> Result<Filter, String> {
        let Some(target) = target else {
            return Ok(Filter::default());
        };
        let apps = lock(&self.inner.apps);
        if apps.contains_key(target) {
            return Ok(Filter {
                app: Some(target.to_string()),
                ..Filter::default()
            });
        }
        if let Some((app, slot)) = target.rsplit_once('.')
            && apps.contains_key(app)
            && !slot.is_empty()
            && slot.bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(Filter {
                app: Some(app.to_string()),
                worker: Some(target.to_string()),
                ..Filter::default()
            });
        }
        let mut names: Vec<&str> = apps.keys().map(String::as_str).collect();
        names.sort_unstable();
        Err(format!(
            "no app or worker is named {target:?} (apps: {}; a worker is APP.SLOT)",
            names.join(", ")
        ))
    }

    /// The last `n` lines `filter` wants from the rings, oldest first, and whether that is all
    /// of them (else the files have more).
    pub fn tail(&self, filter: &Filter, n: usize) -> (Vec<Arc<Record>>, bool) {
        let apps: Vec<Arc<AppLog>> = lock(&self.inner.apps)
            .values()
            .filter(|a| filter.app.as_ref().is_none_or(|f| *f == a.name))
            .cloned()
            .collect();
        let mut all = Vec::new();
        let mut complete = true;
        for a in apps {
            let (lines, whole) = lock(&a.ring).tail(filter, n);
            complete &= whole;
            all.extend(lines);
        }
        all.sort_by_key(|r| r.seq);
        let skip = all.len().saturating_sub(n);
        (all.split_off(skip), complete)
    }

    /// The live lines, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.inner.live.subscribe()
    }

    /// The files of `app` (every app for `None`), for reading what the rings no longer hold.
    pub fn files(&self, app: Option<&str>) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = lock(&self.inner.apps)
            .values()
            .filter(|a| app.is_none_or(|n| n == a.name))
            .flat_map(|a| [a.policy.out_file.clone(), a.policy.error_file.clone()])
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Closes every log file; each opens again at its next line (after an external logrotate
    /// moved them), and the supervisor's own log at once. How many were open.
    pub async fn reopen(&self) -> usize {
        let own = usize::from(own::reopen());
        let (tx, rx) = oneshot::channel();
        self.inner.writer.command(Cmd::Reopen(tx));
        rx.await.unwrap_or(0) + own
    }

    /// Empties the files of `app` (every app for `None`), deletes their rotated copies and
    /// clears the rings. The files emptied.
    pub async fn flush(&self, app: Option<&str>) -> Vec<PathBuf> {
        for a in lock(&self.inner.apps).values() {
            if app.is_none_or(|n| n == a.name) {
                lock(&a.ring).clear();
            }
        }
        let (done, rx) = oneshot::channel();
        self.inner.writer.command(Cmd::Flush {
            app: app.map(str::to_string),
            paths: self.files(app),
            done,
        });
        rx.await.unwrap_or_default()
    }

    /// Writes what is queued and closes the files (at most `timeout`), when the supervisor
    /// stops.
    pub async fn finish(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        self.inner.writer.command(Cmd::Stop(tx));
        let _ = tokio::time::timeout(timeout, rx).await;
    }

    /// Every app's counts, by name.
    pub fn counts(&self) -> Vec<AppCounts> {
        let mut v: Vec<AppCounts> = lock(&self.inner.apps)
            .values()
            .map(|a| AppCounts {
                app: a.name.clone(),
                written: a.counters.written.load(Ordering::Relaxed),
                dropped_rate: a.counters.dropped_rate.load(Ordering::Relaxed),
                dropped_error: a.counters.dropped_error.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.app.cmp(&b.app));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmerged_files_are_per_slot() {
        assert_eq!(
            slot_path(std::path::Path::new("/l/web.log"), 3),
            PathBuf::from("/l/web-3.log")
        );
        assert_eq!(
            slot_path(std::path::Path::new("/l/web"), 0),
            PathBuf::from("/l/web-0")
        );
    }
}
