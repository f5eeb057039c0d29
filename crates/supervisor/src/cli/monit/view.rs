//! The screen, pure: a [`Model`] drawn into a ratatui [`Frame`]. A header line (the supervisor),
//! the table (each app, its workers and waiting slots: state, cpu, memory, connections, restarts,
//! uptime, and what is going on: a reload, a hung worker, memory), the log pane of the selected
//! row (or the help), the status line and the keys. Below [`MIN_WIDTH`] x [`MIN_HEIGHT`] a compact list and
//! a note instead: never a panic, whatever the size.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::model::Model;
use crate::control::protocol::{
    AppStatus, CanaryStage, LogLine, SlotInfo, StatusReport, WorkerInfo,
};
use crate::core::{Phase, WorkerState};
use crate::logs::record::Level;
use crate::units;

/// The smallest terminal the full view is drawn in.
pub(super) const MIN_WIDTH: u16 = 60;
/// See [`MIN_WIDTH`].
pub(super) const MIN_HEIGHT: u16 = 12;

/// The keys, on the last line.
const KEYS: &str = "↑↓/jk select  r reload  R restart  +/- scale  ? help  q quit";

/// The mark of the selected row.
pub(super) const SELECTED: &str = "▶ ";

/// Draws the model.
pub(super) fn draw(frame: &mut Frame, m: &Model) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        compact(frame, m, area);
        return;
    }
    let rows = m.rows().len();
    // The table: its rows, a header and borders, but the logs keep at least 5 lines.
    let middle = area.height.saturating_sub(3);
    let table_height = (rows as u16 + 3).clamp(4, middle.saturating_sub(5).max(4));
    let [header, table, logs, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_height),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(m)), header);
    draw_table(frame, m, table);
    if m.ui.help {
        frame.render_widget(help(), logs);
    } else {
        draw_logs(frame, m, logs);
    }
    frame.render_widget(Paragraph::new(status_line(m)), status);
    frame.render_widget(
        Paragraph::new(KEYS).style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
}

/// The supervisor's line: name, pid, uptime, cpu, memory, phase, config.
fn header_line(m: &Model) -> Line<'static> {
    let Some(r) = &m.status else {
        return Line::from("supervisor monit: waiting for the first status...");
    };
    let name = if r.name.is_empty() {
        String::new()
    } else {
        format!(" {}", r.name)
    };
    let title = Span::styled(
        format!("supervisor{name}"),
        Style::new().add_modifier(Modifier::BOLD),
    );
    if m.status_error.is_some() {
        // The report is the last one that came: its figures (running, up 2.3s) are no more.
        return Line::from(vec![
            title,
            Span::styled(
                "  not answering: the table is its last status (see below)",
                Style::new().fg(Color::Red),
            ),
        ]);
    }
    Line::from(vec![
        title,
        Span::raw(format!(
            "  {}  config {}",
            crate::cli::render::supervisor_figures(r),
            r.config
        )),
    ])
}

/// The connections column's place (shown when some worker's connections are counted).
const CONNS: usize = 6;

fn draw_table(frame: &mut Frame, m: &Model, area: Rect) {
    let counted = m.status.as_ref().is_some_and(|r| {
        r.apps
            .iter()
            .flat_map(|a| &a.workers)
            .any(|w| w.connections.is_some())
    });
    let columns = |mut cells: Vec<Cell<'static>>| {
        if !counted {
            cells.remove(CONNS);
        }
        cells
    };
    let header = Row::new(columns(
        [
            "name", "pid", "gen", "state", "cpu", "mem", "conns", "restarts", "uptime", "info",
        ]
        .map(|h| Cell::from(h).style(Style::new().add_modifier(Modifier::BOLD)))
        .to_vec(),
    ));
    let rows: Vec<Row> = m
        .status
        .as_ref()
        .map(|r| {
            table_rows(r)
                .into_iter()
                .map(columns)
                .map(Row::new)
                .collect()
        })
        .unwrap_or_default();
    // The name column as wide as the longest name (a worker's is indented by one).
    let names = m.status.as_ref().map_or(0, |r| {
        r.apps
            .iter()
            .flat_map(|a| {
                let slots = a
                    .workers
                    .iter()
                    .map(|w| w.slot)
                    .chain(a.waiting.iter().map(|s| s.slot));
                let widest = slots.max().unwrap_or(0).to_string().len();
                [a.name.chars().count(), a.name.chars().count() + widest + 2]
            })
            .max()
            .unwrap_or(0)
    });
    let mut widths = vec![
        Constraint::Length(names.clamp(6, 24) as u16),
        Constraint::Length(7),
        Constraint::Length(3),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Fill(1),
    ];
    if !counted {
        widths.remove(CONNS);
    }
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(" apps and workers "))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(SELECTED);
    let mut state = TableState::new().with_selected(m.selected_index());
    frame.render_stateful_widget(table, area, &mut state);
}

