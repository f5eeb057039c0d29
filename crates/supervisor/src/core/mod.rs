//! The supervisor's decisions, without I/O: a state machine that takes [`Event`]s (a worker was
//! spawned, became ready, exited; a timer fired; a reload or stop was asked for) with the current
//! instant and returns [`Action`]s (spawn, signal, arm or cancel a timer, read the config, answer
//! a client, exit) for the shell ([`crate::daemon`]) to carry out. It forks nothing, sends no
//! signal, reads no clock and no file, and knows no wire format: it answers clients with its own
//! [`Answer`] and reports with its own types ([`report`]), which the shell puts into words. So
//! every rule here (backoff and crash loops, rolling reload with surge and unavailability,
//! coalescing, aborts, stop during a reload, the first start) is unit-tested with plain instants
//! and no processes.
//!
//! Memory recycling (`max_memory`) follows the same split: the core arms
//! [`TimerKey::MemorySample`] once a second while some app has a limit, the shell answers the
//! resulting [`Action::SampleMemory`] with one `/proc` scan ([`Event::Memory`]), and the app
//! decides from plain numbers and instants which worker to replace, when and how.
//!
//! Cluster singletons (`scope = "cluster"`) follow it too: a lease task in the shell holds the
//! app's lease in the cron backend and reports [`Event::Lease`]; the app runs its workers only
//! while it holds the lease ([`Phase::Standby`] otherwise), hands each the fencing token, and on
//! [`LeaseEvent::Lost`] drains them so that they are killed before the lease expires. A stopped
//! singleton asks for [`Action::ReleaseLease`] once its last worker is gone.
//!
//! [`Core`] (`apps.rs`, the decisions across apps) holds the apps in the running config's order,
//! each known by a stable [`AppId`] (a reload adds and removes apps; the ids of the others stay,
//! and a worker id says its app's): it starts each once the apps it is `after` are ready,
//! routes `stop APP`, `start APP` and `reset`, and closes a set of sockets once nothing uses it
//! ([`SocketSet`]). `reload_all.rs` applies the whole file on a reload of every app (added,
//! removed, changed apps; refused as a whole when it cannot be applied live; [`file`] is what the
//! shell reads of it), `stop.rs` stops the apps in reverse order. Each [`App`] (`app/`, split by
//! concern) runs its slots (one worker each when serving) and the workers that are starting,
//! serving or draining, and tells the core what concerns it through [`AppReport`]s. [`adopt`]
//! holds what an in-place upgrade hands over.

pub mod adopt;
pub mod app;
mod apps;
pub mod file;
#[cfg(test)]
mod file_tests;
mod reload_all;
pub mod report;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod singleton_tests;
mod sockets;
mod stop;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

pub use apps::Core;
pub use file::{AppRead, FileRead};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{
    AgePolicy, MemoryPolicy, ReloadPolicy, RestartPolicy, SingletonPolicy, WorkerSpec,
};
use report::{ReloadMode, ReloadReport};

/// Supervisor-unique worker id (never reused, unlike pids); its high bits say which app it is
/// ([`app_of`]).
pub type WorkerId = u64;

/// An app's identity for the supervisor's whole life (in-place upgrades included): the apps of
/// the file the supervisor started with are numbered in file order from 0, an app a reload adds
/// gets the next number, and a number is never given twice. It is not a position in the file:
/// apps come and go with reloads, so it never indexes the config's list of apps (look an app up
/// by name or by id).
pub type AppId = usize;

/// The app a worker id belongs to (ids are `(app + 1) << 32 | n`).
pub fn app_of(id: WorkerId) -> AppId {
    ((id >> 32) as usize).saturating_sub(1)
}

/// A set of listening sockets the shell bound for an app (one per `[[app.listen]]`, in order),
/// named by a number the shell gives out. The core decides which set each new worker gets and
/// when a set is no longer used by anyone ([`Action::CloseSockets`]): an app whose listeners
/// moved rolls its workers from its old set onto the new one, and the old one closes once no
/// slot and no settings refer to it any more. A stopping or stopped app uses none.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct SocketSet(pub u64);

