//! The supervisor on Redis Sentinel, end to end: `check` and `status` show the deployment
//! (master, replicas, sentinels) and its health, a `[[job]]` keeps running each tick at most
//! once across a SIGKILL of the master with `min_replicas_ack = 1`, and the metrics count the
//! failover. The client-side failover itself is tested per backend in `crates/cronlock/tests/ha.rs`.
//!
//! Skipped, saying so, when `redis-server` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use e2e::redis_ha::{SentinelOptions, SentinelTopology, redis_server_available};
use e2e::{Supervisor, get, tick_secs, wait_for};

/// (tick, token) of every line the job wrote.
fn runs(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (tick, token) = l.split_once(' ')?;
            Some((tick.to_string(), token.trim().parse().ok()?))
        })
        .collect()
}

fn metrics_addr(s: &Supervisor) -> SocketAddr {
    wait_for(Duration::from_secs(10), "the metrics log line", || {
        let log = s.log_text();
        let rest = log.split("metrics on http://").nth(1)?;
        rest.split(|c: char| c.is_whitespace() || c == '/')
            .next()?
            .parse()
            .ok()
    })
    .unwrap()
}

fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = get(addr, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_supervisor_on_sentinel_shows_the_deployment_and_runs_its_job_through_a_failover() {
    if !redis_server_available() {
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
        return;
    }
    let topo = SentinelTopology::start(SentinelOptions {
        replicas: 2,
        sentinels: 1,
        ..SentinelOptions::default()
    })
    .unwrap();
    let url = topo.url("min_replicas_ack=1&wait_timeout=200ms");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("beat.log");
    let body = format!(
        "[supervisor]\ncontrol_socket = \"control.sock\"\nmetrics = \"127.0.0.1:0\"\n\n\
         [cron]\nredis_url = \"{url}\"\n\n\
         [[app]]\nname = \"web\"\ncommand = \"{{demo}}\"\ninstances = 1\nkill_timeout = \"3s\"\n\
         env = {{ DEMO_JOBS = \"off\" }}\n\n\
         [[job]]\nname = \"beat\"\nschedule = \"* * * * * *\"\n\
         command = [\"sh\", \"-c\", 'echo \"$SUPERVISOR_JOB_TICK $SUPERVISOR_JOB_TOKEN\" >> {}']\n",
        file.display()
    );
    let s = Supervisor::start(&body, 1).unwrap();

    // `check` reads the deployment: the master, both replicas, the sentinel.
    let (ok, text) = s.cli_text(&["check"]).unwrap();
    eprintln!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("`mymaster`"), "{text}");
    assert!(text.contains("sentinels 1/1 up"), "{text}");
    assert!(text.contains("min_replicas_ack 1"), "{text}");
    assert!(
        text.matches("replica").count() >= 2,
        "two replicas listed: {text}"
    );
    let check: serde_json::Value =
        serde_json::from_slice(&s.cli(&["check", "--json"]).unwrap().stdout).unwrap();
    assert_eq!(
        check["cron_topology"]["layout"]["kind"], "sentinel",
        "{check}"
    );
    assert_eq!(
        check["cron_topology"]["problems"],
        serde_json::json!([]),
        "{check}"
    );

    wait_for(Duration::from_secs(15), "two runs of the job", || {
        (runs(&file).len() >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let (ok, status) = s.cli_text(&["status"]).unwrap();
    assert!(ok, "{status}");
    assert!(status.contains("cron backend"), "{status}");
    assert!(status.contains("sentinels 1/1 up"), "{status}");

    let metrics = metrics_addr(&s);
    assert_eq!(
        metric(metrics, "supervisor_jobs_backend_healthy"),
        Some(1.0)
    );
    let before = runs(&file).len();
    let killed_at = e2e::unix_secs();
    let old = topo.kill_master().unwrap();
    let new = topo.wait_failover(old, Duration::from_secs(20)).unwrap();
    eprintln!("master {old} killed, {new} promoted");

    // The job goes on with the new master (and the replica left, once it follows it: Sentinel
    // reconfigures it and it resyncs, which took over 30 s once on a loaded 2-core machine).
    wait_for(Duration::from_secs(60), "runs after the failover", || {
        let r = runs(&file);
        (r.len() >= before + 3 && r.iter().any(|(t, _)| tick_secs(t) > killed_at + 3)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    wait_for(
        Duration::from_secs(15),
        "the failover in the metrics",
        || (metric(metrics, "supervisor_jobs_backend_failovers_total")? >= 1.0).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", get(metrics, "/metrics").unwrap().1));

    // At most once per tick, with tokens increasing in tick order.
    let r = runs(&file);
    let mut per_tick: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for (tick, token) in &r {
        per_tick.entry(tick_secs(tick)).or_default().push(*token);
    }
    let twice: Vec<_> = per_tick.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(twice.is_empty(), "ticks run twice: {twice:?}");
    let tokens: Vec<u64> = per_tick.values().map(|t| t[0]).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing in tick order: {per_tick:?}"
    );
    let (ok, status) = s.cli_text(&["status"]).unwrap();
    eprintln!("{status}");
    assert!(ok, "{status}");
    assert!(
        status.contains(&format!(":{new}")),
        "the new master {new} in status: {status}"
    );
    let (first, last) = (
        *per_tick.keys().next().unwrap(),
        *per_tick.keys().last().unwrap(),
    );
    let missed: Vec<i64> = (first..=last)
        .filter(|t| !per_tick.contains_key(t))
        .collect();
    eprintln!(
        "sentinel e2e: {} runs over ticks {first}..={last}, none twice; missed {missed:?} \
         (master {old} killed at {killed_at}, {new} promoted)",
        r.len(),
    );
}
