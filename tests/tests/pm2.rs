//! Apps written to PM2's docs, unchanged, under the supervisor: `process.send('ready')` called
//! unguarded in the listen callback (no IPC channel here: it must not throw), `wait_ready` with a
//! warm-up after `listen()` (no request reaches a worker before it says ready, through reloads
//! under load), `kill_signal = "SIGINT"` with the app's own SIGINT cleanup and
//! `shutdown_with_message` (the cleanup runs in every replaced worker), `NODE_APP_INSTANCE`; and
//! started the way PM2 users start it: `start index.js -i 2` (the seeds' app on port 3000, in a
//! network namespace of its own), `init`, `import` of the seeds' ecosystem file with
//! `--env production`, env files and profiles, `watch` and `cron_restart` (rolling reloads under
//! load, 0 failed), and `[[job]] http` requests the app can trust (a forged one gets 403).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{ConnMode, Supervisor, get, reloads_under_load, wait_for};

/// PM2's docs' app: `process.send('ready')` unguarded in the listen callback.
const SENDS_READY: &str = r#"
const http = require("http");
const server = http.createServer((req, res) => {
  res.end(`ok pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE}\n`);
});
server.listen(process.env.PORT, () => {
  process.send("ready");
  console.log("listening, told PM2 we are ready");
});
"#;

/// The seeds' NestJS pattern: listen, warm up 1.5 s (503 meanwhile), then `process.send('ready')`;
/// SIGINT cleanup and the 'shutdown' message write to `$CLEANUP_FILE`.
const WARMS_UP: &str = r#"
const fs = require("fs");
const http = require("http");
let warm = false;
const server = http.createServer((req, res) => {
  if (!warm) {
    res.statusCode = 503;
    res.end("warming up\n");
    return;
  }
  res.end(`ok pid=${process.pid}\n`);
});
server.listen(process.env.PORT, () => {
  setTimeout(() => {
    warm = true;
    process.send("ready");
  }, 1500);
});
process.on("message", (m) => {
  if (m === "shutdown") fs.appendFileSync(process.env.CLEANUP_FILE, `message ${process.pid}\n`);
});
process.on("SIGINT", () => {
  server.close(() => {
    fs.appendFileSync(process.env.CLEANUP_FILE, `sigint ${process.pid}\n`);
    process.exit(0);
  });
});
"#;

/// A user's own private runtime and state directories (`XDG_RUNTIME_DIR`, `XDG_STATE_HOME`):
/// the supervisors a test starts with the CLI register there, not beside other tests'.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        Home { dir }
    }

    fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `base` (the supervisor binary, maybe through `ip netns exec`) with `args`, in `cwd`.
    fn supervisor(&self, mut base: Command, cwd: &Path, args: &[&str]) -> Command {
        base.args(args)
            .current_dir(cwd)
            .env("XDG_RUNTIME_DIR", self.run())
            .env("XDG_STATE_HOME", self.dir.path().join("state"));
        base
    }
}

/// Stops a supervisor the test started in the foreground (`child`) with `stop` (a `supervisor
/// stop` command), and waits for it to exit, killing it if it does not within 15 s; the stop
/// command's output, and whether the supervisor exited by itself.
fn stop_foreground(
    mut stop: Command,
    child: &mut std::process::Child,
) -> (anyhow::Result<std::process::Output>, bool) {
    let out = e2e::run_with_deadline(&mut stop, Duration::from_secs(30));
    let exited = wait_for(Duration::from_secs(15), "the supervisor to exit", || {
        child.try_wait().ok().flatten()
    });
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (out, exited.is_ok())
}

fn app(dir: &Path, file: &str, source: &str, extra: &str) -> String {
    let script = dir.join(file);
    std::fs::write(&script, source).unwrap();
    format!(
        "[[app]]\nname = \"web\"\ncommand = \"node\"\nargs = [\"{}\"]\ninstances = 2\n\
         ready_timeout = \"10s\"\nkill_timeout = \"5s\"\n{extra}",
        script.display()
    )
}

