//! Cluster-once cron through the whole system: supervisors x workers sharing a real
//! `redis-server`, `supervisor jobs`, Redis outages, and jobs cut short by a drain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use e2e::redis::RedisServer;
use e2e::{ConnMode, Load, Supervisor, get, tick_secs, unix_secs, wait_for};
use serde_json::Value;

fn body(
    instances: usize,
    job_log: &Path,
    redis: Option<&RedisServer>,
    kill_timeout: &str,
) -> String {
    let cron = redis
        .map(|r| format!("[cron]\nredis_url = \"{}\"\n", r.url()))
        .unwrap_or_default();
    format!(
        "[[app]]\nname = \"demo\"\ncommand = \"{{demo}}\"\ninstances = {instances}\nkill_timeout = \"{kill_timeout}\"\n\
         cron_backend = true\nenv = {{ DEMO_JOB_LOG = \"{}\" }}\n{cron}",
        job_log.display()
    )
}

/// (tick, token) of every scheduled heartbeat line, and the manual lines.
fn heartbeat_lines(path: &Path) -> (Vec<(String, u64)>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ticks = Vec::new();
    let mut manual = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0].starts_with("manual:") {
            manual.push(f[0].to_string());
        } else {
            ticks.push((f[0].to_string(), f[1].parse().unwrap()));
        }
    }
    (ticks, manual)
}

#[test]
fn three_supervisors_with_three_workers_run_each_tick_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("heartbeat.log");
    let sups: Vec<Supervisor> = (0..3)
        .map(|_| Supervisor::start(&body(3, &log, Some(&redis), "5s"), 3).unwrap())
        .collect();
    let from = unix_secs() + 2;
    std::thread::sleep(Duration::from_secs(17));
    let to = unix_secs() - 2;
    drop(sups);
    let (ticks, _) = heartbeat_lines(&log);
    let mut count: BTreeMap<i64, u32> = BTreeMap::new();
    for (t, _) in &ticks {
        *count.entry(tick_secs(t)).or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "ticks run more than once: {dup:?}");
    let missing: Vec<i64> = (from..=to).filter(|s| !count.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "ticks never run: {missing:?} (window {from}..={to})"
    );
    assert!(to - from >= 12, "at least 13 ticks checked");
    let mut by_tick: Vec<(i64, u64)> = ticks.iter().map(|(t, tok)| (tick_secs(t), *tok)).collect();
    by_tick.sort();
    assert!(
        by_tick.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens increase with the tick: {by_tick:?}"
    );
}

