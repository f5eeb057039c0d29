//! One run of a `[[job]] command`: fork/exec as a child of the supervisor in its own process
//! group (no listeners, no notification fd), output logged line by line in a `job{name pid}` span,
//! exit watched through its pidfd. A keeper task owns the child until it is reaped, so a run that
//! is dropped (lease lost, shutdown) still gets its process group killed and reaped.
//!
//! A running command's pid is listed in the shell's [`OwnChildren`] until it is reaped: the
//! sweep of adopted orphans must leave it alone (it is waited for through its own pidfd here,
//! like a worker).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cronlock::JobContext;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Runner, STOP_GRACE, Stops};
use crate::config::Confinement;
use crate::core::ExitStatus;
use crate::orphans::{OwnChildren, OwnKind, Registration};
use crate::sys::child;
use crate::sys::spawn::{self, Exec};

/// What a command job runs (from its `[[job]]` table), and where its pid is listed.
#[derive(Debug, Clone)]
pub struct CommandJob {
    /// Absolute program path.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Extra environment (the app's `env`).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The app it borrows its environment from, if any (`SUPERVISOR_APP`).
    pub app: Option<String>,
    /// That app's user and limits.
    pub confine: Confinement,
    /// Stop it (SIGTERM, then SIGKILL after `kill_timeout`) when it runs longer than this.
    pub timeout: Duration,
    /// SIGTERM to SIGKILL.
    pub kill_timeout: Duration,
    /// Its lease TTL: after a lost lease the process group is killed within a twelfth of it.
    pub lease_ttl: Duration,
    /// The shell's own children: each run's pid (= process group id) is listed there from its
    /// start until it is reaped.
    pub children: OwnChildren,
}

/// Sends the keeper "stop within this grace" on drop: a run future that is dropped kills its
/// process group at once.
struct KillOnDrop(mpsc::UnboundedSender<Duration>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Duration::ZERO);
    }
}

/// The environment of a job command: the supervisor's own (less the worker protocol's
/// variables), the app's `env`, then the job's variables.
fn environment(job: &CommandJob, ctx: &JobContext) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("LISTEN_") && k != "NOTIFY_SOCKET" && k != "READY_FD")
        .collect();
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(app) = &job.app {
        env.insert("SUPERVISOR_APP".into(), app.clone());
    }
    if let Some(user) = &job.confine.user {
        for (k, v) in user.env_vars() {
            if !job.env.contains_key(k) {
                env.insert(k.to_string(), v);
            }
        }
    }
    let vars = super::run_vars(ctx);
    env.extend(
        vars.into_iter()
            .map(|(k, v)| (format!("SUPERVISOR_JOB_{k}"), v)),
    );
    env.into_iter().collect()
}

impl Runner for CommandJob {
    /// Runs the command once; `Ok` on exit code 0, else why not (exit code, signal, timeout, stop).
    async fn run(self: Arc<Self>, ctx: JobContext, stops: Stops) -> Result<(), String> {
        let env = environment(&self, &ctx);
        let child = spawn::spawn_plain(Exec {
            program: &self.program,
            args: &self.args,
            env,
            cwd: &self.cwd,
            listeners: vec![],
            confine: spawn::Confine::of(&self.confine, None),
        })
        .map_err(|e| e.to_string())?;
        let pid = child.pid;
        let listed = self.children.register(pid, OwnKind::JobCommand);
        let span = tracing::info_span!("job", name = %ctx.job, pid);
        span.in_scope(|| tracing::info!(token = ctx.token, "started {}", self.program.display()));
        tokio::spawn(crate::logs::forward_output(child.stdout).instrument(span.clone()));
        tokio::spawn(crate::logs::forward_output(child.stderr).instrument(span.clone()));
        drop(child.ready);
        let (tx, rx) = mpsc::unbounded_channel();
        let _guard = KillOnDrop(tx.clone());
        let keeper =
            tokio::spawn(keep(pid, Arc::new(child.pidfd), rx, listed).instrument(span.clone()));
        tokio::pin!(keeper);

        // After a lost lease the run must be gone well before the lease expires (cronlock stops
        // waiting for it a twelfth of the TTL later): SIGKILL soon after SIGTERM.
        let cancel_grace = self
            .kill_timeout
            .min(Duration::from_secs(1))
            .min((self.lease_ttl / 12).max(Duration::from_millis(25)));
        let timeout = tokio::time::sleep(self.timeout);
        tokio::pin!(timeout);
        let mut why: Option<String> = None;
        let (mut timed_out, mut cancelled, mut terminated, mut killed) =
            (false, false, false, false);
        let status = loop {
            tokio::select! {
                r = &mut keeper => break r.unwrap_or(ExitStatus::Code(-1)),
                () = &mut timeout, if !timed_out => {
                    timed_out = true;
                    why.get_or_insert_with(|| format!(
                        "timed out after {}: stopped (SIGTERM, SIGKILL after {})",
                        humantime::format_duration(self.timeout),
                        humantime::format_duration(self.kill_timeout)
                    ));
                    let _ = tx.send(self.kill_timeout);
                }
                () = ctx.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    why.get_or_insert_with(|| "cancelled: the run must stop (lease lost or shutdown)".into());
                    let _ = tx.send(cancel_grace);
                }
                () = stops.term.cancelled(), if !terminated => {
                    terminated = true;
                    why.get_or_insert_with(|| "stopped: the supervisor is stopping".into());
                    let _ = tx.send(STOP_GRACE);
                }
                () = stops.kill.cancelled(), if !killed => {
                    killed = true;
                    why.get_or_insert_with(|| "killed: the supervisor is stopping fast".into());
                    let _ = tx.send(Duration::ZERO);
                }
            }
        };
        let ended = match status {
            ExitStatus::Code(0) => None,
            ExitStatus::Code(-1) => Some("exit status unknown (reaped elsewhere)".to_string()),
            ExitStatus::Code(c) => Some(format!("exit code {c}")),
            ExitStatus::Signal(s) => Some(format!("killed by signal {s}")),
        };
        span.in_scope(|| tracing::info!("exited: {}", ended.as_deref().unwrap_or("exit code 0")));
        match (why, ended) {
            (None, None) => Ok(()),
            (Some(why), Some(ended)) => Err(format!("{why}; {ended}")),
            (Some(why), None) => Err(format!("{why}; it exited 0")),
            (None, Some(ended)) => Err(ended),
        }
    }
}

