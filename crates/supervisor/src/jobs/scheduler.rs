//! The supervisor's own cron scheduler for the `[[job]]` tables: a cronlock [`Scheduler`] on the
//! same backend as the workers' (`[cron]`), run as its own tokio tasks so the daemon's event loop
//! never waits on the backend. A reload that changes the jobs starts a new scheduler and stops
//! the old one without cutting its running jobs short; a supervisor stop ends scheduling at once,
//! lets running commands finish within the longest `kill_timeout`, then stops them.

use std::sync::Arc;
use std::time::Duration;

use cronlock::{Backend, Identity, Job, Scheduler, StatsSnapshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::command::CommandJob;
use super::http::{HttpJob, Target};
use super::{Runner, STOP_GRACE, Stops};
use crate::config::{Config, JobAction, JobConfig};
use crate::orphans::OwnChildren;
use crate::sys::listeners::BoundListener;

/// A `[[job]]` ready to run: its config plus, for an http job, where the request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedJob {
    /// The validated table.
    pub config: JobConfig,
    /// The resolved listener of an http job's app.
    pub target: Option<Target>,
}

/// A bound listener as a place to connect to (a wildcard address is reached on loopback).
fn target_of(listener: &BoundListener) -> Option<Target> {
    if let Some(p) = listener.unix_path() {
        return Some(Target::Unix(p.to_path_buf()));
    }
    let mut addr: std::net::SocketAddr = listener.local.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(Target::Tcp(addr))
}

/// The jobs of `config` against the running apps (`first_listener` gives an app's first bound
/// listener, by name): an http job whose app has no listener open (stopped) is left out with a
/// warning.
pub fn prepare<'a>(
    config: &Config,
    first_listener: impl Fn(&str) -> Option<&'a BoundListener>,
) -> Vec<PreparedJob> {
    let mut out = Vec::with_capacity(config.jobs.len());
    for job in &config.jobs {
        let target = match &job.action {
            JobAction::Command { .. } => None,
            JobAction::Http { app, .. } => match first_listener(app).and_then(target_of) {
                Some(t) => Some(t),
                None => {
                    tracing::warn!(
                        job = %job.spec.name,
                        app = %app,
                        "job left out: its app has no listener open (it is stopped: `supervisor start` it, then reload)"
                    );
                    continue;
                }
            },
        };
        out.push(PreparedJob {
            config: job.clone(),
            target,
        });
    }
    out
}

/// The cronlock job of a prepared `[[job]]` (`None` for an http job without a target, which
/// [`prepare`] never yields); a command lists its runs' pids in `children`.
fn cron_job(
    p: &PreparedJob,
    stops: &Stops,
    children: &OwnChildren,
    secret: &Arc<str>,
) -> Option<Job> {
    let c = &p.config;
    match (&c.action, &p.target) {
        (
            JobAction::Command {
                program,
                args,
                env,
                cwd,
                app,
                confine,
            },
            _,
        ) => Some(job_of(
            c,
            CommandJob {
                program: program.clone(),
                args: args.clone(),
                env: env.clone(),
                cwd: cwd.clone(),
                app: app.clone(),
                confine: (**confine).clone(),
                timeout: c.timeout,
                kill_timeout: c.kill_timeout,
                lease_ttl: c.spec.lease_ttl,
                children: children.clone(),
            },
            stops,
        )),
        (JobAction::Http { method, path, app }, Some(target)) => Some(job_of(
            c,
            HttpJob {
                method: method.clone(),
                path: path.clone(),
                app: app.clone(),
                target: target.clone(),
                timeout: c.timeout,
                secret: Arc::clone(secret),
            },
            stops,
        )),
        (JobAction::Http { .. }, None) => None,
    }
}

/// The cronlock job of table `c` that hands each run to `runner`.
fn job_of(c: &JobConfig, runner: impl Runner, stops: &Stops) -> Job {
    let runner = Arc::new(runner);
    let stops = stops.clone();
    Job::new(c.spec.clone(), move |ctx| {
        Arc::clone(&runner).run(ctx, stops.clone())
    })
}

/// One running scheduler.
#[derive(Debug)]
struct Running {
    jobs: Vec<PreparedJob>,
    shutdown: CancellationToken,
    task: JoinHandle<StatsSnapshot>,
}

/// The `[[job]]` scheduler of a supervisor: the current one, the ones a reload replaced (still
/// finishing their runs), and the stop tokens of every run.
#[derive(Debug)]
pub struct ConfigJobs {
    cron_url: String,
    /// Made when the first job is scheduled: a config without jobs never touches the backend.
    backend: Option<Backend>,
    current: Option<Running>,
    retiring: Vec<JoinHandle<StatsSnapshot>>,
    stops: Stops,
    /// The shell's own children, where every command run lists its pid.
    children: OwnChildren,
    /// What every http job's request carries ([`crate::runtimes::JOB_SECRET_HEADER`]).
    secret: Arc<str>,
    /// The longest `kill_timeout` of any job started so far: what a stop waits before stopping
    /// running commands.
    longest_kill: Duration,
    stopping: bool,
    /// The counters of every scheduler started so far (a reload starts a new one).
    stats: Vec<Arc<cronlock::Stats>>,
}

