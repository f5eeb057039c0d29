//! Every quantity of the file is bounded, every name has a length rule, and what `start` would
//! refuse from the file system (a socket path over `sun_path`, a state directory that is not
//! one of its own, a script whose interpreter is missing) is refused when the file is read,
//! with the key and its line.

use std::os::unix::fs::PermissionsExt;

use super::*;

const OK: &str = r#"
        [[app]]
        name = "sh"
        command = "/bin/sh"
        instances = 2
        [[app.listen]]
        address = "127.0.0.1:0"
    "#;

/// Loads `text` from `s.toml` in a temp dir; the error's text.
fn error_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, text).unwrap();
    match Config::load(&path) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `e` names `key` at `line` and says `what`.
#[track_caller]
fn assert_at(e: &str, line: usize, key: &str, what: &str) {
    assert!(e.contains(&format!("s.toml:{line}:")), "line {line}: {e}");
    assert!(e.contains(&format!(": {key}: ")), "key {key}: {e}");
    assert!(e.contains(what), "{what:?}: {e}");
}

/// OK with `extra` on line 6 (after `instances = 2`).
fn with(extra: &str) -> String {
    OK.replace("instances = 2", &format!("instances = 2\n{extra}"))
}

#[test]
fn a_huge_duration_is_refused_with_its_key_and_line() {
    let e = error_of(&with("ready_timeout = \"18446744073709551615s\""));
    assert_at(
        &e,
        6,
        "app[0].ready_timeout",
        "is more than the limit of 1h",
    );
    for (extra, key, limit) in [
        ("kill_timeout = \"2h\"", "app[0].kill_timeout", "1h"),
        (
            "max_memory_grace = \"2days\"",
            "app[0].max_memory_grace",
            "1day",
        ),
        (
            "scope = \"cluster\"\nlease_ttl = \"1000h\"",
            "app[0].lease_ttl",
            "1h",
        ),
        (
            "scope = \"cluster\"\nstandby_poll = \"90m\"",
            "app[0].standby_poll",
            "1h",
        ),
    ] {
        let e = error_of(&with(extra));
        let line = 5 + extra.lines().count();
        assert_at(&e, line, key, &format!("limit of {limit}"));
    }
    for (key, value, limit) in [
        ("min_uptime", "2h", "1h"),
        ("window", "400days", "1day"),
        ("backoff_initial", "5000000000s", "1h"),
        ("backoff_max", "3h", "1h"),
    ] {
        let e = error_of(&format!("{OK}\n[app.restart]\n{key} = \"{value}\"\n"));
        assert_at(&e, 10, &format!("app[0].restart.{key}"), limit);
    }
    let job = "[[job]]\nname = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"/bin/true\"]";
    for (extra, key, limit) in [
        ("timeout = \"8days\"", "job[0].timeout", "7days"),
        ("kill_timeout = \"2h\"", "job[0].kill_timeout", "1h"),
        ("lease_ttl = \"2h\"", "job[0].lease_ttl", "1h"),
        (
            "misfire = \"run_late\"\nmisfire_grace = \"2days\"",
            "job[0].misfire_grace",
            "1day",
        ),
    ] {
        let e = error_of(&format!("{OK}\n{job}\n{extra}\n"));
        let line = 13 + extra.lines().count() - 1;
        assert_at(&e, line, key, &format!("limit of {limit}"));
    }
}

#[test]
fn the_longest_durations_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        with("ready_timeout = \"1h\"\nkill_timeout = \"60m\"\nmax_memory_grace = \"24h\""),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.apps[0].worker.ready_timeout.as_secs(), 3600);
    assert_eq!(c.apps[0].memory.grace.as_secs(), 86_400);
}

