//! The lease tasks of cluster singletons (`scope = "cluster"`): one task per such app holds or
//! waits for the app's lease in the cron backend ([`cronlock::singleton`]) and reports to the
//! daemon as [`LeaseEvent`]s; the core decides what runs. The tasks are the only place that talks
//! to the backend for singletons, so the daemon's loop never waits on Redis.
//!
//! - **Standing by**: try to take the lease every `standby_poll` (default ttl/3); report who
//!   holds it when that changes.
//! - **Holding**: renew every ttl/3 (compare-and-pexpire). The lease is valid until the TTL
//!   after the last renewal that succeeded, counted from when it was *sent* (Redis starts the
//!   TTL later, so this errs early). A renewal that is refused, or that has not succeeded by
//!   ttl - ttl/3 after the last good one, is [`LeaseEvent::Lost`]: the core drains the workers
//!   and kills them a margin before that deadline (self-fencing). The task then waits until the
//!   old lease would have expired before it tries again, so this host never overlaps itself.
//! - **Release** (after a stop, once the workers are gone): compare-and-delete, so another host
//!   takes over at its next poll instead of after the TTL.

use std::sync::Arc;
use std::time::Duration;

use cronlock::{Acquire, Contender, SingletonLease, SingletonLeases};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::SingletonPolicy;
use crate::core::{AppId, LeaseEvent};

/// A renewal that failed (an error, not a refusal) is retried after this, while time is left.
const RETRY: Duration = Duration::from_millis(200);

/// One app's lease task.
#[derive(Debug)]
struct LeaseTask {
    app: AppId,
    release: Option<mpsc::UnboundedSender<()>>,
    released: bool,
    handle: JoinHandle<()>,
}

/// Every singleton's lease task.
#[derive(Debug, Default)]
pub struct LeaseTasks {
    tasks: Vec<LeaseTask>,
    /// The backend and this host as a contender, for the tasks started later (a singleton
    /// added by a reload, or started again by hand); made on first use when no singleton ran
    /// at start.
    backend: Option<(Arc<SingletonLeases>, Contender)>,
    /// Where the tasks report.
    events: Option<mpsc::UnboundedSender<(AppId, LeaseEvent)>>,
}

impl LeaseTasks {
    /// Tasks that report on `events`, on `backend` once there is one.
    pub fn new(
        events: mpsc::UnboundedSender<(AppId, LeaseEvent)>,
        backend: Option<(Arc<SingletonLeases>, Contender)>,
    ) -> LeaseTasks {
        LeaseTasks {
            tasks: Vec::new(),
            backend,
            events: Some(events),
        }
    }

    /// The backend on `url`, made now if need be (calls bounded well inside `policy`'s
    /// renewal period).
    fn backend(
        &mut self,
        url: &str,
        policy: SingletonPolicy,
    ) -> Result<(Arc<SingletonLeases>, Contender), String> {
        if let Some(b) = &self.backend {
            return Ok(b.clone());
        }
        let timeout = policy
            .renew_every()
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        let leases = SingletonLeases::from_url(url, timeout).map_err(|e| {
            format!(
                "cluster singletons: lease backend {}: {e}",
                cronlock::redact_url(url)
            )
        })?;
        let b = (Arc::new(leases), Contender::current());
        self.backend = Some(b.clone());
        Ok(b)
    }

    /// Whether a lease task can be started on `url` (an app added by a reload is refused
    /// otherwise).
    pub fn can_watch(&mut self, url: &str, policy: SingletonPolicy) -> Result<(), String> {
        self.backend(url, policy).map(|_| ())
    }

