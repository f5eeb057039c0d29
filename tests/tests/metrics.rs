//! The Prometheus endpoint, end to end: `supervisor.metrics` on a port picked by the kernel,
//! scraped while a worker is killed and the app reloaded; the text checked line by line (and by
//! Python's `prometheus_client` parser where it is installed); a port in use fails `check` and
//! `start` naming the key, with nothing started.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e::{Supervisor, bin, get, run_with_deadline, wait_for, workers, workspace_root};

const DEMO2: &str = "[supervisor]\ncontrol_socket = \"control.sock\"\nmetrics = \"127.0.0.1:0\"\n\n\
     [[app]]\nname = \"demo\"\ncommand = \"{demo}\"\ninstances = 2\nkill_timeout = \"5s\"\n\
     cron_backend = true\n";

/// The metrics address, from the log line that announces it (the port was 0 in the file).
fn metrics_addr(s: &Supervisor) -> SocketAddr {
    wait_for(Duration::from_secs(10), "the metrics log line", || {
        let log = s.log_text();
        let rest = log.split("metrics on http://").nth(1)?;
        rest.split('/').next()?.parse().ok()
    })
    .unwrap()
}

/// Every sample of a scrape: `name{labels}` -> value. Checks the format of every line on the way.
fn scrape(addr: SocketAddr) -> (String, BTreeMap<String, f64>) {
    let (code, body) = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `series value`: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?} is not a number")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let (name, labels) = series.split_at(name_end);
        assert!(
            (name.starts_with("supervisor_") || name.starts_with("process_"))
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name of {line:?}"
        );
        assert!(
            labels.is_empty()
                || (labels.starts_with('{')
                    && labels.ends_with('}')
                    && labels[1..labels.len() - 1]
                        .split("\",")
                        .all(|kv| kv.split_once("=\"").is_some())),
            "labels of {line:?}"
        );
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    (body, samples)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

