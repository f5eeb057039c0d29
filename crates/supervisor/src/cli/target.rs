//! Which supervisor a client command talks to, from any directory: `--socket PATH`, else the
//! one of `-c FILE` (its `control_socket`, or its name looked up among the running supervisors:
//! the default socket depends on the environment), else the one named `-n NAME`, else the only
//! one of this user that runs. Several running and none picked is an error that lists them;
//! none running falls back on `config/supervisor.toml` when there is one (so the error names
//! its control socket), else says how to start one. And `supervisor ls`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use super::args::Target;
use super::table::Table;
use crate::config::endpoints_of;
use crate::control::client;
use crate::control::protocol::{Request, Response, StatusReport};
use crate::control::registry::{self, Entry};
use crate::core::Phase;
use crate::rundir;
use crate::units;

/// The config `start` and `check` read when `-c` is not given (see [`default_config`]).
pub const DEFAULT_CONFIG: &str = "config/supervisor.toml";

/// What `init` and `import` write in the current directory.
const WRITTEN_CONFIG: &str = "supervisor.toml";

/// The config read without `-c`: [`DEFAULT_CONFIG`], or else `./supervisor.toml` when only it
/// exists (what `init` and `import` wrote here: `supervisor start` runs it, as `pm2 start`
/// runs the ecosystem file of the directory).
pub fn default_config() -> PathBuf {
    let default = Path::new(DEFAULT_CONFIG);
    if !default.exists() && Path::new(WRITTEN_CONFIG).is_file() {
        return PathBuf::from(WRITTEN_CONFIG);
    }
    default.to_path_buf()
}

/// `start` and `check` without `-c`, where neither default file exists: what to do instead.
pub(super) fn no_default_config() -> Option<anyhow::Error> {
    (!Path::new(DEFAULT_CONFIG).exists() && !Path::new(WRITTEN_CONFIG).exists()).then(|| {
        anyhow::anyhow!(
            "no config file here: neither ./{WRITTEN_CONFIG} nor ./{DEFAULT_CONFIG} exists. Name \
             one with -c FILE; or write one: `supervisor init app.js` (a Node script), \
             `supervisor import ecosystem.config.js` (PM2's file); or run a script at once: \
             `supervisor start app.js -i max`"
        )
    })
}

/// The supervisor a client command talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    /// Its control socket.
    pub(super) socket: PathBuf,
    /// Its config file, when known (for the cron backend `status` and `jobs` read).
    pub(super) config: Option<PathBuf>,
}

/// Resolves `config` (`-c`) and `target` (`--socket`, `-n`) to one supervisor.
pub(super) fn resolve(config: Option<&Path>, target: &Target) -> Result<Resolved> {
    let running = || registry::list(&rundir::candidates());
    resolve_with(config, target, running, &default_config())
}

/// [`resolve`] with the running supervisors from `running` and `default` as the fallback config.
fn resolve_with(
    config: Option<&Path>,
    target: &Target,
    running: impl Fn() -> Vec<Entry>,
    default: &Path,
) -> Result<Resolved> {
    if let Some(socket) = &target.socket {
        return Ok(Resolved {
            socket: socket.clone(),
            config: config.map(Path::to_path_buf),
        });
    }
    if let Some(config) = config {
        let e = endpoints_of(config)?;
        // The default socket depends on the environment: the supervisor of that name says
        // where its socket is, if it runs.
        let listed = (!e.explicit_socket)
            .then(|| running().into_iter().find(|r| r.name == e.name))
            .flatten();
        return Ok(Resolved {
            socket: listed.map_or(e.control_socket, |r| r.control_socket),
            config: Some(config.to_path_buf()),
        });
    }
    let all = running();
    if let Some(name) = &target.name {
        return match all.iter().find(|e| &e.name == name) {
            Some(e) => Ok(of_entry(e)),
            None if all.is_empty() => {
                bail!("no supervisor named {name:?} is running (none of this user's is)")
            }
            None => bail!(
                "no supervisor named {name:?} is running; running: {}",
                names(&all)
            ),
        };
    }
    match all.as_slice() {
        [one] => Ok(of_entry(one)),
        [] if default.exists() => {
            let e = endpoints_of(default)?;
            Ok(Resolved {
                socket: e.control_socket,
                config: Some(default.to_path_buf()),
            })
        }
        [] => bail!(
            "no supervisor of this user is running: start one with `supervisor start -d -c FILE` (or give -c FILE, --socket PATH)"
        ),
        several => bail!(
            "{} supervisors are running ({}): pick one with -n NAME or -c FILE (`supervisor ls` lists them)",
            several.len(),
            names(several)
        ),
    }
}

fn of_entry(e: &Entry) -> Resolved {
    Resolved {
        socket: e.control_socket.clone(),
        config: Some(e.config.clone()),
    }
}

