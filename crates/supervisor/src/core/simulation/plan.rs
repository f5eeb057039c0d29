//! What a simulation run does, decided up front from its seed: the apps it runs ([`Setup`]) and
//! the list of [`Step`]s it takes. A step names workers by their rank among those it could
//! concern at the time (the k-th starting worker, modulo their number), never by id, so that any
//! sub-list of a failing list is still a valid run: what shrinking needs.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Readiness, SingletonPolicy};
use crate::core::report::ReloadMode;
use crate::core::test_support::settings;
use crate::core::{AppId, AppSettings, ExitStatus};

/// A small seeded generator (SplitMix64): the same seed, the same run, on any machine.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True `per_mille` times in a thousand.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// How a lease task reports, in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseStep {
    Acquired,
    Standby,
    /// Lost; the lease expires this long after now.
    Lost(Duration),
    Released,
}

/// What the config file says at the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigStep {
    /// As at the start.
    Original,
    /// App `.0` with `.1` instances (and a new program: a new spec).
    Instances(usize, usize),
    /// Not valid.
    Broken,
    /// App `.0` removed from the file.
    Without(usize),
}

/// One thing that happens to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The k-th starting worker says it is ready.
    Ready(usize),
    /// The k-th live worker process exits with this status, whatever its state.
    Crash(usize, ExitStatus),
    /// The k-th worker told to stop exits 0.
    Drained(usize),
    /// The k-th live worker says `STATUS=...`.
    Status(usize),
    /// Time moves on (deadlines passed on the way fire, in order, each at its instant).
    Advance(Duration),
    /// Time jumps (a suspended machine, a paused VM): every deadline passed fires at once, at
    /// the new instant, in order.
    Jump(Duration),
    /// `reload` of one app or of all; with a client waiting for the end, or answered at once,
    /// or a signal (no client).
    Reload {
        app: Option<usize>,
        client: bool,
        wait: bool,
        /// Mostly rolling; a canary, `--continue` or `--rollback` (of one app, or of the only
        /// one) one time in four.
        mode: ReloadMode,
    },
    /// `restart` of an app.
    Restart(usize),
    /// `scale` of an app.
    Scale(usize, usize),
    /// `stop`, from a client or a signal.
    Stop { client: bool },
    /// The second SIGINT.
    FastStop,
    /// The k-th live worker's memory from now on, in MB.
    Memory(usize, u64),
    /// The lease task of an app reports.
    Lease(usize, LeaseStep),
    /// The config file changes.
    Config(ConfigStep),
    /// From now on spawns fail (`execve` would), or succeed again.
    SpawnFails(bool),
}

/// The apps a run starts with.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) apps: Vec<(AppSettings, Vec<AppId>)>,
}

impl Setup {
    /// 1 to 3 apps of 0 to 4 workers, with random surge and unavailability, readiness, memory
    /// limits, `after` on earlier apps, and at most one cluster singleton.
    pub(crate) fn from(rng: &mut Rng) -> Setup {
        let n = 1 + rng.below(3) as usize;
        let mut apps = Vec::with_capacity(n);
        let mut singleton = false;
        for i in 0..n {
            let instances = rng.below(5) as usize;
            let surge = 1 + rng.below(3) as usize;
            let unavailable = rng.below(instances.max(1) as u64) as usize;
            let mut s = settings(&format!("a{i}"), instances, surge, unavailable);
            // Each app its own sockets, as the shell binds them.
            s.sockets = crate::core::SocketSet(i as u64 + 1);
            if rng.chance(150) {
                Arc::make_mut(&mut s.spec).readiness = Readiness::Exec;
            }
            if rng.chance(150) {
                s.reload.canary_hold = Some(Duration::from_secs(1 + rng.below(10)));
            }
            // Drawn aside, so that the main sequence (and every pinned seed's run) is as before.
            if Rng(rng.0.rotate_left(17) ^ i as u64).chance(300) {
                s.balance = crate::config::Balance::Sticky;
            }
            if rng.chance(300) {
                s.memory.max_bytes = Some(100 << 20);
                s.memory.grace = Duration::from_secs(1 + rng.below(5));
            }
            if !singleton && rng.chance(250) {
                singleton = true;
                s.singleton = Some(SingletonPolicy {
                    lease_ttl: Duration::from_secs(3),
                    standby_poll: Duration::from_secs(1),
                });
            }
            let after = (0..i).filter(|_| rng.chance(300)).collect();
            apps.push((s, after));
        }
        Setup { apps }
    }
}

/// `len` steps drawn from `rng`, for `apps` apps.
pub(crate) fn steps(rng: &mut Rng, apps: usize, len: usize) -> Vec<Step> {
    (0..len).map(|_| step(rng, apps)).collect()
}

