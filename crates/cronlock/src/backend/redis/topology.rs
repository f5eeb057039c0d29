//! What a Redis deployment looks like right now, and how healthy it is: the server and its
//! replicas (`ROLE`), the master, replicas and sentinels of a Sentinel deployment (asked of
//! every sentinel), or the shards of a Cluster (`CLUSTER SHARDS`). For `supervisor check` and
//! `status`; every query is bounded by the backend's operation timeout.

use std::collections::HashMap;
use std::fmt;

use redis::Value;
use serde::{Deserialize, Serialize};

use super::conn::{Conn, Endpoint, Target, int, sentinel_conn, text};
use super::url::{AckPolicy, SentinelSpec};

/// The shape and health of a backend's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The backend (URL redacted, or the directory).
    pub backend: String,
    /// The nodes.
    pub layout: Layout,
    /// Replicas that must acknowledge a claim or lease (`min_replicas_ack`; 0: none).
    pub min_replicas_ack: u32,
    /// Failovers this process has seen on this store (every backend of the process on the
    /// same deployment counts into one number).
    pub failovers_seen: u64,
    /// What needs attention, one sentence each; empty when healthy.
    pub problems: Vec<String>,
}

impl Topology {
    /// No problems found.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The nodes of a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// A local state directory (one host).
    Local {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// One Redis server (and the replicas it reports, if any).
    Single {
        /// The server.
        server: Node,
        /// Its replicas.
        replicas: Vec<Node>,
    },
    /// A master watched by sentinels.
    Sentinel {
        /// The master name.
        master_name: String,
        /// The master the sentinels name (`None`: none could be asked, or none knows it).
        master: Option<Node>,
        /// Its replicas, as the sentinels see them.
        replicas: Vec<Node>,
        /// The sentinels: those of the URL, then others they know of.
        sentinels: Vec<Node>,
        /// Sentinels that must agree the master is down before a failover.
        quorum: Option<u32>,
    },
    /// A Redis Cluster.
    Cluster {
        /// Its shards (slot ranges with a master and replicas).
        shards: Vec<Shard>,
    },
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Takes the writes.
    Master,
    /// Copies a master.
    Replica,
    /// Watches a master and fails it over.
    Sentinel,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Master => "master",
            NodeRole::Replica => "replica",
            NodeRole::Sentinel => "sentinel",
        })
    }
}

/// One node and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port`.
    pub addr: String,
    /// Its role.
    pub role: NodeRole,
    /// Reachable and healthy, as far as we can tell.
    pub up: bool,
    /// Flags, link state, replication offset, or the error.
    pub detail: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.up { "up" } else { "DOWN" };
        if self.detail.is_empty() {
            write!(f, "{} {} {state}", self.role, self.addr)
        } else {
            write!(f, "{} {} {state} ({})", self.role, self.addr, self.detail)
        }
    }
}

/// A shard of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Its slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Its master (`None`: no master is serving the slots).
    pub master: Option<Node>,
    /// Its replicas.
    pub replicas: Vec<Node>,
}

impl fmt::Display for Topology {
    /// Several lines: the nodes, then the problems.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (min_replicas_ack {}, failovers seen {})",
            self.backend, self.min_replicas_ack, self.failovers_seen
        )?;
        match &self.layout {
            Layout::Local { dir } => writeln!(f, "  local directory {}", dir.display())?,
            Layout::Single { server, replicas } => {
                writeln!(f, "  {server}")?;
                for r in replicas {
                    writeln!(f, "  {r}")?;
                }
            }
            Layout::Sentinel {
                master_name,
                master,
                replicas,
                sentinels,
                quorum,
            } => {
                match master {
                    Some(m) => writeln!(f, "  `{master_name}`: {m}")?,
                    None => writeln!(f, "  `{master_name}`: no master known")?,
                }
                for r in replicas {
                    writeln!(f, "  {r}")?;
                }
                let up = sentinels.iter().filter(|s| s.up).count();
                let quorum = quorum.map_or_else(|| "?".to_owned(), |q| q.to_string());
                writeln!(
                    f,
                    "  sentinels {up}/{} up, quorum {quorum}",
                    sentinels.len()
                )?;
                for s in sentinels {
                    writeln!(f, "    {s}")?;
                }
            }
            Layout::Cluster { shards } => {
                for s in shards {
                    let slots: Vec<String> =
                        s.slots.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                    writeln!(f, "  shard {}", slots.join(","))?;
                    match &s.master {
                        Some(m) => writeln!(f, "    {m}")?,
                        None => writeln!(f, "    no master")?,
                    }
                    for r in &s.replicas {
                        writeln!(f, "    {r}")?;
                    }
                }
            }
        }
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        Ok(())
    }
}