#[test]
fn an_app_that_calls_process_send_ready_unguarded_runs_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let s = Supervisor::start(&app(dir.path(), "app.js", SENDS_READY, ""), 2).unwrap();
    let addr = s.addr().unwrap();
    let mut instances = BTreeSet::new();
    for _ in 0..20 {
        let (code, body) = get(addr, "/").unwrap();
        assert_eq!(code, 200, "{body}");
        instances.insert(body.split("instance=").nth(1).unwrap().trim().to_string());
    }
    assert!(
        instances.iter().all(|i| i == "0" || i == "1"),
        "NODE_APP_INSTANCE is the slot: {instances:?}"
    );
    let report = reloads_under_load(&s, "/", ConnMode::KeepAlive, 4, 3).unwrap();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let workers = e2e::workers(&s.status().unwrap());
    assert!(
        workers.iter().all(|w| w.restarts == 0),
        "no crash loop: {workers:?}\n{}",
        s.log_text()
    );
    let log = s.log_text();
    assert!(log.contains("told PM2 we are ready"), "{log}");
    assert!(!log.contains("process.send is not a function"), "{log}");
}

#[test]
fn wait_ready_holds_requests_until_ready_and_sigint_cleanup_runs_in_every_replaced_worker() {
    let dir = tempfile::tempdir().unwrap();
    let cleanup = dir.path().join("cleanup.log");
    let extra = format!(
        "wait_ready = true\nkill_signal = \"SIGINT\"\nshutdown_with_message = true\n\
         env = {{ CLEANUP_FILE = \"{}\" }}\n",
        cleanup.display()
    );
    let s = Supervisor::start(&app(dir.path(), "warm.js", WARMS_UP, &extra), 2).unwrap();
    let first: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    // Ready only after the warm-up: the first answer is already a 200.
    let (code, body) = get(s.addr().unwrap(), "/").unwrap();
    assert_eq!(code, 200, "{body}");
    let mut seen: BTreeSet<i32> = first.into_iter().collect();
    for mode in [ConnMode::KeepAlive, ConnMode::PerRequest] {
        let report = reloads_under_load(&s, "/", mode, 4, 5).unwrap();
        assert_eq!(
            report.failed, 0,
            "{mode:?}: failed or non-2xx (503 = a request before ready): {:?}",
            report.errors
        );
        assert!(report.ok > 50, "{mode:?}: {report:?}");
        seen.extend(report.by_pid.keys().map(|p| p.parse::<i32>().unwrap()));
    }
    let serving: BTreeSet<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    let replaced: Vec<i32> = seen.difference(&serving).copied().collect();
    assert!(replaced.len() >= 10, "10 reloads x 2 workers: {replaced:?}");
    let lines = wait_for(
        Duration::from_secs(15),
        "every replaced worker's cleanup",
        || {
            let text = std::fs::read_to_string(&cleanup).unwrap_or_default();
            replaced
                .iter()
                .all(|p| {
                    text.contains(&format!("sigint {p}\n"))
                        && text.contains(&format!("message {p}\n"))
                })
                .then_some(text)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            std::fs::read_to_string(&cleanup).unwrap_or_default(),
            s.log_text()
        )
    });
    eprintln!(
        "pm2 contract: {} replaced workers, each ran its SIGINT cleanup and got 'shutdown' ({} lines)",
        replaced.len(),
        lines.lines().count()
    );
}

/// Answers `GREETING FROM_FILE`.
const SHOWS_ENV: &str = r#"
const http = require("http");
http
  .createServer((req, res) => res.end(`${process.env.GREETING} ${process.env.FROM_FILE} pid=${process.pid}\n`))
  .listen(process.env.PORT);
"#;

