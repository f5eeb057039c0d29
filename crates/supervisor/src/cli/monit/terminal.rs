//! The terminal as `monit` takes it: raw mode, the alternate screen, the cursor hidden; and given
//! back on every way out: the guard's drop (a return, an error), and a panic hook that restores
//! it before the panic message is printed (else the message would be lost with the screen).

use std::io::{self, Write};
use std::sync::Once;

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{
    Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

/// While it lives, the terminal is `monit`'s.
#[derive(Debug)]
pub(super) struct Guard {
    _taken: (),
}

/// Takes the terminal.
pub(super) fn enter() -> io::Result<Guard> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
    enable_raw_mode()?;
    // From here on the drop gives it back, whatever fails next.
    let guard = Guard { _taken: () };
    // Cleared here: ratatui's own clear asks the terminal where its cursor is, which a terminal
    // that does not answer turns into an error after a delay.
    execute!(
        io::stdout(),
        EnterAlternateScreen,
        Clear(ClearType::All),
        Hide
    )?;
    Ok(guard)
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back: main screen, cursor, cooked mode (each step tried even if one
/// fails; twice is harmless).
fn restore() {
    let mut out = io::stdout();
    let _ = execute!(out, Show, LeaveAlternateScreen);
    let _ = out.flush();
    let _ = disable_raw_mode();
}
