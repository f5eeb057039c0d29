//! Prometheus metrics. The shell keeps a small [`Registry`] of what must be accumulated (reloads
//! by outcome, their durations) and, on each scrape, answers with a [`Snapshot`]: plain data about
//! its apps, workers and processes. [`render`] turns a snapshot into the Prometheus text
//! exposition format (version 0.0.4) through `prometheus-client`, a pure function tested without
//! processes. [`server`] serves `GET /metrics` outside the event loop and adds the cron jobs,
//! which it reads from the lock backend itself (the daemon never waits on Redis).

mod process;
pub mod server;

use std::collections::BTreeMap;

use cronlock::RunRecord;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::core::report::{ReloadOutcome, ReloadReport};
use process::ProcessFigures;

/// Upper bounds (seconds) of the reload duration histogram's buckets; `+Inf` comes on top. A
/// rolling reload of a fast worker takes milliseconds, one of a slow starter up to its ready
/// timeouts (30 s each by default).
pub const RELOAD_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram's data: per-bucket counts (not cumulative; the last one is `+Inf`), sum and count.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Observations per bucket of [`RELOAD_BUCKETS`], then those above the last bound.
    pub buckets: Vec<u64>,
    /// Sum of the observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: vec![0; RELOAD_BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Counts `v` in the first bucket whose upper bound is at least `v`.
    pub fn observe(&mut self, v: f64) {
        let i = RELOAD_BUCKETS
            .iter()
            .position(|upper| v <= *upper)
            .unwrap_or(RELOAD_BUCKETS.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// One app's reloads since the supervisor started.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReloadStats {
    /// Reloads that replaced every slot.
    pub ok: u64,
    /// Reloads that were aborted (or refused: the app was starting or stopping).
    pub aborted: u64,
    /// Canary reloads rolled back (missing from a release before canaries).
    #[serde(default)]
    pub rolled_back: u64,
    /// Durations of the reloads that ended ok.
    pub durations: Histogram,
}

/// What the shell accumulates for the metrics: everything else is read from the core and `/proc`
/// at scrape time. Its serde shape is part of the in-place upgrade's handover format (pinned by
/// `upgrade/fixtures/handover-v1.json`): rename no field.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Registry {
    reloads: BTreeMap<String, ReloadStats>,
}

impl Registry {
    /// Records a reload that ended (the core's [`crate::core::Action::ReloadEnded`]).
    pub fn reload_ended(&mut self, report: &ReloadReport) {
        let stats = self.reloads.entry(report.app.clone()).or_default();
        match report.outcome {
            ReloadOutcome::Ok => {
                stats.ok += 1;
                stats.durations.observe(report.duration_secs);
            }
            ReloadOutcome::Aborted => stats.aborted += 1,
            ReloadOutcome::RolledBack => stats.rolled_back += 1,
            // Only answers to `reload --no-wait` say "started", and a canary that holds has
            // not ended: neither is a finished reload.
            ReloadOutcome::Started | ReloadOutcome::Held => {}
        }
    }

    /// The reloads of app `name` so far.
    pub fn reloads(&self, name: &str) -> ReloadStats {
        self.reloads.get(name).cloned().unwrap_or_default()
    }
}

/// CPU time and resident memory of a process (or of a worker's process group).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// One live worker process.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerProcess {
    /// `app.slot`.
    pub name: String,
    /// Its pid (two processes of one slot live at once during a reload).
    pub pid: i32,
    /// Its whole process group's use.
    pub usage: Usage,
}

/// One app at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppMetrics {
    /// Its name.
    pub name: String,
    /// The generation new workers start in.
    pub generation: u64,
    /// Workers starting, ready and draining.
    pub starting: u64,
    /// Ready workers.
    pub ready: u64,
    /// Draining workers.
    pub draining: u64,
    /// Slots backing off before a restart.
    pub backoff: u64,
    /// Slots crash-looping.
    pub crash_loop: u64,
    /// Crash restarts since the supervisor started.
    pub restarts: u64,
    /// Workers replaced for staying above `max_memory`, and replacements that failed.
    pub memory_recycles: u64,
    /// Replacements for memory that failed (the old worker kept serving).
    pub memory_recycle_failures: u64,
    /// Hung workers replaced, and watchdogs missed or triggered.
    pub watchdog_replacements: u64,
    pub watchdog_timeouts: u64,
    /// Workers replaced for their age.
    pub age_replacements: u64,
    /// A cluster singleton: whether this host holds its lease (`None`: not a singleton).
    pub singleton_holder: Option<bool>,
    /// Reloads since the supervisor started.
    pub reloads: ReloadStats,
    /// Its worker processes.
    pub processes: Vec<WorkerProcess>,
}

