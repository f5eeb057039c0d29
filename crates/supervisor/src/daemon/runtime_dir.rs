//! The supervisor's private runtime directory: the workers' notify sockets and the files the
//! runtimes need (the Node preload), mode 0700, removed when the supervisor exits; kept across an
//! in-place upgrade (the new binary adopts it: the notify sockets in it are in use). Directories
//! left by a supervisor that was killed are removed at the next start.

use std::path::PathBuf;

use super::StartupError;
use crate::runtimes::RuntimeFiles;

/// Private directory for the workers' notify sockets and the runtime files (the Node preload);
/// removed on drop.
#[derive(Debug)]
pub(super) struct RuntimeDir {
    pub(super) path: PathBuf,
    pub(super) files: RuntimeFiles,
}

impl RuntimeDir {
    pub(super) fn create() -> Result<RuntimeDir, StartupError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("supervisor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path); // left by a dead process that had our pid
        remove_stale_runtime_dirs();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .and_then(|()| RuntimeFiles::install(&path))
            .map(|files| RuntimeDir {
                path: path.clone(),
                files,
            })
            .map_err(|cause| StartupError::RuntimeDir { path, cause })
    }
}

/// Removes the runtime directories of supervisors that died without cleaning up (`SIGKILL`):
/// `supervisor-<pid>` in the temp dir, owned by this user, whose pid is not a live process.
fn remove_stale_runtime_dirs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("supervisor-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl RuntimeDir {
    /// The directory of the process that handed over (its notify sockets are in use): kept,
    /// with the runtime files written again by this binary.
    pub(super) fn adopt(path: PathBuf) -> Result<RuntimeDir, StartupError> {
        RuntimeFiles::install(&path)
            .map(|files| RuntimeDir {
                path: path.clone(),
                files,
            })
            .map_err(|cause| StartupError::RuntimeDir { path, cause })
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
