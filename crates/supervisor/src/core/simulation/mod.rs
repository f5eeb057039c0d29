//! A randomized simulation of the core, in the spirit of deterministic simulation testing: from
//! a seed, a set of apps ([`plan::Setup`]) and thousands of [`plan::Step`]s (spawns that fail,
//! workers that crash at any point, ready timeouts, reload/scale/restart/stop requests, memory
//! samples, lease events, config changes, time jumps) are driven through the pure core by a
//! simulated shell ([`world::World`]), which checks the invariants after every step: never more
//! workers than slots plus the surge per app, no slot served by a missing or draining worker,
//! no process the core forgot, every deadline armed, every client answered exactly once, a
//! failed reload leaving the last good generation serving; and, once faults stop, a settled
//! supervisor (every slot ready, a stop done). A failing seed is shrunk to a minimal list of
//! steps, printed so that it can be replayed (and kept as a regression test).
//!
//! The normal suite runs a bounded number of seeds; `bench/simulate.sh` runs many more
//! (`SIM_SEEDS`, `SIM_STEPS`) in release mode through the ignored test [`many_seeds`].

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod plan;
mod world;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use crate::core::report::ReloadMode;

use plan::{Rng, Setup, Step, shrink, steps};
use world::World;

/// Where a run failed: the step (its index; `None` when settling) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    at: Option<usize>,
    why: String,
}

/// Runs `steps` on the apps of `seed`, then settles; a panic of the core is a failure too.
fn run(seed: u64, steps: &[Step]) -> Result<usize, Failure> {
    let setup = Setup::from(&mut Rng::new(seed));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut world = World::new(&setup).map_err(|why| Failure { at: Some(0), why })?;
        let mut taken = 0;
        for (i, step) in steps.iter().enumerate() {
            if world.exited() {
                break;
            }
            world
                .step(*step)
                .map_err(|why| Failure { at: Some(i), why })?;
            taken += 1;
        }
        world.settle().map_err(|why| Failure { at: None, why })?;
        Ok(taken)
    }));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(Failure {
                at: None,
                why: format!("the core panicked: {why}"),
            })
        }
    }
}

/// The steps of `seed`: as many as `len`.
fn plan(seed: u64, len: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let setup = Setup::from(&mut rng);
    steps(&mut rng, setup.apps.len(), len)
}

/// Runs seeds `seeds` of `len` steps each; on a failure, shrinks it and panics with a minimal
/// reproduction. Returns the steps taken in all.
fn check_seeds(seeds: std::ops::Range<u64>, len: usize) -> u64 {
    let mut total = 0u64;
    for seed in seeds {
        let steps = plan(seed, len);
        match run(seed, &steps) {
            Ok(taken) => total += taken as u64,
            Err(failure) => panic!("{}", reproduction(seed, &steps, &failure)),
        }
    }
    total
}

/// A failing run, shrunk to the fewest steps that still fail the same way, as a message that
/// says how to replay it.
fn reproduction(seed: u64, steps: &[Step], failure: &Failure) -> String {
    // The same invariant: the first words of the message, before any number.
    let kind = |f: &Failure| {
        f.why
            .split(|c: char| c.is_ascii_digit())
            .next()
            .unwrap_or("")
            .to_string()
    };
    let want = kind(failure);
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let minimal = shrink(steps, 4000, |candidate| {
        run(seed, candidate).is_err_and(|f| kind(&f) == want)
    });
    std::panic::set_hook(quiet);
    let last = run(seed, &minimal).err().unwrap_or_else(|| failure.clone());
    let setup = Setup::from(&mut Rng::new(seed));
    let apps: Vec<String> = setup
        .apps
        .iter()
        .map(|(s, after)| {
            format!(
                "{} x{} surge {} unavailable {} {:?}{}{} after {after:?}",
                s.spec.name,
                s.spec.instances,
                s.reload.max_surge,
                s.reload.max_unavailable,
                s.spec.readiness,
                if s.memory.max_bytes.is_some() {
                    " max_memory"
                } else {
                    ""
                },
                if s.singleton.is_some() {
                    " singleton"
                } else {
                    ""
                },
            )
        })
        .collect();
    let lines: Vec<String> = minimal.iter().map(|s| format!("        {s:?},")).collect();
    format!(
        "simulation seed {seed} fails {}: {}\napps: {}\nminimal reproduction ({} of {} steps), \
         replay with:\n    replay({seed}, &[\n{}\n    ]);",
        match last.at {
            Some(i) => format!("at step {i}"),
            None => "once settled".into(),
        },
        last.why,
        apps.join("; "),
        minimal.len(),
        steps.len(),
        lines.join("\n"),
    )
}

/// Replays `steps` on the apps of `seed`: what a reproduction prints, kept as a regression test.
#[track_caller]
fn replay(seed: u64, steps: &[Step]) {
    if let Err(failure) = run(seed, steps) {
        panic!("seed {seed}: {}", reproduction(seed, steps, &failure));
    }
}

