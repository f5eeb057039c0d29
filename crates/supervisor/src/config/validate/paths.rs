//! What the file system must allow for `start` to work, checked when the file is read (so that
//! `check` and `start` refuse the same things with the same message): a directory `start` will
//! create files in, the cron backend's state directory, and a script's `#!` interpreter.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::super::raw::{RawCron, Spanned};
use super::{ConfigError, Validator};

/// Entries that show a directory is a cron state directory already (what the local backend
/// creates in it first).
const STATE_MARKERS: &[&str] = &["requests", "jobs.json", "jobs.lock"];

impl Validator<'_> {
    /// The local cron backend's directory (`cron.state_dir`, or its default beside the control
    /// socket), when the backend is one: see [`state_dir_problem`].
    pub(super) fn check_state_dir(&self, c: &RawCron, url: &str) -> Result<(), ConfigError> {
        let Some(dir) = url.strip_prefix("file://") else {
            return Ok(());
        };
        match state_dir_problem(Path::new(dir)) {
            None => Ok(()),
            Some(problem) => Err(self.err_at(
                c.state_dir.as_ref().map(Spanned::span),
                "cron.state_dir",
                problem,
            )),
        }
    }

    /// The `#!` interpreter of the script `program` exists (see [`missing_interpreter`]);
    /// `path_env` is the `PATH` the program runs with.
    pub(super) fn interpreter(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        program: &Path,
        path_env: Option<&str>,
    ) -> Result<(), ConfigError> {
        match missing_interpreter(program, path_env.map(OsStr::new)) {
            None => Ok(()),
            Some(problem) => Err(self.err_at(span, key, problem)),
        }
    }
}

/// Why `dir` cannot hold the local cron backend's lock files, if it cannot. The rule: the
/// directory must be one the supervisor may own. Missing, it is created (mode 0700), so its
/// nearest existing ancestor must be a directory this user may create it in; existing, it must
/// be a directory of this user that nobody else may write to (cronlock's own rule), and either
/// empty or a cron state directory already: `/`, `/etc` or a home directory are never filled
/// with lock files.
pub(crate) fn state_dir_problem(dir: &Path) -> Option<String> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return creatable_dir(dir).err();
        }
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    };
    if !meta.is_dir() {
        return Some(format!("{} is not a directory", dir.display()));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return Some(format!("cannot read directory {}: {e}", dir.display())),
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .take(64)
        .collect();
    if !names.is_empty() && !names.iter().any(|n| STATE_MARKERS.contains(&n.as_str())) {
        let mut shown: Vec<&str> = names.iter().map(String::as_str).take(3).collect();
        shown.sort_unstable();
        return Some(format!(
            "{} already holds other files ({}, ...) and is not a cron state directory: give the \
             lock files a directory of their own (created with mode 0700 when missing), e.g. {}",
            dir.display(),
            shown.join(", "),
            suggestion(dir).display()
        ));
    }
    cronlock::backend::local::check_state_dir(dir)
        .err()
        .map(|e| e.to_string())
}

/// A directory of its own inside `dir`, for the message.
fn suggestion(dir: &Path) -> PathBuf {
    if dir == Path::new("/") {
        PathBuf::from("/var/lib/supervisor/cron")
    } else {
        dir.join("supervisor-cron")
    }
}

/// Whether `dir` exists as a directory this user may create files in, or else can be created:
/// its nearest existing ancestor is such a directory. The error says which directory is not.
pub(crate) fn creatable_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let existing = dir
        .ancestors()
        .find(|d| !d.as_os_str().is_empty() && d.exists())
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    let Ok(c_dir) = std::ffi::CString::new(existing.as_os_str().as_bytes()) else {
        return Err(format!("{} contains a NUL byte", existing.display()));
    };
    // SAFETY: access(2) with a valid NUL-terminated path; it only reads it.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let os = std::io::Error::last_os_error();
        return Err(format!(
            "directory {} is not writable: {os}",
            existing.display()
        ));
    }
    Ok(())
}

