//! What the supervisor adds to a worker for the language it runs, on top of the worker protocol
//! every worker gets (`LISTEN_FDS`, `NOTIFY_SOCKET`/`READY_FD`, SIGTERM = drain).
//!
//! `runtime = "node"` (the default for a program named `node`): [`NODE_PRELOAD`], a CommonJS
//! file compiled into this binary, is written once into the supervisor's private runtime
//! directory and loaded into each worker with `--require` through `NODE_OPTIONS` (after nothing,
//! before whatever `NODE_OPTIONS` the user set). It makes the app's own `listen()` take the
//! inherited socket of the same port, reports readiness when every inherited socket is listened
//! on, and drains on SIGTERM like `crates/worker`, so an unchanged app needs no code for any of it.
//! The worker also gets `PORT` (the first TCP listener's port, unless the app's `env` sets one)
//! and `UV_TCP_SINGLE_ACCEPT=1` (libuv accepts one connection per wake-up, so a burst of new
//! connections spreads over all workers blocked on the shared socket, as Node's cluster does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Runtime;
use crate::sys::listeners::BoundListener;

/// The Node preload, as shipped.
pub const NODE_PRELOAD: &str = include_str!("node-preload.cjs");

/// The runtime files, written into the supervisor's private runtime directory.
#[derive(Debug, Clone)]
pub struct RuntimeFiles {
    node_preload: PathBuf,
}

impl RuntimeFiles {
    /// Writes the runtime files into `dir` (private to the supervisor's user: mode 0700).
    pub fn install(dir: &Path) -> std::io::Result<RuntimeFiles> {
        let node_preload = dir.join("node-preload.cjs");
        std::fs::write(&node_preload, NODE_PRELOAD)?;
        Ok(RuntimeFiles { node_preload })
    }

    /// Adds what `runtime` needs to a worker's environment. `env` holds the supervisor's own
    /// environment with the app's `env` (`app_env`) already laid over it.
    pub fn apply(
        &self,
        runtime: Runtime,
        env: &mut BTreeMap<String, String>,
        app_env: &BTreeMap<String, String>,
        listeners: &[BoundListener],
    ) {
        match runtime {
            Runtime::None => {}
            Runtime::Node => {
                if !app_env.contains_key("PORT")
                    && let Some(port) = listeners.iter().find_map(|l| l.port)
                {
                    env.insert("PORT".into(), port.to_string());
                }
                env.entry("UV_TCP_SINGLE_ACCEPT".into())
                    .or_insert_with(|| "1".into());
                let require = format!("--require {}", node_quote(&self.node_preload));
                let options = match env.get("NODE_OPTIONS").map(|o| o.trim()) {
                    Some(user) if !user.is_empty() => format!("{require} {user}"),
                    _ => require,
                };
                env.insert("NODE_OPTIONS".into(), options);
            }
        }
    }
}

/// What a worker of `runtime` that was never ready most likely did, for the ready-timeout message.
pub fn not_ready_hint(runtime: Runtime, listeners: &[BoundListener]) -> Option<String> {
    match runtime {
        Runtime::None => None,
        Runtime::Node => {
            let held: Vec<String> = listeners
                .iter()
                .map(|l| format!("{} ({})", l.local, l.name))
                .collect();
            Some(format!(
                "the app did not listen on {} (runtime node reports ready once the app's listen() \
                 took every inherited socket: listen on the same port, or on process.env.PORT)",
                held.join(", ")
            ))
        }
    }
}

/// Quotes a path for `NODE_OPTIONS`, which splits on spaces and understands double quotes with
/// backslash escapes.
fn node_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> RuntimeFiles {
        RuntimeFiles {
            node_preload: PathBuf::from("/run/sup 1/node-preload.cjs"),
        }
    }

    #[test]
    fn node_preload_goes_before_the_users_node_options() {
        let mut env = BTreeMap::from([(
            "NODE_OPTIONS".to_string(),
            " --max-old-space-size=512".to_string(),
        )]);
        files().apply(Runtime::Node, &mut env, &BTreeMap::new(), &[]);
        assert_eq!(
            env["NODE_OPTIONS"],
            "--require \"/run/sup 1/node-preload.cjs\" --max-old-space-size=512"
        );
        assert_eq!(env["UV_TCP_SINGLE_ACCEPT"], "1");
    }

    #[test]
    fn no_runtime_adds_nothing() {
        let mut env = BTreeMap::new();
        files().apply(Runtime::None, &mut env, &BTreeMap::new(), &[]);
        assert!(env.is_empty());
    }

    #[test]
    fn users_port_wins() {
        let app = BTreeMap::from([("PORT".to_string(), "8080".to_string())]);
        let mut env = app.clone();
        files().apply(Runtime::Node, &mut env, &app, &[]);
        assert_eq!(env["PORT"], "8080");
    }

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(node_quote(Path::new("/a\"b\\c")), "\"/a\\\"b\\\\c\"");
    }
}
