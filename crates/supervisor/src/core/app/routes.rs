//! Which of an app's slot sockets take new connections, when each slot has its own socket
//! (`balance = "sticky" | "spread"`); the core tells the shell when it changes
//! ([`crate::core::Action::Route`]).

use std::collections::BTreeSet;

use super::App;
use crate::core::{Route, SocketSet, WorkerState};

impl App {
    /// Each set of sockets it uses with the slots that serve on it; nothing for an app whose
    /// workers share one socket per address.
    pub(crate) fn routes(&self) -> Vec<(SocketSet, Route)> {
        if !self.settings.balance.per_slot() {
            return Vec::new();
        }
        self.sockets_in_use()
            .into_iter()
            .map(|set| (set, self.route(set)))
            .collect()
    }

    /// Set `set`'s route: a slot serves while a worker of it started on `set` is ready (and not
    /// draining); the sockets stay open up to the highest slot of a worker of the app still
    /// running, on any set: the sets of an address a reload kept share its slot sockets, and a
    /// worker of a set closed already (scaled away by the reload that closed it) may still be
    /// accepting on its slot's socket until it is told to drain.
    fn route(&self, set: SocketSet) -> Route {
        let slots = if self.slots.iter().any(|s| s.sockets == set) {
            self.slots.len()
        } else {
            0
        };
        let open = self
            .workers
            .values()
            .map(|w| w.slot + 1)
            .max()
            .unwrap_or(0)
            .max(slots);
        let on_set = || self.workers.values().filter(move |w| w.sockets == set);
        let serving: BTreeSet<usize> = on_set()
            .filter(|w| w.state == WorkerState::Ready)
            .map(|w| w.slot)
            .collect();
        Route {
            slots,
            open,
            serving: serving.into_iter().collect(),
        }
    }
}