fn jobs_json(s: &Supervisor) -> Value {
    let out = s.cli(&["jobs", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn jobs_command_lists_jobs_and_runs_one_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("heartbeat.log");
    let s = Supervisor::start(&body(2, &log, None, "5s"), 2).unwrap();
    let jobs = wait_for(Duration::from_secs(10), "a heartbeat run in `jobs`", || {
        let v = jobs_json(&s);
        let hb = v
            .as_array()?
            .iter()
            .find(|j| j["meta"]["name"] == "heartbeat")?
            .clone();
        (hb["last_run"]["outcome"] == "ok").then_some(v)
    })
    .unwrap();
    let names: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["meta"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["heartbeat", "slow-report"]);
    assert!(jobs[0]["next_tick"].is_string());

    let out = s.cli(&["jobs", "run", "heartbeat", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["outcome"], "ok", "{v}");
    let id = v["request"].as_str().unwrap();
    let (_, manual) = heartbeat_lines(&log);
    assert_eq!(
        manual,
        vec![format!("manual:{id}")],
        "the manual run ran exactly once"
    );

    let status = s.status().unwrap();
    assert!(
        status["jobs"].as_array().is_some_and(|j| j.len() == 2),
        "{status}"
    );
    let table = String::from_utf8_lossy(&s.cli(&["status"]).unwrap().stdout).to_string();
    assert!(
        table.contains("heartbeat") && table.contains("next tick"),
        "{table}"
    );
    let out = s.cli(&["jobs", "run", "no-such-job"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job \"no-such-job\""));
}

#[test]
fn redis_outage_keeps_http_serving_and_jobs_resume_with_higher_tokens() {
    let mut redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("heartbeat.log");
    let s = Supervisor::start(&body(2, &log, Some(&redis), "5s"), 2).unwrap();
    wait_for(Duration::from_secs(10), "heartbeats", || {
        (heartbeat_lines(&log).0.len() >= 2).then_some(())
    })
    .unwrap();
    let load = Load::start(s.addr().unwrap(), "/", 2, &[ConnMode::KeepAlive]);
    redis.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let during = heartbeat_lines(&log).0;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        heartbeat_lines(&log).0.len(),
        during.len(),
        "no job runs unguarded while Redis is down"
    );
    let (code, _) = get(s.addr().unwrap(), "/healthz").unwrap();
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&s.cli(&["status"]).unwrap().stdout).to_string();
    assert!(
        text.contains("jobs: cron backend redis://127.0.0.1"),
        "status reports the outage: {text}"
    );
    let max_before = during.iter().map(|(_, t)| *t).max().unwrap();

    redis.restart().unwrap(); // empty: all keys, including the token counter, are gone
    let restarted = std::time::Instant::now();
    // The workers register their jobs again at once, not at their next periodic refresh.
    wait_for(Duration::from_secs(5), "the jobs registered again", || {
        (jobs_json(&s).as_array()?.len() == 2).then_some(())
    })
    .unwrap();
    eprintln!(
        "jobs registered again {:?} after the restart",
        restarted.elapsed()
    );
    let resumed = wait_for(
        Duration::from_secs(20),
        "heartbeats after Redis is back",
        || {
            let now = heartbeat_lines(&log).0;
            (now.len() >= during.len() + 2).then_some(now)
        },
    )
    .unwrap();
    let report = load.stop();
    assert_eq!(
        report.failed, 0,
        "HTTP unaffected by the outage: {:?}",
        report.errors
    );
    for (tick, token) in &resumed[during.len()..] {
        assert!(
            *token > max_before,
            "token {token} of {tick} after the restart <= {max_before} before it"
        );
    }
    // The outage is logged once per worker when it starts and once when it ends, not per tick.
    let logs = s.log_text();
    let count = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("cron backend unreachable"), 2, "{logs}");
    assert_eq!(count("cron backend reachable again"), 2, "{logs}");
    // A run that held a lease when Redis went down (slow-report, 5 s every 20 s) is fenced and
    // says so, once per run (lease lost, release failed, finished lease_lost): those name their
    // job. Everything else is the one warning per worker.
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(
        warnings.iter().filter(|l| !l.contains("job=")).count(),
        2,
        "one warning per worker: {logs}"
    );
    assert!(
        warnings.iter().filter(|l| l.contains("job=")).count() <= 3,
        "at most one fenced run, told once: {logs}"
    );
}

#[test]
fn a_drain_cancels_a_job_that_outlives_the_kill_timeout_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("heartbeat.log");
    let mut s = Supervisor::start(&body(1, &log, None, "2s"), 1).unwrap();
    wait_for(Duration::from_secs(10), "registered jobs", || {
        (jobs_json(&s).as_array()?.len() == 2).then_some(())
    })
    .unwrap();
    let out = s.cli(&["jobs", "run", "slow-report", "--no-wait"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(10), "slow-report running", || {
        let v = jobs_json(&s);
        v.as_array()?
            .iter()
            .any(|j| j["meta"]["name"] == "slow-report" && !j["holder"].is_null())
            .then_some(())
    })
    .unwrap();
    assert!(s.cli(&["stop"]).unwrap().status.success());
    assert_eq!(s.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    // The backend outlives the supervisor: its history tells what happened to the run.
    let out = s
        .cli(&["jobs", "history", "slow-report", "--json"])
        .unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["outcome"], "cancelled", "{runs}");
}
