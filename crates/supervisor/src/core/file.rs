//! What the core gets from a re-read of the config file ([`super::Event::Config`]): every app of
//! the file in file order, with its settings (its sockets already bound by the shell, or why its
//! part cannot be applied), the apps it is `after` by name, and what changed since the running
//! config; plus what the file changes that cannot be applied while the supervisor runs. The
//! core decides from it what a reload does: which apps are added, removed, rolled onto new
//! settings, or refused.

use super::AppSettings;

/// The config file, read again for a reload.
#[derive(Debug, Clone, Default)]
pub struct FileRead {
    /// Every app of the file, in file order.
    pub apps: Vec<AppRead>,
    /// Changes that cannot be applied while the supervisor runs (the control socket, the
    /// metrics address, the cron backend, the supervisor's name), each said in full: a reload
    /// of every app is refused while there is any, and nothing changes.
    pub refused: Vec<String>,
}

/// One app of the file read again.
#[derive(Debug, Clone)]
pub struct AppRead {
    /// Its name (how the core matches it with a running app).
    pub name: String,
    /// The apps (by name) it starts after.
    pub after: Vec<String>,
    /// Its settings, with the sockets its workers are to get; or why its part of the file
    /// cannot be applied (its new sockets could not be bound, its lease policy changed).
    pub settings: Result<AppSettings, String>,
    /// The keys whose values differ from the running config (`listen`, `instances`,
    /// `command`, ...); empty for an app that is new or unchanged.
    pub changed: Vec<String>,
}

impl FileRead {
    /// App `name`'s part.
    pub fn app(&self, name: &str) -> Option<&AppRead> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// Every set of sockets bound for this read (a set no app takes up is closed again).
    pub fn sockets(&self) -> impl Iterator<Item = super::SocketSet> + '_ {
        self.apps
            .iter()
            .filter_map(|a| a.settings.as_ref().ok().map(|s| s.sockets))
    }
}