#[test]
fn sizes_and_counts_are_bounded() {
    let e = error_of(&with("max_memory = \"18000GB\""));
    assert_at(&e, 6, "app[0].max_memory", "limit of 16 TiB");
    let e = error_of(&format!("{OK}\n[app.restart]\nmax_restarts = 4000000000\n"));
    assert_at(&e, 10, "app[0].restart.max_restarts", "more than 10000");
    let e = error_of(&format!("{OK}\n[app.reload]\nmax_surge = 5000\n"));
    assert_at(&e, 10, "app[0].reload.max_surge", "must be at most 1024");
    let e = error_of(&OK.replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nbacklog = 1000000",
    ));
    assert_at(&e, 8, "app[0].listen[0].backlog", "must be at most 65535");
    // 65 listeners: the 65th is named.
    let mut text = OK.replace("[[app.listen]]\n        address = \"127.0.0.1:0\"\n", "");
    for i in 0..65 {
        text.push_str(&format!(
            "[[app.listen]]\nname = \"l{i}\"\naddress = \"127.0.0.1:0\"\n"
        ));
    }
    let e = error_of(&text);
    assert!(e.contains("app[0].listen: 65 listeners: at most 64"), "{e}");
    // 257 apps.
    let mut text = String::new();
    for i in 0..257 {
        text.push_str(&format!(
            "[[app]]\nname = \"a{i}\"\ncommand = \"/bin/sh\"\n"
        ));
    }
    let e = error_of(&text);
    assert!(e.contains(": app: 257 [[app]] tables: at most 256"), "{e}");
    assert!(e.contains("s.toml:770:"), "the 257th app's name: {e}");
    // An argument longer than execve takes.
    let long = "x".repeat(200_000);
    let e = error_of(&with(&format!("args = [\"{long}\"]")));
    assert_at(&e, 6, "app[0].args[0]", "is 200000 bytes long");
}

#[test]
fn names_have_a_length_rule_and_are_not_echoed_whole() {
    let long = "a".repeat(100_000);
    let e = error_of(&OK.replace("name = \"sh\"", &format!("name = \"{long}\"")));
    assert_at(&e, 3, "app[0].name", "1 to 64 of them");
    assert!(
        e.len() < 500,
        "the name is not repeated whole: {} bytes",
        e.len()
    );
    let ok64 = "b".repeat(64);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        OK.replace("name = \"sh\"", &format!("name = \"{ok64}\"")),
    )
    .unwrap();
    assert_eq!(Config::load(&path).unwrap().apps[0].name, ok64);
    let e = error_of(&format!(
        "{OK}\n[[job]]\nname = \"{}\"\nschedule = \"* * * * * *\"\ncommand = [\"/bin/true\"]\n",
        "j".repeat(200)
    ));
    assert_at(&e, 10, "job[0].name", "at most 128");
    let e = error_of(&OK.replace(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:0\"\nname = \"{}\"", "l".repeat(300)),
    ));
    assert_at(&e, 8, "app[0].listen[0].name", "at most 255 bytes");
}

#[test]
fn a_socket_path_over_sun_path_is_refused_when_read() {
    let long = format!("/tmp/{}.sock", "s".repeat(120));
    let e = error_of(&format!("[supervisor]\ncontrol_socket = \"{long}\"\n{OK}"));
    assert_at(&e, 2, "supervisor.control_socket", "at most 107 (sun_path)");
    let e = error_of(&OK.replace("address = \"127.0.0.1:0\"", &format!("path = \"{long}\"")));
    assert_at(&e, 7, "app[0].listen[0].path", "at most 107 (sun_path)");
}

#[test]
fn a_state_dir_that_is_not_one_of_its_own_is_refused() {
    let e = error_of(&format!("[cron]\nstate_dir = \"/etc/passwd\"\n{OK}"));
    assert_at(&e, 2, "cron.state_dir", "/etc/passwd is not a directory");
    let e = error_of(&format!("[cron]\nstate_dir = \"/\"\n{OK}"));
    assert_at(&e, 2, "cron.state_dir", "already holds other files");
    // The default one, in the supervisor's state directory, is fine.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, OK).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(c.cron_url.ends_with("/cron"), "{}", c.cron_url);
}

#[test]
fn a_script_whose_interpreter_is_missing_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::write(&script, "#!/usr/bin/python9\nprint(1)\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, OK.replace("/bin/sh", "./app.py")).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("s.toml:4:") && e.contains("app[0].command"),
        "{e}"
    );
    assert!(
        e.contains("its interpreter /usr/bin/python9 (from its `#!/usr/bin/python9` line)"),
        "{e}"
    );
    // A [[job]] command too.
    std::fs::write(
        &path,
        format!(
            "{OK}\n[[job]]\nname = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"{}\"]\n",
            script.display()
        ),
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("s.toml:12:") && e.contains("job[0].command") && e.contains("python9"),
        "{e}"
    );
}

#[test]
fn a_file_too_large_to_be_a_config_is_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let mut text = OK.to_string();
    text.push_str(&format!("# {}\n", "x".repeat(5 << 20)));
    std::fs::write(&path, text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains("larger than 4 MiB"), "{e}");
}
