//! When an in-place upgrade happens, decided without I/O: the pure sequencer the shell asks after
//! every event. An upgrade asked for waits (bounded by [`SETTLE_TIMEOUT`]) until the supervisor
//! is settled (no reload, no worker starting, no `[[job]]` command running), runs the new
//! binary's preflight, settles again if something started meanwhile, has the answers already
//! given to control clients written out, and only then execs. It is refused at once while the
//! supervisor stops or while this host holds a cluster singleton's lease (leases are not handed
//! over), when the preflight fails, when settling takes too long, or when the `execve` fails; the
//! supervisor then goes on as it was.
//!
//! The shell feeds it what it sees ([`Situation`]) and carries out each [`Step`]: start the
//! preflight child, flush the control answers, exec, or tell the client why not. No polling: the
//! shell asks again on every event, when a child of its own ends, and at [`Sequencer::deadline`].

use std::path::PathBuf;

use tokio::time::Instant;

use super::SETTLE_TIMEOUT;

/// What the shell sees when it asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Situation {
    /// The supervisor is stopping.
    pub stopping: bool,
    /// An app whose cluster singleton lease this host holds (never handed over), if any.
    pub lease_held: Option<String>,
    /// Why the supervisor cannot be handed over right now (a reload, a worker starting, a
    /// `[[job]]` command running), if it cannot.
    pub unsettled: Option<String>,
}

/// What the shell must do next for the upgrade under way.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<R> {
    /// Nothing now: ask again on the next event, when an own child ends, or at the deadline.
    Wait,
    /// Run the new binary's preflight; answer with [`Sequencer::preflight_done`].
    Preflight {
        /// The binary to try.
        binary: PathBuf,
    },
    /// Let the control connections write the answers already given; then call
    /// [`Sequencer::flushed`].
    Flush,
    /// Hand over to `binary` now; if `execve` returns, call [`Sequencer::exec_failed`].
    Exec {
        /// The binary to exec.
        binary: PathBuf,
    },
    /// The upgrade will not happen: tell the client who asked, if one did.
    Refused {
        /// Why (said to the client and logged).
        reason: String,
        /// Who asked.
        reply: Option<R>,
    },
}

/// Where an upgrade under way stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the supervisor to settle before the preflight.
    Settling,
    /// The preflight child runs.
    Preflight,
    /// The preflight passed; waiting to be settled again before the flush.
    Verified,
    /// The answers were flushed: exec as soon as the supervisor is still settled.
    Flushed,
}

#[derive(Debug)]
struct Pending<R> {
    binary: PathBuf,
    reply: Option<R>,
    stage: Stage,
    /// Refused if still not settled then (a preflight that runs has its own timeout).
    deadline: Instant,
    /// Why it waits, as last logged (logged once per reason).
    waiting_for: Option<String>,
}

/// The upgrade under way, if any; `R` is how the shell answers the client who asked.
#[derive(Debug)]
pub struct Sequencer<R> {
    pending: Option<Pending<R>>,
}

impl<R> Default for Sequencer<R> {
    fn default() -> Self {
        Sequencer { pending: None }
    }
}

impl<R> Sequencer<R> {
    /// An upgrade to `binary` is asked for at `now` (`supervisor upgrade`, or `SIGUSR2` with no
    /// client). Refused at once while another one is under way.
    pub fn request(&mut self, binary: PathBuf, reply: Option<R>, now: Instant) -> Option<Step<R>> {
        if self.pending.is_some() {
            return Some(Step::Refused {
                reason: "an upgrade is already under way".into(),
                reply,
            });
        }
        tracing::info!(binary = %binary.display(), "upgrade in place requested");
        self.pending = Some(Pending {
            binary,
            reply,
            stage: Stage::Settling,
            deadline: now + SETTLE_TIMEOUT,
            waiting_for: None,
        });
        None
    }