fn step(rng: &mut Rng, apps: usize) -> Step {
    let app = |rng: &mut Rng| rng.below(apps as u64) as usize;
    let k = |rng: &mut Rng| rng.below(64) as usize;
    match rng.below(1000) {
        0..200 => Step::Ready(k(rng)),
        200..260 => Step::Crash(k(rng), ExitStatus::Code(1)),
        260..290 => Step::Crash(k(rng), ExitStatus::Signal(9)),
        290..300 => Step::Crash(k(rng), ExitStatus::Code(crate::core::EX_CONFIG)),
        300..420 => Step::Drained(k(rng)),
        420..430 => Step::Status(k(rng)),
        430..530 => Step::Advance(Duration::from_millis(1 + rng.below(500))),
        530..580 => Step::Advance(Duration::from_millis(1000 + rng.below(9000))),
        580..588 => Step::Jump(Duration::from_secs(60 + rng.below(3600))),
        588..650 => Step::Reload {
            app: (!rng.chance(300)).then(|| app(rng)),
            client: rng.chance(700),
            wait: rng.chance(600),
            mode: match rng.below(12) {
                0 => ReloadMode::Canary,
                1 => ReloadMode::Continue,
                2 => ReloadMode::Rollback,
                _ => ReloadMode::Rolling,
            },
        },
        650..670 => Step::Restart(app(rng)),
        670..700 => Step::Scale(
            app(rng),
            if rng.chance(20) {
                2000
            } else {
                rng.below(6) as usize
            },
        ),
        700..701 => Step::Stop {
            client: rng.chance(500),
        },
        701..702 => Step::FastStop,
        702..760 => Step::Memory(k(rng), if rng.chance(500) { 50 } else { 200 }),
        760..820 => Step::Lease(
            app(rng),
            match rng.below(10) {
                0..4 => LeaseStep::Acquired,
                4..6 => LeaseStep::Standby,
                6..9 => LeaseStep::Lost(Duration::from_millis(rng.below(5000))),
                _ => LeaseStep::Released,
            },
        ),
        820..860 => Step::Config(match rng.below(10) {
            0..4 => ConfigStep::Original,
            4..7 => ConfigStep::Instances(app(rng), rng.below(5) as usize),
            7..9 => ConfigStep::Broken,
            _ => ConfigStep::Without(app(rng)),
        }),
        860..880 => Step::SpawnFails(rng.chance(300)),
        _ => Step::Ready(k(rng)),
    }
}

/// The shortest sub-list of `steps` for which `fails` still holds, found by removing chunks
/// (halves, quarters, ... single steps) while the failure remains, then shortening time jumps;
/// at most `budget` runs of `fails`.
pub(crate) fn shrink(
    steps: &[Step],
    budget: usize,
    mut fails: impl FnMut(&[Step]) -> bool,
) -> Vec<Step> {
    let mut best = steps.to_vec();
    let mut runs = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut removed_any = false;
        let mut at = 0;
        while at < best.len() && runs < budget {
            let end = (at + chunk).min(best.len());
            let candidate: Vec<Step> = best[..at].iter().chain(&best[end..]).copied().collect();
            runs += 1;
            if fails(&candidate) {
                best = candidate;
                removed_any = true;
            } else {
                at += chunk;
            }
        }
        if runs >= budget || (chunk == 1 && !removed_any) {
            break;
        }
        if !removed_any {
            chunk = chunk.div_ceil(2);
        }
    }
    for i in 0..best.len() {
        if runs >= budget {
            break;
        }
        if let Step::Advance(d) | Step::Jump(d) = best[i]
            && d > Duration::from_millis(1)
        {
            let mut candidate = best.clone();
            candidate[i] = match best[i] {
                Step::Jump(_) => Step::Jump(d / 2),
                _ => Step::Advance(d / 2),
            };
            runs += 1;
            if fails(&candidate) {
                best = candidate;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_run() {
        let a = steps(&mut Rng::new(7), 2, 100);
        let b = steps(&mut Rng::new(7), 2, 100);
        assert_eq!(a, b);
        assert_ne!(a, steps(&mut Rng::new(8), 2, 100));
    }

    #[test]
    fn shrinking_keeps_what_the_failure_needs() {
        let steps: Vec<Step> = (0..100).map(Step::Ready).collect();
        // Fails when Ready(17) comes before Ready(60).
        let min = shrink(&steps, 10_000, |s| {
            let a = s.iter().position(|x| *x == Step::Ready(17));
            let b = s.iter().position(|x| *x == Step::Ready(60));
            matches!((a, b), (Some(a), Some(b)) if a < b)
        });
        assert_eq!(min, vec![Step::Ready(17), Step::Ready(60)]);
    }
}
