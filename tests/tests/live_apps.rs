//! Apps one by one while the others run: `stop web` refuses web's connections at once (never
//! leaves them waiting), keeps it stopped through a reload, `start web` serves again, and api's
//! workers keep their pids throughout; a reload that applies the whole file: an app added, one
//! removed, one moved to a new port, said in the report, with no request lost on the app that
//! stays.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::{ConnMode, Load, Supervisor, get, wait_for};

/// An `[[app]]` of the demo-app on `address`, with `extra` keys.
fn app_with(name: &str, instances: usize, address: &str, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = \"{{demo}}\"\ninstances = {instances}\nkill_timeout = \"5s\"\nenv = {{ DEMO_JOBS = \"off\" }}\n{extra}[[app.listen]]\nname = \"http\"\naddress = \"{address}\"\n"
    )
}

fn app(name: &str, instances: usize, address: &str) -> String {
    app_with(name, instances, address, "")
}

/// Every app's first listener, by name.
fn addresses(s: &Supervisor) -> BTreeMap<String, SocketAddr> {
    let v = s.status().unwrap();
    v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| {
            let addr = a["listeners"][0]["address"].as_str()?.parse().ok()?;
            Some((a["name"].as_str()?.to_string(), addr))
        })
        .collect()
}

/// Ready workers' pids by app name.
fn pids(s: &Supervisor) -> BTreeMap<String, Vec<i32>> {
    let mut by_app: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for w in s.ready_workers().unwrap() {
        let app = w.name.split('.').next().unwrap_or_default().to_string();
        by_app.entry(app).or_default().push(w.pid);
    }
    by_app
}

/// A loopback address with a port free now.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[test]
fn stop_app_refuses_its_connections_and_start_app_serves_again_while_api_runs_on() {
    // A port of its own (port 0 would be another port after `start web`).
    let port = free_port();
    let body = format!(
        "{}{}",
        app("api", 2, "127.0.0.1:0"),
        app("web", 2, &port.to_string())
    );
    let s = Supervisor::start(&body, 4).unwrap();
    let addr = addresses(&s);
    let (api, web) = (addr["api"], addr["web"]);
    assert_eq!(web, port);
    let api_pids = pids(&s)["api"].clone();
    assert_eq!(get(web, "/").unwrap().0, 200);

    // `stop web`: refused within a second of asking, not left to time out.
    let asked = Instant::now();
    let stop = {
        let config = s.config.clone();
        std::thread::spawn(move || {
            e2e::run_with_deadline(
                std::process::Command::new(e2e::bin("supervisor"))
                    .args(["stop", "web", "-c"])
                    .arg(config),
                Duration::from_secs(30),
            )
        })
    };
    wait_for(Duration::from_secs(1), "web's port to refuse", || {
        refused(web).then_some(())
    })
    .unwrap();
    let refused_after = asked.elapsed();
    let out = stop.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("web: stopped (2 worker(s) drained)"),
        "{text}"
    );
    assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");
    let v = s.status().unwrap();
    assert_eq!(v["apps"][1]["phase"], "stopped", "{v}");
    assert!(v["apps"][1]["workers"].as_array().unwrap().is_empty());
    let (ok, text) = s.cli_text(&["status"]).unwrap();
    assert!(
        ok && text.contains("app web  generation 1  stopped"),
        "{text}"
    );
    assert_eq!(get(api, "/").unwrap().0, 200, "api serves on");
    assert_eq!(
        pids(&s)["api"],
        api_pids,
        "api's workers untouched by web's stop"
    );

    // A reload keeps it stopped.
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("web: reload")
            && text.contains("stopped: the new config applies when it is started"),
        "{text}"
    );
    assert!(refused(web));
    let api_pids = {
        let now = pids(&s)["api"].clone();
        assert!(
            now.iter().all(|p| !api_pids.contains(p)),
            "api was reloaded"
        );
        now
    };

    // `start web`: answered once its workers are ready, on the same address.
    let (ok, text) = s.cli_text(&["start", "web"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("web: started, 2 worker(s) ready"), "{text}");
    let (code, body) = get(web, "/").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("generation=2"), "the reloaded config: {body}");
    assert_eq!(pids(&s)["api"], api_pids, "api's workers kept their pids");

    // `reset` clears the restart counts; a second `start` says it runs already.
    let (ok, text) = s.cli_text(&["reset", "web"]).unwrap();
    assert!(ok && text.contains("restart counters reset: web"), "{text}");
    let (ok, text) = s.cli_text(&["start", "web"]).unwrap();
    assert!(ok && text.contains("web: running already"), "{text}");
    let (ok, text) = s.cli_text(&["stop", "nope"]).unwrap();
    assert!(
        !ok && text.contains("no app is named \"nope\" (apps: api, web)"),
        "{text}"
    );
}

#[test]
fn a_reload_adds_removes_and_moves_apps_and_the_app_that_stays_loses_nothing() {
    let body = format!(
        "{}{}{}",
        app("api", 2, "127.0.0.1:0"),
        app("web", 1, "127.0.0.1:0"),
        app("old", 1, "127.0.0.1:0")
    );
    let s = Supervisor::start(&body, 4).unwrap();
    let before = addresses(&s);
    // web moves to a port of its own; old goes; new comes, after api.
    let moved = free_port();
    s.rewrite(&format!(
        "{}{}{}",
        app("api", 2, "127.0.0.1:0"),
        app("web", 1, &moved.to_string()),
        app_with("new", 1, "127.0.0.1:0", "after = [\"api\"]\n")
    ))
    .unwrap();
    let load = Load::start(
        before["api"],
        "/",
        3,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    wait_for(Duration::from_secs(10), "the first answers", || {
        (load.ok_so_far() > 0).then_some(())
    })
    .unwrap();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}\n{}", s.log_text());
    assert!(
        text.contains("config applied: added new; removed old; changed web (listen)"),
        "{text}"
    );
    assert!(
        text.contains("new: added: started in generation 1: ok"),
        "{text}"
    );
    assert!(text.contains("old: removed: ok"), "{text}");
    assert!(
        text.contains("web: reload to generation 2: ok") && text.contains("(changed: listen)"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "api lost requests: {:?}", report.errors);
    assert!(report.ok > 20, "{report:?}");

    let after = addresses(&s);
    assert_eq!(after["web"], moved);
    assert_eq!(
        get(moved, "/").unwrap().0,
        200,
        "web serves on its new port"
    );
    assert!(refused(before["web"]), "web's old port is closed");
    assert!(refused(before["old"]), "the removed app's port refuses");
    assert_eq!(get(after["new"], "/").unwrap().0, 200, "the new app serves");
    assert_eq!(after["api"], before["api"]);
    let names: Vec<String> = after.keys().cloned().collect();
    assert_eq!(names, ["api", "new", "web"]);
    wait_for(Duration::from_secs(10), "old's worker to be gone", || {
        let v = s.status().ok()?;
        let apps: Vec<String> = v["apps"]
            .as_array()?
            .iter()
            .filter_map(|a| Some(a["name"].as_str()?.to_string()))
            .collect();
        (apps == ["api", "web", "new"]).then_some(())
    })
    .unwrap();

    // A change that cannot be applied live is refused, with the reason, exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace(&moved.to_string(), &port)).unwrap();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("cannot be applied while the supervisor runs, nothing changed")
            && text.contains(&format!("cannot listen on {port}")),
        "{text}"
    );
    assert_eq!(
        get(moved, "/").unwrap().0,
        200,
        "web still serves where it did"
    );
}
