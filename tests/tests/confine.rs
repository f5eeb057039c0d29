//! Confined workers: a root supervisor binds a privileged port and runs its workers as `nobody`
//! (the standard-library Python example, which reports readiness on `NOTIFY_SOCKET`, so the
//! socket in the runtime directory is usable by the worker's user), with `[app.rlimits]`; they
//! serve through the inherited socket and reload under load with no failed request; so does the
//! seeds' Node app as nobody through the preload. A supervisor that is not root is refused
//! another user when the file is checked; `[app.cgroup]` is applied where cgroup v2 allows, and
//! said unavailable, with the reason, where it does not.
//!
//! Needs root (skipped, saying so, otherwise) and a `nobody` user.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::{ConnMode, Supervisor, get, reloads_under_load, run_with_deadline};

/// A copy of `examples/python`'s modules that `nobody` may read, wherever the checkout is (one
/// under a private home directory is not).
fn examples() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            let to = dir.path().join(path.file_name().unwrap());
            std::fs::copy(&path, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    dir
}

/// Why this test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (a supervisor that changes its workers' user)".into());
    }
    if !Path::new("/usr/bin/python3").exists() {
        return Some("needs /usr/bin/python3 (one that `nobody` may run)".into());
    }
    let nobody = Command::new("id").args(["-u", "nobody"]).output().ok()?;
    if !nobody.status.success() {
        return Some("needs a user named nobody".into());
    }
    // The example must be readable by nobody.
    let examples = examples();
    let probe = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=65534", "--clear-groups"])
        .args([
            "/usr/bin/python3",
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import pages",
        ])
        .arg(examples.path())
        .output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "nobody cannot read {}: {}",
            examples.path().display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("needs setpriv: {e}")),
    }
}

/// A free privileged port on 127.0.0.1.
fn privileged_port() -> u16 {
    (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("no free port in 600..1000")
}

/// A line of `/proc/PID/status` (`Uid`, `Gid`): its four ids.
fn ids(pid: i32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// nobody's uid.
fn nobody_uid() -> String {
    let out = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// nobody's home directory in the password database.
fn nobody_home() -> String {
    let out = Command::new("getent")
        .args(["passwd", "nobody"])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    line.trim().split(':').nth(5).unwrap().to_string()
}

/// Every worker of `s` runs as nobody with its `nofile` limit and its user's environment.
fn assert_confined(s: &Supervisor, nobody: &str) {
    for w in s.ready_workers().unwrap() {
        let want = [nobody; 4].join(" ");
        assert_eq!(ids(w.pid, "Uid"), want, "worker {}", w.pid);
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", w.pid)).unwrap();
        let files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(
            files.split_whitespace().collect::<Vec<_>>()[3..5],
            ["4096", "8192"],
            "{files}"
        );
        let environ = std::fs::read(format!("/proc/{}/environ", w.pid)).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        let vars: Vec<&str> = environ.split('\0').collect();
        assert!(vars.contains(&"USER=nobody"), "{vars:?}");
        assert!(vars.contains(&"LOGNAME=nobody"), "{vars:?}");
        assert!(
            vars.contains(&format!("HOME={}", nobody_home()).as_str()),
            "{vars:?}"
        );
    }
}

#[test]
fn a_worker_of_a_root_supervisor_runs_as_nobody_on_a_privileged_port_and_reloads_under_load() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let nobody = nobody_uid();
    let examples = examples();
    // A runtime directory nobody may traverse (the harness's own is private to root): the
    // supervisor opens its own part of it to the workers' user.
    let run = tempfile::tempdir().unwrap();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let port = privileged_port();
    let body = format!(
        r#"[[app]]
name = "web"
command = "/usr/bin/python3"
args = ["stdlib_worker.py"]
cwd = "{examples}"
env = {{ PYTHONUNBUFFERED = "1", PYTHONDONTWRITEBYTECODE = "1" }}
instances = 2
user = "nobody"
ready_timeout = "10s"
kill_timeout = "10s"

[[app.listen]]
name = "http"
address = "127.0.0.1:{port}"

[app.rlimits]
nofile = [4096, 8192]
core = 0

[[job]]
name = "whoami"
schedule = "* * * * * *"
app = "web"
command = ["/bin/sh", "-c", "echo job-uid=$(id -u) job-home=$HOME"]
"#,
        examples = examples.path().display()
    );
    let s = Supervisor::spawn_with_env(&body, &[("XDG_RUNTIME_DIR", run.path().to_str().unwrap())])
        .unwrap();
    s.wait_ready(2, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_confined(&s, &nobody);
    let addr = s.addr().unwrap();
    assert_eq!(addr.port(), port);
    let (code, body) = get(addr, "/").unwrap();
    assert_eq!(code, 200, "{body}");
    // A job of the app runs as the app does.
    e2e::wait_for(Duration::from_secs(10), "a run of the job", || {
        s.log_text().contains("job-uid=").then_some(())
    })
    .unwrap();
    let log = s.log_text();
    assert!(
        log.contains(&format!("job-uid={nobody} job-home={}", nobody_home())),
        "{log}"
    );

    let report = reloads_under_load(&s, "/", ConnMode::KeepAlive, 4, 3)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    eprintln!(
        "port {port}: 3 reloads under load, {} ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 100, "{report:?}");
    assert_confined(&s, &nobody);

    // An in-place upgrade keeps the confined workers, and the new image starts confined ones.
    let before: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    let binary = e2e::bin("supervisor");
    let (ok, text) = s
        .cli_text(&["upgrade", "--binary", &binary.display().to_string()])
        .unwrap();
    assert!(
        ok && text.contains("upgraded in place"),
        "{text}\n{}",
        s.log_text()
    );
    let after: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    assert_eq!(before, after, "no worker restarted by the upgrade");
    let report = reloads_under_load(&s, "/", ConnMode::PerRequest, 4, 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_confined(&s, &nobody);
    // The runtime directory: traversable, the secret still private.
    let rt = std::fs::read_dir(run.path().join("supervisor"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("supervisor-"))
        .unwrap()
        .path();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&rt), 0o711);
    assert_eq!(mode(&rt.join("job-secret")), 0o600);
}

/// A Node app, unchanged, as nobody: the preload (in the runtime directory) is loaded, takes
/// the privileged port's inherited socket for the app's own `listen()` (nobody could not bind
/// it), and reports readiness on `READY_FD`.
#[test]
fn a_node_app_as_nobody_serves_on_a_privileged_port_through_the_preload() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // A copy of the Node example (with its node_modules) that nobody may read, wherever the
    // checkout is.
    let copy = tempfile::tempdir().unwrap();
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(e2e::node_example())
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(copied.success(), "cp -r {}", e2e::node_example().display());
    let dir = copy.path().join("node-express");
    let readable = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(readable.success());
    let run = tempfile::tempdir().unwrap();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let port = privileged_port();
    let body = format!(
        "[[app]]\nname = \"web\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 2\n\
         user = \"nobody\"\nready_timeout = \"10s\"\nkill_timeout = \"5s\"\n\
         [[app.listen]]\nname = \"http\"\naddress = \"127.0.0.1:{port}\"\n",
        dir.join("commonjs.cjs").display()
    );
    let s = Supervisor::spawn_with_env(&body, &[("XDG_RUNTIME_DIR", run.path().to_str().unwrap())])
        .unwrap();
    s.wait_ready(2, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let uid = nobody_uid();
    let nobody = [uid.as_str(); 4].join(" ");
    for w in s.ready_workers().unwrap() {
        assert_eq!(ids(w.pid, "Uid"), nobody, "worker {}", w.pid);
    }
    let report = reloads_under_load(&s, "/", ConnMode::PerRequest, 4, 2)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    for w in s.ready_workers().unwrap() {
        assert_eq!(ids(w.pid, "Uid"), nobody, "worker {}", w.pid);
    }
}

#[test]
fn a_supervisor_that_is_not_root_is_refused_another_user_at_check() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("s.toml");
    std::fs::write(
        &config,
        "[supervisor]\ncontrol_socket = \"control.sock\"\n\n[[app]]\nname = \"web\"\n\
         command = \"/bin/sleep\"\nargs = [\"60\"]\nreadiness = \"exec\"\nuser = \"root\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_with_deadline(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=65534", "--clear-groups"])
            .arg(e2e::bin("supervisor"))
            .args(["check", "-c"])
            .arg(&config)
            .env("HOME", dir.path()),
        Duration::from_secs(20),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "s.toml:9:8: app[0].user: root (uid 0) is not the user this supervisor runs as, nobody"
        ) && err.contains("only a supervisor started as root"),
        "{err}"
    );

    // As root, an unknown user is named with its line.
    std::fs::write(
        &config,
        "[[app]]\nname = \"web\"\ncommand = \"/bin/sleep\"\nuser = \"no-such-user-here\"\n",
    )
    .unwrap();
    let out = run_with_deadline(
        Command::new(e2e::bin("supervisor"))
            .args(["check", "-c"])
            .arg(&config),
        Duration::from_secs(20),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("s.toml:4:8: app[0].user: no user is named \"no-such-user-here\""),
        "{err}"
    );
}

