//! `supervisor startup`: boot persistence the way `pm2 startup` gives it, as a systemd unit for
//! this config, this binary and this user. It prints the unit (stdout; what to do with it on
//! stderr), or with `--install` writes it to `/etc/systemd/system/supervisor-NAME.service` and
//! enables it. The unit is `Type=notify` (started = every app ready), reloads with `supervisor
//! reload` (which waits, and fails when the reload was refused or aborted), stops with SIGTERM to
//! the supervisor alone (`KillMode=mixed`: it drains the apps itself) within a stop timeout
//! above the sum of the apps' kill timeouts (they stop one after the other).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::Config;

/// Where `--install` writes units.
const UNIT_DIR: &str = "/etc/systemd/system";

/// What a unit is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnitSpec {
    /// The supervisor's name.
    pub(super) name: String,
    /// The config file (absolute).
    pub(super) config: PathBuf,
    /// The binary (absolute).
    pub(super) binary: PathBuf,
    /// The user it runs as; `None` for root.
    pub(super) user: Option<String>,
    /// `PATH` for the supervisor and its workers (the one of the shell that ran `startup`).
    pub(super) path: Option<String>,
    /// How long the start may take (every app's first workers ready).
    pub(super) start_timeout: Duration,
    /// How long the stop may take (above the sum of the kill timeouts).
    pub(super) stop_timeout: Duration,
}

impl UnitSpec {
    /// The unit for `config` run by `binary` as `user`.
    pub(super) fn of(config: &Config, binary: PathBuf, user: Option<String>) -> UnitSpec {
        // Apps start one after the other when they are `after` each other, and stop one
        // after the other: the sums bound both, with a margin.
        let ready: Duration = config.apps.iter().map(|a| a.worker.ready_timeout).sum();
        let kill: Duration = config.apps.iter().map(|a| a.worker.kill_timeout).sum();
        let jobs = config
            .jobs
            .iter()
            .map(|j| j.kill_timeout)
            .max()
            .unwrap_or_default();
        UnitSpec {
            name: config.name.clone(),
            config: super::absolute(&config.path),
            binary,
            user,
            path: std::env::var("PATH").ok(),
            start_timeout: (ready + Duration::from_secs(30)).max(Duration::from_secs(90)),
            stop_timeout: kill + jobs + Duration::from_secs(10),
        }
    }

    /// `supervisor-NAME.service`.
    pub(super) fn file_name(&self) -> String {
        format!("supervisor-{}.service", self.name)
    }

    /// The unit file's text.
    pub(super) fn text(&self) -> String {
        let (bin, config) = (quote(&self.binary), quote(&self.config));
        let mut s = format!(
            "# Written by `supervisor startup` for {config}.\n\
             [Unit]\n\
             Description=supervisor {name} ({config})\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             # READY=1 once every app's first workers are ready; workers cannot notify systemd.\n\
             Type=notify\n\
             NotifyAccess=main\n",
            name = self.name,
        );
        if let Some(user) = &self.user {
            s.push_str(&format!("User={user}\n"));
        }
        if let Some(path) = &self.path {
            s.push_str(&format!("Environment=\"PATH={path}\"\n"));
        }
        let dir = self.config.parent().unwrap_or(Path::new("/"));
        s.push_str(&format!(
            "WorkingDirectory={}\n\
             ExecStart={bin} start -c {config}\n\
             # Waits for the rolling reload; fails when it was refused or aborted.\n\
             ExecReload={bin} reload -c {config}\n\
             # SIGTERM to the supervisor alone: it drains every app, each within its kill_timeout.\n\
             KillMode=mixed\n\
             KillSignal=SIGTERM\n\
             TimeoutStartSec={}\n\
             # Above the sum of the apps' kill_timeouts (they stop one after the other).\n\
             TimeoutStopSec={}\n\
             # The event loop pings WATCHDOG=1 four times per period: a wedged supervisor is\n\
             # restarted (its workers go with it and are started again).\n\
             WatchdogSec=30s\n\
             Restart=on-failure\n\
             RestartSec=1s\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            quote(dir),
            self.start_timeout.as_secs(),
            self.stop_timeout.as_secs(),
        ));
        s
    }
}

