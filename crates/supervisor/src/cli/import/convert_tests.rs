//! The option mapping, on ecosystem files as node hands them over (JSON).

use super::*;

/// A directory holding `scripts` (empty files), and its path.
fn app_dir(scripts: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for s in scripts {
        let p = dir.path().join(s);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }
    dir
}

fn one(app: serde_json::Value, dir: &Path) -> (Imported, Vec<Note>) {
    let apps = apps_of(&serde_json::json!({ "apps": [app] })).unwrap();
    convert(&apps[0], 0, dir, 8).unwrap_or_else(|n| panic!("{n:?}"))
}

fn key<'a>(app: &'a Imported, k: &str) -> Option<&'a str> {
    app.keys
        .iter()
        .find(|(name, _, _)| name == k)
        .map(|(_, v, _)| v.as_str())
}

#[test]
fn the_seeds_nestjs_file_maps_every_option() {
    let dir = app_dir(&["dist/main.js"]);
    let (app, notes) = one(
        serde_json::json!({
            "name": "nestjs-app",
            "script": "dist/main.js",
            "instances": "max",
            "exec_mode": "cluster",
            "env": { "NODE_ENV": "production" },
            "kill_timeout": 5000,
            "wait_ready": true,
            "listen_timeout": 10000,
        }),
        dir.path(),
    );
    assert_eq!(notes, [], "every option has its equivalent");
    assert_eq!(app.name, "nestjs-app");
    assert_eq!(
        (app.command.as_str(), app.args.as_slice()),
        ("node", &["dist/main.js".to_string()][..])
    );
    assert_eq!(app.instances, 0, "max: one per CPU");
    assert_eq!(app.env["NODE_ENV"], "production");
    assert_eq!(key(&app, "kill_timeout"), Some("\"5s\""));
    assert_eq!(key(&app, "ready_timeout"), Some("\"10s\""));
    assert_eq!(key(&app, "wait_ready"), Some("true"));
    assert_eq!(key(&app, "kill_signal"), Some("\"SIGINT\""), "PM2's signal");
    assert!(app.node_script.unwrap().ends_with("dist/main.js"));
}

#[test]
fn restart_memory_watch_cron_and_profiles() {
    let dir = app_dir(&["server.js"]);
    let (app, notes) = one(
        serde_json::json!({
            "script": "server.js",
            "args": "--port 8080 'a b'",
            "node_args": ["--max-old-space-size=512"],
            "instances": -1,
            "max_memory_restart": "300M",
            "cron_restart": "0 3 * * *",
            "watch": ["src", "config"],
            "ignore_watch": ["node_modules", "*.log", {"$regexp": "^tmp"}],
            "watch_delay": 1000,
            "min_uptime": "10s",
            "max_restarts": 10,
            "exp_backoff_restart_delay": 100,
            "env_production": { "NODE_ENV": "production", "WORKERS": 4 },
            "env_staging": { "NODE_ENV": "staging" },
            "out_file": "/var/log/app.out",
            "autorestart": false,
            "bogus_option": 1,
        }),
        dir.path(),
    );
    assert_eq!(app.name, "server", "the script's name");
    assert_eq!(
        app.args,
        [
            "--max-old-space-size=512",
            "server.js",
            "--port",
            "8080",
            "a b"
        ]
    );
    assert_eq!(app.script_args, ["--port", "8080", "a b"]);
    assert_eq!(app.instances, 7, "-1: CPUs minus one");
    assert_eq!(key(&app, "max_memory"), Some("\"300MiB\""));
    assert_eq!(key(&app, "cron_restart"), Some("\"0 3 * * *\""));
    assert_eq!(key(&app, "watch"), Some("[\"src\", \"config\"]"));
    assert_eq!(
        key(&app, "ignore_watch"),
        Some("[\"node_modules\", \"*.log\"]")
    );
    assert_eq!(key(&app, "watch_delay"), Some("\"1s\""));
    assert_eq!(
        app.restart,
        [
            ("min_uptime".to_string(), "\"10s\"".to_string()),
            ("max_restarts".into(), "10".into()),
            ("backoff_initial".into(), "\"100ms\"".into()),
            ("backoff_max".into(), "\"15s\"".into()),
        ]
    );
    assert_eq!(app.profiles["production"]["WORKERS"], "4");
    assert_eq!(app.profiles["staging"]["NODE_ENV"], "staging");
    let said: Vec<(&str, &str)> = notes
        .iter()
        .map(|n| (n.option.as_str(), n.why.as_str()))
        .collect();
    let about = |o: &str| said.iter().find(|(opt, _)| *opt == o).map(|(_, w)| *w);
    assert!(about("instances").unwrap().contains("7 on this machine"));
    assert!(
        about("ignore_watch")
            .unwrap()
            .contains("/^tmp/ is a regular expression")
    );
    assert_eq!(key(&app, "out_file"), Some("\"/var/log/app.out\""));
    assert!(
        about("autorestart")
            .unwrap()
            .contains("always started again")
    );
    assert!(about("bogus_option").unwrap().contains("not carried over"));
    assert_eq!(notes.len(), 4, "{said:?}");
}

