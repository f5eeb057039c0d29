//! `[[job]]` tables run by the supervisor itself: command and http jobs on the local backend,
//! timeouts and exit codes in the history, `jobs run`, a reload that changes a schedule, a lease
//! lost while Redis is paused, and each tick once across two supervisors sharing Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use e2e::redis::RedisServer;
use e2e::{Supervisor, group_members, tick_secs, unix_secs, wait_for};
use serde_json::Value;

/// One demo-app worker (its own sample jobs off) and `jobs`, on Redis if given.
fn body(jobs: &str, redis: Option<&RedisServer>) -> String {
    let cron = redis
        .map(|r| format!("[cron]\nredis_url = \"{}\"\n", r.url()))
        .unwrap_or_default();
    format!(
        "[[app]]\nname = \"web\"\ncommand = \"{{demo}}\"\ninstances = 1\nkill_timeout = \"3s\"\n\
         env = {{ DEMO_JOBS = \"off\" }}\n{cron}\n{jobs}"
    )
}

/// A `[[job]]` whose command appends `$SUPERVISOR_JOB_RUN $SUPERVISOR_JOB_TICK
/// $SUPERVISOR_JOB_TOKEN` to `file`, plus `extra` keys.
fn appending_job(name: &str, schedule: &str, file: &Path, extra: &str) -> String {
    format!(
        "[[job]]\nname = \"{name}\"\nschedule = \"{schedule}\"\n{extra}\n\
         command = [\"sh\", \"-c\", 'echo \"$SUPERVISOR_JOB_RUN $SUPERVISOR_JOB_TICK $SUPERVISOR_JOB_TOKEN\" >> {}']\n",
        file.display()
    )
}

