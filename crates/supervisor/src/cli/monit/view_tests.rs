//! The view drawn into ratatui's test backend from the fixed status, read back as text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::super::fixture;
use super::super::model::{Message, Model, RowId};
use super::*;
use crate::logs::record::{Level, Stream};

/// The screen's lines after drawing `m` at `width` x `height`.
fn screen(m: &Model, width: u16, height: u16) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
    t.draw(|f| draw(f, m)).unwrap();
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn line_with<'a>(lines: &'a [String], what: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?}:\n{}", lines.join("\n")))
}

/// The fixture with the old web.1 selected and its log lines in the pane.
fn web1_model() -> Model {
    let mut m = fixture::model();
    m.ui.selected = Some(RowId::Worker {
        app: "web".into(),
        name: "web.1".into(),
        pid: 4243,
    });
    m.logs.reset(
        "web.1".into(),
        vec![
            fixture::line("web.1", 1, Stream::Out, Level::Info, "listening on fd 3"),
            fixture::line("web.1", 2, Stream::Err, Level::Warn, "deprecated: x()"),
            fixture::line("web.1", 3, Stream::Out, Level::Info, "GET /health 200"),
        ],
    );
    m
}

#[test]
fn the_full_view_shows_apps_workers_the_reload_the_selection_and_the_logs() {
    let mut m = web1_model();
    // Connections held (web listens on TCP, api does not): the old web.1 still has 7, its
    // replacement none yet.
    let report = m.status.as_mut().unwrap();
    for (w, n) in report.apps[0].workers.iter_mut().zip([12, 7, 0]) {
        w.connections = Some(n);
    }
    let lines = screen(&m, 100, 30);
    let all = lines.join("\n");
    // The supervisor.
    assert!(
        lines[0].starts_with("supervisor shop  pid 4200  up 1h 2m  cpu 0.3%  mem 12.1 MB  running"),
        "{all}"
    );
    // Apps, with the reload in progress and the ready count.
    let web = line_with(&lines, "│  web ");
    assert!(web.contains(" 4 "), "the generation it reloads to: {all}");
    assert!(web.contains("running 2/2"), "{all}");
    assert!(web.contains("reloading 1/2, 3.2s"), "{all}");
    assert!(
        line_with(&lines, "│  api ").contains("running 1/2"),
        "{all}"
    );
    // Connections: web's sum and each worker's; api has no TCP listener, nothing counted.
    let header = line_with(&lines, "restarts");
    let col = header.find("conns").unwrap();
    let at = |l: &str| {
        l.chars()
            .skip(header[..col].chars().count())
            .take(5)
            .collect::<String>()
    };
    assert_eq!(at(web).trim(), "19", "{all}");
    assert_eq!(at(line_with(&lines, "4244")).trim(), "12", "{all}");
    assert_eq!(at(line_with(&lines, "4243")).trim(), "7", "{all}");
    assert_eq!(at(line_with(&lines, "4245")).trim(), "0", "{all}");
    assert_eq!(at(line_with(&lines, "5001")).trim(), "", "{all}");
    // Workers: old and new web.1, the hung api.0 and api.1 in its crash loop.
    assert!(line_with(&lines, "4244").contains("ready"), "{all}");
    assert!(line_with(&lines, "4245").contains("starting"), "{all}");
    let api0 = line_with(&lines, "5001");
    assert!(api0.contains("hung"), "{all}");
    assert!(api0.contains("1d 0h"), "{all}");
    assert!(api0.contains("missed its watchdog"), "{all}");
    let api1 = line_with(&lines, "api.1");
    assert!(
        api1.contains("crash-loop") && api1.contains("in 4.2s exited with status 1"),
        "{all}"
    );
    // The selected row is old web.1, and only it is marked.
    let marked: Vec<&String> = lines.iter().filter(|l| l.contains(SELECTED)).collect();
    assert_eq!(marked.len(), 1, "{all}");
    assert!(
        marked[0].contains("web.1") && marked[0].contains("4243"),
        "{all}"
    );
    assert!(marked[0].contains("1h 2m"), "{all}");
    // The log pane follows it.
    assert!(line_with(&lines, " logs web.1 ").contains('┌'), "{all}");
    assert!(
        line_with(&lines, "GET /health").contains("10:00:03.250 web.1 out INFO GET /health 200"),
        "{all}"
    );
    assert!(
        line_with(&lines, "deprecated").contains("web.1 err WARN deprecated: x()"),
        "{all}"
    );
    // The keys.
    assert!(
        lines[29].contains("r reload  R restart  +/- scale"),
        "{all}"
    );
    // The rows fit, in order: web's, then api's.
    let order: Vec<usize> = ["4244", "4243", "4245", "5001", "api.1"]
        .iter()
        .map(|w| lines.iter().position(|l| l.contains(w)).unwrap())
        .collect();
    assert!(order.windows(2).all(|p| p[0] < p[1]), "{all}");
}

