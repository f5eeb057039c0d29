//! Singleton leases: "this name runs on exactly one holder at a time" across every process that
//! shares a backend, for the supervisor's `scope = "cluster"` apps (a queue consumer, a websocket
//! fan-out, a legacy cron daemon).
//!
//! Unlike a cron lease (one run of one tick), a singleton lease is held for as long as its
//! holder keeps renewing it, and handed over when it is released or expires.
//!
//! # Redis
//!
//! | key | type | content |
//! |---|---|---|
//! | `singleton:{name}:lease` | string, PX ttl | holder JSON `{"token","id","host","pid","since"}` |
//! | `singleton:{name}:token` | string (integer) | last fencing token |
//!
//! - **acquire**: one Lua script: if the lease key exists, answer its holder; else `INCR` the
//!   token counter, raise it to the server's `TIME` in microseconds when lower (the scheme the
//!   cron claims use, so tokens keep increasing even after Redis lost its data), and
//!   `SET lease <holder JSON> PX ttl`.
//! - **renew**: compare-and-pexpire: only a lease that still holds our exact value is extended.
//! - **release**: compare-and-delete: a holder whose lease expired and was taken over cannot
//!   delete the new holder's lease.
//!
//! The calls go through the job backend's Redis layer ([`crate::backend::RedisBackend`]): one
//! server, Sentinel (the master is looked up again after a failover) or Cluster (the two keys
//! of a singleton share its `{name}` hash tag), a small pool of multiplexed connections dropped
//! after an error, and a deadline on every call, so a Redis that hangs (SIGSTOP) makes calls
//! fail, never block. With `min_replicas_ack` an acquisition not acknowledged by enough
//! replicas is given back at once and reported as an error, and such a renewal does not count
//! (an error, retried by the holder while its lease lasts), so a failover cannot hand the lease
//! to a second holder while the first still holds it.
//!
//! # Local directory (one host)
//!
//! `singleton-{name}.lease` is locked with an exclusive `flock` for as long as the lease is held
//! (the kernel drops it when the holder dies; a stopped holder keeps it: on one host there is no
//! partition to fence against), and holds the holder JSON. `singleton-{name}.token` keeps the
//! last token; the next one is the last + 1, raised to the wall clock in microseconds.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::local::{
    blocking, flock, io_err, open_rw, prepare_state_dir, try_lock_exclusive, write_atomic,
};
use crate::backend::redis::{Lua, NEXT_TOKEN_LUA, RENEW};
use crate::backend::{BackendUrl, RedisBackend, RedisOptions};
use crate::error::{Error, Result};

/// Acquire: `{1, token, value}` when taken, `{0, '', current holder}` when held elsewhere.
static ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        NEXT_TOKEN_LUA.to_owned()
            + r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  return {0, '', cur}
end
local tok = next_token(KEYS[2], redis.call('TIME'))
local value = '{"token":' .. tok .. ',' .. string.sub(ARGV[1], 2)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, tok, value}
"#,
    )
});

/// Compare-and-delete.
static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// The Redis key of a singleton's lease.
pub fn lease_key(name: &str) -> String {
    format!("singleton:{{{name}}}:lease")
}

/// The Redis key of a singleton's fencing token counter.
pub fn token_key(name: &str) -> String {
    format!("singleton:{{{name}}}:token")
}

/// Who holds (or wants) a singleton lease: `host:pid:uuid`, unique per process and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// `host:pid:uuid`.
    pub id: String,
}

impl Contender {
    /// This process, with a fresh random suffix.
    pub fn current() -> Contender {
        let me = crate::job::Identity::current();
        Contender::new(&me.host, me.pid)
    }

    /// `host` and `pid` with a fresh random suffix.
    pub fn new(host: &str, pid: u32) -> Contender {
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(crate::backend::new_request_id);
        Contender {
            host: host.to_owned(),
            pid,
            id: format!("{host}:{pid}:{uuid}"),
        }
    }
}

/// The current holder of a singleton lease, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SingletonHolder {
    /// Its fencing token.
    pub token: u64,
    /// `host:pid:uuid`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When it acquired the lease.
    pub since: DateTime<Utc>,
}

impl SingletonHolder {
    /// `host:pid`.
    pub fn host_pid(&self) -> String {
        format!("{}:{}", self.host, self.pid)
    }
}

/// A held singleton lease.
#[derive(Debug)]
pub struct SingletonLease {
    /// The singleton's name.
    pub name: String,
    /// Its fencing token: strictly increasing from one holder to the next.
    pub token: u64,
    /// The lease TTL (Redis): renew well within it.
    pub ttl: Duration,
    /// The holder as stored.
    pub holder: SingletonHolder,
    inner: HeldInner,
}