    /// Starts the lease task of app `app` again, or for the first time.
    pub fn watch(
        &mut self,
        url: &str,
        app: AppId,
        name: String,
        policy: SingletonPolicy,
    ) -> Result<(), String> {
        let (leases, me) = self.backend(url, policy)?;
        let Some(events) = self.events.clone() else {
            return Err("no lease events channel".into());
        };
        self.tasks
            .retain(|t| t.app != app || !t.handle.is_finished());
        tracing::info!(app = %name, backend = %leases.describe(), "cluster singleton: watching its lease");
        self.spawn(app, name, policy, leases, me, events);
        Ok(())
    }
    /// Starts the lease task of app `app` named `name`; it reports on `events`.
    pub fn spawn(
        &mut self,
        app: AppId,
        name: String,
        policy: SingletonPolicy,
        leases: Arc<SingletonLeases>,
        me: Contender,
        events: mpsc::UnboundedSender<(AppId, LeaseEvent)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            app,
            name,
            policy,
            leases,
            me,
            events,
            release: rx,
        };
        self.tasks.push(LeaseTask {
            app,
            release: Some(tx),
            released: false,
            handle: tokio::spawn(task.run()),
        });
    }

    /// Asks app `app`'s task to give its lease back and stop (its workers are gone).
    pub fn release(&mut self, app: AppId) {
        for t in self.tasks.iter_mut().filter(|t| t.app == app) {
            if let Some(tx) = t.release.take() {
                let _ = tx.send(());
                t.released = true;
            }
        }
    }

    /// At exit: waits (at most `timeout`) for the releases asked for to reach the backend;
    /// the other tasks are dropped (their leases expire after the TTL).
    pub async fn finish(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for t in self.tasks {
            if t.released {
                let mut handle = t.handle;
                if tokio::time::timeout_at(deadline, &mut handle)
                    .await
                    .is_err()
                {
                    handle.abort();
                }
            } else {
                t.handle.abort();
            }
        }
    }
}

struct Task {
    app: AppId,
    name: String,
    policy: SingletonPolicy,
    leases: Arc<SingletonLeases>,
    me: Contender,
    events: mpsc::UnboundedSender<(AppId, LeaseEvent)>,
    release: mpsc::UnboundedReceiver<()>,
}

/// How holding a lease ended.
enum Held {
    /// Released on request: the task is done.
    Released,
    /// Lost; the old lease is valid until then at the latest.
    Lost(Instant),
}

impl Task {
    fn report(&self, event: LeaseEvent) {
        let _ = self.events.send((self.app, event));
    }

