//! The listening sockets the shell holds, as sets the core names ([`SocketSet`]): one set per app
//! and config generation, one socket per `[[app.listen]]` in order. A reload that keeps an
//! address shares its socket with the new set (one accept queue, never bound twice); one that
//! moves an address binds the new one first, so the app's old workers serve the old address
//! until the new ones take over, and the old socket closes when the core says the old set is
//! no longer used ([`crate::core::Action::CloseSockets`]).
//!
//! An address of an app with a socket per worker slot (`balance = "sticky" | "spread"`) is a
//! [`Group`] of sockets, one per slot, shared the same way by every set on the address: a
//! worker gets its slot's socket ([`Sockets::for_worker`]), and the core's routes say which
//! slots take connections ([`Sockets::route`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::groups::Group;
use crate::config::ListenerSpec;
use crate::core::{Route, SocketSet};
use crate::sys::listeners::{self, BoundListener, ListenError};
use crate::upgrade::GroupFds;

/// One set: the listener specs it was bound for, and the sockets (for an address with a socket
/// per slot: slot 0's).
#[derive(Debug)]
struct Bound {
    specs: Vec<ListenerSpec>,
    listeners: Vec<BoundListener>,
}

/// Every open set of sockets, and the groups of the addresses with a socket per slot.
#[derive(Debug, Default)]
pub(super) struct Sockets {
    sets: HashMap<SocketSet, Bound>,
    next: u64,
    /// By address.
    groups: HashMap<String, Group>,
}

impl Sockets {
    /// Keeps `listeners`, bound for `specs`, as a new set (the first socket of a group with a
    /// socket per slot starts its group, unless an upgrade handed the group over).
    pub(super) fn insert(
        &mut self,
        specs: Vec<ListenerSpec>,
        listeners: Vec<BoundListener>,
    ) -> SocketSet {
        for (spec, l) in specs.iter().zip(&listeners) {
            if !spec.balance.per_slot() || self.groups.contains_key(&l.local) {
                continue;
            }
            let first = l.fd().try_clone_to_owned();
            match (l.local.parse::<SocketAddr>(), first) {
                (Ok(addr), Ok(fd)) => {
                    let group = Group::new(addr, spec.balance, spec.backlog, fd);
                    self.groups.insert(l.local.clone(), group);
                }
                (_, Err(e)) => {
                    tracing::warn!(address = %l.local, "cannot keep the slot socket: {e}")
                }
                (Err(e), _) => tracing::warn!(address = %l.local, "not an address: {e}"),
            }
        }
        self.next += 1;
        let set = SocketSet(self.next);
        self.sets.insert(set, Bound { specs, listeners });
        set
    }

    /// Takes over the groups an upgrade handed over (before the sets that use them are
    /// inserted).
    pub(super) fn adopt_groups(&mut self, groups: Vec<(GroupFds, Vec<OwnedFd>)>) {
        for (handed, fds) in groups {
            match Group::adopted(&handed, fds) {
                Some(g) => {
                    self.groups.insert(handed.local.clone(), g);
                }
                None => {
                    tracing::warn!(address = %handed.local, "a group of slot sockets handed over could not be taken")
                }
            }
        }
    }

    /// The groups, as an upgrade hands them over.
    pub(super) fn handover_groups(&self) -> Vec<GroupFds> {
        self.groups.values().map(Group::handover).collect()
    }

