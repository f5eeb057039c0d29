//! Job specifications, policies, the context handed to a job run, and the records shared with
//! operator tools (registry metadata, run history, lease holder).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::schedule::{Schedule, parse_timezone};

/// What to do when a tick comes while the previous run of the same job is still running
/// (anywhere in the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip the tick (recorded as `skipped_overlap`). The default.
    #[default]
    Skip,
    /// Start the new run anyway (each run still has its own lease and token).
    Allow,
}

/// What to do with ticks whose time passed while the scheduler was not running them
/// (process paused or suspended, event loop blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum Misfire {
    /// Record late ticks as `missed` and wait for the next one. The default.
    #[default]
    Skip,
    /// Run the most recent late tick once if it is at most `grace` late; older ones are
    /// recorded as `missed`.
    RunLate {
        /// How late a tick may still start.
        #[serde(with = "duration_ms")]
        grace: Duration,
    },
}

/// The identity of a scheduler instance, written into leases and history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
}

impl Identity {
    /// This process: host name from `$HOSTNAME` or `/etc/hostname` (else `localhost`), and pid.
    pub fn current() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "localhost".to_owned());
        Self {
            host,
            pid: std::process::id(),
        }
    }
}

/// Static description of a cron job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Unique job name (used in keys: keep it short, no spaces).
    pub name: String,
    /// Cron expression: 5 fields (at second 0), 6 with seconds first, 7 with a year, or a
    /// nickname (`@daily`); see [`crate::Schedule::parse_for`].
    pub schedule: String,
    /// Timezone the expression is evaluated in.
    pub timezone: Tz,
    /// Lease time-to-live; the lease is renewed every `lease_ttl / 3` while the job runs.
    pub lease_ttl: Duration,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Misfire policy.
    pub misfire: Misfire,
}

impl JobSpec {
    /// A spec with defaults: UTC, 30 s lease, overlap `Skip`, misfire `Skip`.
    pub fn new(name: impl Into<String>, schedule: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            schedule: schedule.into(),
            timezone: Tz::UTC,
            lease_ttl: Duration::from_secs(30),
            overlap: Overlap::Skip,
            misfire: Misfire::Skip,
        }
    }

    /// Sets the timezone.
    pub fn timezone(mut self, tz: Tz) -> Self {
        self.timezone = tz;
        self
    }

    /// Sets the timezone from an IANA name; the error names the job and the zone.
    pub fn timezone_name(mut self, name: &str) -> Result<Self> {
        self.timezone = parse_timezone(&self.name, name)?;
        Ok(self)
    }

    /// Sets the lease TTL.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the overlap policy.
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// Sets the misfire policy.
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// Checks the spec and parses its schedule. Errors name the job.
    pub fn validate(&self) -> Result<Schedule> {
        let invalid = |reason: &str| Error::InvalidJob {
            job: self.name.clone(),
            reason: reason.to_owned(),
        };
        if self.name.is_empty() {
            return Err(invalid("the job name is empty"));
        }
        if self.name.len() > MAX_JOB_NAME {
            return Err(Error::InvalidJob {
                job: format!("{}...", self.name.chars().take(32).collect::<String>()),
                reason: format!(
                    "the job name is {} bytes long: at most {MAX_JOB_NAME} (it names the \
                     backend's keys and files)",
                    self.name.len()
                ),
            });
        }
        if self
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}' || c == '/')
        {
            return Err(invalid(
                "the job name must not contain whitespace, control characters, `{`, `}` or `/`",
            ));
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(invalid("lease_ttl must be at least 300 ms"));
        }
        Schedule::parse_for(&self.name, &self.schedule, self.timezone)
    }

    /// The registry form of this spec.
    pub fn meta(&self) -> JobMeta {
        JobMeta {
            name: self.name.clone(),
            schedule: self.schedule.clone(),
            timezone: self.timezone.name().to_owned(),
            lease_ttl_ms: u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            overlap: self.overlap,
            misfire: self.misfire,
        }
    }
}

/// The longest job name, in bytes: the local backend names files after it (`{job}.history.jsonl`
/// within a file system's 255-byte names), and Redis keys stay short.
pub const MAX_JOB_NAME: usize = 128;

/// The identity of one run: a scheduled tick (its UTC instant) or a manual request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TickId {
    /// A scheduled occurrence, identified by its UTC instant.
    Scheduled(DateTime<Utc>),
    /// A manual run requested with `request_run`, identified by the request id.
    Manual(String),
}

impl TickId {
    /// The key suffix: milliseconds since the epoch, or `manual:{id}`.
    pub fn key_part(&self) -> String {
        match self {
            TickId::Scheduled(t) => t.timestamp_millis().to_string(),
            TickId::Manual(id) => format!("manual:{id}"),
        }
    }
}

impl fmt::Display for TickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TickId::Scheduled(t) => {
                write!(
                    f,
                    "{}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )
            }
            TickId::Manual(id) => write!(f, "manual:{id}"),
        }
    }
}

