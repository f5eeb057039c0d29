//! What a key does, pure: from the model and a key to the new [`Ui`] and the [`Action`] the edge
//! carries out. Up/down (j/k) move the selection, `r` reloads the selected row's app, `R` twice
//! restarts it, `+`/`-` scale it by one, `?` shows the help, `q`, Esc and Ctrl-C quit.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::{self, Confirm, Message, Model, RowId, Ui};

/// What the edge does after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing (the view is drawn again).
    None,
    /// Leave `monit`.
    Quit,
    /// `supervisor reload APP` (without waiting: the table shows the reload).
    Reload(String),
    /// `supervisor restart APP`.
    Restart(String),
    /// `supervisor scale APP N` with N the app's worker count now, plus `delta`.
    Scale {
        /// The app.
        app: String,
        /// +1 or -1.
        delta: i8,
    },
}

/// The new [`Ui`] and the action for `key`.
pub(super) fn on_key(m: &Model, key: KeyEvent) -> (Ui, Action) {
    let mut ui = m.ui.clone();
    if key.kind == KeyEventKind::Release {
        return (ui, Action::None);
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    // Any key but a second `R` cancels a restart waiting for it.
    let confirm = ui.confirm.take();
    let rows = m.rows();
    let at = model::selected_index(&rows, ui.selected.as_ref());
    let app = at.and_then(|i| rows.get(i)).map(|r| r.app().to_string());
    let action = match key.code {
        KeyCode::Char('c') if ctrl => Action::Quit,
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => {
            ui.selected = step(&rows, at, -1);
            Action::None
        }
        KeyCode::Down | KeyCode::Char('j') => {
            ui.selected = step(&rows, at, 1);
            Action::None
        }
        KeyCode::Home | KeyCode::Char('g') => {
            ui.selected = rows.first().cloned();
            Action::None
        }
        KeyCode::End | KeyCode::Char('G') => {
            ui.selected = rows.last().cloned();
            Action::None
        }
        KeyCode::Char('?') => {
            ui.help = !ui.help;
            Action::None
        }
        KeyCode::Char('r') => match app {
            Some(app) => {
                ui.message = Some(Message::info(format!("{app}: asking for a reload...")));
                Action::Reload(app)
            }
            None => no_app(&mut ui),
        },
        KeyCode::Char('R') => match (app, confirm) {
            (Some(app), Some(Confirm::Restart(asked))) if asked == app => {
                ui.message = Some(Message::info(format!("{app}: asking for a restart...")));
                Action::Restart(app)
            }
            (Some(app), _) => {
                ui.message = Some(Message::info(format!(
                    "press R again to restart every worker of {app} at once (r reloads, zero downtime); other keys cancel"
                )));
                ui.confirm = Some(Confirm::Restart(app));
                Action::None
            }
            (None, _) => no_app(&mut ui),
        },
        KeyCode::Char(c @ ('+' | '-')) => match app {
            Some(app) => {
                let delta = if c == '+' { 1 } else { -1 };
                let now = m.app(&app).map_or(0, model::instances);
                match model::scaled(&app, now, delta) {
                    Ok(to) => {
                        ui.message = Some(Message::info(format!(
                            "{app}: scaling to {to} worker(s)..."
                        )));
                        Action::Scale { app, delta }
                    }
                    Err(e) => {
                        ui.message = Some(Message::error(e));
                        Action::None
                    }
                }
            }
            None => no_app(&mut ui),
        },
        _ => Action::None,
    };
    (ui, action)
}

fn no_app(ui: &mut Ui) -> Action {
    ui.message = Some(Message::error("no app to act on"));
    Action::None
}

/// The row `by` rows from `at` (clamped to the first and last).
fn step(rows: &[RowId], at: Option<usize>, by: isize) -> Option<RowId> {
    let last = rows.len().checked_sub(1)?;
    let to = at.unwrap_or(0).saturating_add_signed(by).min(last);
    rows.get(to).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::monit::fixture;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    /// Presses `keys` in turn, keeping the [`Ui`]; the last action.
    fn press(m: &mut Model, keys: &[KeyEvent]) -> Action {
        let mut last = Action::None;
        for k in keys {
            let (ui, action) = on_key(m, *k);
            m.ui = ui;
            last = action;
        }
        last
    }

    fn selected_name(m: &Model) -> String {
        m.selected().map(|r| r.log_target()).unwrap_or_default()
    }

    #[test]
    fn arrows_and_jk_move_the_selection_within_the_rows() {
        let mut m = fixture::model();
        assert_eq!(selected_name(&m), "web", "the first row at first");
        press(&mut m, &[key(KeyCode::Down)]);
        assert_eq!(selected_name(&m), "web.0");
        press(&mut m, &[key(KeyCode::Char('j')), key(KeyCode::Char('j'))]);
        assert_eq!(
            selected_name(&m),
            "web.1",
            "old web.1, then its replacement"
        );
        assert!(matches!(
            m.selected(),
            Some(RowId::Worker { pid: 4245, .. })
        ));
        press(&mut m, &[key(KeyCode::Char('k'))]);
        assert!(matches!(
            m.selected(),
            Some(RowId::Worker { pid: 4243, .. })
        ));
        press(&mut m, &[key(KeyCode::Char('G'))]);
        assert_eq!(selected_name(&m), "api.1", "the waiting slot is last");
        press(&mut m, &[key(KeyCode::Down)]);
        assert_eq!(selected_name(&m), "api.1", "clamped at the end");
        press(&mut m, &[key(KeyCode::Home), key(KeyCode::Up)]);
        assert_eq!(selected_name(&m), "web", "clamped at the start");
    }

    #[test]
    fn actions_name_the_selected_rows_app() {
        let mut m = fixture::model();
        press(&mut m, &[key(KeyCode::Char('G'))]);
        assert_eq!(
            press(&mut m, &[key(KeyCode::Char('r'))]),
            Action::Reload("api".into())
        );
        assert_eq!(
            press(&mut m, &[key(KeyCode::Char('+'))]),
            Action::Scale {
                app: "api".into(),
                delta: 1
            }
        );
        assert_eq!(
            m.ui.message.as_ref().map(|s| s.text.as_str()),
            Some("api: scaling to 3 worker(s)...")
        );
        assert_eq!(
            press(&mut m, &[key(KeyCode::Char('-'))]),
            Action::Scale {
                app: "api".into(),
                delta: -1
            }
        );
    }

    #[test]
    fn restart_asks_for_a_second_r_and_any_other_key_cancels() {
        let mut m = fixture::model();
        assert_eq!(press(&mut m, &[key(KeyCode::Char('R'))]), Action::None);
        assert!(
            m.ui.message
                .as_ref()
                .is_some_and(|s| s.text.contains("press R again"))
        );
        assert_eq!(
            press(&mut m, &[key(KeyCode::Char('R'))]),
            Action::Restart("web".into())
        );
        assert_eq!(
            press(
                &mut m,
                &[
                    key(KeyCode::Char('R')),
                    key(KeyCode::Down),
                    key(KeyCode::Char('R'))
                ]
            ),
            Action::None,
            "cancelled by the arrow: asks again"
        );
        assert!(m.ui.confirm.is_some());
    }

    #[test]
    fn scaling_below_zero_is_refused_here() {
        let mut m = fixture::model();
        if let Some(app) = m.status.as_mut().and_then(|s| s.apps.get_mut(0)) {
            app.instances = 0;
            app.workers.clear();
        }
        assert_eq!(press(&mut m, &[key(KeyCode::Char('-'))]), Action::None);
        let msg = m.ui.message.clone().unwrap();
        assert!(
            msg.error && msg.text.contains("nothing to scale down"),
            "{msg:?}"
        );
        assert_eq!(
            model::scaled("web", 1024, 1).unwrap_err(),
            "web: at most 1024 workers per app"
        );
        assert_eq!(model::scaled("web", 2, -1), Ok(1));
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_and_question_mark_toggles_help() {
        let mut m = fixture::model();
        for k in [
            key(KeyCode::Char('q')),
            key(KeyCode::Esc),
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(on_key(&m, k).1, Action::Quit, "{k:?}");
        }
        assert_eq!(on_key(&m, key(KeyCode::Char('c'))).1, Action::None);
        press(&mut m, &[key(KeyCode::Char('?'))]);
        assert!(m.ui.help);
        press(&mut m, &[key(KeyCode::Char('?'))]);
        assert!(!m.ui.help);
    }

    #[test]
    fn no_app_no_action() {
        let mut m = Model::default();
        assert_eq!(
            press(&mut m, &[key(KeyCode::Down), key(KeyCode::Char('r'))]),
            Action::None
        );
        assert!(m.ui.message.is_some_and(|s| s.error));
    }
}
