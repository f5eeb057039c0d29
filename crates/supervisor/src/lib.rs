//! `supervisor`: binds listening sockets once, runs N workers that inherit them (systemd
//! `LISTEN_FDS`), restarts crashed workers with backoff, replaces them one at a time on reload
//! with zero downtime, runs cluster-once `[[job]]`s, and answers `status`/`reload`/`stop` on a
//! Unix control socket. The binary (`main.rs`) parses the command line and installs the signal
//! handlers; everything else is here.
//!
//! Module map (the README's "Architecture" says more), in reading order:
//! - [`core`]: the decisions, pure: events in, actions and answers out (slots, rolling reload,
//!   recycling, scale, leases, handover), unit-tested with plain instants.
//! - [`daemon`]: the shell that carries them out: the event loop, one handler per control request,
//!   the status and metrics views, the config re-read, the worker processes.
//! - [`upgrade`]: the in-place upgrade: a pure sequencer, the handover format, `execve`.
//! - [`config`]: the file: raw serde, then the validated model, one validator per section.
//! - [`cli`]: the commands: arguments, one function per command, rendering.
//! - [`control`]: the control socket: wire types, server, client.
//! - [`jobs`]: the `[[job]]` scheduler and its runners; the reader of the cron backend.
//! - [`sys`]: every system call (binding, fork/exec, pidfd, `/proc`, reaping, locks).
//! - [`rundir`]: where a supervisor's runtime files and state live (the per-user private runtime
//!   directory), the one rule every module uses; it depends only on [`users`] (the config's
//!   defaults use it), for a user's name and home.
//! - [`users`]: the user and group databases and this process's own ids and limits, what the
//!   config's `user`, `group` and `[app.rlimits]` are resolved and checked with (it depends on
//!   no other module).
//! - [`balance`]: the kernel program that picks a worker slot's socket for `balance = "sticky" |
//!   "spread"`, pure (the table of buckets to slots, the classic BPF it compiles to).
//! - [`notify`] (readiness channels), [`runtimes`] (the Node preload), [`logs`] (worker output),
//!   [`orphans`] (adopted processes and the shell's own children), [`metrics`] (Prometheus),
//!   [`units`] (durations and sizes as people read them), `fuzzing` (the entry points of the
//!   fuzz targets: the config loader and the control decoder on arbitrary bytes).
#![warn(missing_docs)]

pub(crate) mod balance;
pub mod cli;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod core;
pub(crate) mod daemon;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod jobs;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod orphans;
pub(crate) mod rundir;
pub(crate) mod runtimes;
pub(crate) mod sys;
pub(crate) mod units;
pub(crate) mod upgrade;
pub(crate) mod users;
pub(crate) mod watch;

pub use daemon::Command;
pub use logs::own::OwnWriter as LogWriter;
