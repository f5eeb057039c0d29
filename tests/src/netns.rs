//! Separate hosts on one machine: network namespaces joined by veth pairs to a bridge. A [`Lab`]
//! is a hub namespace holding bridge `br0`, a namespace for Redis and one per host, each with an
//! `eth0` whose peer is a port of the bridge, addressed from `10.231.S.0/24`: addresses that exist
//! only inside the lab's namespaces (the test's own namespace has no route to them, and nothing is
//! sent anywhere else). A host can be cut off ([`Lab::cut`]: its `eth0` goes down) and restored.
//!
//! Processes are started inside a namespace with `ip netns exec NS PROGRAM ...` ([`Lab::command`],
//! [`crate::Supervisor::spawn_in`]); `ip` execs the program, so the child's pid is the program's
//! own. The test process itself can talk to a namespace's addresses through [`in_netns`], which
//! runs a closure on a thread that joined the namespace (`setns`).
//!
//! Drop tears it all down, also when a test panics: every process still in one of the lab's
//! namespaces is killed, then the namespaces are deleted (which destroys their veths and the
//! bridge). Namespaces are named `svt<pid>x<n>-<role>`; a lab also removes those left behind by
//! a test process that no longer exists (one killed by nextest's timeout cannot run its drops).
//!
//! Needs root and a kernel that allows network namespaces: [`unavailable`] says why not, and
//! [`lab_or_skip`] turns that into a printed skip (or a failure with `E2E_REQUIRE_NETNS=1`).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::{alive, run_with_deadline, wait_for};

