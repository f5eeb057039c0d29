//! An imported app as config text: what `import`, `start app.js` and `init` write.

use std::path::Path;

use super::convert::{Imported, Note, q};
use crate::cli::script::Wanted;

/// The config file's text: `header` (comment lines), the notes, `[supervisor]` named after the
/// first app, then each app with the socket its `listen()` asked for. Paths under `out_dir` (the
/// file's directory) are written relative to it, so that the file moves with the app.
pub(in crate::cli) fn config(
    header: &str,
    out_dir: &Path,
    apps: &[(Imported, Option<Wanted>)],
    notes: &[Note],
) -> String {
    let mut t = String::from(header);
    if !notes.is_empty() {
        t.push_str("#\n# Not carried over, or carried over differently:\n");
        for n in notes {
            t.push_str(&format!("#   {}: {}: {}\n", n.app, n.option, n.why));
        }
    }
    let name = apps
        .first()
        .map(|(a, _)| a.name.clone())
        .unwrap_or_else(|| "app".into());
    t.push_str(&format!("\n[supervisor]\nname = {}\n", q(&name)));
    for (app, listen) in apps {
        t.push_str(&format!("\n[[app]]\nname = {}\n", q(&app.name)));
        t.push_str(&format!("command = {}\n", q(&app.command)));
        let args: Vec<String> = app.args.iter().map(|a| q(a)).collect();
        t.push_str(&format!("args = [{}]\n", args.join(", ")));
        t.push_str(&format!("cwd = {}\n", q(&relative(out_dir, &app.cwd))));
        if app.instances == 0 {
            t.push_str("instances = 0  # one worker per CPU (PM2's \"max\")\n");
        } else {
            t.push_str(&format!("instances = {}\n", app.instances));
        }
        for (k, v, comment) in &app.keys {
            match comment {
                Some(c) => t.push_str(&format!("{k} = {v}  # {c}\n")),
                None => t.push_str(&format!("{k} = {v}\n")),
            }
        }
        if !app.env.is_empty() {
            t.push_str("\n[app.env]\n");
            for (k, v) in &app.env {
                t.push_str(&format!("{} = {}\n", key(k), q(v)));
            }
        }
        for (profile, vars) in &app.profiles {
            t.push_str(&format!(
                "\n[app.env_profiles.{}]  # PM2's env_{profile}: start --env {profile}\n",
                key(profile)
            ));
            for (k, v) in vars {
                t.push_str(&format!("{} = {}\n", key(k), q(v)));
            }
        }
        if !app.restart.is_empty() {
            t.push_str("\n[app.restart]\n");
            for (k, v) in &app.restart {
                t.push_str(&format!("{k} = {v}\n"));
            }
        }
        match listen {
            Some(Wanted::Port(port, host)) => {
                // Node's default host is every interface; an IPv6 host is bracketed in an
                // address (`[::1]:3000`), Node gives it bare.
                let host = match host.as_deref() {
                    None | Some("::" | "0.0.0.0" | "") => "0.0.0.0".to_owned(),
                    Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
                    Some(h) => h.to_owned(),
                };
                t.push_str(&format!(
                    "\n[[app.listen]]  # the port the app's listen() asked for\naddress = {}\n",
                    q(&format!("{host}:{port}"))
                ));
            }
            Some(Wanted::Path(p)) => t.push_str(&format!(
                "\n[[app.listen]]  # the path the app's listen() asked for\npath = {}\n",
                q(p)
            )),
            None => {}
        }
    }
    t
}

/// A TOML key: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        q(k)
    }
}

/// `path` relative to `dir` when it is under it (a config kept beside the app moves with it).
fn relative(dir: &Path, path: &Path) -> String {
    match path.strip_prefix(dir) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}