/// Every row of the report, in [`super::model::rows_of`]'s order, as its cells.
fn table_rows(r: &StatusReport) -> Vec<Vec<Cell<'static>>> {
    let mut rows = Vec::new();
    for a in &r.apps {
        rows.push(app_row(a));
        rows.extend(a.workers.iter().map(worker_row));
        rows.extend(a.waiting.iter().map(|s| waiting_row(a, s)));
    }
    rows
}

fn app_row(a: &AppStatus) -> Vec<Cell<'static>> {
    let serving = a
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Draining);
    let cpu: f64 = a.workers.iter().map(|w| w.process.cpu_percent).sum();
    let mem: u64 = a.workers.iter().map(|w| w.process.rss_bytes).sum();
    let conns: Option<u64> = a
        .workers
        .iter()
        .filter_map(|w| w.connections)
        .reduce(|x, y| x + y);
    let restarts: u64 = a.workers.iter().map(|w| u64::from(w.restarts)).sum::<u64>()
        + a.waiting.iter().map(|s| u64::from(s.restarts)).sum::<u64>();
    let ready = serving
        .clone()
        .filter(|w| w.state == WorkerState::Ready)
        .count();
    let mut info = Vec::new();
    // The generation it reloads to is in the gen column.
    if let Some(p) = &a.reload_in_progress {
        let held = p.canary.as_ref().filter(|c| c.stage == CanaryStage::Held);
        info.push(match (held, p.rolling_back) {
            (_, Some(of)) => format!("rolling back generation {of}'s canary"),
            (Some(c), None) => format!(
                "canary held {}: {}",
                units::duration(c.held_secs),
                match c.continues_in_secs {
                    Some(s) => format!("continues in {}", units::duration(s)),
                    None => "reload --continue/--rollback".to_string(),
                }
            ),
            (None, None) => format!(
                "reloading {}/{}, {}{}",
                p.done,
                p.total,
                units::duration(p.elapsed_secs),
                if p.queued { " (+1 queued)" } else { "" }
            ),
        });
    } else if let Some(l) = &a.last_reload {
        let why = l
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        info.push(format!(
            "last reload {} in {}{why}",
            l.outcome,
            units::duration(l.duration_secs)
        ));
    }
    if let Some(r) = &a.memory_recycling {
        use crate::core::report::ReplaceReason;
        let why = match r.reason {
            ReplaceReason::Memory => "for memory",
            ReplaceReason::Watchdog => "hung",
            ReplaceReason::MaxAge => "for max_age",
        };
        info.push(format!("replacing slot {} ({why})", r.slot));
    }
    if a.watchdog_replacements > 0 {
        info.push(format!("{} hung replaced", a.watchdog_replacements));
    }
    if a.removed {
        info.push("removed from the config: draining".into());
    }
    if !a.waiting_for.is_empty() {
        info.push(format!("after {}", a.waiting_for.join(", ")));
    }
    if let Some(s) = &a.singleton {
        info.push(format!("singleton: {}", s.role));
    }
    vec![
        Cell::from(a.name.clone()).style(Style::new().add_modifier(Modifier::BOLD)),
        Cell::from(""),
        Cell::from(a.generation.to_string()),
        Cell::from(format!(
            "{} {ready}/{}",
            a.phase,
            super::model::instances(a)
        ))
        .style(phase_style(a.phase)),
        Cell::from(format!("{cpu:.1}%")),
        Cell::from(units::bytes(mem)),
        Cell::from(conns.map_or(String::new(), |n| n.to_string())),
        Cell::from(restarts.to_string()),
        Cell::from(""),
        Cell::from(info.join("; ")),
    ]
}

fn worker_row(w: &WorkerInfo) -> Vec<Cell<'static>> {
    let (state, style) = if w.hung {
        ("hung".to_string(), Style::new().fg(Color::Red))
    } else {
        (w.state.to_string(), worker_style(w.state))
    };
    let info = [
        w.hung.then(|| "missed its watchdog".to_string()),
        w.over_max_memory_secs
            .map(|s| format!("over max_memory {}", units::duration(s))),
        w.event_loop_lag_ms
            .map(|ms| format!("lag {}", units::duration(ms / 1000.0))),
        w.status_text.clone(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ");
    vec![
        Cell::from(format!(" {}", w.name)),
        Cell::from(w.process.pid.to_string()),
        Cell::from(w.generation.to_string()),
        Cell::from(state).style(style),
        Cell::from(format!("{:.1}%", w.process.cpu_percent)),
        Cell::from(units::bytes(w.process.rss_bytes)),
        Cell::from(w.connections.map_or(String::new(), |n| n.to_string())),
        Cell::from(w.restarts.to_string()),
        Cell::from(units::duration(w.process.uptime_secs)),
        Cell::from(info),
    ]
}

fn waiting_row(a: &AppStatus, s: &SlotInfo) -> Vec<Cell<'static>> {
    vec![
        Cell::from(format!(" {}.{}", a.name, s.slot)),
        Cell::from("-"),
        Cell::from("-"),
        Cell::from(s.state.to_string()).style(Style::new().fg(Color::Red)),
        Cell::from("-"),
        Cell::from("-"),
        Cell::from(""),
        Cell::from(s.restarts.to_string()),
        Cell::from(format!("in {}", units::duration(s.restart_in_secs))),
        Cell::from(s.last_exit.clone()),
    ]
}