/// Which slot sockets of a set take new connections, for an app with a socket per slot: the
/// shell points the kernel's choice of socket (`SO_REUSEPORT`) at the `serving` ones, and
/// closes the sockets from `open` up. A slot serves while a worker of it on this set is ready
/// and not told to drain: during a rolling reload of a slot its old worker serves until its
/// replacement is ready, which then serves on the same socket, so the slot never stops serving
/// and no client moves. A crashed slot stops serving until its restart is ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The app's slots when they use this set (the hash's buckets), else 0.
    pub slots: usize,
    /// Sockets `0..open` stay open: the slots, and those above of a worker still running.
    pub open: usize,
    /// The slots whose socket takes new connections, in order.
    pub serving: Vec<usize>,
}

/// How long a worker taken off its slot's socket keeps accepting before it is told to drain:
/// connections the kernel routed to that socket before (their handshake under way) reach its
/// accept queue and are taken.
pub const UNROUTE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Identifies a client waiting for an answer; the shell maps it to the connection.
pub type ReplyTo = u64;

/// Who waits for the end of an app's reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// A client: answered with the app's report.
    Client(ReplyTo),
    /// The core's reload of every app: it goes on with the next app.
    EveryApp,
}

/// What the core answers a client (the shell words it for the control protocol).
#[derive(Debug, Clone)]
pub enum Answer {
    /// A reload: one report per app, in the order they were reloaded (outcome `started`, at
    /// once, for a reload not waited for).
    Reload(Vec<ReloadReport>),
    /// Every worker of an app was replaced at once.
    Restarted {
        /// The app.
        app: String,
        /// The generation its new workers run.
        generation: u64,
        /// How many were started.
        workers: usize,
    },
    /// An app runs another number of workers.
    Scaled {
        /// The app.
        app: String,
        /// Slots before.
        from: usize,
        /// Slots now.
        to: usize,
        /// What to know (until when it holds, or why it was not applied).
        note: Option<String>,
    },
    /// Every worker is gone.
    Stopped,
    /// An app stopped by hand (`stop APP`) or started again (`start APP`), or counters reset.
    Switched(Switched),
    /// The request was not carried out, for this reason.
    Refused(String),
}

/// What `stop APP`, `start APP` and `reset` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    /// The app's workers are gone and its sockets closed.
    Stopped {
        /// The app.
        app: String,
        /// How many workers were drained.
        workers: usize,
        /// It was stopped already: nothing was done.
        already: bool,
    },
    /// The app runs again: every slot has a ready worker (or it stands by, for a cluster
    /// singleton whose lease another host holds).
    Started {
        /// The app.
        app: String,
        /// Its ready workers' pids, by slot.
        pids: Vec<i32>,
        /// It was running already: nothing was done.
        already: bool,
        /// What else to know (standing by, waiting for the apps it is `after`).
        note: Option<String>,
    },
    /// Restart counters cleared, of these apps.
    Reset {
        /// The apps.
        apps: Vec<String>,
    },
}

/// What an app runs and how: the part of the config the core decides with.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// The worker program and its timeouts.
    pub spec: Arc<WorkerSpec>,
    /// Crash restart policy.
    pub restart: RestartPolicy,
    /// Rolling reload policy.
    pub reload: ReloadPolicy,
    /// Memory recycling policy.
    pub memory: MemoryPolicy,
    /// Replacing workers for their age.
    pub age: AgePolicy,
    /// Said after "was not ready within ..." (what the runtime waits for), if anything.
    pub not_ready_hint: Option<String>,
    /// `Some` for a cluster singleton: it runs only while this host holds its lease.
    pub singleton: Option<SingletonPolicy>,
    /// The sockets its workers get.
    pub sockets: SocketSet,
    /// How its connections are spread: with a socket per slot (`sticky`, `spread`) the core
    /// says which slots take new connections ([`Action::Route`]).
    pub balance: crate::config::Balance,
}

