//! Redis backend: tick claims, leases with fencing tokens, history, registry and manual triggers,
//! each a single round trip (Lua scripts), over a `deadpool` pool of multiplexed connections.
//!
//! # Keys
//!
//! The job name is wrapped in a Redis Cluster hash tag so that all keys of one job live in one
//! slot (the scripts touch several of them):
//!
//! | key | type | content |
//! |---|---|---|
//! | `cron:{job}:tick:{millis}` / `cron:{job}:tick:manual:{id}` | string, PX keep | owner `host:pid` of the tick |
//! | `cron:{job}:lease` | string, PX ttl | holder JSON `{"token","host","pid","started_at","tick"}` (overlap `skip`) |
//! | `cron:{job}:lease:{tick}` | string, PX ttl | same, per run (overlap `allow`) |
//! | `cron:{job}:token` | string (integer) | last fencing token |
//! | `cron:{job}:last` | string (integer) | highest claimed scheduled tick (millis): the watermark |
//! | `cron:{job}:history` | list | newest-first JSON [`RunRecord`]s, trimmed to [`HISTORY_LEN`] |
//! | `cron:jobs` | hash | job name -> JSON [`JobMeta`] |
//! | channel `cron:run` | pub/sub | manual run requests `{"job","id"}` |
//!
//! # Tick claim
//!
//! `SET cron:{job}:tick:{millis} host:pid NX PX keep` with keep = max(2 periods, 60 s), so an
//! instance whose clock lags behind cannot claim the tick again. A tick more than keep/2 older
//! than the newest claimed tick (`cron:{job}:last`) is refused as well, so even a host lagging
//! by more than `keep` (after the tick key expired) cannot re-run it. Smaller skews are allowed
//! to claim out of order (a slow-clock instance may claim tick T after a fast-clock one claimed
//! T+1): tokens then follow claim order, which is what fencing needs.
//!
//! # Claims the client gave up on
//!
//! A claim script may sit in Redis's input buffer for a long time (Redis paused by SIGSTOP, a
//! long `DEBUG SLEEP`, a fork stall) while the client times out and counts the tick as not run.
//! If Redis later ran it, it would take the lease with a fresh token that nobody runs or
//! releases, and the next ticks would be skipped for overlap until the lease expires. So every
//! claim carries a deadline on the *Redis server's* clock, and the script compares it with
//! `TIME` before touching anything: past it, the script returns status 4 and changes nothing
//! ([`Error::RedisTooLate`] if the client is still there to read it).
//!
//! The deadline is the moment the client starts the claim, converted to the Redis clock, plus
//! the operation timeout minus a margin for the reply's way back (a quarter of the timeout, at
//! most 500 ms). The conversion uses an offset between our monotonic clock and the server's
//! `TIME`, measured from our own replies (every claim reply carries `TIME`; a `TIME` round trip
//! first when no measurement is younger than a minute). The offset is taken at its lower bound
//! (server time minus the moment the reply arrived), so the deadline errs on the early side: no
//! host clock takes part and skew between hosts and Redis does not matter. What is left: a reply
//! that takes longer than the margin to come back, or a Redis clock stepped backwards within ten
//! seconds of a measurement, can still leave a claim the client gave up on; its lease then
//! expires after its TTL like any other.
//!
//! # Fencing token
//!
//! `INCR cron:{job}:token`; if the result is below the Redis server's `TIME` in microseconds, the
//! counter jumps to that value. Tokens are strictly increasing per job, and after Redis lost its
//! data (restart without persistence, failover to an empty replica) the next token is still
//! above every token issued before, as long as the Redis server clock does not go back.
//!
//! # Why a custom pool manager
//!
//! `deadpool-redis`'s manager sends `UNWATCH` + `PING` on every checkout, which would double the
//! round trips of a tick claim. This manager recycles connections without a round trip and
//! instead drops a connection from the pool as soon as a command on it fails with an I/O error
//! or times out.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, Pool, RecycleResult};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ClaimOutcome, ClaimRequest, HISTORY_LEN, Lease, LeaseInner, holder_json_tail, new_request_id,
};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::job::{Holder, JobMeta, Overlap, RunRecord, TickId};
use crate::url::RedactedUrl;

/// The registry hash.
pub const JOBS_KEY: &str = "cron:jobs";
/// The pub/sub channel of manual run requests.
pub const RUN_CHANNEL: &str = "cron:run";

