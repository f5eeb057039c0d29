//! The coordination backends behind one type: Redis (a cluster) or a local directory (one host).
//!
//! Every operation a scheduler needs (claim a tick, renew / release a lease, record history,
//! register jobs, manual triggers) and every operation an operator tool needs (list jobs, read
//! history, current lease holder, request a run) is a method of [`Backend`].

pub mod local;
pub mod redis;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::job::{Holder, Identity, JobMeta, Outcome, Overlap, RunRecord, TickId};
use crate::url::RedactedUrl;

pub use self::local::LocalBackend;
pub use self::redis::topology::{Layout, Node, NodeRole, Shard, Topology};
pub use self::redis::{AckPolicy, RedisBackend, RedisOptions};

/// How many history records are kept per job.
pub const HISTORY_LEN: usize = 100;

/// A coordination backend; cheap to clone (shared inside).
#[derive(Debug, Clone)]
pub enum Backend {
    /// Redis (one server, Sentinel or Cluster): the cluster backend.
    Redis(Arc<RedisBackend>),
    /// A local directory: single host, no Redis.
    Local(Arc<LocalBackend>),
}

/// A request to claim one tick of a job.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Job name.
    pub job: String,
    /// The tick to claim.
    pub tick: TickId,
    /// How long the tick claim is remembered (Redis); at least 2 periods and 60 s.
    pub keep: Duration,
    /// Lease TTL for the run.
    pub lease_ttl: Duration,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Who claims.
    pub identity: Identity,
    /// When the claim is made (written into the lease and the history).
    pub started_at: DateTime<Utc>,
}

impl ClaimRequest {
    /// The history record of a tick this request did not run (missed, skipped for overlap).
    pub fn record_not_run(&self, outcome: Outcome, error: impl Into<String>) -> RunRecord {
        RunRecord {
            job: self.job.clone(),
            tick: self.tick.to_string(),
            host: self.identity.host.clone(),
            pid: self.identity.pid,
            token: None,
            started_at: self.started_at,
            duration_ms: 0,
            outcome,
            error: Some(error.into()),
        }
    }
}

/// The answer to a claim.
#[derive(Debug)]
pub enum ClaimOutcome {
    /// This instance won the tick and holds the lease: run the job.
    Won(Lease),
    /// Another instance already claimed this tick.
    ClaimedElsewhere,
    /// This instance won the tick, but a previous run still holds the lease (overlap `skip`):
    /// the tick was recorded as `skipped_overlap`.
    SkippedOverlap {
        /// The current holder, if readable.
        holder: Option<Holder>,
    },
}

/// A held lease: proof that this instance runs `tick` of `job` with fencing `token`.
#[derive(Debug)]
pub struct Lease {
    /// Job name.
    pub job: String,
    /// The tick being run.
    pub tick: TickId,
    /// The fencing token.
    pub token: u64,
    /// The lease TTL.
    pub ttl: Duration,
    pub(crate) inner: LeaseInner,
}

#[derive(Debug)]
pub(crate) enum LeaseInner {
    /// Redis: the key and the exact value we wrote (compare-and-pexpire / compare-and-delete).
    Redis { key: String, value: String },
    /// Local: the locked lease file (the kernel drops the lock if the process dies).
    Local(local::LocalLease),
}

/// Where a backend URL points: a Redis deployment, or a local state directory.
#[derive(Debug)]
pub(crate) enum BackendUrl<'a> {
    /// `redis://`, `rediss://`, `redis+unix://`, `unix://`, `redis+sentinel://`,
    /// `redis+cluster://` and their TLS forms (trimmed; see [`redis::url`]).
    Redis(&'a str),
    /// `file:///dir` or a plain path.
    Dir(PathBuf),
}

