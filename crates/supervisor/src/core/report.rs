//! What the core reports of its work, for `status`, `reload` and the metrics: a finished
//! reload of one app ([`ReloadReport`], with each slot's [`SlotReplacement`]), a reload under way
//! ([`ReloadProgress`]) and a worker being replaced for its memory ([`MemoryRecycleProgress`]).
//! The control protocol sends them as they are: it re-exports them.

use serde::{Deserialize, Serialize};

/// A finished reload of one app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The app.
    pub app: String,
    /// Target generation.
    pub generation: u64,
    /// How it ended (or that it started, for `--no-wait`).
    pub outcome: ReloadOutcome,
    /// Why it was aborted.
    pub reason: Option<String>,
    /// What else to know (a `scale` the file's `instances` undid).
    #[serde(default)]
    pub note: Option<String>,
    /// Per slot: old pid -> new pid and time to ready.
    pub slots: Vec<SlotReplacement>,
    /// Duration of the whole reload in seconds.
    pub duration_secs: f64,
    /// What a reload of every app did to this app, if it was added, removed or changed in
    /// the file (absent otherwise: the reload replaced its workers with the same settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<AppChange>,
    /// The keys that changed in the file (`listen`, `instances`, `command`, ...), for a
    /// changed app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// What a reload of every app did to an app, as the file asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppChange {
    /// New in the file: started (after the apps it is `after`).
    Added,
    /// Gone from the file: its workers drain, its sockets are closed, it is forgotten.
    Removed,
    /// Some of its settings changed: rolled onto them (onto new sockets if `listen` changed).
    Changed,
}

impl std::fmt::Display for AppChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppChange::Added => "added",
            AppChange::Removed => "removed",
            AppChange::Changed => "changed",
        })
    }
}

/// The outcome of a reload request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadOutcome {
    /// Every slot was replaced.
    Ok,
    /// Stopped early; the reason says why.
    Aborted,
    /// Accepted, not waited for (`reload --no-wait`).
    Started,
    /// A canary reload replaced its first slot and holds: the other slots keep the previous
    /// generation until `reload APP --continue` (or its `canary_hold` passes), or the canary is
    /// taken back by `reload APP --rollback`.
    Held,
    /// The canary was taken back: the previous generation serves its slot again (`reload APP
    /// --rollback`, or a canary that exited or hung while held).
    #[serde(rename = "rolled_back")]
    RolledBack,
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Aborted => "aborted",
            ReloadOutcome::Started => "started",
            ReloadOutcome::Held => "held",
            ReloadOutcome::RolledBack => "rolled back",
        })
    }
}

/// One slot's replacement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlotReplacement {
    pub slot: usize,
    /// The pid replaced (none if the slot had no live worker).
    pub old_pid: Option<i32>,
    /// The new worker's pid.
    pub new_pid: i32,
    /// Seconds from start to ready.
    pub ready_secs: f64,
}

/// A reload under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadProgress {
    /// Target generation.
    pub generation: u64,
    /// Slots done / total.
    pub done: usize,
    /// Total slots.
    pub total: usize,
    /// Seconds since it began.
    pub elapsed_secs: f64,
    /// Reloads requested meanwhile, to run after this one (at most one).
    pub queued: bool,
    /// A canary reload: where its canary stands (absent for a reload that rolls every slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryProgress>,
    /// A rollback: the generation whose canary it takes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_back: Option<u64>,
}

/// Where the canary of a canary reload stands, for `status`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStage {
    /// Its canary is starting.
    Starting,
    /// Its canary is ready: the reload holds.
    Held,
    /// Continued: the other slots roll.
    Continued,
}

/// A canary reload's canary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryProgress {
    pub stage: CanaryStage,
    /// The canary's slot and pid, once it is ready.
    pub slot: Option<usize>,
    pub pid: Option<i32>,
    /// Seconds it has held so far.
    pub held_secs: f64,
    /// Seconds until it continues by itself (`canary_hold`); `None`: it holds until told.
    pub continues_in_secs: Option<f64>,
}

/// How a reload is asked for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReloadMode {
    /// Every slot, one after another (or a canary first, with `canary_hold`).
    #[default]
    Rolling,
    /// One slot, then hold (`reload APP --canary`).
    Canary,
    /// The held canary reload goes on with the other slots (`--continue`).
    Continue,
    /// The held canary is replaced by the previous generation (`--rollback`).
    Rollback,
}

/// Why a serving worker is replaced beside its slot (its replacement ready before it drains).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplaceReason {
    /// It stayed above `max_memory`.
    #[default]
    Memory,
    /// It missed its watchdog, or triggered it.
    Watchdog,
    /// It is older than `max_age`.
    MaxAge,
}

impl ReplaceReason {
    /// As people read it: "for memory", "hung", "for age".
    pub fn text(self) -> &'static str {
        match self {
            ReplaceReason::Memory => "memory",
            ReplaceReason::Watchdog => "watchdog",
            ReplaceReason::MaxAge => "max_age",
        }
    }
}

/// A worker being replaced beside its slot: for its memory, because it hung, or for its age.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryRecycleProgress {
    /// Why (missing on the wire from a release that replaced for memory only).
    #[serde(default)]
    pub reason: ReplaceReason,
    pub slot: usize,
    /// The worker being replaced.
    pub old_pid: i32,
    /// Its replacement, once spawned.
    pub new_pid: Option<i32>,
    /// The old worker's memory when its replacement was started (0 unless for memory).
    pub rss_bytes: u64,
    /// Seconds since the replacement was started.
    pub elapsed_secs: f64,
}
