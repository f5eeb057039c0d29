//! `kill_signal`, `wait_ready` and `shutdown_with_message`: PM2's app contract, under PM2's
//! names, so that an app written for PM2 (and its ecosystem file's options) runs unchanged.

use super::super::model::{AppContract, Runtime, StopSignal};
use super::super::raw::Spanned;
use super::{ConfigError, Validator};

/// The raw `kill_signal`, `wait_ready` and `shutdown_with_message` of an app.
pub(super) type PmKeys<'a> = (
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<bool>>,
    &'a Option<Spanned<bool>>,
);

impl Validator<'_> {
    /// The contract of app `key`; `wait_ready` and `shutdown_with_message` are carried out by the
    /// Node preload, so they need `runtime = "node"`.
    pub(super) fn contract(
        &self,
        key: &str,
        (kill_signal, wait_ready, shutdown_with_message): PmKeys<'_>,
        runtime: Runtime,
    ) -> Result<AppContract, ConfigError> {
        let kill_signal = match kill_signal {
            None => StopSignal::default(),
            Some(s) => StopSignal::parse(s.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = StopSignal::ALL.iter().map(|s| s.name()).collect();
                self.err_at(
                    s.span(),
                    format!("{key}.kill_signal"),
                    format!(
                        "unknown signal {:?}: one of {}",
                        s.get_ref(),
                        names.join(", ")
                    ),
                )
            })?,
        };
        let node_only = |flag: &Option<Spanned<bool>>, name: &str| match flag {
            Some(f) if *f.get_ref() && runtime != Runtime::Node => Err(self.err_at(
                f.span(),
                format!("{key}.{name}"),
                "needs runtime \"node\" (the Node preload carries it out); a program of another \
                 language reports readiness itself with READY=1 on NOTIFY_SOCKET and drains on \
                 `kill_signal`",
            )),
            Some(f) => Ok(*f.get_ref()),
            None => Ok(false),
        };
        Ok(AppContract {
            kill_signal,
            wait_ready: node_only(wait_ready, "wait_ready")?,
            shutdown_with_message: node_only(shutdown_with_message, "shutdown_with_message")?,
        })
    }
}