#[derive(Debug)]
enum HeldInner {
    /// The exact value we wrote.
    Redis(String),
    /// The locked lease file (`None` once released).
    Local(std::sync::Mutex<Option<File>>),
}

/// The answer to [`SingletonLeases::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// Ours now.
    Acquired(SingletonLease),
    /// Held by someone else (the holder, when readable).
    Held(Option<SingletonHolder>),
}

/// A backend for singleton leases: Redis (a cluster) or a local directory (one host).
#[derive(Debug)]
pub struct SingletonLeases {
    inner: Inner,
}

enum Inner {
    Redis(Box<RedisBackend>),
    Local { dir: PathBuf },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Redis(r) => f.debug_tuple("Redis").field(r).finish(),
            Inner::Local { dir } => f.debug_struct("Local").field("dir", dir).finish(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn corrupt(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: format!("singleton `{name}`: lease"),
        reason: reason.to_string(),
    }
}

impl SingletonLeases {
    /// From the URL the cron backend uses: every Redis form (one server, Sentinel, Cluster,
    /// with `min_replicas_ack`; every call bounded by `timeout`), `file:///dir` or a directory
    /// path (created if missing).
    pub fn from_url(url: &str, timeout: Duration) -> Result<SingletonLeases> {
        let dir = match BackendUrl::parse(url)? {
            BackendUrl::Redis(url) => {
                let opts = RedisOptions {
                    op_timeout: timeout,
                    pool_size: 2,
                    ..RedisOptions::default()
                };
                return Ok(SingletonLeases {
                    inner: Inner::Redis(Box::new(RedisBackend::new(url, opts)?)),
                });
            }
            BackendUrl::Dir(dir) => dir,
        };
        // The same directory as the local job backend's, under the same rules (0700, ours).
        prepare_state_dir(&dir)?;
        Ok(SingletonLeases {
            inner: Inner::Local { dir },
        })
    }