    /// A new set for `specs`: each address one of the sets `reuse` listens on already is
    /// shared (a duplicate of the same socket, or the same group of slot sockets), every other
    /// one bound now. All or nothing: on an error the sockets bound for it are closed again.
    pub(super) fn open(
        &mut self,
        specs: &[ListenerSpec],
        reuse: &[SocketSet],
    ) -> Result<SocketSet, ListenError> {
        let mut listeners = Vec::with_capacity(specs.len());
        for spec in specs {
            let shared = reuse
                .iter()
                .filter_map(|set| self.sets.get(set))
                .find_map(|b| {
                    let i = b.specs.iter().position(|s| s.addr == spec.addr)?;
                    Some((b.specs.get(i)?, b.listeners.get(i)?))
                });
            let l = match shared {
                Some((old, _)) if old.balance.per_slot() != spec.balance.per_slot() => {
                    return Err(ListenError::BalanceChanged {
                        key: spec.key.clone(),
                        addr: spec.addr.to_string(),
                        from: old.balance,
                        to: spec.balance,
                    });
                }
                Some((_, old)) => {
                    if let Some(g) = self.groups.get_mut(&old.local) {
                        g.update(spec.balance, spec.backlog);
                    }
                    old.share(spec).map_err(|cause| ListenError::Bind {
                        key: spec.key.clone(),
                        addr: spec.addr.to_string(),
                        cause,
                    })?
                }
                None => listeners::bind_one(spec)?,
            };
            listeners.push(l);
        }
        Ok(self.insert(specs.to_vec(), listeners))
    }

    /// Closes a set (its sockets, unless another set shares them: a Unix socket's file then
    /// stays, for the other set to remove when it closes; a group of slot sockets then stays
    /// too).
    pub(super) fn close(&mut self, set: SocketSet) {
        let Some(mut b) = self.sets.remove(&set) else {
            return;
        };
        for l in &mut b.listeners {
            // Two sets listening on one address share the socket.
            let other = self
                .sets
                .values_mut()
                .flat_map(|o| o.listeners.iter_mut())
                .find(|o| o.local == l.local);
            match other {
                Some(other) => {
                    other.set_unlink(true);
                    l.set_unlink(false);
                    if let Some(g) = self.groups.get_mut(&l.local) {
                        g.forget(set);
                    }
                }
                None => {
                    self.groups.remove(&l.local);
                    tracing::info!(name = %l.name, address = %l.local, "listener closed")
                }
            }
        }
    }

    /// The sockets of a set (none for a set closed or unknown); slot 0's of an address with a
    /// socket per slot.
    pub(super) fn get(&self, set: SocketSet) -> &[BoundListener] {
        self.sets.get(&set).map_or(&[], |b| b.listeners.as_slice())
    }

    /// The sockets a worker of `slot` on `set` inherits, in the set's order: its slot's socket
    /// of an address with a socket per slot (bound now if the slot is new), the shared one of
    /// any other.
    pub(super) fn for_worker(
        &mut self,
        set: SocketSet,
        slot: usize,
    ) -> Result<Vec<BoundListener>, String> {
        let Some(b) = self.sets.get(&set) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(b.listeners.len());
        for (spec, l) in b.specs.iter().zip(&b.listeners) {
            let mine = match self.groups.get_mut(&l.local) {
                Some(g) if spec.balance.per_slot() => g.socket(slot).map(|fd| {
                    BoundListener::adopted(
                        spec.name.clone(),
                        l.local.clone(),
                        l.port,
                        spec.backlog,
                        None,
                        fd,
                    )
                }),
                _ => l.share(spec),
            };
            out.push(mine.map_err(|e| {
                format!(
                    "{}: cannot bind the socket of slot {slot} on {}: {e}",
                    spec.key, l.local
                )
            })?);
        }
        Ok(out)
    }

    /// The core's route for `set`: for each of its addresses with a socket per slot.
    pub(super) fn route(&mut self, set: SocketSet, route: &Route) {
        let Some(b) = self.sets.get(&set) else {
            return;
        };
        for (spec, l) in b.specs.iter().zip(&b.listeners) {
            if let Some(g) = self
                .groups
                .get_mut(&l.local)
                .filter(|_| spec.balance.per_slot())
            {
                g.route(set, route.clone());
            }
        }
    }