/// What the lease task of a cluster singleton reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This host holds the lease now, with this fencing token: run the app.
    Acquired {
        /// The fencing token, handed to the workers (`SUPERVISOR_FENCING_TOKEN`).
        token: u64,
        /// This host as the holder (`host:pid`).
        holder: String,
    },
    /// Another host holds it (or nobody could be read): stand by.
    Standby {
        /// The holder (`host:pid`) and its token, if known.
        holder: Option<(String, u64)>,
    },
    /// The lease is lost (a renewal was refused, or could not succeed in time): stop the
    /// workers so that they are gone before `expires_at`, the latest the lease may still be
    /// valid.
    Lost {
        /// When the lease expires at the latest (measured from the last renewal sent).
        expires_at: Instant,
        reason: String,
    },
    /// The lease was given back after a stop.
    Released,
}

/// A cluster singleton's role on this host, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SingletonRole {
    /// This host holds the lease and runs the app.
    Holder,
    /// Another host (or nobody yet) holds it; this one waits to take over.
    Standby,
}

impl std::fmt::Display for SingletonRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SingletonRole::Holder => "this host",
            SingletonRole::Standby => "standby",
        })
    }
}

/// SIGKILL of a fenced worker comes this long before its lease expires at the latest.
pub fn lease_kill_margin(policy: &SingletonPolicy) -> std::time::Duration {
    (policy.lease_ttl / 10).min(std::time::Duration::from_millis(500))
}

/// `at` plus `d`, never panicking: a duration too long to add (past a hundred years, which the
/// config's bounds never allow but an upgrade's handover or a simulation could carry) gives a
/// deadline that in practice never comes, instead of an overflow.
pub fn later(at: Instant, d: std::time::Duration) -> Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d.min(FAR))
        .or_else(|| at.checked_add(std::time::Duration::from_secs(86_400)))
        .unwrap_or(at)
}

/// How often worker memory is measured while some app has `max_memory`.
pub const MEMORY_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A pending deadline; at most one per key is armed (arming again moves it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    /// A starting worker must be ready by then.
    Ready(WorkerId),
    /// A draining worker's process group is killed then.
    Kill(WorkerId),
    /// A slot of an app backing off after a crash starts again then.
    Restart {
        /// The app.
        app: AppId,
        /// The slot.
        slot: usize,
    },
    /// Measure every worker's memory then (armed while some app has `max_memory` or
    /// `max_age`).
    MemorySample,
    /// A ready worker with a `watchdog` that has not pinged since is hung then.
    Watchdog(WorkerId),
    /// A worker taken off its slot's socket (a scale down of an app with a socket per slot) is
    /// told to drain then, once the connections routed to it before have been accepted.
    Drain(WorkerId),
    /// The canary of an app's reload into `generation` has held its `canary_hold` then.
    CanaryHold {
        /// The app.
        app: AppId,
        /// The reload's generation.
        generation: u64,
    },
}

/// A signal for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGTERM` to the worker: drain.
    Term,
    /// `SIGKILL` to the worker's whole process group.
    KillGroup,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action {
    /// Fork/exec a worker; answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        /// The app.
        app: AppId,
        /// The id the core gave it.
        worker: WorkerId,
        /// Its slot.
        slot: usize,
        /// Its generation.
        generation: u64,
        /// What to run.
        spec: Arc<WorkerSpec>,
        /// The sockets it inherits (at fd 3..).
        sockets: SocketSet,
        /// The fencing token of a cluster singleton's lease (`SUPERVISOR_FENCING_TOKEN`).
        fencing_token: Option<u64>,
    },
    /// A stopped cluster singleton's workers are all gone: give its lease back (and stop
    /// trying to take it).
    ReleaseLease(AppId),
    /// A cluster singleton was added by a reload or started again by hand: start its lease
    /// task (it reports [`Event::Lease`]).
    WatchLease(AppId),
    /// For an app with a socket per slot (`balance = "sticky" | "spread"`): which of the set's
    /// slot sockets take new connections and how many must stay open. Emitted when it changes.
    Route {
        /// The set.
        sockets: SocketSet,
        /// Its slots.
        route: Route,
    },
    /// No worker, slot or setting uses this set of sockets any more: close it (connections to
    /// its addresses are refused from now on, unless another set shares a socket).
    CloseSockets(SocketSet),
    /// The config file read last ([`Event::Config`]) is now the running config: every app of it
    /// (`None`, a reload of every app), or the part of one app (`Some(name)`).
    ConfigApplied(Option<String>),
    /// Signal a worker.
    Signal { worker: WorkerId, signal: Signal },
    /// Deliver [`Event::Timer`] with `timer` at `at` (replacing the same key's deadline).
    Arm {
        /// Which deadline.
        timer: TimerKey,
        at: Instant,
    },
    /// Forget a deadline.
    Cancel(TimerKey),
    /// Read the config file again; answer with [`Event::Config`].
    ReadConfig,
    /// Measure the resident memory of every worker's process group (one `/proc` scan); answer
    /// with [`Event::Memory`].
    SampleMemory,
    /// An app's reload ended, for the shell's record (metrics: outcome and duration); the
    /// core has answered its clients already. Emitted once per [`AppReport::Reloaded`].
    ReloadEnded(ReloadReport),
    /// Answer a client.
    Reply {
        /// The client.
        to: ReplyTo,
        /// The answer.
        answer: Answer,
    },
    /// The supervisor as a whole changed state or status line (for a service manager: systemd's
    /// `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`). Emitted only on a change.
    Service {
        /// What it does now.
        state: ServiceState,
        /// One line: every app's ready workers, or what it reloads or stops.
        status: String,
    },
    /// Everything is stopped (`Ok`) or the first start failed (`Err` with the reason): exit.
    Exit(Result<(), String>),
}