    /// The redacted URL or the directory, for logs.
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Redis(r) => r.url().to_string(),
            Inner::Local { dir } => format!("file://{}", dir.display()),
        }
    }

    /// Failovers this process has seen on the Redis deployment (0 for a directory).
    pub fn failovers_seen(&self) -> u64 {
        match &self.inner {
            Inner::Redis(r) => r.failovers_seen(),
            Inner::Local { .. } => 0,
        }
    }

    /// Takes the lease of `name` for `ttl` if nobody holds it.
    pub async fn acquire(&self, name: &str, me: &Contender, ttl: Duration) -> Result<Acquire> {
        match &self.inner {
            Inner::Redis(r) => {
                let since = Utc::now();
                let tail = serde_json::json!({
                    "id": me.id, "host": me.host, "pid": me.pid, "since": since,
                })
                .to_string();
                let ((status, token, value), acks): ((i64, String, String), _) = r
                    .script_acked(
                        "acquire singleton lease",
                        &ACQUIRE,
                        vec![lease_key(name), token_key(name)],
                        vec![tail, millis(ttl).to_string()],
                    )
                    .await?;
                if status != 1 {
                    return Ok(Acquire::Held(serde_json::from_str(&value).ok()));
                }
                if !r.acked_enough(acks) {
                    // It could vanish in a failover while we hold it: give it back.
                    if let Err(e) = r
                        .script::<i64>(
                            "release singleton lease",
                            &RELEASE,
                            vec![lease_key(name)],
                            vec![value],
                        )
                        .await
                    {
                        tracing::debug!(singleton = name, error = %e, "giving back an unacknowledged lease failed");
                    }
                    return Err(r.not_replicated(
                        "acquire singleton lease",
                        acks.unwrap_or(0),
                        "the lease was given back",
                    ));
                }
                let token = token.parse::<u64>().map_err(|e| corrupt(name, e))?;
                let holder = SingletonHolder {
                    token,
                    id: me.id.clone(),
                    host: me.host.clone(),
                    pid: me.pid,
                    since,
                };
                Ok(Acquire::Acquired(SingletonLease {
                    name: name.to_owned(),
                    token,
                    ttl,
                    holder,
                    inner: HeldInner::Redis(value),
                }))
            }
            Inner::Local { dir } => {
                let (dir, name, me) = (dir.clone(), name.to_owned(), me.clone());
                blocking(move || local_acquire(&dir, &name, &me, ttl)).await
            }
        }
    }

    /// Extends the lease by its TTL if it is still ours. `Ok(false)`: it expired or another
    /// holder has it (untouched then).
    pub async fn renew(&self, lease: &SingletonLease) -> Result<bool> {
        match (&self.inner, &lease.inner) {
            (Inner::Redis(r), HeldInner::Redis(value)) => {
                let (n, acks): (i64, _) = r
                    .script_acked(
                        "renew singleton lease",
                        &RENEW,
                        vec![lease_key(&lease.name)],
                        vec![value.clone(), millis(lease.ttl).to_string()],
                    )
                    .await?;
                if n == 1 && !r.acked_enough(acks) {
                    return Err(r.not_replicated(
                        "renew singleton lease",
                        acks.unwrap_or(0),
                        "the renewal does not count",
                    ));
                }
                Ok(n == 1)
            }
            (Inner::Local { .. }, HeldInner::Local(file)) => Ok(match file.lock() {
                Ok(f) => f.is_some(),
                Err(p) => p.into_inner().is_some(),
            }),
            _ => Ok(false),
        }
    }

    /// Gives the lease up if it is still ours (compare-and-delete). Returns whether it was.
    pub async fn release(&self, lease: &SingletonLease) -> Result<bool> {
        match (&self.inner, &lease.inner) {
            (Inner::Redis(r), HeldInner::Redis(value)) => {
                let n: i64 = r
                    .script(
                        "release singleton lease",
                        &RELEASE,
                        vec![lease_key(&lease.name)],
                        vec![value.clone()],
                    )
                    .await?;
                Ok(n == 1)
            }
            (Inner::Local { .. }, HeldInner::Local(file)) => {
                let taken = match file.lock() {
                    Ok(mut f) => f.take(),
                    Err(p) => p.into_inner().take(),
                };
                Ok(match taken {
                    Some(f) => {
                        let _ = f.set_len(0);
                        let _ = flock(&f, libc::LOCK_UN);
                        true
                    }
                    None => false,
                })
            }
            _ => Ok(false),
        }
    }

    /// Who holds the lease of `name` now, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<SingletonHolder>> {
        match &self.inner {
            Inner::Redis(r) => {
                let raw: Option<String> = r
                    .script("read singleton lease", &READ, vec![lease_key(name)], vec![])
                    .await?;
                raw.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(name, e)))
                    .transpose()
            }
            Inner::Local { dir } => {
                let (dir, name) = (dir.clone(), name.to_owned());
                blocking(move || local_holder(&dir, &name)).await
            }
        }
    }
}

/// Read the lease (a script, so that every call goes through the same path).
static READ: LazyLock<Lua> = LazyLock::new(|| Lua::new("return redis.call('GET', KEYS[1])"));

fn read_all(mut f: &File) -> String {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

fn local_acquire(dir: &Path, name: &str, me: &Contender, ttl: Duration) -> Result<Acquire> {
    let path = dir.join(format!("singleton-{name}.lease"));
    let mut file = open_rw(&path)?;
    if !try_lock_exclusive(&file).map_err(io_err("lock", &path))? {
        return Ok(Acquire::Held(serde_json::from_str(&read_all(&file)).ok()));
    }
    // Ours: the next token, under the lease's own lock.
    let token_path = dir.join(format!("singleton-{name}.token"));
    let last: u64 = std::fs::read_to_string(&token_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let now_us = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
    let token = (last + 1).max(now_us);
    write_atomic(&token_path, token.to_string().as_bytes())?;
    let holder = SingletonHolder {
        token,
        id: me.id.clone(),
        host: me.host.clone(),
        pid: me.pid,
        since: Utc::now(),
    };
    let json = serde_json::to_string(&holder).map_err(|e| corrupt(name, e))?;
    file.set_len(0).map_err(io_err("truncate", &path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek", &path))?;
    file.write_all(json.as_bytes())
        .map_err(io_err("write", &path))?;
    Ok(Acquire::Acquired(SingletonLease {
        name: name.to_owned(),
        token,
        ttl,
        holder,
        inner: HeldInner::Local(std::sync::Mutex::new(Some(file))),
    }))
}

fn local_holder(dir: &Path, name: &str) -> Result<Option<SingletonHolder>> {
    let path = dir.join(format!("singleton-{name}.lease"));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    // If we can take the lock, nobody holds the lease.
    if try_lock_exclusive(&file).map_err(io_err("lock", &path))? {
        let _ = flock(&file, libc::LOCK_UN);
        return Ok(None);
    }
    Ok(serde_json::from_str(&read_all(&file)).ok())
}
