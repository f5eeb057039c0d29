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

/// The variable that gives every worker the supervisor's job secret.
pub const JOB_SECRET_VAR: &str = "SUPERVISOR_JOB_SECRET";

/// The header that carries it on every `[[job]] http` request.
pub const JOB_SECRET_HEADER: &str = "Supervisor-Job-Secret";

/// The runtime files, written into the supervisor's private runtime directory, and the job
/// secret kept there.
#[derive(Clone)]
pub struct RuntimeFiles {
    node_preload: PathBuf,
    /// This supervisor's secret (64 hex digits): every `[[job]] http` request carries it in
    /// [`JOB_SECRET_HEADER`], every worker has it in [`JOB_SECRET_VAR`], so an app (the Node
    /// preload for a Node app) can tell a request of the supervisor's from one that only claims
    /// to be. Kept in the runtime directory (`job-secret`, mode 0600), which an in-place upgrade
    /// adopts: the workers it keeps and the new binary agree on it.
    job_secret: String,
}

impl std::fmt::Debug for RuntimeFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeFiles")
            .field("node_preload", &self.node_preload)
            .field("job_secret", &"(secret)")
            .finish()
    }
}

impl RuntimeFiles {
    /// Writes the runtime files into `dir` (private to the supervisor's user: mode 0700), and
    /// reads the job secret there or makes one.
    pub fn install(dir: &Path) -> std::io::Result<RuntimeFiles> {
        let node_preload = dir.join("node-preload.cjs");
        std::fs::write(&node_preload, NODE_PRELOAD)?;
        let job_secret = job_secret(&dir.join("job-secret"))?;
        Ok(RuntimeFiles {
            node_preload,
            job_secret,
        })
    }

    /// The secret every `[[job]] http` request carries.
    pub fn job_secret(&self) -> &str {
        &self.job_secret
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
        env.insert(JOB_SECRET_VAR.into(), self.job_secret.clone());
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

/// The secret in `path`, or a new one written there (mode 0600): 32 bytes of the kernel's
/// randomness, in hex.
fn job_secret(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(text.to_owned());
        }
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(secret.as_bytes())?;
    Ok(secret)
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
            job_secret: "ab".repeat(32),
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
    fn no_runtime_adds_only_the_job_secret() {
        let mut env = BTreeMap::new();
        files().apply(Runtime::None, &mut env, &BTreeMap::new(), &[]);
        assert_eq!(env.keys().collect::<Vec<_>>(), [JOB_SECRET_VAR]);
    }

    #[test]
    fn the_job_secret_is_kept_across_installs_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = RuntimeFiles::install(dir.path()).unwrap();
        let b = RuntimeFiles::install(dir.path()).unwrap();
        assert_eq!(
            a.job_secret(),
            b.job_secret(),
            "an upgrade adopts the secret"
        );
        assert_eq!(a.job_secret().len(), 64);
        let mode = std::fs::metadata(dir.path().join("job-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        let c = RuntimeFiles::install(other.path()).unwrap();
        assert_ne!(a.job_secret(), c.job_secret(), "one secret per supervisor");
        assert!(!format!("{a:?}").contains(a.job_secret()), "never logged");
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