/// A reply as a map: RESP3 maps and RESP2 flat `[key, value, ...]` arrays alike.
fn as_map(v: &Value) -> HashMap<String, Value> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v.clone())))
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((text(k)?, v.clone())),
                _ => None,
            })
            .collect(),
        _ => HashMap::new(),
    }
}

fn as_list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(items)) | Some(Value::Set(items)) => items.clone(),
        _ => Vec::new(),
    }
}

fn field(m: &HashMap<String, Value>, k: &str) -> String {
    m.get(k).and_then(text).unwrap_or_default()
}

/// A sentinel's view of a master, replica or sentinel (`SENTINEL MASTER / REPLICAS /
/// SENTINELS` entries).
fn sentinel_view(m: &HashMap<String, String>, role: NodeRole) -> Node {
    let get = |k: &str| m.get(k).map_or("", String::as_str);
    let flags = get("flags");
    // `disconnected` alone is the sentinel's own link still connecting (right after a switch):
    // down is what the sentinel concluded (subjectively or with the quorum).
    let down = ["s_down", "o_down"].iter().any(|f| flags.contains(f));
    let mut detail = format!("flags {flags}");
    if role == NodeRole::Replica {
        let link = get("master-link-status");
        if !link.is_empty() {
            detail.push_str(&format!(", link {link}"));
        }
        let offset = get("slave-repl-offset");
        if !offset.is_empty() {
            detail.push_str(&format!(", offset {offset}"));
        }
    }
    let link_down = role == NodeRole::Replica && get("master-link-status") == "err";
    Node {
        addr: format!("{}:{}", get("ip"), get("port")),
        role,
        up: !down && !link_down,
        detail,
    }
}

impl Endpoint {
    /// The topology now; `conn` is a pooled connection to a Cluster, or why there is none.
    pub(crate) async fn topology(&self, conn: Result<Conn, String>, ack: AckPolicy) -> Topology {
        let (layout, mut problems) = match &self.target {
            Target::Single { client, config } => self.single_topology(client, config).await,
            Target::Sentinel { spec, .. } => self.sentinel_topology(spec).await,
            Target::Cluster { .. } => self.cluster_topology(conn).await,
        };
        if ack.min_replicas_ack > 0 {
            let n = ack.min_replicas_ack as usize;
            let short: Vec<String> = match &layout {
                Layout::Single { replicas, .. } | Layout::Sentinel { replicas, .. } => {
                    let up = replicas.iter().filter(|r| r.up).count();
                    if up < n {
                        vec![format!("the master has {up} replicas up")]
                    } else {
                        vec![]
                    }
                }
                Layout::Cluster { shards } => shards
                    .iter()
                    .filter_map(|s| {
                        let up = s.replicas.iter().filter(|r| r.up).count();
                        (up < n).then(|| {
                            let first = s.slots.first().map_or(0, |r| r.0);
                            format!("the shard of slot {first} has {up} replicas up")
                        })
                    })
                    .collect(),
                Layout::Local { .. } => vec![],
            };
            for s in short {
                problems.push(format!(
                    "min_replicas_ack is {n} but {s}: claims and lease acquisitions there are \
                     refused (ticks not run) until enough replicas are back"
                ));
            }
        }
        Topology {
            backend: self.url.to_string(),
            layout,
            min_replicas_ack: ack.min_replicas_ack,
            failovers_seen: self.failovers.count(),
            problems,
        }
    }