    /// The listener specs a set was bound for (none for a set closed or unknown).
    pub(super) fn specs(&self, set: SocketSet) -> Option<&[ListenerSpec]> {
        self.sets.get(&set).map(|b| b.specs.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenAddr;

    fn spec(name: &str, addr: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            addr: ListenAddr::Tcp(addr.parse().unwrap()),
            backlog: 64,
            key: format!("app[0].listen[{name}]"),
            balance: crate::config::Balance::Shared,
        }
    }

    #[test]
    fn a_kept_address_is_the_same_socket_a_moved_one_a_new_one_and_closing_the_old_keeps_it() {
        let mut sockets = Sockets::default();
        let old = sockets
            .open(
                &[spec("http", "127.0.0.1:0"), spec("admin", "127.0.0.1:0")],
                &[],
            )
            .unwrap();
        let http = sockets.get(old)[0].local.clone();
        let admin = sockets.get(old)[1].local.clone();
        // `admin` moves (to another port-0 socket bound now), `http` stays.
        let moved = ListenerSpec {
            addr: ListenAddr::Tcp("127.0.0.2:0".parse().unwrap()),
            ..spec("admin", "127.0.0.1:0")
        };
        let new = sockets
            .open(&[spec("http", "127.0.0.1:0"), moved], &[old])
            .unwrap();
        assert_eq!(sockets.get(new)[0].local, http, "the same socket");
        assert_ne!(sockets.get(new)[1].local, admin);
        sockets.close(old);
        assert!(sockets.get(old).is_empty());
        assert!(
            std::net::TcpStream::connect(&http).is_ok(),
            "still listening: the new set shares it"
        );
        assert!(
            std::net::TcpStream::connect(&admin).is_err(),
            "the moved address is closed with the old set"
        );
        assert_eq!(sockets.specs(new).map(<[_]>::len), Some(2));
    }

    #[test]
    fn a_set_that_cannot_be_bound_whole_is_not_opened() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut sockets = Sockets::default();
        let e = sockets
            .open(&[spec("http", "127.0.0.1:0"), spec("admin", &addr)], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&addr) && e.to_lowercase().contains("in use"),
            "{e}"
        );
        assert!(sockets.sets.is_empty());
    }

    fn sticky(name: &str, addr: &str) -> ListenerSpec {
        ListenerSpec {
            balance: crate::config::Balance::Sticky,
            ..spec(name, addr)
        }
    }

    #[test]
    fn a_group_grows_by_slot_is_shared_by_a_reload_shrinks_from_the_top_and_closes_with_its_last_set()
     {
        let mut sockets = Sockets::default();
        // The config's addresses (a reload shares what the file names the same way).
        let free = || {
            crate::sys::reuseport::probe("127.0.0.1:0".parse().unwrap())
                .unwrap()
                .to_string()
        };
        let (http, admin) = (free(), free());
        let specs = [sticky("http", &http), spec("admin", &admin)];
        let old = sockets.open(&specs, &[]).unwrap();
        let local = sockets.get(old)[0].local.clone();
        let fds = sockets.for_worker(old, 2).unwrap();
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[0].local, local);
        assert_eq!(
            sockets.groups[&local].len(),
            3,
            "slots 0 to 2 bound in order"
        );
        let route = |open, serving: &[usize]| Route {
            slots: 3,
            open,
            serving: serving.to_vec(),
        };
        sockets.route(old, &route(3, &[0, 1, 2]));
        // A reload keeping the address shares the group; the old set's close keeps it.
        let new = sockets.open(&specs, &[old]).unwrap();
        assert_eq!(sockets.groups.len(), 1);
        sockets.route(new, &route(2, &[0, 1]));
        assert_eq!(
            sockets.groups[&local].len(),
            3,
            "the old set keeps slot 2 open"
        );
        sockets.close(old);
        assert_eq!(
            sockets.groups[&local].len(),
            2,
            "slot 2 out with the last set keeping it"
        );
        assert!(std::net::TcpStream::connect(&local).is_ok());
        sockets.close(new);
        assert!(sockets.groups.is_empty());
        assert!(
            crate::sys::reuseport::probe(local.parse().unwrap()).is_ok(),
            "the address is free again"
        );
    }

    #[test]
    fn a_reload_that_changes_balance_on_a_kept_address_says_what_to_do() {
        let mut sockets = Sockets::default();
        let addr = crate::sys::reuseport::probe("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .to_string();
        let old = sockets.open(&[spec("http", &addr)], &[]).unwrap();
        let e = sockets
            .open(&[sticky("http", &addr)], &[old])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("changed from shared to sticky") && e.contains("bound again"),
            "{e}"
        );
        assert_eq!(sockets.sets.len(), 1);
    }
}
