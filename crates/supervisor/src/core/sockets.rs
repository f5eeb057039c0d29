//! Which sets of sockets stay open, and for an app with a socket per slot (`balance = "sticky"
//! | "spread"`) which slot sockets take new connections: both recomputed after every event and
//! told to the shell when they change ([`Action::CloseSockets`], [`Action::Route`]).

use std::collections::{BTreeMap, BTreeSet};

use super::apps::Core;
use super::{Action, SocketSet};

impl Core {
    /// Closes every open set of sockets no app uses any more (and no reload holds for an app
    /// whose turn has not come yet).
    pub(super) fn close_unused_sockets(&mut self) {
        let mut used: BTreeSet<SocketSet> = self
            .apps
            .iter()
            .flat_map(|e| e.app.sockets_in_use())
            .collect();
        if let Some(all) = &self.reload_all {
            used.extend(all.held_sockets());
        }
        let open = std::mem::take(&mut self.open_sockets);
        for set in open.difference(&used) {
            self.out.push(Action::CloseSockets(*set));
        }
        self.open_sockets = used;
    }

    /// Tells the shell each set's slot sockets that take connections now, where that changed.
    pub(super) fn routes_changed(&mut self) {
        let now: BTreeMap<SocketSet, super::Route> = self
            .apps
            .iter()
            .flat_map(|e| e.app.routes())
            .filter(|(set, _)| self.open_sockets.contains(set))
            .collect();
        for (set, route) in &now {
            if self.routes.get(set) != Some(route) {
                self.out.push(Action::Route {
                    sockets: *set,
                    route: route.clone(),
                });
            }
        }
        self.routes = now;
    }
}
