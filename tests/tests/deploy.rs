//! What ships for deployment, checked without a Docker engine or systemd: docker-compose.yml,
//! docker/Dockerfile and config/supervisor.service name files that exist, every config they name
//! passes `supervisor check`, and the kill timeouts fit the time each manager gives a stop
//! (apps stop one after the other, so their kill timeouts add up).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{bin, run_with_deadline, workspace_root};

/// Margin between the worst-case stop (every kill timeout in turn) and the manager's SIGKILL.
const MARGIN: Duration = Duration::from_secs(2);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `10s`, `1m30s`, `15` (seconds): systemd and compose durations, the forms used here.
fn duration(text: &str) -> Duration {
    let t = text.trim().trim_matches('"');
    if let Ok(secs) = t.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            unit.push(chars.next().unwrap());
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {text:?}"));
        num.clear();
        total += match unit.as_str() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(60 * n),
            "h" => Duration::from_secs(3600 * n),
            other => panic!("unit {other:?} in {text:?}"),
        };
    }
    assert!(num.is_empty(), "duration {text:?}");
    total
}

/// The services of a compose file that build `dockerfile`, with their `stop_grace_period`
/// (Docker's default 10 s when absent). A line reader for this file's plain layout: services at
/// two spaces of indentation, their keys deeper.
fn services_building(compose: &str, dockerfile: &str) -> Vec<(String, Duration)> {
    let mut out = Vec::new();
    let mut current: Option<(String, bool, Duration)> = None;
    let mut in_services = false;
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if indent == 0 {
            in_services = text == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            if let Some((name, builds, grace)) = current.take()
                && builds
            {
                out.push((name, grace));
            }
            let name = text.trim_end_matches(':').to_string();
            current = Some((name, false, Duration::from_secs(10)));
            continue;
        }
        if let Some((_, builds, grace)) = &mut current {
            if text.contains(&format!("dockerfile: {dockerfile}")) {
                *builds = true;
            }
            if let Some(v) = text.strip_prefix("stop_grace_period:") {
                *grace = duration(v);
            }
        }
    }
    if let Some((name, true, grace)) = current {
        out.push((name, grace));
    }
    out
}

