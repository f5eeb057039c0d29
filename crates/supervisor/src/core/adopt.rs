//! What the core hands over to the process that replaces it in an in-place upgrade, and takes
//! back: per app its generation, counters and last reload, per slot its restart history and
//! backoff, per worker its id, pid, state, age and status text. Instants do not survive `execve`,
//! so every point in time is carried as a duration before (an age) or after (a remaining delay)
//! the moment of the handover. The shell adds the file descriptors ([`crate::upgrade`]).
//!
//! These types are the handover's own, apart from what `status` shows: a state written by the
//! previous binary must still parse when the report types change.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::report::{ReloadOutcome, ReloadReport, SlotReplacement};
use super::{WorkerId, WorkerState};

/// One app, as handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptedApp {
    /// Its id ([`super::AppId`]), kept for the supervisor's life; absent in a state written by
    /// a binary whose apps were numbered by their place in the file (this list's order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<super::AppId>,
    /// Its name (the new process matches apps by name).
    pub name: String,
    /// Stopped by hand (`stop APP`): it has no worker and no socket, and stays stopped.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stopped: bool,
    /// The generation new workers start in.
    pub generation: u64,
    /// The highest generation number given out (aborted reloads' included); absent in a state
    /// written by a binary that did not carry it.
    #[serde(default)]
    pub last_generation: Option<u64>,
    /// The next worker id to give out.
    pub next_id: WorkerId,
    /// Crash restarts since the supervisor started.
    pub restarts_total: u64,
    /// Workers replaced for their memory.
    pub memory_recycles: u64,
    /// Replacements for memory that failed.
    pub memory_recycle_failures: u64,
    /// The last finished reload.
    pub last_reload: Option<AdoptedReload>,
    /// `instances` set by `scale`, if any.
    pub scaled: Option<usize>,
    /// Every slot, in order.
    pub slots: Vec<AdoptedSlot>,
    /// Workers draining (told to stop; no slot's any more), with their kill deadlines.
    #[serde(default)]
    pub draining: Vec<AdoptedWorker>,
}

/// The ids the apps named `names` (the file read again, in order) have after an upgrade that
/// handed over `adopted`: an app handed over keeps its id (a handover without ids numbered its
/// apps in its order), one that was not gets the next free number.
pub fn adopted_ids(names: &[&str], adopted: &[AdoptedApp]) -> Vec<super::AppId> {
    let id = |k: usize, a: &AdoptedApp| a.id.unwrap_or(k);
    let mut next = adopted
        .iter()
        .enumerate()
        .map(|(k, a)| id(k, a) + 1)
        .max()
        .unwrap_or(0);
    names
        .iter()
        .map(
            |name| match adopted.iter().enumerate().find(|(_, a)| a.name == *name) {
                Some((k, a)) => id(k, a),
                None => {
                    next += 1;
                    next - 1
                }
            },
        )
        .collect()
}

/// An app's last finished reload, as handed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdoptedReload {
    /// The app.
    pub app: String,
    /// The generation it went to.
    pub generation: u64,
    /// How it ended.
    pub outcome: AdoptedOutcome,
    /// Why it was aborted.
    pub reason: Option<String>,
    /// What else it said.
    #[serde(default)]
    pub note: Option<String>,
    /// The slots it replaced.
    pub slots: Vec<AdoptedReplacement>,
    /// How long it took, in seconds.
    pub duration_secs: f64,
}

/// How a reload handed over ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdoptedOutcome {
    /// Every slot was replaced.
    Ok,
    /// Stopped early.
    Aborted,
    /// Accepted, not waited for (never the outcome of a finished reload; kept for a total
    /// mapping).
    Started,
    /// A canary that holds (never the outcome of a finished reload either).
    Held,
    /// The canary was taken back.
    #[serde(rename = "rolled_back")]
    RolledBack,
}

/// One slot a reload handed over replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdoptedReplacement {
    pub slot: usize,
    /// The pid replaced, if the slot had a live worker.
    pub old_pid: Option<i32>,
    /// The new worker's pid.
    pub new_pid: i32,
    /// Seconds from start to ready.
    pub ready_secs: f64,
}

