//! What a reload takes from the config file read again, decided from the running config, the
//! fresh file and what the core runs (no I/O here; [`super::config_read`] binds and reads):
//! for every app of the file, whether its sockets stay or new ones are to be bound (sharing the
//! addresses that stay), which of its keys changed, or why its part cannot be applied live (its
//! lease policy changed); and what the file changes that only a restart applies (the control
//! socket, the metrics address, the cron backend, the supervisor's name). Also how the core is
//! built from a config in the first place.

use std::sync::Arc;

use crate::config::{AppConfig, Config, ListenerSpec};
use crate::core::{AppSettings, SocketSet};
use crate::runtimes;
use crate::sys::listeners::BoundListener;

/// The core's settings for an app: the worker spec and policies, its sockets, and the hint for
/// a worker that is never ready (which sockets its runtime waits for).
pub(super) fn app_settings(
    app: &AppConfig,
    listeners: &[BoundListener],
    sockets: SocketSet,
) -> AppSettings {
    AppSettings {
        spec: Arc::new(app.worker.clone()),
        restart: app.restart,
        reload: app.reload,
        memory: app.memory,
        age: app.age,
        not_ready_hint: runtimes::not_ready_hint(app.worker.runtime, listeners),
        singleton: app.singleton,
        sockets,
        balance: app.balance,
    }
}

/// Every app's settings (on its set of sockets, in file order) with the positions in the file
/// of the apps it is `after`.
pub(super) fn core_apps(
    config: &Config,
    sockets: &[(SocketSet, &[BoundListener])],
) -> Vec<(AppSettings, Vec<usize>)> {
    config
        .apps
        .iter()
        .zip(sockets)
        .map(|(a, (set, listeners))| {
            let after = a
                .after
                .iter()
                .filter_map(|name| config.apps.iter().position(|o| &o.name == name))
                .collect();
            (app_settings(a, listeners, *set), after)
        })
        .collect()
}

/// What the core runs of an app the file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Running {
    /// The sockets its settings give new workers.
    pub(super) sockets: SocketSet,
    /// Every set its workers and slots use (two while it rolls onto moved listeners).
    pub(super) in_use: Vec<SocketSet>,
    /// Stopped by hand: its sockets are closed, bound again when it is started.
    pub(super) stopped: bool,
    /// The listeners its sockets were bound for.
    pub(super) specs: Vec<ListenerSpec>,
}

/// Where an app's workers are to listen after the reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SocketsPlan {
    /// On the sockets it has (its listeners did not change, or it is stopped).
    Keep(SocketSet),
    /// On a new set for the file's listeners; the addresses these sets listen on already are
    /// shared, the others bound now (an app new in the file has none to share).
    Bind {
        /// The sets whose sockets may be shared.
        reuse: Vec<SocketSet>,
    },
}

/// One app of the fresh file.
#[derive(Debug)]
pub(super) struct Planned<'a> {
    /// Its part of the file.
    pub(super) app: &'a AppConfig,
    /// Whether the supervisor runs it already.
    pub(super) known: bool,
    /// The keys that changed since the running config.
    pub(super) changed: Vec<String>,
    /// Its sockets, or why its part cannot be applied while the supervisor runs.
    pub(super) sockets: Result<SocketsPlan, String>,
}

/// What a reload of the fresh file would do.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    /// Every app of the file, in file order.
    pub(super) apps: Vec<Planned<'a>>,
    /// What only a restart applies.
    pub(super) refused: Vec<String>,
}