/// What the supervisor as a whole is doing, as a service manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// The first workers of some app are not all ready yet.
    Starting,
    /// Every app had all its first workers ready once, and no reload is under way.
    Ready,
    /// A reload (of one app or of all) is under way.
    Reloading,
    /// Stopping (or stopped).
    Stopping,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called exit with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// The exit code of a configuration error (`EX_CONFIG`, sysexits.h): a worker that exits with
/// it before it was ready says the app cannot run as configured (the Node preload does, for a
/// `listen()` on a port the supervisor does not hold). Restarting cannot fix that: in the first
/// start it fails the start at once, like a program that cannot be executed.
pub const EX_CONFIG: i32 = 78;

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(EX_CONFIG) => {
                write!(
                    f,
                    "exit code {EX_CONFIG} (EX_CONFIG: a configuration error)"
                )
            }
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// Start every slot (once, first).
    Start,
    /// A [`Action::Spawn`] succeeded.
    Spawned {
        /// The worker.
        worker: WorkerId,
        /// Its pid.
        pid: i32,
    },
    /// A [`Action::Spawn`] failed before the program ran.
    SpawnFailed {
        /// The worker.
        worker: WorkerId,
        error: String,
    },
    /// The worker said it is ready.
    Ready(WorkerId),
    /// The worker's `STATUS=` text.
    StatusText(WorkerId, String),
    /// The worker's watchdog: `WATCHDOG=1` (alive), or `WATCHDOG=trigger` (`trigger`: it asks
    /// to be treated as hung).
    Watchdog {
        /// The worker.
        worker: WorkerId,
        /// `WATCHDOG=trigger`.
        trigger: bool,
    },
    /// How late the worker's event loop ran its last timer (the Node preload's heartbeat).
    LoopLag(WorkerId, std::time::Duration),
    /// The worker process exited (the shell reaps it after this event).
    Exited {
        /// The worker.
        worker: WorkerId,
        status: ExitStatus,
    },
    /// An armed deadline passed.
    Timer(TimerKey),
    /// The answer to [`Action::SampleMemory`]: the resident memory in bytes of each worker's
    /// process group (workers whose group could not be read are left out).
    Memory(Vec<(WorkerId, u64)>),
    /// A rolling reload of one app, or of every app one at a time; or a canary reload of one
    /// app, continued or rolled back.
    Reload {
        /// Rolling, canary, continue or rollback.
        mode: ReloadMode,
        /// The app, or every app.
        app: Option<AppId>,
        /// The client to answer, if any.
        reply: Option<ReplyTo>,
        /// Answer `reply` once the reload ended; otherwise at once, with each app's report
        /// saying `started` and the generation of its reload (or of the one under way that
        /// it is queued behind).
        wait: bool,
    },
    /// The answer to [`Action::ReadConfig`]: every app of the file, or why the file is not
    /// valid.
    Config(Result<FileRead, String>),
    /// Replace every worker of an app at once, without waiting for readiness (a stuck app).
    Restart {
        /// The app.
        app: AppId,
        /// The waiting client.
        reply: Option<ReplyTo>,
    },
    /// Run `instances` workers of an app from now on (until a reload re-reads the file).
    Scale {
        /// The app.
        app: AppId,
        /// How many.
        instances: usize,
        /// The waiting client.
        reply: Option<ReplyTo>,
    },
    /// Drain everything and exit; `reply` is answered when all workers are gone.
    Stop {
        /// The waiting client, if any.
        reply: Option<ReplyTo>,
    },
    /// Stop, and kill every worker's process group at once.
    FastStop,
    /// Drain and stop one app, close its sockets, and keep it stopped (through reloads) until
    /// [`Event::StartApp`]; `reply` is answered when its workers are gone.
    StopApp {
        /// The app.
        app: AppId,
        /// The waiting client.
        reply: Option<ReplyTo>,
    },
    /// Start a stopped app again on `sockets` (bound again by the shell); `reply` is answered
    /// once every slot has a ready worker, or with the first failure.
    StartApp {
        /// The app.
        app: AppId,
        /// Its sockets, bound again.
        sockets: SocketSet,
        /// The waiting client.
        reply: Option<ReplyTo>,
    },
    /// Clear the restart counters of one app, or of every app.
    Reset {
        /// The app, or every app.
        app: Option<AppId>,
        /// The waiting client.
        reply: Option<ReplyTo>,
    },
    /// The lease task of a cluster singleton reports.
    Lease {
        /// The app.
        app: AppId,
        /// What happened to its lease.
        event: LeaseEvent,
    },
}

