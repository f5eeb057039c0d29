//! Cluster singletons through the whole system: two supervisors sharing a private
//! `redis-server`, each with the same `scope = "cluster"` app, whose worker appends
//! `tag pid token millis` to a shared file every 200 ms. Exactly one runs it at a time
//! (the file's per-holder intervals never overlap), a SIGKILLed holder is replaced within
//! lease_ttl + one renewal period, a stopped holder hands over at once, and a holder that
//! cannot reach Redis for longer than the lease fences itself before the lease expires.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::redis::RedisServer;
use e2e::{Supervisor, alive, wait_for, workers};
use serde_json::Value;

const TTL_MS: u64 = 2000;
/// Renewal period and standby poll: a third of the TTL.
const PERIOD_MS: u64 = TTL_MS / 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The worker: every 200 ms one line `tag pid token millis`; exits on SIGTERM.
fn write_worker(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("worker.sh");
    std::fs::write(
        &path,
        "trap 'exit 0' TERM\n\
         while true; do\n\
           echo \"$TAG $$ $SUPERVISOR_FENCING_TOKEN $(date +%s%3N)\" >> \"$OUT\"\n\
           sleep 0.2\n\
         done\n",
    )
    .unwrap();
    path
}

fn body(tag: &str, script: &Path, out: &Path, redis: &RedisServer) -> String {
    format!(
        "[[app]]\nname = \"consumer\"\ncommand = \"/bin/sh\"\nargs = [\"{}\"]\ninstances = 1\n\
         readiness = \"exec\"\nkill_timeout = \"5s\"\nscope = \"cluster\"\nlease_ttl = \"{TTL_MS}ms\"\n\
         env = {{ TAG = \"{tag}\", OUT = \"{}\" }}\n\
         [cron]\nredis_url = \"{}\"\n",
        script.display(),
        out.display(),
        redis.url()
    )
}

/// One line of the shared file.
#[derive(Debug, Clone)]
struct Line {
    tag: String,
    pid: u32,
    token: u64,
    at: u64,
}

fn lines(out: &Path) -> Vec<Line> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Line {
                tag: f.first()?.to_string(),
                pid: f.get(1)?.parse().ok()?,
                token: f.get(2)?.parse().ok()?,
                at: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// Per worker process: (first, last) write, tag and token; asserts no two overlap and that
/// tokens increase from one holder to the next. Returns them in time order.
fn intervals(out: &Path) -> Vec<(u64, u64, String, u64)> {
    let mut by_pid: BTreeMap<u32, (u64, u64, String, u64)> = BTreeMap::new();
    for l in lines(out) {
        let e = by_pid
            .entry(l.pid)
            .or_insert((l.at, l.at, l.tag.clone(), l.token));
        e.0 = e.0.min(l.at);
        e.1 = e.1.max(l.at);
        assert_eq!(e.3, l.token, "one worker, one token");
    }
    let mut v: Vec<_> = by_pid.into_values().collect();
    v.sort();
    for w in v.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "two holders at once: {:?} and {:?} (all: {v:?})",
            w[0],
            w[1]
        );
        assert!(w[0].3 < w[1].3, "tokens increase: {v:?}");
    }
    v
}

/// `status --json` of the singleton app.
fn app(s: &Supervisor) -> Option<Value> {
    s.status().ok().map(|v| v["apps"][0].clone())
}

fn role(s: &Supervisor) -> Option<String> {
    Some(app(s)?["singleton"]["role"].as_str()?.to_string())
}

/// Waits until `s` holds the lease with one ready worker; returns the worker's pid.
fn wait_holder(s: &Supervisor, timeout: Duration) -> i32 {
    wait_for(timeout, "the lease and a ready worker", || {
        let a = app(s)?;
        let ws = workers(&serde_json::json!({ "apps": [a.clone()] }));
        (a["singleton"]["role"] == "holder" && ws.len() == 1 && ws[0].state == "ready")
            .then(|| ws[0].pid)
    })
    .unwrap_or_else(|e| panic!("{e}\nlog: {}", s.log_text()))
}

fn wait_standby(s: &Supervisor) -> Value {
    wait_for(Duration::from_secs(10), "standby", || {
        let a = app(s)?;
        (a["phase"] == "standby"
            && a["singleton"]["role"] == "standby"
            && a["singleton"]["holder"].is_string()
            && a["workers"].as_array()?.is_empty())
        .then_some(a)
    })
    .unwrap_or_else(|e| panic!("{e}\nlog: {}", s.log_text()))
}

