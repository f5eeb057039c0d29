//! Cluster singletons in the core, driven with plain instants: standing by starts nothing,
//! taking the lease starts every slot with the fencing token, losing it drains and kills the
//! workers before the lease can expire, a reload keeps the lease, and a stop releases it only
//! once the workers are gone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use super::report::{ReloadMode, ReloadOutcome};
use super::test_support::Sim;
use super::*;
use crate::config::SingletonPolicy;

const TTL: Duration = Duration::from_secs(10);

/// A singleton with `instances` workers (kill timeout 10 s, as long as the lease).
fn singleton(name: &str, instances: usize) -> AppSettings {
    let mut s = super::test_support::settings(name, instances, 1, 0);
    s.singleton = Some(SingletonPolicy {
        lease_ttl: TTL,
        standby_poll: TTL / 3,
    });
    s
}

fn lease(sim: &mut Sim, app: AppId, event: LeaseEvent) {
    sim.send(Event::Lease { app, event });
}

fn acquired(token: u64) -> LeaseEvent {
    LeaseEvent::Acquired {
        token,
        holder: "here:1".into(),
    }
}

/// `consumer` (singleton, 2 workers), then `web` (1 worker, after consumer); started.
fn started() -> Sim {
    let mut sim = Sim::new(vec![
        (singleton("consumer", 2), vec![]),
        (super::test_support::settings("web", 1, 1, 0), vec![0]),
    ]);
    sim.send(Event::Start);
    sim
}

/// `started`, then the lease taken with token 7 and every worker ready.
fn holding() -> Sim {
    let mut sim = started();
    lease(&mut sim, 0, acquired(7));
    sim.ready_all(0);
    sim.ready_all(1);
    sim
}

fn live(sim: &Sim, app: AppId) -> usize {
    sim.app(app).snapshot(sim.now).workers.len()
}

#[test]
fn standing_by_starts_nothing_and_does_not_hold_up_the_apps_after_it() {
    let mut sim = started();
    assert_eq!(sim.app(0).phase(), Phase::Standby);
    assert!(
        sim.spawned.iter().all(|(app, _)| *app != 0),
        "no worker of the singleton"
    );
    assert_eq!(sim.exit, None, "standing by is not a failed start");
    // `web` is after it, and starts: the singleton may be running on another host.
    assert_eq!(sim.app(1).phase(), Phase::Running);
    lease(
        &mut sim,
        0,
        LeaseEvent::Standby {
            holder: Some(("other:9".into(), 5)),
        },
    );
    let view = sim.app(0).snapshot(sim.now).singleton.unwrap();
    assert_eq!(view.role, SingletonRole::Standby);
    assert_eq!(view.holder.as_deref(), Some("other:9"));
    assert_eq!(view.token, Some(5));
    // Nothing to restart, and time passing starts nothing either.
    sim.advance(Duration::from_secs(60));
    assert_eq!(live(&sim, 0), 0);
}

#[test]
fn taking_the_lease_starts_every_slot_with_the_fencing_token() {
    let mut sim = started();
    lease(&mut sim, 0, acquired(42));
    assert_eq!(sim.app(0).phase(), Phase::Running);
    let mine: Vec<WorkerId> = sim
        .spawned
        .iter()
        .filter(|(a, _)| *a == 0)
        .map(|(_, w)| *w)
        .collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|w| sim.tokens[w] == Some(42)));
    // Host apps get no token.
    assert!(
        sim.spawned
            .iter()
            .filter(|(a, _)| *a == 1)
            .all(|(_, w)| sim.tokens[w].is_none())
    );
    let view = sim.app(0).snapshot(sim.now).singleton.unwrap();
    assert_eq!(view.role, SingletonRole::Holder);
    assert_eq!(view.token, Some(42));
    // A crash while holding is restarted as usual, with the same token.
    sim.ready_all(0);
    sim.ready_all(1);
    let w = sim.workers(0, WorkerState::Ready)[0];
    sim.advance(Duration::from_secs(5));
    sim.exit(w, ExitStatus::Code(1));
    sim.advance(Duration::from_secs(1));
    let last = sim.spawned.iter().rfind(|(a, _)| *a == 0).unwrap().1;
    assert_ne!(last, w);
    assert_eq!(sim.tokens[&last], Some(42));
}