/// The plan for a reload of `fresh` by the supervisor running `running`; `core` says what it
/// runs of the app of that name, if anything.
pub(super) fn plan<'a>(
    running: &Config,
    fresh: &'a Config,
    core: impl Fn(&str) -> Option<Running>,
) -> Plan<'a> {
    let file = fresh.path.display();
    let apps = fresh
        .apps
        .iter()
        .map(|app| {
            let before = running.apps.iter().find(|a| a.name == app.name);
            let changed = before.map(|b| changed_keys(b, app)).unwrap_or_default();
            let Some(now) = core(&app.name) else {
                return Planned {
                    app,
                    known: false,
                    changed: Vec::new(),
                    sockets: Ok(SocketsPlan::Bind { reuse: Vec::new() }),
                };
            };
            let lease_before = before.map_or(app.singleton, |b| b.singleton);
            let sockets = if lease_before != app.singleton {
                Err(format!(
                    "scope, lease_ttl or standby_poll changed in {file}: a cluster singleton's lease is kept for the supervisor's life"
                ))
            } else if now.stopped || now.specs == app.listeners {
                Ok(SocketsPlan::Keep(now.sockets))
            } else {
                Ok(SocketsPlan::Bind { reuse: now.in_use })
            };
            Planned {
                app,
                known: true,
                changed,
                sockets,
            }
        })
        .collect();
    let mut refused = Vec::new();
    let mut differs = |key: &str, was: String, is: String| {
        if was != is {
            refused.push(format!(
                "{key} changed in {file} ({was} -> {is}): that needs a restart"
            ));
        }
    };
    differs("supervisor.name", running.name.clone(), fresh.name.clone());
    differs(
        "supervisor.control_socket",
        running.control_socket.display().to_string(),
        fresh.control_socket.display().to_string(),
    );
    differs(
        "supervisor.metrics",
        running.metrics.map_or("none".into(), |m| m.to_string()),
        fresh.metrics.map_or("none".into(), |m| m.to_string()),
    );
    differs(
        "the cron backend",
        cronlock::redact_url(&running.cron_url),
        cronlock::redact_url(&fresh.cron_url),
    );
    Plan { apps, refused }
}

