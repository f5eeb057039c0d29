//! Local backend: the same claim / lease / history semantics with files in one directory, for a
//! single host without Redis.
//!
//! Files in the directory (`{job}` is the job name):
//!
//! | file | role |
//! |---|---|
//! | `{job}.lock` | exclusive `flock` held while claiming (microseconds) |
//! | `{job}.state` | JSON: last claimed tick, last fencing token, recent manual request ids |
//! | `{job}.lease` | exclusive `flock` held by the running process for the whole run (the kernel releases it if the process dies); contains the holder JSON |
//! | `{job}.history.jsonl` | bounded JSON-lines history (oldest first on disk) |
//! | `jobs.json` (+ `jobs.lock`) | the job registry |
//! | `requests/{id}.json` | manual run requests, polled every 250 ms |
//!
//! The directory is created `0700` and every file `0600`. A directory that already exists must
//! belong to us and must not be writable by group or others: whoever can create the lock files
//! can hold the locks and block every job, so such a directory is refused (with its owner's uid
//! and ours), never used as is.
//!
//! A tick is claimed only if it is newer than the last claimed tick of the job, so two
//! schedulers on the same host run each tick once; the token is the last token + 1. A lease
//! never expires while its process lives (a stopped process keeps it): on one host there is no
//! clock skew or network partition to fence against.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ClaimOutcome, ClaimRequest, HISTORY_LEN, Lease, LeaseInner, holder_json_tail, new_request_id,
};
use crate::error::{Error, Result};
use crate::job::{Holder, JobMeta, Outcome, Overlap, RunRecord, TickId};

/// How often schedulers look for manual run requests.
pub const REQUEST_POLL: Duration = Duration::from_millis(250);
/// Requests older than this are ignored and deleted.
const REQUEST_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The local (directory) backend.
#[derive(Debug)]
pub struct LocalBackend {
    dir: PathBuf,
}

/// A lease held through an exclusive `flock` on `{job}.lease`.
#[derive(Debug)]
pub(crate) struct LocalLease {
    /// The locked lease file (`None` for overlap `allow`, which has no exclusive lease).
    file: Mutex<Option<File>>,
    held: AtomicBool,
}

impl LocalLease {
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Clears the holder info and drops the lock. Returns whether it was still held.
    pub(crate) fn release(&self) -> bool {
        let was_held = self.held.swap(false, Ordering::SeqCst);
        let taken = match self.file.lock() {
            Ok(mut f) => f.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(file) = taken {
            let _ = file.set_len(0);
            let _ = flock(&file, libc::LOCK_UN);
        }
        was_held
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    last_tick_ms: Option<i64>,
    #[serde(default)]
    last_token: u64,
    #[serde(default)]
    manual: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    job: String,
    id: String,
    created_at: DateTime<Utc>,
}

/// `flock(2)` on the file's descriptor, retrying on `EINTR` (also the singleton leases').
pub(crate) fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: `file` owns a valid open descriptor for the duration of this call, and
        // `flock` only takes an integer descriptor and flags; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Tries an exclusive lock without blocking: `Ok(false)` if another holder has it.
pub(crate) fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Mode of the files we create (the directory is `DIR_MODE`).
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

pub(crate) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("open", path))
}

