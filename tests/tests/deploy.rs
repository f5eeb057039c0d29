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
    if !out.status.success() && err.to_lowercase().contains("in use") {
        eprintln!(
            "{}: a port is taken here ({err}); checking it with port 0",
            config.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(config.file_name().unwrap());
        std::fs::write(&copy, read(config).replace(":3000\"", ":0\"")).unwrap();
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
        // Written by the image's non-root user: the control socket lives in /tmp.
        assert!(
            text.contains("control_socket = \"/tmp/"),
            "{}: control socket outside /tmp",
            config.display()
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
