//! An app's environment from three places, later ones winning: `env_file` (a dotenv file, read
//! each time the config is: a reload picks up its changes), `env`, and the profile chosen with
//! `start --env NAME` (`[app.env_profiles.NAME]`, PM2's `env_NAME`; the choice travels to reloads
//! and upgrades as `SUPERVISOR_ENV` in the supervisor's environment).

use std::collections::BTreeMap;

use super::super::raw::{RawApp, Spanned};
use super::bounds::MAX_FILE;
use super::{ConfigError, Validator, resolve};

/// The variable naming the chosen profile (set by `start --env NAME` / `check --env NAME`).
pub const PROFILE_VAR: &str = "SUPERVISOR_ENV";

/// The profile chosen for this process, if any.
pub(in crate::config) fn chosen_profile() -> Option<String> {
    std::env::var(PROFILE_VAR).ok().filter(|p| !p.is_empty())
}

impl Validator<'_> {
    /// The variables of app `key`: its `env_file`, its `env`, the chosen profile's.
    pub(super) fn app_env(
        &self,
        key: &str,
        rw: &RawApp,
    ) -> Result<BTreeMap<String, Spanned<String>>, ConfigError> {
        let mut env = BTreeMap::new();
        if let Some(file) = &rw.env_file {
            let path = resolve(&self.base, file.get_ref());
            let at = |message: String| self.err_at(file.span(), format!("{key}.env_file"), message);
            let meta = std::fs::metadata(&path)
                .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
            if meta.len() > MAX_FILE {
                return Err(at(format!(
                    "{} is {} bytes, over the {MAX_FILE} a config file may have",
                    path.display(),
                    meta.len()
                )));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
            for (name, value) in parse_dotenv(&text)
                .map_err(|(line, why)| at(format!("{}:{line}: {why}", path.display())))?
            {
                env.insert(name, Spanned::new(file.span(), value));
            }
        }
        env.extend(rw.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(profile) = chosen_profile()
            && let Some(vars) = rw.env_profiles.get(&profile)
        {
            env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(env)
    }

    /// `start --env NAME` names a profile some app has (a typo would silently start without it).
    pub(super) fn profile_exists(&self, apps: &[&RawApp]) -> Result<(), ConfigError> {
        let Some(profile) = chosen_profile() else {
            return Ok(());
        };
        if apps.iter().any(|a| a.env_profiles.contains_key(&profile)) {
            return Ok(());
        }
        let mut known: Vec<&str> = apps
            .iter()
            .flat_map(|a| a.env_profiles.keys().map(String::as_str))
            .collect();
        known.sort_unstable();
        known.dedup();
        Err(self.err(
            "--env",
            format!(
                "no app has the env profile {profile:?} ([app.env_profiles.{profile}]); profiles in \
                 the file: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }
}

/// `NAME=value` lines as dotenv files have them: blank lines and `#` comments skipped, an
/// optional `export `, values bare (trailing ` #` comment cut), in double quotes (`\n`, `\"`,
/// `\\` escapes) or in single quotes (as written). A bad line: its number and why.
pub(in crate::config) fn parse_dotenv(
    text: &str,
) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err((n, "expected NAME=value".to_owned()));
        };
        let name = name.trim();
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((n, format!("{name:?} is not a variable name")));
        }
        let value = value.trim();
        let value = if let Some(rest) = value.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = rest.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => v.push('\n'),
                        Some(other) => v.push(other),
                        None => break,
                    },
                    c => v.push(c),
                }
            }
            if !closed {
                return Err((n, "unterminated double quote".to_owned()));
            }
            v
        } else if let Some(rest) = value.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_owned(),
                None => return Err((n, "unterminated single quote".to_owned())),
            }
        } else {
            value.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_dotenv;

    #[test]
    fn dotenv_lines_as_dotenv_files_write_them() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC=\"line\\nnext \\\"q\\\"\"\nD='$NOT #expanded'\nE=\n";
        let v = parse_dotenv(text).unwrap_or_else(|e| panic!("{e:?}"));
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("line\nnext \"q\""));
        assert_eq!(get("D"), Some("$NOT #expanded"));
        assert_eq!(get("E"), Some(""));
        assert_eq!(
            parse_dotenv("A=1\nnot a line\n"),
            Err((2, "expected NAME=value".into()))
        );
        assert_eq!(
            parse_dotenv("1A=x").map_err(|e| e.0),
            Err(1),
            "a name cannot start with a digit"
        );
        assert_eq!(
            parse_dotenv("A=\"open\n").map_err(|e| e.1),
            Err("unterminated double quote".into())
        );
    }
}
