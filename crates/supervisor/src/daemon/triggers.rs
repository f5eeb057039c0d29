//! What reloads an app by itself: `watch` (inotify through the `notify` crate, filtered and
//! debounced by [`crate::watch`]) and `cron_restart` (a timer to the schedule's next occurrence).
//! One task per app that has either; each sends a [`Trigger`] to the shell, which starts that
//! app's rolling reload like `supervisor reload APP` (zero downtime: never a restart). The tasks
//! follow the running config: [`Triggers::sync`] after every reload that applied the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{AppConfig, CronRestart, ReloadTriggers, WatchPolicy};
use crate::watch::{self, Debounce};

/// The most directories one app's `watch` takes (each is an inotify watch, a kernel resource
/// shared by the user's processes).
const MAX_WATCHED_DIRS: usize = 10_000;

/// An app to reload, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Trigger {
    pub(super) app: String,
    pub(super) why: String,
}

/// The trigger tasks, one per app that has `watch` or `cron_restart`.
#[derive(Debug)]
pub(super) struct Triggers {
    tx: mpsc::UnboundedSender<Trigger>,
    armed: HashMap<String, Armed>,
}

/// One app's task, with what it was armed for.
#[derive(Debug)]
struct Armed {
    triggers: ReloadTriggers,
    task: JoinHandle<()>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Triggers {
    /// No task yet; triggers arrive on the receiver.
    pub(super) fn new() -> (Triggers, mpsc::UnboundedReceiver<Trigger>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Triggers {
                tx,
                armed: HashMap::new(),
            },
            rx,
        )
    }

    /// Arms what `apps` ask for: an app whose triggers did not change keeps its task, a changed
    /// one gets a new task, an app that has none any more (or is gone) loses its task.
    pub(super) fn sync(&mut self, apps: &[AppConfig]) {
        self.armed.retain(|name, armed| {
            apps.iter()
                .any(|a| &a.name == name && a.triggers == armed.triggers)
        });
        for app in apps {
            let t = &app.triggers;
            if (t.watch.is_none() && t.cron_restart.is_none()) || self.armed.contains_key(&app.name)
            {
                continue;
            }
            let task = tokio::spawn(run(app.name.clone(), t.clone(), self.tx.clone()));
            self.armed.insert(
                app.name.clone(),
                Armed {
                    triggers: t.clone(),
                    task,
                },
            );
        }
    }

    /// Stops every task (the supervisor is stopping).
    pub(super) fn clear(&mut self) {
        self.armed.clear();
    }
}

/// One app's task: its file changes and its schedule, until aborted.
async fn run(app: String, triggers: ReloadTriggers, tx: mpsc::UnboundedSender<Trigger>) {
    let mut files = triggers.watch.as_ref().and_then(|p| Files::watch(&app, p));
    let schedule = triggers.cron_restart.as_ref().and_then(schedule_of);
    let mut next_cron = schedule
        .as_ref()
        .and_then(|(s, _)| next_at(s, chrono::Utc::now()));
    loop {
        let due = files.as_ref().and_then(|f| f.debounce.due());
        tokio::select! {
            Some(paths) = recv(&mut files) => {
                if let Some(f) = &mut files {
                    f.changed(paths);
                }
            }
            () = sleep_until_std(due) => {
                let now = std::time::Instant::now();
                if let Some(f) = &mut files
                    && let Some(paths) = f.debounce.fire(now)
                {
                    let why = format!("watch: {}", watch::describe(&f.policy.root, &paths));
                    let _ = tx.send(Trigger { app: app.clone(), why });
                }
            }
            () = sleep_until(next_cron.map(|(at, _)| at)) => {
                if let (Some((s, c)), Some((_, fired))) = (&schedule, next_cron) {
                    let why = format!("cron_restart \"{}\" ({})", c.expr, c.timezone);
                    let _ = tx.send(Trigger { app: app.clone(), why });
                    // After this occurrence, not after the clock: a timer a little early never
                    // fires one occurrence twice.
                    next_cron = next_at(s, fired.max(chrono::Utc::now()));
                }
            }
        }
    }
}

/// The changed paths of the next event, or never when the app is not watched.
async fn recv(files: &mut Option<Files>) -> Option<Vec<PathBuf>> {
    match files {
        Some(f) => f.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until_std(at: Option<std::time::Instant>) {
    sleep_until(at.map(tokio::time::Instant::from_std)).await
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn schedule_of(c: &CronRestart) -> Option<(cronlock::Schedule, CronRestart)> {
    Some((c.schedule()?, c.clone()))
}

/// The schedule's first occurrence after `after`: on the monotonic clock, and as it is.
fn next_at(
    s: &cronlock::Schedule,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<(tokio::time::Instant, chrono::DateTime<chrono::Utc>)> {
    let next = s.next_after(after)?;
    let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
    Some((tokio::time::Instant::now() + wait, next))
}

/// An app's inotify watches and the changes they report.
struct Files {
    app: String,
    policy: WatchPolicy,
    watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    debounce: Debounce,
    dirs: usize,
    warned: bool,
}

impl Files {
    /// Watches every path of `policy` (directories with everything under them that counts).
    fn watch(app: &str, policy: &WatchPolicy) -> Option<Files> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(e) = event
                && !matches!(e.kind, EventKind::Access(_))
            {
                let _ = tx.send(e.paths);
            }
        });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(
                    app,
                    "watch: cannot watch files: {e}: the app is not watched"
                );
                return None;
            }
        };
        let mut files = Files {
            app: app.to_owned(),
            policy: policy.clone(),
            watcher,
            rx,
            debounce: Debounce::new(policy.delay),
            dirs: 0,
            warned: false,
        };
        for p in &policy.paths {
            files.add(p);
        }
        tracing::info!(
            app,
            dirs = files.dirs,
            "watch: reloading the app when files under {} change",
            policy
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(files)
    }

    /// Some paths changed: those that count are debounced; a new directory is watched too. A
    /// socket or a pipe (a runtime directory under the app's) is never the app's code.
    fn changed(&mut self, paths: Vec<PathBuf>) {
        use std::os::unix::fs::FileTypeExt;
        let now = std::time::Instant::now();
        for p in paths {
            if !watch::counts(&self.policy, &p) {
                continue;
            }
            let kind = std::fs::symlink_metadata(&p).map(|m| m.file_type());
            if kind.as_ref().is_ok_and(|t| t.is_socket() || t.is_fifo()) {
                continue;
            }
            if kind.is_ok_and(|t| t.is_dir()) {
                self.add(&p);
            }
            self.debounce.changed(p, now);
        }
    }

    /// Watches `path`: a file as it is, a directory and every directory under it that counts.
    fn add(&mut self, path: &Path) {
        if !path.is_dir() {
            self.watch_one(path);
            return;
        }
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.dirs >= MAX_WATCHED_DIRS {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        app = %self.app,
                        "watch: more than {MAX_WATCHED_DIRS} directories: the rest are not \
                         watched (narrow `watch` or add to `ignore_watch`)"
                    );
                }
                return;
            }
            if !self.watch_one(&dir) {
                continue;
            }
            self.dirs += 1;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) && watch::counts(&self.policy, &p) {
                    stack.push(p);
                }
            }
        }
    }

    fn watch_one(&mut self, path: &Path) -> bool {
        match self.watcher.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => true,
            Err(e) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        app = %self.app,
                        "watch: cannot watch {}: {e} (fs.inotify.max_user_watches may be too \
                         low); changes there do not reload the app",
                        path.display()
                    );
                }
                false
            }
        }
    }
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("app", &self.app)
            .field("dirs", &self.dirs)
            .finish()
    }
}
