//! Connections to the Redis deployment a URL names: one server, the master that Sentinel names
//! (found again after every failover), or a Redis Cluster (the `redis` crate's async cluster
//! client, which follows slot moves and promotions itself); the pool manager; and the failovers
//! this process has seen, per deployment.
//!
//! # Failovers seen
//!
//! - **Sentinel**: every new connection asks the sentinels for the master; when the answer is a
//!   different address than the last one, that is a failover. Connections are made again after
//!   any broken connection (and after a `READONLY` reply: a demoted master), so the first
//!   operation after a promotion sees it.
//! - **Cluster**: the slot map (`CLUSTER SLOTS`) is read when a connection is made and again
//!   (at most once a second, for up to a minute) after operations failed; a slot range whose
//!   master changed is a failover.
//!
//! The count is kept per deployment for the whole process (every backend on the same sentinels
//! and master name, or the same cluster seeds, shares it), so three schedulers seeing one
//! failover count one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisFuture, TlsMode, Value,
};

use super::url::{Auth, ClusterSpec, Deployment, HostPort, RedisUrl, SentinelSpec};
use crate::error::{Error, Result};
use crate::url::RedactedUrl;

/// A connection: to one server (single, or the master Sentinel named), or to a whole Cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server.
    Node(MultiplexedConnection),
    /// A Redis Cluster (routes every command by its keys).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The failovers this process has seen on one deployment.
#[derive(Debug, Default)]
pub(crate) struct FailoverLog {
    count: AtomicU64,
    /// Sentinel: slot 0 -> the master's address. Cluster: first slot of a range -> its master.
    masters: Mutex<BTreeMap<u16, String>>,
    /// Cluster: operations failed since then; the slot map is read again until it changes.
    stale: Mutex<Stale>,
}

#[derive(Debug, Default)]
struct Stale {
    since: Option<Instant>,
    last_read: Option<Instant>,
}

/// Deployment key -> its log, for the whole process.
static LOGS: LazyLock<Mutex<HashMap<String, Arc<FailoverLog>>>> = LazyLock::new(Mutex::default);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl FailoverLog {
    fn for_key(key: String) -> Arc<FailoverLog> {
        Arc::clone(lock(&LOGS).entry(key).or_default())
    }

    /// How many failovers were seen.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// `master` serves the slot range starting at `first_slot` (0 for Sentinel). Returns the
    /// previous master when this is a change.
    fn observe(&self, first_slot: u16, master: &str) -> Option<String> {
        let mut masters = lock(&self.masters);
        match masters.insert(first_slot, master.to_owned()) {
            Some(old) if old != master => {
                self.count.fetch_add(1, Ordering::Relaxed);
                Some(old)
            }
            _ => None,
        }
    }
}

/// How to reach the deployment.
pub(crate) enum Target {
    Single {
        client: Client,
        config: AsyncConnectionConfig,
    },
    Sentinel {
        spec: SentinelSpec,
        client: tokio::sync::Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
    },
    Cluster {
        spec: ClusterSpec,
        client: ClusterClient,
    },
}

