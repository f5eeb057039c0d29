//! A cluster singleton (`scope = "cluster"`) runs its slots only while this host holds its
//! lease: it waits in [`Phase::Standby`] until [`LeaseEvent::Acquired`], starts every slot with
//! the fencing token, and on [`LeaseEvent::Lost`] fences itself: every worker drains at once and
//! is killed no later than the lease's expiry minus a margin (or its kill timeout, if sooner),
//! and the app stands by again. A reload keeps the lease; a stop releases it once the workers
//! are gone ([`Action::ReleaseLease`]).

use tokio::time::Instant;

use super::App;
use super::reload::Reloading;
use super::slots::SlotState;
use crate::core::{
    Action, AppSettings, LeaseEvent, Phase, Signal, SingletonRole, TimerKey, WorkerId,
    lease_kill_margin,
};

/// A cluster singleton's lease, as this host knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LeaseState {
    /// The fencing token while this host holds the lease.
    pub(super) token: Option<u64>,
    /// The holder (`host:pid`) and its token, as last seen.
    pub(super) holder: Option<(String, u64)>,
}

/// A cluster singleton's lease for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingletonView {
    /// Holder or standby.
    pub role: SingletonRole,
    /// The holder (`host:pid`), if known.
    pub holder: Option<String>,
    /// The holder's fencing token, if known.
    pub token: Option<u64>,
}

impl App {
    /// What its lease task reports: take over and start, stand by, fence, or released.
    pub(super) fn lease_event(&mut self, event: LeaseEvent, now: Instant) {
        let Some(lease) = &mut self.lease else {
            return;
        };
        match event {
            LeaseEvent::Acquired { token, holder } => {
                lease.token = Some(token);
                lease.holder = Some((holder, token));
                if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
                    // The shell releases it once the stop is done.
                    return;
                }
                tracing::info!(app = %self.name(), token, "cluster singleton: this host took the lease (fencing token {token}); starting its workers");
                if self.phase == Phase::Standby {
                    // A takeover, not the first start: workers that cannot be executed back
                    // off like crashed ones instead of ending the supervisor.
                    self.phase = Phase::Running;
                    for i in 0..self.slots.len() {
                        self.start_slot(i, now);
                    }
                }
                // Waiting: it starts once the apps it is `after` are up, with the lease.
            }
            LeaseEvent::Standby { holder } => {
                if lease.token.is_none() && lease.holder != holder {
                    if let Some((h, t)) = &holder {
                        tracing::info!(app = %self.settings.spec.name, holder = %h, token = t, "cluster singleton: held by another host; standing by");
                    }
                    lease.holder = holder;
                }
            }
            LeaseEvent::Lost { expires_at, reason } => {
                if lease.token.take().is_none() {
                    return;
                }
                lease.holder = None;
                let left = expires_at.saturating_duration_since(now);
                tracing::error!(
                    app = %self.name(),
                    workers = self.workers.len(),
                    "cluster singleton: lease lost ({reason}); self-fencing: every worker drains now and is killed before the lease expires in {}",
                    crate::units::span(left)
                );
                self.fence(expires_at, now);
            }
            LeaseEvent::Released => {
                tracing::info!(app = %self.name(), "cluster singleton: lease released");
            }
        }
    }

    /// The lease is lost: drain every worker, killed at the latest a margin before `expires_at`,
    /// and stand by (a stopping app goes on stopping, with the same deadline).
    fn fence(&mut self, expires_at: Instant, now: Instant) {
        if matches!(self.phase, Phase::Running | Phase::Starting) {
            self.phase = Phase::Standby;
            self.first_start = None;
            let why = "the cluster singleton lost its lease";
            self.cancel_recycle(why, now);
            if let Some(waiters) = self.queued_reload.take() {
                self.answer_aborted(waiters, why);
            }
            if matches!(self.reloading, Some(Reloading::Rolling(_))) {
                self.abort_reload(why.into(), now);
            }
            for i in 0..self.slots.len() {
                if matches!(self.slots[i].state, SlotState::BackingOff(_)) {
                    self.out.push(Action::Cancel(self.restart_key(i)));
                }
                self.slots[i].state = SlotState::Idle;
            }
        }
        let margin = self
            .settings
            .singleton
            .as_ref()
            .map_or(std::time::Duration::ZERO, lease_kill_margin);
        let deadline = expires_at
            .checked_sub(margin)
            .unwrap_or(expires_at)
            .max(now);
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.drain(id, now);
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.kill_at.is_none_or(|at| at > deadline) {
                w.kill_at = Some(deadline);
                if deadline <= now {
                    self.out.push(Action::Signal {
                        worker: id,
                        signal: Signal::KillGroup,
                    });
                } else {
                    self.out.push(Action::Arm {
                        timer: TimerKey::Kill(id),
                        at: deadline,
                    });
                }
            }
        }
    }

    /// Whether this host holds the app's cluster singleton lease.
    pub fn holds_lease(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.token.is_some())
    }
}

/// The lease state a new app starts with: none for a host app, not held for a singleton.
pub(super) fn settings_lease(settings: &AppSettings) -> Option<LeaseState> {
    settings.singleton.map(|_| LeaseState::default())
}