/// Why the script `program` cannot be executed for want of its interpreter, if so: its `#!`
/// line names a file that does not exist or is not executable, or runs `env` with a program
/// found nowhere in `path_env` (the `PATH` the worker gets; the supervisor's own when `None`).
/// `execve` says only "No such file or directory" then, as if the script itself were missing.
pub(crate) fn missing_interpreter(program: &Path, path_env: Option<&OsStr>) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program)
        .and_then(|f| f.take(head.len() as u64).read(&mut head))
        .ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let interpreter = Path::new(words.next()?);
    let shown = format!("#!{}", line.trim());
    if !is_executable(interpreter) {
        return Some(format!(
            "{}: its interpreter {} (from its `{shown}` line) is not found or not executable",
            program.display(),
            interpreter.display()
        ));
    }
    if interpreter.file_name() != Some(OsStr::new("env")) {
        return None;
    }
    // `#!/usr/bin/env [-S] [-i] [NAME=value ...] program [args]`: the program is looked up in
    // PATH (a `-u NAME` takes its argument too).
    let mut words = words.peekable();
    let name = loop {
        let w = words.next()?;
        if w == "-u" || w == "--unset" {
            words.next();
        } else if !(w.starts_with('-') || w.contains('=')) {
            break w;
        }
    };
    let found = if name.contains('/') {
        is_executable(Path::new(name))
    } else {
        let path = path_env
            .map(OsStr::to_os_string)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        std::env::split_paths(&path).any(|d| is_executable(&d.join(name)))
    };
    (!found).then(|| {
        format!(
            "{}: its interpreter {name} (from its `{shown}` line) is not found in PATH",
            program.display()
        )
    })
}

/// A regular file (after symlinks) with an execute bit.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "a.py", "#!/usr/bin/python9\nprint(1)\n");
        let e = missing_interpreter(&s, None).unwrap();
        assert!(
            e.contains("/usr/bin/python9") && e.contains("#!/usr/bin/python9"),
            "{e}"
        );
        let s = script(d.path(), "b", "#!/usr/bin/env -S no-such-runtime --flag\n");
        let e = missing_interpreter(&s, None).unwrap();
        assert!(
            e.contains("no-such-runtime") && e.contains("not found in PATH"),
            "{e}"
        );
        // Found through the PATH the worker gets.
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        script(&bin, "no-such-runtime", "");
        assert_eq!(missing_interpreter(&s, Some(bin.as_os_str())), None);
    }

    #[test]
    fn a_present_interpreter_or_a_binary_is_fine() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "a.sh", "#!/bin/sh\necho\n");
        assert_eq!(missing_interpreter(&s, None), None);
        let s = script(d.path(), "b.sh", "#! /usr/bin/env  FOO=1 sh -e\n");
        assert_eq!(missing_interpreter(&s, None), None);
        assert_eq!(missing_interpreter(Path::new("/bin/sh"), None), None);
        assert_eq!(missing_interpreter(Path::new("/no/such/file"), None), None);
    }

    #[test]
    fn a_state_dir_must_be_one_of_its_own() {
        let root = state_dir_problem(Path::new("/")).unwrap();
        assert!(root.contains("already holds other files"), "{root}");
        assert!(root.contains("/var/lib/supervisor/cron"), "{root}");
        let file = state_dir_problem(Path::new("/etc/passwd")).unwrap();
        assert_eq!(file, "/etc/passwd is not a directory");
        let d = tempfile::tempdir().unwrap();
        // Missing (created later), empty, or a state directory already: fine.
        assert_eq!(state_dir_problem(&d.path().join("a/b")), None);
        let own = d.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(state_dir_problem(&own), None);
        std::fs::create_dir(own.join("requests")).unwrap();
        std::fs::write(own.join("report.lock"), "").unwrap();
        assert_eq!(state_dir_problem(&own), None);
        // Others may write into it: cronlock's own refusal.
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o777)).unwrap();
        let shared = state_dir_problem(&own).unwrap();
        assert!(shared.contains("writable by group or others"), "{shared}");
        // Under a file: cannot be created.
        let f = d.path().join("f");
        std::fs::write(&f, "").unwrap();
        let under = state_dir_problem(&f.join("cron")).unwrap();
        assert!(under.contains("is not a directory"), "{under}");
    }
}
