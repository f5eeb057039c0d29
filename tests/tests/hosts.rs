//! Cluster-once cron across separate hosts: supervisors in their own network namespaces, Redis in
//! another, joined by veths to a bridge (`e2e::netns`). Every heartbeat tick runs exactly once
//! across the hosts; a host cut off from Redis in the middle of a run fences itself before its
//! lease expires while the others carry on, and takes ticks again once reconnected. Skipped, with
//! a printed reason, where network namespaces are not available (not root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use e2e::netns::{Lab, NsRedis, lab_or_skip};
use e2e::{Supervisor, unix_secs, wait_for};
use serde_json::Value;

/// One host: a supervisor in the host's namespace, and the file its workers' heartbeats go to.
struct Host {
    name: String,
    job_log: PathBuf,
    sup: Supervisor,
}

/// Starts a supervisor with `workers` demo-app workers on every host of `lab`, all pointed at
/// `redis`; each host's `HOSTNAME` is `hostN`, its heartbeats go to `dir/hostN.log`.
fn start_hosts(lab: &Lab, redis: &NsRedis, dir: &Path, workers: usize) -> Vec<Host> {
    let hosts: Vec<Host> = (0..lab.hosts())
        .map(|i| {
            let name = lab.host_name(i);
            let job_log = dir.join(format!("{name}.log"));
            // Workers log JSON lines with their own timestamps, claims lost to another
            // instance included (debug), for `worker_events`.
            let body = format!(
                "[[app]]\nname = \"demo\"\ncommand = \"{{demo}}\"\ninstances = {workers}\n\
                 kill_timeout = \"3s\"\ncron_backend = true\n\
                 env = {{ DEMO_JOB_LOG = \"{}\", SUPERVISOR_LOG_FORMAT = \"json\", \
                 RUST_LOG = \"info,cronlock::scheduler=debug\" }}\n\
                 [cron]\nredis_url = \"{}\"\n",
                job_log.display(),
                redis.url()
            );
            let sup =
                Supervisor::spawn_in(Some(&lab.host_ns(i)), &body, &[("HOSTNAME", &name)]).unwrap();
            Host { name, job_log, sup }
        })
        .collect();
    for h in &hosts {
        h.sup.wait_ready(workers, Duration::from_secs(20)).unwrap();
    }
    hosts
}

/// A scheduled heartbeat run, as a worker wrote it: `tick token host pid`.
#[derive(Debug, Clone)]
struct Beat {
    tick: i64,
    token: u64,
    host: String,
    pid: i32,
    /// The host whose file holds the line.
    file_of: String,
}

fn beats(hosts: &[Host]) -> Vec<Beat> {
    let mut all = Vec::new();
    for h in hosts {
        let text = std::fs::read_to_string(&h.job_log).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 || f[0].starts_with("manual:") {
                continue;
            }
            all.push(Beat {
                tick: DateTime::parse_from_rfc3339(f[0]).unwrap().timestamp(),
                token: f[1].parse().unwrap(),
                host: f[2].to_string(),
                pid: f[3].parse().unwrap(),
                file_of: h.name.clone(),
            });
        }
    }
    all.sort_by_key(|b| (b.tick, b.token));
    all
}

/// Checks what the guarantee promises over all runs: no tick twice, every tick of `from..=to`
/// run, tokens increasing with the tick, and each line written by a worker of the host it names.
/// Returns the number of ticks each host ran in the window.
fn check_once(all: &[Beat], from: i64, to: i64) -> BTreeMap<String, usize> {
    let mut runs: BTreeMap<i64, Vec<&Beat>> = BTreeMap::new();
    for b in all {
        runs.entry(b.tick).or_default().push(b);
    }
    let dups: Vec<_> = runs.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(dups.is_empty(), "ticks run more than once: {dups:?}");
    let missing: Vec<i64> = (from..=to).filter(|s| !runs.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "ticks never run: {missing:?} (window {from}..={to})"
    );
    assert!(
        all.windows(2).all(|w| w[0].token < w[1].token),
        "tokens increase with the tick: {all:?}"
    );
    for b in all {
        assert_eq!(
            b.host, b.file_of,
            "a worker of {} named itself {}",
            b.file_of, b.host
        );
    }
    let mut by_host = BTreeMap::new();
    for b in all.iter().filter(|b| (from..=to).contains(&b.tick)) {
        *by_host.entry(b.host.clone()).or_insert(0) += 1;
    }
    by_host
}