/// Lifecycle of a worker process (it is forgotten when it exits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Started, not yet ready.
    Starting,
    /// Ready: serving.
    Ready,
    /// Told to stop (SIGTERM sent); finishing in-flight work.
    Draining,
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
        })
    }
}

/// Why a slot has no serving worker, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitState {
    /// Waiting out the backoff before the next start.
    Backoff,
    /// Backing off after more unstable restarts than `max_restarts` within `window`.
    CrashLoop,
}

impl std::fmt::Display for WaitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaitState::Backoff => "backoff",
            WaitState::CrashLoop => "crash-loop",
        })
    }
}

/// A phase, of the supervisor or of an app, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// An app waiting for the apps it is `after`.
    Waiting,
    /// Starting the first workers.
    Starting,
    /// Serving.
    Running,
    /// A cluster singleton whose lease another host holds: no worker runs here.
    Standby,
    /// Draining every worker: before the supervisor exits, or an app stops or is removed.
    Stopping,
    /// Done: the supervisor exits; an app stopped by hand (`stop APP`), until `start APP`.
    Stopped,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Standby => "standby",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        })
    }
}

/// One worker process as the core knows it.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Unique id.
    pub id: WorkerId,
    pub slot: usize,
    pub generation: u64,
    /// `app.slot`.
    pub name: String,
    /// Process id, once spawned.
    pub pid: Option<i32>,
    /// Lifecycle state.
    pub state: WorkerState,
    /// When it was spawned.
    pub started_at: Instant,
    /// Last `STATUS=` text.
    pub status_text: Option<String>,
    /// What it runs.
    pub spec: Arc<WorkerSpec>,
    /// Since when its memory has been above the app's `max_memory` (every sample since), with
    /// the last sample in bytes; `None` while below or not measured.
    pub over_memory: Option<(Instant, u64)>,
    /// When its process group is to be killed (armed [`TimerKey::Kill`]), once draining.
    pub kill_at: Option<Instant>,
    /// The sockets it was started on.
    pub sockets: SocketSet,
    /// Draining but not told yet: taken off its slot's socket, it is signalled then
    /// ([`TimerKey::Drain`]).
    pub term_at: Option<Instant>,
    /// It missed its watchdog (or triggered it): replaced like a worker over `max_memory`,
    /// first.
    pub hung: bool,
    /// Its event loop's last lag, when it reports one.
    pub event_loop_lag: Option<std::time::Duration>,
}