#[test]
fn env_file_and_the_env_profile_chosen_at_start_are_read_again_by_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join("app.env");
    std::fs::write(
        &dotenv,
        "# the app's .env\nFROM_FILE=file-1\nGREETING=from-file\n",
    )
    .unwrap();
    let extra = format!(
        "env_file = \"{}\"\nenv = {{ GREETING = \"from-env\" }}\n\
         [app.env_profiles.production]\nGREETING = \"production\"\n",
        dotenv.display()
    );
    let body = app(dir.path(), "env.js", SHOWS_ENV, &extra);
    // `start --env production` sets SUPERVISOR_ENV for the supervisor (and what it re-reads).
    let s = Supervisor::spawn_with_env(&body, &[("SUPERVISOR_ENV", "production")]).unwrap();
    s.wait_ready(2, Duration::from_secs(20)).unwrap();
    let (code, answer) = get(s.addr().unwrap(), "/").unwrap();
    assert_eq!(code, 200);
    assert!(answer.starts_with("production file-1 "), "{answer}");
    // The file is read again by a reload; the profile stays chosen.
    std::fs::write(&dotenv, "FROM_FILE=file-2\n").unwrap();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    let (_, answer) = get(s.addr().unwrap(), "/").unwrap();
    assert!(answer.starts_with("production file-2 "), "{answer}");
    // A profile no app has is a typo, named; so is a bad line of the file.
    let (ok, text) = s.cli_text(&["check", "--env", "prodution"]).unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("--env") && text.contains("\"prodution\"") && text.contains("production"),
        "{text}"
    );
    std::fs::write(&dotenv, "FROM_FILE=x\nnot a line\n").unwrap();
    let (ok, text) = s.cli_text(&["check"]).unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("env_file") && text.contains("app.env:2: expected NAME=value"),
        "{text}"
    );
}

/// Listens on the port given as its first argument, on loopback.
const PORT_FROM_ARGS: &str = r#"
const http = require("http");
http
  .createServer((req, res) => res.end(`ok pid=${process.pid}\n`))
  .listen(Number(process.argv[2]), "127.0.0.1", () => process.send("ready"));
"#;

#[test]
fn start_script_dash_i_runs_it_clustered_on_the_port_its_listen_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("server.js");
    std::fs::write(&script, PORT_FROM_ARGS).unwrap();
    let home = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("e2e-{}-script", std::process::id());
    let supervisor =
        |args: &[&str]| home.supervisor(Command::new(e2e::bin("supervisor")), dir.path(), args);
    let log = std::fs::File::create(dir.path().join("supervisor.log")).unwrap();
    let mut child = supervisor(&[
        "start",
        "server.js",
        "-i",
        "2",
        "--name",
        &name,
        "--",
        &port.to_string(),
    ])
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = || std::fs::read_to_string(dir.path().join("supervisor.log")).unwrap_or_default();
    let pids = wait_for(Duration::from_secs(30), "both workers serving", || {
        let mut pids = BTreeSet::new();
        for _ in 0..40 {
            let (code, body) = get(addr, "/").ok()?;
            (code == 200).then_some(())?;
            pids.insert(body.split("pid=").nth(1)?.trim().to_string());
        }
        (pids.len() == 2).then_some(pids)
    });
    let (stop, exited) = stop_foreground(supervisor(&["stop", "-n", &name]), &mut child);
    // Root's state directory is under /var/lib: leave nothing behind.
    let _ = std::fs::remove_dir_all(std::path::Path::new("/var/lib/supervisor").join(&name));
    let pids = pids.unwrap_or_else(|e| panic!("{e}\n{}", text()));
    let stop = stop.unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let log = text();
    assert!(
        log.contains(&format!("listens on port {port}: config written to")),
        "{log}"
    );
    assert!(exited, "{log}");
    eprintln!("start server.js -i 2: workers {pids:?} on port {port}");
}