/// What a job function receives for one run.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job name.
    pub job: String,
    /// The scheduled UTC instant of this tick (for a manual run: when the request was seen).
    pub tick: DateTime<Utc>,
    /// The tick identity (scheduled instant or manual request id).
    pub tick_id: TickId,
    /// The fencing token of this run: strictly increasing per job. Pass it to downstream
    /// systems so they can reject writes from a stale holder.
    pub token: u64,
    /// Cancelled when the run must stop: its lease could not be renewed (stop before another
    /// instance may start) or the scheduler is shutting down past its drain period.
    pub cancel: CancellationToken,
}

/// The boxed job function type.
pub type JobFn = Arc<dyn Fn(JobContext) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A job: its spec plus the function that runs it.
#[derive(Clone)]
pub struct Job {
    /// The spec.
    pub spec: JobSpec,
    pub(crate) func: JobFn,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job").field("spec", &self.spec).finish()
    }
}

impl Job {
    /// Creates a job from a spec and an async function, e.g.
    /// `Job::new(spec, |ctx| async move { do_work(ctx.token).await.map_err(|e| e.to_string()) })`.
    pub fn new<F, Fut>(spec: JobSpec, f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let func: JobFn = Arc::new(move |ctx| Box::pin(f(ctx)));
        Self { spec, func }
    }

    /// The job name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Job metadata as registered in the backend (`cron:jobs`), for operator tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    /// Job name.
    pub name: String,
    /// Cron expression.
    pub schedule: String,
    /// IANA timezone name.
    pub timezone: String,
    /// Lease TTL in milliseconds.
    pub lease_ttl_ms: u64,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Misfire policy.
    pub misfire: Misfire,
}

/// The next scheduled tick of a registered job strictly after `now`.
pub fn next_tick(meta: &JobMeta, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
    let tz = parse_timezone(&meta.name, &meta.timezone)?;
    let schedule = Schedule::parse_for(&meta.name, &meta.schedule, tz)?;
    Ok(schedule.next_after(now))
}

/// How a tick ended, as recorded in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The job returned `Ok`.
    Ok,
    /// The job returned `Err` (see `error`).
    Failed,
    /// The lease could not be renewed; the job was cancelled before the lease expired.
    LeaseLost,
    /// The tick came while a previous run still held the lease (overlap policy `skip`).
    SkippedOverlap,
    /// Nobody ran the tick in time (scheduler paused/late, misfire policy).
    Missed,
    /// The run was cancelled by a scheduler shutdown after the drain period.
    Cancelled,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::LeaseLost => "lease_lost",
            Outcome::SkippedOverlap => "skipped_overlap",
            Outcome::Missed => "missed",
            Outcome::Cancelled => "cancelled",
        })
    }
}

/// One history entry (a JSON object in `cron:{job}:history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Job name.
    pub job: String,
    /// Tick identity: RFC 3339 UTC instant, or `manual:{id}`.
    pub tick: String,
    /// Host that recorded the entry.
    pub host: String,
    /// Pid that recorded the entry.
    pub pid: u32,
    /// Fencing token of the run (absent for skipped/missed ticks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// When the run started (or the tick was judged).
    pub started_at: DateTime<Utc>,
    /// Run duration in milliseconds (0 when it did not run).
    pub duration_ms: u64,
    /// Outcome.
    pub outcome: Outcome,
    /// Error message for `failed`, reason for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The current lease holder of a job (the value of `cron:{job}:lease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Fencing token of the running job.
    pub token: u64,
    /// Host running it.
    pub host: String,
    /// Pid running it.
    pub pid: u32,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// The tick being run.
    #[serde(default)]
    pub tick: String,
}

pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_job() {
        let err = match JobSpec::new("report", "not a cron").validate() {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("report"), "{err}");
        let err = match JobSpec::new("report", "* * * * * *").timezone_name("Nowhere/City") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("report") && err.contains("Nowhere/City"),
            "{err}"
        );
    }

    #[test]
    fn meta_roundtrip_and_next_tick() {
        let spec = JobSpec::new("a", "0 30 2 * * *")
            .timezone(chrono_tz::Europe::Berlin)
            .misfire(Misfire::RunLate {
                grace: Duration::from_secs(5),
            });
        let meta = spec.meta();
        let json = serde_json::to_string(&meta).unwrap_or_default();
        let back: JobMeta = match serde_json::from_str(&json) {
            Ok(m) => m,
            Err(e) => panic!("{e}: {json}"),
        };
        assert_eq!(back, meta);
        let now = DateTime::parse_from_rfc3339("2026-03-29T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let next = next_tick(&meta, now).ok().flatten().map(|t| t.to_rfc3339());
        assert_eq!(next.as_deref(), Some("2026-03-29T01:00:00+00:00"));
    }
}