#[test]
fn one_holder_at_a_time_failover_on_sigkill_and_handover_on_stop() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = write_worker(dir.path());
    let out = dir.path().join("out.log");
    let a = Supervisor::spawn(&body("A", &script, &out, &redis)).unwrap();
    let a_worker = wait_holder(&a, Duration::from_secs(10));
    let mut b = Supervisor::spawn(&body("B", &script, &out, &redis)).unwrap();
    let standby = wait_standby(&b);
    let holder = standby["singleton"]["holder"].as_str().unwrap();
    assert!(holder.ends_with(&format!(":{}", a.pid())), "{standby}");
    let (ok, text) = b.cli_text(&["status"]).unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("scope cluster: holder {holder} token"))
            && text.contains("(standby)"),
        "{text}"
    );
    let (_, text) = a.cli_text(&["status"]).unwrap();
    assert!(text.contains("(this host)"), "{text}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lines(&out).iter().all(|l| l.tag == "A"),
        "B never ran while A held"
    );

    // SIGKILL the holder: its worker dies with it (parent-death signal); B takes over once
    // the lease expires, at its next poll.
    let killed_at = now_ms();
    a.signal(libc::SIGKILL);
    let b_worker = wait_holder(&b, Duration::from_millis(TTL_MS + PERIOD_MS + 5000));
    let first_b = wait_for(Duration::from_secs(5), "B's first line", || {
        lines(&out).into_iter().find(|l| l.tag == "B")
    })
    .unwrap();
    let failover = first_b.at.saturating_sub(killed_at);
    println!(
        "failover after SIGKILL of the holder: {failover} ms (lease_ttl {TTL_MS} ms + renewal period {PERIOD_MS} ms = {} ms)",
        TTL_MS + PERIOD_MS
    );
    assert!(
        // The bound, plus 500 ms for the worker's exec and a busy 2-core machine.
        failover <= TTL_MS + PERIOD_MS + 500,
        "failover took {failover} ms"
    );
    assert!(!alive(a_worker), "A's worker died with A");
    std::thread::sleep(Duration::from_millis(600));
    intervals(&out);

    // A third supervisor stands by; stopping the holder hands over at once (no TTL wait).
    let c = Supervisor::spawn(&body("C", &script, &out, &redis)).unwrap();
    wait_standby(&c);
    let stop_started = Instant::now();
    let (ok, text) = b.cli_text(&["stop"]).unwrap();
    assert!(ok, "{text}");
    b.wait_exit(Duration::from_secs(10)).unwrap();
    let stopped_after = stop_started.elapsed();
    let stopped_at = now_ms();
    assert!(!alive(b_worker));
    wait_holder(&c, Duration::from_secs(5));
    let first_c = wait_for(Duration::from_secs(5), "C's first line", || {
        lines(&out).into_iter().find(|l| l.tag == "C")
    })
    .unwrap();
    let handover = first_c.at.saturating_sub(stopped_at);
    println!(
        "handover after `stop` of the holder: {handover} ms after it exited (the stop took {} ms)",
        stopped_after.as_millis()
    );
    assert!(
        handover < PERIOD_MS + 500,
        "a stopped holder's lease is released, not left to expire: {handover} ms"
    );
    std::thread::sleep(Duration::from_millis(600));
    let v = intervals(&out);
    let tags: Vec<&str> = v.iter().map(|i| i.2.as_str()).collect();
    assert_eq!(tags, vec!["A", "B", "C"]);
}

#[test]
fn a_holder_cut_off_from_redis_fences_itself_before_the_lease_expires() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = write_worker(dir.path());
    let out = dir.path().join("out.log");
    let a = Supervisor::spawn(&body("A", &script, &out, &redis)).unwrap();
    let a_worker = wait_holder(&a, Duration::from_secs(10));
    let b = Supervisor::spawn(&body("B", &script, &out, &redis)).unwrap();
    wait_standby(&b);
    let old_token = lines(&out).last().unwrap().token;
    std::thread::sleep(Duration::from_millis(500));

    // The last renewal was sent before the pause: the lease expires by paused_at + TTL.
    let paused_at = Instant::now();
    let paused_ms = now_ms();
    redis.pause().unwrap();
    let fenced = wait_for(
        Duration::from_millis(TTL_MS + 2000),
        "A's worker to be gone",
        || (!alive(a_worker)).then(Instant::now),
    );
    let fenced = match fenced {
        Ok(t) => t,
        Err(e) => {
            redis.resume().unwrap();
            panic!("{e}\nlog: {}", a.log_text());
        }
    };
    let gone_after = fenced.duration_since(paused_at);
    println!(
        "self-fencing: A's worker gone {} ms after Redis was paused (lease {TTL_MS} ms)",
        gone_after.as_millis()
    );
    assert!(
        gone_after < Duration::from_millis(TTL_MS),
        "gone before the lease could expire: {gone_after:?}"
    );
    let last_a = lines(&out)
        .iter()
        .filter(|l| l.tag == "A")
        .map(|l| l.at)
        .max()
        .unwrap();
    assert!(last_a < paused_ms + TTL_MS);
    // Paused longer than the lease: nobody can take it meanwhile.
    std::thread::sleep(Duration::from_millis(TTL_MS + 1000).saturating_sub(paused_at.elapsed()));
    assert!(lines(&out).iter().all(|l| l.tag == "A"));
    redis.resume().unwrap();
    let log = a.log_text();
    assert!(log.contains("self-fencing"), "{log}");

    // Exactly one of them takes it again, with a higher token.
    let holder = wait_for(Duration::from_secs(10), "one holder again", || {
        let roles = (role(&a)?, role(&b)?);
        match (roles.0.as_str(), roles.1.as_str()) {
            ("holder", "standby") => Some("A"),
            ("standby", "holder") => Some("B"),
            _ => None,
        }
    })
    .unwrap();
    let new_line = wait_for(
        Duration::from_secs(5),
        "the new holder's first line",
        || lines(&out).into_iter().find(|l| l.at > paused_ms + TTL_MS),
    )
    .unwrap();
    println!(
        "after SIGCONT: {holder} holds the lease, token {} (was {old_token})",
        new_line.token
    );
    assert_eq!(new_line.tag, holder);
    assert!(new_line.token > old_token);
    std::thread::sleep(Duration::from_millis(1500));
    let v = intervals(&out);
    assert_eq!(v.len(), 2, "{v:?}");
    let roles = [role(&a).unwrap(), role(&b).unwrap()];
    assert_eq!(
        roles.iter().filter(|r| *r == "holder").count(),
        1,
        "exactly one holder: {roles:?}"
    );
}
