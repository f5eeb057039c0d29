//! Resolving a `command` (an app's or a `[[job]]`'s) to an executable file, and telling whether
//! that program runs Node: what `runtime = "node"` accepts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::super::model::looks_like_node;
use super::{ConfigError, Validator, resolve};

impl Validator<'_> {
    /// Resolves the `command` of the table at `table` (`app[0]`, `job[1]`): a path with a slash
    /// is taken relative to the config file; a bare name is looked up next to the supervisor's
    /// own executable first, then in `PATH`.
    pub(super) fn program(&self, table: &str, command: &str) -> Result<PathBuf, ConfigError> {
        let key = format!("{table}.command");
        let key = key.as_str();
        if command.is_empty() {
            return Err(self.err(key, "is empty"));
        }
        let candidates: Vec<PathBuf> = if command.contains('/') {
            vec![resolve(&self.base, Path::new(command))]
        } else {
            let mut dirs: Vec<PathBuf> = Vec::new();
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
            {
                dirs.push(dir);
            }
            dirs.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
            dirs.into_iter().map(|d| d.join(command)).collect()
        };
        for c in &candidates {
            if let Ok(meta) = std::fs::metadata(c)
                && meta.is_file()
                && meta.permissions().mode() & 0o111 != 0
            {
                return std::path::absolute(c)
                    .map_err(|e| self.err(key, format!("{}: {e}", c.display())));
            }
        }
        let hint = if command.contains('/') {
            String::new()
        } else if command == "demo-app" {
            " (looked next to the supervisor binary and in PATH; build it with `cargo build --release`)".to_string()
        } else {
            " (looked next to the supervisor binary and in PATH)".to_string()
        };
        Err(self.err(
            key,
            format!("program {command:?} not found or not executable{hint}"),
        ))
    }
}

/// Package managers that start the app in a child process: `LISTEN_PID` is theirs, not the app's,
/// so the app cannot take the sockets (they are themselves `#!/usr/bin/env node` scripts).
const NODE_WRAPPERS: &[&str] = &["npm", "npx", "yarn", "pnpm", "corepack"];

/// Whether the program is Node by its file name, or is a script run by Node (`#!/usr/bin/env
/// node`) other than a package manager: what `runtime = "node"` accepts.
pub(super) fn runs_node(program: &Path) -> bool {
    if looks_like_node(program) {
        return true;
    }
    let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let target = std::fs::canonicalize(program).ok();
    let target_name = target
        .as_deref()
        .and_then(|t| t.file_stem())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if NODE_WRAPPERS
        .iter()
        .any(|w| name == *w || target_name.starts_with(w))
    {
        return false;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = &head[..n];
    head.starts_with(b"#!")
        && head
            .split(|b| *b == b'\n')
            .next()
            .is_some_and(|line| String::from_utf8_lossy(line).contains("node"))
}