/// The number in an environment variable, or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_runs_keep_every_invariant() {
    // Bounded for the normal suite (a few seconds in a debug build); `bench/simulate.sh` runs
    // thousands more.
    let seeds = env_or("SIM_QUICK_SEEDS", 48);
    let steps = check_seeds(0..seeds, 1500);
    assert!(steps > seeds * 200, "runs too short: {steps} steps in all");
}

#[test]
#[ignore = "long: run by bench/simulate.sh (SIM_SEEDS, SIM_STEPS, SIM_FIRST)"]
fn many_seeds() {
    let first = env_or("SIM_FIRST", 1_000_000);
    let seeds = env_or("SIM_SEEDS", 10_000);
    let len = env_or("SIM_STEPS", 2000) as usize;
    let started = std::time::Instant::now();
    let steps = check_seeds(first..first + seeds, len);
    let took = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "simulation: {seeds} seeds ({first}..{}), {steps} steps in {took:.1}s: {:.0} seeds/s, {:.0} steps/s; every invariant held",
        first + seeds,
        seeds as f64 / took,
        steps as f64 / took
    );
}

#[test]
fn a_failure_is_shrunk_to_what_causes_it() {
    // A world whose checks fail once a reload was asked for after a crash: the reproduction
    // keeps those two steps.
    let steps = vec![
        Step::Advance(Duration::from_millis(5)),
        Step::Ready(0),
        Step::Crash(0, crate::core::ExitStatus::Code(1)),
        Step::Advance(Duration::from_secs(3)),
        Step::Reload {
            app: None,
            client: true,
            wait: true,
            mode: ReloadMode::Rolling,
        },
        Step::Ready(1),
    ];
    let min = shrink(&steps, 1000, |s| {
        let crash = s.iter().position(|x| matches!(x, Step::Crash(..)));
        let reload = s.iter().position(|x| matches!(x, Step::Reload { .. }));
        matches!((crash, reload), (Some(c), Some(r)) if c < r)
    });
    assert_eq!(min.len(), 2, "{min:?}");
}

// ---- regressions: seeds that found bugs, shrunk, kept ----

/// A fast stop (the second SIGINT) after a graceful stop had stopped an app already never
/// ended: that app stayed first in line to stop, and was never stopped again.
#[test]
fn seed_380_a_fast_stop_after_an_app_stopped_ends() {
    replay(
        380,
        &[
            Step::Stop { client: true },
            Step::Drained(20),
            Step::FastStop,
        ],
    );
}

/// Found when apps became addable and removable by a reload: a request naming an app that a
/// reload removed meanwhile was never answered.
#[test]
fn seed_3_a_request_for_an_app_a_reload_removed_is_answered() {
    use plan::ConfigStep;
    let removed = [
        Step::Config(ConfigStep::Without(0)),
        Step::Reload {
            app: None,
            client: true,
            wait: true,
            mode: ReloadMode::Rolling,
        },
    ];
    replay(3, &[removed[0], removed[1], Step::Restart(0)]);
    replay(
        3,
        &[
            removed[0],
            removed[1],
            Step::Reload {
                app: Some(0),
                client: true,
                wait: true,
                mode: ReloadMode::Rolling,
            },
        ],
    );
}

/// Found the same way: an app removed by a reload of every app while its own reload waited to
/// read the file had the `scale` queued behind that reload applied (a worker spawned) just
/// before it was stopped.
#[test]
fn seed_1002157_a_removed_app_starts_nothing_on_its_way_out() {
    use crate::core::ExitStatus;
    use plan::ConfigStep;
    replay(
        1002157,
        &[
            Step::Reload {
                app: None,
                client: false,
                wait: false,
                mode: ReloadMode::Rolling,
            },
            Step::Reload {
                app: None,
                client: false,
                wait: true,
                mode: ReloadMode::Rolling,
            },
            Step::Crash(16, ExitStatus::Code(1)),
            Step::Scale(1, 5),
            Step::Reload {
                app: Some(1),
                client: true,
                wait: false,
                mode: ReloadMode::Rolling,
            },
            Step::Config(ConfigStep::Without(1)),
        ],
    );
}

/// Found by the long run: an app whose reload of every app was queued behind its own reload,
/// with a `scale` queued too, and then removed from the file: its own reload read the file
/// (without it) and ended aborted, the queued `scale` started workers, and the reload of every
/// app removed it in the same turn.
#[test]
fn seed_1003116_a_removed_app_scales_nothing_on_its_way_out() {
    use plan::ConfigStep;
    let reload = |app, wait| Step::Reload {
        app,
        client: true,
        wait,
        mode: ReloadMode::Rolling,
    };
    replay(
        1003116,
        &[
            reload(Some(0), false),
            reload(None, true),
            Step::Scale(0, 4),
            Step::Config(ConfigStep::Without(0)),
            reload(None, false),
        ],
    );
}

/// Found by the long run: a canary held with no `canary_hold` (no deadline) right as the run
/// settled was taken for a reload that never ends; settling continues or rolls it back first.
#[test]
fn seed_4009649_a_canary_held_at_the_end_is_settled() {
    replay(
        4009649,
        &[Step::Reload {
            app: Some(2),
            client: true,
            wait: false,
            mode: ReloadMode::Canary,
        }],
    );
}
