//! The rendering, from snapshots built by hand: exact lines of the text format, no processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use super::*;

fn demo() -> AppMetrics {
    let mut reloads = ReloadStats {
        ok: 2,
        aborted: 1,
        ..Default::default()
    };
    reloads.durations.observe(0.004);
    reloads.durations.observe(0.75);
    AppMetrics {
        name: "demo".into(),
        generation: 3,
        starting: 1,
        ready: 2,
        draining: 0,
        backoff: 0,
        crash_loop: 1,
        restarts: 7,
        memory_recycles: 2,
        memory_recycle_failures: 1,
        watchdog_replacements: 3,
        watchdog_timeouts: 4,
        age_replacements: 5,
        singleton_holder: Some(true),
        reloads,
        processes: vec![WorkerProcess {
            name: "demo.0".into(),
            pid: 4242,
            usage: Usage {
                cpu_seconds: 1.5,
                rss_bytes: 6_500_000,
            },
        }],
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        version: "0.1.0".into(),
        start_time: 1_700_000_000.5,
        supervisor: Usage {
            cpu_seconds: 0.25,
            rss_bytes: 7_200_000,
        },
        apps: vec![demo()],
        jobs: None,
        config_job_ticks: cronlock::StatsSnapshot {
            ticks_run: 10,
            ticks_skipped_claimed_elsewhere: 20,
            ticks_backend_down: 4,
            ..Default::default()
        },
        fds: Some((12, 1024)),
        logs: vec![crate::logs::AppCounts {
            app: "web".into(),
            written: 100,
            dropped_rate: 7,
            dropped_error: 0,
        }],
    }
}

#[test]
fn the_supervisor_process_is_also_under_the_standard_names_and_log_lines_are_counted() {
    let text = lines(snapshot());
    for want in [
        "process_cpu_seconds_total 0.25",
        "process_resident_memory_bytes 7200000.0",
        "process_start_time_seconds 1700000000.5",
        "process_open_fds 12.0",
        "process_max_fds 1024.0",
        "supervisor_log_lines_written_total{app=\"web\"} 100",
        "supervisor_log_lines_dropped_total{app=\"web\",reason=\"rate_limit\"} 7",
        "supervisor_log_lines_dropped_total{app=\"web\",reason=\"write_error\"} 0",
    ] {
        assert!(
            text.iter().any(|l| l == want),
            "{want} not in:\n{}",
            text.join("\n")
        );
    }
}

fn lines(s: Snapshot) -> Vec<String> {
    render(s).unwrap().lines().map(str::to_string).collect()
}

fn has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "no line {want:?} in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn the_supervisor_itself() {
    let l = lines(snapshot());
    has(&l, "# TYPE supervisor_build_info gauge");
    has(&l, "supervisor_build_info{version=\"0.1.0\"} 1");
    has(&l, "# TYPE supervisor_start_time_seconds gauge");
    has(&l, "supervisor_start_time_seconds 1700000000.5");
    has(&l, "supervisor_resident_memory_bytes 7200000");
    has(&l, "# TYPE supervisor_cpu_seconds_total counter");
    has(&l, "supervisor_cpu_seconds_total 0.25");
}

#[test]
fn apps_workers_and_slots() {
    let l = lines(snapshot());
    has(&l, "supervisor_app_generation{app=\"demo\"} 3");
    has(&l, "# TYPE supervisor_workers gauge");
    has(&l, "supervisor_workers{app=\"demo\",state=\"starting\"} 1");
    has(&l, "supervisor_workers{app=\"demo\",state=\"ready\"} 2");
    has(&l, "supervisor_workers{app=\"demo\",state=\"draining\"} 0");
    has(
        &l,
        "supervisor_slots_waiting{app=\"demo\",state=\"backoff\"} 0",
    );
    has(
        &l,
        "supervisor_slots_waiting{app=\"demo\",state=\"crash-loop\"} 1",
    );
    has(&l, "# TYPE supervisor_worker_restarts_total counter");
    has(&l, "supervisor_worker_restarts_total{app=\"demo\"} 7");
    has(&l, "# TYPE supervisor_singleton_holder gauge");
    has(&l, "supervisor_singleton_holder{app=\"demo\"} 1");
    has(&l, "# TYPE supervisor_config_job_ticks_total counter");
    has(&l, "supervisor_config_job_ticks_total{result=\"run\"} 10");
    has(
        &l,
        "supervisor_config_job_ticks_total{result=\"claimed_elsewhere\"} 20",
    );
    has(
        &l,
        "supervisor_config_job_ticks_total{result=\"backend_down\"} 4",
    );
    has(&l, "# TYPE supervisor_memory_recycles_total counter");
    has(
        &l,
        "supervisor_worker_replacements_total{app=\"demo\",reason=\"watchdog\"} 3",
    );
    has(
        &l,
        "supervisor_worker_replacements_total{app=\"demo\",reason=\"max_age\"} 5",
    );
    has(&l, "supervisor_watchdog_timeouts_total{app=\"demo\"} 4");
    has(
        &l,
        "supervisor_memory_recycles_total{app=\"demo\",outcome=\"ok\"} 2",
    );
    has(
        &l,
        "supervisor_memory_recycles_total{app=\"demo\",outcome=\"failed\"} 1",
    );
    has(
        &l,
        "supervisor_worker_resident_memory_bytes{app=\"demo\",worker=\"demo.0\",pid=\"4242\"} 6500000",
    );
    has(
        &l,
        "supervisor_worker_cpu_seconds_total{app=\"demo\",worker=\"demo.0\",pid=\"4242\"} 1.5",
    );
}

