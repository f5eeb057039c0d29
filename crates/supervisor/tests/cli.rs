//! The `supervisor` binary's client side without a running supervisor: `check`, clear errors
//! with non-zero exit codes, and `--help`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

fn supervisor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_validates_a_config_without_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\ninstances = 3\n[[app.listen]]\naddress = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (code, out, _) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("instances:      3"), "{out}");
    assert!(!dir.path().join("supervisor.sock").exists());

    std::fs::write(
        &cfg,
        "[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\nreadiness = \"psychic\"\n",
    )
    .unwrap();
    let (code, _, err) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("app[0].readiness") && err.contains(cfg.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn client_commands_without_a_supervisor_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, "[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\n").unwrap();
    for cmd in ["status", "reload", "stop"] {
        let (code, _, err) = supervisor(&[cmd, "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{cmd}");
        assert!(
            err.contains("no supervisor is running on control socket"),
            "{cmd}: {err}"
        );
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "the cause is printed once: {err}"
        );
    }
    let (code, _, err) = supervisor(&["status", "-c", "/no/such/config.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /no/such/config.toml"),
        "{err}"
    );
}

#[test]
fn help_lists_the_commands() {
    let (code, out, _) = supervisor(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["start", "check", "status", "reload", "stop", "jobs"] {
        assert!(out.contains(cmd), "{out}");
    }
}

/// `status` by a user who may not connect to the socket: the socket is there, permission is
/// denied; not "no supervisor is running". Needs root (to run the client as nobody with setpriv).
#[test]
fn status_as_another_user_says_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        eprintln!("skipped: needs root and setpriv to run the client as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("c.sock");
    let _live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_supervisor"))
        .args(["status", "--socket", sock.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "control socket {} exists but permission is denied",
            sock.display()
        )),
        "{err}"
    );
    assert!(!err.contains("no supervisor is running"), "{err}");
}

/// `check` tries what `start` does: a port in use or a Unix socket in a missing directory fail
/// with the error `start` gives (the same `StartupError`: file, key, address), exit 1.
#[test]
fn check_binds_like_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    // The control socket beside the file (the default one is in the user's runtime directory).
    let worker = "[supervisor]\ncontrol_socket = \"supervisor.sock\"\n[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\ninstances = 1\n";
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{worker}[[app.listen]]\naddress = \"127.0.0.1:0\"\n[[app.listen]]\naddress = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let (code, _, err) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: app[0].listen[1].address: cannot listen on {addr}",
            cfg.display()
        )) && err.to_lowercase().contains("in use"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        format!("{worker}[[app.listen]]\npath = \"no/such/dir/a.sock\"\n"),
    )
    .unwrap();
    let (code, _, err) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("app[0].listen[0].path") && err.contains("no/such/dir/a.sock"),
        "{err}"
    );

    // A supervisor running on the control socket holds its ports by design: check says so, ok.
    let _live = std::os::unix::net::UnixListener::bind(dir.path().join("supervisor.sock")).unwrap();
    std::fs::write(
        &cfg,
        format!("{worker}[[app.listen]]\naddress = \"{addr}\"\n"),
    )
    .unwrap();
    let (code, out, err) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("a supervisor is running on control socket"),
        "{out}"
    );
    assert!(!dir.path().join("no").exists());
}

/// `check` shows the cron backend with its password redacted, text and `--json`, also a password
/// pasted without percent-encoding (`/`, `#`, `?`, `@` in it), which used to be printed in clear.
#[test]
fn check_redacts_the_redis_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    // Characters that end the user-info must be percent-encoded: such a URL is refused (it
    // would not connect), saying so, and the password is not shown either.
    for password in ["pw~2/pw~3#pw~4", "pw~5?pw~6@pw~7/pw~8"] {
        std::fs::write(
            &cfg,
            format!(
                "[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\n[cron]\nredis_url = \"redis://app:{password}@127.0.0.1:6379/0\"\n"
            ),
        )
        .unwrap();
        let (code, text, err) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{text}");
        assert!(
            err.contains("cron.redis_url") && err.contains("percent-encoded"),
            "{err}"
        );
        assert!(
            !err.contains('~') && !text.contains('~'),
            "{password}: part of it shown: {err}"
        );
    }
    for password in ["pw~1", "pw~2%2Fpw~3%23pw~4", "pw~5%3Fpw~6%40pw~7%2Fpw~8"] {
        std::fs::write(
            &cfg,
            format!(
                "[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\n[cron]\nredis_url = \"redis://app:{password}@127.0.0.1:6379/0\"\n"
            ),
        )
        .unwrap();
        let (code, text, err) = supervisor(&["check", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let (code, json, err) = supervisor(&["check", "--json", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["cron_backend"], "redis://app:***@127.0.0.1:6379/0",
            "{password}: {json}"
        );
        assert!(
            text.contains("cron backend:     redis://app:***@127.0.0.1:6379/0"),
            "{password}: {text}"
        );
        for out in [&text, &json, &err] {
            assert!(!out.contains('~'), "{password}: part of it shown: {out}");
        }
    }
}