fn phase_style(p: Phase) -> Style {
    match p {
        Phase::Running => Style::new().fg(Color::Green),
        Phase::Starting | Phase::Waiting | Phase::Standby => Style::new().fg(Color::Yellow),
        Phase::Stopping | Phase::Stopped => Style::new().fg(Color::Magenta),
    }
}

fn worker_style(s: WorkerState) -> Style {
    match s {
        WorkerState::Ready => Style::new().fg(Color::Green),
        WorkerState::Starting => Style::new().fg(Color::Yellow),
        WorkerState::Draining => Style::new().fg(Color::Magenta),
    }
}

fn draw_logs(frame: &mut Frame, m: &Model, area: Rect) {
    let p = &m.logs;
    let mut title = match (&p.target, m.log_target()) {
        (Some(t), _) => format!(" logs {t} "),
        (None, Some(t)) => format!(" logs {t} (opening) "),
        (None, None) => " logs ".to_string(),
    };
    if p.lost > 0 {
        title.push_str(&format!("({} lines lost) ", p.lost));
    }
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    let mut lines: Vec<Line> = Vec::new();
    if let Some(note) = &p.note {
        lines.push(Line::styled(note.clone(), Style::new().fg(Color::Yellow)));
    }
    let room = usize::from(inner.height).saturating_sub(lines.len());
    let skip = p.lines.len().saturating_sub(room);
    lines.extend(p.lines.iter().skip(skip).map(log_line));
    if lines.is_empty() {
        lines.push(Line::styled(
            "no output yet",
            Style::new().add_modifier(Modifier::DIM),
        ));
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// `10:00:02.530 web.1 err WARN text` (UTC, as the log files).
fn log_line(l: &LogLine) -> Line<'static> {
    let time = chrono::DateTime::from_timestamp_millis((l.time * 1000.0) as i64)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let level_style = match l.level {
        Level::Error => Style::new().fg(Color::Red),
        Level::Warn => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    Line::from(vec![
        Span::styled(time, Style::new().add_modifier(Modifier::DIM)),
        Span::raw(format!(" {} {} ", l.worker, l.stream.as_str())),
        Span::styled(l.level.as_str(), level_style),
        Span::raw(format!(" {}", l.text)),
    ])
}

fn status_line(m: &Model) -> Line<'static> {
    // A status that fails says more than the last action's message.
    if let Some(e) = &m.status_error {
        return Line::styled(format!("status: {e}"), Style::new().fg(Color::Red));
    }
    if let Some(msg) = &m.ui.message {
        let style = if msg.error {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Cyan)
        };
        return Line::styled(msg.text.clone(), style);
    }
    Line::from("")
}

fn help() -> Paragraph<'static> {
    let text = [
        "↑ ↓  j k   select an app or a worker; the log pane follows it (g G: first, last)",
        "r          reload the selected app: its workers replaced one at a time, zero downtime",
        "R R        restart it: every worker at once, no readiness gating (for a stuck app)",
        "+ -        scale it by one worker (kept until the next reload reads `instances` again)",
        "?          this help, or the logs again",
        "q Esc ^C   quit",
        "",
        "The table is the control socket's status, every second (as `supervisor status`);",
        "the logs as `supervisor logs -f` would print them (UTC).",
    ];
    Paragraph::new(text.map(Line::from).to_vec()).block(Block::bordered().title(" help "))
}

/// A terminal too small for the table: one line per app, and what to do.
fn compact(frame: &mut Frame, m: &Model, area: Rect) {
    let mut lines = vec![Line::styled(
        format!(
            "monit needs {MIN_WIDTH}x{MIN_HEIGHT}, has {}x{}; q quits",
            area.width, area.height
        ),
        Style::new().fg(Color::Yellow),
    )];
    if let Some(r) = &m.status {
        for a in &r.apps {
            let ready = a
                .workers
                .iter()
                .filter(|w| w.state == WorkerState::Ready)
                .count();
            let reload = if a.reload_in_progress.is_some() {
                " reloading"
            } else {
                ""
            };
            lines.push(Line::from(format!(
                "{} {} {ready}/{}{reload}",
                a.name,
                a.phase,
                super::model::instances(a)
            )));
        }
    }
    if let Some(msg) = &m.ui.message {
        lines.push(Line::from(msg.text.clone()));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
