//! What `monit` shows, as plain data: the last status report, the rows it makes (each app, then
//! its workers and waiting slots), the selection (kept on the same worker across refreshes),
//! the log pane's lines (bounded) and the status line. The view draws it; the keys change it;
//! the edge ([`super`]) feeds it what the control socket answers.

use std::collections::VecDeque;

use crate::control::protocol::{AppStatus, LogLine, StatusReport};

/// The most log lines the pane keeps (older ones are dropped as new ones come).
pub(super) const LOG_LINES_KEPT: usize = 500;

/// One row of the table: an app, one of its workers, or one of its slots waiting to restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RowId {
    /// An app.
    App(String),
    /// A worker process (`web.0`; its pid tells an old worker from its replacement).
    Worker {
        /// Its app.
        app: String,
        /// `app.slot`.
        name: String,
        /// Its pid.
        pid: i32,
    },
    /// A slot without a live worker (backoff, crash loop).
    Waiting {
        /// Its app.
        app: String,
        /// The slot.
        slot: usize,
    },
}

impl RowId {
    /// The app the row belongs to.
    pub(super) fn app(&self) -> &str {
        match self {
            RowId::App(app) | RowId::Worker { app, .. } | RowId::Waiting { app, .. } => app,
        }
    }

    /// What the log pane follows for this row: the app, or the worker (`web.0`).
    pub(super) fn log_target(&self) -> String {
        match self {
            RowId::App(app) => app.clone(),
            RowId::Worker { name, .. } => name.clone(),
            RowId::Waiting { app, slot } => format!("{app}.{slot}"),
        }
    }
}

/// An action asked with a key that waits for a second press.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Confirm {
    /// `R`: every worker of the app at once.
    Restart(String),
}

/// What the keys change: the selection, the help, the status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Ui {
    /// The selected row (`None`: the first one).
    pub(super) selected: Option<RowId>,
    /// The help panel is shown instead of the logs.
    pub(super) help: bool,
    /// The status line: the last action's result or error.
    pub(super) message: Option<Message>,
    /// An action waiting for its key again.
    pub(super) confirm: Option<Confirm>,
}

/// A status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    /// The text.
    pub(super) text: String,
    /// Whether it is an error (drawn in red).
    pub(super) error: bool,
}

impl Message {
    /// A result.
    pub(super) fn info(text: impl Into<String>) -> Message {
        Message {
            text: text.into(),
            error: false,
        }
    }

    /// An error.
    pub(super) fn error(text: impl Into<String>) -> Message {
        Message {
            text: text.into(),
            error: true,
        }
    }
}

/// The log pane: the lines of what it follows, newest last.
#[derive(Debug, Clone, Default)]
pub(super) struct LogPane {
    /// What it follows (`web`, `web.0`), once a stream is open.
    pub(super) target: Option<String>,
    /// The lines, at most [`LOG_LINES_KEPT`].
    pub(super) lines: VecDeque<LogLine>,
    /// Lines lost: the supervisor's stream or this pane read too slowly.
    pub(super) lost: u64,
    /// Why no line comes (the stream ended, or could not open).
    pub(super) note: Option<String>,
}

impl LogPane {
    /// Starts over for `target` with its last lines.
    pub(super) fn reset(&mut self, target: String, lines: Vec<LogLine>) {
        self.target = Some(target);
        self.lines.clear();
        self.lost = 0;
        self.note = None;
        self.push(lines, 0);
    }

    /// Appends new lines (and a count of lost ones), dropping the oldest beyond the bound.
    pub(super) fn push(&mut self, lines: Vec<LogLine>, lost: u64) {
        self.lost += lost;
        let skip = lines.len().saturating_sub(LOG_LINES_KEPT);
        self.lines.extend(lines.into_iter().skip(skip));
        let over = self.lines.len().saturating_sub(LOG_LINES_KEPT);
        self.lines.drain(..over);
    }
}

