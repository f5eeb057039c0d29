//! Where a supervisor's runtime files live: the one rule for the per-user private runtime
//! directory ([`base`]) that holds every supervisor's default control socket
//! (`<base>/<name>.sock`), its entry in the list `supervisor ls` reads (`<base>/<name>.json`)
//! and its workers' runtime directory (notify sockets, the Node preload); and the rule for its
//! persistent state ([`state_dir`]: the local cron backend). Never a predictable path in a
//! directory others may write (`/tmp`): another user could create it first.
//!
//! The runtime directory, in order:
//! 1. `$XDG_RUNTIME_DIR/supervisor` (the login session's private directory, `/run/user/UID`);
//! 2. `/run/supervisor` for root;
//! 3. `/run/user/UID/supervisor` when that directory exists and is the user's (a service run
//!    with `User=` has no `XDG_RUNTIME_DIR`, but the user's session directory may exist);
//! 4. `$XDG_STATE_HOME/supervisor/run` (default `~/.local/state/supervisor/run`), mode 0700.
//!
//! A client looks in every one of them that applies ([`candidates`]), so that `supervisor ls`
//! run from a login shell finds a supervisor a service manager started without
//! `XDG_RUNTIME_DIR`, and the other way round.
//!
//! This module depends on no other one of the crate but [`crate::users`] (the password
//! database): the config's defaults (the control socket, the cron state directory) use it, so it
//! is not under [`crate::sys`] (which uses the config's types).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What the rule depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `$XDG_RUNTIME_DIR`, if set to an absolute path.
    pub xdg_runtime: Option<PathBuf>,
    /// The effective user id.
    pub euid: u32,
    /// `/run/user/UID`, if it exists, is a directory and belongs to the user.
    pub run_user: Option<PathBuf>,
    /// `$XDG_STATE_HOME`, if set to an absolute path.
    pub xdg_state: Option<PathBuf>,
    /// The user's home directory (`$HOME`, else the password database's).
    pub home: Option<PathBuf>,
}

impl Env {
    /// This process's.
    pub fn current() -> Env {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let euid = euid();
        let run_user = PathBuf::from(format!("/run/user/{euid}"));
        let run_user = std::fs::metadata(&run_user)
            .is_ok_and(|m| m.is_dir() && m.uid() == euid)
            .then_some(run_user);
        Env {
            xdg_runtime: absolute("XDG_RUNTIME_DIR"),
            euid,
            run_user,
            xdg_state: absolute("XDG_STATE_HOME"),
            home: absolute("HOME").or_else(|| home_of(euid)),
        }
    }

    /// `$XDG_STATE_HOME`, else `~/.local/state`.
    pub fn state_home(&self) -> Option<PathBuf> {
        self.xdg_state
            .clone()
            .or_else(|| Some(self.home.as_ref()?.join(".local/state")))
    }
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The home directory of `uid` in the password database.
fn home_of(uid: u32) -> Option<PathBuf> {
    let home = crate::users::user_by_uid(uid).ok()??.home;
    home.is_absolute().then_some(home)
}

/// The login name of `uid` in the password database.
pub fn user_name(uid: u32) -> Option<String> {
    let name = crate::users::user_by_uid(uid).ok()??.name;
    (!name.is_empty()).then_some(name)
}

/// The private runtime directory for `env` (see the module's doc), or `None` when the user has
/// neither a runtime directory nor a home.
pub fn base_for(env: &Env) -> Option<PathBuf> {
    if let Some(d) = &env.xdg_runtime {
        return Some(d.join("supervisor"));
    }
    if env.euid == 0 {
        return Some(PathBuf::from("/run/supervisor"));
    }
    if let Some(d) = &env.run_user {
        return Some(d.join("supervisor"));
    }
    Some(env.state_home()?.join("supervisor/run"))
}

/// This process's private runtime directory (see [`base_for`]).
pub fn base() -> Option<PathBuf> {
    base_for(&Env::current())
}

/// Every directory a supervisor of this user may have put its runtime files in (the rule's
/// answer for this process first), for the clients that look for one.
pub fn candidates_for(env: &Env) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: Option<PathBuf>| {
        if let Some(p) = p
            && !out.contains(&p)
        {
            out.push(p);
        }
    };
    add(base_for(env));
    add(env.xdg_runtime.as_ref().map(|d| d.join("supervisor")));
    if env.euid == 0 {
        add(Some(PathBuf::from("/run/supervisor")));
    }
    add(env.run_user.as_ref().map(|d| d.join("supervisor")));
    add(env.state_home().map(|d| d.join("supervisor/run")));
    out
}

