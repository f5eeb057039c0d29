//! In-place upgrade (`supervisor upgrade`, `SIGUSR2`): the running supervisor hands itself over
//! to a new binary with the same pid, keeping every listening socket and every worker.
//!
//! - [`sequencer`]: when it happens, decided without I/O (settle, preflight, flush, exec) and
//!   unit-tested like the core.
//! - [`handover`]: what crosses `execve`, a versioned JSON document of its own (no CLI wire type
//!   inside) plus the descriptors it names; a recorded document of each released format
//!   (`fixtures/`) is still adopted by this binary.
//! - [`os`]: the system side: the state in a memfd, the preflight child, `execve` itself.

pub mod handover;
pub mod os;
pub mod sequencer;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

pub use handover::{
    AppFds, GroupFds, HandoverState, ListenerFd, STATE_VERSION, WorkerFds, check_version,
};
pub use os::{exec, inherited, preflight, read_state_fd, write_memfd};

/// How long the preflight run of the new binary may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an upgrade waits for the supervisor to settle (no reload, no worker starting or
/// draining, no `[[job]]` command running) before it is refused.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The build: the git commit it was built from, or else the binary's modification time.
pub fn build_id() -> String {
    if let Some(commit) = option_env!("SUPERVISOR_GIT_COMMIT") {
        return format!("git {commit}");
    }
    let mtime = std::fs::metadata("/proc/self/exe")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    format!("binary mtime {mtime}")
}

/// `0.1.0 (git 0123abcd4567)`: what `--version` and `status` show.
pub fn version_line() -> String {
    format!("{} ({})", env!("CARGO_PKG_VERSION"), build_id())
}

/// The binary this process was started from (`/proc/self/exe`, resolved now: after a
/// deployment replaced the file, the link would name a deleted file).
pub fn own_binary() -> PathBuf {
    std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// The new process reads the config file again and takes the inherited sockets by app name: the
/// file must still hold the apps the supervisor runs (`running`, the file as the last reload
/// applied it), in the same order, with the same listeners, and the same control socket. A file
/// edited since then is applied by a reload first.
pub fn same_shape(running: &Config, fresh: &Config) -> Result<(), String> {
    let names = |c: &Config| c.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
    if names(fresh) != names(running) {
        return Err(format!(
            "the apps in {} changed since the last reload ({:?} -> {:?}): `supervisor reload` applies them; upgrade after it (an upgrade takes over the apps as they run)",
            running.path.display(),
            names(running),
            names(fresh)
        ));
    }
    if let Some(app) = running
        .apps
        .iter()
        .zip(&fresh.apps)
        .find(|(a, b)| a.listeners != b.listeners)
        .map(|(a, _)| &a.name)
    {
        return Err(format!(
            "app {app}'s listeners changed in {} since the last reload: `supervisor reload` moves them; upgrade after it",
            running.path.display()
        ));
    }
    if fresh.control_socket != running.control_socket {
        return Err(format!(
            "supervisor.control_socket changed in {} ({} -> {}): that needs a restart",
            running.path.display(),
            running.control_socket.display(),
            fresh.control_socket.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, apps: &[&str], socket: &str) -> Config {
        let mut text = format!("[supervisor]\ncontrol_socket = \"{socket}\"\n");
        for a in apps {
            text.push_str(&format!(
                "[[app]]\nname = \"{a}\"\ncommand = \"/bin/sh\"\ninstances = 1\n"
            ));
        }
        let path = dir.join("s.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    #[test]
    fn the_file_must_keep_its_apps_in_order_and_its_control_socket() {
        let dir = tempfile::tempdir().unwrap();
        let running = config(dir.path(), &["web", "api"], "c.sock");
        assert_eq!(
            same_shape(&running, &config(dir.path(), &["web", "api"], "c.sock")),
            Ok(())
        );
        let e = same_shape(&running, &config(dir.path(), &["api", "web"], "c.sock")).unwrap_err();
        assert!(
            e.contains("[\"web\", \"api\"] -> [\"api\", \"web\"]"),
            "{e}"
        );
        let e = same_shape(&running, &config(dir.path(), &["web"], "c.sock")).unwrap_err();
        assert!(e.contains("changed since the last reload"), "{e}");
        assert!(e.contains("`supervisor reload` applies them"), "{e}");
        let e = same_shape(&running, &config(dir.path(), &["web", "api"], "d.sock")).unwrap_err();
        assert!(e.contains("supervisor.control_socket changed"), "{e}");
        // Moved listeners: a reload moves them first.
        let path = dir.path().join("s.toml");
        let mut moved = std::fs::read_to_string(&path).unwrap();
        moved = moved.replacen(
            "[[app]]\nname = \"api\"",
            "[[app]]\nname = \"api\"\nlisten = [{ address = \"127.0.0.1:0\" }]",
            1,
        );
        let running = config(dir.path(), &["web", "api"], "d.sock");
        std::fs::write(&path, moved.replace("c.sock", "d.sock")).unwrap();
        let fresh = Config::load(&path).unwrap();
        let e = same_shape(&running, &fresh).unwrap_err();
        assert!(e.contains("app api's listeners changed"), "{e}");
    }
}