/// One cron job, from the backend's history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMetrics {
    /// Job name.
    pub name: String,
    /// Runs among the records the backend keeps (the last [`cronlock::HISTORY_LEN`]) by
    /// outcome (`ok`, `failed`, `lease_lost`, `skipped_overlap`, `missed`, `cancelled`).
    pub recent_runs: BTreeMap<String, u64>,
    /// When the newest recorded run started (Unix seconds).
    pub last_run_start: Option<f64>,
}

impl JobMetrics {
    /// A job's metrics from its history records (newest first).
    pub fn from_history(name: &str, records: &[RunRecord]) -> JobMetrics {
        let mut recent_runs = BTreeMap::new();
        for r in records {
            *recent_runs.entry(r.outcome.to_string()).or_insert(0) += 1;
        }
        JobMetrics {
            name: name.to_string(),
            recent_runs,
            last_run_start: records
                .first()
                .map(|r| r.started_at.timestamp_millis() as f64 / 1000.0),
        }
    }
}

/// The cron jobs as read from the lock backend at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsMetrics {
    /// Whether the backend answered in time.
    pub backend_up: bool,
    /// Whether its topology showed no problem (a master without enough replicas in sync, a
    /// sentinel or a shard down); `None` when it could not be read.
    pub backend_healthy: Option<bool>,
    /// Failovers of the Redis deployment this supervisor followed (its jobs, singletons and
    /// scrapes together; 0 for one server or a local directory).
    pub failovers_seen: u64,
    /// Every registered job (none when the backend is down).
    pub jobs: Vec<JobMetrics>,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The supervisor's version.
    pub version: String,
    /// When the supervisor started (Unix seconds).
    pub start_time: f64,
    /// The supervisor process itself.
    pub supervisor: Usage,
    /// The apps, in file order.
    pub apps: Vec<AppMetrics>,
    /// The cron jobs; `None` when they were not read.
    pub jobs: Option<JobsMetrics>,
    /// The ticks of the `[[job]]` tables this supervisor scheduled, by what became of them.
    pub config_job_ticks: cronlock::StatsSnapshot,
    /// The supervisor's open descriptors and its limit, if known.
    pub fds: Option<(u64, u64)>,
    /// Log lines written and dropped, per app.
    pub logs: Vec<crate::logs::AppCounts>,
}

/// The Prometheus text format of a snapshot; metric names start with `supervisor_`.
pub fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(ProcessFigures {
        usage: snapshot.supervisor,
        start_time: snapshot.start_time,
        fds: snapshot.fds,
    }));
    registry
        .sub_registry_with_prefix("supervisor")
        .register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its descriptor, then one sample per label set (nothing when there is none).
fn family<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: &[(Labels, V)],
) -> Result<(), std::fmt::Error>
where
    V: EncodeGaugeValue + EncodeCounterValue,
{
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, value) in samples {
        let mut m = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => m.encode_counter::<Labels, V, f64>(value, None)?,
            _ => m.encode_gauge(value)?,
        }
    }
    Ok(())
}

fn app_label(app: &AppMetrics) -> Labels {
    vec![("app", app.name.clone())]
}

