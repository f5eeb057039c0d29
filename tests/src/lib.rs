//! Harness for the end-to-end tests: runs the real `supervisor` and `demo-app` binaries in a temp
//! dir on port 0, reads `status --json`, generates HTTP load (keep-alive and one connection per
//! request) that counts every failure, and kills everything it started, also when a test fails.
//! Every wait has a deadline. [`redis`] runs private `redis-server`s, [`redis_ha`] Sentinel and
//! Cluster topologies of them; [`netns`] runs them and supervisors as separate hosts in network
//! namespaces.

pub mod netns;
pub mod redis;
pub mod redis_ha;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Path of a binary built by this workspace (next to the test executable's `deps/` dir).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `scripts/test` (it builds the binaries first), or `cargo build --workspace --bins` before `cargo nextest run`",
        path.display()
    );
    path
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `examples/node-express`, with its dependencies installed; panics with what to run when Node or
/// the example's `node_modules` is missing (the tests need them: `scripts/test` installs both).
pub fn node_example() -> PathBuf {
    let dir = workspace_root().join("examples/node-express");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` is not on the PATH: install Node.js 18+ (apt-get install nodejs npm), or run scripts/test, which does"
    );
    assert!(
        dir.join("node_modules/express").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/test does)",
        dir.display()
    );
    dir
}

/// A loopback address whose `port` is free, for apps that hard-code their port (the seeds' app
/// listens on 3000): 127.0.0.2 .. 127.0.0.254, the first one that binds. Panics, saying what holds
/// the port, when every one is taken (a wildcard listener on that port takes them all).
pub fn free_loopback_with_port(port: u16) -> SocketAddr {
    for host in 2..=254u8 {
        let addr = SocketAddr::from(([127, 0, 0, host], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!(
        "port {port} is taken on every loopback address (a process listens on 0.0.0.0:{port}?): stop it to run this test"
    );
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.first()? != &"Z" && f.get(2)?.parse::<i32>().ok()? == pgid)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// A running supervisor under test.
#[derive(Debug)]
pub struct Supervisor {
    child: Option<Child>,
    /// Temp dir holding config, socket and log.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Where the supervisor's stderr goes.
    pub log: PathBuf,
    /// The network namespace it runs in (and its CLI commands too), if not the test's own.
    pub netns: Option<String>,
    known_pgids: Mutex<Vec<i32>>,
}

/// A config for tests: `{demo}` is replaced by the demo-app path; a control socket in the temp
/// dir is added unless the text has its own `[supervisor]`, and a listener on 127.0.0.1:0 for the
/// first `[[app]]` unless the text has `[[app.listen]]` anywhere.
pub fn config_text(body: &str) -> String {
    let body = body.replace("{demo}", &bin("demo-app").display().to_string());
    let mut text = String::new();
    if !body.contains("[supervisor]") {
        text.push_str("[supervisor]\ncontrol_socket = \"control.sock\"\n\n");
    }
    if body.contains("[[app.listen]]") {
        text.push_str(&body);
        return text;
    }
    // Right after the first app's own keys: before the next table header, or at the end.
    let listen = "\n[[app.listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n";
    let lines: Vec<&str> = body.lines().collect();
    let app = lines.iter().position(|l| l.trim() == "[[app]]");
    let at = app.map(|a| {
        lines[a + 1..]
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .map_or(lines.len(), |p| a + 1 + p)
    });
    for (i, line) in lines.iter().enumerate() {
        if Some(i) == at {
            text.push_str(listen);
        }
        text.push_str(line);
        text.push('\n');
    }
    if at == Some(lines.len()) {
        text.push_str(listen);
    }
    text
}

impl Supervisor {
    /// Writes the config and starts `supervisor start` without waiting for anything.
    pub fn spawn(body: &str) -> Result<Supervisor> {
        Supervisor::spawn_with_env(body, &[])
    }

    /// [`Supervisor::spawn`] with extra variables in the supervisor's environment.
    pub fn spawn_with_env(body: &str, env: &[(&str, &str)]) -> Result<Supervisor> {
        Supervisor::spawn_in(None, body, env)
    }

    /// [`Supervisor::spawn_with_env`] inside network namespace `netns` (`ip netns exec NETNS
    /// supervisor start ...`; `ip` execs, so the child's pid is the supervisor's). Its workers
    /// live there too; [`Supervisor::cli`] runs there as well, so `jobs` reaches the namespace's
    /// Redis, while the control socket, a path, is reachable from anywhere.
    pub fn spawn_in(netns: Option<&str>, body: &str, env: &[(&str, &str)]) -> Result<Supervisor> {
        Supervisor::spawn_binary(&bin("supervisor"), netns, body, env)
    }

    /// [`Supervisor::spawn_in`] with another supervisor binary (an older release).
    pub fn spawn_binary(
        binary: &Path,
        netns: Option<&str>,
        body: &str,
        env: &[(&str, &str)],
    ) -> Result<Supervisor> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("supervisor.toml");
        std::fs::write(&config, config_text(body))?;
        let log = dir.path().join("supervisor.log");
        // A runtime directory of its own (`XDG_RUNTIME_DIR`): the supervisors of tests running
        // at the same time are not listed beside it (`ls`, flagless commands, names).
        let run = dir.path().join("run");
        std::fs::create_dir(&run)?;
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let child = command_in(netns, binary)
            .args(["start", "-c"])
            .arg(&config)
            .env("XDG_RUNTIME_DIR", &run)
            .env("RUST_LOG", "info")
            .env("DRAIN_IDLE_GRACE_MS", "500")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("supervisor.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn supervisor")?;
        Ok(Supervisor {
            child: Some(child),
            dir,
            config,
            log,
            netns: netns.map(str::to_owned),
            known_pgids: Mutex::new(vec![]),
        })
    }

    /// Starts a supervisor and waits until `instances` workers are ready.
    pub fn start(body: &str, instances: usize) -> Result<Supervisor> {
        let s = Supervisor::spawn(body)?;
        s.wait_ready(instances, Duration::from_secs(20))?;
        Ok(s)
    }

    /// Replaces the config file (the next reload reads it).
    pub fn rewrite(&self, body: &str) -> Result<()> {
        Ok(std::fs::write(&self.config, config_text(body))?)
    }

    /// Ready workers of the status, sorted by slot.
    pub fn ready_workers(&self) -> Result<Vec<WorkerRow>> {
        let mut ws: Vec<WorkerRow> = workers(&self.status()?)
            .into_iter()
            .filter(|w| w.state == "ready")
            .collect();
        ws.sort_by_key(|w| w.slot);
        Ok(ws)
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Runs `supervisor <args> -c <config>` and returns its output (deadline 60 s).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        run_with_deadline(
            command_in(self.netns.as_deref(), &bin("supervisor"))
                .args(args)
                .arg("-c")
                .arg(&self.config)
                .env("XDG_RUNTIME_DIR", self.dir.path().join("run")),
            Duration::from_secs(60),
        )
    }

    /// Runs `supervisor <args> -c <config>`: whether it exited 0, and its stdout and stderr.
    pub fn cli_text(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = self.cli(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Result<Value> {
        let out = self.cli(&["status", "--json"])?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("status --json is not JSON")?;
        let mut known = self.known_pgids.lock().map_err(|_| anyhow!("poisoned"))?;
        for w in workers(&v) {
            if !known.contains(&w.pid) {
                known.push(w.pid);
            }
        }
        Ok(v)
    }

    /// Waits until exactly `n` workers are ready (and none starting or draining).
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> Result<Value> {
        wait_for(
            timeout,
            &format!("{n} ready workers (log: {})", self.log_text()),
            || {
                let v = self.status().ok()?;
                let ws = workers(&v);
                (ws.len() == n && ws.iter().all(|w| w.state == "ready")).then_some(v)
            },
        )
    }

    /// The bound address of the first listener.
    pub fn addr(&self) -> Result<SocketAddr> {
        let v = self.status()?;
        let a = v["apps"][0]["listeners"][0]["address"]
            .as_str()
            .context("no listener in status")?;
        Ok(a.parse()?)
    }

    /// The supervisor's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the supervisor.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the supervisor to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.as_mut().context("already reaped")?;
        let status = wait_for(timeout, "the supervisor to exit", || {
            child.try_wait().ok().flatten()
        })?;
        self.child = None;
        Ok(status.code())
    }

    /// Every worker pid (= process group) ever seen in a status.
    pub fn known_pgids(&self) -> Vec<i32> {
        self.known_pgids
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pgid in self.known_pgids() {
            // SAFETY: killing process groups this test started (cleanup after a failure).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// A command for `program`, run inside network namespace `netns` (through `ip netns exec`) when
/// one is given.
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `supervisor reload` `rounds` times on a supervisor whose one app has `workers` workers in
/// generation 1: every reload exits 0 saying `generation N: ok`, and brings `workers` new ready
/// workers of that generation, none of whose pids was seen before. Returns every pid seen, of every
/// generation.
pub fn reload_rounds(
    s: &Supervisor,
    rounds: u64,
    workers: usize,
) -> Result<std::collections::HashSet<i32>> {
    let mut seen: std::collections::HashSet<i32> =
        s.ready_workers()?.iter().map(|w| w.pid).collect();
    for round in 0..rounds {
        let generation = round + 2;
        let (ok, text) = s.cli_text(&["reload"])?;
        if !ok || !text.contains(&format!("generation {generation}: ok")) {
            bail!("reload {round}: {text}\n{}", s.log_text());
        }
        let ready = s.ready_workers()?;
        if ready.len() != workers || ready.iter().any(|w| w.generation != generation) {
            bail!("after reload {round}: {ready:?}");
        }
        if let Some(w) = ready.iter().find(|w| !seen.insert(w.pid)) {
            bail!("pid {} reused: not a new worker", w.pid);
        }
    }
    Ok(seen)
}

/// Runs `supervisor reload` `rounds` times under load of `mode` on `path` (`clients` clients),
/// asserting that every reload succeeds and replaces every worker; returns what the load saw.
pub fn reloads_under_load(
    s: &Supervisor,
    path: &'static str,
    mode: ConnMode,
    clients: usize,
    rounds: usize,
) -> Result<LoadReport> {
    let load = Load::start(s.addr()?, path, clients, &[mode]);
    load.wait_answered()?;
    for round in 0..rounds {
        let before: Vec<i32> = s.ready_workers()?.iter().map(|w| w.pid).collect();
        let out = s.cli(&["reload"])?;
        if !out.status.success() {
            bail!(
                "reload {round} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let after = s.ready_workers()?;
        if after.iter().any(|w| before.contains(&w.pid)) {
            bail!("reload {round} kept a worker: before {before:?}, after {after:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(load.stop())
}

/// Runs a command with a deadline; kills it at the deadline.
pub fn run_with_deadline(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A worker row of `status --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Name (`app.slot`).
    pub name: String,
    /// Slot.
    pub slot: u64,
    /// pid.
    pub pid: i32,
    /// Generation.
    pub generation: u64,
    /// State.
    pub state: String,
    /// Restarts of the slot.
    pub restarts: u64,
}

/// The worker rows of a status, every app's, in app order.
pub fn workers(status: &Value) -> Vec<WorkerRow> {
    status["apps"]
        .as_array()
        .map(|apps| {
            apps.iter()
                .flat_map(|app| app["workers"].as_array().cloned().unwrap_or_default())
                .map(|w| WorkerRow {
                    name: w["name"].as_str().unwrap_or("").to_string(),
                    slot: w["slot"].as_u64().unwrap_or(0),
                    pid: w["process"]["pid"].as_i64().unwrap_or(0) as i32,
                    generation: w["generation"].as_u64().unwrap_or(0),
                    state: w["state"].as_str().unwrap_or("").to_string(),
                    restarts: w["restarts"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One plain HTTP/1.1 GET on a new connection; returns the status code and body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// How the load clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// Reuse connections (reconnect only when the server closes them).
    KeepAlive,
    /// A new connection per request (`Connection: close`).
    PerRequest,
}

/// Counters of a load run.
#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    by_pid: Mutex<BTreeMap<String, u64>>,
}

/// Load that runs until stopped, in its own thread and runtime.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a load run saw.
#[derive(Debug)]
pub struct LoadReport {
    /// 2xx responses.
    pub ok: u64,
    /// Failures: connect/read/write errors, timeouts, non-2xx.
    pub failed: u64,
    /// The first failures' descriptions.
    pub errors: Vec<String>,
    /// Responses per `pid=` seen in the body.
    pub by_pid: BTreeMap<String, u64>,
}

impl Load {
    /// Starts `clients` clients of each mode in `modes` against `addr` + `path`.
    pub fn start(addr: SocketAddr, path: &'static str, clients: usize, modes: &[ConnMode]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (s, c, modes) = (stop.clone(), counters.clone(), modes.to_vec());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for mode in modes {
                    for _ in 0..clients {
                        tasks.push(tokio::spawn(client(addr, path, mode, s.clone(), c.clone())));
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Load {
            stop,
            counters,
            thread: Some(thread),
        }
    }

    /// Waits (10 s at most) until the clients get answers: the load is on.
    pub fn wait_answered(&self) -> Result<()> {
        wait_for(Duration::from_secs(10), "the first responses", || {
            (self.ok_so_far() > 0).then_some(())
        })
    }

    /// Responses so far.
    pub fn ok_so_far(&self) -> u64 {
        self.counters.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes its current request) and reports.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        LoadReport {
            ok: self.counters.ok.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            errors: self
                .counters
                .errors
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
            by_pid: self
                .counters
                .by_pid
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn fail(c: &Counters, what: String) {
    c.failed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut e) = c.errors.lock()
        && e.len() < 20
    {
        e.push(what);
    }
}

async fn client(
    addr: SocketAddr,
    path: &'static str,
    mode: ConnMode,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http1;
    let mut sender: Option<http1::SendRequest<Empty<bytes::Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(addr),
                )
                .await;
                let stream = match conn {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        fail(&c, format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(_) => {
                        fail(&c, "connect: timeout".into());
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                match http1::handshake(hyper_util::rt::TokioIo::new(stream)).await {
                    Ok((s, conn)) => {
                        tokio::spawn(conn);
                        s
                    }
                    Err(e) => {
                        fail(&c, format!("handshake: {e}"));
                        continue;
                    }
                }
            }
        };
        let mut req = hyper::Request::get(path).header("host", "test");
        if mode == ConnMode::PerRequest {
            req = req.header("connection", "close");
        }
        let Ok(req) = req.body(Empty::new()) else {
            return;
        };
        // A connection the server closed before we sent anything is not a failed request: a
        // client reconnects. A request that was sent and got no answer is one.
        if s.ready().await.is_err() {
            continue;
        }
        let sent = tokio::time::timeout(Duration::from_secs(10), async {
            let resp = s
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            let close = resp
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok((status, close, body))
        })
        .await;
        match sent {
            Ok(Ok((status, close, body))) => {
                if status.is_success() {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&body);
                    if let Some(pid) = text.split_whitespace().find_map(|w| w.strip_prefix("pid="))
                        && let Ok(mut m) = c.by_pid.lock()
                    {
                        *m.entry(pid.to_string()).or_default() += 1;
                    }
                } else {
                    fail(&c, format!("status {status}"));
                }
                if mode == ConnMode::KeepAlive && !close {
                    sender = Some(s);
                }
            }
            Ok(Err(e)) => fail(&c, e),
            Err(_) => fail(&c, "timeout".into()),
        }
    }
}

/// Now, in whole Unix seconds.
pub fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A cron tick as the jobs write it (RFC 3339, `2026-11-30T05:19:20.000Z`) in whole Unix seconds;
/// anything else fails the test.
pub fn tick_secs(tick: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(tick)
        .unwrap_or_else(|e| panic!("tick {tick:?} is not RFC 3339: {e}"))
        .timestamp()
}
