//! The crate's single error type, with the job name or the redacted backend URL as context.

use std::path::PathBuf;

/// Everything that can go wrong in `cronlock`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job's cron expression does not parse.
    #[error("job `{job}`: invalid cron expression `{expr}`: {reason}")]
    InvalidSchedule {
        /// The job name.
        job: String,
        /// The expression as given.
        expr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A job's timezone name is not an IANA zone known to `chrono-tz`.
    #[error("job `{job}`: unknown timezone `{zone}` (expected an IANA name like `Europe/Berlin`)")]
    UnknownTimezone {
        /// The job name.
        job: String,
        /// The zone name as given.
        zone: String,
    },
    /// A job specification is invalid for another reason (empty name, zero TTL, ...).
    #[error("job `{job}`: {reason}")]
    InvalidJob {
        /// The job name.
        job: String,
        /// What is wrong.
        reason: String,
    },
    /// Two jobs with the same name were added to one scheduler.
    #[error("job `{job}` is already registered in this scheduler")]
    DuplicateJob {
        /// The job name.
        job: String,
    },
    /// The backend URL cannot be used.
    #[error("invalid backend url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with its password redacted.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A Redis command failed (connection refused, timeout, script error, ...).
    #[error("redis at {url}: {op}: {source}")]
    Redis {
        /// The URL with its password redacted.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis operation did not finish within its deadline.
    #[error("redis at {url}: {op}: timed out after {timeout_ms} ms")]
    RedisTimeout {
        /// The URL with its password redacted.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// The deadline in milliseconds.
        timeout_ms: u64,
    },
    /// A claim reached Redis after the deadline its client had set (Redis was paused or
    /// overloaded): the script refused it and changed nothing, so the tick is not run.
    #[error(
        "redis at {url}: {op}: refused by Redis, which ran it {late_ms} ms past the client's deadline (tick not run)"
    )]
    RedisTooLate {
        /// The URL with its password redacted.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// How far past the deadline Redis ran it, in milliseconds.
        late_ms: u64,
    },
    /// No master could be found through the sentinels: names each sentinel that could not be
    /// reached, did not know the master name, or reported the master down.
    #[error("redis sentinel at {url}: master `{master}`: {reason}")]
    Sentinel {
        /// The URL with its passwords redacted.
        url: String,
        /// The master name the sentinels were asked for.
        master: String,
        /// What each sentinel answered.
        reason: String,
    },
    /// The keys of one operation hash to different Redis Cluster slots (a script may touch
    /// only one slot): a job or singleton name that breaks its `{...}` hash tag.
    #[error(
        "redis cluster at {url}: {op}: keys in different hash slots ({keys}): every key of one \
         operation must share its {{hash tag}}; a name containing `{{` or `}}` breaks it"
    )]
    CrossSlot {
        /// The URL with its passwords redacted.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// The keys and their slots.
        keys: String,
    },
    /// A write was not acknowledged by `min_replicas_ack` replicas within `wait_timeout`: it
    /// could vanish in a failover, so it is not acted upon (the tick is not run, the lease not
    /// taken or not counted as renewed).
    #[error(
        "redis at {url}: {op}: acknowledged by {acked} of the {wanted} replicas required \
         (min_replicas_ack) within {timeout_ms} ms; {consequence}"
    )]
    NotReplicated {
        /// The URL with its passwords redacted.
        url: String,
        /// What we were doing.
        op: &'static str,
        /// Replicas that acknowledged.
        acked: u64,
        /// `min_replicas_ack`.
        wanted: u32,
        /// `wait_timeout` in milliseconds.
        timeout_ms: u64,
        /// What was done about it.
        consequence: &'static str,
    },
    /// Getting a connection from the pool failed.
    #[error("redis at {url}: connection pool: {reason}")]
    Pool {
        /// The URL with its password redacted.
        url: String,
        /// The pool's error message.
        reason: String,
    },
    /// A file of the local backend could not be read, written or locked.
    #[error("local backend: {op} `{}`: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The local backend's state directory could be controlled by another user: it belongs to
    /// someone else, or others may write into it (they could hold its locks and block the jobs).
    #[error(
        "local backend: state directory `{}` {problem} (we are uid {our_uid}): refusing to use it, \
         since another user could hold its locks and block the jobs; remove it or choose another \
         directory", path.display()
    )]
    UnsafeStateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong (names the owner uid or the mode).
        problem: String,
        /// Our effective uid.
        our_uid: u32,
    },
    /// Stored data (a history record, registry entry, state file) could not be decoded.
    #[error("{what}: {reason}")]
    Corrupt {
        /// Which data.
        what: String,
        /// The decoding error.
        reason: String,
    },
    /// A blocking task of the local backend panicked or was cancelled.
    #[error("local backend: background task failed: {0}")]
    Task(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
