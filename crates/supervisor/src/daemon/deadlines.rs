//! The shell's one deadline queue: at most one deadline per [`TimerKey`] the core armed, ordered
//! by time; the event loop sleeps until the earliest and hands the due keys back to the core.

use std::collections::{BTreeSet, HashMap};

use tokio::time::Instant;

use crate::core::TimerKey;

/// Pending deadlines: one per key, ordered by time.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    by_time: BTreeSet<(Instant, TimerKey)>,
    by_key: HashMap<TimerKey, Instant>,
}

impl Deadlines {
    /// Arms `key` for `at`, replacing its earlier deadline.
    pub(super) fn arm(&mut self, key: TimerKey, at: Instant) {
        self.cancel(key);
        self.by_time.insert((at, key));
        self.by_key.insert(key, at);
    }

    /// Forgets `key`'s deadline, if armed.
    pub(super) fn cancel(&mut self, key: TimerKey) {
        if let Some(at) = self.by_key.remove(&key) {
            self.by_time.remove(&(at, key));
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns the keys due at `now`, earliest first.
    pub(super) fn due(&mut self, now: Instant) -> Vec<TimerKey> {
        let mut keys = Vec::new();
        while let Some(&(at, key)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&key);
            keys.push(key);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keys_come_due_in_time_order_once_each() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.arm(TimerKey::Kill(2), t0 + Duration::from_secs(2));
        d.arm(TimerKey::Ready(1), t0 + Duration::from_secs(1));
        d.arm(TimerKey::MemorySample, t0 + Duration::from_secs(3));
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(d.due(t0), vec![]);
        assert_eq!(
            d.due(t0 + Duration::from_secs(2)),
            vec![TimerKey::Ready(1), TimerKey::Kill(2)]
        );
        assert_eq!(d.due(t0 + Duration::from_secs(2)), vec![]);
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn arming_again_moves_a_deadline_and_cancel_forgets_it() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.arm(TimerKey::Ready(1), t0 + Duration::from_secs(1));
        d.arm(TimerKey::Ready(1), t0 + Duration::from_secs(5));
        assert_eq!(d.due(t0 + Duration::from_secs(4)), vec![]);
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(5)));
        d.cancel(TimerKey::Ready(1));
        d.cancel(TimerKey::Ready(9));
        assert_eq!(d.next(), None);
        assert_eq!(d.due(t0 + Duration::from_secs(10)), vec![]);
    }
}
