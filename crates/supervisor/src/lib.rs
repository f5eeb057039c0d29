//! `supervisor`: binds listening sockets once, runs N workers that inherit them (systemd
//! `LISTEN_FDS`), restarts crashed workers with backoff, replaces them one at a time on reload
//! with zero downtime, and answers `status`/`reload`/`stop` on a Unix control socket.
//!
//! Module map (see README "Architecture"): [`config`] validates the file; [`core`] decides
//! (a pure state machine: events in, actions out, with the rolling reload in `core::reload`);
//! [`daemon`] is the shell that carries the decisions out (the event loop, its deadline queue);
//! [`sys`] holds every system call (binding, fork/exec, pidfd signals and exits, `/proc`);
//! [`worker`] is one process's handle (environment, watch tasks); [`logs`] frames and logs
//! its output; [`notify`] reads
//! readiness (and words the supervisor's own to systemd); [`orphans`] reaps and kills adopted
//! processes that are not workers; [`runtimes`] adds what a language needs (the Node preload);
//! [`control`] is the control socket; [`cli`] the commands (args, one function per command,
//! rendering with its tables); [`jobs`] runs the `[[job]]` tables (`jobs::scheduler`, with a
//! runner per kind) and reads the cron backend (`jobs::registry`, for `supervisor jobs`, `status`
//! and the metrics);
//! [`singleton`] holds the leases of the cluster singletons; [`metrics`] renders and serves the
//! Prometheus metrics; [`upgrade`] hands the running supervisor over to a new binary in place
//! (same pid, sockets and workers).
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod orphans;
pub mod runtimes;
pub mod singleton;
pub mod sys;
pub mod units;
pub mod upgrade;
pub mod worker;
