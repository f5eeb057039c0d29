//! `supervisor import ecosystem.config.js|.cjs|.mjs|.json [-o FILE]`: PM2's ecosystem file as a
//! supervisor config. A JavaScript file is evaluated by node (as PM2 does: it may compute its
//! options); each app's options are mapped by [`convert`]; each Node app is run once up to its
//! `listen()` to learn its port (as `start app.js` does); the file is written with every option
//! that has no equivalent listed, with the reason, at its top and on stderr.

pub(super) mod convert;
pub(super) mod render;
pub(super) mod values;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use convert::{Imported, Note};

use super::script::{Plan, Wanted, discover_in};

/// How long node may take to evaluate the ecosystem file.
const EVAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Evaluates the file with node and prints it as JSON (RegExps as `{"$regexp": source}`, so an
/// `ignore_watch` regex is named rather than lost; functions dropped).
const EVAL: &str = r#"
const { pathToFileURL } = require("url");
import(pathToFileURL(process.argv[1]).href)
  .then((m) => {
    const v = m && m.default !== undefined ? m.default : m;
    const json = JSON.stringify(v, (k, x) =>
      x instanceof RegExp ? { $regexp: x.source } : typeof x === "function" ? undefined : x,
    );
    process.stdout.write(json === undefined ? "null" : json);
  })
  .catch((e) => {
    process.stderr.write(String((e && e.stack) || e) + "\n");
    process.exit(1);
  });
"#;

/// Why a `.js` file may export nothing: the nearest `package.json` makes it an ES module
/// (`"type": "module"`), where PM2's usual `module.exports = {...}` is not an export.
fn esm_hint(file: &Path) -> String {
    if file.extension().and_then(|e| e.to_str()) != Some("js") {
        return String::new();
    }
    let package = file
        .ancestors()
        .skip(1)
        .map(|d| d.join("package.json"))
        .find(|p| p.is_file());
    let module = package
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v["type"] == "module");
    if module {
        " (its package.json says \"type\": \"module\", so node reads it as an ES module, where \
         `module.exports = ...` exports nothing: rename it to ecosystem.config.cjs, as PM2 does \
         for such projects, or write `export default { apps: [...] }`)"
            .to_string()
    } else {
        String::new()
    }
}

/// `supervisor import FILE -o OUTPUT` (`-` for stdout).
pub(super) fn import(file: &Path, output: &Path) -> Result<()> {
    let to_stdout = output == Path::new("-");
    if !to_stdout && output.exists() {
        bail!(
            "{} exists: not overwritten (give another with -o FILE, or -o - for stdout)",
            output.display()
        );
    }
    let file = std::path::absolute(file)?;
    let value = read(&file)?;
    let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut notes = convert::file_notes(&value);
    let mut apps = Vec::new();
    for (i, raw) in convert::apps_of(&value)
        .map_err(|e| anyhow::anyhow!("{}: {e}{}", file.display(), esm_hint(&file)))?
        .iter()
        .enumerate()
    {
        match convert::convert(raw, i, &base, cpus) {
            Ok((app, app_notes)) => {
                notes.extend(app_notes);
                let listen = listen_of(&app, &mut notes);
                apps.push((app, listen));
            }
            Err(skipped) => notes.push(skipped),
        }
    }
    if apps.is_empty() {
        for n in &notes {
            eprintln!("  {}: {}: {}", n.app, n.option, n.why);
        }
        bail!("{}: no app could be imported", file.display());
    }
    let out_dir = if to_stdout {
        std::env::current_dir()?
    } else {
        std::path::absolute(output)?
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf()
    };
    let header = format!(
        "# Imported from PM2's {} by `supervisor import`.\n\
         # Check it with `supervisor check -c THIS_FILE`; start it with `supervisor start -c THIS_FILE`\n\
         # (`--env NAME` lays [app.env_profiles.NAME], PM2's env_NAME, over env).\n",
        file.display()
    );
    let text = render::config(&header, &out_dir, &apps, &notes);
    if to_stdout {
        print!("{text}");
    } else {
        std::fs::write(output, &text)
            .with_context(|| format!("cannot write {}", output.display()))?;
    }
    for n in &notes {
        eprintln!("supervisor import: {}: {}: {}", n.app, n.option, n.why);
    }
    if !to_stdout {
        let profiles: Vec<&String> = apps
            .iter()
            .flat_map(|(a, _)| a.profiles.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let env = profiles
            .first()
            .map(|p| format!(" (with `--env {p}` for PM2's env_{p})"))
            .unwrap_or_default();
        eprintln!(
            "{} written ({} app{}, {} note{} at its top): `supervisor check -c {0}`, then \
             `supervisor start -c {0}`{env}",
            output.display(),
            apps.len(),
            if apps.len() == 1 { "" } else { "s" },
            notes.len(),
            if notes.len() == 1 { "" } else { "s" },
        );
    }
    Ok(())
}

/// The ecosystem file as JSON: `.json` read as it is, JavaScript evaluated by node.
fn read(file: &Path) -> Result<Value> {
    let is_json = file.extension().is_some_and(|e| e == "json");
    let text = if is_json {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    } else {
        if !file.is_file() {
            bail!("{}: no such file", file.display());
        }
        evaluate(file)?
    };
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))
}

/// Runs node on the file (in its directory, as `pm2 start` there would) and returns its JSON.
fn evaluate(file: &Path) -> Result<String> {
    let mut child = Command::new("node")
        .arg("-e")
        .arg(EVAL)
        .arg(file)
        .current_dir(file.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run node to read the ecosystem file (is Node installed and on PATH?)")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + EVAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{}: node did not finish reading it within {}",
                file.display(),
                crate::units::span(EVAL_TIMEOUT)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let first: Vec<&str> = err.lines().take(6).collect();
        bail!(
            "{}: node could not load it:\n{}",
            file.display(),
            first.join("\n")
        );
    }
    Ok(out)
}

/// Where the app listens: what its `listen()` asks for (a Node app, run once up to it), else
/// PM2's `port`; `None` (with a note) when neither says.
fn listen_of(app: &Imported, notes: &mut Vec<Note>) -> Option<Wanted> {
    let note = |notes: &mut Vec<Note>, why: String| {
        notes.push(Note {
            app: app.name.clone(),
            option: "(port)".into(),
            why,
        });
    };
    let Some(script) = &app.node_script else {
        note(
            notes,
            "not a Node app: it binds its own sockets, so no [[app.listen]] is written; for \
             zero-downtime reloads give the port to the supervisor ([[app.listen]]) and have the \
             program take it from LISTEN_FDS"
                .into(),
        );
        return None;
    };
    let plan = Plan {
        script: script.clone(),
        args: app.script_args.clone(),
        instances: app.instances,
        name: app.name.clone(),
        options: Default::default(),
    };
    let env: Vec<(String, String)> = app.env.clone().into_iter().collect();
    match discover_in(&plan, Some(&app.cwd), &env) {
        Ok(w) => Some(w),
        Err(e) => match app.port {
            Some(p) => Some(Wanted::Port(p, None)),
            None => {
                let e = e.to_string();
                let why = e.split(": nothing to serve").next().unwrap_or(&e);
                note(
                    notes,
                    format!("no port: {why} when run once; add [[app.listen]] by hand"),
                );
                None
            }
        },
    }
}
