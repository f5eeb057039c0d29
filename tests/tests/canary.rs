//! Canary reloads end to end, under load: `reload --canary` replaces one worker and holds (the
//! others keep serving the previous generation, and both answer), then `--continue` rolls the
//! rest or `--rollback` puts the previous generation back on the canary's slot; 0 failed
//! requests either way. With `canary_hold`, a plain reload continues by itself, and a canary
//! that dies while held is rolled back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{ConnMode, Load, Supervisor, WorkerRow, get, wait_for};

const DEMO3: &str = "[[app]]\nname = \"web\"\ncommand = \"{demo}\"\ninstances = 3\nkill_timeout = \"5s\"\nready_timeout = \"5s\"\n";

fn generations(ready: &[WorkerRow]) -> Vec<u64> {
    ready.iter().map(|w| w.generation).collect()
}

/// A supervisor of 3 workers under keep-alive and new-connection load, with its canary of
/// generation 2 ready and held: the supervisor, the load, the generation-1 pids and the
/// canary's pid.
fn canary_held() -> (Supervisor, Load, Vec<i32>, i32) {
    let s = Supervisor::start(DEMO3, 3).unwrap();
    let load = Load::start(
        s.addr().unwrap(),
        "/",
        2,
        &[ConnMode::KeepAlive, ConnMode::PerRequest],
    );
    load.wait_answered().unwrap();
    let before: Vec<i32> = s.ready_workers().unwrap().iter().map(|w| w.pid).collect();
    let (ok, text) = s.cli_text(&["reload", "web", "--canary"]).unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("web: canary of generation 2 ready in"),
        "{text}"
    );
    assert!(
        text.contains("`supervisor reload web --continue`"),
        "{text}"
    );
    let ready = s.ready_workers().unwrap();
    let mut gens = generations(&ready);
    gens.sort();
    assert_eq!(
        gens,
        [1, 1, 2],
        "one canary, the others untouched: {ready:?}"
    );
    let canary = ready.iter().find(|w| w.generation == 2).unwrap().pid;
    let kept: Vec<i32> = ready
        .iter()
        .filter(|w| w.generation == 1)
        .map(|w| w.pid)
        .collect();
    assert!(kept.iter().all(|p| before.contains(p)));
    // Both generations answer on the shared socket while it holds.
    let mut seen = BTreeSet::new();
    wait_for(
        Duration::from_secs(20),
        "both generations answering",
        || {
            let (_, body) = get(s.addr().ok()?, "/").ok()?;
            seen.insert(body.split_whitespace().nth(2)?.to_string());
            (seen.contains("generation=1") && seen.contains("generation=2")).then_some(())
        },
    )
    .unwrap();
    let (_, status) = s.cli_text(&["status"]).unwrap();
    assert!(
        status.contains("canary reload to generation 2 HELD"),
        "{status}"
    );
    // Any other reload is refused with what to do.
    let (ok, text) = s.cli_text(&["reload", "web"]).unwrap();
    assert!(
        !ok && text.contains("--continue") && text.contains("--rollback"),
        "{text}"
    );
    (s, load, kept, canary)
}

#[test]
fn canary_then_continue_under_load_fails_no_request() {
    let (s, load, _, canary) = canary_held();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, text) = s.cli_text(&["reload", "web", "--continue"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("web: reload to generation 2: ok"), "{text}");
    let ready = s.ready_workers().unwrap();
    assert_eq!(generations(&ready), [2, 2, 2], "{ready:?}");
    assert!(
        ready.iter().any(|w| w.pid == canary),
        "the canary stays: {ready:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(report.ok > 100, "{report:?}");
}

#[test]
fn canary_then_rollback_under_load_fails_no_request() {
    let (s, load, kept, canary) = canary_held();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, text) = s.cli_text(&["reload", "web", "--rollback"]).unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("web: rolled back to generation 1 in"),
        "{text}"
    );
    let ready = s.ready_workers().unwrap();
    assert_eq!(generations(&ready), [1, 1, 1], "{ready:?}");
    assert!(ready.iter().all(|w| w.pid != canary), "the canary is gone");
    assert!(
        kept.iter().all(|p| ready.iter().any(|w| w.pid == *p)),
        "the workers that never left generation 1 serve on: {kept:?} {ready:?}"
    );
    wait_for(Duration::from_secs(10), "the canary to exit", || {
        (!e2e::alive(canary)).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let (_, status) = s.cli_text(&["status"]).unwrap();
    assert!(
        status.contains("last reload: canary rolled back, generation 1 serves again"),
        "{status}"
    );
    let json = s.cli_text(&["status", "--json"]).unwrap().1;
    assert!(json.contains("\"outcome\": \"rolled_back\""), "{json}");
}

#[test]
fn canary_hold_continues_by_itself_and_a_canary_that_dies_while_held_is_rolled_back() {
    let body = format!("{DEMO3}[app.reload]\ncanary_hold = \"1s\"\n");
    let s = Supervisor::start(&body, 3).unwrap();
    let started = std::time::Instant::now();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("web: reload to generation 2: ok"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it held");
    assert_eq!(generations(&s.ready_workers().unwrap()), [2, 2, 2]);
    assert!(
        s.log_text()
            .contains("the canary held its `canary_hold`: continuing")
    );

    // Generation 3 is killed 1.5 s after it starts, during its 10 s hold.
    let dying = DEMO3.replace(
        "command = \"{demo}\"",
        "command = \"/bin/sh\"\nargs = [\"-c\", \"(sleep 1.5; kill -9 $$) & exec {demo}\"]",
    );
    s.rewrite(&format!("{dying}[app.reload]\ncanary_hold = \"10s\"\n"))
        .unwrap();
    let (ok, text) = s.cli_text(&["reload"]).unwrap();
    assert!(!ok, "a reload rolled back is not a success: {text}");
    assert!(text.contains("web: rolled back to generation 2"), "{text}");
    assert!(text.contains("canary (pid"), "{text}");
    assert!(text.contains("exited: signal 9"), "{text}");
    let ready = wait_for(Duration::from_secs(10), "3 ready workers", || {
        let r = s.ready_workers().ok()?;
        (r.len() == 3).then_some(r)
    })
    .unwrap();
    assert_eq!(generations(&ready), [2, 2, 2], "{ready:?}");
}