fn labels_with(app: &AppMetrics, key: &'static str, value: &str) -> Labels {
    vec![("app", app.name.clone()), (key, value.to_string())]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let none: Labels = Vec::new();
        let version: Labels = vec![("version", self.version.clone())];
        e.encode_descriptor(
            "build",
            "The supervisor's version (always 1).",
            None,
            MetricType::Info,
        )?
        .encode_info(&version)?;
        family(
            &mut e,
            "start_time",
            "When the supervisor started, in Unix seconds.",
            Some(Unit::Seconds),
            Gauge,
            &[(none.clone(), self.start_time)],
        )?;
        family(
            &mut e,
            "resident_memory",
            "Resident memory of the supervisor process.",
            Some(Unit::Bytes),
            Gauge,
            &[(none.clone(), self.supervisor.rss_bytes)],
        )?;
        family(
            &mut e,
            "cpu",
            "CPU time (user + system) of the supervisor process.",
            Some(Unit::Seconds),
            Counter,
            &[(none, self.supervisor.cpu_seconds)],
        )?;
        let apps = &self.apps;
        let per_app = |f: &dyn Fn(&AppMetrics) -> u64| -> Vec<(Labels, u64)> {
            apps.iter().map(|a| (app_label(a), f(a))).collect()
        };
        family(
            &mut e,
            "app_generation",
            "The generation an app's new workers start in.",
            None,
            Gauge,
            &per_app(&|a| a.generation),
        )?;
        let workers: Vec<(Labels, u64)> = apps
            .iter()
            .flat_map(|a| {
                [
                    ("starting", a.starting),
                    ("ready", a.ready),
                    ("draining", a.draining),
                ]
                .map(|(state, n)| (labels_with(a, "state", state), n))
            })
            .collect();
        family(
            &mut e,
            "workers",
            "Worker processes by app and state (starting, ready, draining).",
            None,
            Gauge,
            &workers,
        )?;
        let waiting: Vec<(Labels, u64)> = apps
            .iter()
            .flat_map(|a| {
                [("backoff", a.backoff), ("crash-loop", a.crash_loop)]
                    .map(|(state, n)| (labels_with(a, "state", state), n))
            })
            .collect();
        family(
            &mut e,
            "slots_waiting",
            "Slots without a worker, waiting to restart, by app and state (backoff, crash-loop).",
            None,
            Gauge,
            &waiting,
        )?;
        family(
            &mut e,
            "worker_restarts",
            "Crash restarts of workers by app (reload replacements are not restarts).",
            None,
            Counter,
            &per_app(&|a| a.restarts),
        )?;
        let recycles: Vec<(Labels, u64)> = apps
            .iter()
            .flat_map(|a| {
                [
                    ("ok", a.memory_recycles),
                    ("failed", a.memory_recycle_failures),
                ]
                .map(|(outcome, n)| (labels_with(a, "outcome", outcome), n))
            })
            .collect();
        family(
            &mut e,
            "memory_recycles",
            "Workers replaced for staying above max_memory, by app and outcome (ok: the \
             replacement took over; failed: the old worker kept serving).",
            None,
            Counter,
            &recycles,
        )?;
        let replaced: Vec<(Labels, u64)> = apps
            .iter()
            .flat_map(|a| {
                [
                    ("memory", a.memory_recycles),
                    ("watchdog", a.watchdog_replacements),
                    ("max_age", a.age_replacements),
                ]
                .map(|(reason, n)| (labels_with(a, "reason", reason), n))
            })
            .collect();
        family(
            &mut e,
            "worker_replacements",
            "Serving workers replaced beside their slot (the replacement ready first), by app and \
             reason: memory (above max_memory), watchdog (hung), max_age.",
            None,
            Counter,
            &replaced,
        )?;
        family(
            &mut e,
            "watchdog_timeouts",
            "Worker watchdogs missed (no WATCHDOG=1 within the period) or triggered, by app.",
            None,
            Counter,
            &per_app(&|a| a.watchdog_timeouts),
        )?;
        let reloads: Vec<(Labels, u64)> = apps
            .iter()
            .flat_map(|a| {
                [
                    ("ok", a.reloads.ok),
                    ("aborted", a.reloads.aborted),
                    ("rolled_back", a.reloads.rolled_back),
                ]
                .map(|(outcome, n)| (labels_with(a, "outcome", outcome), n))
            })
            .collect();
        family(
            &mut e,
            "reloads",
            "Rolling reloads by app and outcome (ok, aborted, rolled_back: a canary taken back).",
            None,
            Counter,
            &reloads,
        )?;
        if !apps.is_empty() {
            let unit = Unit::Seconds;
            let mut metric = e.encode_descriptor(
                "reload_duration",
                "Duration of the rolling reloads that ended ok, by app.",
                Some(&unit),
                MetricType::Histogram,
            )?;
            for a in apps {
                let h = &a.reloads.durations;
                let buckets: Vec<(f64, u64)> = RELOAD_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(h.buckets.iter().copied())
                    .collect();
                let labels = app_label(a);
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<Labels>(h.sum, h.count, &buckets, None)?;
            }
        }
        let processes: Vec<(Labels, Usage)> = apps
            .iter()
            .flat_map(|a| {
                a.processes.iter().map(|p| {
                    let labels = vec![
                        ("app", a.name.clone()),
                        ("worker", p.name.clone()),
                        ("pid", p.pid.to_string()),
                    ];
                    (labels, p.usage)
                })
            })
            .collect();
        let rss: Vec<(Labels, u64)> = processes
            .iter()
            .map(|(l, u)| (l.clone(), u.rss_bytes))
            .collect();
        family(
            &mut e,
            "worker_resident_memory",
            "Resident memory of a worker's process group (the worker and the processes it started).",
            Some(Unit::Bytes),
            Gauge,
            &rss,
        )?;
        let cpu: Vec<(Labels, f64)> = processes
            .into_iter()
            .map(|(l, u)| (l, u.cpu_seconds))
            .collect();
        family(
            &mut e,
            "worker_cpu",
            "CPU time of a worker's process group, its reaped children included.",
            Some(Unit::Seconds),
            Counter,
            &cpu,
        )?;
        let holders: Vec<(Labels, u64)> = apps
            .iter()
            .filter_map(|a| Some((app_label(a), u64::from(a.singleton_holder?))))
            .collect();
        family(
            &mut e,
            "singleton_holder",
            "For each cluster singleton (scope = \"cluster\"): 1 while this host holds its lease \
             and runs it, 0 while it stands by.",
            None,
            Gauge,
            &holders,
        )?;
        let t = &self.config_job_ticks;
        let ticks: Vec<(Labels, u64)> = [
            ("run", t.ticks_run),
            ("claimed_elsewhere", t.ticks_skipped_claimed_elsewhere),
            ("overlap", t.ticks_skipped_overlap),
            ("backend_down", t.ticks_backend_down),
            ("missed", t.ticks_missed),
        ]
        .into_iter()
        .map(|(result, n)| (vec![("result", result.to_string())], n))
        .collect();
        family(
            &mut e,
            "config_job_ticks",
            "Ticks of the [[job]] tables this supervisor scheduled, by result: run here (manual \
             `jobs run` runs included), claimed by another supervisor, skipped for overlap, \
             skipped because the lock backend was down (never run unguarded), missed.",
            None,
            Counter,
            &ticks,
        )?;
        let logs = |f: &dyn Fn(&crate::logs::AppCounts) -> Vec<(&'static str, u64)>| {
            self.logs
                .iter()
                .flat_map(|c| {
                    f(c).into_iter().map(|(reason, n)| {
                        let mut l = vec![("app", c.app.clone())];
                        if !reason.is_empty() {
                            l.push(("reason", reason.to_string()));
                        }
                        (l, n)
                    })
                })
                .collect::<Vec<(Labels, u64)>>()
        };
        family(
            &mut e,
            "log_lines_written",
            "Lines of the app's output written to its log files.",
            None,
            Counter,
            &logs(&|c| vec![("", c.written)]),
        )?;
        family(
            &mut e,
            "log_lines_dropped",
            "Lines of the app's output dropped, by reason: rate_limit (a worker wrote more than \
             log_rate_lines or log_rate_bytes), write_error (a file could not be opened or \
             written).",
            None,
            Counter,
            &logs(&|c| {
                vec![
                    ("rate_limit", c.dropped_rate),
                    ("write_error", c.dropped_error),
                ]
            }),
        )?;
        if let Some(jobs) = &self.jobs {
            encode_jobs(&mut e, jobs)?;
        }
        Ok(())
    }
}

