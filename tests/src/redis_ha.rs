//! Private Redis HA topologies on loopback, on free ports: a Sentinel deployment (a master,
//! replicas, sentinels: `redis-server --sentinel`) and a Redis Cluster (masters with replicas,
//! joined with `redis-cli --cluster create`). Each waits with deadlines until it is settled
//! (replicas in sync, every sentinel knowing every replica and sentinel, the cluster state ok),
//! can SIGKILL a master and wait for its failover, and kills every process on drop. Blocking
//! (synchronous connections): from an async test, call the waits in `block_in_place`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Whether `redis-server` is on the PATH (tests skip, saying so, when it is not).
pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Answers PING (or asks for a password: alive either way).
fn alive(port: u16) -> bool {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `timeout` with the last
/// state `f` described.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `redis-server` process (data node or sentinel), restartable on its port.
#[derive(Debug)]
struct Proc {
    port: u16,
    /// The TLS port clients and the other nodes use, when the topology runs TLS (`port` stays
    /// plain, for the harness).
    tls_port: Option<u16>,
    /// Arguments after `redis-server` (a config file first for a sentinel).
    args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl Proc {
    fn spawn(&self) -> Result<()> {
        let child = crate::redis::spawn_server(&self.args, self.port, || alive(self.port))?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A synchronous connection to a node on loopback (1 s timeouts).
fn connect(port: u16, password: Option<&str>) -> Result<redis::Connection, String> {
    let url = match password {
        Some(p) => format!("redis://:{p}@127.0.0.1:{port}/"),
        None => format!("redis://127.0.0.1:{port}/"),
    };
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let c = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .map_err(|e| format!("port {port}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    Ok(c)
}

fn query<T: redis::FromRedisValue>(
    port: u16,
    password: Option<&str>,
    cmd: &redis::Cmd,
) -> Result<T, String> {
    let mut c = connect(port, password)?;
    cmd.query(&mut c).map_err(|e| format!("port {port}: {e}"))
}

/// `INFO <section>` as a map.
fn info(
    port: u16,
    password: Option<&str>,
    section: &str,
) -> Result<HashMap<String, String>, String> {
    let text: String = query(port, password, redis::cmd("INFO").arg(section))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

fn data_args(port: u16, dir: &Path, password: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    args.push("--logfile".into());
    args.push(dir.join("redis.log").display().to_string());
    if let Some(p) = password {
        args.extend(["--requirepass", p, "--masterauth", p].map(String::from));
    }
    args
}

/// `--tls-port` and the certificate arguments (files made by [`crate::redis::make_tls_files`]).
fn tls_args(port: u16, certs: &Path) -> Vec<String> {
    let mut args = vec!["--tls-port".to_owned(), port.to_string()];
    for (flag, file) in [
        ("--tls-cert-file", "cert.pem"),
        ("--tls-key-file", "key.pem"),
        ("--tls-ca-cert-file", "ca.pem"),
    ] {
        args.push(flag.to_owned());
        args.push(certs.join(file).display().to_string());
    }
    args.extend(["--tls-auth-clients", "no", "--tls-replication", "yes"].map(String::from));
    args
}

/// Settings of a [`SentinelTopology`].
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// Replicas of the master (default 2).
    pub replicas: usize,
    /// Sentinels (default 3; quorum = a majority).
    pub sentinels: usize,
    /// `down-after-milliseconds` (default 1000).
    pub down_after_ms: u64,
    /// `failover-timeout` (default 3000).
    pub failover_timeout_ms: u64,
    /// `requirepass` / `masterauth` of the data nodes (and `auth-pass` of the sentinels).
    pub password: Option<String>,
    /// `requirepass` of the sentinels themselves.
    pub sentinel_password: Option<String>,
    /// TLS between every node and for clients (a throwaway CA: [`SentinelTopology::ca_file`]);
    /// each node keeps a plain port for the harness.
    pub tls: bool,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        Self {
            replicas: 2,
            sentinels: 3,
            down_after_ms: 1000,
            failover_timeout_ms: 3000,
            password: None,
            sentinel_password: None,
            tls: false,
        }
    }
}

/// A master, its replicas and sentinels watching it as `mymaster`, all on loopback.
#[derive(Debug)]
pub struct SentinelTopology {
    /// The master name the sentinels know.
    pub master_name: String,
    opts: SentinelOptions,
    data: Vec<Proc>,
    sentinels: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl SentinelTopology {
    /// Starts the data nodes (the first one the master), waits until the replicas are in sync,
    /// starts the sentinels and waits (at most 30 s) until every sentinel knows the master,
    /// every replica and every other sentinel.
    pub fn start(opts: SentinelOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        if opts.tls {
            crate::redis::make_tls_files(dir.path())?;
        }
        let master_name = "mymaster".to_owned();
        let pw = opts.password.as_deref();
        let mut data: Vec<Proc> = Vec::new();
        for i in 0..=opts.replicas {
            let port = free_port()?;
            let tls_port = if opts.tls { Some(free_port()?) } else { None };
            let d = dir.path().join(format!("data-{port}"));
            std::fs::create_dir_all(&d)?;
            let mut args = data_args(port, &d, pw);
            if let Some(t) = tls_port {
                args.extend(tls_args(t, dir.path()));
            }
            if i > 0 {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    data[0].tls_port.unwrap_or(data[0].port).to_string(),
                ]);
            }
            let p = Proc {
                port,
                tls_port,
                args,
                child: Mutex::new(None),
            };
            p.spawn()?;
            data.push(p);
        }
        let master_port = data[0].port;
        let master_seen_port = data[0].tls_port.unwrap_or(master_port);
        let replicas = opts.replicas;
        wait_until("the replicas to sync", Duration::from_secs(20), || {
            let i = info(master_port, pw, "replication")?;
            let online = i
                .iter()
                .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
                .count();
            Ok((online >= replicas).then_some(()))
        })?;
        let quorum = opts.sentinels / 2 + 1;
        let mut sentinels = Vec::new();
        for _ in 0..opts.sentinels {
            let port = free_port()?;
            let tls_port = if opts.tls { Some(free_port()?) } else { None };
            let d = dir.path().join(format!("sentinel-{port}"));
            std::fs::create_dir_all(&d)?;
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {name} 127.0.0.1 {master_seen_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} {fo}\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = d.display(),
                log = d.join("sentinel.log").display(),
                name = master_name,
                down = opts.down_after_ms,
                fo = opts.failover_timeout_ms,
            );
            if let Some(p) = pw {
                conf.push_str(&format!("sentinel auth-pass {master_name} {p}\n"));
            }
            if let Some(sp) = &opts.sentinel_password {
                conf.push_str(&format!("requirepass {sp}\nsentinel sentinel-pass {sp}\n"));
            }
            if let Some(t) = tls_port {
                let c = dir.path();
                conf.push_str(&format!(
                    "tls-port {t}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-auth-clients no\ntls-replication yes\n",
                    c.join("cert.pem").display(),
                    c.join("key.pem").display(),
                    c.join("ca.pem").display()
                ));
            }
            let path = d.join("sentinel.conf");
            std::fs::write(&path, conf)?;
            let p = Proc {
                port,
                tls_port,
                args: vec![path.display().to_string(), "--sentinel".into()],
                child: Mutex::new(None),
            };
            p.spawn()?;
            sentinels.push(p);
        }
        let topo = SentinelTopology {
            master_name,
            opts,
            data,
            sentinels,
            dir,
        };
        if !topo.sentinels.is_empty() {
            topo.wait_settled(Duration::from_secs(30))?;
        }
        Ok(topo)
    }

    fn sentinel_query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        query(port, self.opts.sentinel_password.as_deref(), cmd)
    }

    /// The harness's (plain) port of the node that the sentinels call `port` (its TLS port
    /// when the topology runs TLS).
    fn plain(&self, port: u16) -> u16 {
        self.data
            .iter()
            .chain(&self.sentinels)
            .find(|p| p.tls_port == Some(port))
            .map_or(port, |p| p.port)
    }

    /// Waits until every running sentinel names the same master, which answers `ROLE` as a
    /// master, and knows every running replica (link ok) and every other sentinel.
    pub fn wait_settled(&self, timeout: Duration) -> Result<u16> {
        let running_data = self.data.iter().filter(|p| p.running()).count();
        let running_sentinels = self.sentinels.iter().filter(|p| p.running()).count();
        wait_until("the sentinels to agree", timeout, || {
            let mut master = None;
            for s in self.sentinels.iter().filter(|p| p.running()) {
                let m: HashMap<String, String> = self.sentinel_query(
                    s.port,
                    redis::cmd("SENTINEL").arg("MASTER").arg(&self.master_name),
                )?;
                let port: u16 = m.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
                let port = self.plain(port);
                let flags = m.get("flags").cloned().unwrap_or_default();
                if flags != "master" {
                    return Err(format!("sentinel {}: master flags {flags}", s.port));
                }
                if *master.get_or_insert(port) != port {
                    return Err(format!("sentinels disagree: {master:?} / {port}"));
                }
                let replicas: Vec<HashMap<String, String>> = self.sentinel_query(
                    s.port,
                    redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(&self.master_name),
                )?;
                let ok = replicas
                    .iter()
                    .filter(|r| {
                        r.get("flags").is_some_and(|f| f == "slave")
                            && r.get("master-link-status").is_some_and(|l| l == "ok")
                    })
                    .count();
                if ok < running_data - 1 {
                    return Err(format!("sentinel {}: {ok} replicas ok", s.port));
                }
                let others: Vec<HashMap<String, String>> = self.sentinel_query(
                    s.port,
                    redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg(&self.master_name),
                )?;
                let up = others
                    .iter()
                    .filter(|o| o.get("flags").is_some_and(|f| f == "sentinel"))
                    .count();
                if up < running_sentinels - 1 {
                    return Err(format!("sentinel {}: knows {up} other sentinels", s.port));
                }
            }
            let Some(port) = master else {
                return Err("no sentinel running".into());
            };
            let role: Vec<redis::Value> =
                query(port, self.opts.password.as_deref(), &redis::cmd("ROLE"))?;
            let is_master =
                matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master");
            if !is_master {
                return Err(format!("{port} is not a master yet"));
            }
            let i = info(port, self.opts.password.as_deref(), "replication")?;
            let online = i
                .iter()
                .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
                .count();
            if online < running_data - 1 {
                return Err(format!("master {port}: {online} replicas online"));
            }
            Ok(Some(port))
        })
    }

    /// `redis+sentinel://[:pw@]127.0.0.1:S1,...,127.0.0.1:Sn/mymaster?QUERY` (the sentinel
    /// password, if any, as `sentinel_password`).
    pub fn url(&self, query: &str) -> String {
        let auth = self
            .opts
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.tls_port.unwrap_or(s.port)))
            .collect();
        let mut params: Vec<String> = Vec::new();
        if let Some(sp) = &self.opts.sentinel_password {
            params.push(format!("sentinel_password={sp}"));
        }
        if !query.is_empty() {
            params.push(query.to_owned());
        }
        let q = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        let scheme = if self.opts.tls {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!(
            "{scheme}://{auth}{}/{}{q}",
            hosts.join(","),
            self.master_name
        )
    }

    /// The master's port, as the first answering sentinel names it (without sentinels: the
    /// first data node).
    pub fn master_port(&self) -> Result<u16> {
        if self.sentinels.is_empty() {
            return Ok(self.data[0].port);
        }
        for s in self.sentinels.iter().filter(|p| p.running()) {
            let addr: Option<(String, u16)> = self
                .sentinel_query(
                    s.port,
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(&self.master_name),
                )
                .ok()
                .flatten();
            if let Some((_, port)) = addr {
                return Ok(self.plain(port));
            }
        }
        bail!("no sentinel names a master")
    }

    /// The ports of the data nodes (running or not).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|p| p.port).collect()
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|p| p.port).collect()
    }

    /// SIGKILLs the data node on `port`.
    pub fn kill(&self, port: u16) -> Result<()> {
        let p = self
            .data
            .iter()
            .chain(&self.sentinels)
            .find(|p| p.port == port)
            .with_context(|| format!("no node on port {port}"))?;
        p.kill();
        Ok(())
    }

    /// SIGKILLs the current master; returns its port.
    pub fn kill_master(&self) -> Result<u16> {
        let port = self.master_port()?;
        self.kill(port)?;
        Ok(port)
    }

    /// Starts the (killed) data node on `port` again, empty, as a replica of the master the
    /// sentinels name now: the way Sentinel deployments bring a node back (a start script asks
    /// the sentinels for the master first), so that it is in sync within a second or two
    /// instead of waiting for the sentinels to convert a restarted master.
    pub fn restart_as_replica(&self, port: u16) -> Result<()> {
        let master = self.master_port()?;
        let p = self
            .data
            .iter()
            .find(|p| p.port == port)
            .with_context(|| format!("no data node on port {port}"))?;
        p.kill();
        let mut args: Vec<String> = p
            .args
            .iter()
            .take_while(|a| *a != "--replicaof")
            .cloned()
            .collect();
        let master_seen = self
            .data
            .iter()
            .find(|p| p.port == master)
            .and_then(|p| p.tls_port)
            .unwrap_or(master);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_seen.to_string(),
        ]);
        let restarted = Proc {
            port,
            tls_port: p.tls_port,
            args,
            child: Mutex::new(None),
        };
        restarted.spawn()?;
        // Hand the child over to the node's slot (killed with the topology).
        let child = restarted
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        *p.child.lock().unwrap_or_else(|p| p.into_inner()) = child;
        Ok(())
    }

    /// SIGSTOPs (`STOP`) or SIGCONTs (`CONT`) the node on `port`.
    pub fn signal(&self, port: u16, sig: &str) -> Result<()> {
        let p = self
            .data
            .iter()
            .chain(&self.sentinels)
            .find(|p| p.port == port)
            .with_context(|| format!("no node on port {port}"))?;
        let pid = p
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.id())
            .context("not running")?;
        crate::redis::signal(pid, sig)
    }

    /// Runs a command on the data node on `port` (with the data nodes' password).
    pub fn command<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> Result<T> {
        query(port, self.opts.password.as_deref(), cmd).map_err(anyhow::Error::msg)
    }

    /// Waits until the running sentinels agree on a master other than `old` that answers as a
    /// master; returns its port.
    pub fn wait_failover(&self, old: u16, timeout: Duration) -> Result<u16> {
        wait_until("a failover", timeout, || {
            let mut seen = None;
            for s in self.sentinels.iter().filter(|p| p.running()) {
                let addr: Option<(String, u16)> = self.sentinel_query(
                    s.port,
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(&self.master_name),
                )?;
                let port = addr.map_or(0, |a| self.plain(a.1));
                if port == old || port == 0 {
                    return Err(format!("sentinel {} still names {port}", s.port));
                }
                if *seen.get_or_insert(port) != port {
                    return Err("sentinels disagree".into());
                }
            }
            let Some(port) = seen else {
                return Err("no sentinel running".into());
            };
            let role: Vec<redis::Value> =
                query(port, self.opts.password.as_deref(), &redis::cmd("ROLE"))?;
            Ok(
                matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
                    .then_some(port),
            )
        })
    }

    /// The directory holding every node's files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate to trust (e.g. through `SSL_CERT_FILE`) when the topology runs TLS.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Settings of a [`ClusterTopology`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Masters (default 3).
    pub masters: usize,
    /// Replicas per master (default 1).
    pub replicas_per_master: usize,
    /// `cluster-node-timeout` (default 1000 ms).
    pub node_timeout_ms: u64,
    /// `requirepass` / `masterauth` of every node.
    pub password: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            password: None,
        }
    }
}