/// A [`Target`] with what every operation needs around it.
pub(crate) struct Endpoint {
    pub(crate) url: RedactedUrl,
    pub(crate) target: Target,
    pub(crate) timeout: Duration,
    pub(crate) failovers: Arc<FailoverLog>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.target {
            Target::Single { .. } => "single",
            Target::Sentinel { .. } => "sentinel",
            Target::Cluster { .. } => "cluster",
        };
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn invalid(url: &RedactedUrl, e: impl std::fmt::Display) -> Error {
    Error::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// The `redis` crate's address of `hp`, with or without TLS.
pub(crate) fn addr(hp: &HostPort, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: hp.host.clone(),
            port: hp.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(hp.host.clone(), hp.port)
    }
}

/// `host:port` of an address.
pub(crate) fn addr_text(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => HostPort {
            host: h.clone(),
            port: *p,
        }
        .to_string(),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

/// Connection info for one node, with credentials and database.
pub(crate) fn node_info(
    hp: &HostPort,
    tls: bool,
    auth: &Auth,
    db: i64,
) -> redis::RedisResult<ConnectionInfo> {
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &auth.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &auth.password {
        redis = redis.set_password(p);
    }
    Ok(addr(hp, tls)
        .into_connection_info()?
        .set_redis_settings(redis))
}

impl Endpoint {
    /// Builds the client(s) for `url` (no connection yet); every connect and reply is bounded
    /// by `timeout`.
    pub(crate) fn new(url: &RedisUrl, timeout: Duration) -> Result<Endpoint> {
        let redacted = url.redacted.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let (target, key) = match &url.deployment {
            Deployment::Single { url: raw } => {
                let client = Client::open(raw.as_str()).map_err(|e| invalid(&redacted, e))?;
                (Target::Single { client, config }, String::new())
            }
            Deployment::Sentinel(spec) => {
                let addrs = spec.sentinels.iter().map(|s| addr(s, spec.tls));
                let mut b =
                    SentinelClientBuilder::new(addrs, &spec.master, SentinelServerType::Master)
                        .map_err(|e| invalid(&redacted, e))?
                        .set_client_to_redis_db(spec.db);
                if spec.tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                }
                if let Some(u) = &spec.data_auth.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &spec.data_auth.password {
                    b = b.set_client_to_redis_password(p);
                }
                if let Some(u) = &spec.sentinel_auth.username {
                    b = b.set_client_to_sentinel_username(u);
                }
                if let Some(p) = &spec.sentinel_auth.password {
                    b = b.set_client_to_sentinel_password(p);
                }
                let client = b.build().map_err(|e| invalid(&redacted, e))?;
                let mut hosts: Vec<String> = spec.sentinels.iter().map(|s| s.to_string()).collect();
                hosts.sort();
                let key = format!("sentinel:{}/{}/{}", hosts.join(","), spec.master, spec.db);
                (
                    Target::Sentinel {
                        spec: spec.clone(),
                        client: tokio::sync::Mutex::new(client),
                        config,
                    },
                    key,
                )
            }
            Deployment::Cluster(spec) => {
                let seeds: Vec<ConnectionInfo> = spec
                    .seeds
                    .iter()
                    .map(|s| node_info(s, spec.tls, &spec.auth, 0))
                    .collect::<redis::RedisResult<_>>()
                    .map_err(|e| invalid(&redacted, e))?;
                let client = cluster_builder(seeds, spec, timeout)
                    .build()
                    .map_err(|e| invalid(&redacted, e))?;
                let mut hosts: Vec<String> = spec.seeds.iter().map(|s| s.to_string()).collect();
                hosts.sort();
                let key = format!("cluster:{}", hosts.join(","));
                (
                    Target::Cluster {
                        spec: spec.clone(),
                        client,
                    },
                    key,
                )
            }
        };
        let failovers = if key.is_empty() {
            Arc::new(FailoverLog::default())
        } else {
            FailoverLog::for_key(key)
        };
        Ok(Endpoint {
            url: redacted,
            target,
            timeout,
            failovers,
        })
    }

    /// Whether this is a Redis Cluster (scripts must then keep to one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// A new connection: to the server, the master the sentinels name now, or the cluster.
    pub(crate) async fn connect(&self) -> Result<Conn> {
        match &self.target {
            Target::Single { client, config } => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(Conn::Node)
                .map_err(|e| self.redis_err("connect", e)),
            Target::Sentinel { config, .. } => {
                let client = self.sentinel_master().await?;
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
                    .map(Conn::Node)
                    .map_err(|e| self.redis_err("connect to the master", e))
            }
            Target::Cluster { client, .. } => {
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| self.redis_err("connect to the cluster", e))?;
                // The slot map at connect time is the baseline failovers are seen against.
                self.read_slot_map(&conn).await;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// A client for the current master (Sentinel) or the server (single): for pub/sub.
    pub(crate) async fn node_client(&self) -> Result<Client> {
        match &self.target {
            Target::Single { client, .. } => Ok(client.clone()),
            Target::Sentinel { .. } => self.sentinel_master().await,
            Target::Cluster { .. } => Err(Error::Task(
                "a Redis Cluster has no single node client".to_owned(),
            )),
        }
    }

    /// A cluster client delivering push messages (RESP3) to `tx`: for sharded pub/sub.
    pub(crate) fn cluster_push_client(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<ClusterClient> {
        let Target::Cluster { spec, .. } = &self.target else {
            return Err(Error::Task("not a Redis Cluster".to_owned()));
        };
        let seeds: Vec<ConnectionInfo> = spec
            .seeds
            .iter()
            .map(|s| node_info(s, spec.tls, &spec.auth, 0))
            .collect::<redis::RedisResult<_>>()
            .map_err(|e| invalid(&self.url, e))?;
        cluster_builder(seeds, spec, self.timeout)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()
            .map_err(|e| invalid(&self.url, e))
    }

    pub(crate) fn redis_err(&self, op: &'static str, source: redis::RedisError) -> Error {
        Error::Redis {
            url: self.url.to_string(),
            op,
            source,
        }
    }

    /// Asks the sentinels for the master (at most half the timeout), records a change of
    /// master as a failover, and explains a failure sentinel by sentinel.
    async fn sentinel_master(&self) -> Result<Client> {
        let Target::Sentinel { spec, client, .. } = &self.target else {
            return Err(Error::Task("not a Sentinel deployment".to_owned()));
        };
        let found = tokio::time::timeout(self.timeout / 2, async {
            let mut c = client.lock().await;
            c.async_get_client().await
        })
        .await;
        let master = match found {
            Ok(Ok(master)) => master,
            Ok(Err(e)) => return Err(self.diagnose_sentinels(spec, Some(e)).await),
            Err(_) => return Err(self.diagnose_sentinels(spec, None).await),
        };
        let now = addr_text(master.get_connection_info().addr());
        if let Some(old) = self.failovers.observe(0, &now) {
            tracing::warn!(
                backend = %self.url,
                master = %spec.master,
                from = %old,
                to = %now,
                failovers_seen = self.failovers.count(),
                "redis failover: the sentinels name a new master"
            );
        }
        Ok(master)
    }

    /// Asks every sentinel on its own (a quarter of the timeout each, all at once) what it
    /// knows of the master, to say why no master was found.
    async fn diagnose_sentinels(
        &self,
        spec: &SentinelSpec,
        cause: Option<redis::RedisError>,
    ) -> Error {
        enum Probe {
            Unreachable(String),
            Credentials(String),
            Unknown,
            Down(String),
            Names(String),
            Other(String),
        }
        let is_auth = |e: &redis::RedisError| {
            matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
                || e.to_string().contains("AUTH")
                || e.kind() == redis::ErrorKind::AuthenticationFailed
        };
        let probes = spec.sentinels.iter().map(|s| async move {
            let answer = tokio::time::timeout(self.timeout / 4, async {
                let mut c = sentinel_conn(spec, s, self.timeout).await?;
                let master: redis::RedisResult<HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&spec.master)
                    .query_async(&mut c)
                    .await;
                Ok::<_, redis::RedisError>(master)
            })
            .await;
            let probe = match answer {
                Err(_) => Probe::Unreachable(format!(
                    "no answer within {} ms",
                    (self.timeout / 4).as_millis()
                )),
                Ok(Err(e)) | Ok(Ok(Err(e))) if is_auth(&e) => Probe::Credentials(e.to_string()),
                Ok(Err(e)) => Probe::Unreachable(e.to_string()),
                Ok(Ok(Err(e))) if e.to_string().contains("No such master") => Probe::Unknown,
                Ok(Ok(Err(e))) => Probe::Other(e.to_string()),
                Ok(Ok(Ok(m))) => {
                    let at = format!(
                        "{}:{}",
                        m.get("ip").map_or("?", String::as_str),
                        m.get("port").map_or("?", String::as_str)
                    );
                    let flags = m.get("flags").map_or("", String::as_str);
                    if flags.contains("s_down") || flags.contains("o_down") {
                        Probe::Down(format!("{at} ({flags})"))
                    } else {
                        Probe::Names(format!("{at} ({flags})"))
                    }
                }
            };
            (s, probe)
        });
        let probes = futures_util::future::join_all(probes).await;
        let count = |f: fn(&Probe) -> bool| probes.iter().filter(|(_, p)| f(p)).count();
        let all = probes.len();
        let unreachable = count(|p| matches!(p, Probe::Unreachable(_)));
        let credentials = count(|p| matches!(p, Probe::Credentials(_)));
        let unknown = count(|p| matches!(p, Probe::Unknown));
        let down = count(|p| matches!(p, Probe::Down(_)));
        let summary = if unreachable == all {
            "no sentinel could be reached".to_owned()
        } else if credentials > 0 && credentials + unreachable == all {
            "the sentinels refuse us without the right credentials (give sentinel_password= \
             and, with ACLs, sentinel_username= in the URL; the URL's user-info is for the data \
             nodes)"
                .to_owned()
        } else if unknown > 0 && unknown + unreachable + credentials == all {
            format!(
                "no sentinel knows a master named `{}` (check the name in the URL)",
                spec.master
            )
        } else if down > 0 {
            "the sentinels report the master down: a failover is under way (or cannot happen: \
             too few sentinels or no usable replica)"
                .to_owned()
        } else {
            match &cause {
                Some(e) => format!("the master they name cannot be used ({e})"),
                None => format!(
                    "no master found within {} ms",
                    (self.timeout / 2).as_millis()
                ),
            }
        };
        let details: Vec<String> = probes
            .iter()
            .map(|(s, p)| match p {
                Probe::Unreachable(e) => format!("{s}: unreachable ({e})"),
                Probe::Credentials(e) => format!("{s}: refused ({e})"),
                Probe::Unknown => format!("{s}: does not know a master named `{}`", spec.master),
                Probe::Down(m) => format!("{s}: reports the master {m} down"),
                Probe::Names(m) => format!("{s}: names the master {m}"),
                Probe::Other(e) => format!("{s}: {e}"),
            })
            .collect();
        Error::Sentinel {
            url: self.url.to_string(),
            master: spec.master.clone(),
            reason: format!("{summary}: {}", details.join("; ")),
        }
    }

    /// Operations failed: the cluster's slot map may have changed (read again on success).
    pub(crate) fn note_failure(&self) {
        if self.is_cluster() {
            let mut s = lock(&self.failovers.stale);
            s.since.get_or_insert_with(Instant::now);
        }
    }

    /// An operation succeeded on `conn`: if operations failed before, read the slot map again
    /// (in the background, at most once a second) to see whether a master changed.
    pub(crate) fn note_success(self: &Arc<Self>, conn: &Conn) {
        let Conn::Cluster(c) = conn else { return };
        {
            let mut s = lock(&self.failovers.stale);
            let Some(since) = s.since else { return };
            if since.elapsed() > Duration::from_secs(60) {
                s.since = None;
                return;
            }
            if s.last_read
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            s.last_read = Some(Instant::now());
        }
        let (me, c) = (Arc::clone(self), c.clone());
        tokio::spawn(async move {
            if me.read_slot_map(&c).await {
                lock(&me.failovers.stale).since = None;
            }
        });
    }

    /// Reads `CLUSTER SLOTS` and records each range's master; returns whether one changed.
    async fn read_slot_map(&self, conn: &ClusterConnection) -> bool {
        let mut c = conn.clone();
        let read = tokio::time::timeout(
            self.timeout,
            c.route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::Random,
                ),
            ),
        )
        .await;
        let Ok(Ok(value)) = read else { return false };
        let mut changed = false;
        for (start, end, master) in parse_cluster_slots(&value) {
            if let Some(old) = self.failovers.observe(start, &master) {
                changed = true;
                tracing::warn!(
                    backend = %self.url,
                    slots = %format!("{start}-{end}"),
                    from = %old,
                    to = %master,
                    failovers_seen = self.failovers.count(),
                    "redis cluster failover: a new master serves these slots"
                );
            }
        }
        changed
    }
}

fn cluster_builder(
    seeds: Vec<ConnectionInfo>,
    spec: &ClusterSpec,
    timeout: Duration,
) -> ClusterClientBuilder {
    let mut b = ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3);
    if spec.tls {
        b = b.tls(TlsMode::Secure);
    }
    if let Some(u) = &spec.auth.username {
        b = b.username(u);
    }
    if let Some(p) = &spec.auth.password {
        b = b.password(p);
    }
    b
}