/// The keys of an app whose values differ between `a` (running) and `b` (the file), as the
/// reload report names them.
pub(super) fn changed_keys(a: &AppConfig, b: &AppConfig) -> Vec<String> {
    let (wa, wb) = (&a.worker, &b.worker);
    let where_ = |c: &AppConfig| -> Vec<(String, String, i32)> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.addr.to_string(), l.backlog))
            .collect()
    };
    let checks: [(&str, bool); 15] = [
        ("listen", where_(a) != where_(b)),
        ("balance", a.balance != b.balance),
        ("command", wa.program != wb.program),
        ("args", wa.args != wb.args),
        ("env", wa.env != wb.env),
        ("cwd", wa.cwd != wb.cwd),
        ("instances", wa.instances != wb.instances),
        ("readiness", wa.readiness != wb.readiness),
        ("runtime", wa.runtime != wb.runtime),
        ("ready_timeout", wa.ready_timeout != wb.ready_timeout),
        ("kill_timeout", wa.kill_timeout != wb.kill_timeout),
        ("restart", a.restart != b.restart),
        ("reload", a.reload != b.reload),
        ("max_memory", a.memory != b.memory),
        ("after", a.after != b.after),
    ];
    checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(key, _)| key.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &std::path::Path, name: &str, text: &str) -> Config {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    const WEB: &str = "[supervisor]\ncontrol_socket = \"c.sock\"\nname = \"t\"\n[[app]]\nname = \"web\"\ncommand = \"/bin/sh\"\ninstances = 2\n[[app.listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n";

    /// The core runs `web` on set 1 (listening as the running config says), nothing else.
    fn web_on(running: &Config) -> impl Fn(&str) -> Option<Running> + '_ {
        move |name| {
            (name == "web").then(|| Running {
                sockets: SocketSet(1),
                in_use: vec![SocketSet(1)],
                stopped: false,
                specs: running.apps[0].listeners.clone(),
            })
        }
    }

    #[test]
    fn an_unchanged_app_keeps_its_sockets_and_a_new_one_gets_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let running = load(dir.path(), "a.toml", WEB);
        let unchanged = load(dir.path(), "b.toml", WEB);
        let same = plan(&running, &unchanged, web_on(&running));
        assert_eq!(same.apps.len(), 1);
        assert_eq!(same.apps[0].sockets, Ok(SocketsPlan::Keep(SocketSet(1))));
        assert!(same.apps[0].changed.is_empty());
        assert!(same.refused.is_empty(), "{:?}", same.refused);

        let fresh = load(
            dir.path(),
            "c.toml",
            &format!(
                "{}\n[[app]]\nname = \"api\"\ncommand = \"/bin/sh\"\n",
                WEB.replace("instances = 2", "instances = 3")
            ),
        );
        let p = plan(&running, &fresh, web_on(&running));
        assert_eq!(p.apps[0].changed, ["instances"]);
        assert_eq!(p.apps[0].sockets, Ok(SocketsPlan::Keep(SocketSet(1))));
        assert!(!p.apps[1].known, "api is new");
        assert_eq!(p.apps[1].sockets, Ok(SocketsPlan::Bind { reuse: vec![] }));
    }

    #[test]
    fn moved_listeners_are_bound_anew_sharing_what_stays() {
        let dir = tempfile::tempdir().unwrap();
        let running = load(dir.path(), "a.toml", WEB);
        let fresh = load(
            dir.path(),
            "b.toml",
            &WEB.replace("127.0.0.1:0", "127.0.0.2:0"),
        );
        let p = plan(&running, &fresh, web_on(&running));
        assert_eq!(p.apps[0].changed, ["listen"]);
        assert_eq!(
            p.apps[0].sockets,
            Ok(SocketsPlan::Bind {
                reuse: vec![SocketSet(1)]
            })
        );
        // A stopped app keeps its (closed) sockets: it binds the file's when it is started.
        let stopped = plan(&running, &fresh, |_| {
            Some(Running {
                stopped: true,
                ..web_on(&running)("web").unwrap()
            })
        });
        assert_eq!(stopped.apps[0].sockets, Ok(SocketsPlan::Keep(SocketSet(1))));
    }

    #[test]
    fn what_only_a_restart_applies_is_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let running = load(dir.path(), "a.toml", WEB);
        let fresh = load(
            dir.path(),
            "b.toml",
            &WEB.replace("instances = 2", "instances = 2\nscope = \"cluster\"")
                .replace("c.sock", "d.sock")
                .replace("name = \"t\"", "name = \"u\"\nmetrics = \"127.0.0.1:9\""),
        );
        let p = plan(&running, &fresh, web_on(&running));
        let e = p.apps[0].sockets.as_ref().unwrap_err();
        assert!(
            e.contains("scope, lease_ttl or standby_poll changed"),
            "{e}"
        );
        let all = p.refused.join("\n");
        for key in [
            "supervisor.name changed",
            "supervisor.control_socket changed",
            "supervisor.metrics changed",
        ] {
            assert!(all.contains(key), "{key}: {all}");
        }
        assert!(all.contains("(none -> 127.0.0.1:9)"), "{all}");
        assert!(
            all.contains("the cron backend changed"),
            "its default follows the control socket: {all}"
        );
    }

    #[test]
    fn the_core_gets_every_app_with_the_positions_of_its_after_apps() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(
            dir.path(),
            "a.toml",
            &format!("{WEB}[[app]]\nname = \"api\"\ncommand = \"/bin/sh\"\nafter = [\"web\"]\n"),
        );
        let apps = core_apps(&c, &[(SocketSet(1), &[]), (SocketSet(2), &[])]);
        let after: Vec<&Vec<usize>> = apps.iter().map(|(_, a)| a).collect();
        assert_eq!(after, [&vec![], &vec![0]]);
        assert_eq!(apps[1].0.spec.name, "api");
        assert_eq!(apps[1].0.sockets, SocketSet(2));
    }
}