/// A path as a systemd command line word: quoted when it has a space or a quote.
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

/// `supervisor startup [--install] [--user USER]`.
pub(super) fn startup(config: &Path, install: bool, user: Option<&str>) -> Result<ExitCode> {
    let c = Config::load(&super::absolute(config))?;
    let euid = crate::rundir::euid();
    let root = euid == 0;
    let user = match user {
        Some(u) => Some(u.to_string()),
        // Under sudo, the user who ran it: `sudo supervisor startup --install`.
        None if root => std::env::var("SUDO_USER").ok().filter(|u| u != "root"),
        None => std::env::var("USER")
            .ok()
            .or_else(|| std::env::var("LOGNAME").ok())
            .or_else(|| crate::rundir::user_name(euid)),
    }
    .filter(|u| u != "root");
    let spec = UnitSpec::of(&c, crate::upgrade::own_binary(), user);
    let file = spec.file_name();
    if !install {
        print!("{}", spec.text());
        eprintln!(
            "# To start {} at boot: `sudo {} startup --install -c {}` (or save this as {UNIT_DIR}/{file}, then `systemctl enable --now {file}`)",
            c.name,
            quote(&spec.binary),
            quote(&spec.config)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !root {
        bail!(
            "writing {UNIT_DIR}/{file} needs root: run `sudo {} startup --install -c {}`",
            quote(&spec.binary),
            quote(&spec.config)
        );
    }
    let path = Path::new(UNIT_DIR).join(&file);
    std::fs::write(&path, spec.text())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    if !Path::new("/run/systemd/system").is_dir() {
        println!(
            "systemd is not running here: `systemctl enable {file}` where it runs makes it start at boot"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for args in [vec!["daemon-reload"], vec!["enable", file.as_str()]] {
        let out = std::process::Command::new("systemctl")
            .args(&args)
            .output()
            .context("cannot run systemctl")?;
        if !out.status.success() {
            bail!(
                "systemctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!(
        "enabled: {file} starts {} at boot; `systemctl start {file}` starts it now (stop a supervisor of the same name first)",
        c.name
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> UnitSpec {
        UnitSpec {
            name: "shop".into(),
            config: "/srv/my shop/supervisor.toml".into(),
            binary: "/usr/local/bin/supervisor".into(),
            user: Some("ann".into()),
            path: Some("/usr/local/bin:/usr/bin".into()),
            start_timeout: Duration::from_secs(90),
            stop_timeout: Duration::from_secs(35),
        }
    }

    #[test]
    fn the_unit_is_notify_reloads_with_the_client_and_stops_within_the_kill_timeouts() {
        let text = spec().text();
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "User=ann",
            "Environment=\"PATH=/usr/local/bin:/usr/bin\"",
            "WorkingDirectory=\"/srv/my shop\"",
            "ExecStart=/usr/local/bin/supervisor start -c \"/srv/my shop/supervisor.toml\"",
            "ExecReload=/usr/local/bin/supervisor reload -c \"/srv/my shop/supervisor.toml\"",
            "KillMode=mixed",
            "TimeoutStopSec=35",
            "WatchdogSec=30s",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
        assert_eq!(spec().file_name(), "supervisor-shop.service");
        let root = UnitSpec {
            user: None,
            ..spec()
        };
        assert!(!root.text().contains("User="));
    }

    #[test]
    fn the_stop_timeout_is_above_the_sum_of_the_kill_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[supervisor]\nname = \"t\"\ncontrol_socket = \"c.sock\"\n\
             [[app]]\nname = \"a\"\ncommand = \"/bin/sh\"\nkill_timeout = \"20s\"\n\
             [[app]]\nname = \"b\"\ncommand = \"/bin/sh\"\nkill_timeout = \"15s\"\nready_timeout = \"100s\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        let s = UnitSpec::of(&c, "/bin/supervisor".into(), None);
        assert_eq!(s.stop_timeout, Duration::from_secs(45));
        assert!(s.stop_timeout > Duration::from_secs(35));
        // The default ready_timeout (30 s) + 100 s + a margin.
        assert!(
            s.start_timeout >= Duration::from_secs(130),
            "{:?}",
            s.start_timeout
        );
    }
}
