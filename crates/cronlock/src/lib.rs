//! `cronlock`: cluster-once cron jobs. Each scheduled tick is claimed by its UTC instant in a
//! shared backend (Redis: one server, Sentinel or Cluster; or a local directory on a single
//! host), run under a renewed lease with a strictly increasing fencing token, and recorded in a
//! bounded history. See [`backend::redis::url`] for the URL forms and `min_replicas_ack`, and
//! the README's "Redis Sentinel and Redis Cluster" for the guarantee of each backend through a
//! failover.
//!
//! ```no_run
//! use std::time::Duration;
//! use cronlock::{Backend, Identity, Job, JobSpec, Scheduler};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), cronlock::Error> {
//! let backend = Backend::from_url("redis://127.0.0.1:6379/0")?;
//! let mut scheduler = Scheduler::new(backend, Identity::current());
//! let spec = JobSpec::new("report", "0 30 2 * * *").timezone_name("Europe/Berlin")?;
//! scheduler.add(Job::new(spec, |ctx| async move {
//!     tracing::info!(token = ctx.token, "writing the report");
//!     Ok(())
//! }))?;
//! let shutdown = CancellationToken::new();
//! scheduler.run(shutdown, Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! Guarantee: at most one run per tick across all instances while Redis keeps its data. A Redis
//! restart without persistence forgets tick claims younger than their keep time (a tick may then
//! run again only if it is re-claimed within its misfire tolerance) but never lowers the fencing
//! token; a process paused longer than its lease loses the lease, stops its job before the lease
//! would expire where it can, and is recognisable downstream by its lower token. A claim that
//! Redis runs after its client gave up on it (Redis paused or stalled) is refused by Redis and
//! changes nothing (see [`backend::redis`]). On Sentinel or Cluster, replication is
//! asynchronous: a claim the master acknowledged can be lost in a failover, unless
//! `min_replicas_ack` makes every claim, lease acquisition and renewal wait for replicas (one
//! not acknowledged in time is not used).
#![warn(missing_docs)]

pub mod backend;
pub mod error;
mod health;
pub mod job;
pub mod schedule;
pub mod scheduler;
pub mod singleton;
pub mod url;

pub use backend::{
    AckPolicy, Backend, ClaimOutcome, ClaimRequest, HISTORY_LEN, Layout, Lease, Node, NodeRole,
    Shard, Topology,
};
pub use error::{Error, Result};
pub use job::{
    Holder, Identity, Job, JobContext, JobFn, JobMeta, JobSpec, Misfire, Outcome, Overlap,
    RunRecord, TickId, next_tick,
};
pub use schedule::{Schedule, parse_timezone};
pub use scheduler::{Clock, Scheduler, SchedulerOptions, Stats, StatsSnapshot};
pub use singleton::{Acquire, Contender, SingletonHolder, SingletonLease, SingletonLeases};
pub use url::{RedactedUrl, redact_url};