impl ConfigJobs {
    /// Starts scheduling `jobs` on the backend at `cron_url` (nothing runs when there are none);
    /// every command run, of these jobs and of those a reload brings, lists its pid in `children`.
    pub fn start(
        cron_url: &str,
        jobs: Vec<PreparedJob>,
        children: OwnChildren,
        secret: &str,
    ) -> Result<ConfigJobs, cronlock::Error> {
        let mut me = ConfigJobs {
            cron_url: cron_url.to_string(),
            backend: None,
            current: None,
            retiring: Vec::new(),
            stops: Stops::default(),
            children,
            secret: secret.into(),
            longest_kill: Duration::ZERO,
            stopping: false,
            stats: Vec::new(),
        };
        me.launch(jobs)?;
        Ok(me)
    }

    fn launch(&mut self, jobs: Vec<PreparedJob>) -> Result<(), cronlock::Error> {
        if jobs.is_empty() {
            return Ok(());
        }
        let backend = match &self.backend {
            Some(b) => b.clone(),
            None => {
                let b = Backend::from_url(&self.cron_url)?;
                self.backend = Some(b.clone());
                b
            }
        };
        let mut scheduler = Scheduler::new(backend, Identity::current());
        for p in &jobs {
            if let Some(job) = cron_job(p, &self.stops, &self.children, &self.secret) {
                scheduler.add(job)?;
            }
            self.longest_kill = self.longest_kill.max(p.config.kill_timeout);
        }
        // The scheduler's own drain is never what ends a run: a replaced scheduler lets its runs
        // go on to their timeout, and a supervisor stop ends them through `stops`.
        let drain = jobs
            .iter()
            .map(|p| p.config.timeout.saturating_add(p.config.kill_timeout))
            .max()
            .unwrap_or_default()
            .saturating_add(Duration::from_secs(5));
        let shutdown = CancellationToken::new();
        let names: Vec<&str> = jobs.iter().map(|p| p.config.spec.name.as_str()).collect();
        tracing::info!(jobs = %names.join(", "), "scheduling [[job]] tables");
        self.stats.push(scheduler.stats());
        let task = tokio::spawn(scheduler.run(shutdown.clone(), drain));
        self.current = Some(Running {
            jobs,
            shutdown,
            task,
        });
        Ok(())
    }

    /// What became of the ticks of every job scheduled so far (summed over the schedulers that
    /// reloads replaced).
    pub fn ticks(&self) -> cronlock::StatsSnapshot {
        self.stats.iter().map(|s| s.snapshot()).sum()
    }

    /// The stop tokens every run watches (to kill them while [`ConfigJobs::finish`] waits).
    pub fn stops(&self) -> Stops {
        self.stops.clone()
    }

    /// The jobs scheduled now.
    pub fn jobs(&self) -> &[PreparedJob] {
        self.current.as_ref().map_or(&[], |r| r.jobs.as_slice())
    }

    /// After a reload read the file: if the set of jobs changed, the current scheduler stops
    /// taking ticks (its running jobs go on until they finish) and a new one takes over.
    pub fn replace(&mut self, jobs: Vec<PreparedJob>) {
        if self.stopping || jobs == self.jobs() {
            return;
        }
        if let Some(old) = self.current.take() {
            old.shutdown.cancel();
            self.retiring.push(old.task);
        }
        self.retiring.retain(|t| !t.is_finished());
        let n = jobs.len();
        match self.launch(jobs) {
            Ok(()) => tracing::info!(jobs = n, "[[job]] tables reloaded"),
            // Validated with the config; cannot fail unless cronlock's rules changed.
            Err(e) => tracing::error!(error = %e, "[[job]] tables not reloaded"),
        }
    }

    /// Supervisor stop: no new tick from now on; running commands get the longest `kill_timeout`
    /// to finish, then SIGTERM and, [`STOP_GRACE`] later, SIGKILL.
    pub fn stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        if let Some(r) = &self.current {
            r.shutdown.cancel();
        }
        let term = self.stops.term.clone();
        let wait = self.longest_kill;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            term.cancel();
        });
    }

    /// Fast stop: no new tick, every running command killed now, requests cancelled.
    pub fn kill(&mut self) {
        self.stop();
        self.stops.term.cancel();
        self.stops.kill.cancel();
    }

    /// Stops (if not yet) and waits until every scheduler recorded its last runs, at most as
    /// long as a stop takes plus a margin.
    pub async fn finish(mut self) {
        self.stop();
        let bound = self
            .longest_kill
            .saturating_add(STOP_GRACE + Duration::from_secs(10));
        let mut tasks = self.retiring;
        tasks.extend(self.current.take().map(|r| r.task));
        if tasks.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!("[[job]] runs did not finish recording in time");
        }
    }
}
