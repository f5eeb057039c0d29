//! Where a supervisor's log files go by default, by its name (`[supervisor] name`): root's under
//! `/var/log/supervisor/NAME/`, another user's under `$XDG_STATE_HOME/supervisor/NAME/logs/`
//! (default `~/.local/state/supervisor/NAME/logs/`). `start -d` writes the supervisor's own log
//! there (`supervisor.log`).

use std::path::PathBuf;

use crate::rundir::Env;

/// The log directory of the supervisor named `name`, for this process's user.
pub fn default_dir(name: &str) -> PathBuf {
    dir_for(&Env::current(), name)
}

/// The log directory of the supervisor named `name` for `env`'s user (`./NAME/logs` when the
/// user has no home at all).
pub fn dir_for(env: &Env, name: &str) -> PathBuf {
    if env.euid == 0 {
        return PathBuf::from("/var/log/supervisor").join(name);
    }
    env.state_home()
        .map(|d| d.join("supervisor"))
        .unwrap_or_default()
        .join(name)
        .join("logs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_logs_under_var_log_and_users_under_their_state_home() {
        let user = Env {
            euid: 1000,
            home: Some("/home/ann".into()),
            ..Env::default()
        };
        assert_eq!(
            dir_for(&user, "shop"),
            PathBuf::from("/home/ann/.local/state/supervisor/shop/logs")
        );
        let state = Env {
            xdg_state: Some("/data".into()),
            ..user.clone()
        };
        assert_eq!(
            dir_for(&state, "shop"),
            PathBuf::from("/data/supervisor/shop/logs")
        );
        let root = Env { euid: 0, ..user };
        assert_eq!(
            dir_for(&root, "shop"),
            PathBuf::from("/var/log/supervisor/shop")
        );
    }
}