/// (run, tick, token) of every line the appending job wrote.
fn lines(path: &Path) -> Vec<(String, String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

fn json(s: &Supervisor, args: &[&str]) -> Value {
    let out = s.cli(args).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first history record of `job` that satisfies `f`, waiting at most `timeout`.
fn wait_record(s: &Supervisor, job: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(timeout, &format!("a matching run of {job}"), || {
        let out = s.cli(&["jobs", "history", job, "--json"]).ok()?;
        let runs: Value = serde_json::from_slice(&out.stdout).ok()?;
        runs.as_array()?.iter().find(|r| f(r)).cloned()
    })
    .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", s.log_text()))
}

#[test]
fn command_and_http_jobs_on_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.log");
    let pidfile = dir.path().join("stuck.pid");
    let jobs = format!(
        "{}\n\
         [[job]]\nname = \"report\"\nschedule = \"* * * * * *\"\nhttp = \"POST /tasks/report\"\napp = \"web\"\n\n\
         [[job]]\nname = \"broken\"\nschedule = \"*/2 * * * * *\"\ncommand = [\"sh\", \"-c\", \"echo about to fail; exit 3\"]\n\n\
         [[job]]\nname = \"stuck\"\nschedule = \"*/3 * * * * *\"\ntimeout = \"1s\"\nkill_timeout = \"1s\"\n\
         command = [\"sh\", \"-c\", 'echo $$ > {}; trap \"\" TERM; sleep 30']\n",
        // Yearly: it runs here only when asked.
        appending_job("once", "0 0 0 1 1 *", &once, ""),
        pidfile.display()
    );
    let s = Supervisor::start(&body(&jobs, None), 1).unwrap();

    // http: 2xx recorded ok, the headers reached the app.
    let ok = wait_record(&s, "report", Duration::from_secs(10), |r| {
        r["outcome"] == "ok"
    });
    let token = ok["token"].as_u64().unwrap();
    let tick = ok["tick"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(5),
        "the app's log of the request",
        || {
            s.log_text()
                .contains(&format!("task report job=report tick={tick} token={token}"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));

    // A failing command: failed with its exit code; its output logged with name and pid.
    let failed = wait_record(&s, "broken", Duration::from_secs(10), |r| {
        r["outcome"] == "failed"
    });
    assert_eq!(failed["error"], "exit code 3", "{failed}");
    let log = s.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("job{name=broken pid=") && l.ends_with("about to fail")),
        "{log}"
    );

    // Past its timeout a command that ignores SIGTERM is killed with its group.
    let killed = wait_record(&s, "stuck", Duration::from_secs(15), |r| {
        r["outcome"] == "failed"
    });
    let error = killed["error"].as_str().unwrap();
    assert!(
        error.starts_with("timed out after 1s") && error.ends_with("killed by signal 9"),
        "{killed}"
    );
    let ms = killed["duration_ms"].as_u64().unwrap();
    assert!(
        (1900..6000).contains(&ms),
        "SIGKILL 1s after SIGTERM: {ms} ms"
    );
    let log = s.log_text();
    let pid: i32 = log
        .lines()
        .find(|l| l.contains("job{name=stuck pid=") && l.contains("killed by signal 9"))
        .and_then(|l| l.split("pid=").nth(1)?.split('}').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the kill is logged: {log}"));
    assert!(
        group_members(pid).is_empty(),
        "the stuck job's process group is gone"
    );
    assert!(pidfile.exists());

    // `jobs run` reaches the supervisor's scheduler through the backend and prints the record.
    let v = json(&s, &["jobs", "run", "once", "--json"]);
    assert_eq!(v["run"]["outcome"], "ok", "{v}");
    let id = v["request"].as_str().unwrap();
    let written = lines(&once);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].0, format!("manual:{id}"));
    assert_eq!(Some(written[0].2), v["run"]["token"].as_u64());
    let (ok, text) = s.cli_text(&["jobs", "run", "once"]).unwrap();
    assert!(
        ok && text.contains("manual:") && text.contains(" ok "),
        "{text}"
    );

    // `jobs` and `status` list them like the workers' jobs.
    let names: Vec<String> = json(&s, &["jobs", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["meta"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["broken", "once", "report", "stuck"]);
    let (_, status) = s.cli_text(&["status"]).unwrap();
    assert!(
        status.contains("report") && status.contains("*/3 * * * * * UTC"),
        "{status}"
    );
}

#[test]
fn a_reload_applies_a_changed_schedule_and_a_stop_waits_for_a_running_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticks.log");
    let done = dir.path().join("done");
    let slow = format!(
        "[[job]]\nname = \"slow\"\nschedule = \"0 0 0 1 1 *\"\nkill_timeout = \"4s\"\n\
         command = [\"sh\", \"-c\", 'sleep 1.5; touch {}']\n",
        done.display()
    );
    let yearly = format!("{}{slow}", appending_job("rl", "0 0 0 1 1 *", &file, ""));
    let mut s = Supervisor::start(&body(&yearly, None), 1).unwrap();
    wait_for(Duration::from_secs(10), "registered jobs", || {
        (json(&s, &["jobs", "--json"]).as_array()?.len() == 2).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lines(&file).is_empty(), "yearly: no run yet");

    let every = format!("{}{slow}", appending_job("rl", "* * * * * *", &file, ""));
    s.rewrite(&body(&every, None)).unwrap();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    let ran = wait_for(Duration::from_secs(10), "runs on the new schedule", || {
        let l = lines(&file);
        (l.len() >= 2).then_some(l)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    assert!(ran.iter().all(|(run, _, _)| !run.starts_with("manual:")));
    let jobs = json(&s, &["jobs", "--json"]);
    let rl = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["meta"]["name"] == "rl")
        .unwrap();
    assert_eq!(rl["meta"]["schedule"], "* * * * * *");

    // A stop lets a running command finish (within the longest kill_timeout).
    let out = s.cli(&["jobs", "run", "slow", "--no-wait"]).unwrap();
    assert!(out.status.success());
    wait_for(Duration::from_secs(10), "slow running", || {
        json(&s, &["jobs", "--json"])
            .as_array()?
            .iter()
            .any(|j| j["meta"]["name"] == "slow" && !j["holder"].is_null())
            .then_some(())
    })
    .unwrap();
    let before = lines(&file).len();
    assert!(s.cli(&["stop"]).unwrap().status.success());
    assert_eq!(s.wait_exit(Duration::from_secs(15)).unwrap(), Some(0));
    assert!(
        done.exists(),
        "the running command finished before the supervisor exited"
    );
    let after = lines(&file).len();
    assert!(
        after <= before + 1,
        "no new tick once stopping: {before} -> {after}"
    );
    let out = s.cli(&["jobs", "history", "slow", "--json"]).unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["outcome"], "ok", "{runs}");
}

#[test]
fn two_supervisors_on_redis_run_each_tick_of_a_command_job_once() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticks.log");
    let jobs = appending_job("every-second", "* * * * * *", &file, "lease_ttl = \"5s\"");
    let sups: Vec<Supervisor> = (0..2)
        .map(|_| Supervisor::start(&body(&jobs, Some(&redis)), 1).unwrap())
        .collect();
    let from = unix_secs() + 1;
    std::thread::sleep(Duration::from_secs(8));
    let to = unix_secs() - 2;
    let logs: Vec<String> = sups.iter().map(Supervisor::log_text).collect();
    drop(sups);
    let ran = lines(&file);
    let mut count: BTreeMap<i64, u32> = BTreeMap::new();
    for (_, tick, _) in &ran {
        *count.entry(tick_secs(tick)).or_default() += 1;
    }
    let dup: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "ticks run more than once: {dup:?}");
    let missing: Vec<i64> = (from..=to).filter(|t| !count.contains_key(t)).collect();
    assert!(missing.is_empty(), "ticks never run: {missing:?}\n{logs:?}");
    assert!(to - from >= 4, "at least 5 ticks checked");
    let mut by_tick: Vec<(i64, u64)> = ran.iter().map(|(_, t, tok)| (tick_secs(t), *tok)).collect();
    by_tick.sort();
    assert!(
        by_tick.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens increase with the tick: {by_tick:?}"
    );
    // Which supervisor wins a tick is a race; the log says who ran what.
    assert!(
        logs.iter()
            .any(|l| l.contains("job{name=every-second pid=")),
        "{logs:?}"
    );
}

