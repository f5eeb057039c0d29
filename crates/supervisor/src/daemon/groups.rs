//! The sockets of one address of an app with a socket per worker slot (`balance = "sticky" |
//! "spread"`): a `SO_REUSEPORT` group the shell holds for as long as a set of sockets uses the
//! address, so that a slot's accept queue outlives its workers (the slot's next worker, after a
//! reload or a crash, inherits the same socket). Socket `i` is slot `i`'s and the `i`-th of the
//! kernel's group: sockets are bound in slot order (when a worker of a new slot is started) and
//! only the last ones are ever taken out, which keeps the two the same. The kernel picks a
//! socket with the program of [`crate::balance`], attached again whenever the serving slots
//! change ([`crate::core::Action::Route`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::balance::{self, Insn};
use crate::config::Balance;
use crate::core::{Route, SocketSet};
use crate::sys::reuseport;
use crate::upgrade::GroupFds;

/// One address's sockets, by slot.
#[derive(Debug)]
pub(super) struct Group {
    /// The address (port 0 resolved).
    addr: SocketAddr,
    /// Sticky or spread: the newest set's.
    pub(super) balance: Balance,
    backlog: i32,
    /// Slot `i`'s socket at `i`, the kernel's order too.
    sockets: Vec<OwnedFd>,
    /// The last route of each set on this address.
    routes: BTreeMap<SocketSet, Route>,
    /// The program attached last.
    attached: Option<Vec<Insn>>,
}

impl Group {
    /// A group whose first socket (slot 0's) is `first`, bound on `addr`.
    pub(super) fn new(addr: SocketAddr, balance: Balance, backlog: i32, first: OwnedFd) -> Group {
        Group {
            addr,
            balance,
            backlog,
            sockets: vec![first],
            routes: BTreeMap::new(),
            attached: None,
        }
    }

    /// The group an upgrade handed over: `fds` are its inherited sockets, by slot.
    pub(super) fn adopted(handed: &GroupFds, fds: Vec<OwnedFd>) -> Option<Group> {
        let addr = handed.local.parse().ok()?;
        (!fds.is_empty()).then(|| Group {
            addr,
            balance: handed.balance,
            backlog: handed.backlog,
            sockets: fds,
            routes: BTreeMap::new(),
            attached: None,
        })
    }

    /// What an upgrade hands over.
    pub(super) fn handover(&self) -> GroupFds {
        GroupFds {
            local: self.addr.to_string(),
            balance: self.balance,
            backlog: self.backlog,
            fds: self.sockets.iter().map(AsRawFd::as_raw_fd).collect(),
        }
    }

    /// Slot `slot`'s socket (a duplicate, for a worker), bound now for a slot that has none
    /// yet (with those of the slots below it, in order).
    pub(super) fn socket(&mut self, slot: usize) -> std::io::Result<OwnedFd> {
        while self.sockets.len() <= slot {
            let fd = reuseport::bind(self.addr, self.backlog)?;
            tracing::debug!(address = %self.addr, slot = self.sockets.len(), "slot socket bound");
            self.sockets.push(fd);
        }
        self.sockets[slot].try_clone()
    }

    /// A reload kept the address with `balance` and `backlog`: the program follows the newest
    /// mode, and every slot socket's accept queue the new length (a second `listen` only
    /// resizes it).
    pub(super) fn update(&mut self, balance: Balance, backlog: i32) {
        self.balance = balance;
        if backlog != self.backlog {
            self.backlog = backlog;
            for fd in &self.sockets {
                if let Err(e) = crate::sys::listeners::resize_queue(fd.as_fd(), backlog) {
                    tracing::warn!(address = %self.addr, "cannot resize a slot socket's accept queue: {e}");
                }
            }
        }
        self.attached = None;
        self.apply();
    }

    /// Set `set`'s route changed: takes out the sockets no set keeps open any more (the last
    /// ones) and points the kernel at the serving slots.
    pub(super) fn route(&mut self, set: SocketSet, route: Route) {
        self.routes.insert(set, route);
        self.apply();
    }

    /// Set `set` is closed (another set still uses the group).
    pub(super) fn forget(&mut self, set: SocketSet) {
        if self.routes.remove(&set).is_some() && !self.routes.is_empty() {
            self.apply();
        }
    }

    /// Carries out the routes (nothing before the first: the core has not said yet which
    /// slots there are, as after an upgrade).
    fn apply(&mut self) {
        if self.routes.is_empty() {
            return;
        }
        let keep = self
            .routes
            .values()
            .map(|r| r.open)
            .max()
            .unwrap_or(0)
            .max(1);
        while self.sockets.len() > keep {
            let slot = self.sockets.len() - 1;
            let Some(fd) = self.sockets.pop() else { break };
            // Nothing was routed to it since its worker was taken off it: a queue still
            // holding connections means their handshake outlasted the grace.
            match reuseport::queued(fd.as_fd()) {
                Ok(0) | Err(_) => {}
                Ok(n) if reuseport::migrates_queues() => {
                    tracing::info!(address = %self.addr, slot, queued = n, "slot socket closed: its queued connections move to another slot (net.ipv4.tcp_migrate_req)")
                }
                Ok(n) => {
                    tracing::warn!(address = %self.addr, slot, queued = n, "slot socket closed with connections still queued: they are reset (set net.ipv4.tcp_migrate_req = 1 to have the kernel move them)")
                }
            }
            if let Err(e) = reuseport::stop_listening(fd.as_fd()) {
                tracing::warn!(address = %self.addr, slot, "cannot take the slot socket out of its group: {e}");
            }
            tracing::debug!(address = %self.addr, slot, "slot socket closed");
        }
        // The newest set's slots are the hash's buckets; a slot serves on any set.
        let slots = self
            .routes
            .values()
            .rev()
            .map(|r| r.slots)
            .find(|n| *n > 0)
            .unwrap_or(0);
        let mut serving: Vec<usize> = self
            .routes
            .values()
            .flat_map(|r| r.serving.iter().copied())
            .filter(|s| *s < self.sockets.len())
            .collect();
        serving.sort_unstable();
        serving.dedup();
        let prog = balance::program(self.balance, slots, &serving);
        if self.attached.as_ref() == Some(&prog) {
            return;
        }
        match self
            .sockets
            .first()
            .map(|s| reuseport::attach(s.as_fd(), &prog))
        {
            Some(Ok(())) => {
                tracing::debug!(address = %self.addr, slots, ?serving, balance = %self.balance, "slot sockets routed");
                self.attached = Some(prog);
            }
            Some(Err(e)) => {
                tracing::warn!(address = %self.addr, "cannot attach the {} program: the kernel spreads connections over every slot socket ({e})", self.balance);
                self.attached = None;
            }
            None => {}
        }
    }

    /// How many slot sockets it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sockets.len()
    }
}