/// [`candidates_for`] this process.
pub fn candidates() -> Vec<PathBuf> {
    candidates_for(&Env::current())
}

/// Where a supervisor named `name` keeps what must outlive it (the local cron backend's locks
/// and history): `/var/lib/supervisor/NAME` for root, else `$XDG_STATE_HOME/supervisor/NAME`.
pub fn state_dir_for(env: &Env, name: &str) -> Option<PathBuf> {
    if env.euid == 0 {
        return Some(PathBuf::from("/var/lib/supervisor").join(name));
    }
    Some(env.state_home()?.join("supervisor").join(name))
}

/// Creates `dir` (and its parents) for this user only, or checks that an existing one is fit:
/// a directory owned by this user that no one else may write to. Returns why not, in words.
pub fn ensure_private(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            // The umask may have taken bits away, never added any; make sure of 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))
        }
        Err(e) => Err(format!("cannot use {}: {e}", dir.display())),
        Ok(m) => {
            let me = euid();
            if !m.is_dir() {
                Err(format!("{} exists and is not a directory", dir.display()))
            } else if m.uid() != me {
                Err(format!(
                    "{} belongs to uid {}, not to this user (uid {me}): refusing to keep sockets there",
                    dir.display(),
                    m.uid()
                ))
            } else if m.mode() & 0o022 != 0 {
                Err(format!(
                    "{} may be written by other users (mode {:o}): refusing to keep sockets there",
                    dir.display(),
                    m.mode() & 0o7777
                ))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Env {
        Env {
            xdg_runtime: None,
            euid: 1000,
            run_user: None,
            xdg_state: None,
            home: Some("/home/ann".into()),
        }
    }

    #[test]
    fn the_runtime_directory_rule_in_order() {
        let session = Env {
            xdg_runtime: Some("/run/user/1000".into()),
            ..user()
        };
        assert_eq!(base_for(&session), Some("/run/user/1000/supervisor".into()));
        let root = Env {
            euid: 0,
            home: Some("/root".into()),
            ..user()
        };
        assert_eq!(base_for(&root), Some("/run/supervisor".into()));
        let service = Env {
            run_user: Some("/run/user/1000".into()),
            ..user()
        };
        assert_eq!(base_for(&service), Some("/run/user/1000/supervisor".into()));
        assert_eq!(
            base_for(&user()),
            Some("/home/ann/.local/state/supervisor/run".into())
        );
        let state = Env {
            xdg_state: Some("/data/state".into()),
            ..user()
        };
        assert_eq!(base_for(&state), Some("/data/state/supervisor/run".into()));
        let nobody = Env {
            home: None,
            ..user()
        };
        assert_eq!(base_for(&nobody), None);
        for env in [&session, &root, &service, &user(), &state] {
            let b = base_for(env).unwrap();
            assert!(!b.starts_with("/tmp"), "{b:?}");
        }
    }

    #[test]
    fn clients_look_everywhere_a_supervisor_of_theirs_may_be() {
        let root_in_a_session = Env {
            xdg_runtime: Some("/run/user/0".into()),
            euid: 0,
            home: Some("/root".into()),
            ..user()
        };
        assert_eq!(
            candidates_for(&root_in_a_session),
            [
                PathBuf::from("/run/user/0/supervisor"),
                "/run/supervisor".into(),
                "/root/.local/state/supervisor/run".into()
            ]
        );
        let login = Env {
            xdg_runtime: Some("/run/user/1000".into()),
            run_user: Some("/run/user/1000".into()),
            ..user()
        };
        assert_eq!(
            candidates_for(&login),
            [
                PathBuf::from("/run/user/1000/supervisor"),
                "/home/ann/.local/state/supervisor/run".into()
            ]
        );
    }

    #[test]
    fn state_lives_under_var_lib_for_root_and_the_state_home_for_users() {
        let root = Env { euid: 0, ..user() };
        assert_eq!(
            state_dir_for(&root, "shop"),
            Some("/var/lib/supervisor/shop".into())
        );
        assert_eq!(
            state_dir_for(&user(), "shop"),
            Some("/home/ann/.local/state/supervisor/shop".into())
        );
    }

    #[test]
    fn root_is_in_the_password_database() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(home_of(0).is_some());
    }

    #[test]
    fn a_private_directory_is_created_0700_and_a_shared_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/b/supervisor");
        ensure_private(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private(&made).unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private(&shared).unwrap_err();
        assert!(
            e.contains("may be written by other users (mode 777)"),
            "{e}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(
            ensure_private(&file)
                .unwrap_err()
                .contains("not a directory")
        );
    }
}
