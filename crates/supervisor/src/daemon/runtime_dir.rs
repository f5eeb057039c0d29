//! The supervisor's private runtime directory: the workers' notify sockets and the files the
//! runtimes need (the Node preload), mode 0700, in the user's private runtime directory
//! ([`crate::rundir`]), removed when the supervisor exits; kept across an
//! in-place upgrade (the new binary adopts it: the notify sockets in it are in use).
//!
//! Each directory holds a `lock` file that its supervisor keeps locked (`flock`) for as long as
//! it lives, across an upgrade's `execve` too (the descriptor is handed over). Directories left
//! by a supervisor that was killed are removed at the next start, by this rule only: a
//! `supervisor-*` directory of this user whose lock can be taken belongs to a dead supervisor.
//! Nothing else is deleted: not a directory without a lock file (another program's, or an older
//! release's), not one whose lock is held (a live supervisor, whatever pid namespace it runs in:
//! a pid is no proof across namespaces sharing the directory), not another user's.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::StartupError;
use crate::config::RunAs;
use crate::runtimes::RuntimeFiles;

/// The lock file in a runtime directory.
const LOCK: &str = "lock";

/// Private directory for the workers' notify sockets and the runtime files (the Node preload);
/// removed on drop.
#[derive(Debug)]
pub(super) struct RuntimeDir {
    pub(super) path: PathBuf,
    pub(super) files: RuntimeFiles,
    /// The locked `lock` file: the proof, for other supervisors, that this one is alive.
    lock: File,
    /// Whether it was opened to the workers of other users ([`RuntimeDir::open_to`]).
    shared: bool,
}

impl RuntimeDir {
    pub(super) fn create() -> Result<RuntimeDir, StartupError> {
        let parent = runtime_parent()?;
        let path = parent.join(format!("supervisor-{}", std::process::id()));
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| StartupError::RuntimeDir { path, cause }
        };
        if let Some(base) = path.parent() {
            remove_stale_runtime_dirs(base);
        }
        let (path, lock) = claim(&path).map_err(err(&path))?;
        let files = RuntimeFiles::install(&path).map_err(err(&path))?;
        Ok(RuntimeDir {
            path,
            files,
            lock,
            shared: false,
        })
    }

    /// The descriptor of the locked `lock` file, handed over by an upgrade so that the lock is
    /// never released while the supervisor lives.
    pub(super) fn lock_fd(&self) -> std::os::fd::RawFd {
        self.lock.as_raw_fd()
    }
}

/// The user's private runtime directory, created if need be (never a shared one).
fn runtime_parent() -> Result<PathBuf, StartupError> {
    let none = || std::io::Error::other("XDG_RUNTIME_DIR and HOME are unset");
    let parent = crate::rundir::base().ok_or_else(|| StartupError::RuntimeDir {
        path: PathBuf::from("(no private runtime directory)"),
        cause: none(),
    })?;
    crate::rundir::ensure_private(&parent).map_err(|e| StartupError::RuntimeDir {
        path: parent.clone(),
        cause: std::io::Error::other(e),
    })?;
    Ok(parent)
}