#[test]
fn init_writes_the_config_start_would_run_and_check_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.js"), PORT_FROM_ARGS).unwrap();
    let run = |args: &[&str]| {
        e2e::run_with_deadline(
            std::process::Command::new(e2e::bin("supervisor"))
                .args(args)
                .current_dir(dir.path()),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let out = run(&[
        "init",
        "server.js",
        "-i",
        "max",
        "--name",
        "shop",
        "--",
        "4567",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("supervisor.toml")).unwrap();
    assert!(text.contains("address = \"127.0.0.1:4567\""), "{text}");
    assert!(
        text.contains("name = \"shop\"") && text.contains("one worker per CPU"),
        "{text}"
    );
    let out = run(&["check", "-c", "supervisor.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listen:         listen0 127.0.0.1:4567")
    );
    // Never over a file that exists.
    let out = run(&["init", "server.js", "--", "4567"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("supervisor.toml exists"));
}

/// Records the job requests it gets (and whether the secret reached it) in `$JOBS_FILE`.
const TAKES_JOBS: &str = r#"
const fs = require("fs");
const http = require("http");
http
  .createServer((req, res) => {
    if (req.url === "/tasks/report") {
      const h = req.headers;
      fs.appendFileSync(
        process.env.JOBS_FILE,
        `job ${h["supervisor-job-name"]} token=${h["supervisor-job-token"]} secret-seen=${"supervisor-job-secret" in h}\n`,
      );
    }
    res.end("ok\n");
  })
  .listen(process.env.PORT);
"#;

/// Sends one request with `headers` and returns the status code.
fn status_with_headers(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

#[test]
fn job_requests_carry_the_secret_and_a_forged_one_gets_403_before_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.log");
    let extra = format!(
        "env = {{ JOBS_FILE = \"{}\" }}\n\n\
         [[job]]\nname = \"report\"\nschedule = \"* * * * * *\"\nhttp = \"POST /tasks/report\"\napp = \"web\"\n",
        jobs.display()
    );
    let s = Supervisor::start(&app(dir.path(), "jobs.js", TAKES_JOBS, &extra), 2).unwrap();
    let addr = s.addr().unwrap();
    // The supervisor's own requests reach the app, without the secret header.
    let line = wait_for(Duration::from_secs(15), "a job request", || {
        let text = std::fs::read_to_string(&jobs).unwrap_or_default();
        text.lines().next().map(str::to_owned)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert!(line.starts_with("job report token="), "{line}");
    assert!(line.ends_with("secret-seen=false"), "{line}");
    // Forged: job headers without the secret, or with a wrong one; never seen by the app.
    let wrong = "0".repeat(64);
    for headers in [
        vec![
            ("Supervisor-Job-Name", "report"),
            ("Supervisor-Job-Token", "forged-1"),
        ],
        vec![
            ("Supervisor-Job-Name", "report"),
            ("Supervisor-Job-Secret", wrong.as_str()),
        ],
        vec![("supervisor-job-token", "forged-2")],
    ] {
        assert_eq!(
            status_with_headers(addr, "/tasks/report", &headers),
            403,
            "{headers:?}"
        );
    }
    // A plain request is the app's.
    assert_eq!(status_with_headers(addr, "/tasks/report", &[]), 200);
    let text = std::fs::read_to_string(&jobs).unwrap();
    assert!(
        !text.contains("forged"),
        "a forged request reached the app: {text}"
    );
    assert!(
        s.log_text()
            .contains("claiming to be a supervisor job without its secret"),
        "{}",
        s.log_text()
    );
}

fn ready_pids(s: &Supervisor) -> BTreeSet<i32> {
    s.ready_workers()
        .unwrap_or_default()
        .iter()
        .map(|w| w.pid)
        .collect()
}

#[test]
fn a_touched_file_reloads_a_watched_app_with_no_failed_request_and_ignored_files_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "cwd = \"{}\"\nwatch = true\nignore_watch = [\"uploads\"]\nwatch_delay = \"300ms\"\n",
        dir.path().display()
    );
    let s = Supervisor::start(&app(dir.path(), "app.js", SENDS_READY, &extra), 2).unwrap();
    let first = ready_pids(&s);
    assert_eq!(first.len(), 2);
    let load = e2e::Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    // Ignored: what ignore_watch names, a log written beside the app, node_modules.
    std::fs::create_dir_all(dir.path().join("uploads")).unwrap();
    std::fs::write(dir.path().join("uploads/a.png"), "png").unwrap();
    std::fs::write(dir.path().join("debug.log"), "a line\n").unwrap();
    std::fs::create_dir_all(dir.path().join("node_modules/x")).unwrap();
    std::fs::write(dir.path().join("node_modules/x/index.js"), "").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ready_pids(&s), first, "an ignored file reloaded the app");
    // The app's own file: a rolling reload (both workers replaced, one at a time).
    let script = dir.path().join("app.js");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("// edited\n");
    std::fs::write(&script, text).unwrap();
    let replaced = wait_for(Duration::from_secs(20), "both workers replaced", || {
        let now = ready_pids(&s);
        (now.len() == 2 && now.is_disjoint(&first)).then_some(now)
    });
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    replaced.unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.ok > 20, "{report:?}");
    let log = s.log_text();
    assert!(
        log.contains("watch: app.js changed: rolling reload"),
        "{log}"
    );
    assert_eq!(
        log.matches("changed: rolling reload").count(),
        1,
        "one reload: {log}"
    );
}

#[test]
fn cron_restart_reloads_the_app_on_its_schedule_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let s = Supervisor::start(
        &app(
            dir.path(),
            "app.js",
            SENDS_READY,
            "cron_restart = \"*/2 * * * * *\"\n",
        ),
        2,
    )
    .unwrap();
    let load = e2e::Load::start(s.addr().unwrap(), "/", 2, &[ConnMode::KeepAlive]);
    let mut generations = vec![ready_pids(&s)];
    let seen = wait_for(Duration::from_secs(20), "3 reloads by the schedule", || {
        let now = ready_pids(&s);
        if now.len() == 2 && generations.iter().all(|g| g.is_disjoint(&now)) {
            generations.push(now);
        }
        (generations.len() >= 4).then(|| generations.clone())
    });
    let report = load.stop();
    let seen = seen.unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        s.log_text().contains("cron_restart \"*/2 * * * * *\""),
        "{}",
        s.log_text()
    );
    eprintln!("cron_restart: generations {seen:?}");
}

