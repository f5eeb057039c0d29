//! The supervisor in the background, as a PM2 user runs it: `start -d` returns once every app
//! is ready (or exits 1 with the reason, nothing left running), the client commands find it
//! from any directory with no flag, `ls` lists every supervisor of the user and `-n NAME`
//! picks one, and `startup` writes a systemd unit `systemd-analyze verify` accepts. Each test
//! runs as a "user" of its own: a private `XDG_RUNTIME_DIR`, so that the supervisors of the
//! other tests are not listed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{bin, get, run_with_deadline, wait_for};

/// A user of its own: a runtime directory, the configs it starts, and the supervisors to stop
/// (killed, with their workers, if the test fails half way).
struct User {
    dir: tempfile::TempDir,
    run: PathBuf,
    names: Vec<String>,
}

impl User {
    fn new() -> User {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        User {
            dir,
            run,
            names: Vec::new(),
        }
    }

    /// Writes `NAME.toml`: the supervisor named `e2e-PID-NAME`, its cron state beside the file,
    /// and `body` (`{demo}` is the demo-app); returns the file.
    fn config(&mut self, name: &str, body: &str) -> PathBuf {
        let unique = format!("e2e-{}-{name}", std::process::id());
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[supervisor]\nname = \"{unique}\"\n[cron]\nstate_dir = \"{name}.cron\"\n{}",
            body.replace("{demo}", &bin("demo-app").display().to_string())
        );
        std::fs::write(&path, text).unwrap();
        self.names.push(unique);
        path
    }

    /// `supervisor ARGS` run in `cwd` as this user; whether it exited 0, and what it printed.
    fn cli(&self, cwd: &Path, args: &[&str]) -> (bool, String) {
        let out = run_with_deadline(
            Command::new(bin("supervisor"))
                .args(args)
                .current_dir(cwd)
                .env("XDG_RUNTIME_DIR", &self.run)
                .env_remove("SUPERVISOR_CONFIG")
                .env("RUST_LOG", "info"),
            Duration::from_secs(60),
        )
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `ls --json`.
    fn ls(&self) -> Vec<serde_json::Value> {
        let (ok, text) = self.cli(Path::new("/"), &["ls", "--json"]);
        assert!(ok, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        for v in self.ls() {
            if let Some(pid) = v["pid"].as_i64() {
                // SAFETY: killing a supervisor this test started (cleanup after a failure); its
                // workers die with it (parent-death signal).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        for name in &self.names {
            // Root's log directory is under /var/log: leave nothing behind.
            let _ = std::fs::remove_dir_all(Path::new("/var/log/supervisor").join(name));
            if let Some(home) = std::env::var_os("HOME") {
                let _ = std::fs::remove_dir_all(
                    Path::new(&home).join(".local/state/supervisor").join(name),
                );
            }
        }
    }
}

/// The supervisor's own log of the supervisor named `name` started by `start -d`, for this user.
fn own_log(name: &str) -> PathBuf {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if root {
        PathBuf::from("/var/log/supervisor").join(name)
    } else {
        PathBuf::from(std::env::var("HOME").unwrap())
            .join(".local/state/supervisor")
            .join(name)
            .join("logs")
    }
    .join("supervisor.log")
}

const WEB: &str = "[[app]]\nname = \"web\"\ncommand = \"{demo}\"\ninstances = 2\nenv = { DEMO_JOBS = \"off\" }\n[[app.listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n";

#[test]
fn start_d_returns_once_ready_and_clients_find_it_from_any_directory() {
    let mut user = User::new();
    let shop = user.config("shop", WEB);
    let started = Instant::now();
    let (ok, text) = user.cli(user.dir.path(), &["start", "-d", "-c", "shop.toml"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("started in the background") && text.contains("every app ready in"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // Returned after ready: from `/`, with no flag, every worker is ready already.
    let (ok, status) = user.cli(Path::new("/"), &["status", "--json"]);
    assert!(ok, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let workers = v["apps"][0]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{v}");
    assert!(workers.iter().all(|w| w["state"] == "ready"), "{v}");
    assert_eq!(v["config"], shop.display().to_string());
    let addr: std::net::SocketAddr = v["apps"][0]["listeners"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(get(addr, "/").unwrap().0, 200);
    let (ok, text) = user.cli(Path::new("/"), &["status"]);
    assert!(
        ok && text.contains("app web  generation 1  running"),
        "{text}"
    );
    // Its own log file, not the terminal.
    let log = v["name"].as_str().map(own_log);
    let log = std::fs::read_to_string(log.unwrap()).unwrap();
    assert!(log.contains("supervisor started"), "{log}");

    // A second supervisor, of another config: `ls` lists both; a client must pick one.
    user.config("blog", WEB);
    let (ok, text) = user.cli(user.dir.path(), &["start", "-d", "-c", "blog.toml"]);
    assert!(ok, "{text}");
    let listed = user.ls();
    let configs: Vec<&str> = listed
        .iter()
        .map(|v| v["config"].as_str().unwrap())
        .collect();
    assert_eq!(configs.len(), 2, "{listed:?}");
    assert!(
        configs.iter().any(|c| c.ends_with("shop.toml"))
            && configs.iter().any(|c| c.ends_with("blog.toml"))
    );
    assert!(
        listed.iter().all(|v| v["apps"][0]["ready"] == 2),
        "{listed:?}"
    );
    let (ok, table) = user.cli(Path::new("/"), &["ls"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("web 2/2") && table.contains("running"),
        "{table}"
    );
    let (ok, text) = user.cli(Path::new("/"), &["status"]);
    assert!(
        !ok && text.contains("2 supervisors are running") && text.contains("-n NAME"),
        "{text}"
    );
    let blog = format!("e2e-{}-blog", std::process::id());
    let (ok, text) = user.cli(Path::new("/"), &["status", "-n", &blog, "--json"]);
    assert!(ok, "{text}");
    assert!(text.contains("blog.toml"), "{text}");

    // Stopped by name from anywhere: its entry goes with it.
    let (ok, text) = user.cli(Path::new("/"), &["stop", "-n", &blog]);
    assert!(ok, "{text}");
    assert_eq!(user.ls().len(), 1);
    let (ok, text) = user.cli(Path::new("/"), &["stop"]);
    assert!(ok, "{text}");
    assert!(user.ls().is_empty());
    assert!(get(addr, "/").is_err(), "nothing serves any more");
}

#[test]
fn start_d_with_a_broken_config_or_a_taken_port_says_why_and_leaves_nothing() {
    let mut user = User::new();
    user.config(
        "bad",
        "[[app]]\nname = \"web\"\ncommand = \"{demo}\"\ninstances = \"many\"\n",
    );
    let (ok, text) = user.cli(user.dir.path(), &["start", "-d", "-c", "bad.toml"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("bad.toml:") && text.contains("app[0].instances"),
        "file, line and key: {text}"
    );
    // A port in use: the supervisor's own error, and nothing runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    user.config("port", &WEB.replace("127.0.0.1:0", &port.to_string()));
    let (ok, text) = user.cli(user.dir.path(), &["start", "-d", "-c", "port.toml"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("the supervisor did not start")
            && text.contains(&format!("cannot listen on {port}"))
            && text.to_lowercase().contains("in use"),
        "{text}"
    );
    // A worker that never gets ready: stopped after the timeout, with what was not ready.
    user.config(
        "crash",
        "[[app]]\nname = \"web\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo boom >&2; exit 3\"]\n",
    );
    let (ok, text) = user.cli(
        user.dir.path(),
        &["start", "-d", "-c", "crash.toml", "--timeout", "2s"],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("not every app was ready within 2s")
            && text.contains("exit code 3")
            && text.contains("the supervisor was stopped"),
        "{text}"
    );
    wait_for(Duration::from_secs(10), "nothing listed", || {
        user.ls().is_empty().then_some(())
    })
    .unwrap();
    let left = std::fs::read_dir(user.run.join("supervisor"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no socket, entry or runtime directory left");
}

#[test]
fn start_d_rotates_its_own_log_keeping_exactly_retain_copies_and_reopens_it() {
    let mut user = User::new();
    let path = user.config("rot", WEB);
    // Keys of `[supervisor]`, the first table of the file.
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "[cron]",
        "log_max_size = \"1KB\"\nlog_retain = 2\n[cron]",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let (ok, text) = user.cli(user.dir.path(), &["start", "-d", "-c", "rot.toml"]);
    assert!(ok, "{text}");
    let log = own_log(&format!("e2e-{}-rot", std::process::id()));
    let dir = log.parent().unwrap().to_path_buf();
    let copies = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("supervisor.log."))
            .collect();
        v.sort();
        v
    };
    // Each `reopen-logs` logs a line (~70 bytes): 40 of them rotate the file several times.
    for _ in 0..40 {
        let (ok, text) = user.cli(Path::new("/"), &["reopen-logs"]);
        assert!(ok, "{text}");
    }
    let rotated = copies();
    assert_eq!(rotated.len(), 2, "exactly log_retain copies: {rotated:?}");
    for n in rotated.iter().map(String::as_str).chain(["supervisor.log"]) {
        let text = std::fs::read_to_string(dir.join(n)).unwrap();
        assert!(text.len() < 1000 + 200, "{n}: {} bytes", text.len());
        // Every line whole, with its own timestamp (2026-12-06T20:18:14.123456Z).
        for l in text.lines() {
            let stamp = l.split_whitespace().next().unwrap_or_default();
            assert!(
                stamp.len() >= 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z'),
                "{n}: {l:?}"
            );
        }
    }
    let newest = std::fs::read_to_string(dir.join(&rotated[1])).unwrap();
    assert!(newest.contains("log files reopened"), "{newest}");

    // An external logrotate moves it away: `reopen-logs` starts a new file, the moved one
    // gets nothing more.
    let moved = dir.join("moved.log");
    std::fs::rename(&log, &moved).unwrap();
    let before = std::fs::read_to_string(&moved).unwrap();
    let (ok, text) = user.cli(Path::new("/"), &["reopen-logs"]);
    assert!(ok, "{text}");
    wait_for(Duration::from_secs(5), "a new supervisor.log", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("log files reopened"))
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), before);
    let (ok, text) = user.cli(Path::new("/"), &["stop"]);
    assert!(ok, "{text}");
}

#[test]
fn startup_prints_a_unit_systemd_accepts() {
    let mut user = User::new();
    let file = user.config(
        "shop",
        &WEB.replace("instances = 2", "instances = 2\nkill_timeout = \"20s\""),
    );
    let (ok, unit) = user.cli(user.dir.path(), &["startup", "-c", "shop.toml"]);
    assert!(ok, "{unit}");
    let supervisor = bin("supervisor").display().to_string();
    let config = std::fs::canonicalize(&file).unwrap().display().to_string();
    for line in [
        "Type=notify".to_string(),
        "NotifyAccess=main".to_string(),
        format!("ExecStart={supervisor} start -c {config}"),
        format!("ExecReload={supervisor} reload -c {config}"),
        "KillMode=mixed".to_string(),
        // 20 s of kill_timeout, the app's only one, plus 10 s.
        "TimeoutStopSec=30".to_string(),
        "WantedBy=multi-user.target".to_string(),
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}:\n{unit}");
    }
    let path = user
        .dir
        .path()
        .join(format!("supervisor-{}.service", user.names[0]));
    // Only the unit on stdout (what to do with it goes to stderr).
    let out = Command::new(bin("supervisor"))
        .args(["startup", "-c"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", &user.run)
        .output()
        .unwrap();
    std::fs::write(&path, &out.stdout).unwrap();
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(v) => assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&v.stderr)
        ),
        Err(e) => {
            eprintln!("systemd-analyze not available ({e}): the unit's content is checked above")
        }
    }
}