/// A tick (Unix seconds) as `HH:MM:SS` UTC, for the printed summaries.
fn hms(tick: i64) -> String {
    DateTime::from_timestamp(tick, 0)
        .map_or_else(|| tick.to_string(), |t| t.format("%H:%M:%S").to_string())
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Sleeps until the wall clock reaches `t`.
fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - now()).to_std() {
        std::thread::sleep(d);
    }
}

/// What the workers of `sup` logged with message `msg`: each event's own timestamp (taken in the
/// worker when it happened) and its fields. Workers log JSON lines (`SUPERVISOR_LOG_FORMAT=json`
/// in the app's env), which the supervisor forwards into its log.
fn worker_events(sup: &Supervisor, msg: &str) -> Vec<(DateTime<Utc>, Value)> {
    sup.log_text()
        .lines()
        .filter_map(|l| {
            let event: Value = serde_json::from_str(&l[l.find("{\"timestamp\"")?..]).ok()?;
            if event["fields"]["message"] != msg {
                return None;
            }
            let ts = DateTime::parse_from_rfc3339(event["timestamp"].as_str()?).ok()?;
            Some((ts.with_timezone(&Utc), event["fields"].clone()))
        })
        .collect()
}

/// The first event of [`worker_events`] whose `token` field is `token`.
fn run_event(sup: &Supervisor, msg: &str, token: u64) -> Option<(DateTime<Utc>, Value)> {
    worker_events(sup, msg)
        .into_iter()
        .find(|(_, f)| f["token"].as_u64() == Some(token))
}

#[test]
fn three_hosts_run_each_heartbeat_tick_exactly_once() {
    let Some(lab) = lab_or_skip("three_hosts_run_each_heartbeat_tick_exactly_once", 3) else {
        return;
    };
    let redis = lab.start_redis().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hosts = start_hosts(&lab, &redis, dir.path(), 3);
    let from = unix_secs() + 1;
    sleep_until(DateTime::from_timestamp(from + 12, 0).unwrap());
    let to = from + 9; // the last 2 s may still be in flight
    let pids: Vec<Vec<i32>> = hosts
        .iter()
        .map(|h| {
            h.sup
                .ready_workers()
                .unwrap()
                .iter()
                .map(|w| w.pid)
                .collect()
        })
        .collect();
    let all = beats(&hosts);
    let by_host = check_once(&all, from, to);
    for b in &all {
        let i: usize = b.host.trim_start_matches("host").parse::<usize>().unwrap() - 1;
        assert!(
            pids[i].contains(&b.pid),
            "{b:?}: not a worker of {}",
            b.host
        );
    }
    // Every host reached Redis from its own address, over the bridge.
    let clients: String = redis
        .query(|c| redis::cmd("CLIENT").arg("LIST").query(c))
        .unwrap();
    for i in 0..lab.hosts() {
        let addr = format!("addr={}:", lab.host_ip(i));
        assert!(
            clients.contains(&addr),
            "no client from {}: {clients}",
            lab.host_ip(i)
        );
    }
    // Which worker wins a tick is a race: no host is promised a share.
    println!(
        "hosts: {} ticks {}..={}, each run exactly once; by host {by_host:?}",
        to - from + 1,
        hms(from),
        hms(to)
    );
}

