//! Which control connections are served, decided without I/O. At most `max` connections are
//! open at once (each costs the supervisor a descriptor), and a new one always gets in: when all
//! are taken, the one that has waited longest for its next request is closed to make room. A
//! connection waiting for the daemon's answer is never closed for another. So no number of idle
//! or slow clients (3,000 connections sending nothing, 64 clients asking something every few
//! seconds) keeps the owner from an answer: its connection, whose request is already written
//! when it is accepted, is read at once and is not idle any more.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// A connection's number, given when it is admitted.
pub type ConnId = u64;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a (next) request since then: may be closed for a newcomer.
    Idle(Instant),
    /// A request is being answered: kept.
    Busy,
}

/// The served connections.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    next: ConnId,
    conns: BTreeMap<ConnId, State>,
}

/// The decision for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it as `id`; first close `evict` (the longest idle one), if set.
    Admit {
        /// The newcomer's number.
        id: ConnId,
        /// The connection to close to make room.
        evict: Option<ConnId>,
    },
    /// Every connection is busy: wait until one ends or becomes idle.
    Full,
}

impl Slots {
    /// At most `max` connections (at least one).
    pub fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            next: 0,
            conns: BTreeMap::new(),
        }
    }

    /// A new connection at `now`: admitted (idle, waiting for its request), if need be in
    /// place of the connection idle the longest; or [`Admission::Full`].
    pub fn admit(&mut self, now: Instant) -> Admission {
        let mut evict = None;
        if self.conns.len() >= self.max {
            let oldest = self
                .conns
                .iter()
                .filter_map(|(id, s)| match s {
                    State::Idle(since) => Some((*since, *id)),
                    State::Busy => None,
                })
                .min();
            let Some((_, id)) = oldest else {
                return Admission::Full;
            };
            self.conns.remove(&id);
            evict = Some(id);
        }
        let id = self.next;
        self.next += 1;
        self.conns.insert(id, State::Idle(now));
        Admission::Admit { id, evict }
    }

    /// Connection `id` has a request to answer.
    pub fn busy(&mut self, id: ConnId) {
        if let Some(s) = self.conns.get_mut(&id) {
            *s = State::Busy;
        }
    }

    /// Connection `id` waits for its next request from `now` on.
    pub fn idle(&mut self, id: ConnId, now: Instant) {
        if let Some(s) = self.conns.get_mut(&id) {
            *s = State::Idle(now);
        }
    }

    /// Connection `id` is closed.
    pub fn close(&mut self, id: ConnId) {
        self.conns.remove(&id);
    }

    /// Connections open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admitted(a: Admission) -> (ConnId, Option<ConnId>) {
        match a {
            Admission::Admit { id, evict } => (id, evict),
            Admission::Full => panic!("not admitted"),
        }
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_longest_idle_connection() {
        let t0 = Instant::now();
        let mut s = Slots::new(3);
        let ids: Vec<ConnId> = (0..3)
            .map(|i| admitted(s.admit(t0 + Duration::from_secs(i))).0)
            .collect();
        // The first one asked something and waits again since t0 + 10 s.
        s.busy(ids[0]);
        s.idle(ids[0], t0 + Duration::from_secs(10));
        let (new, evict) = admitted(s.admit(t0 + Duration::from_secs(11)));
        assert_eq!(evict, Some(ids[1]), "idle since t0 + 1 s: the longest");
        assert_eq!(s.len(), 3);
        let (_, evict) = admitted(s.admit(t0 + Duration::from_secs(12)));
        assert_eq!(evict, Some(ids[2]));
        let (_, evict) = admitted(s.admit(t0 + Duration::from_secs(13)));
        assert_eq!(evict, Some(ids[0]));
        let (_, evict) = admitted(s.admit(t0 + Duration::from_secs(14)));
        assert_eq!(evict, Some(new), "newcomers are evicted last");
    }

    #[test]
    fn busy_connections_are_never_closed_for_a_newcomer() {
        let t0 = Instant::now();
        let mut s = Slots::new(2);
        let (a, _) = admitted(s.admit(t0));
        let (b, _) = admitted(s.admit(t0));
        s.busy(a);
        s.busy(b);
        assert_eq!(s.admit(t0), Admission::Full);
        s.idle(b, t0 + Duration::from_secs(1));
        assert_eq!(admitted(s.admit(t0)).1, Some(b));
        s.close(a);
        assert_eq!(admitted(s.admit(t0)).1, None, "a free place");
    }

    #[test]
    fn thousands_of_idle_connections_leave_room_for_each_newcomer() {
        let t0 = Instant::now();
        let mut s = Slots::new(64);
        for i in 0..3000u64 {
            admitted(s.admit(t0 + Duration::from_millis(i)));
            assert!(s.len() <= 64);
        }
        let (owner, evict) = admitted(s.admit(t0 + Duration::from_secs(5)));
        assert!(evict.is_some());
        s.busy(owner);
        for i in 0..1000u64 {
            let (_, evict) =
                admitted(s.admit(t0 + Duration::from_secs(6) + Duration::from_millis(i)));
            assert_ne!(evict, Some(owner), "the owner's busy connection stays");
        }
    }
}
