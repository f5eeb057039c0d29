//! Routes of an app with a socket per slot, with plain instants: which slots take connections
//! through crashes, scale downs and reloads, and a worker scaled away told to drain only after
//! it was taken off its socket.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use crate::config::Balance;
use crate::core::test_support::{Sim, settings};
use crate::core::{
    Event, ExitStatus, Route, Signal, SocketSet, TimerKey, UNROUTE_GRACE, WorkerState,
};

/// App `web`, sticky, `instances` workers all ready; reloads read a new program.
fn sticky(instances: usize) -> Sim {
    let mut first = settings("web", instances, 1, 0);
    first.balance = Balance::Sticky;
    Sim::running_one(first, |_| {})
}

fn route(slots: usize, open: usize, serving: &[usize]) -> Route {
    Route {
        slots,
        open,
        serving: serving.to_vec(),
    }
}

/// The last route told for the app's sockets.
fn last(sim: &Sim) -> Route {
    sim.routes
        .iter()
        .rev()
        .find(|(set, _)| *set == SocketSet(0))
        .map(|(_, r)| r.clone())
        .expect("a route")
}

#[test]
fn a_slot_serves_while_its_worker_is_ready_and_a_crashed_one_comes_back_when_its_restart_is() {
    let mut sim = sticky(3);
    assert_eq!(last(&sim), route(3, 3, &[0, 1, 2]));
    let ready = sim.workers(0, WorkerState::Ready);
    sim.exit(ready[1], ExitStatus::Code(1));
    assert_eq!(
        last(&sim),
        route(3, 3, &[0, 2]),
        "slot 1 off while it backs off"
    );
    sim.advance(Duration::from_secs(1));
    let restarted = sim.workers(0, WorkerState::Starting);
    assert_eq!(restarted.len(), 1);
    assert_eq!(last(&sim), route(3, 3, &[0, 2]), "not before it is ready");
    sim.send(Event::Ready(restarted[0]));
    assert_eq!(last(&sim), route(3, 3, &[0, 1, 2]));
}

#[test]
fn a_worker_scaled_away_is_taken_off_its_socket_first_and_its_socket_closes_after_it_exits() {
    let mut sim = sticky(3);
    let ready = sim.workers(0, WorkerState::Ready);
    sim.send(Event::Scale {
        app: 0,
        instances: 1,
        reply: Some(1),
    });
    assert_eq!(last(&sim), route(1, 3, &[0]), "off, sockets still open");
    for gone in &ready[1..] {
        assert!(sim.signalled(*gone).is_empty(), "not told yet");
        assert!(sim.timers.contains_key(&TimerKey::Drain(*gone)));
    }
    sim.advance(UNROUTE_GRACE);
    for gone in &ready[1..] {
        assert_eq!(sim.signalled(*gone), vec![Signal::Term]);
    }
    let routes = sim.routes.len();
    sim.exit(ready[2], ExitStatus::Code(0));
    assert_eq!(
        last(&sim),
        route(1, 2, &[0]),
        "slot 2's socket out, slot 1's kept"
    );
    sim.exit(ready[1], ExitStatus::Code(0));
    assert_eq!(last(&sim), route(1, 1, &[0]));
    assert_eq!(sim.routes.len(), routes + 2);
}

#[test]
fn a_rolling_reload_never_takes_a_slot_off_its_socket() {
    let mut sim = sticky(3);
    let before = sim.routes.len();
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: crate::core::report::ReloadMode::Rolling,
    });
    for _ in 0..3 {
        let new = sim.workers(0, WorkerState::Starting);
        assert_eq!(new.len(), 1);
        sim.send(Event::Ready(new[0]));
        assert_eq!(last(&sim).serving, vec![0, 1, 2]);
    }
    assert_eq!(sim.reports(1).len(), 1, "the reload ended");
    assert_eq!(
        sim.routes.len(),
        before,
        "no route changed: {:?}",
        &sim.routes[before..]
    );
}

#[test]
fn a_shared_app_has_no_routes_and_drains_a_scaled_away_worker_at_once() {
    let mut sim = Sim::new(vec![(settings("web", 2, 1, 0), vec![])]);
    sim.send(Event::Start);
    sim.ready_all(0);
    let ready = sim.workers(0, WorkerState::Ready);
    sim.send(Event::Scale {
        app: 0,
        instances: 1,
        reply: None,
    });
    assert_eq!(sim.signalled(ready[1]), vec![Signal::Term]);
    assert!(sim.routes.is_empty());
}

#[test]
fn a_reload_to_fewer_slots_keeps_their_sockets_open_until_the_workers_scaled_away_are_gone() {
    let mut first = settings("web", 4, 1, 0);
    first.balance = Balance::Sticky;
    let mut sim = Sim::running_one(first, |next| {
        std::sync::Arc::make_mut(&mut next.spec).instances = 2;
        // The reload rolls onto a new set sharing the address's slot sockets.
        next.sockets = SocketSet(1);
    });
    let old = sim.workers(0, WorkerState::Ready);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: crate::core::report::ReloadMode::Rolling,
    });
    for _ in 0..2 {
        let new = sim.workers(0, WorkerState::Starting);
        sim.send(Event::Ready(new[0]));
    }
    assert_eq!(sim.reports(1).len(), 1, "the reload ended");
    assert!(sim.closed.contains(&SocketSet(0)), "the old set is closed");
    let (set, kept) = sim.routes.last().cloned().unwrap();
    assert_eq!(set, SocketSet(1));
    assert_eq!(
        kept.open, 4,
        "slots 2 and 3 still have their workers: {kept:?}"
    );
    for gone in &old[2..] {
        sim.exit(*gone, ExitStatus::Code(0));
    }
    for gone in &old[..2] {
        sim.exit(*gone, ExitStatus::Code(0));
    }
    assert_eq!(sim.routes.last().unwrap().1, route(2, 2, &[0, 1]));
}