    async fn run(mut self) {
        let mut seen: Option<Option<(String, u64)>> = None;
        let mut last_error: Option<String> = None;
        loop {
            // Bounded by the backend's own deadline; never cut short, so that a lease taken
            // at the instant a release is asked for is released, not left to expire.
            let sent = Instant::now();
            match self
                .leases
                .acquire(&self.name, &self.me, self.policy.lease_ttl)
                .await
            {
                Ok(Acquire::Acquired(lease)) => {
                    last_error = None;
                    seen = None;
                    match self.hold(lease, sent).await {
                        Held::Released => return,
                        Held::Lost(until) => {
                            // Wait out the old lease: its workers are gone by then.
                            if self.sleep_until(until).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
                Ok(Acquire::Held(holder)) => {
                    last_error = None;
                    let holder = holder.map(|h| (h.host_pid(), h.token));
                    if seen.as_ref() != Some(&holder) {
                        self.report(LeaseEvent::Standby {
                            holder: holder.clone(),
                        });
                        seen = Some(holder);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(app = %self.name, "cluster singleton: cannot take the lease: {text}; standing by");
                        last_error = Some(text);
                    }
                }
            }
            if self
                .sleep_until(crate::core::later(Instant::now(), self.policy.standby_poll))
                .await
            {
                return;
            }
        }
    }

    /// Sleeps until `at`; `true` if a release was asked for meanwhile (nothing is held).
    async fn sleep_until(&mut self, at: Instant) -> bool {
        tokio::select! {
            _ = self.release.recv() => true,
            () = tokio::time::sleep_until(at) => false,
        }
    }

    /// Holds `lease` (acquired by a call sent at `sent`) until it is released or lost.
    async fn hold(&mut self, lease: SingletonLease, sent: Instant) -> Held {
        let ttl = self.policy.lease_ttl;
        let every = self.policy.renew_every();
        let mut valid_until = sent + ttl;
        let mut next = sent + every;
        self.report(LeaseEvent::Acquired {
            token: lease.token,
            holder: lease.holder.host_pid(),
        });
        let mut last_error: Option<String> = None;
        loop {
            // Lost when the last good renewal is ttl - ttl/3 old.
            let fence_at = valid_until - every;
            let wake = next.min(fence_at);
            let released = tokio::select! {
                _ = self.release.recv() => true,
                () = tokio::time::sleep_until(wake) => false,
            };
            if released {
                return self.give_back(&lease).await;
            }
            if Instant::now() >= fence_at {
                return self.lost(
                    valid_until,
                    "no renewal succeeded in time (backend unreachable or too slow)".into(),
                );
            }
            let sent = Instant::now();
            let outcome = tokio::select! {
                r = self.leases.renew(&lease) => Some(r),
                () = tokio::time::sleep_until(fence_at) => None,
            };
            match outcome {
                Some(Ok(true)) => {
                    if last_error.take().is_some() {
                        tracing::info!(app = %self.name, "cluster singleton: lease renewed again");
                    }
                    valid_until = sent + ttl;
                    next = sent + every;
                }
                Some(Ok(false)) => {
                    return self.lost(
                        valid_until,
                        "the backend refused the renewal: the lease expired or is another host's"
                            .into(),
                    );
                }
                Some(Err(e)) => {
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(app = %self.name, "cluster singleton: cannot renew the lease: {text}; retrying until {} before it expires", crate::units::span(every));
                        last_error = Some(text);
                    }
                    next = Instant::now() + RETRY.min(every);
                }
                None => {
                    return self.lost(
                        valid_until,
                        "no renewal succeeded in time (backend unreachable or too slow)".into(),
                    );
                }
            }
        }
    }

    fn lost(&self, expires_at: Instant, reason: String) -> Held {
        self.report(LeaseEvent::Lost { expires_at, reason });
        Held::Lost(expires_at)
    }

    async fn give_back(&self, lease: &SingletonLease) -> Held {
        match self.leases.release(lease).await {
            Ok(true) => {
                tracing::info!(app = %self.name, token = lease.token, "cluster singleton: lease released; another host may take over now");
            }
            Ok(false) => {
                tracing::warn!(app = %self.name, "cluster singleton: the lease was no longer ours at release");
            }
            Err(e) => {
                tracing::warn!(app = %self.name, "cluster singleton: cannot release the lease ({e}); it expires after its TTL");
            }
        }
        self.report(LeaseEvent::Released);
        Held::Released
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use super::*;

    fn policy() -> SingletonPolicy {
        SingletonPolicy {
            lease_ttl: Duration::from_millis(600),
            standby_poll: Duration::from_millis(50),
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(AppId, LeaseEvent)>) -> LeaseEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a lease event within 5 s")
            .expect("the task is alive")
            .1
    }

    /// Two supervisors' tasks on one local directory: one holds, the other stands by seeing
    /// it, and takes over right after the holder releases.
    #[tokio::test]
    async fn one_task_holds_the_other_stands_by_and_takes_over_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let leases = Arc::new(SingletonLeases::from_url(&url, Duration::from_secs(1)).unwrap());
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let mut first = LeaseTasks::default();
        first.spawn(
            0,
            "consumer".into(),
            policy(),
            Arc::clone(&leases),
            Contender::new("one", 1),
            tx1,
        );
        let LeaseEvent::Acquired { token, holder } = next(&mut rx1).await else {
            panic!("the first task takes the free lease");
        };
        assert_eq!(holder, "one:1");
        let mut second = LeaseTasks::default();
        second.spawn(
            0,
            "consumer".into(),
            policy(),
            Arc::clone(&leases),
            Contender::new("two", 2),
            tx2,
        );
        assert_eq!(
            next(&mut rx2).await,
            LeaseEvent::Standby {
                holder: Some(("one:1".into(), token))
            }
        );
        // Held for longer than the TTL: renewed, never lost.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(rx1.try_recv().is_err(), "nothing but Acquired so far");
        assert!(rx2.try_recv().is_err(), "standby reported once");
        first.release(0);
        assert_eq!(next(&mut rx1).await, LeaseEvent::Released);
        first.finish(Duration::from_secs(1)).await;
        let LeaseEvent::Acquired { token: t2, holder } = next(&mut rx2).await else {
            panic!("the second task takes over");
        };
        assert_eq!(holder, "two:2");
        assert!(t2 > token);
        second.release(0);
        assert_eq!(next(&mut rx2).await, LeaseEvent::Released);
        second.finish(Duration::from_secs(1)).await;
        assert_eq!(leases.holder("consumer").await.unwrap(), None);
    }
}
