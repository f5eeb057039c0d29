//! Redis backend: tick claims, leases with fencing tokens, history, registry and manual triggers,
//! each a single round trip (Lua scripts), over a `deadpool` pool of multiplexed connections to
//! one server, to the master a set of sentinels names, or to a Redis Cluster (see [`url`] for
//! the URL forms, [`conn`] for how a failover is followed, [`topology`] for `check`/`status`).
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
//! | channel `cron:run` | pub/sub | manual run requests `{"job","id"}` (sharded pub/sub on a Cluster) |
//!
//! On a Redis Cluster every script touches the keys of one job (or one singleton, or the
//! registry alone), so each runs on one shard; a name that breaks the hash tag (one containing
//! `{` or `}`) is refused with [`Error::CrossSlot`] before anything is sent. The clock offset
//! below is measured per slot (each shard has its own clock), and manual run requests use
//! `SPUBLISH` / `SSUBSCRIBE`.
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
//! first when no measurement is younger than a minute, or after any failure: the next server
//! may be another one, with its own clock). The deadline counts from the start of the claim,
//! that round trip included. The offset is taken at its lower bound
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
//! # Failover (Sentinel, Cluster)
//!
//! Replication is asynchronous: a claim the master acknowledged can be lost with it, and the
//! promoted replica would let the tick be claimed (and run) again. With `min_replicas_ack = n`
//! every claim that wins a tick, every lease acquisition and every renewal is followed, in the
//! same pipeline on the same connection, by `WAIT n wait_timeout`; fewer acknowledgements and
//! the claim is not run (its lease is released and a history record says why), the acquisition
//! is given back, the renewal does not count. What a failover can still lose is then only
//! what no replica had acknowledged, which nobody acted upon (unless the failover promotes a
//! replica that had not acknowledged while one that had is still alive: Sentinel and Cluster
//! both prefer the replica with the most data).
//!
//! A promoted replica may have missed increments of a token counter: its next token is still
//! raised to its `TIME` in microseconds, above every token the lost master issued as long as the
//! new master's clock is not behind the old one's by more than the failover took (Sentinel's
//! `down-after-milliseconds` / Cluster's `cluster-node-timeout` at least). With
//! `min_replicas_ack` a token that reached no replica was never handed to a job at all.
//!
//! # Why a custom pool manager
//!
//! `deadpool-redis`'s manager sends `UNWATCH` + `PING` on every checkout, which would double the
//! round trips of a tick claim. This manager recycles connections without a round trip and
//! instead drops a connection from the pool as soon as a command on it fails with an I/O error,
//! times out, or meets a demoted master (`READONLY`); the pool is then emptied, so the next
//! operation connects again (and, on Sentinel, asks the sentinels for the master again).

pub mod conn;
pub mod topology;
pub mod url;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Object, Pool};
use futures_util::StreamExt;
use redis::{FromRedisValue, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::conn::{Conn, Endpoint, Manager};
use self::topology::Topology;
pub use self::url::AckPolicy;
use self::url::RedisUrl;
use super::{
    ClaimOutcome, ClaimRequest, HISTORY_LEN, Lease, LeaseInner, holder_json_tail, new_request_id,
};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::job::{Holder, JobMeta, Outcome, Overlap, RunRecord, TickId};
use crate::url::RedactedUrl;

/// The registry hash.
pub const JOBS_KEY: &str = "cron:jobs";
/// The pub/sub channel of manual run requests.
pub const RUN_CHANNEL: &str = "cron:run";

/// A Lua script: its code (sent with `EVAL` when it is pipelined with `WAIT`) and the
/// `EVALSHA` form the `redis` crate sends otherwise.
pub(crate) struct Lua {
    code: String,
    script: Script,
}

impl Lua {
    pub(crate) fn new(code: impl Into<String>) -> Lua {
        let code = code.into();
        let script = Script::new(&code);
        Lua { code, script }
    }
}

/// Lua: `next_token(key, now)` issues a fencing token: `INCR key`, raised to the server's `TIME`
/// (`now`) in microseconds, and stored, when it is lower, so tokens keep increasing even after the
/// counter was lost (a Redis restarted empty, a promoted replica that missed increments). Job
/// claims and singleton leases both issue theirs with it.
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
static CLAIM: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        NEXT_TOKEN_LUA.to_owned()
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
"#,
    )
});

