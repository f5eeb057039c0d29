//! What a reload takes from the config file read again, decided from the running config and the
//! fresh one (no I/O here): every known app's new settings for the core, the `[[job]]` tables for
//! the scheduler, and what cannot change without a restart (a new app, moved listeners, a
//! singleton's lease policy, the control socket, metrics address or cron backend), which is kept
//! as it is and named in a warning. Also how the core is built from a config in the first place.

use std::sync::Arc;

use super::shell::Shell;
use crate::config::{AppConfig, Config};
use crate::core::{AppIndex, AppSettings};
use crate::jobs::scheduler::{self, PreparedJob};
use crate::runtimes;
use crate::sys::listeners::BoundListener;

/// The core's settings for an app: the worker spec and policies, and the hint for a worker that
/// is never ready (which sockets its runtime waits for).
pub(super) fn app_settings(app: &AppConfig, listeners: &[BoundListener]) -> AppSettings {
    AppSettings {
        spec: Arc::new(app.worker.clone()),
        restart: app.restart,
        reload: app.reload,
        memory: app.memory,
        not_ready_hint: runtimes::not_ready_hint(app.worker.runtime, listeners),
        singleton: app.singleton,
    }
}

/// Every app's settings with the indices of the apps it is `after`, in file order.
pub(super) fn core_apps(
    config: &Config,
    listeners: &[Vec<BoundListener>],
) -> Vec<(AppSettings, Vec<AppIndex>)> {
    config
        .apps
        .iter()
        .zip(listeners)
        .map(|(a, l)| {
            let after = a
                .after
                .iter()
                .filter_map(|name| config.apps.iter().position(|o| &o.name == name))
                .collect();
            (app_settings(a, l), after)
        })
        .collect()
}

/// What a reload applies.
#[derive(Debug)]
pub(super) struct Reread {
    /// The settings of every app the supervisor runs and the file still has, in file order.
    pub(super) settings: Vec<AppSettings>,
    /// The `[[job]]` tables of the fresh file (a changed set replaces the scheduler).
    pub(super) jobs: Vec<PreparedJob>,
    /// What was not applied, and why.
    pub(super) warnings: Vec<String>,
}

/// The part of `fresh` a reload of the supervisor running `running` (with these listeners,
/// bound once) applies.
pub(super) fn reread(running: &Config, listeners: &[Vec<BoundListener>], fresh: &Config) -> Reread {
    let mut warnings = Vec::new();
    let mut settings = Vec::with_capacity(fresh.apps.len());
    let file = fresh.path.display();
    for app in &fresh.apps {
        let Some(i) = running.apps.iter().position(|a| a.name == app.name) else {
            warnings.push(format!(
                "app {}: a new app in the config file: adding apps needs a restart",
                app.name
            ));
            continue;
        };
        if app.listeners != running.apps[i].listeners {
            warnings.push(format!(
                "app {}: listeners changed in {file}: sockets are bound once; restart the supervisor to apply",
                app.name
            ));
        }
        let mut s = app_settings(app, &listeners[i]);
        if s.singleton != running.apps[i].singleton {
            warnings.push(format!(
                "app {}: scope, lease_ttl or standby_poll changed in {file}: the lease is kept as it is; restart the supervisor to apply",
                app.name
            ));
            s.singleton = running.apps[i].singleton;
        }
        settings.push(s);
    }
    if fresh.control_socket != running.control_socket
        || fresh.cron_url != running.cron_url
        || fresh.metrics != running.metrics
    {
        warnings.push(
            "control socket, metrics address or cron backend changed: restart the supervisor to apply"
                .into(),
        );
    }
    Reread {
        settings,
        // Jobs naming an app reach it through the running apps' listeners.
        jobs: scheduler::prepare(fresh, &running.apps, listeners),
        warnings,
    }
}

impl Shell {
    /// Re-reads the config file for a reload: what it applies goes to the core (and the
    /// `[[job]]` tables to the scheduler); what needs a restart is kept, with a warning.
    pub(super) fn read_config(&mut self) -> Result<Vec<crate::core::AppSettings>, String> {
        let fresh = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        let reread = reread(&self.config, &self.listeners, &fresh);
        for warning in &reread.warnings {
            tracing::warn!("{warning}");
        }
        if let Some(jobs) = &mut self.jobs {
            jobs.replace(reread.jobs);
        }
        Ok(reread.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &std::path::Path, name: &str, text: &str) -> Config {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    const WEB: &str = "[supervisor]\ncontrol_socket = \"c.sock\"\n[[app]]\nname = \"web\"\ncommand = \"/bin/sh\"\ninstances = 2\n";

    #[test]
    fn known_apps_get_their_new_settings_and_the_rest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let running = load(dir.path(), "a.toml", WEB);
        let listeners = vec![vec![]];
        let same = reread(&running, &listeners, &load(dir.path(), "b.toml", WEB));
        assert_eq!(same.settings.len(), 1);
        assert!(same.warnings.is_empty(), "{:?}", same.warnings);

        let fresh = load(
            dir.path(),
            "c.toml",
            &format!(
                "{}\n[[app]]\nname = \"api\"\ncommand = \"/bin/sh\"\n",
                WEB.replace("instances = 2", "instances = 3\nscope = \"cluster\"")
                    .replace("c.sock", "d.sock")
            ),
        );
        let r = reread(&running, &listeners, &fresh);
        assert_eq!(r.settings.len(), 1, "the new app is not run");
        assert_eq!(
            r.settings[0].spec.instances, 3,
            "the known app's new instances"
        );
        assert_eq!(r.settings[0].singleton, None, "the lease policy is kept");
        let all = r.warnings.join("\n");
        assert!(
            all.contains("app api: a new app in the config file: adding apps needs a restart"),
            "{all}"
        );
        assert!(
            all.contains("app web: scope, lease_ttl or standby_poll changed"),
            "{all}"
        );
        assert!(
            all.contains("control socket, metrics address or cron backend changed"),
            "{all}"
        );
    }

    #[test]
    fn moved_listeners_are_named_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let with =
            |addr: &str| format!("{WEB}[[app.listen]]\nname = \"http\"\naddress = \"{addr}\"\n");
        let running = load(dir.path(), "a.toml", &with("127.0.0.1:0"));
        let fresh = load(dir.path(), "b.toml", &with("127.0.0.1:1"));
        let r = reread(&running, &[vec![]], &fresh);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("app web: listeners changed"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn the_core_gets_every_app_with_its_after_indices() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(
            dir.path(),
            "a.toml",
            &format!("{WEB}[[app]]\nname = \"api\"\ncommand = \"/bin/sh\"\nafter = [\"web\"]\n"),
        );
        let apps = core_apps(&c, &[vec![], vec![]]);
        let after: Vec<&Vec<AppIndex>> = apps.iter().map(|(_, a)| a).collect();
        assert_eq!(after, [&vec![], &vec![0]]);
        assert_eq!(apps[1].0.spec.name, "api");
    }
}