/// Everything the view draws.
#[derive(Debug, Clone, Default)]
pub(super) struct Model {
    /// The last status report.
    pub(super) status: Option<StatusReport>,
    /// Why the last status request failed, if it did (the report shown is older).
    pub(super) status_error: Option<String>,
    /// Selection, help, status line.
    pub(super) ui: Ui,
    /// The log pane.
    pub(super) logs: LogPane,
}

impl Model {
    /// The rows of the table, in order.
    pub(super) fn rows(&self) -> Vec<RowId> {
        self.status.as_ref().map(rows_of).unwrap_or_default()
    }

    /// The selected row's index among [`Model::rows`] (`None` when there is no row).
    pub(super) fn selected_index(&self) -> Option<usize> {
        selected_index(&self.rows(), self.ui.selected.as_ref())
    }

    /// The selected row.
    pub(super) fn selected(&self) -> Option<RowId> {
        let rows = self.rows();
        selected_index(&rows, self.ui.selected.as_ref()).and_then(|i| rows.get(i).cloned())
    }

    /// The app a report names.
    pub(super) fn app(&self, name: &str) -> Option<&AppStatus> {
        self.status.as_ref()?.apps.iter().find(|a| a.name == name)
    }

    /// What the log pane should follow: the selected row's app or worker.
    pub(super) fn log_target(&self) -> Option<String> {
        self.selected().map(|r| r.log_target())
    }

    /// Takes a new status report; the selection stays on its row, or the nearest one left.
    pub(super) fn set_status(&mut self, report: StatusReport) {
        self.status = Some(report);
        self.status_error = None;
        let rows = self.rows();
        self.ui.selected =
            selected_index(&rows, self.ui.selected.as_ref()).and_then(|i| rows.get(i).cloned());
    }
}

/// The rows of a report: each app, then its workers (by slot, old before new), then its slots
/// waiting to restart.
pub(super) fn rows_of(report: &StatusReport) -> Vec<RowId> {
    let mut rows = Vec::new();
    for a in &report.apps {
        rows.push(RowId::App(a.name.clone()));
        rows.extend(a.workers.iter().map(|w| RowId::Worker {
            app: a.name.clone(),
            name: w.name.clone(),
            pid: w.process.pid,
        }));
        rows.extend(a.waiting.iter().map(|s| RowId::Waiting {
            app: a.name.clone(),
            slot: s.slot,
        }));
    }
    rows
}

/// Where `selected` is among `rows`: the same row; else a worker of the same name (its
/// replacement); else its app; else the first row.
pub(super) fn selected_index(rows: &[RowId], selected: Option<&RowId>) -> Option<usize> {
    if rows.is_empty() {
        return None;
    }
    let Some(sel) = selected else {
        return Some(0);
    };
    let same_name = |r: &RowId| match (sel, r) {
        (RowId::Worker { name, .. }, RowId::Worker { name: n, .. }) => name == n,
        (RowId::Worker { name, .. }, RowId::Waiting { app, slot }) => {
            *name == format!("{app}.{slot}")
        }
        (RowId::Waiting { app, slot }, RowId::Worker { name, .. }) => {
            *name == format!("{app}.{slot}")
        }
        _ => false,
    };
    rows.iter()
        .position(|r| r == sel)
        .or_else(|| rows.iter().position(same_name))
        .or_else(|| {
            rows.iter()
                .position(|r| matches!(r, RowId::App(a) if a == sel.app()))
        })
        .or(Some(0))
}

/// How many workers an app runs, for `+` and `-`: the slots the report says, or (from a release
/// that does not say) the slots of its serving workers and waiting slots.
pub(super) fn instances(app: &AppStatus) -> usize {
    use crate::core::WorkerState;
    let mut slots: Vec<usize> = app
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Draining)
        .map(|w| w.slot)
        .chain(app.waiting.iter().map(|s| s.slot))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    app.instances.max(slots.len())
}

