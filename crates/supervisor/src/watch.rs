//! The decisions behind `watch` (PM2's name): which changed paths count ([`counts`]: not
//! `node_modules`, not a path with a component starting with a dot, not a `*.log` file, not one
//! an `ignore_watch` glob matches) and when a burst of changes becomes one reload ([`Debounce`]: once the files have
//! stayed unchanged for `watch_delay`). Pure: paths and plain instants in, decisions out; the
//! inotify side is `daemon::triggers`.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::WatchPolicy;

/// Components never watched, whatever `ignore_watch` says: dependencies are installed, not
/// edited (a change there is a deploy's, which reloads on its own), and a log file written in
/// the app's directory (the app's own, or the supervisor's `start -d` log) would reload the app
/// with every line logged about the reload: PM2's endless restart loop.
const ALWAYS_IGNORED: &[&str] = &["node_modules", "*.log"];

/// Whether a change to `path` (absolute) should reload an app watched with `policy`.
pub fn counts(policy: &WatchPolicy, path: &Path) -> bool {
    let rel = path.strip_prefix(&policy.root).unwrap_or(path);
    let parts: Vec<&str> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    if parts
        .iter()
        .any(|p| p.starts_with('.') || ALWAYS_IGNORED.iter().any(|g| glob(g, p)))
    {
        return false;
    }
    let whole = parts.join("/");
    !policy.ignore.iter().any(|pattern| {
        let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
        if pattern.contains('/') {
            // Against the path, or as a directory holding it (`public/assets` ignores what is
            // under it).
            glob(pattern, &whole) || glob(&format!("{pattern}/**"), &whole)
        } else {
            parts.iter().any(|p| glob(pattern, p))
        }
    })
}

/// Whether `text` matches the glob `pattern`: `*` is any run of characters but `/`, `**` any run
/// including `/` (`a/**/b` also matches `a/b`), `?` one character but `/`.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                // `**/` also matches no directory at all.
                if rest.first() == Some(&b'/') && go(&rest[1..], t) {
                    return true;
                }
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=t.len() {
                    if go(rest, &t[i..]) {
                        return true;
                    }
                    if t.get(i) == Some(&b'/') {
                        break;
                    }
                }
                false
            }
            Some(b'?') => t.first().is_some_and(|c| *c != b'/') && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The changes seen since the last reload, and when they become one: a trailing debounce (every
/// change pushes the reload `delay` further), bounded so that files that never stop changing
/// (a log written under the watched directory) still reload at least every `delay * 20`.
#[derive(Debug, Clone)]
pub struct Debounce {
    delay: Duration,
    changed: Vec<PathBuf>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// How many changed paths a reload's log line names.
const SHOWN: usize = 3;

impl Debounce {
    /// Nothing changed yet.
    pub fn new(delay: Duration) -> Debounce {
        Debounce {
            delay,
            changed: Vec::new(),
            first: None,
            last: None,
        }
    }

    /// `path` changed at `now`.
    pub fn changed(&mut self, path: PathBuf, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        if !self.changed.contains(&path) {
            self.changed.push(path);
        }
    }

    /// When the reload is due, if anything changed.
    pub fn due(&self) -> Option<Instant> {
        let quiet = self.last? + self.delay;
        let cap = self.first? + self.delay * 20;
        Some(quiet.min(cap))
    }

    /// At `now`: the changed paths, if the reload is due (and nothing is pending any more).
    pub fn fire(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        if self.due()? > now {
            return None;
        }
        self.first = None;
        self.last = None;
        Some(std::mem::take(&mut self.changed))
    }
}

/// What a reload's log line says of `paths` (relative to `root`): `src/a.js changed`, or the first
/// few and how many more.
pub fn describe(root: &Path, paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .collect();
    match paths.len() {
        0 => "files changed".to_owned(),
        n if n <= SHOWN => format!("{} changed", shown.join(", ")),
        n => format!("{} and {} more changed", shown.join(", "), n - SHOWN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ignore: &[&str]) -> WatchPolicy {
        WatchPolicy {
            root: PathBuf::from("/srv/shop"),
            paths: vec![PathBuf::from("/srv/shop")],
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            delay: Duration::from_millis(500),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*.log", "out.log"));
        assert!(!glob("*.log", "logs/out.log"));
        assert!(glob("public/**", "public/a/b.css"));
        assert!(glob("**/*.tmp", "a/b/c.tmp"));
        assert!(glob("**/*.tmp", "c.tmp"));
        assert!(glob("src/**/test.js", "src/test.js"));
        assert!(glob("src/**/test.js", "src/a/b/test.js"));
        assert!(glob("?.js", "a.js") && !glob("?.js", "ab.js"));
        assert!(!glob("src/*.js", "src/a/b.js"));
        assert!(glob("tmp", "tmp") && !glob("tmp", "tmpx"));
    }

    #[test]
    fn what_counts_as_a_change() {
        let p = policy(&["*.log", "public/assets", "tmp"]);
        assert!(counts(&p, Path::new("/srv/shop/index.js")));
        assert!(counts(&p, Path::new("/srv/shop/src/routes/a.js")));
        // Always ignored: dependencies, dot paths (.git, editors' swap files), log files.
        assert!(!counts(&policy(&[]), Path::new("/srv/shop/app.log")));
        assert!(!counts(&p, Path::new("/srv/shop/node_modules/x/index.js")));
        assert!(!counts(&p, Path::new("/srv/shop/.git/index")));
        assert!(!counts(&p, Path::new("/srv/shop/src/.index.js.swp")));
        // ignore_watch: a name anywhere, a path under the root.
        assert!(!counts(&p, Path::new("/srv/shop/logs/out.log")));
        assert!(!counts(&p, Path::new("/srv/shop/tmp/upload-1")));
        assert!(!counts(&p, Path::new("/srv/shop/public/assets/app.css")));
        assert!(counts(&p, Path::new("/srv/shop/public/index.html")));
        // PM2's `./` prefix and trailing slash are the same pattern.
        assert!(!counts(
            &policy(&["./uploads/"]),
            Path::new("/srv/shop/uploads/a.png")
        ));
    }

    #[test]
    fn a_burst_of_changes_is_one_reload_once_quiet() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(500));
        assert_eq!(d.due(), None);
        assert_eq!(d.fire(t0), None);
        d.changed("/a".into(), t0);
        d.changed("/b".into(), t0 + ms(300));
        d.changed("/a".into(), t0 + ms(400));
        assert_eq!(d.due(), Some(t0 + ms(900)));
        assert_eq!(d.fire(t0 + ms(899)), None);
        assert_eq!(
            d.fire(t0 + ms(900)),
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
        assert_eq!(d.due(), None, "nothing pending after the reload");
    }

    #[test]
    fn files_that_never_stop_changing_still_reload() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(100));
        for i in 0..100 {
            d.changed("/busy".into(), t0 + ms(i * 50));
        }
        assert_eq!(
            d.due(),
            Some(t0 + ms(2000)),
            "at most delay x 20 after the first"
        );
    }

    #[test]
    fn the_log_line_names_the_files() {
        let root = Path::new("/srv/shop");
        let paths: Vec<PathBuf> = ["a.js", "b.js", "c.js", "d.js", "e.js"]
            .iter()
            .map(|p| root.join(p))
            .collect();
        assert_eq!(describe(root, &paths[..1]), "a.js changed");
        assert_eq!(
            describe(root, &paths),
            "a.js, b.js, c.js and 2 more changed"
        );
    }
}
