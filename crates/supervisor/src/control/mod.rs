//! The control socket: protocol (framing and messages), server (in the daemon) and client (the
//! `status`, `reload` and `stop` commands).

pub mod client;
pub mod fair;
pub mod protocol;
pub mod server;