/// `supervisor check --json -c <config>`: succeeds, and returns every app's kill timeout. A
/// listener port held by something else on this machine (the configs use fixed ports: 3000) is
/// not the config's fault: then the same file with port 0 is checked instead.
fn check(config: &Path) -> Vec<(String, Duration)> {
    let run = |path: &Path| {
        run_with_deadline(
            Command::new(bin("supervisor"))
                .args(["check", "--json", "-c"])
                .arg(path),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let mut out = run(config);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let _dir;
    // The image's control socket directory (/run/supervisor) exists in the image only; a test
    // user that may not create it checks the file with a socket of its own.
    let not_here = err.contains("control socket") && err.contains("is not writable");
    if !out.status.success() && (err.to_lowercase().contains("in use") || not_here) {
        eprintln!(
            "{}: a port or the socket's directory is taken here ({err}); checking it with port 0 \
             and a socket in a temp dir",
            config.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(config.file_name().unwrap());
        let text = read(config).replace(":3000\"", ":0\"").replace(
            "control_socket = \"/run/supervisor/",
            &format!("control_socket = \"{}/", dir.path().display()),
        );
        std::fs::write(&copy, text).unwrap();
        out = run(&copy);
        _dir = dir;
    }
    assert!(
        out.status.success(),
        "supervisor check {}: {}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                Duration::from_millis(a["kill_timeout_ms"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The files under `config/` that `text` names by their installed path `prefix/<file>`.
fn configs_named(text: &str, prefix: &str, root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = text
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
        .filter_map(|w| w.strip_prefix(prefix))
        .filter(|f| f.ends_with(".toml"))
        .map(|f| root.join("config").join(f))
        .collect();
    files.sort();
    files.dedup();
    files
}

#[test]
fn docker_image_configs_check_and_fit_the_stop_grace_period() {
    let root = workspace_root();
    let compose = read(&root.join("docker-compose.yml"));
    let hosts = services_building(&compose, "docker/Dockerfile");
    assert!(hosts.len() >= 2, "two supervisor hosts: {hosts:?}");
    let dockerfile = read(&root.join("docker/Dockerfile"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == "COPY config /etc/supervisor"),
        "the image installs config/ as /etc/supervisor"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
    assert!(dockerfile.lines().any(|l| l.trim() == "STOPSIGNAL SIGTERM"));
    let configs = configs_named(&dockerfile, "/etc/supervisor/", &root);
    assert!(!configs.is_empty(), "the ENTRYPOINT names a config");
    for config in configs {
        assert!(config.is_file(), "{} is missing", config.display());
        let text = read(&config);
        // Not in /tmp (another user could create it first and answer root's `stop`), but in a
        // directory the image creates for its non-root user alone.
        let socket = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("control_socket = "))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("{}: no control_socket", config.display()));
        assert!(
            !socket.starts_with("/tmp/"),
            "{}: {socket} is in /tmp",
            config.display()
        );
        let dir = Path::new(&socket).parent().unwrap().display().to_string();
        assert!(
            dockerfile.contains(&format!(
                "install -d -o {user} -g {user} -m 0700 {dir}",
                user = user.trim()
            )),
            "the image creates {dir} for {user} alone"
        );
        let apps = check(&config);
        let worst: Duration = apps.iter().map(|(_, k)| *k).sum();
        for (host, grace) in &hosts {
            assert!(
                worst + MARGIN <= *grace,
                "{}: kill timeouts {apps:?} add up to {} ms, not {} ms below {host}'s stop_grace_period of {} ms",
                config.display(),
                worst.as_millis(),
                MARGIN.as_millis(),
                grace.as_millis()
            );
        }
    }
}

#[test]
fn systemd_unit_is_type_notify_and_outwaits_the_default_config() {
    let root = workspace_root();
    let unit = read(&root.join("config/supervisor.service"));
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in supervisor.service"))
            .trim()
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("NotifyAccess"), "main");
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("Restart"), "on-failure");
    let start = value("ExecStart");
    let reload = value("ExecReload");
    assert!(
        start.starts_with('/') && start.contains(" start -c /"),
        "{start}"
    );
    assert!(
        reload.starts_with('/') && reload.contains(" reload -c /"),
        "{reload}"
    );
    let configs = configs_named(&start, "/etc/supervisor/", &root);
    assert_eq!(configs, configs_named(&reload, "/etc/supervisor/", &root));
    assert_eq!(configs, vec![root.join("config/supervisor.toml")]);
    let stop = duration(&value("TimeoutStopSec"));
    for config in configs {
        let apps = check(&config);
        let worst: Duration = apps.iter().map(|(_, k)| *k).sum();
        assert!(
            worst + MARGIN <= stop,
            "{}: kill timeouts {apps:?} add up to {} ms, TimeoutStopSec is {} ms",
            config.display(),
            worst.as_millis(),
            stop.as_millis()
        );
    }
}

#[test]
fn durations_and_compose_services_are_read_right() {
    assert_eq!(duration("15s"), Duration::from_secs(15));
    assert_eq!(duration("1m30s"), Duration::from_secs(90));
    assert_eq!(duration("30"), Duration::from_secs(30));
    let compose = "services:\n  redis:\n    image: redis:7\n  a:\n    build: { context: ., dockerfile: docker/Dockerfile }\n    stop_grace_period: 20s\n  b:\n    build: { context: ., dockerfile: docker/Dockerfile }\n";
    assert_eq!(
        services_building(compose, "docker/Dockerfile"),
        vec![
            ("a".to_string(), Duration::from_secs(20)),
            ("b".to_string(), Duration::from_secs(10))
        ]
    );
}

/// Whether `.dockerignore`'s `patterns` leave `path` (relative, `/`-separated) out of the build
/// context: Docker's rules for the forms used (`name`, `dir/name`, `**/name`, `*` within a
/// component, `!` to bring back), the last matching pattern deciding.
fn left_out(patterns: &[&str], path: &str) -> bool {
    fn glob(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (0..=s.len() - head.len()).any(|i| glob(tail, &s[head.len() + i..]))
            }
        }
    }
    // `pattern` (components) matches `path` or one of its parent directories.
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match pattern.split_first() {
            None => true,
            Some((&"**", rest)) => (0..=path.len()).any(|i| matches(rest, &path[i..])),
            Some((p, rest)) => path
                .split_first()
                .is_some_and(|(c, more)| glob(p, c) && matches(rest, more)),
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = false;
    for p in patterns {
        let (negated, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, *p),
        };
        let pattern: Vec<&str> = p.trim_end_matches('/').split('/').collect();
        if matches(&pattern, &parts) {
            out = !negated;
        }
    }
    out
}

#[test]
fn the_docker_build_context_leaves_out_what_the_image_does_not_need() {
    let root = workspace_root();
    let ignore = read(&root.join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for heavy in [
        "target",
        "target/release/supervisor",
        ".git",
        "examples/node-express/node_modules",
        "examples/python/.venv",
        "config/supervisor.cron",
        "config/supervisor.cron/heartbeat.lock",
        "bench/out",
        "config/supervisor.sock",
    ] {
        assert!(
            left_out(&patterns, heavy),
            "{heavy} is sent to docker build"
        );
    }
    // What the image's build reads: the manifests, the lock file, every member's sources and
    // the files they include, and config/ (installed as /etc/supervisor).
    let manifest = read(&root.join("Cargo.toml"));
    let members: Vec<&str> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("workspace members")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .collect();
    assert!(members.contains(&"crates/supervisor"), "{members:?}");
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "config/cluster.toml".to_string(),
        "crates/supervisor/build.rs".to_string(),
        "crates/supervisor/src/runtimes/node-preload.cjs".to_string(),
        "crates/supervisor/src/upgrade/fixtures/handover-v1.json".to_string(),
    ];
    for m in &members {
        needed.push(format!("{m}/Cargo.toml"));
        needed.push(format!("{m}/src/lib.rs"));
    }
    for path in &needed {
        assert!(
            root.join(path).exists() || path.ends_with("/lib.rs"),
            "{path}"
        );
        assert!(
            !left_out(&patterns, path),
            "{path} is left out of docker build"
        );
    }
    // The matcher itself.
    assert!(left_out(&["**/x"], "a/b/x/c") && !left_out(&["**/x"], "a/xy"));
    assert!(left_out(&["t*"], "target") && !left_out(&["t*", "!target"], "target/a"));
}