fn names(all: &[Entry]) -> String {
    all.iter()
        .map(|e| format!("{} ({})", e.name, e.config.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `supervisor ls`: every running supervisor of this user, each asked for its status.
pub(super) async fn ls(json: bool) -> Result<ExitCode> {
    let all = registry::list(&rundir::candidates());
    let mut rows = Vec::with_capacity(all.len());
    for e in all {
        let status = match client::request(
            &e.control_socket,
            Request::Status { app: None },
            Duration::from_secs(3),
        )
        .await
        {
            Ok(Response::Status(report)) => Ok(*report),
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(err) => Err(err.to_string()),
        };
        rows.push((e, status));
    }
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, status)| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                match status {
                    Ok(s) => {
                        v["uptime_secs"] = s.supervisor.uptime_secs.into();
                        v["phase"] = serde_json::to_value(s.phase).unwrap_or_default();
                        v["apps"] = s
                            .apps
                            .iter()
                            .map(|a| {
                                serde_json::json!({
                                    "name": a.name,
                                    "phase": a.phase,
                                    "ready": ready(a),
                                    "workers": a.workers.len(),
                                })
                            })
                            .collect();
                    }
                    Err(e) => v["error"] = e.clone().into(),
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_ls(&rows));
    Ok(ExitCode::SUCCESS)
}

/// Ready workers of an app.
fn ready(a: &crate::control::protocol::AppStatus) -> usize {
    a.workers
        .iter()
        .filter(|w| w.state == crate::core::WorkerState::Ready)
        .count()
}

/// The `ls` table: one row per supervisor.
fn render_ls(rows: &[(Entry, Result<StatusReport, String>)]) -> String {
    if rows.is_empty() {
        return "no supervisor of this user is running (start one with `supervisor start -d -c FILE`)\n".into();
    }
    let mut t = Table::new(&["name", "pid", "uptime", "status", "apps", "config"]);
    for (e, status) in rows {
        let (uptime, state, apps) = match status {
            Ok(s) => (
                units::duration(s.supervisor.uptime_secs),
                s.phase.to_string(),
                s.apps
                    .iter()
                    .map(|a| match a.phase {
                        Phase::Running | Phase::Starting => {
                            format!(
                                "{} {}/{}",
                                a.name,
                                ready(a),
                                a.workers.len() + a.waiting.len()
                            )
                        }
                        phase => format!("{} {phase}", a.name),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Err(err) => ("-".into(), format!("not answering: {err}"), "-".into()),
        };
        t.row(vec![
            e.name.clone(),
            e.pid.to_string(),
            uptime,
            state,
            apps,
            e.config.display().to_string(),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            pid: 42,
            config: format!("/srv/{name}/supervisor.toml").into(),
            control_socket: format!("/run/user/1000/supervisor/{name}.sock").into(),
            started_unix: 0.0,
        }
    }

    fn target(name: Option<&str>) -> Target {
        Target {
            socket: None,
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn the_only_running_supervisor_needs_no_flag_and_several_need_one() {
        let none = Path::new("/nonexistent/supervisor.toml");
        let one = resolve_with(None, &target(None), || vec![entry("shop")], none).unwrap();
        assert_eq!(
            one.socket,
            PathBuf::from("/run/user/1000/supervisor/shop.sock")
        );
        assert_eq!(one.config, Some("/srv/shop/supervisor.toml".into()));

        let two = || vec![entry("blog"), entry("shop")];
        let e = resolve_with(None, &target(None), two, none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 supervisors are running (blog (/srv/blog/supervisor.toml), shop (/srv/shop/supervisor.toml)): pick one with -n NAME or -c FILE"),
            "{e}"
        );
        let picked = resolve_with(None, &target(Some("blog")), two, none).unwrap();
        assert_eq!(
            picked.socket,
            PathBuf::from("/run/user/1000/supervisor/blog.sock")
        );
        let e = resolve_with(None, &target(Some("wiki")), two, none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no supervisor named \"wiki\" is running; running: blog"),
            "{e}"
        );

        let e = resolve_with(None, &target(None), Vec::new, none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no supervisor of this user is running: start one with `supervisor start -d -c FILE`"), "{e}");
    }

    #[test]
    fn a_config_names_its_socket_or_its_running_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("a.toml");
        std::fs::write(&explicit, "[supervisor]\ncontrol_socket = \"a.sock\"\n").unwrap();
        let r = resolve_with(
            Some(&explicit),
            &target(None),
            || vec![entry("x")],
            &explicit,
        )
        .unwrap();
        assert_eq!(r.socket, dir.path().join("a.sock"));
        // The default socket: where the running supervisor of that name says it is.
        let by_name = dir.path().join("b.toml");
        std::fs::write(&by_name, "[supervisor]\nname = \"shop\"\n").unwrap();
        let r = resolve_with(
            Some(&by_name),
            &target(None),
            || vec![entry("shop")],
            &by_name,
        )
        .unwrap();
        assert_eq!(
            r.socket,
            PathBuf::from("/run/user/1000/supervisor/shop.sock")
        );
        // `--socket` wins over everything.
        let given = Target {
            socket: Some("/x.sock".into()),
            name: Some("shop".into()),
        };
        let r = resolve_with(Some(&by_name), &given, Vec::new, &by_name).unwrap();
        assert_eq!(r.socket, PathBuf::from("/x.sock"));
        // No supervisor runs, no flag: the default config's socket, when there is one.
        let r = resolve_with(None, &target(None), Vec::new, &explicit).unwrap();
        assert_eq!(r.socket, dir.path().join("a.sock"));
    }
}