/// How many of the job names `ARGV` are missing from the registry `KEYS[1]`, and the server's
/// clock in milliseconds: `{missing, server_ms}` (a scheduler's periodic check, which also keeps
/// the clock offset of claims fresh).
static REGISTRY_CHECK: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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

/// The server's clock in milliseconds, on the node that holds `KEYS[1]` (a key is what routes
/// a script to its shard on a Cluster; it is not read).
static SERVER_TIME: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local now = redis.call('TIME')
return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"#,
    )
});

/// Compare-and-pexpire: extend the lease only if it still holds our exact value (job leases and
/// singleton leases alike).
pub(crate) static RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Compare-and-delete the lease, plus (optionally) the history record, in one round trip.
static FINISH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
-- A retry of a finish whose answer was lost (a failover) records the run once.
if ARGV[2] ~= '' and redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then
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
    /// Replicas that must acknowledge a claim, a lease acquisition or a renewal; `None`: the
    /// URL's `min_replicas_ack` (default 0).
    pub min_replicas_ack: Option<u32>,
    /// How long to wait for them; `None`: the URL's `wait_timeout` (default 200 ms).
    pub wait_timeout: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(2),
            pool_size: 8,
            min_replicas_ack: None,
            wait_timeout: None,
        }
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
    endpoint: Arc<Endpoint>,
    pool: Pool<Manager>,
    opts: RedisOptions,
    ack: AckPolicy,
    /// Origin of our side of the clock offset.
    epoch: Instant,
    /// Clock offsets per slot (a Cluster's shards have their own clocks; slot 0 otherwise).
    /// Forgotten after any failure: the next claim may meet another server (a failover).
    clock: Mutex<HashMap<u16, ClockSample>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("endpoint", &self.endpoint)
            .field("opts", &self.opts)
            .field("ack", &self.ack)
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

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key).
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[derive(Serialize, Deserialize)]
struct RunRequest {
    job: String,
    id: String,
}

/// A connection that must not be used again: the server went away, did not answer, or is no
/// longer the master (a demoted master answers writes with `READONLY`).
fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt {
        what: "encoding a record".to_owned(),
        reason: e.to_string(),
    })
}

/// The margin left for a reply's way back: a quarter of the timeout, at most 500 ms.
fn reply_margin(timeout: Duration) -> Duration {
    (timeout / 4).min(Duration::from_millis(500))
}

impl RedisBackend {
    /// Creates the backend (no connection is made until the first operation). `url` is any
    /// form [`url`] describes; the replication options come from `opts` when set there, else
    /// from the URL.
    pub fn new(url: &str, opts: RedisOptions) -> Result<Self> {
        let parsed = RedisUrl::parse(url)?;
        let redacted = parsed.redacted.clone();
        let ack = AckPolicy {
            min_replicas_ack: opts
                .min_replicas_ack
                .or(parsed.min_replicas_ack)
                .unwrap_or(0),
            wait_timeout: opts
                .wait_timeout
                .or(parsed.wait_timeout)
                .unwrap_or(url::DEFAULT_WAIT_TIMEOUT),
        };
        if ack.min_replicas_ack > 0 {
            // A claim must still reach Redis well within its deadline after the wait.
            let left = opts
                .op_timeout
                .saturating_sub(reply_margin(opts.op_timeout))
                .saturating_sub(ack.wait_timeout);
            if left < opts.op_timeout / 4 {
                return Err(Error::InvalidUrl {
                    url: redacted.to_string(),
                    reason: format!(
                        "wait_timeout {} ms leaves too little of the operation deadline ({} ms): \
                         keep it under {} ms",
                        ack.wait_timeout.as_millis(),
                        opts.op_timeout.as_millis(),
                        (opts
                            .op_timeout
                            .saturating_sub(reply_margin(opts.op_timeout))
                            - opts.op_timeout / 4)
                            .as_millis()
                    ),
                });
            }
        }
        let endpoint = Arc::new(Endpoint::new(&parsed, opts.op_timeout)?);
        let pool = Pool::builder(Manager {
            endpoint: Arc::clone(&endpoint),
        })
        .max_size(opts.pool_size.max(1))
        .build()
        .map_err(|e| Error::InvalidUrl {
            url: redacted.to_string(),
            reason: format!("building the connection pool: {e}"),
        })?;
        Ok(Self {
            url: redacted,
            endpoint,
            pool,
            opts,
            ack,
            epoch: Instant::now(),
            clock: Mutex::new(HashMap::new()),
        })
    }

    /// The replication requirement in force.
    pub fn ack_policy(&self) -> AckPolicy {
        self.ack
    }