const PREFIX: &str = "svt";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS...` (10 s at most); its stderr in the error.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = run_with_deadline(Command::new("ip").args(args), Duration::from_secs(10))
        .with_context(|| format!("ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why network namespaces cannot be used here (not root, no `ip`, creating one fails), or `None`
/// when they can: a probe namespace is created and deleted.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "not root (euid {euid}): `ip netns add` needs CAP_SYS_ADMIN"
        ));
    }
    let probe = format!("{PREFIX}{}probe", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(_) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!("{e:#}")),
    }
}

/// A lab of `hosts` hosts, or `None` after printing why the calling test is skipped (on stdout
/// and stderr, so that it shows in nextest's output: see `.config/nextest.toml`). With
/// `E2E_REQUIRE_NETNS=1` in the environment a missing capability is a failure instead.
pub fn lab_or_skip(test: &str, hosts: usize) -> Option<Lab> {
    let reason = match unavailable() {
        None => match Lab::new(hosts) {
            Ok(lab) => return Some(lab),
            Err(e) => format!("building the lab failed: {e:#}"),
        },
        Some(r) => r,
    };
    let why = format!("network namespaces are not available here: {reason}");
    assert!(
        std::env::var("E2E_REQUIRE_NETNS").map_or(true, |v| v != "1"),
        "{test}: {why}; E2E_REQUIRE_NETNS=1 makes that a failure"
    );
    let msg = format!("SKIPPED {test}: {why}");
    println!("{msg}");
    eprintln!("{msg}");
    None
}

/// Joins network namespace `ns` on a fresh thread and runs `f` there: sockets `f` creates belong
/// to `ns`. The test's other threads are not affected.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) with a valid namespace fd, on this thread only (network
            // namespaces are per thread); the fd stays open for the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("the thread running in {ns} panicked"))?
    })
}

/// Network namespaces as hosts around a bridge; see the module docs. Host indexes are 0-based.
#[derive(Debug)]
pub struct Lab {
    base: String,
    subnet: u8,
    hosts: usize,
    made: Vec<String>,
}

impl Lab {
    /// Builds a hub with bridge `br0`, a Redis namespace at `10.231.S.1` and `hosts` host
    /// namespaces at `10.231.S.11`, `.12`, ..., each with loopback up.
    pub fn new(hosts: usize) -> Result<Lab> {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let mut lab = Lab {
            base: format!("{PREFIX}{pid}x{n}"),
            // Only ever used inside this lab's namespaces; varied so that logs of concurrent
            // labs are told apart.
            subnet: u8::try_from((pid + n) % 200).unwrap_or(0) + 20,
            hosts,
            made: vec![],
        };
        let hub = lab.hub();
        lab.add_ns(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        lab.join(&lab.redis_ns(), "r", lab.redis_ip())?;
        for i in 0..hosts {
            lab.join(&lab.host_ns(i), &format!("h{}", i + 1), lab.host_ip(i))?;
        }
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.made.push(ns.to_owned());
        Ok(())
    }

    /// Creates `ns` with `eth0` (address `addr`/24), whose veth peer `port` is a bridge port.
    fn join(&mut self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let hub = self.hub();
        self.add_ns(ns)?;
        ip(&[
            "-n", &hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", &hub, "link", "set", port, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", port, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The hub namespace (holds the bridge).
    pub fn hub(&self) -> String {
        format!("{}-hub", self.base)
    }

    /// Redis's namespace.
    pub fn redis_ns(&self) -> String {
        format!("{}-redis", self.base)
    }

    /// Host `i`'s namespace.
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-h{}", self.base, i + 1)
    }

    /// Host `i`'s name, for `HOSTNAME` (`host1`, `host2`, ...).
    pub fn host_name(&self, i: usize) -> String {
        format!("host{}", i + 1)
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Redis's address.
    pub fn redis_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 1)
    }

    /// Host `i`'s address.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 11 + u8::try_from(i).unwrap_or(200))
    }

    /// `ip netns exec NS program`: add the arguments and spawn.
    pub fn command(&self, ns: &str, program: impl AsRef<Path>) -> Command {
        crate::command_in(Some(ns), program.as_ref())
    }

    /// Cuts host `i` off: `ip netns exec HOST ip link set dev eth0 down`. Its connected route goes
    /// with the link, so its packets to the lab fail at once, and none reach it.
    pub fn cut(&self, i: usize) -> Result<()> {
        ip(&[
            "netns",
            "exec",
            &self.host_ns(i),
            "ip",
            "link",
            "set",
            "dev",
            "eth0",
            "down",
        ])?;
        Ok(())
    }

    /// Reconnects host `i` (link up) and waits (5 s at most) until its route to the lab is back.
    pub fn restore(&self, i: usize) -> Result<()> {
        let ns = self.host_ns(i);
        ip(&[
            "netns", "exec", &ns, "ip", "link", "set", "dev", "eth0", "up",
        ])?;
        wait_for(
            Duration::from_secs(5),
            "the route back after restore",
            || {
                let routes = ip(&["-n", &ns, "route", "show", "dev", "eth0"]).ok()?;
                (routes.contains("10.231.") && !routes.contains("linkdown")).then_some(())
            },
        )
    }

    /// Starts `redis-server` in the Redis namespace, listening on `10.231.S.1:6379`.
    pub fn start_redis(&self) -> Result<NsRedis> {
        NsRedis::start(&self.redis_ns(), self.redis_ip())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// SIGKILLs every process in `ns` and waits (2 s at most) until none is left.
fn kill_all_in(ns: &str) {
    let pids = || -> Vec<i32> {
        ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    for pid in pids() {
        // SAFETY: kill(2) of a process inside a namespace this harness created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = wait_for(
        Duration::from_secs(2),
        "processes to leave the namespace",
        || pids().iter().all(|p| !alive(*p)).then_some(()),
    );
}

/// Deletes labs left by test processes that are gone (their drops never ran).
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split(['x', 'p']).next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !alive(pid) {
            kill_all_in(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A `redis-server` inside a namespace (no persistence), killed on drop.
#[derive(Debug)]
pub struct NsRedis {
    child: Option<Child>,
    ns: String,
    ip: Ipv4Addr,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NsRedis {
    /// Starts it in `ns` on `ip:6379` and waits (10 s at most) until it answers PING there.
    pub fn start(ns: &str, ip: Ipv4Addr) -> Result<NsRedis> {
        let dir = tempfile::tempdir()?;
        let port = 6379;
        let child = crate::command_in(Some(ns), Path::new("redis-server"))
            .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
            // No password, and clients that are not on loopback: protected mode would refuse
            // them. Only the lab's hosts can reach this address.
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("redis.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .context("ip netns exec ... redis-server")?;
        let mut r = NsRedis {
            child: Some(child),
            ns: ns.to_owned(),
            ip,
            port,
            _dir: dir,
        };
        let pinged = wait_for(
            Duration::from_secs(10),
            "redis-server in its namespace",
            || {
                if let Some(Ok(Some(status))) = r.child.as_mut().map(Child::try_wait) {
                    return Some(Err(anyhow!(
                        "redis-server exited: {status} (is it installed? apt-get install redis-server)"
                    )));
                }
                r.query(|c| redis::cmd("PING").query::<String>(c))
                    .ok()
                    .map(|_| Ok(()))
            },
        );
        pinged.and_then(|r| r)?;
        Ok(r)
    }

    /// `redis://10.231.S.1:6379/0`: reachable from the lab's hosts only.
    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.ip, self.port)
    }

    /// Runs `f` on a new connection made from inside Redis's namespace (1 s connect deadline).
    pub fn query<T: Send>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T> + Send,
    ) -> Result<T> {
        let url = self.url();
        in_netns(&self.ns, move || -> Result<T> {
            let client = redis::Client::open(url)?;
            let mut c = client.get_connection_with_timeout(Duration::from_secs(1))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(f(&mut c)?)
        })?
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NsRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
