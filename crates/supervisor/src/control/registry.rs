//! The running supervisors of a user, as `supervisor ls` and the client commands find them:
//! each supervisor keeps `NAME.json` in its private runtime directory
//! ([`crate::rundir`]) with its pid, config and control socket, locked (`flock`) for as
//! long as it runs and removed when it exits. A file nobody holds the lock of is left by a
//! supervisor that was killed: readers skip and remove it, whatever pid it names (a pid may
//! have been reused since). The lock also keeps two supervisors from running under one name.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::lock::{Lock, try_lock};

/// One running supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name (`[supervisor] name`).
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// Its config file (absolute).
    pub config: PathBuf,
    /// Its control socket (absolute).
    pub control_socket: PathBuf,
    /// When it was first started (Unix seconds; kept by in-place upgrades).
    pub started_unix: f64,
}

/// The supervisor could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another live supervisor holds the name: the one of this config file (started twice), or
    /// another file's that has the same name.
    #[error("{}", taken_message(.held, .ours))]
    Taken {
        /// The running one.
        held: Box<Entry>,
        /// The config file of the one refused.
        ours: PathBuf,
    },
    /// The file could not be written.
    #[error("cannot list the supervisor in {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        cause: std::io::Error,
    },
}

fn taken_message(held: &Entry, ours: &Path) -> String {
    if held.config == ours {
        format!(
            "another supervisor is running with this config ({:?}, pid {}): stop it with \
             `supervisor stop -c {}`, or apply a change with `supervisor reload -c {}`",
            held.name,
            held.pid,
            ours.display(),
            ours.display()
        )
    } else {
        format!(
            "another supervisor named {:?} is running (pid {}, config {}): give this one its own \
             `[supervisor] name`, or stop that one first",
            held.name,
            held.pid,
            held.config.display()
        )
    }
}

/// This supervisor's entry, locked while it lives; removed when dropped.
#[derive(Debug)]
pub struct Registered {
    path: PathBuf,
    _file: File,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The entry file of `name` in `dir`.
pub fn entry_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Lists `entry` in `dir` (a private directory) and holds its lock; refused while another live
/// supervisor holds the name.
pub fn register(dir: &Path, entry: &Entry) -> Result<Registered, RegistryError> {
    let path = entry_path(dir, &entry.name);
    let io = |cause| RegistryError::Io {
        path: path.clone(),
        cause,
    };
    for _ in 0..5 {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        if !try_lock(&file, Lock::Exclusive).map_err(io)? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(match serde_json::from_str::<Entry>(&text) {
                Ok(held) => RegistryError::Taken {
                    held: Box::new(held),
                    ours: entry.config.clone(),
                },
                Err(_) => io(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!("another supervisor named {:?} is starting", entry.name),
                )),
            });
        }
        // A reader may have removed a file it found unlocked between our open and our lock:
        // ours must still be the one at the path.
        let same = match (file.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            continue;
        }
        let json = serde_json::to_vec_pretty(entry).map_err(|e| io(std::io::Error::other(e)))?;
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(&json).map_err(io)?;
        return Ok(Registered { path, _file: file });
    }
    Err(io(std::io::Error::other(
        "the entry file kept being replaced",
    )))
}

/// Every live supervisor listed in `dirs`, by name; files of dead ones are removed.
pub fn list(dirs: &[PathBuf]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Some(entry) = read_live(&path)
                && !out
                    .iter()
                    .any(|o| o.name == entry.name && o.pid == entry.pid)
            {
                out.push(entry);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The live supervisor named `name` in `dirs`, if one runs.
pub fn find(dirs: &[PathBuf], name: &str) -> Option<Entry> {
    dirs.iter().find_map(|d| read_live(&entry_path(d, name)))
}

/// The entry at `path` if its supervisor holds its lock; a file nobody holds is removed.
fn read_live(path: &Path) -> Option<Entry> {
    let me = crate::rundir::euid();
    let mut file = std::fs::OpenOptions::new().read(true).open(path).ok()?;
    if file.metadata().ok()?.uid() != me {
        return None;
    }
    if try_lock(&file, Lock::Shared).ok()? {
        // Nobody holds it: left by a supervisor that was killed.
        let _ = std::fs::remove_file(path);
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, pid: i32) -> Entry {
        Entry {
            name: name.into(),
            pid,
            config: format!("/srv/{name}.toml").into(),
            control_socket: format!("/run/x/{name}.sock").into(),
            started_unix: 1.0,
        }
    }

    #[test]
    fn a_listed_supervisor_is_found_holds_its_name_and_goes_with_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let shop = register(dir.path(), &entry("shop", 10)).unwrap();
        let blog = register(dir.path(), &entry("blog", 11)).unwrap();
        let names: Vec<String> = list(&dirs).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["blog", "shop"]);
        assert_eq!(find(&dirs, "shop").unwrap().pid, 10);
        // The same file started twice: how to stop or reload the running one.
        let e = register(dir.path(), &entry("shop", 12))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another supervisor is running with this config (\"shop\", pid 10)")
                && e.contains("`supervisor stop -c /srv/shop.toml`"),
            "{e}"
        );
        // Another file with the same name: which one holds it.
        let other = Entry {
            config: "/srv/other.toml".into(),
            ..entry("shop", 13)
        };
        let e = register(dir.path(), &other).unwrap_err().to_string();
        assert!(
            e.contains(
                "another supervisor named \"shop\" is running (pid 10, config /srv/shop.toml)"
            ),
            "{e}"
        );
        drop(shop);
        assert!(find(&dirs, "shop").is_none());
        assert!(!entry_path(dir.path(), "shop").exists());
        drop(blog);
        assert!(list(&dirs).is_empty());
    }

    #[test]
    fn the_entry_of_a_killed_supervisor_is_skipped_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Written, and the lock gone with its process (here: the file closed, not removed).
        let path = entry_path(dir.path(), "old");
        std::fs::write(&path, serde_json::to_string(&entry("old", 1)).unwrap()).unwrap();
        assert!(list(&[dir.path().to_path_buf()]).is_empty());
        assert!(!path.exists());
        // And its name is free again.
        let again = register(dir.path(), &entry("old", 2)).unwrap();
        assert_eq!(find(&[dir.path().to_path_buf()], "old").unwrap().pid, 2);
        drop(again);
    }
}
