//! The control socket: protocol (framing and messages), server (in the daemon), client (the
//! `status`, `reload`, `stop`, ... commands) and registry (how a client finds the running
//! supervisors of its user: `supervisor ls`, `-n NAME`, no flag at all when one runs).

pub mod client;
pub mod fair;
pub mod logs;
pub mod protocol;
pub mod registry;
pub mod server;