impl<'a> BackendUrl<'a> {
    /// Reads `url` the way every backend user does (the job backend, the singleton leases).
    pub(crate) fn parse(url: &'a str) -> Result<BackendUrl<'a>> {
        let trimmed = url.trim();
        if self::redis::url::RedisUrl::is_redis(trimmed) {
            return Ok(BackendUrl::Redis(trimmed));
        }
        let path = if let Some(rest) = trimmed.strip_prefix("file://") {
            PathBuf::from(rest)
        } else if trimmed.contains("://") {
            return Err(Error::InvalidUrl {
                url: RedactedUrl::new(trimmed).to_string(),
                reason: "expected redis://, rediss://, redis+sentinel://, redis+cluster://, \
                         file:// or a directory path"
                    .to_owned(),
            });
        } else {
            PathBuf::from(trimmed)
        };
        if path.as_os_str().is_empty() {
            return Err(Error::InvalidUrl {
                url: trimmed.to_owned(),
                reason: "empty directory path".to_owned(),
            });
        }
        Ok(BackendUrl::Dir(path))
    }
}

impl Backend {
    /// Builds a backend from a URL: `redis://` / `rediss://` -> one Redis server,
    /// `redis+sentinel://` -> the master a set of sentinels names, `redis+cluster://` -> a
    /// Redis Cluster (see [`redis::url`] for every form and the `min_replicas_ack` option),
    /// `file:///dir` or a plain path -> local directory (created if missing). Does not
    /// connect yet.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(match BackendUrl::parse(url)? {
            BackendUrl::Redis(url) => {
                Backend::Redis(Arc::new(RedisBackend::new(url, RedisOptions::default())?))
            }
            BackendUrl::Dir(path) => Backend::Local(Arc::new(LocalBackend::new(path)?)),
        })
    }

    /// Checks a backend URL without connecting (the form, the options, the host list): what
    /// a configuration check calls to refuse a bad `redis_url` early.
    pub fn check_url(url: &str) -> Result<()> {
        match BackendUrl::parse(url)? {
            BackendUrl::Redis(url) => {
                RedisBackend::new(url, RedisOptions::default())?;
            }
            BackendUrl::Dir(_) => {}
        }
        Ok(())
    }

    /// The nodes of the store behind this backend and their health now: the server and its
    /// replicas, the master / replicas / sentinels of a Sentinel deployment, the shards of a
    /// Cluster, or the local directory; plus the failovers seen and the problems found (for
    /// `supervisor check` and `status`). Never fails: what cannot be reached is reported down.
    pub async fn topology(&self) -> Topology {
        match self {
            Backend::Redis(r) => r.topology().await,
            Backend::Local(l) => Topology {
                backend: self.describe(),
                layout: Layout::Local {
                    dir: l.dir().to_path_buf(),
                },
                min_replicas_ack: 0,
                failovers_seen: 0,
                problems: Vec::new(),
            },
        }
    }

    /// Failovers this process has seen on the store (a new master named by the sentinels, a
    /// new master for a Cluster's slots), counted once per failover for every backend of the
    /// process on the same deployment: the value for a `failovers_total` counter.
    pub fn failovers_seen(&self) -> u64 {
        match self {
            Backend::Redis(r) => r.failovers_seen(),
            Backend::Local(_) => 0,
        }
    }

    /// The redacted URL / directory, for logs.
    pub fn describe(&self) -> String {
        match self {
            Backend::Redis(r) => r.url().to_string(),
            Backend::Local(l) => format!("file://{}", l.dir().display()),
        }
    }

    /// Claims a tick (losers: one Redis round trip). An error means "not acquired".
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome> {
        match self {
            Backend::Redis(r) => r.claim(req).await,
            Backend::Local(l) => l.claim(req).await,
        }
    }

    /// Claims a tick that is too late to run and, if nobody else had claimed it, records it as
    /// `missed`. Returns whether this instance recorded it.
    pub async fn mark_missed(&self, req: &ClaimRequest, record: &RunRecord) -> Result<bool> {
        match self {
            Backend::Redis(r) => r.mark_missed(req, record).await,
            Backend::Local(l) => l.mark_missed(req, record).await,
        }
    }

    /// Extends the lease if it is still ours. `Ok(false)`: the lease is gone or held by someone
    /// else (never touched in that case).
    pub async fn renew(&self, lease: &Lease) -> Result<bool> {
        match (self, &lease.inner) {
            (Backend::Redis(r), LeaseInner::Redis { key, value }) => {
                r.renew(key, value, lease.ttl).await
            }
            (Backend::Local(_), LeaseInner::Local(l)) => Ok(l.is_held()),
            _ => Ok(false),
        }
    }

    /// Releases the lease if it is still ours (compare-and-delete). `Ok(false)`: it was not ours.
    pub async fn release(&self, lease: &Lease) -> Result<bool> {
        match (self, &lease.inner) {
            (Backend::Redis(r), LeaseInner::Redis { key, value }) => {
                r.finish(&lease.job, key, value, None).await
            }
            (Backend::Local(_), LeaseInner::Local(l)) => Ok(l.release()),
            _ => Ok(false),
        }
    }

    /// Records the run's history entry and releases its lease, in one round trip.
    /// Returns whether the lease was still ours.
    pub async fn finish(&self, lease: &Lease, record: &RunRecord) -> Result<bool> {
        match (self, &lease.inner) {
            (Backend::Redis(r), LeaseInner::Redis { key, value }) => {
                r.finish(&lease.job, key, value, Some(record)).await
            }
            (Backend::Local(l), LeaseInner::Local(lease_file)) => {
                let released = lease_file.release();
                l.append_history(record).await?;
                Ok(released)
            }
            _ => Ok(false),
        }
    }

    /// Registers (or updates) job metadata in the registry.
    pub async fn register_jobs(&self, metas: &[JobMeta]) -> Result<()> {
        match self {
            Backend::Redis(r) => r.register_jobs(metas).await,
            Backend::Local(l) => l.register_jobs(metas).await,
        }
    }

    /// Whether every job of `names` is in the registry (one cheap read).
    pub async fn jobs_registered(&self, names: &[String]) -> Result<bool> {
        match self {
            Backend::Redis(r) => r.jobs_registered(names).await,
            Backend::Local(l) => l.jobs_registered(names).await,
        }
    }

    /// All registered jobs, sorted by name.
    pub async fn list_jobs(&self) -> Result<Vec<JobMeta>> {
        match self {
            Backend::Redis(r) => r.list_jobs().await,
            Backend::Local(l) => l.list_jobs().await,
        }
    }

    /// The last `n` history records of a job, newest first.
    pub async fn history(&self, job: &str, n: usize) -> Result<Vec<RunRecord>> {
        match self {
            Backend::Redis(r) => r.history(job, n).await,
            Backend::Local(l) => l.history(job, n).await,
        }
    }

    /// Who holds the job's lease right now (overlap `skip` jobs), if anyone.
    pub async fn current_holder(&self, job: &str) -> Result<Option<Holder>> {
        match self {
            Backend::Redis(r) => r.current_holder(job).await,
            Backend::Local(l) => l.current_holder(job).await,
        }
    }

    /// Asks every running scheduler that has `job` to run it once now; exactly one instance
    /// runs it (through the normal claim). Returns the request id.
    pub async fn request_run(&self, job: &str) -> Result<String> {
        match self {
            Backend::Redis(r) => r.request_run(job).await,
            Backend::Local(l) => l.request_run(job).await,
        }
    }

    /// Starts delivering manual run requests `(job, request id)` to `tx` until `stop`.
    /// Failures and recoveries of a Redis subscription are reported to `health`.
    pub(crate) fn spawn_request_listener(
        &self,
        tx: mpsc::Sender<(String, String)>,
        health: Arc<Health>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        match self {
            Backend::Redis(r) => tokio::spawn(Arc::clone(r).listen_requests(tx, health, stop)),
            Backend::Local(l) => tokio::spawn(Arc::clone(l).listen_requests(tx, stop)),
        }
    }
}

impl std::fmt::Display for Backend {
    /// The redacted URL (never the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A fresh request id: time in microseconds plus pid and a counter, unique enough per cluster.
pub(crate) fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{n:x}",
        Utc::now().timestamp_micros(),
        std::process::id()
    )
}

/// The lease value / holder JSON without the token (the token is prepended by the claimer).
pub(crate) fn holder_json_tail(req: &ClaimRequest) -> String {
    let v = serde_json::json!({
        "host": req.identity.host,
        "pid": req.identity.pid,
        "started_at": req.started_at,
        "tick": req.tick.to_string(),
    });
    v.to_string()
}
