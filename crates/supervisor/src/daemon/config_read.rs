//! The shell's side of a reload: it reads the config file again, asks [`super::reread`] what
//! each app of it takes, binds the sockets of apps that are new or whose listeners moved (an
//! address that stays is shared, never bound twice; one that cannot be bound makes that app's
//! part an error, named with the port), and hands the core the whole file
//! ([`crate::core::FileRead`]). Once the core has applied it ([`crate::core::Action::ConfigApplied`]),
//! the file is the running config: what `start APP` binds, what an in-place upgrade compares
//! the file with, what the `[[job]]` tables are prepared from.

use super::reread::{self, Running, SocketsPlan};
use super::shell::Shell;
use crate::config::Config;
use crate::core::{AppId, AppRead, FileRead, Phase};
use crate::jobs::scheduler;
use crate::sys::listeners::ListenError;

impl Shell {
    /// Reads the config file again for a reload: every app's part, with its sockets bound.
    pub(super) fn read_config(&mut self) -> Result<FileRead, String> {
        let fresh = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        let plan = reread::plan(&self.config, &fresh, |name| self.running(name));
        let mut apps = Vec::with_capacity(plan.apps.len());
        for p in plan.apps {
            let mut sockets = p.sockets.and_then(|s| match s {
                SocketsPlan::Keep(set) => Ok(set),
                SocketsPlan::Bind { reuse } => {
                    self.sockets.open(&p.app.listeners, &reuse).map_err(|e| {
                        let how = match e {
                            ListenError::BalanceChanged { .. } => format!(
                                ": `supervisor stop {app}`, then `supervisor reload` (the whole file: `reload {app}` leaves a stopped app as it is), then `supervisor start {app}`; or restart the supervisor",
                                app = p.app.name
                            ),
                            _ => String::new(),
                        };
                        format!("{}: {e}{how}", fresh.path.display())
                    })
                }
            });
            if !p.known
                && let (Some(policy), Ok(_)) = (p.app.singleton, &sockets)
                && let Err(e) = self.leases.can_watch(&self.config.cron_url, policy)
            {
                sockets = Err(e);
            }
            let settings =
                sockets.map(|set| reread::app_settings(p.app, self.sockets.get(set), set));
            apps.push(AppRead {
                name: p.app.name.clone(),
                after: p.app.after.clone(),
                settings,
                changed: p.changed,
            });
        }
        let read = FileRead {
            apps,
            refused: plan.refused,
        };
        self.last_read = Some(fresh);
        Ok(read)
    }

    /// What the core runs of app `name`, for the plan.
    fn running(&self, name: &str) -> Option<Running> {
        let app = self.core.app_named(name)?;
        let sockets = app.settings().sockets;
        let specs = match self.sockets.specs(sockets) {
            Some(specs) => specs.to_vec(),
            None => self
                .config
                .apps
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.listeners.clone())
                .unwrap_or_default(),
        };
        Some(Running {
            sockets,
            in_use: app.sockets_in_use().into_iter().collect(),
            stopped: app.phase() == Phase::Stopped,
            specs,
        })
    }

    /// The core applied the file read last: all of it (`None`) or app `name`'s part. It is the
    /// running config from now on, and the `[[job]]` tables are prepared from it again.
    pub(super) fn config_applied(&mut self, name: Option<&str>) {
        let Some(fresh) = self.last_read.as_ref() else {
            return;
        };
        match name {
            None => self.config = fresh.clone(),
            Some(name) => {
                if let (Some(new), Some(old)) = (
                    fresh.apps.iter().find(|a| a.name == name),
                    self.config.apps.iter_mut().find(|a| a.name == name),
                ) {
                    *old = new.clone();
                }
                self.config.jobs = fresh.jobs.clone();
            }
        }
        let policies = self.config.apps.iter().map(|a| (a.name.as_str(), &a.logs));
        self.logs.configure(policies);
        crate::logs::own::set_rotation(self.config.log_rotation);
        let jobs = scheduler::prepare(&self.config, |app| {
            let a = self.core.app_named(app)?;
            self.sockets.get(a.settings().sockets).first()
        });
        if let Some(scheduler) = &mut self.jobs {
            scheduler.replace(jobs);
        }
        self.triggers.sync(&self.config.apps);
    }

    /// A cluster singleton was added or started again: its lease task starts.
    pub(super) fn watch_lease(&mut self, id: AppId) {
        let Some(app) = self.core.app(id) else { return };
        let Some(policy) = app.settings().singleton else {
            return;
        };
        let name = app.name().to_string();
        if let Err(e) = self
            .leases
            .watch(&self.config.cron_url, id, name.clone(), policy)
        {
            tracing::error!(app = %name, "cluster singleton: cannot watch its lease: {e}");
        }
    }
}