/// Opens `path` and holds an exclusive lock on it until the returned file is dropped.
fn lock_file(path: &Path) -> Result<File> {
    let f = open_rw(path)?;
    flock(&f, libc::LOCK_EX).map_err(io_err("lock", path))?;
    Ok(f)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt {
        what: "encoding a record".to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

impl LocalBackend {
    /// Uses (and creates if needed, mode 0700) the directory `dir`. An existing directory owned
    /// by another user, or writable by group or others, is refused ([`Error::UnsafeStateDir`]).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        prepare_state_dir(&dir)?;
        let requests = dir.join("requests");
        create_private_dir(&requests)?;
        check_private_dir(&requests)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, job: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{job}.{ext}"))
    }

    fn read_state(path: &Path) -> Result<State> {
        match std::fs::read(path) {
            Ok(b) if b.is_empty() => Ok(State::default()),
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                what: format!("state file `{}`", path.display()),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::Io {
                op: "read",
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    fn append_history_locked(path: &Path, record: &RunRecord) -> Result<()> {
        let line = to_json(record)?;
        let mut content = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(Error::Io {
                    op: "read",
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        let lines = content.lines().count();
        if lines + 1 > 2 * HISTORY_LEN {
            let keep: Vec<&str> = content.lines().skip(lines + 1 - HISTORY_LEN).collect();
            let mut s = keep.join("\n");
            s.push('\n');
            s.push_str(&line);
            s.push('\n');
            return write_atomic(path, s.as_bytes());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(io_err("open", path))?;
        content.clear();
        content.push_str(&line);
        content.push('\n');
        f.write_all(content.as_bytes())
            .map_err(io_err("append", path))
    }

    fn claim_blocking(
        &self,
        req: &ClaimRequest,
        missed: Option<&RunRecord>,
    ) -> Result<ClaimOutcome> {
        let lock_path = self.path(&req.job, "lock");
        let _guard = lock_file(&lock_path)?;
        let state_path = self.path(&req.job, "state");
        let mut state = Self::read_state(&state_path)?;
        match &req.tick {
            TickId::Scheduled(t) => {
                let ms = t.timestamp_millis();
                if state.last_tick_ms.is_some_and(|last| last >= ms) {
                    return Ok(ClaimOutcome::ClaimedElsewhere);
                }
                state.last_tick_ms = Some(ms);
            }
            TickId::Manual(id) => {
                if state.manual.iter().any(|m| m == id) {
                    return Ok(ClaimOutcome::ClaimedElsewhere);
                }
                state.manual.push(id.clone());
                if state.manual.len() > HISTORY_LEN {
                    let excess = state.manual.len() - HISTORY_LEN;
                    state.manual.drain(..excess);
                }
            }
        }
        let history_path = self.path(&req.job, "history.jsonl");
        if let Some(record) = missed {
            write_atomic(&state_path, to_json(&state)?.as_bytes())?;
            Self::append_history_locked(&history_path, record)?;
            // "Won" the right to record it: report as a skipped claim without a lease.
            return Ok(ClaimOutcome::SkippedOverlap { holder: None });
        }
        let lease_file = match req.overlap {
            Overlap::Skip => {
                let lease_path = self.path(&req.job, "lease");
                let f = open_rw(&lease_path)?;
                if !try_lock_exclusive(&f).map_err(io_err("lock", &lease_path))? {
                    let holder = read_holder(&f);
                    write_atomic(&state_path, to_json(&state)?.as_bytes())?;
                    let record = req.record_not_run(
                        Outcome::SkippedOverlap,
                        "the previous run still holds the lease",
                    );
                    Self::append_history_locked(&history_path, &record)?;
                    return Ok(ClaimOutcome::SkippedOverlap { holder });
                }
                Some((f, lease_path))
            }
            Overlap::Allow => None,
        };
        state.last_token += 1;
        let token = state.last_token;
        write_atomic(&state_path, to_json(&state)?.as_bytes())?;
        let tail = holder_json_tail(req);
        let value = format!("{{\"token\":{token},{}", tail.get(1..).unwrap_or("}"));
        let file = match lease_file {
            Some((mut f, path)) => {
                f.set_len(0).map_err(io_err("truncate", &path))?;
                f.seek(SeekFrom::Start(0)).map_err(io_err("seek", &path))?;
                f.write_all(value.as_bytes())
                    .map_err(io_err("write", &path))?;
                Some(f)
            }
            None => None,
        };
        Ok(ClaimOutcome::Won(Lease {
            job: req.job.clone(),
            tick: req.tick.clone(),
            token,
            ttl: req.lease_ttl,
            inner: LeaseInner::Local(LocalLease {
                file: Mutex::new(file),
                held: AtomicBool::new(true),
            }),
        }))
    }

    fn clone_handle(&self) -> Self {
        Self {
            dir: self.dir.clone(),
        }
    }

    pub(crate) async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome> {
        let this = self.clone_handle();
        let req = req.clone();
        blocking(move || this.claim_blocking(&req, None)).await
    }

    pub(crate) async fn mark_missed(&self, req: &ClaimRequest, record: &RunRecord) -> Result<bool> {
        let this = self.clone_handle();
        let req = req.clone();
        let record = record.clone();
        let out = blocking(move || this.claim_blocking(&req, Some(&record))).await?;
        Ok(matches!(out, ClaimOutcome::SkippedOverlap { .. }))
    }

    pub(crate) async fn append_history(&self, record: &RunRecord) -> Result<()> {
        let lock_path = self.path(&record.job, "lock");
        let path = self.path(&record.job, "history.jsonl");
        let record = record.clone();
        blocking(move || {
            let _guard = lock_file(&lock_path)?;
            Self::append_history_locked(&path, &record)
        })
        .await
    }

    pub(crate) async fn register_jobs(&self, metas: &[JobMeta]) -> Result<()> {
        let lock_path = self.dir.join("jobs.lock");
        let path = self.dir.join("jobs.json");
        let metas = metas.to_vec();
        blocking(move || {
            let _guard = lock_file(&lock_path)?;
            let mut all = read_registry(&path)?;
            for m in metas {
                all.insert(m.name.clone(), m);
            }
            let json = serde_json::to_vec_pretty(&all).map_err(|e| Error::Corrupt {
                what: "encoding the registry".to_owned(),
                reason: e.to_string(),
            })?;
            write_atomic(&path, &json)
        })
        .await
    }

    pub(crate) async fn jobs_registered(&self, names: &[String]) -> Result<bool> {
        let path = self.dir.join("jobs.json");
        let names = names.to_vec();
        blocking(move || {
            let all = read_registry(&path)?;
            Ok(names.iter().all(|n| all.contains_key(n)))
        })
        .await
    }

    pub(crate) async fn list_jobs(&self) -> Result<Vec<JobMeta>> {
        let path = self.dir.join("jobs.json");
        blocking(move || Ok(read_registry(&path)?.into_values().collect())).await
    }

    pub(crate) async fn history(&self, job: &str, n: usize) -> Result<Vec<RunRecord>> {
        let path = self.path(job, "history.jsonl");
        let job = job.to_owned();
        blocking(move || {
            let content = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(Error::Io {
                        op: "read",
                        path,
                        source: e,
                    });
                }
            };
            content
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(n)
                .map(|l| {
                    serde_json::from_str(l).map_err(|e| Error::Corrupt {
                        what: format!("history record of job `{job}`"),
                        reason: e.to_string(),
                    })
                })
                .collect()
        })
        .await
    }

    /// Reads the holder written into `{job}.lease`. The file is not locked to probe it (a probe
    /// lock could make a concurrent claim see an overlap); instead the holder must be a live
    /// process (`/proc/{pid}`), since the kernel drops the lock of a dead one.
    pub(crate) async fn current_holder(&self, job: &str) -> Result<Option<Holder>> {
        let path = self.path(job, "lease");
        blocking(move || {
            let content = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Error::Io {
                        op: "read",
                        path,
                        source: e,
                    });
                }
            };
            if content.trim().is_empty() {
                return Ok(None);
            }
            let Ok(holder) = serde_json::from_str::<Holder>(&content) else {
                return Ok(None);
            };
            let alive = Path::new(&format!("/proc/{}", holder.pid)).exists();
            Ok(alive.then_some(holder))
        })
        .await
    }

    pub(crate) async fn request_run(&self, job: &str) -> Result<String> {
        let id = new_request_id();
        let req = Request {
            job: job.to_owned(),
            id: id.clone(),
            created_at: Utc::now(),
        };
        let path = self.dir.join("requests").join(format!("{id}.json"));
        let json = to_json(&req)?;
        blocking(move || write_atomic(&path, json.as_bytes())).await?;
        tracing::info!(job, request = %id, "manual run requested");
        Ok(id)
    }

    /// Polls `requests/` every [`REQUEST_POLL`] and forwards new requests to `tx`.
    pub(crate) async fn listen_requests(
        self: Arc<Self>,
        tx: mpsc::Sender<(String, String)>,
        stop: CancellationToken,
    ) {
        let dir = self.dir.join("requests");
        let mut seen: HashSet<String> = HashSet::new();
        let started = Utc::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REQUEST_POLL) => {}
            }
            let dir2 = dir.clone();
            let found = blocking(move || Ok(scan_requests(&dir2))).await;
            let Ok(found) = found else { continue };
            let present: HashSet<String> = found.iter().map(|r| r.id.clone()).collect();
            seen.retain(|id| present.contains(id));
            for r in found {
                if seen.contains(&r.id) {
                    continue;
                }
                seen.insert(r.id.clone());
                if r.created_at < started - REQUEST_MAX_AGE {
                    continue;
                }
                if tx.send((r.job, r.id)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The local backend's state directory, made ready for use: its parents created, itself created
/// 0700, and refused ([`Error::UnsafeStateDir`]) when another user owns it or group or others
/// may write to it. The job locks and the singleton leases both live there.
pub(crate) fn prepare_state_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    create_private_dir(dir)?;
    check_private_dir(dir)
}

/// Checks, creating nothing, that `dir` can be the state directory: missing (it is created
/// 0700 on first use), or an existing directory of ours that group and others cannot write to.
/// What [`LocalBackend::new`] refuses for the directory itself, this refuses with the same error.
pub fn check_state_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => check_private_dir(dir),
    }
}

/// Creates `dir` with mode 0700 (the umask can only narrow it); an existing one is left as is.
fn create_private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Io {
            op: "create directory",
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// `dir` (after symlinks) is a directory of ours that group and others cannot write to.
fn check_private_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(io_err("inspect directory", dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let our_uid = unsafe { libc::geteuid() };
    let unsafe_dir = |problem: String| Error::UnsafeStateDir {
        path: dir.to_owned(),
        problem,
        our_uid,
    };
    if !meta.is_dir() {
        return Err(Error::Io {
            op: "use as state directory",
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    if meta.uid() != our_uid {
        return Err(unsafe_dir(format!("is owned by uid {}", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by group or others (mode {mode:04o}; expected 0700)"
        )));
    }
    Ok(())
}

fn scan_requests(dir: &Path) -> Vec<Request> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let now = Utc::now();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<Request>(&bytes) {
            Ok(r) if now - r.created_at > REQUEST_MAX_AGE => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(r) => out.push(r),
            Err(_) => {}
        }
    }
    out.sort_by_key(|r| r.created_at);
    out
}

fn read_holder(f: &File) -> Option<Holder> {
    let mut s = String::new();
    let mut handle = f;
    handle.seek(SeekFrom::Start(0)).ok()?;
    handle.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

fn read_registry(path: &Path) -> Result<BTreeMap<String, JobMeta>> {
    match std::fs::read(path) {
        Ok(b) if b.is_empty() => Ok(BTreeMap::new()),
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
            what: format!("registry `{}`", path.display()),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::Io {
            op: "read",
            path: path.to_owned(),
            source: e,
        }),
    }
}