    /// Whether an upgrade is under way.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// When to ask again at the latest (the settling deadline), while an upgrade waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .filter(|p| p.stage != Stage::Preflight)
            .map(|p| p.deadline)
    }

    /// The next step, given what the shell sees at `now`.
    pub fn advance(&mut self, seen: &Situation, now: Instant) -> Step<R> {
        let Some(p) = &mut self.pending else {
            return Step::Wait;
        };
        if seen.stopping {
            return self.refuse("the supervisor is stopping".into());
        }
        if let Some(app) = &seen.lease_held {
            return self.refuse(format!(
                "app {app} is a cluster singleton whose lease this host holds (an upgrade does not hand leases over: upgrade while it stands by, or stop it)"
            ));
        }
        if p.stage == Stage::Preflight {
            return Step::Wait;
        }
        if let Some(why) = &seen.unsettled {
            if now >= p.deadline {
                let reason = format!(
                    "the supervisor did not settle within {}: {why}",
                    crate::units::span(SETTLE_TIMEOUT)
                );
                return self.refuse(reason);
            }
            if p.waiting_for.as_ref() != Some(why) {
                tracing::info!("upgrade waits: {why}");
                p.waiting_for = Some(why.clone());
            }
            // Whatever was flushed is stale once something started again.
            if p.stage == Stage::Flushed {
                p.stage = Stage::Verified;
            }
            return Step::Wait;
        }
        match p.stage {
            Stage::Settling => {
                p.stage = Stage::Preflight;
                Step::Preflight {
                    binary: p.binary.clone(),
                }
            }
            Stage::Verified => Step::Flush,
            Stage::Flushed => Step::Exec {
                binary: p.binary.clone(),
            },
            Stage::Preflight => Step::Wait,
        }
    }

    /// The preflight ended at `now`: `Ok` with what the new binary said, or why it failed
    /// (including a config file that no longer fits the running supervisor, see
    /// [`super::same_shape`]).
    pub fn preflight_done(&mut self, outcome: Result<String, String>, now: Instant) -> Step<R> {
        let Some(p) = &mut self.pending else {
            return Step::Wait;
        };
        if p.stage != Stage::Preflight {
            return Step::Wait;
        }
        match outcome {
            Err(why) => self.refuse(why),
            Ok(said) => {
                tracing::info!(binary = %p.binary.display(), "upgrade preflight passed: {said}");
                p.stage = Stage::Verified;
                // A new deadline for settling again, if something started meanwhile.
                p.deadline = now + SETTLE_TIMEOUT;
                Step::Wait
            }
        }
    }

    /// The answers given before [`Step::Flush`] are written.
    pub fn flushed(&mut self) {
        if let Some(p) = &mut self.pending
            && p.stage == Stage::Verified
        {
            p.stage = Stage::Flushed;
        }
    }

    /// `execve` (or what had to be done just before it) failed: the supervisor goes on.
    pub fn exec_failed(&mut self, reason: String) -> Step<R> {
        self.refuse(reason)
    }

    fn refuse(&mut self, reason: String) -> Step<R> {
        let reply = self.pending.take().and_then(|p| p.reply);
        tracing::warn!("upgrade refused: {reason}; going on with this binary");
        Step::Refused { reason, reply }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settled() -> Situation {
        Situation::default()
    }

    fn busy(why: &str) -> Situation {
        Situation {
            unsettled: Some(why.into()),
            ..Situation::default()
        }
    }

    fn asked(now: Instant) -> Sequencer<u32> {
        let mut s = Sequencer::default();
        assert_eq!(s.request("/new/supervisor".into(), Some(7), now), None);
        s
    }

    fn refused(step: Step<u32>) -> (String, Option<u32>) {
        match step {
            Step::Refused { reason, reply } => (reason, reply),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn settled_supervisor_goes_preflight_flush_exec() {
        let now = Instant::now();
        let mut s = asked(now);
        assert_eq!(
            s.advance(&settled(), now),
            Step::Preflight {
                binary: "/new/supervisor".into()
            }
        );
        // While the preflight runs, events change nothing, and there is no deadline to wake for.
        assert_eq!(s.advance(&busy("a reload"), now), Step::Wait);
        assert_eq!(s.deadline(), None);
        assert_eq!(
            s.preflight_done(Ok("supervisor 0.2.0".into()), now),
            Step::Wait
        );
        assert_eq!(s.advance(&settled(), now), Step::Flush);
        s.flushed();
        assert_eq!(
            s.advance(&settled(), now),
            Step::Exec {
                binary: "/new/supervisor".into()
            }
        );
        let (reason, reply) = refused(s.exec_failed("execve: ENOENT".into()));
        assert_eq!((reason.as_str(), reply), ("execve: ENOENT", Some(7)));
        assert!(!s.is_pending(), "a failed exec ends the upgrade");
    }

    #[test]
    fn it_waits_for_the_supervisor_to_settle_then_gives_up_at_the_deadline() {
        let t0 = Instant::now();
        let mut s = asked(t0);
        assert_eq!(s.advance(&busy("app web is reloading"), t0), Step::Wait);
        assert_eq!(s.deadline(), Some(t0 + SETTLE_TIMEOUT));
        let later = t0 + SETTLE_TIMEOUT - Duration::from_millis(1);
        assert_eq!(s.advance(&busy("app web is reloading"), later), Step::Wait);
        let (reason, reply) =
            refused(s.advance(&busy("a [[job]] command is running"), t0 + SETTLE_TIMEOUT));
        assert!(reason.contains("did not settle within 15s"), "{reason}");
        assert!(reason.contains("a [[job]] command is running"), "{reason}");
        assert_eq!(reply, Some(7));
    }

    #[test]
    fn settling_again_after_the_preflight_gets_a_fresh_deadline() {
        let t0 = Instant::now();
        let mut s = asked(t0);
        s.advance(&settled(), t0);
        let passed = t0 + Duration::from_secs(9);
        s.preflight_done(Ok("ok".into()), passed);
        assert_eq!(s.deadline(), Some(passed + SETTLE_TIMEOUT));
        // Something started during the preflight: wait for it, well past the first deadline.
        let t = t0 + SETTLE_TIMEOUT + Duration::from_secs(1);
        assert_eq!(s.advance(&busy("worker web.0 is starting"), t), Step::Wait);
        assert_eq!(s.advance(&settled(), t), Step::Flush);
    }

    #[test]
    fn something_starting_after_the_flush_means_settling_and_flushing_again() {
        let now = Instant::now();
        let mut s = asked(now);
        s.advance(&settled(), now);
        s.preflight_done(Ok("ok".into()), now);
        assert_eq!(s.advance(&settled(), now), Step::Flush);
        s.flushed();
        assert_eq!(
            s.advance(&busy("a [[job]] command is running"), now),
            Step::Wait
        );
        // The answers given meanwhile must be written too before the exec.
        assert_eq!(s.advance(&settled(), now), Step::Flush);
        s.flushed();
        assert!(matches!(s.advance(&settled(), now), Step::Exec { .. }));
    }

    #[test]
    fn a_failed_preflight_refuses_and_a_late_result_is_ignored() {
        let now = Instant::now();
        let mut s = asked(now);
        s.advance(&settled(), now);
        let (reason, _) = refused(s.preflight_done(Err("exit status 1: bad config".into()), now));
        assert_eq!(reason, "exit status 1: bad config");
        assert!(!s.is_pending());
        assert_eq!(s.preflight_done(Ok("late".into()), now), Step::Wait);
        assert_eq!(s.advance(&settled(), now), Step::Wait);
    }

    #[test]
    fn stopping_or_a_held_lease_refuses_at_once_even_during_the_preflight() {
        let now = Instant::now();
        let mut s = asked(now);
        let lease = Situation {
            lease_held: Some("cron".into()),
            ..Situation::default()
        };
        let (reason, _) = refused(s.advance(&lease, now));
        assert!(
            reason.contains("app cron is a cluster singleton"),
            "{reason}"
        );

        let mut s = asked(now);
        s.advance(&settled(), now);
        let stopping = Situation {
            stopping: true,
            ..Situation::default()
        };
        let (reason, reply) = refused(s.advance(&stopping, now));
        assert_eq!(
            (reason.as_str(), reply),
            ("the supervisor is stopping", Some(7))
        );
    }

    #[test]
    fn a_second_request_is_refused_and_the_first_goes_on() {
        let now = Instant::now();
        let mut s = asked(now);
        let (reason, reply) = refused(s.request("/other".into(), Some(8), now).unwrap());
        assert_eq!(
            (reason.as_str(), reply),
            ("an upgrade is already under way", Some(8))
        );
        assert!(
            matches!(s.advance(&settled(), now), Step::Preflight { binary } if binary == std::path::Path::new("/new/supervisor"))
        );
    }
}