/// Creates `path` (mode 0700) with its lock held, or, when a live supervisor of another pid
/// namespace has that name, `path.1`, `path.2`, ...
fn claim(path: &Path) -> std::io::Result<(PathBuf, File)> {
    use std::os::unix::fs::DirBuilderExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = None;
    for n in 0..64 {
        let candidate = match n {
            0 => path.to_path_buf(),
            n => path.with_file_name(format!("{name}.{n}")),
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => {
                let lock = lock(&candidate)?;
                return Ok((candidate, lock));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
}

/// Creates `dir/lock` already locked: locked under a temporary name, then renamed, so that no
/// other supervisor ever sees it unlocked.
fn lock(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let fresh = dir.join("lock.new");
    let _ = std::fs::remove_file(&fresh);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&fresh)?;
    if !try_flock(&file)? {
        return Err(std::io::Error::other(format!(
            "{} is locked by another process",
            fresh.display()
        )));
    }
    std::fs::rename(&fresh, dir.join(LOCK))?;
    Ok(file)
}

/// Takes the exclusive lock on `file` without waiting: `Ok(false)` when another open file
/// holds it.
fn try_flock(file: &File) -> std::io::Result<bool> {
    crate::sys::lock::try_lock(file, crate::sys::lock::Lock::Exclusive)
}

/// Removes the runtime directories in `base` of supervisors of this user that died without
/// cleaning up (`SIGKILL`): a `supervisor-*` directory (not a link) owned by this user, holding
/// a `lock` file of this user that nobody holds. The lock is taken before and held during the
/// removal, so two starting supervisors never race for the same directory.
pub(super) fn remove_stale_runtime_dirs(base: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let dir = e.path();
        let named = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("supervisor-"));
        let ours = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !(named && ours) {
            continue;
        }
        let Ok(lock) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(LOCK))
        else {
            continue; // no lock file: not provably a supervisor's
        };
        let lock_ours = lock.metadata().is_ok_and(|m| m.is_file() && m.uid() == me);
        if lock_ours && try_flock(&lock).unwrap_or(false) {
            tracing::info!(dir = %dir.display(), "removing the runtime directory of a supervisor that is gone");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

impl RuntimeDir {
    /// The directory of the process that handed over (its notify sockets are in use): kept,
    /// with the runtime files written again by this binary, and its lock: the descriptor the
    /// previous binary handed over, or (from a release without one) a lock taken now.
    pub(super) fn adopt(path: PathBuf) -> Result<RuntimeDir, StartupError> {
        let err = |cause| StartupError::RuntimeDir {
            path: path.clone(),
            cause,
        };
        let lock = match inherited_lock(&path.join(LOCK)) {
            Some(file) => file,
            None => lock(&path).map_err(err)?,
        };
        let files = RuntimeFiles::install(&path).map_err(err)?;
        Ok(RuntimeDir {
            path,
            files,
            lock,
            shared: false,
        })
    }
}

/// The descriptor of this process open on `lock` (inherited through `execve`), close-on-exec
/// again.
fn inherited_lock(lock: &Path) -> Option<File> {
    use std::os::fd::FromRawFd;
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let fd = entries.flatten().find_map(|e| {
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        (std::fs::read_link(e.path()).ok()? == lock).then_some(fd)
    })?;
    let _ = crate::upgrade::os::set_cloexec(fd, true);
    // SAFETY: an open descriptor of this process that nothing else owns: the previous image
    // handed it over for the runtime directory's lock, and only this function takes it.
    Some(unsafe { File::from_raw_fd(fd) })
}

impl RuntimeDir {
    /// Lets a worker that runs as `user` reach what it needs here: its notify socket (made its
    /// own by [`super::process`]) and the Node preload. The directory, and its parent when that
    /// is this supervisor's own, become traversable by anyone (mode 0711: nobody may list them
    /// or write to them; the job secret and the lock stay 0600, every notify socket 0600). An
    /// ancestor that is not the supervisor's and that `user` cannot traverse (a login session's
    /// `/run/user/0`, mode 0700) is an error naming it.
    pub(super) fn open_to(&mut self, user: &RunAs) -> Result<(), String> {
        if !self.shared {
            let me = crate::rundir::euid();
            let mut dirs = vec![self.path.clone()];
            dirs.extend(self.path.parent().map(Path::to_path_buf));
            for dir in dirs {
                if let Ok(m) = std::fs::symlink_metadata(&dir)
                    && m.is_dir()
                    && m.uid() == me
                {
                    let mode = (m.mode() & 0o7700) | 0o011;
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
                }
            }
            let preload = self.path.join("node-preload.cjs");
            let _ = std::fs::set_permissions(&preload, std::fs::Permissions::from_mode(0o644));
            self.shared = true;
        }
        match crate::users::blocked(&self.path, user.uid, &user.groups) {
            None => Ok(()),
            Some(blocked) => Err(format!(
                "the supervisor's runtime directory {} is out of reach of {}: {blocked} does \
                 not let it through, so it cannot use NOTIFY_SOCKET or the Node preload; run the \
                 supervisor without XDG_RUNTIME_DIR (root's runtime directory is then \
                 /run/supervisor)",
                self.path.display(),
                user.describe(),
            )),
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // Removed while still locked (the lock is released after, when `lock` is dropped).
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    /// A dead supervisor's directory: a lock file nobody holds.
    fn dead(base: &Path, name: &str) -> PathBuf {
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(LOCK), "").unwrap();
        std::fs::write(dir.join("notify-1.sock"), "").unwrap();
        dir
    }

    #[test]
    fn only_directories_whose_lock_is_free_are_removed() {
        let base = tempfile::tempdir().unwrap();
        let gone = dead(base.path(), "supervisor-4242");
        // A live supervisor's, whatever its pid (another pid namespace: not visible here).
        let (live, held) = claim(&base.path().join("supervisor-999999999")).unwrap();
        // No lock file: another program's, or an older release's, even with a dead pid.
        let unknown = base.path().join("supervisor-999999998");
        std::fs::create_dir(&unknown).unwrap();
        // Not ours to look at: not named so, a file, a link to a dead one.
        let other = dead(base.path(), "other-1");
        let file = base.path().join("supervisor-7");
        std::fs::write(&file, "").unwrap();
        let target = dead(base.path(), "elsewhere");
        let link = base.path().join("supervisor-8");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        remove_stale_runtime_dirs(base.path());
        assert!(!gone.exists(), "a dead supervisor's directory is removed");
        assert!(live.join(LOCK).exists(), "a live one is kept");
        assert!(unknown.exists() && other.exists() && file.exists());
        assert!(target.join(LOCK).exists() && link.exists());
        drop(held);
        remove_stale_runtime_dirs(base.path());
        assert!(!live.exists(), "once its supervisor is gone, it goes too");
    }

    #[test]
    fn a_name_taken_by_a_live_supervisor_gets_another() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("supervisor-5");
        let (first, _held) = claim(&path).unwrap();
        assert_eq!(first, path);
        let (second, _held2) = claim(&path).unwrap();
        assert_eq!(second, base.path().join("supervisor-5.1"));
        // The lock file is there, locked, with no temporary left.
        assert!(second.join(LOCK).is_file() && !second.join("lock.new").exists());
        let again = File::open(second.join(LOCK)).unwrap();
        assert!(!try_flock(&again).unwrap(), "held by the claimant");
    }

    #[test]
    fn opened_to_another_user_it_is_traversable_and_nothing_more() {
        let base = tempfile::tempdir().unwrap();
        let parent = base.path().join("supervisor");
        crate::rundir::ensure_private(&parent).unwrap();
        let (path, lock) = claim(&parent.join("supervisor-9")).unwrap();
        let files = RuntimeFiles::install(&path).unwrap();
        let mut dir = RuntimeDir {
            path: path.clone(),
            files,
            lock,
            shared: false,
        };
        let nobody = RunAs::nobody(true);
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // The temporary directory itself is private (0700): named as the obstacle.
        let e = dir.open_to(&nobody).unwrap_err();
        assert!(
            e.contains(&format!("{} (mode 700", base.path().display()))
                && e.contains("nobody (uid 65534)"),
            "{e}"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o711);
        assert_eq!(mode(&parent), 0o711);
        assert_eq!(
            mode(&path.join("job-secret")),
            0o600,
            "the secret stays private"
        );
        assert_eq!(mode(&path.join("node-preload.cjs")), 0o644);
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        if crate::users::blocked(base.path(), nobody.uid, &nobody.groups).is_none() {
            dir.open_to(&nobody).unwrap();
        }
        crate::rundir::ensure_private(&parent).unwrap();
    }

    #[test]
    fn an_adopted_directory_keeps_its_lock() {
        let base = tempfile::tempdir().unwrap();
        let (path, held) = claim(&base.path().join("supervisor-6")).unwrap();
        // As after an upgrade's execve: this process has the locked descriptor.
        let adopted = RuntimeDir::adopt(path.clone()).unwrap();
        assert_eq!(adopted.lock_fd(), held.as_raw_fd());
        std::mem::forget(held); // owned by `adopted` now
        remove_stale_runtime_dirs(base.path());
        assert!(path.join(LOCK).exists(), "still locked: kept");
        drop(adopted);
        assert!(!path.exists(), "removed on drop");
    }
}