#[test]
fn the_pane_shows_the_newest_lines_that_fit_and_counts_lost_ones() {
    let mut m = web1_model();
    let many: Vec<_> = (0..100)
        .map(|i| fixture::line("web.1", 4, Stream::Out, Level::Info, &format!("line {i}")))
        .collect();
    m.logs.push(many, 12);
    let lines = screen(&m, 100, 30);
    let all = lines.join("\n");
    assert!(all.contains("line 99"), "{all}");
    assert!(!all.contains("line 80 "), "{all}");
    assert!(all.contains("(12 lines lost)"), "{all}");
    // The keys line stays last; the status line above it says the action's result.
    m.ui.message = Some(Message::error("scale refused: no app named x"));
    let lines = screen(&m, 100, 30);
    assert!(lines[28].contains("scale refused: no app named x"));
}

#[test]
fn the_help_replaces_the_logs() {
    let mut m = web1_model();
    m.ui.help = true;
    let all = screen(&m, 100, 30).join("\n");
    assert!(all.contains(" help "), "{all}");
    assert!(all.contains("R R        restart it"), "{all}");
    assert!(!all.contains("GET /health"), "{all}");
}

#[test]
fn a_small_terminal_gets_a_compact_list_and_never_a_panic() {
    let m = web1_model();
    let lines = screen(&m, 40, 8);
    let all = lines.join("\n");
    assert!(
        lines[0].starts_with("monit needs 60x12, has 40x8; q quits"),
        "{all}"
    );
    assert!(lines[1].starts_with("web running 2/2 reloading"), "{all}");
    assert!(lines[2].starts_with("api running 1/2"), "{all}");
    // Any size at all, down to nothing; and the smallest full view.
    for (w, h) in [
        (0, 0),
        (1, 1),
        (59, 30),
        (100, 11),
        (60, 12),
        (3, 40),
        (500, 3),
    ] {
        let lines = screen(&m, w, h);
        assert_eq!(lines.len(), usize::from(h));
    }
    let lines = screen(&m, 60, 12);
    assert!(
        lines[0].starts_with("supervisor shop"),
        "{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains(SELECTED)),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn before_the_first_status_and_after_an_error() {
    let mut m = Model::default();
    let all = screen(&m, 80, 20).join("\n");
    assert!(all.contains("waiting for the first status"), "{all}");
    m.status_error = Some("no supervisor is running on control socket /x.sock".into());
    let all = screen(&m, 80, 20).join("\n");
    assert!(all.contains("status: no supervisor is running"), "{all}");
    // A supervisor that stops answering: its last report is not shown as alive, and the
    // failure wins over the last action's message.
    let mut m = web1_model();
    m.ui.message = Some(crate::cli::monit::Message::info("scaled web to 2"));
    m.status_error = Some("no supervisor is running on control socket /x.sock".into());
    let lines = screen(&m, 100, 30);
    assert!(lines[0].contains("not answering"), "{}", lines[0]);
    assert!(!lines[0].contains("running"), "{}", lines[0]);
    let all = lines.join("\n");
    assert!(all.contains("status: no supervisor is running"), "{all}");
    assert!(!all.contains("scaled web to 2"), "{all}");
}

#[test]
fn a_held_canary_says_how_to_go_on() {
    let mut m = web1_model();
    let report = m.status.as_mut().unwrap();
    let web = report.apps.iter_mut().find(|a| a.name == "web").unwrap();
    let progress = web.reload_in_progress.as_mut().unwrap();
    progress.canary = Some(crate::core::report::CanaryProgress {
        stage: CanaryStage::Held,
        slot: Some(0),
        pid: Some(4301),
        held_secs: 12.0,
        continues_in_secs: None,
    });
    let lines = screen(&m, 120, 30);
    let web = line_with(&lines, "canary held");
    assert!(web.contains("reload --continue/--rollback"), "{web}");
    assert!(
        !line_with(&lines, "restarts").contains("conns"),
        "no connection counted, no column: {web}"
    );
}
