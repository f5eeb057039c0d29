//! The supervisor's own log in the background (`start -d`): `supervisor.log`, rotated like the
//! apps' files ([`super::rotate`], [`super::writer::rotate_file`]) as the `[supervisor]` keys
//! `log_max_size`, `log_max_age`, `log_retain` and `log_compress` say, and opened again by
//! `reopen-logs` and `SIGUSR1` ([`super::Logs::reopen`]). Its lines are the supervisor's own
//! log events, each with its timestamp, written whole by the thread that logs them
//! ([`OwnWriter`], the tracing writer): an event is never split between two files, and the
//! process's stdout and stderr follow the current file (a panic message lands there too). In
//! the foreground nothing is installed: the events go to stderr as they are.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use super::lock;
use super::rotate::Rotation;
use super::writer::rotate_file;

/// Points stdout and stderr at a file (`sys::detach::redirect_output`, handed in: this module
/// makes no system call of its own).
pub type Redirect = fn(&File) -> std::io::Result<()>;

/// The installed log (`None` in the foreground).
static OWN: Mutex<Option<OwnLog>> = Mutex::new(None);

/// The supervisor's own log file.
#[derive(Debug)]
struct OwnLog {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
    /// Since when it has been written (its creation, or its last rotation).
    since: SystemTime,
    /// Points stdout and stderr at each file opened (`None` in unit tests).
    redirect: Option<Redirect>,
    /// A rotation or an open failed already (said once).
    failed: bool,
}

impl OwnLog {
    fn open(
        path: &Path,
        rotation: Rotation,
        redirect: Option<Redirect>,
    ) -> std::io::Result<OwnLog> {
        let (file, size, since) = open_file(path, redirect)?;
        Ok(OwnLog {
            path: path.to_path_buf(),
            rotation,
            file,
            size,
            since,
            redirect,
            failed: false,
        })
    }

    /// Writes one event, rotating the file first when it is due by age, after when it is due.
    fn write(&mut self, buf: &[u8], now: SystemTime) -> std::io::Result<()> {
        if self.rotation.due(self.size, self.since, now) {
            self.rotate(now);
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        if self.rotation.due(self.size, self.since, now) {
            self.rotate(now);
        }
        Ok(())
    }

    /// Renames the file to its rotated name and opens a new one (where stdout and stderr then
    /// point). A failure is written to the file itself, once (a log event would come back
    /// here).
    fn rotate(&mut self, now: SystemTime) {
        let result = rotate_file(&self.path, self.rotation, now).and_then(|()| self.reopen_file());
        if let Err(e) = result {
            // Not due again before another `max_size` bytes or `max_age`.
            self.size = 0;
            self.since = now;
            if !self.failed {
                self.failed = true;
                let _ = writeln!(
                    self.file,
                    "cannot rotate {}: {e} (written on as it is)",
                    self.path.display()
                );
            }
        }
    }

    /// Opens the file at its path again (created if it was moved away).
    fn reopen_file(&mut self) -> std::io::Result<()> {
        let (file, size, since) = open_file(&self.path, self.redirect)?;
        self.file = file;
        self.size = size;
        self.since = since;
        Ok(())
    }
}

/// Opens `path` for appending (creating it and its directory) and `redirect`s stdout and stderr
/// to it; its size and since when it has been written.
fn open_file(path: &Path, redirect: Option<Redirect>) -> std::io::Result<(File, u64, SystemTime)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    if let Some(redirect) = redirect {
        redirect(&file)?;
    }
    let meta = file.metadata()?;
    let since = match meta.len() {
        0 => SystemTime::now(),
        _ => meta
            .created()
            .or_else(|_| meta.modified())
            .unwrap_or_else(|_| SystemTime::now()),
    };
    Ok((file, meta.len(), since))
}

/// From now on the supervisor's log events go to `path` (appended), rotated by `rotation`, and
/// so do its stdout and stderr (through `redirect`).
pub fn install(path: &Path, rotation: Rotation, redirect: Redirect) -> std::io::Result<()> {
    let log = OwnLog::open(path, rotation, Some(redirect))?;
    *lock(&OWN) = Some(log);
    Ok(())
}

/// The rotation of a reloaded config (nothing in the foreground).
pub fn set_rotation(rotation: Rotation) {
    if let Some(log) = lock(&OWN).as_mut() {
        log.rotation = rotation;
    }
}

/// Opens the file again (after an external logrotate moved it); whether one is installed.
pub fn reopen() -> bool {
    let mut own = lock(&OWN);
    let Some(log) = own.as_mut() else {
        return false;
    };
    if let Err(e) = log.reopen_file() {
        let _ = writeln!(
            log.file,
            "cannot open {} again: {e} (written on where it was)",
            log.path.display()
        );
    }
    true
}

/// The writer of the supervisor's log events: to the installed file, else to stderr. Each
/// event is one `write` (tracing formats it whole first).
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnWriter;

impl Write for OwnWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut own = lock(&OWN);
        match own.as_mut() {
            Some(log) => log.write(buf, SystemTime::now())?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "own_tests.rs"]
mod tests;