/// `[app.cgroup]`: where this host lets the supervisor create cgroup v2 groups, the worker runs
/// in its app's cgroup with its limits, and the cgroup is killed and removed at stop; where it
/// does not (cgroup v1, no delegation, a controller held by v1), `check` and `start` say why and
/// the app runs without.
#[test]
fn an_app_cgroup_is_applied_where_cgroup_v2_allows_and_said_unavailable_where_not() {
    let body = "[[app]]\nname = \"web\"\ncommand = \"{demo}\"\ninstances = 1\n\
                kill_timeout = \"3s\"\n\n[app.cgroup]\npids_max = 100\nmemory_max = \"256MiB\"\n";
    let mut s = Supervisor::spawn(body).unwrap();
    s.wait_ready(1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let (ok, check) = s.cli_text(&["check"]).unwrap();
    assert!(ok, "{check}");
    assert!(
        check.contains("cgroup:         memory.max=268435456, pids.max=100"),
        "{check}"
    );
    let pid = s.ready_workers().unwrap()[0].pid;
    if let Some(line) = check
        .lines()
        .find(|l| l.contains("[app.cgroup] is not applied on this host"))
    {
        eprintln!("cgroup v2 unavailable here, as check says: {}", line.trim());
        assert!(
            s.log_text().contains("[app.cgroup] is not applied"),
            "start says so too: {}",
            s.log_text()
        );
        let (code, _) = get(s.addr().unwrap(), "/").unwrap();
        assert_eq!(code, 200, "the app runs without");
        return;
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    assert!(
        path.ends_with(&format!("app-web-{}", s.pid())),
        "the worker is in its app's cgroup: {path}"
    );
    let dir = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|m| Path::new(m).join(&path))
        .find(|d| d.join("cgroup.procs").exists())
        .unwrap();
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("pids.max"), "100");
    assert_eq!(read("memory.max"), "268435456");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(20)).unwrap(), Some(0));
    assert!(!dir.exists(), "removed at stop: {}", dir.display());
}