fn encode_jobs(e: &mut DescriptorEncoder, jobs: &JobsMetrics) -> Result<(), std::fmt::Error> {
    let none: Labels = Vec::new();
    family(
        e,
        "jobs_backend_up",
        "Whether the cron lock backend (Redis or the local state dir) answered this scrape in time.",
        None,
        MetricType::Gauge,
        &[(none.clone(), u64::from(jobs.backend_up))],
    )?;
    let healthy: Vec<(Labels, u64)> = jobs
        .backend_healthy
        .map(|h| (none.clone(), u64::from(h)))
        .into_iter()
        .collect();
    family(
        e,
        "jobs_backend_healthy",
        "Whether the cron lock backend's topology shows no problem (every node up, enough \
         replicas in sync for min_replicas_ack, sentinels or shards reachable); absent when it \
         could not be read.",
        None,
        MetricType::Gauge,
        &healthy,
    )?;
    family(
        e,
        "jobs_backend_failovers",
        "Failovers of the Redis Sentinel or Cluster deployment behind the cron lock backend that \
         this supervisor followed (a new master for its jobs, singletons or scrapes).",
        None,
        MetricType::Counter,
        &[(none, jobs.failovers_seen)],
    )?;
    let runs: Vec<(Labels, u64)> = jobs
        .jobs
        .iter()
        .flat_map(|j| {
            j.recent_runs.iter().map(|(outcome, n)| {
                (
                    vec![("job", j.name.clone()), ("outcome", outcome.clone())],
                    *n,
                )
            })
        })
        .collect();
    family(
        e,
        "job_recent_runs",
        "Runs of a cron job by outcome among the records the backend keeps (its last 100).",
        None,
        MetricType::Gauge,
        &runs,
    )?;
    let last: Vec<(Labels, f64)> = jobs
        .jobs
        .iter()
        .filter_map(|j| Some((vec![("job", j.name.clone())], j.last_run_start?)))
        .collect();
    family(
        e,
        "job_last_run_timestamp",
        "When a cron job's newest recorded run started, in Unix seconds.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        &last,
    )
}

#[cfg(test)]
mod tests;