    /// Failovers this process has seen on this deployment (see [`conn`]).
    pub fn failovers_seen(&self) -> u64 {
        self.endpoint.failovers.count()
    }

    /// The deployment's nodes and their health now (bounded by the operation timeout).
    pub async fn topology(&self) -> Topology {
        let conn = if self.endpoint.is_cluster() {
            match tokio::time::timeout(self.opts.op_timeout, self.conn("topology")).await {
                Ok(Ok(c)) => Ok(Conn::clone(&c)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no connection within {} ms",
                    self.opts.op_timeout.as_millis()
                )),
            }
        } else {
            Err("not a cluster".to_owned())
        };
        self.endpoint.topology(conn, self.ack).await
    }

    fn slot_of(&self, key: &str) -> u16 {
        if self.endpoint.is_cluster() {
            key_slot(key)
        } else {
            0
        }
    }

    fn local_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, HashMap<u16, ClockSample>> {
        match self.clock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records that the server holding `slot` read `server_ms` at some moment before `received`.
    fn observe_server_time(&self, slot: u16, server_ms: i64, received: Instant) {
        let sample = ClockSample {
            offset_ms: server_ms.saturating_sub(self.local_ms(received)),
            at: received,
        };
        let mut samples = self.samples();
        let replace = match samples.get(&slot) {
            None => true,
            Some(b) => {
                sample.offset_ms >= b.offset_ms || received.duration_since(b.at) > SAMPLE_KEEP
            }
        };
        if replace {
            samples.insert(slot, sample);
        }
    }

    /// The offset to the clock of the server holding `key` (lower bound): the latest
    /// measurement, or a `TIME` round trip when there is none younger than [`SAMPLE_MAX_AGE`].
    async fn server_offset(&self, key: &str) -> Result<i64> {
        let slot = self.slot_of(key);
        let known = self.samples().get(&slot).copied();
        if let Some(s) = known.filter(|s| s.at.elapsed() <= SAMPLE_MAX_AGE) {
            return Ok(s.offset_ms);
        }
        let server_ms: i64 = self
            .script(
                "read server time",
                &SERVER_TIME,
                vec![key.to_owned()],
                vec![],
            )
            .await?;
        let received = Instant::now();
        self.observe_server_time(slot, server_ms, received);
        Ok(server_ms.saturating_sub(self.local_ms(received)))
    }

    /// The deadline, on the server's clock, of a claim starting at `start`: past it the client
    /// has given up (less a margin for the reply to come back in time, and the time `WAIT` may
    /// take after it).
    fn server_deadline_ms(&self, offset_ms: i64, start: Instant) -> i64 {
        let timeout = self.opts.op_timeout;
        let mut budget = timeout - reply_margin(timeout);
        if self.ack.min_replicas_ack > 0 {
            budget = budget.saturating_sub(self.ack.wait_timeout);
        }
        let budget = i64::try_from(budget.as_millis()).unwrap_or(i64::MAX);
        self.local_ms(start)
            .saturating_add(offset_ms)
            .saturating_add(budget)
    }

    /// The redacted URL.
    pub fn url(&self) -> &RedactedUrl {
        &self.url
    }

    fn redis_err(&self, op: &'static str, source: redis::RedisError) -> Error {
        self.endpoint.redis_err(op, source)
    }

    async fn conn(&self, op: &'static str) -> Result<Object<Manager>> {
        self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            other => Error::Pool {
                url: self.url.to_string(),
                reason: format!("{op}: {other}"),
            },
        })
    }

    /// After a failure: the server may have changed (failover, restart): forget its clock, and
    /// on a Cluster read the slot map again once operations succeed.
    fn failed(&self) {
        self.samples().clear();
        self.endpoint.note_failure();
    }

    /// Runs `f` on a pooled connection with the operation deadline; broken connections are
    /// dropped from the pool.
    async fn with_conn<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut Conn,
        ) -> futures_util::future::BoxFuture<'c, redis::RedisResult<T>>,
    {
        let work = async {
            let mut obj = self.conn(op).await?;
            match f(&mut obj).await {
                Ok(v) => {
                    self.endpoint.note_success(&obj);
                    Ok(v)
                }
                Err(e) => {
                    if is_broken(&e) {
                        drop(Object::take(obj));
                        // The server probably went away (or restarted, or was demoted): its
                        // other idle connections are dead too, and would each fail one more
                        // operation.
                        self.pool.retain(|_, _| false);
                    }
                    Err(self.redis_err(op, e))
                }
            }
        };
        let r = match tokio::time::timeout(self.opts.op_timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // The connection may be stuck behind a reply that never comes.
                self.pool.retain(|_, _| false);
                Err(Error::RedisTimeout {
                    url: self.url.to_string(),
                    op,
                    timeout_ms: millis(self.opts.op_timeout),
                })
            }
        };
        if r.is_err() {
            self.failed();
        }
        r
    }

    /// On a Cluster, every key of one script must hash to one slot.
    fn check_slots(&self, op: &'static str, keys: &[String]) -> Result<()> {
        if !self.endpoint.is_cluster() {
            return Ok(());
        }
        let slots: Vec<u16> = keys.iter().map(|k| key_slot(k)).collect();
        if slots.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        Err(Error::CrossSlot {
            url: self.url.to_string(),
            op,
            keys: keys
                .iter()
                .zip(&slots)
                .map(|(k, s)| format!("{k} -> {s}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Runs a script.
    pub(crate) async fn script<T: FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        lua: &'static Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T> {
        self.check_slots(op, &keys)?;
        self.with_conn(op, move |c| {
            Box::pin(async move {
                let mut inv = lua.script.prepare_invoke();
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

    /// Runs a script that hands out or extends a lease, followed (with `min_replicas_ack`) by
    /// `WAIT n wait_timeout` in one pipeline on one connection (`WAIT` counts the replicas that
    /// have every write *this connection* made). Returns the reply and the acknowledgements
    /// (`None` without `min_replicas_ack`).
    pub(crate) async fn script_acked<T: FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        lua: &'static Lua,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(T, Option<u64>)> {
        let n = self.ack.min_replicas_ack;
        if n == 0 {
            return Ok((self.script(op, lua, keys, args).await?, None));
        }
        self.check_slots(op, &keys)?;
        let wait_ms = millis(self.ack.wait_timeout);
        let (v, acks): (T, i64) = self
            .with_conn(op, move |c| {
                Box::pin(async move {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(&lua.code).arg(keys.len()).arg(&keys).arg(&args);
                    let mut wait = redis::cmd("WAIT");
                    wait.arg(n).arg(wait_ms);
                    let mut pipe = redis::pipe();
                    pipe.add_command(eval).add_command(wait);
                    pipe.query_async(c).await
                })
            })
            .await?;
        Ok((v, Some(u64::try_from(acks).unwrap_or(0))))
    }

    /// The error for a write acknowledged by `acked` replicas, fewer than required.
    pub(crate) fn not_replicated(
        &self,
        op: &'static str,
        acked: u64,
        consequence: &'static str,
    ) -> Error {
        Error::NotReplicated {
            url: self.url.to_string(),
            op,
            acked,
            wanted: self.ack.min_replicas_ack,
            timeout_ms: millis(self.ack.wait_timeout),
            consequence,
        }
    }

    /// Whether `acks` (from [`RedisBackend::script_acked`]) meets the requirement.
    pub(crate) fn acked_enough(&self, acks: Option<u64>) -> bool {
        acks.is_none_or(|a| a >= u64::from(self.ack.min_replicas_ack))
    }

    async fn claim_inner(
        &self,
        req: &ClaimRequest,
        mode: &str,
        record: Option<&RunRecord>,
    ) -> Result<(i64, String, String, Option<u64>)> {
        let tick_key = tick_key(&req.job, &req.tick);
        let slot = self.slot_of(&tick_key);
        // The deadline counts from now, also when the offset needs a round trip first.
        let start = Instant::now();
        let offset_ms = self.server_offset(&tick_key).await?;
        let deadline_ms = self.server_deadline_ms(offset_ms, start);
        let lease = match req.overlap {
            Overlap::Skip => lease_key(&req.job),
            Overlap::Allow => key(&req.job, &format!("lease:{}", req.tick.key_part())),
        };
        let record = match record {
            Some(r) => to_json(r)?,
            None => String::new(),
        };
        let keys = vec![
            tick_key,
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
        let ((status, token, value, server_ms), acks): ((i64, String, String, i64), _) =
            if mode == "missed" {
                (self.script("claim tick", &CLAIM, keys, args).await?, None)
            } else {
                self.script_acked("claim tick", &CLAIM, keys, args).await?
            };
        self.observe_server_time(slot, server_ms, Instant::now());
        if status == 4 {
            return Err(Error::RedisTooLate {
                url: self.url.to_string(),
                op: "claim tick",
                late_ms: u64::try_from(server_ms.saturating_sub(deadline_ms)).unwrap_or(0),
            });
        }
        Ok((status, token, value, acks))
    }

    pub(crate) async fn claim(&self, req: &ClaimRequest) -> Result<ClaimOutcome> {
        let mode = match req.overlap {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        };
        let skipped = req.record_not_run(
            Outcome::SkippedOverlap,
            "the previous run still holds the lease",
        );
        let (status, token, value, acks) = self.claim_inner(req, mode, Some(&skipped)).await?;
        match status {
            0 => Ok(ClaimOutcome::ClaimedElsewhere),
            1 => {
                let lease_key = match req.overlap {
                    Overlap::Skip => lease_key(&req.job),
                    Overlap::Allow => key(&req.job, &format!("lease:{}", req.tick.key_part())),
                };
                if !self.acked_enough(acks) {
                    // The claim could vanish in a failover and the tick be claimed again: not
                    // run. The tick stays claimed here; the lease is given back.
                    let acked = acks.unwrap_or(0);
                    let record = req.record_not_run(
                        Outcome::Missed,
                        format!(
                            "claim acknowledged by {acked} of {} replicas within {} ms \
                             (min_replicas_ack): not run",
                            self.ack.min_replicas_ack,
                            self.ack.wait_timeout.as_millis()
                        ),
                    );
                    if let Err(e) = self
                        .finish(&req.job, &lease_key, &value, Some(&record))
                        .await
                    {
                        tracing::debug!(job = %req.job, error = %e, "releasing an unacknowledged claim failed");
                    }
                    return Err(self.not_replicated("claim tick", acked, "the tick is not run"));
                }
                let token = token.parse::<u64>().map_err(|e| Error::Corrupt {
                    what: format!("job `{}`: fencing token `{token}`", req.job),
                    reason: e.to_string(),
                })?;
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
        let (status, _, _, _) = self.claim_inner(req, "missed", Some(record)).await?;
        Ok(status == 3)
    }

    pub(crate) async fn renew(&self, key: &str, value: &str, ttl: Duration) -> Result<bool> {
        let (n, acks): (i64, _) = self
            .script_acked(
                "renew lease",
                &RENEW,
                vec![key.to_owned()],
                vec![value.to_owned(), millis(ttl).to_string()],
            )
            .await?;
        if n == 1 && !self.acked_enough(acks) {
            return Err(self.not_replicated(
                "renew lease",
                acks.unwrap_or(0),
                "the renewal does not count",
            ));
        }
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
        self.observe_server_time(self.slot_of(JOBS_KEY), server_ms, Instant::now());
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
        // A Cluster delivers sharded messages within the shard of the channel.
        let publish = if self.endpoint.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let receivers: i64 = self
            .with_conn("publish run request", move |c| {
                Box::pin(async move {
                    redis::cmd(publish)
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
    /// reconnects (with a short backoff) whenever the connection fails, to the master the
    /// sentinels name then. Failures are reported to `health` (which logs an outage once), not
    /// logged one by one.
    pub(crate) async fn listen_requests(
        self: Arc<Self>,
        tx: mpsc::Sender<(String, String)>,
        health: Arc<Health>,
        stop: CancellationToken,
    ) {
        if self.endpoint.is_cluster() {
            return self.listen_requests_sharded(tx, health, stop).await;
        }
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let connect = async {
                let client = self.endpoint.node_client().await?;
                let mut ps = client
                    .get_async_pubsub()
                    .await
                    .map_err(|e| self.redis_err("subscribe", e))?;
                ps.subscribe(RUN_CHANNEL)
                    .await
                    .map_err(|e| self.redis_err("subscribe", e))?;
                Ok::<_, Error>(ps)
            };
            let Some(ps) = self
                .subscribe_attempt("subscribe", connect, &health, &stop, &mut backoff)
                .await
            else {
                continue;
            };
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
                if !forward(&tx, &payload).await {
                    return;
                }
            }
            sleep_or_stop(&stop, backoff).await;
        }
    }

    /// One attempt at subscribing to manual run requests (`connect`, within the operation
    /// timeout): the subscription, with the backoff reset and the outage over; else the failure
    /// is reported to `health`, the backoff waited out and doubled (at most 2 s), and `None`
    /// (also when `stop` fires: the caller's loop ends).
    async fn subscribe_attempt<T>(
        &self,
        op: &'static str,
        connect: impl Future<Output = Result<T>>,
        health: &Health,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Option<T> {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return None,
            r = tokio::time::timeout(self.opts.op_timeout, connect) => r,
        };
        let e = match attempt {
            Ok(Ok(subscribed)) => {
                *backoff = Duration::from_millis(100);
                health.success();
                return Some(subscribed);
            }
            Ok(Err(e)) => e,
            Err(_) => Error::RedisTimeout {
                url: self.url.to_string(),
                op,
                timeout_ms: millis(self.opts.op_timeout),
            },
        };
        health.failure("subscribing to manual run requests", &e, 0);
        sleep_or_stop(stop, *backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        None
    }

    /// [`RedisBackend::listen_requests`] on a Cluster: `SSUBSCRIBE` through a RESP3 cluster
    /// connection, made again whenever one of its node connections drops (the channel's shard
    /// may have a new master).
    async fn listen_requests_sharded(
        self: Arc<Self>,
        tx: mpsc::Sender<(String, String)>,
        health: Arc<Health>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let (push_tx, mut push_rx) = mpsc::unbounded_channel::<redis::PushInfo>();
            let connect = async {
                let client = self.endpoint.cluster_push_client(push_tx)?;
                let mut conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| self.redis_err("connect to the cluster", e))?;
                conn.ssubscribe(RUN_CHANNEL)
                    .await
                    .map_err(|e| self.redis_err("ssubscribe", e))?;
                Ok::<_, Error>(conn)
            };
            let Some(_conn) = self
                .subscribe_attempt("ssubscribe", connect, &health, &stop, &mut backoff)
                .await
            else {
                continue;
            };
            tracing::debug!(url = %self.url, channel = RUN_CHANNEL, "subscribed (sharded) to manual-trigger channel");
            loop {
                let push = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = push_rx.recv() => p,
                };
                let Some(push) = push else {
                    tracing::debug!(url = %self.url, "sharded subscription lost; reconnecting");
                    break;
                };
                if push.kind == redis::PushKind::Disconnection {
                    // A node went away: if it served the channel's slot, the subscription is
                    // gone with it (the client would subscribe again on that address only).
                    // Subscribe afresh, to whichever master serves the slot by then.
                    tracing::debug!(url = %self.url, "a cluster node disconnected; subscribing again");
                    break;
                }
                if push.kind != redis::PushKind::SMessage {
                    continue;
                }
                let Some(payload) = push.data.get(1).and_then(conn::text) else {
                    continue;
                };
                if !forward(&tx, &payload).await {
                    return;
                }
            }
            sleep_or_stop(&stop, backoff).await;
        }
    }
}

/// Decodes a run request and hands it on; `false` when nobody takes them any more.
async fn forward(tx: &mpsc::Sender<(String, String)>, payload: &str) -> bool {
    match serde_json::from_str::<RunRequest>(payload) {
        Ok(r) => tx.send((r.job, r.id)).await.is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed manual run request");
            true
        }
    }
}

async fn sleep_or_stop(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_and_every_script_keeps_to_one() {
        // CLUSTER KEYSLOT answers of a real server.
        for (k, slot) in [("foo", 12182), ("bar", 5061), ("hello", 866)] {
            assert_eq!(key_slot(k), slot, "{k}");
        }
        // And the `redis` crate's routing (which has no accessor for the number).
        use redis::cluster_routing::Slot;
        for k in [
            "{user1000}.following",
            "foo{}{bar}",
            "{}",
            "a{b}c",
            "cron:{j}:lease",
        ] {
            assert_eq!(Slot::new(key_slot(k)), Some(Slot::for_key(k)), "{k}");
        }
        for job in ["report", "a:b", "x-y.z", "ünïcode", "a{b"] {
            let tick = TickId::Manual("id".into());
            let keys = [
                tick_key(job, &tick),
                lease_key(job),
                key(job, "lease:1"),
                token_key(job),
                history_key(job),
                key(job, "last"),
            ];
            let s = key_slot(&keys[0]);
            assert!(keys.iter().all(|k| key_slot(k) == s), "{job}: {keys:?}");
        }
        let leases = [
            crate::singleton::lease_key("consumer"),
            crate::singleton::token_key("consumer"),
        ];
        assert_eq!(key_slot(&leases[0]), key_slot(&leases[1]));
        // A name that closes the tag early hashes each key whole: refused on a Cluster.
        assert_ne!(key_slot(&lease_key("}x")), key_slot(&token_key("}x")));
    }
}