/// Python's `prometheus_client` text parser, from the examples' venv or the system's python3;
/// `None` (with a note) where it is not installed.
fn python_with_parser() -> Option<PathBuf> {
    let venv = workspace_root().join("examples/python/.venv/bin/python");
    for python in [venv, PathBuf::from("python3")] {
        let ok = Command::new(&python)
            .args(["-c", "import prometheus_client.parser"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    eprintln!(
        "note: Python's prometheus_client is not installed (scripts/test puts it into examples/python/.venv): the scrape is not checked by its parser"
    );
    None
}

/// The families Python's parser finds in `text`: name -> type.
fn parse_with_python(python: &PathBuf, text: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, text).unwrap();
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
        \x20   print(f.name, f.type, len(f.samples))\n";
    let out = run_with_deadline(
        Command::new(python).args(["-c", script]).arg(&file),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "the parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

#[test]
fn metrics_follow_workers_restarts_and_reloads() {
    let s = Supervisor::start(DEMO2, 2).unwrap();
    let addr = metrics_addr(&s);
    let (_, m) = scrape(addr);
    let ready = "supervisor_workers{app=\"demo\",state=\"ready\"}";
    let restarts = "supervisor_worker_restarts_total{app=\"demo\"}";
    assert_eq!(value(&m, ready), 2.0, "as many as instances");
    assert_eq!(value(&m, restarts), 0.0);
    assert_eq!(value(&m, "supervisor_app_generation{app=\"demo\"}"), 1.0);
    assert_eq!(value(&m, "supervisor_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(value(&m, "supervisor_resident_memory_bytes") > 0.0);
    // The same figures under the standard names, and the descriptors.
    assert!(value(&m, "process_resident_memory_bytes") > 0.0);
    assert!(value(&m, "process_open_fds") >= 3.0);
    assert!(value(&m, "process_max_fds") >= value(&m, "process_open_fds"));
    assert!(value(&m, "process_start_time_seconds") > 1.6e9);
    for w in workers(&s.status().unwrap()) {
        let rss = format!(
            "supervisor_worker_resident_memory_bytes{{app=\"demo\",worker=\"{}\",pid=\"{}\"}}",
            w.name, w.pid
        );
        assert!(value(&m, &rss) > 0.0, "{rss}");
    }

    // A crash: the restart counter moves, the slot comes back.
    let victim = workers(&s.status().unwrap())[0].pid;
    // SAFETY: killing a worker this test's supervisor started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_for(
        Duration::from_secs(10),
        "the restart in the metrics",
        || {
            let (_, m) = scrape(addr);
            (m.get(restarts) == Some(&1.0) && m.get(ready) == Some(&2.0)).then_some(())
        },
    )
    .unwrap();

    // A reload: counted ok, timed, the generation moves; not a restart.
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok && text.contains("generation 2: ok"), "{text}");
    let (body, m) = scrape(addr);
    assert_eq!(
        value(&m, "supervisor_reloads_total{app=\"demo\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "supervisor_reloads_total{app=\"demo\",outcome=\"aborted\"}"
        ),
        0.0
    );
    assert_eq!(
        value(&m, "supervisor_reload_duration_seconds_count{app=\"demo\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "supervisor_reload_duration_seconds_bucket{app=\"demo\",le=\"+Inf\"}"
        ),
        1.0
    );
    assert_eq!(value(&m, "supervisor_app_generation{app=\"demo\"}"), 2.0);
    assert_eq!(value(&m, restarts), 1.0, "a reload is not a restart");
    // demo-app registers its jobs in the local backend.
    assert_eq!(value(&m, "supervisor_jobs_backend_up"), 1.0);

    if let Some(python) = python_with_parser() {
        let families = parse_with_python(&python, &body);
        let kind = |name: &str| families.get(name).map(String::as_str);
        assert_eq!(kind("supervisor_workers"), Some("gauge"), "{families:?}");
        assert_eq!(kind("supervisor_worker_restarts"), Some("counter"));
        assert_eq!(
            kind("supervisor_reload_duration_seconds"),
            Some("histogram")
        );
    }

    let (code, _) = get(addr, "/").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_metrics_port_in_use_fails_check_and_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("supervisor.toml");
    let body = DEMO2.replace("127.0.0.1:0", &addr.to_string());
    std::fs::write(&config, e2e::config_text(&body)).unwrap();
    for cmd in ["check", "start"] {
        let out = run_with_deadline(
            Command::new(bin("supervisor"))
                .args([cmd, "-c"])
                .arg(&config)
                .env("RUST_LOG", "info"),
            Duration::from_secs(20),
        )
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "supervisor.metrics: cannot listen on {addr}: Address already in use"
            )),
            "{cmd}: {err}"
        );
        assert!(!err.contains("worker started"), "{cmd}: {err}");
        assert!(
            !dir.path().join("control.sock").exists(),
            "{cmd}: nothing left behind"
        );
    }
}

#[test]
fn a_cron_backend_that_never_answers_is_down_and_the_scrape_still_answers() {
    // A Redis that accepts connections (the kernel's backlog) and never replies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis = silent.local_addr().unwrap();
    let body = DEMO2.replace(
        "\n\n[[app]]",
        &format!("\n[cron]\nredis_url = \"redis://{redis}/0\"\n\n[[app]]"),
    ) + "\n[[job]]\nname = \"tick\"\nschedule = \"* * * * * *\"\ncommand = [\"/bin/true\"]\n";
    let s = Supervisor::start(&body, 2).unwrap();
    let addr = metrics_addr(&s);
    let started = std::time::Instant::now();
    let (_, m) = scrape(addr);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "the scrape took {took:?}");
    assert_eq!(value(&m, "supervisor_jobs_backend_up"), 0.0);
    assert!(!m.keys().any(|k| k.starts_with("supervisor_job_")), "{m:?}");
    assert_eq!(
        value(&m, "supervisor_workers{app=\"demo\",state=\"ready\"}"),
        2.0
    );
    // The supervisor's own [[job]] ticks are skipped, never run unguarded, and counted.
    let down = wait_for(
        Duration::from_secs(15),
        "a tick counted backend_down",
        || {
            let (_, m) = scrape(addr);
            let n = value(
                &m,
                "supervisor_config_job_ticks_total{result=\"backend_down\"}",
            );
            (n > 0.0).then_some(m)
        },
    )
    .unwrap();
    assert_eq!(
        value(&down, "supervisor_config_job_ticks_total{result=\"run\"}"),
        0.0
    );
}

#[test]
fn config_job_ticks_run_here_are_counted() {
    let body = format!(
        "{DEMO2}\n[[job]]\nname = \"tick\"\nschedule = \"* * * * * *\"\ncommand = [\"/bin/true\"]\n"
    );
    let s = Supervisor::start(&body, 2).unwrap();
    let addr = metrics_addr(&s);
    wait_for(Duration::from_secs(10), "two ticks run here", || {
        let (_, m) = scrape(addr);
        (value(&m, "supervisor_config_job_ticks_total{result=\"run\"}") >= 2.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", s.log_text()));
}
