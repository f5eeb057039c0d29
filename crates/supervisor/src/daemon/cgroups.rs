//! The shell's side of `[app.cgroup]` ([`crate::sys::cgroup`]): the hierarchy found at the
//! first worker that needs it (the supervisor moved into its leaf, the controllers enabled), each
//! app's cgroup made and its limits written before a worker joins it, and at stop every app
//! cgroup of this supervisor killed as a whole and removed. Where cgroups cannot be used the
//! workers run without, and the reason is logged once (`check` says it too).

use std::collections::BTreeSet;
use std::fs::File;
use std::time::Duration;

use crate::config::{CgroupLimits, Config};
use crate::sys::cgroup::{self, Hierarchy};

/// What is known of the cgroup hierarchy.
#[derive(Debug, Default)]
enum State {
    /// Not looked at yet.
    #[default]
    Unknown,
    /// Usable: the controllers enabled so far, and whether the supervisor took its leaf.
    Ready {
        hierarchy: Hierarchy,
        enabled: Vec<String>,
        claimed: bool,
    },
    /// Not usable, and why.
    Unavailable(String),
}

/// The apps' cgroups.
#[derive(Debug, Default)]
pub(super) struct AppCgroups {
    state: State,
    /// The reasons already logged.
    warned: BTreeSet<String>,
}

impl AppCgroups {
    /// `cgroup.procs` of the cgroup of `app`, its limits written, for a worker to join; `None`
    /// (logged once) where cgroups cannot be used.
    pub(super) fn procs_for(&mut self, app: &str, limits: &CgroupLimits) -> Option<File> {
        if matches!(self.state, State::Unknown) {
            self.state = match cgroup::detect() {
                Ok(hierarchy) => State::Ready {
                    hierarchy,
                    enabled: Vec::new(),
                    claimed: false,
                },
                Err(why) => State::Unavailable(why),
            };
        }
        let needed: Vec<&str> = limits.files().iter().map(|(c, _, _)| *c).collect();
        let result = match &mut self.state {
            State::Unknown => return None,
            State::Unavailable(why) => Err(why.clone()),
            State::Ready {
                hierarchy,
                enabled,
                claimed,
            } => match hierarchy.missing(&needed) {
                Some(why) => Err(why),
                None => {
                    let new: Vec<&str> = needed
                        .iter()
                        .copied()
                        .filter(|c| !enabled.iter().any(|e| e == c))
                        .collect();
                    let claim = if *claimed && new.is_empty() {
                        Ok(())
                    } else {
                        hierarchy.claim(&new).map_err(|e| {
                            format!("cannot set up cgroups in {}: {e}", hierarchy.base.display())
                        })
                    };
                    claim.and_then(|()| {
                        *claimed = true;
                        enabled.extend(new.iter().map(|c| c.to_string()));
                        hierarchy
                            .prepare(app, limits)
                            .map_err(|e| format!("cannot prepare its cgroup: {e}"))
                    })
                }
            },
        };
        match result {
            Ok(file) => Some(file),
            Err(why) => {
                if self.warned.insert(format!("{app}: {why}")) {
                    tracing::warn!(app, "[app.cgroup] is not applied: {why}");
                }
                None
            }
        }
    }

    /// The supervisor's stop: every app cgroup of this supervisor (also those an upgraded
    /// binary made before it) killed with `cgroup.kill` and removed.
    pub(super) fn remove_all(&mut self, config: &Config) {
        let hierarchy = match &self.state {
            State::Ready { hierarchy, .. } => hierarchy.clone(),
            State::Unavailable(_) => return,
            State::Unknown => {
                if !config
                    .apps
                    .iter()
                    .any(|a| a.worker.confine.cgroup.is_some())
                {
                    return;
                }
                match cgroup::detect() {
                    Ok(h) => h,
                    Err(_) => return,
                }
            }
        };
        let suffix = format!("-{}", std::process::id());
        let Ok(entries) = std::fs::read_dir(&hierarchy.base) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("app-") && name.ends_with(&suffix) {
                match cgroup::kill_and_remove(&e.path(), Duration::from_secs(2)) {
                    Ok(()) => tracing::debug!(cgroup = %e.path().display(), "app cgroup removed"),
                    Err(why) => tracing::warn!("{why}"),
                }
            }
        }
    }
}
