//! `supervisor start app.js -i max`: a Node script run clustered with no config file, the way
//! PM2 users start one, and `supervisor init app.js`: the same config, written to edit. The port
//! is the one the app's own `listen()` asks for: the script is run once with the preload in
//! discovery mode (it prints what the first `listen()` asks for and exits before listening),
//! then a config is written (for `start`, into the app's state directory, printed, so that the
//! next step is a file: edit it, `supervisor reload`) and started like any other.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the discovery run may take to reach its `listen()`.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether a `start` argument is a script to run rather than an app of a running supervisor.
pub(super) fn is_script(arg: &str) -> bool {
    [".js", ".mjs", ".cjs"].iter().any(|ext| arg.ends_with(ext))
}

/// What to run: the script, its workers, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// The script (absolute).
    pub script: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Workers; 0 is one per CPU (`-i max`).
    pub instances: usize,
    /// The app's and the supervisor's name.
    pub name: String,
    /// PM2's other options from the command line (`--watch`, `--max-memory-restart`, ...), as
    /// an ecosystem file would give them.
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl Plan {
    /// Reads `start SCRIPT [-i N|max] [--name NAME] [PM2 OPTIONS] [-- ARGS]`.
    pub(super) fn new(
        script: &str,
        instances: Option<&str>,
        name: Option<&str>,
        args: &[String],
        options: &super::args::ScriptOptions,
    ) -> Result<Plan> {
        let path = std::path::absolute(script)?;
        if !path.is_file() {
            bail!("{}: no such script", path.display());
        }
        let instances = match instances {
            None => 1,
            Some("max" | "0" | "-1") => 0,
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= crate::config::MAX_INSTANCES)
                .with_context(|| {
                    format!(
                        "-i {n}: a number of workers (1 to {}) or `max`",
                        crate::config::MAX_INSTANCES
                    )
                })?,
        };
        let name = match name {
            Some(n) => n.to_owned(),
            None => name_of(&path),
        };
        Ok(Plan {
            script: path,
            args: args.to_vec(),
            instances,
            name,
            options: options.pm2_options(),
        })
    }
}

/// A name from the script's file name: `server.js` is `server`, `index.js` its directory's name
/// (`~/shop/index.js` is `shop`), in the characters a name may have.
fn name_of(script: &Path) -> String {
    let stem = script.file_stem().and_then(|s| s.to_str()).unwrap_or("app");
    let base = if stem == "index" || stem == "main" {
        script
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|d| d.to_str())
            .unwrap_or(stem)
    } else {
        stem
    };
    super::import::values::clean_name(base)
}

/// What the app's first `listen()` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wanted {
    /// A TCP port, on this host (`None`: every interface, Node's default).
    Port(u16, Option<String>),
    /// A Unix socket path.
    Path(String),
}

/// Reads the discovery line the preload prints (`supervisor-discover: {...}`).
fn parse_discovery(line: &str) -> Option<Wanted> {
    let json = line.strip_prefix("supervisor-discover: ")?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    if let Some(p) = v["path"].as_str() {
        return Some(Wanted::Path(p.to_owned()));
    }
    let port = u16::try_from(v["port"].as_u64()?).ok()?;
    Some(Wanted::Port(port, v["host"].as_str().map(str::to_owned)))
}

/// Runs the script once with the preload in discovery mode and returns what it listens on.
fn discover(plan: &Plan) -> Result<Wanted> {
    discover_in(plan, None, &[])
}

