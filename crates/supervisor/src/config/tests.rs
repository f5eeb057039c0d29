//! The config tests: loading files, every rule with the key (and line) its error names.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use super::human::parse_size;
use super::model::*;
use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

const OK: &str = r#"
        [[app]]
        name = "sh"
        command = "/bin/sh"
        instances = 2
        [[app.listen]]
        address = "127.0.0.1:0"
    "#;

#[test]
fn minimal_config_gets_defaults() {
    let c = load(OK).unwrap();
    let a = &c.apps[0];
    assert_eq!(a.worker.instances, 2);
    assert_eq!(a.worker.name, "sh");
    assert_eq!(a.worker.kill_timeout, Duration::from_secs(10));
    assert_eq!(a.listeners[0].name, "listen0");
    assert_eq!(a.reload.max_surge, 1);
    assert!(c.cron_url.starts_with("file:///"), "{}", c.cron_url);
    // Named after the file (`DIR-s` for DIR/s.toml), its socket in the user's runtime directory.
    assert!(
        c.name.ends_with("-s") && c.name.starts_with("tmp"),
        "{}",
        c.name
    );
    assert_eq!(
        c.control_socket,
        crate::rundir::base()
            .unwrap()
            .join(format!("{}.sock", c.name))
    );
    assert!(
        c.cron_url.ends_with(&format!("supervisor/{}/cron", c.name)),
        "{}",
        c.cron_url
    );
}

#[test]
fn unknown_key_is_named() {
    let e = load(&format!("{OK}\nkill_timout = \"1s\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("app[0].listen[0].kill_timout"), "{e}");
    assert!(
        e.contains("unknown field"),
        "nothing near it in [[app.listen]]: {e}"
    );
}

#[test]
fn syntax_error_keeps_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, format!("{OK}\naddress = \"127.0.0.1:1\"\n")).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    // OK is 8 lines (a leading newline, a trailing indented one): the second `address` is 9:1.
    let want = format!("{}:9:1: (syntax): ", path.display());
    assert!(e.starts_with(&want), "{e}");
    assert!(e.contains("duplicate key"), "{e}");
}

#[test]
fn type_error_has_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let text = OK.replace("instances = 2", "instances = \"two\"");
    std::fs::write(&path, &text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    let want = format!("{}:5:", path.display());
    assert!(
        e.starts_with(&want) && e.contains("app[0].instances"),
        "{e}"
    );
}

#[test]
fn location_counts_lines_and_characters() {
    assert_eq!(Location::of_offset("ab\ncd", 4).to_string(), ":2:2");
    assert_eq!(Location::of_offset("", 0).to_string(), ":1:1");
    assert_eq!(Location::of_offset("\u{e9}x", 2).to_string(), ":1:2");
    assert_eq!(Location(None).to_string(), "");
}

