//! The listening sockets the shell holds, as sets the core names ([`SocketSet`]): one set per app
//! and config generation, one socket per `[[app.listen]]` in order. A reload that keeps an
//! address shares its socket with the new set (one accept queue, never bound twice); one that
//! moves an address binds the new one first, so the app's old workers serve the old address
//! until the new ones take over, and the old socket closes when the core says the old set is
//! no longer used ([`crate::core::Action::CloseSockets`]).

use std::collections::HashMap;

use crate::config::ListenerSpec;
use crate::core::SocketSet;
use crate::sys::listeners::{self, BoundListener, ListenError};

/// One set: the listener specs it was bound for, and the sockets.
#[derive(Debug)]
struct Bound {
    specs: Vec<ListenerSpec>,
    listeners: Vec<BoundListener>,
}

/// Every open set of sockets.
#[derive(Debug, Default)]
pub(super) struct Sockets {
    sets: HashMap<SocketSet, Bound>,
    next: u64,
}

impl Sockets {
    /// Keeps `listeners`, bound for `specs`, as a new set.
    pub(super) fn insert(
        &mut self,
        specs: Vec<ListenerSpec>,
        listeners: Vec<BoundListener>,
    ) -> SocketSet {
        self.next += 1;
        let set = SocketSet(self.next);
        self.sets.insert(set, Bound { specs, listeners });
        set
    }

    /// A new set for `specs`: each address one of the sets `reuse` listens on already is
    /// shared (a duplicate of the same socket), every other one bound now. All or nothing: on
    /// an error the sockets bound for it are closed again.
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
                    b.listeners.get(i)
                });
            let l = match shared {
                Some(old) => old.share(spec).map_err(|cause| ListenError::Bind {
                    key: spec.key.clone(),
                    addr: spec.addr.to_string(),
                    cause,
                })?,
                None => listeners::bind_one(spec)?,
            };
            listeners.push(l);
        }
        Ok(self.insert(specs.to_vec(), listeners))
    }

    /// Closes a set (its sockets, unless another set shares them: a Unix socket's file then
    /// stays, for the other set to remove when it closes).
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
                }
                None => tracing::info!(name = %l.name, address = %l.local, "listener closed"),
            }
        }
    }

    /// The sockets of a set (none for a set closed or unknown).
    pub(super) fn get(&self, set: SocketSet) -> &[BoundListener] {
        self.sets.get(&set).map_or(&[], |b| b.listeners.as_slice())
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
}