/// [`discover`] in directory `cwd` (default: this one) with `env` added (the app's own, which
/// may say which port it listens on).
pub(super) fn discover_in(
    plan: &Plan,
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> Result<Wanted> {
    let base = crate::rundir::base().context("no private runtime directory for this user")?;
    let dir = base.join(format!("discover-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let preload = dir.join("node-preload.cjs");
    let result = (|| {
        std::fs::write(&preload, crate::runtimes::NODE_PRELOAD)?;
        let mut command = Command::new("node");
        command
            .arg("--require")
            .arg(&preload)
            .arg(&plan.script)
            .args(&plan.args)
            .env("PORT", "3000")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("SUPERVISOR_DISCOVER", "1");
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("cannot run node (is Node installed and on PATH?)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(w) = parse_discovery(&line) {
                    let _ = tx.send(w);
                    return;
                }
            }
        });
        let deadline = Instant::now() + DISCOVER_TIMEOUT;
        let found = loop {
            if let Ok(w) = rx.recv_timeout(Duration::from_millis(50)) {
                break Some(w);
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                break rx.try_recv().ok();
            }
        };
        // SAFETY: a plain syscall on the discovery run's own process group (it was made its
        // leader above), whatever it started is killed with it.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        found.with_context(|| {
            format!(
                "{} never called listen() (within {}): nothing to serve; for an app that \
                 listens later or on a port it reads, write a config (`supervisor check` \
                 explains it)",
                plan.script.display(),
                crate::units::span(DISCOVER_TIMEOUT)
            )
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The config of `plan` listening as `wanted`, with comments: what `start` and `init` write
/// (into `out_dir`), through the same mapping as `import` (the command line's options are PM2's).
pub(super) fn config_text(
    plan: &Plan,
    wanted: &Wanted,
    out_dir: &Path,
    command: &str,
) -> Result<String> {
    use super::import::{convert, render};
    let cwd = std::env::current_dir()?;
    // Relative to the directory the workers run in, when it is there.
    let script = plan.script.strip_prefix(&cwd).unwrap_or(&plan.script);
    let mut app = plan.options.clone();
    app.insert("name".into(), plan.name.clone().into());
    app.insert("script".into(), script.display().to_string().into());
    app.insert("args".into(), plan.args.clone().into());
    app.insert("instances".into(), plan.instances.into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (imported, notes) = convert::convert(&app, 0, &cwd, cpus)
        .map_err(|n| anyhow::anyhow!("{}: {}", n.option, n.why))?;
    let header = format!(
        "# Written by `supervisor {command} {}`: edit it, then `supervisor reload -c THIS_FILE`.\n",
        script.display()
    );
    Ok(render::config(
        &header,
        out_dir,
        &[(imported, Some(wanted.clone()))],
        &notes,
    ))
}

/// `supervisor init`: the same config as `start SCRIPT` would write, to `output` (never over a
/// file that exists).
pub(super) fn init(plan: &Plan, output: &Path) -> Result<()> {
    let to_stdout = output == Path::new("-");
    if !to_stdout && output.exists() {
        bail!(
            "{} exists: not overwritten (give another with -o FILE, or -o - for stdout)",
            output.display()
        );
    }
    let wanted = discover(plan)?;
    if to_stdout {
        let here = std::env::current_dir()?;
        print!("{}", config_text(plan, &wanted, &here, "init")?);
        return Ok(());
    }
    let out_dir = std::path::absolute(output)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    std::fs::write(output, config_text(plan, &wanted, &out_dir, "init")?)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "{} written: `supervisor check -c {0}`, then `supervisor start -c {0}` (-d for the background)",
        output.display()
    );
    Ok(())
}

/// Discovers the port, writes the config into the app's state directory and returns its path.
pub(super) fn write_config(plan: &Plan) -> Result<PathBuf> {
    let wanted = discover(plan)?;
    let env = crate::rundir::Env::current();
    let dir = crate::rundir::state_dir_for(&env, &plan.name)
        .context("no home directory to keep the config in")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("supervisor.toml");
    // What this command wrote last time: a file that differs from it was edited, and is kept.
    let last = dir.join(".supervisor.toml.written");
    let text = config_text(plan, &wanted, &dir, "start")?;
    if let Ok(now) = std::fs::read_to_string(&path)
        && std::fs::read_to_string(&last).is_ok_and(|l| l != now)
    {
        eprintln!(
            "supervisor: {} was edited since `start` wrote it: it runs as edited, and the options \
             given now are not applied (delete it to write it again from them)",
            path.display()
        );
        return Ok(path);
    }
    for (file, what) in [(&path, &text), (&last, &text)] {
        std::fs::write(file, what).with_context(|| format!("cannot write {}", file.display()))?;
    }
    eprintln!(
        "supervisor: {} listens on {}: config written to {} (edit it, then `supervisor reload`)",
        plan.script.display(),
        match &wanted {
            Wanted::Port(p, _) => format!("port {p}"),
            Wanted::Path(p) => p.clone(),
        },
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_names_and_the_discovery_line() {
        assert!(is_script("index.js") && is_script("./srv/app.mjs") && is_script("a.cjs"));
        assert!(!is_script("web") && !is_script("api.json"));
        assert_eq!(name_of(Path::new("/srv/shop/index.js")), "shop");
        assert_eq!(name_of(Path::new("/srv/shop/api server.js")), "api-server");
        assert_eq!(
            parse_discovery(r#"supervisor-discover: {"port":3000}"#),
            Some(Wanted::Port(3000, None))
        );
        assert_eq!(
            parse_discovery(r#"supervisor-discover: {"port":8080,"host":"127.0.0.1"}"#),
            Some(Wanted::Port(8080, Some("127.0.0.1".into())))
        );
        assert_eq!(
            parse_discovery(r#"supervisor-discover: {"path":"/run/app.sock"}"#),
            Some(Wanted::Path("/run/app.sock".into()))
        );
        assert_eq!(parse_discovery("App listening on port 3000"), None);
    }

    #[test]
    fn the_written_config_is_one_the_loader_takes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let script = dir.path().join("index.js");
        std::fs::write(&script, "").unwrap_or_else(|e| panic!("{e}"));
        let options = crate::cli::args::ScriptOptions {
            watch: Some(".".into()),
            max_memory_restart: Some("300M".into()),
            kill_timeout: Some(3000),
            ..Default::default()
        };
        let plan = Plan::new(
            script.to_str().unwrap_or_default(),
            Some("max"),
            Some("shop"),
            &["--flag".into()],
            &options,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = config_text(
            &plan,
            &Wanted::Port(3000, None),
            Path::new("/elsewhere"),
            "start",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("supervisor.toml");
        let c = crate::config::Config::from_text(&path, &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.name, "shop");
        let app = &c.apps[0];
        assert_eq!(
            app.worker.args,
            [script.display().to_string(), "--flag".into()]
        );
        assert!(app.worker.instances >= 1, "max: one per CPU");
        assert_eq!(app.listeners[0].addr.to_string(), "0.0.0.0:3000");
        assert!(app.triggers.watch.is_some(), "--watch");
        assert_eq!(
            app.memory.max_bytes,
            Some(300 << 20),
            "--max-memory-restart 300M"
        );
        assert_eq!(app.worker.kill_timeout, std::time::Duration::from_secs(3));
        assert_eq!(app.worker.contract.kill_signal.name(), "SIGINT", "PM2's");
        assert!(
            Plan::new(
                script.to_str().unwrap_or_default(),
                Some("lots"),
                None,
                &[],
                &Default::default()
            )
            .is_err()
        );
    }
}
