//! A worker's health beyond its exit: systemd's watchdog (`watchdog`: a ready worker must send
//! `WATCHDOG=1` at least once per period; a miss, or `WATCHDOG=trigger`, marks it hung and it is
//! replaced the graceful way, before any other replacement: see `recycle`), the event loop's lag
//! a Node worker reports with its heartbeat, and the age limit (`max_age`) checked on the sample
//! tick.

use std::time::Duration;

use tokio::time::Instant;

use super::App;
use crate::core::{Action, TimerKey, WorkerId, WorkerState, later};

impl App {
    /// Its `max_age`, if it has one (the supervisor runs its sample tick while some app does).
    pub fn max_age(&self) -> Option<Duration> {
        self.settings.age.max_age
    }

    /// (Re)arms the watchdog of worker `id`, if its app has one: it is hung one period from now
    /// unless it pings again.
    pub(super) fn arm_watchdog(&mut self, id: WorkerId, now: Instant) {
        if let Some(period) = self.workers.get(&id).and_then(|w| w.spec.watchdog) {
            self.out.push(Action::Arm {
                timer: TimerKey::Watchdog(id),
                at: later(now, period),
            });
        }
    }

    /// The worker's watchdog is of no more use (it drains or is gone).
    pub(super) fn disarm_watchdog(&mut self, id: WorkerId) {
        if self
            .workers
            .get(&id)
            .is_some_and(|w| w.spec.watchdog.is_some())
        {
            self.out.push(Action::Cancel(TimerKey::Watchdog(id)));
        }
    }

    /// `WATCHDOG=1` (or `WATCHDOG=trigger`) from worker `id`. Pings before it is ready do not
    /// count: the period starts when it is ready (the ready timeout covers the start).
    pub(super) fn watchdog_ping(&mut self, id: WorkerId, trigger: bool, now: Instant) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if w.state != WorkerState::Ready || w.hung || w.spec.watchdog.is_none() {
            return;
        }
        if trigger {
            self.hang(id, "asked to be replaced (WATCHDOG=trigger)".into(), now);
        } else {
            self.arm_watchdog(id, now);
        }
    }

    /// The watchdog of worker `id` expired.
    pub(super) fn watchdog_missed(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        let Some(period) = w.spec.watchdog else {
            return;
        };
        if w.state != WorkerState::Ready {
            return;
        }
        if w.hung {
            // Its replacement failed: try again.
            self.maybe_recycle(now);
            return;
        }
        let why = format!(
            "sent no WATCHDOG=1 for {} (its watchdog)",
            crate::units::span(period)
        );
        self.hang(id, why, now);
    }

    /// Marks worker `id` hung and starts its replacement (or queues it behind the one under way).
    fn hang(&mut self, id: WorkerId, why: String, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.hung = true;
        self.watchdog_timeouts += 1;
        let (slot, pid) = (w.slot, w.pid.unwrap_or(0));
        tracing::warn!(worker = %w.name, pid, "hung: {why}");
        self.canary_failed(slot, format!("(pid {pid}) is hung: {why}"), now);
        self.maybe_recycle(now);
    }

    /// The lag the worker's event loop reported.
    pub(super) fn event_loop_lag(&mut self, id: WorkerId, lag: Duration) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.event_loop_lag = Some(lag);
        }
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