#[test]
fn a_lost_lease_stops_the_command_before_the_lease_expires() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("long.pid");
    let jobs = format!(
        "[[job]]\nname = \"long\"\nschedule = \"0 0 0 1 1 *\"\nlease_ttl = \"1500ms\"\n\
         command = [\"sh\", \"-c\", 'echo $$ > {}; sleep 30']\n",
        pidfile.display()
    );
    let s = Supervisor::start(&body(&jobs, Some(&redis)), 1).unwrap();
    wait_for(Duration::from_secs(10), "registered", || {
        (json(&s, &["jobs", "--json"]).as_array()?.len() == 1).then_some(())
    })
    .unwrap();
    assert!(
        s.cli(&["jobs", "run", "long", "--no-wait"])
            .unwrap()
            .status
            .success()
    );
    let pid: i32 = wait_for(Duration::from_secs(10), "the command's pid", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .unwrap();
    redis.pause().unwrap();
    // Renewals fail: the run must stop before its 1.5 s lease would expire.
    let gone = wait_for(Duration::from_secs(3), "the command gone", || {
        group_members(pid).is_empty().then_some(())
    });
    redis.resume().unwrap();
    gone.unwrap_or_else(|e| panic!("{e}\n{}", s.log_text()));
    let r = wait_record(&s, "long", Duration::from_secs(10), |r| {
        r["outcome"] != "ok"
    });
    assert_eq!(r["outcome"], "lease_lost", "{r}");
}