#[test]
fn losing_the_lease_drains_and_kills_every_worker_before_it_expires() {
    let mut sim = holding();
    let workers = sim.workers(0, WorkerState::Ready);
    assert_eq!(workers.len(), 2);
    let web = sim.workers(1, WorkerState::Ready);
    // Lost with a third of the TTL left; the kill timeout (10 s) is longer than that.
    let expires_at = sim.now + TTL / 3;
    lease(
        &mut sim,
        0,
        LeaseEvent::Lost {
            expires_at,
            reason: "renewal refused".into(),
        },
    );
    assert_eq!(sim.app(0).phase(), Phase::Standby);
    for w in &workers {
        assert_eq!(sim.signalled(*w), vec![Signal::Term], "drained at once");
        let kill = sim.timers[&TimerKey::Kill(*w)];
        assert!(kill < expires_at, "killed before the lease expires");
        assert!(
            kill + Duration::from_millis(600) > expires_at,
            "but drains as long as it can"
        );
    }
    // The host app is untouched.
    assert!(web.iter().all(|w| sim.signalled(*w).is_empty()));
    sim.advance(expires_at - sim.now - Duration::from_millis(1));
    for w in &workers {
        assert_eq!(sim.signalled(*w), vec![Signal::Term, Signal::KillGroup]);
        sim.exit(*w, ExitStatus::Signal(9));
    }
    assert_eq!(live(&sim, 0), 0);
    // Standing by: no crash restart, nothing new.
    let spawned = sim.spawned.len();
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.spawned.len(), spawned);
    assert_eq!(
        sim.app(0).snapshot(sim.now).singleton.unwrap().role,
        SingletonRole::Standby
    );
    // Taken again later: new workers with the new, higher token.
    lease(&mut sim, 0, acquired(8));
    let new: Vec<_> = sim.spawned[spawned..].iter().map(|(_, w)| *w).collect();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|w| sim.tokens[w] == Some(8)));
}

#[test]
fn a_lease_lost_too_late_for_a_drain_kills_at_once_and_aborts_a_reload() {
    let mut sim = holding();
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let starting = sim.workers(0, WorkerState::Starting);
    assert_eq!(starting.len(), 1, "a reload is replacing slot 0");
    let ready = sim.workers(0, WorkerState::Ready);
    let expires_at = sim.now + Duration::from_millis(100);
    lease(
        &mut sim,
        0,
        LeaseEvent::Lost {
            expires_at,
            reason: "no renewal in time".into(),
        },
    );
    let reports = sim.reports(1);
    assert_eq!(reports[0].outcome, ReloadOutcome::Aborted);
    for w in starting.iter().chain(&ready) {
        assert_eq!(
            sim.signalled(*w),
            vec![Signal::Term, Signal::KillGroup],
            "less than the margin left: killed now"
        );
    }
}

#[test]
fn a_reload_keeps_the_lease_and_replaces_the_workers_in_place() {
    let mut sim = holding();
    let old = sim.workers(0, WorkerState::Ready);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    for _ in 0..2 {
        sim.ready_all(0);
    }
    let reports = sim.reports(1);
    assert_eq!(reports[0].outcome, ReloadOutcome::Ok, "{reports:?}");
    let new = sim.workers(0, WorkerState::Ready);
    assert_eq!(new.len(), 2);
    assert!(
        new.iter()
            .all(|w| !old.contains(w) && sim.tokens[w] == Some(7))
    );
    assert!(old.iter().all(|w| sim.signalled(*w) == vec![Signal::Term]));
    assert!(sim.released.is_empty(), "a reload never releases the lease");
    assert_eq!(
        sim.app(0).snapshot(sim.now).singleton.unwrap().role,
        SingletonRole::Holder
    );
}

#[test]
fn a_reload_while_standing_by_takes_the_new_config_for_the_takeover() {
    let mut sim = started();
    let mut next = singleton("consumer", 3);
    std::sync::Arc::make_mut(&mut next.spec).args = vec!["v2".into()];
    sim.config = Ok(vec![next, super::test_support::settings("web", 1, 1, 0)]);
    sim.send(Event::Reload {
        app: Some(0),
        reply: Some(1),
        wait: true,
        mode: ReloadMode::Rolling,
    });
    let r = &sim.reports(1)[0];
    assert_eq!(r.outcome, ReloadOutcome::Ok);
    assert!(r.note.as_deref().unwrap_or("").contains("standby"), "{r:?}");
    assert_eq!(live(&sim, 0), 0, "still nothing runs here");
    lease(&mut sim, 0, acquired(3));
    let ws = sim.app(0).snapshot(sim.now).workers;
    assert_eq!(ws.len(), 3);
    assert!(
        ws.iter()
            .all(|(w, _)| w.spec.args == vec!["v2".to_string()] && w.generation == 2)
    );
}

#[test]
fn a_stop_releases_the_lease_only_once_the_workers_are_gone() {
    let mut sim = holding();
    sim.send(Event::Stop { reply: Some(5) });
    // web (after consumer) stops first.
    for w in sim.workers(1, WorkerState::Draining) {
        sim.exit(w, ExitStatus::Code(0));
    }
    let draining = sim.workers(0, WorkerState::Draining);
    assert_eq!(draining.len(), 2);
    assert!(sim.released.is_empty(), "not while its workers drain");
    sim.exit(draining[0], ExitStatus::Code(0));
    assert!(sim.released.is_empty());
    sim.exit(draining[1], ExitStatus::Code(0));
    assert_eq!(sim.released, vec![(0, 0)], "released with no worker left");
    assert_eq!(sim.exit, Some(Ok(())));
}

#[test]
fn a_stop_while_standing_by_releases_at_once_and_a_late_acquisition_starts_nothing() {
    let mut sim = started();
    sim.ready_all(1);
    sim.send(Event::Stop { reply: None });
    for w in sim.workers(1, WorkerState::Draining) {
        sim.exit(w, ExitStatus::Code(0));
    }
    assert_eq!(sim.released, vec![(0, 0)]);
    let spawned = sim.spawned.len();
    lease(&mut sim, 0, acquired(9));
    assert_eq!(sim.spawned.len(), spawned);
}