#[test]
fn reloads_by_outcome_and_their_durations() {
    let l = lines(snapshot());
    has(&l, "# TYPE supervisor_reloads_total counter");
    has(
        &l,
        "supervisor_reloads_total{app=\"demo\",outcome=\"ok\"} 2",
    );
    has(
        &l,
        "supervisor_reloads_total{app=\"demo\",outcome=\"aborted\"} 1",
    );
    has(&l, "# TYPE supervisor_reload_duration_seconds histogram");
    // Cumulative buckets: 0.004 in the first, 0.75 from le=1 on.
    has(
        &l,
        "supervisor_reload_duration_seconds_bucket{app=\"demo\",le=\"0.01\"} 1",
    );
    has(
        &l,
        "supervisor_reload_duration_seconds_bucket{app=\"demo\",le=\"0.5\"} 1",
    );
    has(
        &l,
        "supervisor_reload_duration_seconds_bucket{app=\"demo\",le=\"1\"} 2",
    );
    has(
        &l,
        "supervisor_reload_duration_seconds_bucket{app=\"demo\",le=\"+Inf\"} 2",
    );
    has(
        &l,
        "supervisor_reload_duration_seconds_sum{app=\"demo\"} 0.754",
    );
    has(
        &l,
        "supervisor_reload_duration_seconds_count{app=\"demo\"} 2",
    );
    let buckets = l
        .iter()
        .filter(|x| x.starts_with("supervisor_reload_duration_seconds_bucket"))
        .count();
    assert_eq!(buckets, RELOAD_BUCKETS.len() + 1, "one +Inf bucket");
}

#[test]
fn the_registry_counts_what_the_core_reports() {
    let report = |outcome, duration_secs| ReloadReport {
        app: "demo".into(),
        generation: 2,
        outcome,
        reason: None,
        note: None,
        slots: vec![],
        duration_secs,
        change: None,
        changed: vec![],
    };
    let mut r = Registry::default();
    r.reload_ended(&report(ReloadOutcome::Ok, 0.02));
    r.reload_ended(&report(ReloadOutcome::Aborted, 31.0));
    r.reload_ended(&report(ReloadOutcome::Ok, 120.0));
    let s = r.reloads("demo");
    assert_eq!((s.ok, s.aborted), (2, 1));
    assert_eq!(s.durations.count, 2, "only reloads that ended ok are timed");
    assert_eq!(s.durations.buckets[1], 1, "0.02 s: le=0.025");
    assert_eq!(s.durations.buckets[RELOAD_BUCKETS.len()], 1, "120 s: +Inf");
    assert_eq!(r.reloads("other"), ReloadStats::default());
}

#[test]
fn jobs_when_the_backend_answers_and_when_it_does_not() {
    let mut s = snapshot();
    s.jobs = Some(JobsMetrics {
        backend_up: true,
        backend_healthy: Some(false),
        failovers_seen: 2,
        jobs: vec![JobMetrics {
            name: "heartbeat".into(),
            recent_runs: [("ok".to_string(), 98), ("missed".to_string(), 2)].into(),
            last_run_start: Some(1_700_000_100.0),
        }],
    });
    let l = lines(s.clone());
    has(&l, "supervisor_jobs_backend_up 1");
    has(&l, "supervisor_jobs_backend_healthy 0");
    has(&l, "supervisor_jobs_backend_failovers_total 2");
    has(
        &l,
        "supervisor_job_recent_runs{job=\"heartbeat\",outcome=\"missed\"} 2",
    );
    has(
        &l,
        "supervisor_job_recent_runs{job=\"heartbeat\",outcome=\"ok\"} 98",
    );
    has(
        &l,
        "supervisor_job_last_run_timestamp_seconds{job=\"heartbeat\"} 1700000100.0",
    );
    s.jobs = Some(JobsMetrics::default());
    let l = lines(s);
    has(&l, "supervisor_jobs_backend_up 0");
    has(&l, "supervisor_jobs_backend_failovers_total 0");
    assert!(
        !l.iter()
            .any(|x| x.contains("supervisor_jobs_backend_healthy")),
        "an unread topology is absent, not healthy: {l:?}"
    );
    assert!(!l.iter().any(|x| x.contains("supervisor_job_")), "{l:?}");
}

#[test]
fn job_metrics_count_the_history_by_outcome() {
    use chrono::TimeZone;
    let record = |outcome, secs| RunRecord {
        job: "report".into(),
        tick: "t".into(),
        host: "h".into(),
        pid: 1,
        token: None,
        started_at: chrono::Utc.timestamp_opt(secs, 0).unwrap(),
        duration_ms: 0,
        outcome,
        error: None,
    };
    use cronlock::Outcome;
    let j = JobMetrics::from_history(
        "report",
        &[
            record(Outcome::Failed, 300),
            record(Outcome::Ok, 200),
            record(Outcome::Ok, 100),
        ],
    );
    assert_eq!(j.recent_runs.get("ok"), Some(&2));
    assert_eq!(j.recent_runs.get("failed"), Some(&1));
    assert_eq!(
        j.last_run_start,
        Some(300.0),
        "the newest record comes first"
    );
}

#[test]
fn every_sample_line_is_a_name_labels_and_a_number() {
    let mut s = snapshot();
    s.apps.push(AppMetrics {
        name: "api-2".into(),
        ..Default::default()
    });
    let text = render(s).unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value == "+Inf" || value.parse::<f64>().is_ok(),
            "value of {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            (name.starts_with("supervisor_") || name.starts_with("process_"))
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "name of {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "labels of {line:?}"
            );
        }
    }
    // Each family is described once.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let mut unique = types.clone();
    unique.dedup();
    assert_eq!(types, unique);
}
