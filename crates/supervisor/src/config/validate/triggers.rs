//! `watch`, `ignore_watch`, `watch_delay` and `cron_restart`: what reloads an app by itself,
//! under PM2's names and in PM2's forms (`watch = true`, a path, or a list of paths).

use std::path::{Path, PathBuf};

use super::super::human::HumanDuration;
use super::super::model::{CronRestart, DEFAULT_WATCH_DELAY, ReloadTriggers, WatchPolicy};
use super::super::raw::{RawWatch, RawWatchList, Spanned};
use super::bounds::{MAX_STRINGS, MAX_WAIT};
use super::{ConfigError, Validator, resolve};

/// The raw keys, taken out of the app's table.
pub(super) struct Raw {
    pub(super) watch: Option<Spanned<RawWatch>>,
    pub(super) ignore_watch: Option<Spanned<RawWatchList>>,
    pub(super) watch_delay: Option<Spanned<HumanDuration>>,
    pub(super) cron_restart: Option<Spanned<String>>,
}

impl Validator<'_> {
    /// The triggers of app `key`, whose directory is `cwd`.
    pub(super) fn triggers(
        &self,
        key: &str,
        raw: Raw,
        cwd: &Path,
    ) -> Result<ReloadTriggers, ConfigError> {
        let watch = match &raw.watch {
            Some(w) if watching(w) => Some(self.watch(key, w, &raw, cwd)?),
            Some(_) => None,
            None => {
                // Without `watch` at all these say something the file does not do.
                for (name, span) in [
                    ("ignore_watch", raw.ignore_watch.as_ref().map(Spanned::span)),
                    ("watch_delay", raw.watch_delay.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        return Err(self.err_at(
                            span,
                            format!("{key}.{name}"),
                            "has no effect without `watch` (set watch = true to reload the app \
                             when its files change)",
                        ));
                    }
                }
                None
            }
        };
        let cron_restart = match &raw.cron_restart {
            None => None,
            Some(expr) => Some(self.cron_restart(key, expr)?),
        };
        Ok(ReloadTriggers {
            watch,
            cron_restart,
        })
    }

    fn watch(
        &self,
        key: &str,
        w: &Spanned<RawWatch>,
        raw: &Raw,
        cwd: &Path,
    ) -> Result<WatchPolicy, ConfigError> {
        let paths: Vec<PathBuf> = match w.get_ref() {
            RawWatch::On(_) => vec![clean(cwd)],
            RawWatch::Paths(list) => list
                .items()
                .iter()
                .map(|p| clean(&resolve(cwd, Path::new(p))))
                .collect(),
        };
        if paths.is_empty() || paths.len() > MAX_STRINGS {
            return Err(self.err_at(
                w.span(),
                format!("{key}.watch"),
                format!("true, a path, or a list of 1 to {MAX_STRINGS} paths"),
            ));
        }
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(self.err_at(
                w.span(),
                format!("{key}.watch"),
                format!(
                    "{} does not exist (paths are relative to the app's cwd, {})",
                    missing.display(),
                    cwd.display()
                ),
            ));
        }
        let ignore = raw
            .ignore_watch
            .as_ref()
            .map(|l| l.get_ref().items())
            .unwrap_or_default();
        if let Some(list) = &raw.ignore_watch
            && (ignore.len() > MAX_STRINGS || ignore.iter().any(|p| p.trim().is_empty()))
        {
            return Err(self.err_at(
                list.span(),
                format!("{key}.ignore_watch"),
                format!(
                    "glob patterns (`*.log`, `tmp`, `public/**`), at most {MAX_STRINGS}, none empty"
                ),
            ));
        }
        let delay = match &raw.watch_delay {
            None => DEFAULT_WATCH_DELAY,
            Some(d) => self.at_most(&format!("{key}.watch_delay"), d, MAX_WAIT)?,
        };
        Ok(WatchPolicy {
            root: clean(cwd),
            paths,
            ignore,
            delay,
        })
    }

    fn cron_restart(&self, key: &str, expr: &Spanned<String>) -> Result<CronRestart, ConfigError> {
        let timezone = local_timezone();
        let tz = cronlock::parse_timezone("cron_restart", &timezone)
            .map_err(|e| self.err_at(expr.span(), format!("{key}.cron_restart"), e.to_string()))?;
        cronlock::Schedule::parse_for("cron_restart", expr.get_ref(), tz).map_err(|e| {
            self.err_at(
                expr.span(),
                format!("{key}.cron_restart"),
                format!("{e} (e.g. \"0 3 * * *\": every day at 03:00, {timezone}; or \"@daily\")"),
            )
        })?;
        Ok(CronRestart {
            expr: expr.get_ref().trim().to_owned(),
            timezone,
        })
    }
}