#[test]
fn a_host_cut_off_mid_run_fences_itself_and_resumes_when_reconnected() {
    let Some(lab) = lab_or_skip(
        "a_host_cut_off_mid_run_fences_itself_and_resumes_when_reconnected",
        3,
    ) else {
        return;
    };
    let redis = lab.start_redis().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = start_hosts(&lab, &redis, dir.path(), 2);
    let first_full_tick = unix_secs() + 1;

    // slow-report works 5 s under a 2 s lease renewed every 667 ms. Run it now rather than wait
    // up to 20 s for its tick (whichever worker wins the request runs it), unless the tick is
    // about to come or running: then after it.
    let since_tick = unix_secs().rem_euclid(20);
    if !(6..19).contains(&since_tick) {
        let tick = unix_secs() + 1 - (since_tick + 1).rem_euclid(20);
        sleep_until(DateTime::from_timestamp(tick + 6, 0).unwrap());
    }
    let requested = now();
    let (ok, text) = hosts[0]
        .sup
        .cli_text(&["jobs", "run", "slow-report", "--no-wait"])
        .unwrap();
    assert!(ok, "{text}");
    let (cut, started, token) = wait_for(Duration::from_secs(10), "slow-report to start", || {
        hosts.iter().enumerate().find_map(|(i, h)| {
            let (ts, f) = worker_events(&h.sup, "slow report started")
                .into_iter()
                .find(|(ts, _)| *ts >= requested)?;
            Some((i, ts, f["token"].as_u64()?))
        })
    })
    .unwrap();
    let victim = &hosts[cut];

    // Cut it off once at least one renewal went through, in the middle of a second (heartbeat
    // claims are sent just after each full second: none is in flight).
    let mut at = started + chrono::Duration::milliseconds(1000);
    while !(400..=600).contains(&at.timestamp_subsec_millis()) {
        at += chrono::Duration::milliseconds(50);
    }
    sleep_until(at);
    let lease_key = "cron:{slow-report}:lease";
    let holder: String = redis
        .query(|c| redis::cmd("GET").arg(lease_key).query(c))
        .unwrap();
    let holder: Value = serde_json::from_str(&holder).unwrap();
    assert_eq!(holder["token"], token, "{holder}");
    assert_eq!(holder["host"], victim.name.as_str(), "{holder}");
    lab.cut(cut).unwrap();
    let cut_at = now();
    // No renewal can reach Redis any more: the lease expires `PTTL` from now, at the earliest.
    let asked = now();
    let pttl: i64 = redis
        .query(|c| redis::cmd("PTTL").arg(lease_key).query(c))
        .unwrap();
    assert!(
        pttl > 0,
        "the lease is still held when the host is cut off: {pttl}"
    );
    let expiry = asked + chrono::Duration::milliseconds(pttl);

    // The cut host notices and cancels the run before its lease expires.
    let (fenced, fence) = wait_for(
        Duration::from_secs(5),
        "the cut host to fence itself",
        || run_event(&victim.sup, "lease lost: cancelling the run", token),
    )
    .unwrap();
    let early = expiry - fenced;
    assert!(
        early > chrono::Duration::zero(),
        "fenced at {fenced}, after the lease expired at {expiry}: {fence}"
    );

    // Once it expired, the lease is free for the hosts still connected: one of them runs the job
    // now (or its next tick), with a higher token.
    wait_for(Duration::from_secs(3), "the lease to expire", || {
        let v: Option<String> = redis
            .query(|c| redis::cmd("GET").arg(lease_key).query(c))
            .ok()?;
        v.is_none_or(|h| serde_json::from_str::<Value>(&h).is_ok_and(|h| h["token"] != token))
            .then_some(())
    })
    .unwrap();
    let other = (cut + 1) % hosts.len();
    let (ok, text) = hosts[other]
        .sup
        .cli_text(&["jobs", "run", "slow-report", "--no-wait"])
        .unwrap();
    assert!(ok, "{text}");

    // The cancelled run ends lease_lost. Its record cannot reach Redis (recording it times out
    // while the host is cut off): the worker's log is what tells.
    let (_, finished) = wait_for(Duration::from_secs(6), "the run's outcome", || {
        run_event(&victim.sup, "cron run finished", token)
    })
    .unwrap();
    assert_eq!(finished["outcome"], "lease_lost", "{finished}");
    assert!(run_event(&victim.sup, "slow report done", token).is_none());

    // Keep it cut off for 5 s: every tick meanwhile runs once, elsewhere.
    sleep_until(cut_at + chrono::Duration::seconds(5));
    lab.restore(cut).unwrap();
    let restored = now();

    // It takes part in the claims again: its workers get answers for ticks after the restore.
    let (back, back_event) = wait_for(
        Duration::from_secs(15),
        "the cut host to claim again",
        || {
            ["tick claimed by another instance", "cron run started"]
                .iter()
                .flat_map(|m| worker_events(&victim.sup, m))
                .filter(|(_, f)| {
                    f["tick"]
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t > restored)
                })
                .min_by_key(|(ts, _)| *ts)
        },
    )
    .unwrap();

    // The takeover run: a connected host, a higher token, after the lease expired.
    let record = wait_for(
        Duration::from_secs(10),
        "another host's slow-report run",
        || {
            let history: Vec<String> = redis
                .query(|c| {
                    redis::cmd("LRANGE")
                        .arg("cron:{slow-report}:history")
                        .arg(0)
                        .arg(-1)
                        .query(c)
                })
                .ok()?;
            history
                .iter()
                .filter_map(|h| serde_json::from_str::<Value>(h).ok())
                .filter(|r| r["token"].as_u64() > Some(token) && r["outcome"] == "ok")
                .min_by_key(|r| r["token"].as_u64())
        },
    )
    .unwrap();
    assert_ne!(record["host"], victim.name.as_str(), "{record}");
    let takeover: DateTime<Utc> = serde_json::from_value(record["started_at"].clone()).unwrap();
    assert!(
        takeover > expiry,
        "the takeover started after the lease expired: {record}"
    );

    // With the others stopped, it runs every tick.
    for (i, h) in hosts.iter_mut().enumerate().filter(|(i, _)| *i != cut) {
        let (ok, text) = h.sup.cli_text(&["stop"]).unwrap();
        assert!(ok, "stopping host{}: {text}", i + 1);
        assert_eq!(h.sup.wait_exit(Duration::from_secs(10)).unwrap(), Some(0));
    }
    let alone = unix_secs();
    let victim = &hosts[cut];
    wait_for(
        Duration::from_secs(5),
        "the cut host to run ticks alone",
        || {
            let mine = beats(&hosts)
                .into_iter()
                .filter(|b| b.host == victim.name && b.tick > alone)
                .count();
            (mine >= 2).then_some(())
        },
    )
    .unwrap();

    let last = unix_secs() - 2;
    let all = beats(&hosts);
    let by_host = check_once(&all, first_full_tick, last);
    let (cut_from, cut_to) = (cut_at.timestamp() + 1, restored.timestamp() - 1);
    let during: Vec<&Beat> = all
        .iter()
        .filter(|b| (cut_from..=cut_to).contains(&b.tick))
        .collect();
    assert!(
        during.iter().all(|b| b.host != victim.name),
        "the cut host ran ticks while cut off: {during:?}"
    );
    assert_eq!(during.len() as i64, cut_to - cut_from + 1, "{during:?}");
    let secs = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
    println!(
        "hosts: {} cut off {:.3}s into slow-report token {token}; it fenced itself {} ms before the \
         lease expired ({}); {} ticks while it was cut off, run by the others; it claimed tick {} \
         {:.3}s after the restore; takeover by {} with token {}, {} ms after the expiry; it ran \
         ticks alone once the others stopped; {} ticks {}..={} once each, by host {by_host:?}",
        victim.name,
        secs(cut_at - started),
        early.num_milliseconds(),
        fence["reason"],
        during.len(),
        back_event["tick"].as_str().unwrap_or("?"),
        secs(back - restored),
        record["host"],
        record["token"],
        (takeover - expiry).num_milliseconds(),
        last - first_full_tick + 1,
        hms(first_full_tick),
        hms(last),
    );
}
