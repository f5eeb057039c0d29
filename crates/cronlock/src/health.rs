//! The scheduler's view of its backend's reachability, so that an outage is logged as one story
//! instead of a warning per tick and per retry: one warning when the backend goes down (its
//! redacted URL and the error), a count at most every `report_every` while it stays down, one
//! info line when it answers again. Coming back also wakes whoever waits for it (the registry,
//! which re-registers the jobs at once: the backend may have lost them).

use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Reachability of one backend, fed by every operation of one scheduler.
#[derive(Debug)]
pub(crate) struct Health {
    backend: String,
    report_every: Duration,
    state: Mutex<State>,
    back: Notify,
}

#[derive(Debug)]
enum State {
    Up,
    Down(Outage),
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    last_report: Instant,
    skipped: u64,
    skipped_since_report: u64,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Health {
    /// `backend` is the redacted URL (or directory) to name in the log lines.
    pub(crate) fn new(backend: String, report_every: Duration) -> Self {
        Self {
            backend,
            report_every,
            state: Mutex::new(State::Up),
            back: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// An operation (`what`) failed; `ticks_skipped` ticks were not run because of it.
    pub(crate) fn failure(&self, what: &str, error: &dyn Display, ticks_skipped: u64) {
        let now = Instant::now();
        let mut state = self.state();
        match &mut *state {
            State::Up => {
                *state = State::Down(Outage {
                    since: now,
                    last_report: now,
                    skipped: ticks_skipped,
                    skipped_since_report: ticks_skipped,
                });
                tracing::warn!(
                    backend = %self.backend,
                    error = %error,
                    "cron backend unreachable ({what} failed): ticks are skipped, never run \
                     unguarded, until it answers again"
                );
            }
            State::Down(outage) => {
                outage.skipped += ticks_skipped;
                outage.skipped_since_report += ticks_skipped;
                let period = now - outage.last_report;
                if period >= self.report_every {
                    tracing::warn!(
                        backend = %self.backend,
                        error = %error,
                        "cron backend still unreachable after {}: {} ticks skipped in the last {}",
                        secs(now - outage.since),
                        outage.skipped_since_report,
                        secs(period)
                    );
                    outage.last_report = now;
                    outage.skipped_since_report = 0;
                } else {
                    tracing::debug!(backend = %self.backend, error = %error, "{what} failed");
                }
            }
        }
    }

    /// A tick was not run because the backend failed while claiming it.
    pub(crate) fn tick_skipped(&self, error: &dyn Display) {
        self.failure("claiming a tick", error, 1);
    }

    /// An operation succeeded: the backend answers.
    pub(crate) fn success(&self) {
        let mut state = self.state();
        if let State::Down(outage) = &*state {
            tracing::info!(
                backend = %self.backend,
                "cron backend reachable again after {}; {} ticks skipped",
                secs(outage.since.elapsed()),
                outage.skipped
            );
            *state = State::Up;
            drop(state);
            self.back.notify_one();
        }
    }

    /// Completes once the backend answers again after an outage (a permit is kept if nobody was
    /// waiting when it came back).
    pub(crate) async fn came_back(&self) {
        self.back.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn down_reported_once_then_counted_then_back() {
        let h = Health::new("redis://h/0".into(), Duration::from_secs(30));
        h.success();
        for _ in 0..70 {
            h.tick_skipped(&"refused");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let (skipped, since_report) = match &*h.state() {
            State::Down(o) => (o.skipped, o.skipped_since_report),
            State::Up => (0, 0),
        };
        // Down at 0 s, counts at 30 s and 60 s: the 9 ticks after that are not reported yet.
        assert_eq!((skipped, since_report), (70, 9));
        h.success();
        assert!(matches!(&*h.state(), State::Up));
        // The permit is kept for a waiter that comes later.
        tokio::time::timeout(Duration::from_millis(10), h.came_back())
            .await
            .unwrap_or_else(|_| panic!("no permit"));
    }
}