/// `path`, absolute, without its `.` components (`/srv/app/./src` is `/srv/app/src`): what inotify reports
/// and what `ignore_watch` patterns are matched against.
fn clean(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Whether `watch` asks for watching (`watch = false` does not).
fn watching(w: &Spanned<RawWatch>) -> bool {
    !matches!(w.get_ref(), RawWatch::On(false))
}

/// The host's timezone (`TZ`, else the system's), as an IANA name; UTC when neither is known.
fn local_timezone() -> String {
    if let Ok(tz) = std::env::var("TZ") {
        let tz = tz.trim_start_matches(':');
        if cronlock::parse_timezone("cron_restart", tz).is_ok() {
            return tz.to_owned();
        }
    }
    iana_time_zone::get_timezone()
        .ok()
        .filter(|tz| cronlock::parse_timezone("cron_restart", tz).is_ok())
        .unwrap_or_else(|| "UTC".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// An app with `extra` keys, from a file in a directory holding `src/`.
    use super::super::load_app as load;

    #[test]
    fn watch_in_pm2s_forms() {
        let c = load("watch = true").unwrap();
        let w = c.apps[0].triggers.watch.clone().unwrap();
        assert_eq!(
            w.paths,
            std::slice::from_ref(&w.root),
            "the app's directory"
        );
        assert_eq!(w.delay, Duration::from_millis(500));
        let c = load("watch = \"src\"\nignore_watch = \"*.log\"\nwatch_delay = \"2s\"").unwrap();
        let w = c.apps[0].triggers.watch.clone().unwrap();
        assert!(w.paths[0].ends_with("src"));
        assert_eq!(w.ignore, ["*.log"]);
        assert_eq!(w.delay, Duration::from_secs(2));
        let c = load("watch = [\"src\", \".\"]\nignore_watch = [\"tmp\", \"public/**\"]").unwrap();
        assert_eq!(c.apps[0].triggers.watch.as_ref().unwrap().paths.len(), 2);
        assert_eq!(load("watch = false").unwrap().apps[0].triggers.watch, None);
        assert_eq!(load("").unwrap().apps[0].triggers.watch, None);
    }

    #[test]
    fn watch_errors_name_the_key_and_line() {
        let e = load("watch = \"nowhere\"").unwrap_err();
        assert!(e.contains(":4:") && e.contains("app[0].watch"), "{e}");
        assert!(e.contains("nowhere does not exist"), "{e}");
        let e = load("ignore_watch = [\"tmp\"]").unwrap_err();
        assert!(
            e.contains("app[0].ignore_watch") && e.contains("without `watch`"),
            "{e}"
        );
        let e = load("watch = true\nignore_watch = [\"\"]").unwrap_err();
        assert!(e.contains("app[0].ignore_watch"), "{e}");
        let e = load("watch = 3").unwrap_err();
        assert!(e.contains("app[0].watch"), "{e}");
    }

    #[test]
    fn cron_restart_takes_crontabs_forms() {
        for expr in ["0 3 * * *", "0 0 3 * * *", "@daily", "*/15 * * * *"] {
            let c = load(&format!("cron_restart = \"{expr}\"")).unwrap();
            let cr = c.apps[0].triggers.cron_restart.clone().unwrap();
            assert_eq!(cr.expr, expr);
            assert!(cr.schedule().is_some(), "{expr}");
        }
        let e = load("cron_restart = \"every day\"").unwrap_err();
        assert!(
            e.contains("app[0].cron_restart") && e.contains("0 3 * * *"),
            "{e}"
        );
    }
}