/// The seeds' ecosystem file (DigitalOcean's cluster tutorial), with the `env_production` a PM2
/// user adds for `--env production`.
const SEEDS_ECOSYSTEM: &str = r#"module.exports = {
  apps : [{
    script: 'index.js',
    watch: '.',
    name: "cluster_app",
    instances: 0,
    exec_mode: "cluster",
    env: { GREETING: "dev" },
    env_production: { NODE_ENV: "production", GREETING: "prod" },
  }, {
    script: './service-worker/',
    watch: ['./service-worker']
  }],

  deploy : {
    production : {
      user : 'SSH_USERNAME',
      host : 'SSH_HOSTMACHINE',
      ref  : 'origin/master',
      repo : 'GIT_REPOSITORY',
      path : 'DESTINATION_PATH',
      'pre-deploy-local': '',
      'post-deploy' : 'npm install && pm2 reload ecosystem.config.cjs --env production',
      'pre-setup': ''
    }
  }
};
"#;

#[test]
fn import_converts_the_seeds_ecosystem_file_and_it_serves_with_env_production() {
    let dir = tempfile::tempdir().unwrap();
    let example = e2e::node_example();
    for f in ["index.js", "package.json"] {
        std::fs::copy(example.join(f), dir.path().join(f)).unwrap();
    }
    std::os::unix::fs::symlink(
        example.join("node_modules"),
        dir.path().join("node_modules"),
    )
    .unwrap();
    std::fs::write(dir.path().join("ecosystem.config.cjs"), SEEDS_ECOSYSTEM).unwrap();
    // The supervisor's runtime and state directories outside the watched app directory.
    let home = Home::new();
    let run = home.run();
    let supervisor =
        |args: &[&str]| home.supervisor(Command::new(e2e::bin("supervisor")), dir.path(), args);
    let out = e2e::run_with_deadline(
        &mut supervisor(&["import", "ecosystem.config.cjs"]),
        Duration::from_secs(60),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("supervisor.toml")).unwrap();
    for want in [
        "name = \"cluster_app\"",
        "command = \"node\"",
        "args = [\"index.js\"]",
        "instances = 0",
        "kill_signal = \"SIGINT\"",
        "watch = [\".\"]",
        "[app.env_profiles.production]",
        "GREETING = \"prod\"",
        // The port the app's own listen(3000) asked for, found by running it once.
        "address = \"0.0.0.0:3000\"",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // What could not be carried over is said, with the reason, in the file and on stderr.
    for said in [&text, &stderr] {
        assert!(
            said.contains("deploy: deployment is not the supervisor's job"),
            "{said}"
        );
        assert!(said.contains("service-worker: script:"), "{said}");
    }
    // Port 3000 on a loopback address of its own: tests run side by side.
    let addr = e2e::free_loopback_with_port(3000);
    let text = text.replace("0.0.0.0:3000", &addr.to_string()).replace(
        "[supervisor]\n",
        "[supervisor]\ncontrol_socket = \"control.sock\"\n",
    );
    std::fs::write(dir.path().join("supervisor.toml"), &text).unwrap();
    let out = e2e::run_with_deadline(
        &mut supervisor(&["check", "-c", "supervisor.toml", "--env", "production"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(dir.path().join("start.log")).unwrap();
    let mut child = supervisor(&["start", "-c", "supervisor.toml", "--env", "production"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let served = wait_for(Duration::from_secs(30), "/heavy on port 3000", || {
        let (code, body) = get(addr, "/heavy").ok()?;
        (code == 200).then_some(body)
    });
    // The workers run with the production profile laid over env.
    let env_of_worker = || {
        let status = std::process::Command::new(e2e::bin("supervisor"))
            .args(["status", "--json", "-c"])
            .arg(dir.path().join("supervisor.toml"))
            .env("XDG_RUNTIME_DIR", &run)
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
        let pid = e2e::workers(&v).first()?.pid;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        Some(format!(
            "\n{}",
            String::from_utf8_lossy(&environ).replace('\0', "\n")
        ))
    };
    let environ = env_of_worker().unwrap_or_default();
    let (stop, _) = stop_foreground(supervisor(&["stop", "-c", "supervisor.toml"]), &mut child);
    let out = std::fs::read_to_string(dir.path().join("start.log")).unwrap_or_default();
    let body = served.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(body.contains("CPU intensive task is 5000000"), "{body}");
    assert!(
        environ.contains("\nGREETING=prod\n") && environ.contains("\nNODE_ENV=production\n"),
        "env_production: {environ}"
    );
    assert!(stop.unwrap().status.success(), "{out}");
}

#[test]
fn start_index_js_dash_i_2_runs_the_seeds_app_unchanged_on_port_3000() {
    // Port 3000 on every interface, as the app asks: in a network namespace of its own, where
    // nothing else holds it.
    let Some(lab) = e2e::netns::lab_or_skip("start index.js -i 2", 1) else {
        return;
    };
    let ns = lab.host_ns(0);
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new();
    let name = format!("e2e-{}-seeds", std::process::id());
    let example = e2e::node_example();
    let supervisor =
        |args: &[&str]| home.supervisor(lab.command(&ns, e2e::bin("supervisor")), &example, args);
    let log = std::fs::File::create(dir.path().join("supervisor.log")).unwrap();
    let mut child = supervisor(&["start", "index.js", "-i", "2", "--name", &name])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:3000".parse().unwrap();
    let served = wait_for(Duration::from_secs(30), "/heavy on port 3000", || {
        e2e::netns::in_netns(&ns, || get(addr, "/heavy").ok())
            .ok()
            .flatten()
            .filter(|(code, _)| *code == 200)
    });
    let (stop, _) = stop_foreground(supervisor(&["stop", "-n", &name]), &mut child);
    let _ = std::fs::remove_dir_all(std::path::Path::new("/var/lib/supervisor").join(&name));
    let text = std::fs::read_to_string(dir.path().join("supervisor.log")).unwrap_or_default();
    let (_, body) = served.unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(body, "The result of the CPU intensive task is 5000000\n");
    assert!(
        text.contains("listens on port 3000: config written to"),
        "{text}"
    );
    assert!(
        text.contains("App listening on port 3000"),
        "the app's own callback: {text}"
    );
    assert!(stop.unwrap().status.success(), "{text}");
}