/// Lua: `next_token(key, now)` issues a fencing token: `INCR key`, raised to the server's `TIME`
/// (`now`) in microseconds, and stored, when it is lower, so tokens keep increasing even after the
/// counter was lost (a Redis restarted empty). Job claims and singleton leases both issue theirs
/// with it.
pub(crate) const NEXT_TOKEN_LUA: &str = r#"
local function next_token(key, now)
  local t = redis.call('INCR', key)
  local us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if t < us then
    t = us
    redis.call('SET', key, string.format('%.0f', us))
  end
  return string.format('%.0f', t)
end
"#;

/// Claim a tick; on a win, issue a fencing token and take the lease, all atomically.
/// Returns `{status, token, value, server_ms}`: 0 claimed elsewhere, 1 won, 2 skipped (lease
/// held; value = current holder), 3 recorded as missed, 4 refused: run past the client's
/// deadline `ARGV[10]` (milliseconds on the server's clock), nothing changed.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &(NEXT_TOKEN_LUA.to_owned()
            + r#"
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if now_ms > tonumber(ARGV[10]) then
  return {4, '', '', now_ms}
end
local tick = tonumber(ARGV[8])
local last = nil
if tick then
  last = tonumber(redis.call('GET', KEYS[5]) or '0')
  if last - tick >= tonumber(ARGV[9]) then
    return {0, '', '', now_ms}
  end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, '', '', now_ms}
end
if tick and tick > last then
  redis.call('SET', KEYS[5], ARGV[8])
end
local mode = ARGV[4]
if mode == 'missed' then
  redis.call('LPUSH', KEYS[4], ARGV[6])
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[7]) - 1)
  return {3, '', '', now_ms}
end
if mode == 'skip' then
  local cur = redis.call('GET', KEYS[2])
  if cur then
    redis.call('LPUSH', KEYS[4], ARGV[6])
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[7]) - 1)
    return {2, '', cur, now_ms}
  end
end
local tok = next_token(KEYS[3], now)
local value = '{"token":' .. tok .. ',' .. string.sub(ARGV[5], 2)
redis.call('SET', KEYS[2], value, 'PX', ARGV[3])
return {1, tok, value, now_ms}
"#),
    )
});

/// How many of the job names `ARGV` are missing from the registry `KEYS[1]`, and the server's
/// clock in milliseconds: `{missing, server_ms}` (a scheduler's periodic check, which also keeps
/// the clock offset of claims fresh).
static REGISTRY_CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local missing = 0
for i, name in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], name) == 0 then
    missing = missing + 1
  end
end
local now = redis.call('TIME')
return {missing, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
"#,
    )
});

/// Compare-and-pexpire: extend the lease only if it still holds our exact value (job leases and
/// singleton leases alike).
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Compare-and-delete the lease, plus (optionally) the history record, in one round trip.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
if ARGV[2] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
return released
"#,
    )
});

/// Tuning of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Deadline for one operation, including getting a connection (default 2 s).
    pub op_timeout: Duration,
    /// Maximum pooled connections (default 8; connections are multiplexed).
    pub pool_size: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(2),
            pool_size: 8,
        }
    }
}

/// Pool manager creating multiplexed connections; recycling costs no round trip.
struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }

    async fn recycle(
        &self,
        _conn: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        Ok(())
    }
}

/// A measurement tying our monotonic clock to the Redis server's `TIME`.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    /// Lower bound of (server milliseconds - our milliseconds since `epoch`).
    offset_ms: i64,
    /// When it was taken.
    at: Instant,
}

/// A measurement older than this is replaced by any newer one, even a looser one.
const SAMPLE_KEEP: Duration = Duration::from_secs(10);
/// With no measurement younger than this, a claim first asks the server's `TIME`.
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(60);

/// The Redis backend.
pub struct RedisBackend {
    url: RedactedUrl,
    client: Client,
    pool: Pool<Manager>,
    opts: RedisOptions,
    /// Origin of our side of the clock offset.
    epoch: Instant,
    clock: Mutex<Option<ClockSample>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish()
    }
}

fn key(job: &str, suffix: &str) -> String {
    format!("cron:{{{job}}}:{suffix}")
}

/// The lease key of a job (overlap `skip`).
pub fn lease_key(job: &str) -> String {
    key(job, "lease")
}

/// The history list key of a job.
pub fn history_key(job: &str) -> String {
    key(job, "history")
}

/// The fencing token counter key of a job.
pub fn token_key(job: &str) -> String {
    key(job, "token")
}

/// The claim key of one tick of a job.
pub fn tick_key(job: &str, tick: &TickId) -> String {
    key(job, &format!("tick:{}", tick.key_part()))
}

#[derive(Serialize, Deserialize)]
struct RunRequest {
    job: String,
    id: String,
}

fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A Redis client for `url` whose connects and replies are bounded by `timeout`, with the URL
/// redacted for messages (the job backend's pool and the singleton leases use it).
pub(crate) fn client(
    url: &str,
    timeout: Duration,
) -> Result<(RedactedUrl, Client, AsyncConnectionConfig)> {
    let redacted = RedactedUrl::new(url);
    let client = Client::open(url).map_err(|e| Error::InvalidUrl {
        url: redacted.to_string(),
        reason: e.to_string(),
    })?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    Ok((redacted, client, config))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt {
        what: "encoding a record".to_owned(),
        reason: e.to_string(),
    })
}

impl RedisBackend {
    /// Creates the backend (no connection is made until the first operation).
    pub fn new(url: &str, opts: RedisOptions) -> Result<Self> {
        let (redacted, client, config) = client(url, opts.op_timeout)?;
        let manager = Manager {
            client: client.clone(),
            config,
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .build()
            .map_err(|e| Error::InvalidUrl {
                url: redacted.to_string(),
                reason: format!("building the connection pool: {e}"),
            })?;
        Ok(Self {
            url: redacted,
            client,
            pool,
            opts,
            epoch: Instant::now(),
            clock: Mutex::new(None),
        })
    }

    fn local_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }

    /// Records that the server's clock read `server_ms` at some moment before `received`.
    fn observe_server_time(&self, server_ms: i64, received: Instant) {
        let sample = ClockSample {
            offset_ms: server_ms.saturating_sub(self.local_ms(received)),
            at: received,
        };
        let mut best = match self.clock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let replace = match *best {
            None => true,
            Some(b) => {
                sample.offset_ms >= b.offset_ms || received.duration_since(b.at) > SAMPLE_KEEP
            }
        };
        if replace {
            *best = Some(sample);
        }
    }

    /// The offset to the server's clock (lower bound): the latest measurement, or a `TIME`
    /// round trip when there is none younger than [`SAMPLE_MAX_AGE`].
    async fn server_offset(&self) -> Result<i64> {
        let known = match self.clock.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        if let Some(s) = known.filter(|s| s.at.elapsed() <= SAMPLE_MAX_AGE) {
            return Ok(s.offset_ms);
        }
        let (secs, micros): (i64, i64) = self
            .with_conn("read server time", |c| {
                Box::pin(async move { redis::cmd("TIME").query_async(c).await })
            })
            .await?;
        let received = Instant::now();
        let server_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
        self.observe_server_time(server_ms, received);
        Ok(server_ms.saturating_sub(self.local_ms(received)))
    }

    /// The deadline, on the server's clock, of an operation starting at `start`: past it the
    /// client has given up (less a margin for the reply to come back in time).
    fn server_deadline_ms(&self, offset_ms: i64, start: Instant) -> i64 {
        let timeout = self.opts.op_timeout;
        let margin = (timeout / 4).min(Duration::from_millis(500));
        let budget = i64::try_from((timeout - margin).as_millis()).unwrap_or(i64::MAX);
        self.local_ms(start)
            .saturating_add(offset_ms)
            .saturating_add(budget)
    }

    /// The redacted URL.
    pub fn url(&self) -> &RedactedUrl {
        &self.url
    }

    fn redis_err(&self, op: &'static str, source: redis::RedisError) -> Error {
        Error::Redis {
            url: self.url.to_string(),
            op,
            source,
        }
    }