#[test]
fn other_interpreters_and_what_is_left_out() {
    let dir = app_dir(&["worker.py", "bin/server"]);
    let (py, notes) = one(
        serde_json::json!({ "name": "queue worker", "script": "worker.py", "wait_ready": true }),
        dir.path(),
    );
    assert_eq!(
        (py.command.as_str(), py.args.as_slice()),
        ("python3", &["worker.py".to_string()][..])
    );
    assert_eq!(py.name, "queue-worker");
    assert!(py.node_script.is_none());
    assert!(notes.iter().any(|n| n.option == "name"));
    assert!(
        notes
            .iter()
            .any(|n| n.option == "wait_ready" && n.why.contains("Node apps only"))
    );
    let (bin, _) = one(
        serde_json::json!({ "script": "bin/server", "args": ["-v"] }),
        dir.path(),
    );
    assert_eq!(
        (bin.command.as_str(), bin.args.as_slice()),
        ("bin/server", &["-v".to_string()][..])
    );
    // A script that is not there: left out, said why.
    let apps = apps_of(&serde_json::json!({ "apps": { "script": "./service-worker/" } })).unwrap();
    let skipped = convert(&apps[0], 1, dir.path(), 2).unwrap_err();
    assert_eq!(skipped.app, "service-worker");
    assert!(skipped.why.contains("is not a file"), "{skipped:?}");
    // Top-level keys.
    let notes = file_notes(&serde_json::json!({ "apps": [], "deploy": {} }));
    assert_eq!(notes.len(), 1);
    assert!(notes[0].why.contains("pm2 deploy"));
    assert!(apps_of(&serde_json::json!({ "name": "x" })).is_err());
    assert_eq!(split_words(r#"a "b c" '' d"#), ["a", "b c", "", "d"]);
}

#[test]
fn uid_and_gid_become_user_and_group() {
    let dir = app_dir(&["app.js"]);
    let (app, notes) = one(
        serde_json::json!({ "script": "app.js", "uid": "www-data", "gid": 33 }),
        dir.path(),
    );
    assert_eq!(notes, []);
    assert_eq!(key(&app, "user"), Some("\"www-data\""));
    assert_eq!(key(&app, "group"), Some("33"));
    let (app, notes) = one(
        serde_json::json!({ "script": "app.js", "gid": "web" }),
        dir.path(),
    );
    assert_eq!(key(&app, "group"), None);
    assert!(
        notes
            .iter()
            .any(|n| n.option == "gid" && n.why.contains("needs `user`")),
        "{notes:?}"
    );
    let (app, notes) = one(
        serde_json::json!({ "script": "app.js", "uid": true }),
        dir.path(),
    );
    assert_eq!(key(&app, "user"), None);
    assert!(notes.iter().any(|n| n.option == "uid"), "{notes:?}");
}