#[test]
fn bad_duration_is_named() {
    let e = load(&OK.replace(
        "instances = 2",
        "instances = 2\nkill_timeout = \"10 parsecs\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("app[0].kill_timeout"), "{e}");
    assert!(e.contains("invalid duration"), "{e}");
}

#[test]
fn missing_program_is_named() {
    let e = load(&OK.replace("/bin/sh", "/nonexistent/prog"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("app[0].command") && e.contains("/nonexistent/prog"),
        "{e}"
    );
}

#[test]
fn bad_address_is_named() {
    let e = load(&OK.replace("127.0.0.1:0", "127.0.0.1:99999"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("app[0].listen[0].address"), "{e}");
}

#[test]
fn no_app_is_an_error() {
    let e = load("[supervisor]\n").unwrap_err().to_string();
    assert!(e.contains("app: no app"), "{e}");
}

#[test]
fn an_app_without_listeners_is_fine() {
    let c = load("[[app]]\nname = \"queue\"\ncommand = \"/bin/sh\"\ninstances = 1\n").unwrap();
    assert!(c.apps[0].listeners.is_empty());
}

/// OK with a second app `name` appended (listening on port 0).
fn two_apps(second: &str) -> String {
    format!("{OK}\n[[app]]\ncommand = \"/bin/sh\"\ninstances = 1\n{second}\n")
}

#[test]
fn apps_need_unique_names_and_addresses() {
    let e = load(&two_apps("name = \"sh\"")).unwrap_err().to_string();
    assert!(
        e.contains("app[1].name") && e.contains("already the name of app[0]"),
        "{e}"
    );
    let e = load(&two_apps("name = \"sh.x\"")).unwrap_err().to_string();
    assert!(e.contains("app[1].name"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let text = format!(
        "[[app]]\nname = \"a\"\ncommand = \"/bin/sh\"\n[[app.listen]]\npath = \"{0}\"\n\
         [[app]]\nname = \"b\"\ncommand = \"/bin/sh\"\n[[app.listen]]\npath = \"{0}\"\n",
        sock.display()
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(
        e.contains("app[1].listen[0]") && e.contains("already listed as app[0].listen[0]"),
        "{e}"
    );
}

#[test]
fn after_must_name_other_apps_without_a_cycle() {
    let e = load(&two_apps("name = \"b\"\nafter = [\"nope\"]"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("app[1].after[0]") && e.contains("no app is named \"nope\""),
        "{e}"
    );
    let e = load(&two_apps("name = \"b\"\nafter = [\"b\"]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot wait for itself"), "{e}");
    let cyclic = two_apps("name = \"b\"\nafter = [\"sh\"]").replacen(
        "instances = 2",
        "instances = 2\nafter = [\"b\"]",
        1,
    );
    let e = load(&cyclic).unwrap_err().to_string();
    assert!(e.contains("waits for itself through b"), "{e}");
    let c = load(&two_apps("name = \"b\"\nafter = [\"sh\"]")).unwrap();
    assert_eq!(c.apps[1].after, vec!["sh"]);
}

#[test]
fn keys_of_a_later_app_are_named_by_its_index() {
    let e = load(&two_apps("name = \"b\"\nkill_timeout = \"0s\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("app[1].kill_timeout"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = load(&OK.replace("instances = 2", "instances = \"two\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("app[0].instances"), "{e}");
}

#[test]
fn instances_zero_means_cpus() {
    let c = load(&OK.replace("instances = 2", "instances = 0")).unwrap();
    assert!(c.apps[0].worker.instances >= 1);
}

#[test]
fn endpoints_survive_a_broken_worker_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, "[supervisor]\ncontrol_socket = \"c.sock\"\n[cron]\nredis_url = \"redis://:pw@h:1/0\"\n[[app]]\ninstances = \"x\"\n").unwrap();
    let e = endpoints_of(&path).unwrap();
    assert_eq!(e.control_socket, dir.path().join("c.sock"));
    assert_eq!(e.cron_url, "redis://:pw@h:1/0");
}

/// An executable file named `name` in a fresh directory (kept alive by the returned dir).
fn program_named(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

#[test]
fn runtime_defaults_to_node_for_a_program_named_node() {
    let (_d, node) = program_named("node", "");
    let c = load(&OK.replace("/bin/sh", &node.display().to_string())).unwrap();
    assert_eq!(c.apps[0].worker.runtime, Runtime::Node);
    assert_eq!(load(OK).unwrap().apps[0].worker.runtime, Runtime::None);
    let c = load(
        &OK.replace("instances = 2", "instances = 2\nruntime = \"none\"")
            .replace("/bin/sh", &node.display().to_string()),
    )
    .unwrap();
    assert_eq!(
        c.apps[0].worker.runtime,
        Runtime::None,
        "runtime = \"none\" opts out"
    );
}

#[test]
fn runtime_node_accepts_a_node_script_and_refuses_other_programs() {
    let (_d, script) = program_named("app", "#!/usr/bin/env node\nconsole.log(1)\n");
    let with = |program: &str| {
        load(
            &OK.replace("/bin/sh", program)
                .replace("instances = 2", "instances = 2\nruntime = \"node\""),
        )
    };
    assert_eq!(
        with(&script.display().to_string()).unwrap().apps[0]
            .worker
            .runtime,
        Runtime::Node
    );
    let e = with("/bin/sh").unwrap_err().to_string();
    assert!(e.contains("app[0].runtime") && e.contains("/bin/sh"), "{e}");
}

#[test]
fn runtime_node_refuses_a_package_manager_that_starts_node_in_a_child() {
    let (_d, npm) = program_named("npm", "#!/usr/bin/env node\nrequire('./npm-cli')\n");
    let e = load(
        &OK.replace("/bin/sh", &npm.display().to_string())
            .replace("instances = 2", "instances = 2\nruntime = \"node\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("app[0].runtime") && e.contains("wrapper such as npm"),
        "{e}"
    );
}

#[test]
fn readiness_exec_with_the_node_preload_is_refused() {
    let (_d, node) = program_named("node", "");
    let e = load(
        &OK.replace("/bin/sh", &node.display().to_string())
            .replace("instances = 2", "instances = 2\nreadiness = \"exec\""),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("app[0].readiness"), "{e}");
}

/// OK plus one `[[job]]` table with `keys`; the error text (with the file's path).
fn job_error(keys: &str) -> String {
    load(&format!("{OK}\n[[job]]\n{keys}\n"))
        .unwrap_err()
        .to_string()
}

/// Asserts that `e` names `key` at line `line` of the file and says `what`.
#[track_caller]
fn assert_at(e: &str, line: usize, key: &str, what: &str) {
    assert!(e.contains(&format!("s.toml:{line}:")), "line {line}: {e}");
    assert!(e.contains(&format!(": {key}: ")), "key {key}: {e}");
    assert!(e.contains(what), "{what:?}: {e}");
}

// OK and a newline are 8 lines: the `[[job]]` header is line 9, the job's first key line 10.

#[test]
fn jobs_get_defaults_and_resolve_their_program() {
    let c = load(&format!(
        "{OK}\n[[job]]\nname = \"report\"\nschedule = \"*/5 * * * * *\"\ncommand = [\"sh\", \"-c\", \"true\"]\n\
         [[job]]\nname = \"ping\"\nschedule = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nhttp = \"POST /tasks/report\"\n\
         app = \"sh\"\noverlap = \"allow\"\nmisfire = \"run_late\"\nlease_ttl = \"5s\"\ntimeout = \"2m\"\n"
    ))
    .unwrap();
    let report = &c.jobs[0];
    assert_eq!(report.timeout, DEFAULT_JOB_TIMEOUT);
    assert_eq!(report.kill_timeout, DEFAULT_JOB_KILL_TIMEOUT);
    assert_eq!(report.spec.lease_ttl, Duration::from_secs(30));
    match &report.action {
        JobAction::Command {
            program, args, app, ..
        } => {
            assert!(
                program.is_absolute() && program.ends_with("sh"),
                "{program:?}"
            );
            assert_eq!(args, &["-c", "true"]);
            assert_eq!(app, &None);
        }
        other => panic!("{other:?}"),
    }
    let ping = &c.jobs[1];
    assert_eq!(ping.spec.timezone.name(), "Europe/Berlin");
    assert_eq!(ping.spec.overlap, cronlock::Overlap::Allow);
    assert_eq!(
        ping.spec.misfire,
        cronlock::Misfire::RunLate {
            grace: DEFAULT_MISFIRE_GRACE
        }
    );
    assert_eq!(ping.spec.lease_ttl, Duration::from_secs(5));
    assert_eq!(ping.timeout, Duration::from_secs(120));
    assert_eq!(
        ping.kill_timeout,
        Duration::from_secs(10),
        "the app's kill_timeout"
    );
    assert_eq!(
        ping.action,
        JobAction::Http {
            method: "POST".into(),
            path: "/tasks/report".into(),
            app: "sh".into()
        }
    );
}

#[test]
fn job_with_a_bad_schedule_is_named_with_its_line() {
    let e = job_error("name = \"r\"\nschedule = \"every day\"\ncommand = [\"sh\"]");
    assert_at(&e, 11, "job[0].schedule", "every day");
}

#[test]
fn job_with_an_unknown_timezone() {
    let e = job_error(
        "name = \"r\"\nschedule = \"* * * * * *\"\ntimezone = \"Mars/Olympus\"\ncommand = [\"sh\"]",
    );
    assert_at(
        &e,
        12,
        "job[0].timezone",
        "unknown timezone \"Mars/Olympus\"",
    );
}

#[test]
fn job_needs_exactly_one_of_command_and_http() {
    let e = job_error(
        "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]\nhttp = \"GET /\"\napp = \"sh\"",
    );
    assert_at(&e, 13, "job[0]", "either `command` or `http`, not both");
    let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"");
    assert_at(&e, 10, "job[0]", "needs `command");
    let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\ncommand = []");
    assert_at(&e, 12, "job[0].command", "is empty");
    let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"/nonexistent/x\"]");
    assert_at(&e, 12, "job[0].command", "not found");
}

#[test]
fn http_job_needs_an_app_that_exists_and_listens() {
    let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"POST /x\"");
    assert_at(&e, 12, "job[0].http", "needs `app");
    let e =
        job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"POST /x\"\napp = \"nope\"");
    assert_at(&e, 13, "job[0].app", "no app is named \"nope\" (apps: sh)");
    let e = load(
        "[[app]]\nname = \"queue\"\ncommand = \"/bin/sh\"\ninstances = 1\n\
         [[job]]\nname = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"POST /x\"\napp = \"queue\"\n",
    )
    .unwrap_err()
    .to_string();
    assert_at(&e, 9, "job[0].app", "has no listener");
    let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"/x\"\napp = \"sh\"");
    assert_at(&e, 12, "job[0].http", "method and the path");
    let e = job_error("name = \"r\"\nschedule = \"* * * * * *\"\nhttp = \"post x\"\napp = \"sh\"");
    assert_at(&e, 12, "job[0].http", "not a method");
}

#[test]
fn command_job_naming_a_missing_app_is_refused() {
    let e =
        job_error("name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]\napp = \"web\"");
    assert_at(&e, 13, "job[0].app", "no app is named \"web\"");
}

#[test]
fn job_names_are_unique_and_key_safe() {
    let one = "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]";
    let e = load(&format!("{OK}\n[[job]]\n{one}\n[[job]]\n{one}\n"))
        .unwrap_err()
        .to_string();
    assert_at(&e, 14, "job[1].name", "already the name of job[0]");
    let e = job_error("name = \"a b\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]");
    assert_at(&e, 10, "job[0].name", "whitespace");
}

#[test]
fn job_policies_and_durations_are_checked() {
    let base = "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]";
    let e = job_error(&format!("{base}\nmisfire = \"later\""));
    assert_at(&e, 13, "job[0].misfire", "\"skip\" or \"run_late\"");
    let e = job_error(&format!("{base}\nmisfire_grace = \"5s\""));
    assert_at(&e, 13, "job[0].misfire_grace", "only with misfire");
    let e = job_error(&format!("{base}\ntimeout = \"0s\""));
    assert_at(&e, 13, "job[0].timeout", "greater than zero");
    let e = job_error(&format!("{base}\nlease_ttl = \"100ms\""));
    assert_at(&e, 13, "job[0].lease_ttl", "at least 300ms");
    let e = job_error(&format!("{base}\noverlap = \"queue\""));
    assert!(e.contains("job[0].overlap"), "{e}");
    let e = job_error(&format!("{base}\ncomand = [\"sh\"]"));
    assert!(
        e.contains("job[0]") && e.contains("did you mean `command`?"),
        "{e}"
    );
}

#[test]
fn sizes_take_decimal_and_binary_units() {
    assert_eq!(parse_size("300MB"), Ok(300_000_000));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
    assert_eq!(parse_size("64kb"), Ok(64_000));
    assert_eq!(parse_size("2KiB"), Ok(2048));
    assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
    assert_eq!(parse_size("4096B"), Ok(4096));
    for bad in [
        "",
        "512",
        "MB",
        "0MB",
        "5 parsecs",
        "-1MB",
        "1..5MB",
        "99999999999GB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn scope_defaults_to_host_and_cluster_gets_a_lease() {
    let c = load(OK).unwrap();
    assert_eq!(c.apps[0].singleton, None);
    let c = load(&OK.replace("instances = 2", "instances = 2\nscope = \"cluster\"")).unwrap();
    let p = c.apps[0].singleton.unwrap();
    assert_eq!(p.lease_ttl, Duration::from_secs(10));
    assert_eq!(p.standby_poll, Duration::from_secs(10) / 3);
    assert_eq!(p.renew_every(), Duration::from_secs(10) / 3);
    let c = load(&OK.replace(
        "instances = 2",
        "instances = 2\nscope = \"cluster\"\nlease_ttl = \"3s\"\nstandby_poll = \"500ms\"",
    ))
    .unwrap();
    let p = c.apps[0].singleton.unwrap();
    assert_eq!(p.lease_ttl, Duration::from_secs(3));
    assert_eq!(p.standby_poll, Duration::from_millis(500));
}

#[test]
fn bad_singleton_settings_name_the_key() {
    for (extra, key, why) in [
        (
            "lease_ttl = \"3s\"",
            "app[0].lease_ttl",
            "scope = \"cluster\"",
        ),
        (
            "scope = \"cluster\"\nlease_ttl = \"100ms\"",
            "app[0].lease_ttl",
            "at least 300ms",
        ),
        (
            "scope = \"cluster\"\nstandby_poll = \"0s\"",
            "app[0].standby_poll",
            "greater than zero",
        ),
        ("scope = \"everywhere\"", "app[0].scope", "unknown variant"),
    ] {
        let e = load(&OK.replace("instances = 2", &format!("instances = 2\n{extra}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(why), "{extra}: {e}");
    }
}

#[test]
fn max_memory_defaults_to_off_with_a_30s_grace() {
    let c = load(OK).unwrap();
    assert_eq!(c.apps[0].memory.max_bytes, None);
    assert_eq!(c.apps[0].memory.grace, Duration::from_secs(30));
    let c = load(&OK.replace(
        "instances = 2",
        "instances = 2\nmax_memory = \"512MB\"\nmax_memory_grace = \"5s\"",
    ))
    .unwrap();
    assert_eq!(
        c.apps[0].memory,
        MemoryPolicy {
            max_bytes: Some(512_000_000),
            grace: Duration::from_secs(5)
        }
    );
}

#[test]
fn a_bad_max_memory_names_file_line_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    for (value, why) in [
        ("\"512XB\"", "unknown unit \"xb\""),
        ("\"512\"", "no unit"),
        ("\"0GiB\"", "must be greater than zero"),
        ("512", "expected a size such as"),
    ] {
        let text = OK.replace(
            "instances = 2",
            &format!("instances = 2\nmax_memory = {value}"),
        );
        std::fs::write(&path, &text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        // The key is on line 6 (OK starts with an empty line).
        let want = format!("{}:6:", path.display());
        assert!(e.starts_with(&want), "{e}");
        assert!(e.contains("app[0].max_memory") && e.contains(why), "{e}");
        if value.starts_with('"') {
            assert!(e.contains(value), "names the value: {e}");
        }
    }
    let e = load(&OK.replace(
        "instances = 2",
        "instances = 2\nmax_memory = \"1GB\"\nmax_memory_grace = \"0s\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("app[0].max_memory_grace") && e.contains("greater than zero"),
        "{e}"
    );
}

#[test]
fn backoff_doubles_and_caps() {
    let p = RestartPolicy {
        min_uptime: Duration::from_secs(1),
        max_restarts: 5,
        window: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    };
    assert_eq!(p.backoff(0), Duration::ZERO);
    assert_eq!(p.backoff(1), Duration::from_millis(100));
    assert_eq!(p.backoff(3), Duration::from_millis(400));
    assert_eq!(p.backoff(10), Duration::from_secs(1));
    assert_eq!(p.backoff(1000), Duration::from_secs(1));
}

#[test]
fn metrics_address_is_optional_and_named_when_bad() {
    assert_eq!(load(OK).unwrap().metrics, None, "off unless configured");
    let c = load(&format!("[supervisor]\nmetrics = \"127.0.0.1:9090\"\n{OK}")).unwrap();
    assert_eq!(c.metrics, Some("127.0.0.1:9090".parse().unwrap()));
    let e = load(&format!("[supervisor]\nmetrics = \"9090\"\n{OK}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("supervisor.metrics") && e.contains("not a host:port address"),
        "{e}"
    );
    let e = load(&format!("[supervisor]\nmetrics = 9090\n{OK}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:11: supervisor.metrics: invalid type"), "{e}");
}

/// Asserts that loading `text` fails with `PATH:LINE:COL: KEY: ` and then says `what`.
#[track_caller]
fn assert_error_at(text: &str, line: usize, column: usize, key: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, text).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    let want = format!("{}:{line}:{column}: {key}: ", path.display());
    assert!(e.starts_with(&want), "want {want:?}: {e}");
    assert!(e[want.len()..].contains(what), "{what:?}: {e}");
}

/// OK with `extra` on a line of its own after `instances = 2`: line 6, from column 1.
fn ok_with(extra: &str) -> String {
    OK.replace("instances = 2", &format!("instances = 2\n{extra}"))
}

#[test]
fn every_app_error_carries_its_line_and_column() {
    // `instances` is on line 5, indented by 8: its value starts at column 21.
    assert_error_at(
        &OK.replace("instances = 2", "instances = 5000"),
        5,
        21,
        "app[0].instances",
        "5000 is more than 1024",
    );
    for (extra, column, key, what) in [
        (
            "kill_timeout = \"0s\"",
            16,
            "app[0].kill_timeout",
            "greater than zero",
        ),
        (
            "ready_timeout = \"0s\"",
            17,
            "app[0].ready_timeout",
            "greater than zero",
        ),
        (
            "cwd = \"no/such/dir\"",
            7,
            "app[0].cwd",
            "no/such/dir is not a directory",
        ),
        (
            "after = [\"nope\"]",
            10,
            "app[0].after[0]",
            "no app is named \"nope\"",
        ),
        (
            "after = [\"sh\"]",
            10,
            "app[0].after[0]",
            "cannot wait for itself",
        ),
        (
            "max_memory_grace = \"0s\"",
            20,
            "app[0].max_memory_grace",
            "greater than zero",
        ),
        (
            "lease_ttl = \"3s\"",
            13,
            "app[0].lease_ttl",
            "add `scope = \"cluster\"`",
        ),
        (
            "standby_poll = \"3s\"",
            16,
            "app[0].standby_poll",
            "add `scope = \"cluster\"`",
        ),
        (
            "runtime = \"node\"",
            11,
            "app[0].runtime",
            "needs Node as the program",
        ),
        (
            "env = { \"A=B\" = \"1\" }",
            17,
            "app[0].env.A=B",
            "not a valid environment variable name",
        ),
        (
            "args = [\"-c\", \"a\\u0000b\"]",
            15,
            "app[0].args[1]",
            "contains a NUL byte",
        ),
    ] {
        assert_error_at(&ok_with(extra), 6, column, key, what);
    }
    // A key on the line after `scope` (line 7).
    assert_error_at(
        &ok_with("scope = \"cluster\"\nlease_ttl = \"100ms\""),
        7,
        13,
        "app[0].lease_ttl",
        "at least 300ms",
    );
    assert_error_at(
        &ok_with("scope = \"cluster\"\nstandby_poll = \"0s\""),
        7,
        16,
        "app[0].standby_poll",
        "greater than zero",
    );
    let (_d, node) = program_named("node", "");
    assert_error_at(
        &ok_with("readiness = \"exec\"").replace("/bin/sh", &node.display().to_string()),
        6,
        13,
        "app[0].readiness",
        "\"exec\" with runtime \"node\"",
    );
}

#[test]
fn listener_errors_carry_their_line_and_column() {
    // `address` is on line 7, indented by 8: its value starts at column 19.
    assert_error_at(
        &OK.replace("127.0.0.1:0", "127.0.0.1:99999"),
        7,
        19,
        "app[0].listen[0].address",
        "not a host:port address",
    );
    let address = "address = \"127.0.0.1:0\"";
    assert_error_at(
        &OK.replace(address, &format!("{address}\nbacklog = 0")),
        8,
        11,
        "app[0].listen[0].backlog",
        "must be positive",
    );
    assert_error_at(
        &OK.replace(address, &format!("{address}\nname = \"a:b\"")),
        8,
        8,
        "app[0].listen[0].name",
        "not a valid fd name",
    );
    // An error about the table as a whole is at its header (`[[app.listen]]`, line 6).
    assert_error_at(
        &OK.replace(address, &format!("{address}\npath = \"a.sock\"")),
        6,
        9,
        "app[0].listen[0]",
        "either `address` or `path`",
    );
    // The second of two listeners on one address: at its own address (line 9).
    let twice = format!("{OK}\n[[app.listen]]\naddress = \"127.0.0.1:8080\"\n")
        .replace("127.0.0.1:0", "127.0.0.1:8080");
    assert_error_at(
        &twice,
        10,
        11,
        "app[0].listen[1]",
        "already listed as app[0].listen[0]",
    );
    // A default name (`listen1`) taken by an earlier listener: at the table's header (line 10).
    let named = format!(
        "{}\n[[app.listen]]\naddress = \"127.0.0.1:1\"\n",
        OK.replace(address, &format!("{address}\nname = \"listen1\""))
    );
    assert_error_at(
        &named,
        10,
        1,
        "app[0].listen[1].name",
        "already used by app[0].listen[0]",
    );
}

#[test]
fn restart_and_reload_errors_carry_their_line_and_column() {
    // OK is 8 lines: the table header is line 9, its first key line 10.
    for (table, keys, key, what) in [
        (
            "restart",
            "window = \"0s\"",
            "app[0].restart.window",
            "greater than zero",
        ),
        (
            "restart",
            "backoff_max = \"50ms\"",
            "app[0].restart.backoff_max",
            "must not be smaller than backoff_initial",
        ),
        (
            "restart",
            "backoff_initial = \"1m\"",
            "app[0].restart.backoff_max",
            "must not be smaller than backoff_initial",
        ),
        (
            "reload",
            "max_surge = 0",
            "app[0].reload.max_surge",
            "must be at least 1",
        ),
        (
            "reload",
            "max_unavailable = 2",
            "app[0].reload.max_unavailable",
            "must be less than instances (2)",
        ),
    ] {
        let column = keys.find('=').unwrap() + 3;
        assert_error_at(
            &format!("{OK}\n[app.{table}]\n{keys}\n"),
            10,
            column,
            key,
            what,
        );
    }
}

#[test]
fn errors_across_apps_carry_the_line_of_the_later_one() {
    // two_apps: the second `[[app]]` is line 9; its `name` (the last key) line 12.
    assert_error_at(
        &two_apps("name = \"sh\""),
        12,
        8,
        "app[1].name",
        "already the name of app[0]",
    );
    assert_error_at(
        &two_apps("name = \"sh.x\""),
        12,
        8,
        "app[1].name",
        "use letters, digits",
    );
    let cyclic = two_apps("name = \"b\"\nafter = [\"sh\"]").replacen(
        "instances = 2",
        "instances = 2\nafter = [\"b\"]",
        1,
    );
    assert_error_at(&cyclic, 6, 9, "app[0].after", "waits for itself through b");
    let text = "[[app]]\nname = \"a\"\ncommand = \"/bin/sh\"\n[[app.listen]]\npath = \"a.sock\"\n\
                [[app]]\nname = \"b\"\ncommand = \"/bin/sh\"\n[[app.listen]]\npath = \"a.sock\"\n";
    assert_error_at(
        text,
        10,
        8,
        "app[1].listen[0]",
        "already listed as app[0].listen[0]",
    );
}

#[test]
fn a_bad_spanned_value_names_its_key_not_serdes_private_field() {
    let base = "name = \"r\"\nschedule = \"* * * * * *\"\ncommand = [\"sh\"]";
    let e = job_error(&format!("{base}\ntimeout = \"-5s\""));
    assert_at(&e, 13, "job[0].timeout", "invalid duration \"-5s\"");
    assert!(!e.contains("$__serde"), "{e}");
    for (extra, column, key, what) in [
        (
            "kill_timeout = \"-5s\"",
            16,
            "app[0].kill_timeout",
            "invalid duration \"-5s\"",
        ),
        (
            "scope = \"everywhere\"",
            9,
            "app[0].scope",
            "unknown variant",
        ),
        ("after = [1]", 10, "app[0].after[0]", "invalid type"),
        ("env = { A = 1 }", 13, "app[0].env.A", "invalid type"),
    ] {
        assert_error_at(&ok_with(extra), 6, column, key, what);
    }
    assert_error_at(
        &OK.replace("instances = 2", "instances = \"two\""),
        5,
        21,
        "app[0].instances",
        "invalid type",
    );
    let address = "address = \"127.0.0.1:0\"";
    assert_error_at(
        &OK.replace(address, &format!("{address}\nbacklog = \"big\"")),
        8,
        11,
        "app[0].listen[0].backlog",
        "invalid type",
    );
    assert_error_at(
        &format!("{OK}\n[app.restart]\nwindow = \"-1s\"\n"),
        10,
        10,
        "app[0].restart.window",
        "invalid duration",
    );
}

#[test]
fn cron_redis_url_takes_sentinel_and_cluster_and_names_what_is_wrong() {
    for url in [
        "redis+sentinel://s1:26379,s2:26379,s3/mymaster?min_replicas_ack=1",
        "rediss+sentinel://:pw@s1/mymaster?sentinel_password=x",
        "redis+cluster://n1:7000,n2:7001",
        "rediss+cluster://n1",
        "redis://h1:26379,h2:26379/?sentinel=mymaster",
    ] {
        let c = load(&format!("[cron]\nredis_url = \"{url}\"\n{OK}"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.cron_url, url);
    }
    for (url, says) in [
        (
            "redis+sentinel://s1/mymaster?min_replica_ack=1",
            "min_replica_ack",
        ),
        ("redis+sentinel://s1:26379", "master"),
        ("file:///var/lib/cron", "state_dir"),
        ("/var/lib/cron", "state_dir"),
        ("http://h:1", "expected redis://"),
    ] {
        let e = load(&format!("[cron]\nredis_url = \"{url}\"\n{OK}"))
            .expect_err(url)
            .to_string();
        assert!(e.contains("cron.redis_url"), "{url}: {e}");
        assert!(e.contains("s.toml:2:"), "{url}: {e}");
        assert!(e.contains(says), "{url}: {e}");
    }
}

#[test]
fn pm2_contract_keys_are_read_and_named_when_wrong() {
    let node = |extra: &str| {
        format!(
            "[[app]]\nname = \"web\"\ncommand = \"node\"\nargs = [\"app.js\"]\n{extra}\n\
             [[app.listen]]\naddress = \"127.0.0.1:0\"\n"
        )
    };
    let c = load(&node(
        "kill_signal = \"SIGINT\"\nwait_ready = true\nshutdown_with_message = true",
    ))
    .unwrap();
    let contract = c.apps[0].worker.contract;
    assert_eq!(contract.kill_signal, StopSignal::Int);
    assert_eq!(contract.kill_signal.number(), libc::SIGINT);
    assert!(contract.wait_ready && contract.shutdown_with_message);
    for (text, want) in [("int", StopSignal::Int), ("QUIT", StopSignal::Quit)] {
        let c = load(&node(&format!("kill_signal = \"{text}\""))).unwrap();
        assert_eq!(c.apps[0].worker.contract.kill_signal, want, "{text}");
    }
    assert_eq!(
        load(&node("")).unwrap().apps[0].worker.contract,
        AppContract::default()
    );
    let e = load(&node("kill_signal = \"SIGKILL\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("app[0].kill_signal") && e.contains(":5:") && e.contains("SIGTERM, SIGINT"),
        "{e}"
    );
    // Carried out by the Node preload: refused for another runtime, with the line.
    let e = load("[[app]]\nname = \"sh\"\ncommand = \"/bin/sh\"\nwait_ready = true\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wait_ready") && e.contains("needs runtime \"node\""),
        "{e}"
    );
}

#[test]
fn crontab_schedules_with_five_fields_and_nicknames_are_valid() {
    for schedule in ["0 * * * *", "*/5 9-17 * * 1-5", "@hourly", "0 0 3 * * *"] {
        let c = load(&format!(
            "{OK}\n[[job]]\nname = \"j\"\nschedule = \"{schedule}\"\ncommand = [\"true\"]\n"
        ))
        .unwrap_or_else(|e| panic!("{schedule}: {e}"));
        assert_eq!(c.jobs[0].spec.schedule, schedule);
    }
}

#[test]
fn balance_is_one_of_its_names_laid_over_tcp_listeners_only() {
    let with = |b: &str| {
        OK.replace("instances = 2", &format!("instances = 2\nbalance = {b}"))
            .replace(
                "address = \"127.0.0.1:0\"",
                "address = \"127.0.0.1:0\"\n[[app.listen]]\npath = \"x.sock\"",
            )
    };
    let c = load(&with("\"sticky\"")).unwrap();
    let a = &c.apps[0];
    assert_eq!(a.balance, Balance::Sticky);
    assert_eq!(a.listeners[0].balance, Balance::Sticky);
    assert_eq!(
        a.listeners[1].balance,
        Balance::Shared,
        "a Unix socket keeps one queue"
    );
    assert_eq!(load(OK).unwrap().apps[0].balance, Balance::Shared);
    for (bad, says) in [
        ("\"stick\"", "unknown variant `stick`"),
        ("3", "expected \"shared\", \"sticky\" or \"spread\""),
        (
            "{ sticky = {} }",
            "expected \"shared\", \"sticky\" or \"spread\"",
        ),
    ] {
        let e = load(&with(bad)).unwrap_err().to_string();
        assert!(
            e.contains("app[0].balance") && e.contains(says),
            "{bad}: {e}"
        );
    }
}