    async fn single_topology(
        &self,
        client: &redis::Client,
        config: &redis::AsyncConnectionConfig,
    ) -> (Layout, Vec<String>) {
        let addr = super::conn::addr_text(client.get_connection_info().addr());
        let role = tokio::time::timeout(self.timeout, async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            redis::cmd("ROLE").query_async::<Value>(&mut c).await
        })
        .await;
        let down = |detail: String| Node {
            addr: addr.clone(),
            role: NodeRole::Master,
            up: false,
            detail,
        };
        let role = match role {
            Err(_) => {
                let detail = format!("no answer within {} ms", self.timeout.as_millis());
                let p = format!("the server {addr} does not answer");
                return (
                    Layout::Single {
                        server: down(detail),
                        replicas: vec![],
                    },
                    vec![p],
                );
            }
            Ok(Err(e)) => {
                let p = format!("the server {addr} is unreachable: {e}");
                return (
                    Layout::Single {
                        server: down(e.to_string()),
                        replicas: vec![],
                    },
                    vec![p],
                );
            }
            Ok(Ok(v)) => as_list(Some(&v)),
        };
        let kind = role.first().and_then(text).unwrap_or_default();
        let mut problems = Vec::new();
        let mut replicas = Vec::new();
        let server = if kind == "master" {
            let offset = role.get(1).and_then(int).unwrap_or(0);
            for r in as_list(role.get(2)) {
                let r = as_list(Some(&r));
                let (ip, port) = (
                    r.first().and_then(text).unwrap_or_default(),
                    r.get(1).and_then(text).unwrap_or_default(),
                );
                let acked = r.get(2).and_then(int).unwrap_or(0);
                replicas.push(Node {
                    addr: format!("{ip}:{port}"),
                    role: NodeRole::Replica,
                    up: true,
                    detail: format!("offset {acked}, {} bytes behind", offset - acked),
                });
            }
            Node {
                addr,
                role: NodeRole::Master,
                up: true,
                detail: format!("offset {offset}"),
            }
        } else {
            problems.push(format!(
                "the server {addr} is a {kind}, not a master: writes are refused (a Sentinel or \
                 Cluster URL follows the master)"
            ));
            Node {
                addr,
                role: NodeRole::Replica,
                up: true,
                detail: format!("role {kind}"),
            }
        };
        (Layout::Single { server, replicas }, problems)
    }

    async fn sentinel_topology(&self, spec: &SentinelSpec) -> (Layout, Vec<String>) {
        struct View {
            master: Result<HashMap<String, String>, String>,
            replicas: Vec<HashMap<String, String>>,
            sentinels: Vec<HashMap<String, String>>,
        }
        let asks = spec.sentinels.iter().map(|s| async move {
            let view = tokio::time::timeout(self.timeout, async {
                let mut c = sentinel_conn(spec, s, self.timeout)
                    .await
                    .map_err(|e| format!("unreachable: {e}"))?;
                let master: redis::RedisResult<HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&spec.master)
                    .query_async(&mut c)
                    .await;
                let master = master.map_err(|e| e.to_string());
                let (replicas, sentinels) = if master.is_ok() {
                    let r: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(&spec.master)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    let s: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg(&spec.master)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    (r, s)
                } else {
                    (vec![], vec![])
                };
                Ok::<_, String>(View {
                    master,
                    replicas,
                    sentinels,
                })
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", self.timeout.as_millis())));
            (s, view)
        });
        let views = futures_util::future::join_all(asks).await;
        let mut problems = Vec::new();
        let mut sentinels = Vec::new();
        let mut best: Option<&View> = None;
        for (s, view) in &views {
            let (up, detail) = match view {
                Err(e) => (false, e.clone()),
                Ok(v) => match &v.master {
                    Ok(_) => (true, String::new()),
                    Err(e) => (true, format!("does not know master `{}`: {e}", spec.master)),
                },
            };
            if !up || !detail.is_empty() {
                problems.push(format!("sentinel {s} {detail}"));
            }
            sentinels.push(Node {
                addr: s.to_string(),
                role: NodeRole::Sentinel,
                up,
                detail,
            });
            if let Ok(v) = view
                && v.master.is_ok()
                && best.is_none()
            {
                best = Some(v);
            }
        }
        let Some(view) = best else {
            problems.push(format!(
                "no sentinel could tell the master `{}`",
                spec.master
            ));
            return (
                Layout::Sentinel {
                    master_name: spec.master.clone(),
                    master: None,
                    replicas: vec![],
                    sentinels,
                    quorum: None,
                },
                problems,
            );
        };
        let m = view.master.as_ref().cloned().unwrap_or_default();
        let mut master = sentinel_view(&m, NodeRole::Master);
        if let Some(epoch) = m.get("config-epoch") {
            master.detail.push_str(&format!(", config epoch {epoch}"));
        }
        if !master.up {
            problems.push(format!(
                "the master {} is down ({}): a failover should follow",
                master.addr, master.detail
            ));
        }
        let replicas: Vec<Node> = view
            .replicas
            .iter()
            .map(|r| sentinel_view(r, NodeRole::Replica))
            .collect();
        for r in replicas.iter().filter(|r| !r.up) {
            problems.push(format!("replica {} is down ({})", r.addr, r.detail));
        }
        // Sentinels the URL does not name, as the first answering sentinel knows them.
        for other in &view.sentinels {
            let node = sentinel_view(other, NodeRole::Sentinel);
            if !sentinels.iter().any(|s| s.addr == node.addr) {
                if !node.up {
                    problems.push(format!("sentinel {} is down ({})", node.addr, node.detail));
                }
                sentinels.push(node);
            }
        }
        let quorum = m.get("quorum").and_then(|q| q.parse::<u32>().ok());
        let up = sentinels.iter().filter(|s| s.up).count();
        if let Some(q) = quorum
            && (up as u32) < q
        {
            problems.push(format!(
                "only {up} sentinels up, fewer than the quorum {q}: no failover can happen"
            ));
        }
        (
            Layout::Sentinel {
                master_name: spec.master.clone(),
                master: Some(master),
                replicas,
                sentinels,
                quorum,
            },
            problems,
        )
    }

    async fn cluster_topology(&self, conn: Result<Conn, String>) -> (Layout, Vec<String>) {
        let mut c = match conn {
            Ok(Conn::Cluster(c)) => c,
            Ok(Conn::Node(_)) => {
                return (
                    Layout::Cluster { shards: vec![] },
                    vec!["not a cluster connection".to_owned()],
                );
            }
            Err(e) => {
                return (
                    Layout::Cluster { shards: vec![] },
                    vec![format!("no connection to the cluster: {e}")],
                );
            }
        };
        let read = tokio::time::timeout(
            self.timeout,
            c.route_command(
                redis::cmd("CLUSTER").arg("SHARDS").clone(),
                redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::Random,
                ),
            ),
        )
        .await;
        let value = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return (
                    Layout::Cluster { shards: vec![] },
                    vec![format!(
                        "CLUSTER SHARDS failed (Redis 7 or later needed): {e}"
                    )],
                );
            }
            Err(_) => {
                return (
                    Layout::Cluster { shards: vec![] },
                    vec![format!(
                        "CLUSTER SHARDS: no answer within {} ms",
                        self.timeout.as_millis()
                    )],
                );
            }
        };
        let mut problems = Vec::new();
        let mut shards = Vec::new();
        for shard in as_list(Some(&value)) {
            let shard = as_map(&shard);
            let slot_list: Vec<i64> = as_list(shard.get("slots")).iter().filter_map(int).collect();
            let slots: Vec<(u16, u16)> = slot_list
                .chunks(2)
                .filter_map(|p| match p {
                    [a, b] => Some((u16::try_from(*a).ok()?, u16::try_from(*b).ok()?)),
                    _ => None,
                })
                .collect();
            let mut master = None;
            let mut replicas = Vec::new();
            for n in as_list(shard.get("nodes")) {
                let n = as_map(&n);
                let host = Some(field(&n, "ip"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| field(&n, "endpoint"));
                let port = Some(field(&n, "port"))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| field(&n, "tls-port"));
                let health = field(&n, "health");
                let node = Node {
                    addr: format!("{host}:{port}"),
                    role: if field(&n, "role") == "master" {
                        NodeRole::Master
                    } else {
                        NodeRole::Replica
                    },
                    up: health == "online",
                    detail: format!("{health}, offset {}", field(&n, "replication-offset")),
                };
                if node.role == NodeRole::Master && node.up {
                    master = Some(node);
                } else if node.role == NodeRole::Master {
                    // A failed master keeps its role in the reply until it is forgotten.
                    problems.push(format!("master {} is down ({})", node.addr, node.detail));
                } else {
                    if !node.up {
                        problems.push(format!("replica {} is down ({})", node.addr, node.detail));
                    }
                    replicas.push(node);
                }
            }
            if slots.is_empty() {
                // A shard without slots: a failed master that was replaced, kept in the view.
                continue;
            }
            if master.is_none() {
                problems.push(format!(
                    "no master serves slots {}",
                    slots
                        .iter()
                        .map(|(a, b)| format!("{a}-{b}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            shards.push(Shard {
                slots,
                master,
                replicas,
            });
        }
        shards.sort_by_key(|s| s.slots.first().map_or(0, |r| r.0));
        (Layout::Cluster { shards }, problems)
    }
}