    async fn conn(&self, op: &'static str) -> Result<Object<Manager>> {
        self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(source) => self.redis_err(op, source),
            other => Error::Pool {
                url: self.url.to_string(),
                reason: other.to_string(),
            },
        })
    }

    /// Runs `f` on a pooled connection with the operation deadline; broken connections are
    /// dropped from the pool.
    async fn with_conn<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut MultiplexedConnection,
        ) -> futures_util::future::BoxFuture<'c, redis::RedisResult<T>>,
    {
        let work = async {
            let mut obj = self.conn(op).await?;
            match f(&mut obj).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if is_broken(&e) {
                        drop(Object::take(obj));
                        // The server probably went away (or restarted): its other idle
                        // connections are dead too, and would each fail one more operation.
                        self.pool.retain(|_, _| false);
                    }
                    Err(self.redis_err(op, e))
                }
            }
        };
        match tokio::time::timeout(self.opts.op_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::RedisTimeout {
                url: self.url.to_string(),
                op,
                timeout_ms: millis(self.opts.op_timeout),
            }),
        }
    }

    async fn script<T: FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T> {
        self.with_conn(op, move |c| {
            Box::pin(async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke_async::<T>(c).await
            })
        })
        .await
    }

    async fn claim_inner(
        &self,
        req: &ClaimRequest,
        mode: &str,
        record: Option<&RunRecord>,
    ) -> Result<(i64, String, String)> {
        let offset_ms = self.server_offset().await?;
        let deadline_ms = self.server_deadline_ms(offset_ms, Instant::now());
        let lease = match req.overlap {
            Overlap::Skip => lease_key(&req.job),
            Overlap::Allow => key(&req.job, &format!("lease:{}", req.tick.key_part())),
        };
        let record = match record {
            Some(r) => to_json(r)?,
            None => String::new(),
        };
        let keys = vec![
            tick_key(&req.job, &req.tick),
            lease,
            token_key(&req.job),
            history_key(&req.job),
            key(&req.job, "last"),
        ];
        let args = vec![
            format!("{}:{}", req.identity.host, req.identity.pid),
            millis(req.keep).to_string(),
            millis(req.lease_ttl).to_string(),
            mode.to_owned(),
            holder_json_tail(req),
            record,
            HISTORY_LEN.to_string(),
            match &req.tick {
                TickId::Scheduled(t) => t.timestamp_millis().to_string(),
                TickId::Manual(_) => String::new(),
            },
            (millis(req.keep) / 2).to_string(),
            deadline_ms.to_string(),
        ];
        let (status, token, value, server_ms): (i64, String, String, i64) =
            self.script("claim tick", &CLAIM, keys, args).await?;
        self.observe_server_time(server_ms, Instant::now());
        if status == 4 {
            return Err(Error::RedisTooLate {
                url: self.url.to_string(),
                op: "claim tick",
                late_ms: u64::try_from(server_ms.saturating_sub(deadline_ms)).unwrap_or(0),
            });
        }
        Ok((status, token, value))
    }

    pub(crate) async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome> {
        let mode = match req.overlap {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        };
        let skipped = req.record_not_run(
            crate::job::Outcome::SkippedOverlap,
            "the previous run still holds the lease",
        );
        let (status, token, value) = self.claim_inner(req, mode, Some(&skipped)).await?;
        match status {
            0 => Ok(ClaimOutcome::ClaimedElsewhere),
            1 => {
                let token = token.parse::<u64>().map_err(|e| Error::Corrupt {
                    what: format!("job `{}`: fencing token `{token}`", req.job),
                    reason: e.to_string(),
                })?;
                let lease_key = match req.overlap {
                    Overlap::Skip => lease_key(&req.job),
                    Overlap::Allow => key(&req.job, &format!("lease:{}", req.tick.key_part())),
                };
                Ok(ClaimOutcome::Won(Lease {
                    job: req.job.clone(),
                    tick: req.tick.clone(),
                    token,
                    ttl: req.lease_ttl,
                    inner: LeaseInner::Redis {
                        key: lease_key,
                        value,
                    },
                }))
            }
            2 => Ok(ClaimOutcome::SkippedOverlap {
                holder: serde_json::from_str(&value).ok(),
            }),
            other => Err(Error::Corrupt {
                what: format!("job `{}`: claim script", req.job),
                reason: format!("unexpected status {other}"),
            }),
        }
    }

    pub(crate) async fn mark_missed(&self, req: &ClaimRequest, record: &RunRecord) -> Result<bool> {
        let (status, _, _) = self.claim_inner(req, "missed", Some(record)).await?;
        Ok(status == 3)
    }

    pub(crate) async fn renew(&self, key: &str, value: &str, ttl: Duration) -> Result<bool> {
        let n: i64 = self
            .script(
                "renew lease",
                &RENEW,
                vec![key.to_owned()],
                vec![value.to_owned(), millis(ttl).to_string()],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn finish(
        &self,
        job: &str,
        key: &str,
        value: &str,
        record: Option<&RunRecord>,
    ) -> Result<bool> {
        let record = match record {
            Some(r) => to_json(r)?,
            None => String::new(),
        };
        let n: i64 = self
            .script(
                "release lease",
                &FINISH,
                vec![key.to_owned(), history_key(job)],
                vec![value.to_owned(), record, HISTORY_LEN.to_string()],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn register_jobs(&self, metas: &[JobMeta]) -> Result<()> {
        if metas.is_empty() {
            return Ok(());
        }
        let mut pairs = Vec::with_capacity(metas.len());
        for m in metas {
            pairs.push((m.name.clone(), to_json(m)?));
        }
        self.with_conn("register jobs", move |c| {
            Box::pin(async move {
                redis::cmd("HSET")
                    .arg(JOBS_KEY)
                    .arg(&pairs)
                    .query_async::<()>(c)
                    .await
            })
        })
        .await
    }

    pub(crate) async fn jobs_registered(&self, names: &[String]) -> Result<bool> {
        if names.is_empty() {
            return Ok(true);
        }
        let (missing, server_ms): (i64, i64) = self
            .script(
                "check job registry",
                &REGISTRY_CHECK,
                vec![JOBS_KEY.to_owned()],
                names.to_vec(),
            )
            .await?;
        self.observe_server_time(server_ms, Instant::now());
        Ok(missing == 0)
    }

    pub(crate) async fn list_jobs(&self) -> Result<Vec<JobMeta>> {
        let all: Vec<(String, String)> = self
            .with_conn("list jobs", |c| {
                Box::pin(async move { redis::cmd("HGETALL").arg(JOBS_KEY).query_async(c).await })
            })
            .await?;
        let mut out = Vec::with_capacity(all.len());
        for (name, json) in all {
            let meta: JobMeta = serde_json::from_str(&json).map_err(|e| Error::Corrupt {
                what: format!("registry entry of job `{name}`"),
                reason: e.to_string(),
            })?;
            out.push(meta);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) async fn history(&self, job: &str, n: usize) -> Result<Vec<RunRecord>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let k = history_key(job);
        let stop = isize::try_from(n).unwrap_or(isize::MAX) - 1;
        let raw: Vec<String> = self
            .with_conn("read history", move |c| {
                Box::pin(async move {
                    redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(stop)
                        .query_async(c)
                        .await
                })
            })
            .await?;
        raw.iter()
            .map(|s| {
                serde_json::from_str(s).map_err(|e| Error::Corrupt {
                    what: format!("history record of job `{job}`"),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    pub(crate) async fn current_holder(&self, job: &str) -> Result<Option<Holder>> {
        let k = lease_key(job);
        let raw: Option<String> = self
            .with_conn("read lease", move |c| {
                Box::pin(async move { redis::cmd("GET").arg(&k).query_async(c).await })
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: format!("lease of job `{job}`"),
                    reason: e.to_string(),
                }),
        }
    }

    pub(crate) async fn request_run(&self, job: &str) -> Result<String> {
        let id = new_request_id();
        let msg = to_json(&RunRequest {
            job: job.to_owned(),
            id: id.clone(),
        })?;
        let receivers: i64 = self
            .with_conn("publish run request", move |c| {
                Box::pin(async move {
                    redis::cmd("PUBLISH")
                        .arg(RUN_CHANNEL)
                        .arg(&msg)
                        .query_async(c)
                        .await
                })
            })
            .await?;
        if receivers == 0 {
            // Nobody subscribed: no scheduler would ever take it (a caller would wait in vain).
            return Err(Error::InvalidJob {
                job: job.to_owned(),
                reason: "no scheduler listens for run requests on this backend: no supervisor \
                         or worker with jobs is running"
                    .into(),
            });
        }
        tracing::info!(job, request = %id, receivers, "manual run requested");
        Ok(id)
    }

    /// Subscribes to [`RUN_CHANNEL`] on a dedicated connection and forwards requests to `tx`;
    /// reconnects (with a short backoff) whenever the connection fails. Failures are reported
    /// to `health` (which logs an outage once), not logged one by one.
    pub(crate) async fn listen_requests(
        self: std::sync::Arc<Self>,
        tx: mpsc::Sender<(String, String)>,
        health: std::sync::Arc<Health>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let connect = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(RUN_CHANNEL).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let ps = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.opts.op_timeout, connect) => r,
            };
            let ps = match ps {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => {
                    health.failure(
                        "subscribing to manual run requests",
                        &self.redis_err("subscribe", e),
                        0,
                    );
                    sleep_or_stop(&stop, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => {
                    health.failure(
                        "subscribing to manual run requests",
                        &Error::RedisTimeout {
                            url: self.url.to_string(),
                            op: "subscribe",
                            timeout_ms: millis(self.opts.op_timeout),
                        },
                        0,
                    );
                    sleep_or_stop(&stop, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            health.success();
            tracing::debug!(url = %self.url, channel = RUN_CHANNEL, "subscribed to manual-trigger channel");
            let mut stream = ps.into_on_message();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else {
                    tracing::debug!(url = %self.url, "manual-trigger subscription lost; reconnecting");
                    break;
                };
                let payload: String = match msg.get_payload() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                match serde_json::from_str::<RunRequest>(&payload) {
                    Ok(r) => {
                        if tx.send((r.job, r.id)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed manual run request"),
                }
            }
            sleep_or_stop(&stop, backoff).await;
        }
    }
}

async fn sleep_or_stop(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