impl From<&ReloadReport> for AdoptedReload {
    fn from(r: &ReloadReport) -> AdoptedReload {
        AdoptedReload {
            app: r.app.clone(),
            generation: r.generation,
            outcome: match r.outcome {
                ReloadOutcome::Ok => AdoptedOutcome::Ok,
                ReloadOutcome::Aborted => AdoptedOutcome::Aborted,
                ReloadOutcome::Started => AdoptedOutcome::Started,
                ReloadOutcome::Held => AdoptedOutcome::Held,
                ReloadOutcome::RolledBack => AdoptedOutcome::RolledBack,
            },
            reason: r.reason.clone(),
            note: r.note.clone(),
            slots: r
                .slots
                .iter()
                .map(|s| AdoptedReplacement {
                    slot: s.slot,
                    old_pid: s.old_pid,
                    new_pid: s.new_pid,
                    ready_secs: s.ready_secs,
                })
                .collect(),
            duration_secs: r.duration_secs,
        }
    }
}

impl From<AdoptedReload> for ReloadReport {
    fn from(r: AdoptedReload) -> ReloadReport {
        ReloadReport {
            app: r.app,
            generation: r.generation,
            outcome: match r.outcome {
                AdoptedOutcome::Ok => ReloadOutcome::Ok,
                AdoptedOutcome::Aborted => ReloadOutcome::Aborted,
                AdoptedOutcome::Started => ReloadOutcome::Started,
                AdoptedOutcome::Held => ReloadOutcome::Held,
                AdoptedOutcome::RolledBack => ReloadOutcome::RolledBack,
            },
            reason: r.reason,
            note: r.note,
            slots: r
                .slots
                .into_iter()
                .map(|s| SlotReplacement {
                    slot: s.slot,
                    old_pid: s.old_pid,
                    new_pid: s.new_pid,
                    ready_secs: s.ready_secs,
                })
                .collect(),
            duration_secs: r.duration_secs,
            change: None,
            changed: Vec::new(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One slot, as handed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdoptedSlot {
    /// The generation it runs.
    pub generation: u64,
    /// Restarts so far.
    pub restarts: u32,
    /// Unstable exits in a row.
    pub consecutive_failures: u32,
    /// How long ago each recent unstable exit was.
    pub recent_failures_ago: Vec<Duration>,
    /// Why its last worker ended.
    pub last_exit: Option<String>,
    /// Its worker, when serving.
    pub worker: Option<AdoptedWorker>,
    /// When backing off: the delay left before it starts again.
    pub restart_in: Option<Duration>,
}

/// One worker, as handed over (the process keeps running).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdoptedWorker {
    /// Its id.
    pub id: WorkerId,
    /// Its generation.
    pub generation: u64,
    /// Its pid.
    pub pid: i32,
    /// Its slot.
    #[serde(default)]
    pub slot: usize,
    /// Starting, ready or draining.
    pub state: WorkerState,
    /// A draining worker's process group is killed after this delay (its kill timeout left).
    #[serde(default)]
    pub kill_in: Option<Duration>,
    /// How long it has been running.
    pub age: Duration,
    /// Its last `STATUS=` text.
    pub status_text: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    /// An app as a previous binary wrote it into the memfd, with its last reload.
    const WRITTEN: &str = r#"{"name":"web","generation":3,"last_generation":4,"next_id":4294967305,"restarts_total":2,"memory_recycles":1,"memory_recycle_failures":0,"last_reload":{"app":"web","generation":4,"outcome":"aborted","reason":"new worker web.0 (pid 321) exited before it was ready: exit code 2","note":null,"slots":[{"slot":0,"old_pid":101,"new_pid":202,"ready_secs":0.25}],"duration_secs":1.5},"scaled":null,"slots":[{"generation":3,"restarts":2,"consecutive_failures":0,"recent_failures_ago":[{"secs":12,"nanos":500000000}],"last_exit":"signal 9 while ready","worker":{"id":4294967304,"generation":3,"pid":4242,"slot":0,"state":"ready","kill_in":null,"age":{"secs":30,"nanos":0},"status_text":"serving"},"restart_in":null}],"draining":[{"id":4294967300,"generation":2,"pid":4100,"slot":1,"state":"draining","kill_in":{"secs":4,"nanos":0},"age":{"secs":90,"nanos":0},"status_text":null}]}"#;

    #[test]
    fn an_app_handed_over_by_a_previous_binary_parses_and_is_written_the_same() {
        let app: AdoptedApp = serde_json::from_str(WRITTEN).unwrap();
        let last = app.last_reload.as_ref().unwrap();
        assert_eq!((last.app.as_str(), last.generation), ("web", 4));
        assert_eq!(last.slots[0].new_pid, 202);
        assert_eq!(app.slots[0].worker.as_ref().unwrap().pid, 4242);
        assert_eq!(app.draining[0].kill_in, Some(Duration::from_secs(4)));
        assert_eq!(serde_json::to_string(&app).unwrap(), WRITTEN);
        // Taken over, its last reload is the one `status` shows, and is handed over the same.
        let now = tokio::time::Instant::now();
        let taken = super::super::app::App::adopt(
            0,
            super::super::test_support::settings("web", 1, 1, 0),
            app,
            now,
        );
        let shown = taken.snapshot(now).last_reload.unwrap();
        assert_eq!(shown.outcome, ReloadOutcome::Aborted);
        assert_eq!(shown.generation, 4);
        assert_eq!(
            shown.reason.as_deref(),
            Some("new worker web.0 (pid 321) exited before it was ready: exit code 2")
        );
        assert_eq!(
            shown.slots,
            vec![SlotReplacement {
                slot: 0,
                old_pid: Some(101),
                new_pid: 202,
                ready_secs: 0.25
            }]
        );
        assert_eq!(shown.duration_secs, 1.5);
        assert_eq!(
            serde_json::to_string(&taken.export(now).last_reload).unwrap(),
            serde_json::to_string(
                &serde_json::from_str::<AdoptedApp>(WRITTEN)
                    .unwrap()
                    .last_reload
            )
            .unwrap()
        );
    }

    #[test]
    fn a_handover_with_durations_past_any_instant_is_adopted_without_panicking() {
        let huge = format!(r#"{{"secs":{},"nanos":0}}"#, u64::MAX);
        let text = WRITTEN
            .replace(r#""kill_in":{"secs":4,"nanos":0}"#, &format!(r#""kill_in":{huge}"#))
            .replace(r#""age":{"secs":90,"nanos":0}"#, &format!(r#""age":{huge}"#))
            .replace(
                r#""worker":{"id":4294967304,"generation":3,"pid":4242,"slot":0,"state":"ready""#,
                r#""worker":{"id":4294967304,"generation":3,"pid":4242,"slot":0,"state":"starting""#,
            );
        let app: AdoptedApp = serde_json::from_str(&text).unwrap();
        assert_eq!(app.draining[0].kill_in, Some(Duration::from_secs(u64::MAX)));
        let now = tokio::time::Instant::now();
        let mut settings = super::super::test_support::settings("web", 1, 1, 0);
        std::sync::Arc::make_mut(&mut settings.spec).ready_timeout = Duration::MAX;
        let mut taken = super::super::app::App::adopt(0, settings, app, now);
        let deadlines: Vec<tokio::time::Instant> = taken
            .take_actions()
            .into_iter()
            .filter_map(|a| match a {
                super::super::Action::Arm { at, .. } => Some(at),
                _ => None,
            })
            .collect();
        assert_eq!(deadlines.len(), 2, "a ready and a kill deadline");
        assert!(
            deadlines
                .iter()
                .all(|at| *at > now + Duration::from_secs(50 * 365 * 86_400)),
            "far in the future, not an overflow"
        );
    }
}