/// Owns the child until it is reaped, then unlists it (`listed`). Each message on `stops` is a
/// grace: SIGTERM to the group now (the first time), SIGKILL once the shortest grace asked for
/// has passed.
async fn keep(
    pid: i32,
    pidfd: Arc<OwnedFd>,
    mut stops: mpsc::UnboundedReceiver<Duration>,
    listed: Registration,
) -> ExitStatus {
    let exit = child::watch_exit(pid, Arc::clone(&pidfd));
    tokio::pin!(exit);
    let mut termed = false;
    let mut kill_at: Option<Instant> = None;
    let mut open = true;
    loop {
        tokio::select! {
            status = &mut exit => {
                // watch_exit killed what was left of the group; the zombie goes now.
                child::reap(&pidfd);
                drop(listed);
                return status;
            }
            grace = stops.recv(), if open => match grace {
                Some(grace) => {
                    if !termed {
                        termed = true;
                        child::signal_group(pid, libc::SIGTERM);
                    }
                    let now = Instant::now();
                    let at = now.checked_add(grace).unwrap_or(now);
                    kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                }
                None => open = false,
            },
            () = sleep_until(kill_at) => {
                tracing::warn!("still running after SIGTERM: killing its process group");
                child::kill_group(pid);
                kill_at = None;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn job(script: &str, timeout: Duration) -> Arc<CommandJob> {
        Arc::new(CommandJob {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("FROM_APP".into(), "yes".into())]),
            cwd: PathBuf::from("/"),
            app: Some("web".into()),
            confine: Confinement::default(),
            timeout,
            kill_timeout: Duration::from_millis(300),
            lease_ttl: Duration::from_secs(3),
            children: OwnChildren::default(),
        })
    }

    fn ctx(cancel: CancellationToken) -> JobContext {
        crate::jobs::test_context(42, cancel)
    }

    #[tokio::test]
    async fn env_reaches_the_command_and_its_exit_code_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "echo \"$SUPERVISOR_JOB_NAME $SUPERVISOR_JOB_TICK $SUPERVISOR_JOB_TOKEN $SUPERVISOR_JOB_RUN $SUPERVISOR_APP $FROM_APP $(pwd)\" > {}; exit 3",
            out.display()
        );
        let r = job(&script, Duration::from_secs(10))
            .run(ctx(CancellationToken::new()), Stops::default())
            .await;
        assert_eq!(r, Err("exit code 3".to_string()));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "report 2026-11-30T02:30:00.000Z 42 2026-11-30T02:30:00.000Z web yes /"
        );
        let pidfile = dir.path().join("pid");
        let echo = job(
            &format!("echo $$ > {}", pidfile.display()),
            Duration::from_secs(10),
        );
        let r = Arc::clone(&echo)
            .run(ctx(CancellationToken::new()), Stops::default())
            .await;
        assert_eq!(r, Ok(()));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!echo.children.contains(pid), "reaped and unlisted");
    }

    #[tokio::test]
    async fn a_running_command_is_listed_in_the_shells_children_until_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let (pidfile, go) = (dir.path().join("pid"), dir.path().join("go"));
        let script = format!(
            "echo $$ > {p}.new; mv {p}.new {p}; while [ ! -e {g} ]; do sleep 0.01; done",
            p = pidfile.display(),
            g = go.display()
        );
        let waiting = job(&script, Duration::from_secs(10));
        let children = waiting.children.clone();
        let run =
            tokio::spawn(Arc::clone(&waiting).run(ctx(CancellationToken::new()), Stops::default()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let pid: i32 = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                break text.trim().parse().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the command never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(children.contains(pid), "listed while it runs");
        assert_eq!(children.pids_of(OwnKind::JobCommand), vec![pid]);
        std::fs::write(&go, "").unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, Ok(()));
        assert!(!children.contains(pid), "reaped and unlisted");
        assert!(children.pids_of(OwnKind::JobCommand).is_empty());
    }

    #[tokio::test]
    async fn a_timeout_kills_a_command_that_ignores_sigterm() {
        let started = std::time::Instant::now();
        let r = job("trap '' TERM; sleep 20", Duration::from_millis(200))
            .run(ctx(CancellationToken::new()), Stops::default())
            .await;
        let e = r.unwrap_err();
        assert!(
            e.starts_with("timed out after 200ms") && e.ends_with("killed by signal 9"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_cancelled_run_stops_within_a_twelfth_of_the_lease() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let started = std::time::Instant::now();
        let r = job("trap '' TERM; sleep 20", Duration::from_secs(60))
            .run(ctx(cancel), Stops::default())
            .await;
        let e = r.unwrap_err();
        assert!(
            e.starts_with("cancelled") && e.ends_with("killed by signal 9"),
            "{e}"
        );
        // 200 ms, then SIGKILL 3 s / 12 = 250 ms after SIGTERM.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
