//! cgroup v2, where the supervisor may create cgroups (as root, or in a subtree systemd
//! delegated to it with `Delegate=yes`): a cgroup per app with `[app.cgroup]` under the
//! supervisor's own (`app-NAME-PID`), its limits written there, each worker moved into it before
//! `execve` (the child writes `0` to the `cgroup.procs` the parent opened), and, when the
//! supervisor stops, everything left in it killed at once (`cgroup.kill`) and the cgroup removed.
//!
//! cgroup v2's "no internal processes" rule: a cgroup that hands controllers to its children
//! holds no process itself, so a supervisor that is not in the hierarchy's root first moves
//! itself into a leaf of its own cgroup (`supervisor`), which a later in-place upgrade finds it
//! in already.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::CgroupLimits;

/// The leaf the supervisor moves itself into.
const LEAF: &str = "supervisor";

/// The supervisor's place in the cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// The cgroup the apps' cgroups are created in (the supervisor's own, or its parent when
    /// the supervisor is in its `supervisor` leaf already).
    pub base: PathBuf,
    /// Whether `base` is the hierarchy's root (no leaf needed).
    root: bool,
    /// `cgroup.controllers` of `base`.
    pub controllers: Vec<String>,
}

/// The mount point of the cgroup v2 hierarchy in `mountinfo` (`/proc/self/mountinfo`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// This process's cgroup v2 path (`/system.slice/x.service`) in `/proc/self/cgroup`.
fn own_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Where this supervisor would create its apps' cgroups, or why it cannot, in words.
pub fn detect() -> Result<Hierarchy, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mount) = cgroup2_mount(&mountinfo) else {
        return Err("no cgroup v2 hierarchy is mounted (/sys/fs/cgroup is cgroup v1)".into());
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(own) = own_path(&own) else {
        return Err("this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)".into());
    };
    let own = own.trim().trim_start_matches('/');
    let mut base = if own.is_empty() {
        mount.clone()
    } else {
        mount.join(own)
    };
    if base.file_name().is_some_and(|n| n == LEAF)
        && let Some(parent) = base.parent()
    {
        base = parent.to_path_buf();
    }
    let root = base == mount;
    let writable = |p: &Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: a NUL-terminated path; access has no other precondition.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
    };
    if !writable(&base) || !writable(&base.join("cgroup.subtree_control")) {
        return Err(format!(
            "{} is not writable by this user: run the supervisor as root, or under systemd with \
             Delegate=yes",
            base.display()
        ));
    }
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers"))
        .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", base.display()))?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Ok(Hierarchy {
        base,
        root,
        controllers,
    })
}

/// Why an app cgroup with `limits` cannot be made here, if it cannot (what `check` warns of).
pub fn unavailable(limits: &CgroupLimits) -> Option<String> {
    let needed: Vec<&str> = limits.files().iter().map(|(c, _, _)| *c).collect();
    match detect() {
        Ok(h) => h.missing(&needed),
        Err(why) => Some(why),
    }
}

impl Hierarchy {
    /// Why the controllers `needed` cannot be used here, if one is missing.
    pub fn missing(&self, needed: &[&str]) -> Option<String> {
        let absent: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|c| !self.controllers.iter().any(|have| have == c))
            .collect();
        if absent.is_empty() {
            return None;
        }
        let hybrid = !self.base.starts_with("/sys/fs/cgroup")
            || self.base.starts_with("/sys/fs/cgroup/unified");
        Some(format!(
            "the {} controller{} not available in {} (cgroup.controllers: {}){}",
            absent.join(", "),
            if absent.len() == 1 { " is" } else { "s are" },
            self.base.display(),
            if self.controllers.is_empty() {
                "none".to_string()
            } else {
                self.controllers.join(" ")
            },
            if hybrid {
                ": /sys/fs/cgroup is cgroup v1, which holds them"
            } else {
                ": delegate them to the supervisor (systemd: Delegate=yes)"
            }
        ))
    }

    /// Moves this process into its leaf (unless it is in the root already) and enables
    /// `controllers` for the apps' cgroups.
    pub fn claim(&self, controllers: &[&str]) -> std::io::Result<()> {
        if !self.root {
            let leaf = self.base.join(LEAF);
            match std::fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        if !controllers.is_empty() {
            let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
            write(&self.base.join("cgroup.subtree_control"), &enable.join(" "))?;
        }
        Ok(())
    }

    /// The cgroup of app `app` of this supervisor.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.base.join(format!("app-{app}-{}", std::process::id()))
    }

    /// Creates the cgroup of `app` if need be, writes `limits` into it, and opens its
    /// `cgroup.procs` for a worker to join.
    pub fn prepare(&self, app: &str, limits: &CgroupLimits) -> std::io::Result<File> {
        let dir = self.app_dir(app);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for (_, file, value) in limits.files() {
            write(&dir.join(file), &value).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}/{file}: {e}", dir.display()))
            })?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
    }
}

/// Kills everything in the cgroup `dir` (`cgroup.kill`) and removes it once empty (waiting
/// until `deadline`); says why not.
pub fn kill_and_remove(dir: &Path, within: Duration) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    write(&dir.join("cgroup.kill"), "1").map_err(|e| format!("{}: {e}", dir.display()))?;
    let deadline = Instant::now() + within;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
}

/// One write of `value` to a cgroup file.
fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