/// A Redis Cluster on loopback.
#[derive(Debug)]
pub struct ClusterTopology {
    opts: ClusterOptions,
    nodes: Vec<Proc>,
    dir: tempfile::TempDir,
}

/// `(first slot, last slot, master port)` of each range of `CLUSTER SLOTS`.
fn slot_ranges(v: &redis::Value) -> Vec<(u16, u16, u16)> {
    let redis::Value::Array(ranges) = v else {
        return vec![];
    };
    ranges
        .iter()
        .filter_map(|r| {
            let redis::Value::Array(items) = r else {
                return None;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i),
                _ => None,
            };
            let start = int(items.first()?)?;
            let end = int(items.get(1)?)?;
            let redis::Value::Array(m) = items.get(2)? else {
                return None;
            };
            let port = int(m.get(1)?)?;
            Some((
                u16::try_from(start).ok()?,
                u16::try_from(end).ok()?,
                u16::try_from(port).ok()?,
            ))
        })
        .collect()
}

impl ClusterTopology {
    /// Starts the nodes, joins them with `redis-cli --cluster create` and waits (at most 30 s)
    /// until every node sees the cluster state ok with every replica linked.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pw = opts.password.as_deref();
        let n = opts.masters * (1 + opts.replicas_per_master);
        let mut nodes = Vec::new();
        for _ in 0..n {
            let port = free_port()?;
            let d = dir.path().join(format!("node-{port}"));
            std::fs::create_dir_all(&d)?;
            let mut args = data_args(port, &d, pw);
            args.extend([
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                d.join("nodes.conf").display().to_string(),
                "--cluster-node-timeout".to_owned(),
                opts.node_timeout_ms.to_string(),
            ]);
            let p = Proc {
                port,
                tls_port: None,
                args,
                child: Mutex::new(None),
            };
            p.spawn()?;
            nodes.push(p);
        }
        let mut cli = Command::new("redis-cli");
        cli.arg("--cluster").arg("create");
        for p in &nodes {
            cli.arg(format!("127.0.0.1:{}", p.port));
        }
        cli.args([
            "--cluster-replicas",
            &opts.replicas_per_master.to_string(),
            "--cluster-yes",
        ]);
        if let Some(p) = pw {
            cli.args(["-a", p, "--no-auth-warning"]);
        }
        let mut child = cli
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("redis-cli not found on PATH (it comes with redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-cli --cluster create did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if !status.success() {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut out);
            }
            bail!("redis-cli --cluster create failed ({status}): {out}");
        }
        let topo = ClusterTopology { opts, nodes, dir };
        topo.wait_settled(Duration::from_secs(30))?;
        Ok(topo)
    }

    fn pw(&self) -> Option<&str> {
        self.opts.password.as_deref()
    }

    fn running(&self) -> impl Iterator<Item = &Proc> {
        self.nodes.iter().filter(|p| p.running())
    }

    /// Waits until every running node reports `cluster_state:ok`, sees every slot served by
    /// a running master, and every running replica's link is up; when every node runs, also
    /// until each master has all its replicas in sync. Returns the slot map.
    pub fn wait_settled(&self, timeout: Duration) -> Result<Vec<(u16, u16, u16)>> {
        let running: Vec<u16> = self.running().map(|p| p.port).collect();
        let complete = running.len() == self.nodes.len();
        wait_until("the cluster to settle", timeout, || {
            let mut map = None;
            for &port in &running {
                let text: String = query(port, self.pw(), redis::cmd("CLUSTER").arg("INFO"))?;
                let i: HashMap<&str, &str> = text
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k, v.trim()))
                    .collect();
                if i.get("cluster_state").copied() != Some("ok") {
                    return Err(format!(
                        "{port}: cluster state {:?}",
                        i.get("cluster_state")
                    ));
                }
                let v: redis::Value = query(port, self.pw(), redis::cmd("CLUSTER").arg("SLOTS"))?;
                let mut ranges = slot_ranges(&v);
                ranges.sort();
                if ranges.iter().any(|r| !running.contains(&r.2)) {
                    return Err(format!(
                        "{port}: a dead master still serves slots: {ranges:?}"
                    ));
                }
                let covered: u32 = ranges.iter().map(|r| u32::from(r.1 - r.0) + 1).sum();
                if covered != 16384 {
                    return Err(format!("{port}: {covered} slots covered"));
                }
                if map.get_or_insert_with(|| ranges.clone()) != &ranges {
                    return Err("nodes disagree on the slot map".into());
                }
                let r = info(port, self.pw(), "replication")?;
                if r.get("role").map(String::as_str) == Some("slave")
                    && r.get("master_link_status").map(String::as_str) != Some("up")
                {
                    return Err(format!("replica {port}: link down"));
                }
                let serves = ranges.iter().any(|r| r.2 == port);
                if complete && serves {
                    let online = r
                        .iter()
                        .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
                        .count();
                    if online < self.opts.replicas_per_master {
                        return Err(format!("master {port}: {online} replicas in sync"));
                    }
                }
            }
            Ok(map)
        })
    }

    /// `redis+cluster://[:pw@]127.0.0.1:P1,...?QUERY` (every node as a seed).
    pub fn url(&self, query: &str) -> String {
        let auth = self.pw().map(|p| format!(":{p}@")).unwrap_or_default();
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("redis+cluster://{auth}{}/{q}", hosts.join(","))
    }

    /// The ports of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|p| p.port).collect()
    }

    /// `CLUSTER KEYSLOT key`, asked of a running node.
    pub fn keyslot(&self, key: &str) -> Result<u16> {
        let port = self.running().next().context("no node running")?.port;
        query(
            port,
            self.pw(),
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .map_err(anyhow::Error::msg)
    }

    /// The port of the master serving `slot`, as a running node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Result<u16> {
        let port = self.running().next().context("no node running")?.port;
        let v: redis::Value = query(port, self.pw(), redis::cmd("CLUSTER").arg("SLOTS"))
            .map_err(anyhow::Error::msg)?;
        slot_ranges(&v)
            .into_iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2)
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&self, port: u16) -> Result<()> {
        self.nodes
            .iter()
            .find(|p| p.port == port)
            .with_context(|| format!("no node on port {port}"))?
            .kill();
        Ok(())
    }

    /// Starts the (killed) node on `port` again with its cluster config file: it rejoins the
    /// cluster by itself, as a replica of the master that took its slots over.
    pub fn restart(&self, port: u16) -> Result<()> {
        let p = self
            .nodes
            .iter()
            .find(|p| p.port == port)
            .with_context(|| format!("no node on port {port}"))?;
        p.kill();
        p.spawn()
    }

    /// Waits until the running nodes agree that `slot` is served by a master other than `old`
    /// and the cluster state is ok everywhere; returns the new master's port.
    pub fn wait_failover(&self, slot: u16, old: u16, timeout: Duration) -> Result<u16> {
        let map = self.wait_settled(timeout)?;
        map.into_iter()
            .find(|r| r.0 <= slot && slot <= r.1 && r.2 != old)
            .map(|r| r.2)
            .with_context(|| format!("slot {slot} is still served by {old}"))
    }

    /// The directory holding every node's files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Where a node's log is (for a failure message).
pub fn log_of(dir: &Path, port: u16) -> PathBuf {
    for prefix in ["data", "sentinel", "node"] {
        let d = dir.join(format!("{prefix}-{port}"));
        for f in ["redis.log", "sentinel.log"] {
            if d.join(f).exists() {
                return d.join(f);
            }
        }
    }
    dir.to_path_buf()
}
