//! A private `redis-server` per test, on a free port: start (a clear error if the binary is
//! missing), kill, restart empty on the same port, SIGSTOP / SIGCONT. Every wait has a deadline;
//! the server is killed on drop. Shared by the end-to-end tests and cronlock's tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `redis-server` child process on its own port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// TLS port, when started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts `redis-server ARGS` and waits (at most 10 s) until `answers()` says it serves on
/// `port`; one that exits at once (its port still held after a kill) is started again until then.
pub(crate) fn spawn_server(
    args: &[String],
    port: u16,
    answers: impl Fn() -> bool,
) -> anyhow::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("redis-server not found on PATH: install it (apt-get install redis-server)")
            }
            Err(e) => return Err(e).context("spawning redis-server"),
        };
        loop {
            if answers() {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                if Instant::now() > deadline {
                    bail!("redis-server on port {port} exited: {status}");
                }
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("redis-server on port {port} did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// Starts a server on a free port and waits (at most 10 s) until it answers PING.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut s = Self {
            port: free_port()?,
            tls_port: None,
            child: None,
            dir,
        };
        s.spawn()?;
        Ok(s)
    }

    /// Starts a server that also listens with TLS: a throwaway CA and a certificate for
    /// `localhost` and 127.0.0.1 signed by it, made with the `openssl` command (trust the CA in
    /// [`RedisServer::ca_file`]).
    pub fn start_tls() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        make_tls_files(dir.path())?;
        let mut s = Self {
            port: free_port()?,
            tls_port: Some(free_port()?),
            child: None,
            dir,
        };
        s.spawn()?;
        Ok(s)
    }

    /// `rediss://localhost:TLS_PORT/0` (for a server started with [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}/0"))
    }

    /// The CA certificate to trust (e.g. through `SSL_CERT_FILE`).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(self.dir.path().display().to_string());
        args.extend(self.tls_args());
        let port = self.port;
        self.child = Some(spawn_server(&args, port, || ping(port))?);
        Ok(())
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(port) = self.tls_port else {
            return vec![];
        };
        let d = self.dir.path();
        let (cert, key, ca) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
        let mut args = vec!["--tls-port".to_string(), port.to_string()];
        for (flag, path) in [
            ("--tls-cert-file", &cert),
            ("--tls-key-file", &key),
            ("--tls-ca-cert-file", &ca),
        ] {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
        args.extend(["--tls-auth-clients".to_string(), "no".to_string()]);
        args
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh (empty) server on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP the server.
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.pid().context("not running")?, "STOP")
    }

    /// SIGCONT the server.
    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.pid().context("not running")?, "CONT")
    }

    /// A blocking connection for assertions.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        Ok(redis::Client::open(self.url())?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = signal(pid, "CONT");
        }
        self.kill();
    }
}

/// Makes a throwaway CA (`ca.pem`) and a certificate for `localhost` and 127.0.0.1 signed by it
/// (`cert.pem`, `key.pem`) in `d`, with the `openssl` command.
pub fn make_tls_files(d: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "cert.pem",
            "-extfile",
            "san.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("openssl not found on PATH: install it (apt-get install openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) to a process with kill(1).
pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed: {st}");
    }
    Ok(())
}