/// A connection to one sentinel (its own credentials, TLS like the URL).
pub(crate) async fn sentinel_conn(
    spec: &SentinelSpec,
    sentinel: &HostPort,
    timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = node_info(sentinel, spec.tls, &spec.sentinel_auth, 0)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// `(first slot, last slot, master host:port)` of each range of a `CLUSTER SLOTS` reply.
pub(crate) fn parse_cluster_slots(v: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(ranges) = v else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(items) = r else { return None };
            let start = int(items.first()?)?;
            let end = int(items.get(1)?)?;
            let Value::Array(master) = items.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = int(master.get(1)?)?;
            Some((
                u16::try_from(start).ok()?,
                u16::try_from(end).ok()?,
                HostPort {
                    host,
                    port: u16::try_from(port).ok()?,
                }
                .to_string(),
            ))
        })
        .collect()
}

/// An integer reply (or a numeric string).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A string reply.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The pool manager: connections are made by the [`Endpoint`] (so a Sentinel master is looked
/// up again for every new connection) and recycled without a round trip: a connection is
/// dropped from the pool as soon as a command on it fails (see the backend's `with_conn`).
pub(crate) struct Manager {
    pub(crate) endpoint: Arc<Endpoint>,
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = Error;

    async fn create(&self) -> Result<Conn> {
        self.endpoint.connect().await
    }

    async fn recycle(&self, _conn: &mut Conn, _: &Metrics) -> RecycleResult<Error> {
        Ok(())
    }
}