/// The worker count `delta` (+1 or -1) asks from `now`: refused below 0 and above the bound.
pub(super) fn scaled(app: &str, now: usize, delta: i8) -> Result<usize, String> {
    let max = crate::config::MAX_INSTANCES;
    match (delta, now) {
        (d, 0) if d < 0 => Err(format!("{app} runs no worker: nothing to scale down")),
        (d, n) if d > 0 && n >= max => Err(format!("{app}: at most {max} workers per app")),
        (d, n) if d < 0 => Ok(n - 1),
        (_, n) => Ok(n + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::monit::fixture;
    use crate::logs::record::{Level, Stream};

    #[test]
    fn the_selection_stays_on_its_worker_then_its_replacement_then_its_app() {
        let mut m = fixture::model();
        let old = RowId::Worker {
            app: "web".into(),
            name: "web.1".into(),
            pid: 4243,
        };
        m.ui.selected = Some(old.clone());
        m.set_status(fixture::status());
        assert_eq!(m.selected(), Some(old), "the same row");
        // The reload finished: old web.1 is gone, its replacement is the row of that name.
        let mut s = fixture::status();
        s.apps[0].workers.retain(|w| w.process.pid != 4243);
        m.set_status(s.clone());
        assert!(matches!(
            m.selected(),
            Some(RowId::Worker { pid: 4245, .. })
        ));
        assert_eq!(m.log_target().as_deref(), Some("web.1"));
        // Scaled down to one: the app.
        s.apps[0].workers.retain(|w| w.slot == 0);
        m.set_status(s.clone());
        assert_eq!(m.selected(), Some(RowId::App("web".into())));
        // The app removed: the first row.
        s.apps.remove(0);
        m.set_status(s);
        assert_eq!(m.selected(), Some(RowId::App("api".into())));
        // A waiting slot and the worker that replaces it are the same row to follow.
        let rows = fixture::model().rows();
        let waiting = RowId::Waiting {
            app: "api".into(),
            slot: 0,
        };
        let at = selected_index(&rows, Some(&waiting)).and_then(|i| rows.get(i));
        assert!(
            matches!(at, Some(RowId::Worker { pid: 5001, .. })),
            "{at:?}"
        );
        assert_eq!(selected_index(&[], Some(&waiting)), None);
    }

    #[test]
    fn the_log_pane_keeps_the_newest_lines_within_its_bound() {
        let mut pane = LogPane::default();
        let line = |i: usize| fixture::line("web.0", 0, Stream::Out, Level::Info, &i.to_string());
        pane.reset("web.0".into(), (0..10).map(line).collect());
        pane.push((10..LOG_LINES_KEPT + 300).map(line).collect(), 7);
        pane.push(
            (LOG_LINES_KEPT + 300..LOG_LINES_KEPT + 320)
                .map(line)
                .collect(),
            3,
        );
        assert_eq!(pane.lines.len(), LOG_LINES_KEPT);
        assert_eq!(pane.lost, 10);
        assert_eq!(pane.lines.front().map(|l| l.text.as_str()), Some("320"));
        let last = (LOG_LINES_KEPT + 319).to_string();
        assert_eq!(
            pane.lines.back().map(|l| l.text.as_str()),
            Some(last.as_str())
        );
        pane.reset("web.1".into(), vec![]);
        assert!(pane.lines.is_empty() && pane.lost == 0);
    }

    #[test]
    fn instances_are_the_slots_the_report_says_or_those_it_shows() {
        let s = fixture::status();
        assert_eq!(instances(&s.apps[0]), 2);
        let mut old = s.apps[1].clone();
        old.instances = 0; // a release before monit
        assert_eq!(instances(&old), 2, "api.0 and the waiting api.1");
        let mut web = s.apps[0].clone();
        web.instances = 0;
        assert_eq!(instances(&web), 2, "old and new web.1 are one slot");
    }
}
