//! Reloads: of one app (its part of the file, rolled), and of every app, which applies the whole
//! file read once: apps gone from it are removed (they drain, their sockets close at once), apps
//! new in it are added and started in `after` order, and every other app is rolled onto its new
//! settings one app at a time (onto new sockets, bound by the shell, when its listeners moved;
//! the old ones close once no slot uses them). A file that cannot be applied while the
//! supervisor runs (the control socket changed, a new port cannot be bound, ...) is refused as a
//! whole: every app's reload is reported aborted with the reason, and nothing changes. The answer
//! waits for the added apps to be up, and names what was added, removed and changed.

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;

use super::app::App;
use super::apps::{Core, Entry};
use super::file::FileRead;
use super::report::{AppChange, ReloadMode, ReloadOutcome, ReloadReport, SlotReplacement};
use super::{Action, Answer, AppId, AppSettings, Phase, ReplyTo, SocketSet, Waiter};

/// A reload of every app: the file read once, then one app at a time.
#[derive(Debug)]
pub(super) struct ReloadAll {
    /// Waiting for the file.
    reading: bool,
    /// The apps still to roll, each with its settings from the file (or why not).
    queue: VecDeque<(AppId, Result<AppSettings, String>)>,
    /// The app reloading for it ([`Waiter::EveryApp`] waits for its report).
    current: Option<AppId>,
    reports: Vec<ReloadReport>,
    pub(super) waiters: Vec<ReplyTo>,
    /// Clients that do not wait for the end: answered once the file is read and the first app's
    /// reload started (with the final reports, if it is over by then).
    pub(super) not_waiting: Vec<ReplyTo>,
    /// Added apps that are not up yet: the answer waits for them.
    added: Vec<AppId>,
    /// What the file changed, per app, for its report.
    changes: BTreeMap<AppId, (AppChange, Vec<String>)>,
    started: Instant,
}

impl ReloadAll {
    /// Whether it waits for the file.
    pub(super) fn reading(&self) -> bool {
        self.reading
    }

    /// The sockets the apps whose turn has not come yet are to be rolled onto.
    pub(super) fn held_sockets(&self) -> impl Iterator<Item = SocketSet> + '_ {
        self.queue
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok().map(|s| s.sockets))
    }
}

impl Core {
    /// A reload of app `app`, or of every app (in `mode`: a canary reload, its `--continue` and
    /// `--rollback`, are of one app: the only one, when none is named). A client that waits is
    /// answered when it ended (a canary: when it holds); one that does not, at once: each app's
    /// reload started, towards which generation.
    pub(super) fn reload(
        &mut self,
        mut app: Option<AppId>,
        reply: Option<ReplyTo>,
        wait: bool,
        mode: ReloadMode,
        now: Instant,
    ) {
        let waiter = reply.filter(|_| wait);
        if mode != ReloadMode::Rolling && app.is_none() {
            let running: Vec<&App> = self
                .apps
                .iter()
                .filter(|e| !e.removing)
                .map(|e| &e.app)
                .collect();
            match running.as_slice() {
                [only] => app = Some(only.id()),
                _ => {
                    let names: Vec<&str> = running.iter().map(|a| a.name()).collect();
                    let flag = match mode {
                        ReloadMode::Continue => "--continue",
                        ReloadMode::Rollback => "--rollback",
                        _ => "--canary",
                    };
                    let message = format!(
                        "name the app: `supervisor reload APP {flag}` (apps: {})",
                        names.join(", ")
                    );
                    return self.answer(reply, Answer::Refused(message));
                }
            }
        }
        match app {
            Some(id) => {
                let Some(e) = self.entry_mut(id) else {
                    // Gone since the request named it (removed by a reload): said, not dropped.
                    let message = format!("app {id} is no longer run (a reload removed it)");
                    return self.answer(reply, Answer::Refused(message));
                };
                if let (false, Some(why)) = (wait, e.app.reload_refusal(mode)) {
                    // Not waited for: refused now, not answered "started".
                    tracing::warn!(app = %e.app.name(), "reload refused: {why}");
                    return self.answer(reply, Answer::Refused(why));
                }
                e.app.reload_request(mode, waiter.map(Waiter::Client), now);
                self.collect(id, now);
            }
            None => {
                let fresh = self.reload_all.is_none();
                self.reload_every_app(waiter, now);
                if let (true, Some(to), false) = (fresh, reply, wait) {
                    // Answered once the file is read, so that the first app's reload is under way.
                    match &mut self.reload_all {
                        Some(all) if all.reading => return all.not_waiting.push(to),
                        _ => {}
                    }
                }
            }
        }
        if let (Some(to), false) = (reply, wait) {
            let reports = self
                .apps
                .iter()
                .filter(|e| !e.removing && app.is_none_or(|a| a == e.app.id()))
                .map(|e| e.app.started_report())
                .collect();
            self.answer(Some(to), Answer::Reload(reports));
        }
    }

    fn reload_every_app(&mut self, reply: Option<ReplyTo>, now: Instant) {
        if self.phase != Phase::Running {
            self.answer(reply, Answer::Refused("the supervisor is stopping".into()));
            return;
        }
        if self.reload_all.is_some() {
            tracing::info!(
                "reload of every app requested while one runs: queued to run once after it"
            );
            self.queued_all.get_or_insert_with(Vec::new).extend(reply);
            return;
        }
        self.reload_all = Some(ReloadAll {
            reading: true,
            queue: VecDeque::new(),
            current: None,
            reports: Vec::new(),
            waiters: reply.into_iter().collect(),
            not_waiting: Vec::new(),
            added: Vec::new(),
            changes: BTreeMap::new(),
            started: now,
        });
        self.read_config();
    }

    /// The config file was read again: every app waiting for it gets its part, and a reload of
    /// every app applies the whole file. Sockets bound for the read that nobody takes up are
    /// closed again.
    pub(super) fn config_read(&mut self, read: Result<FileRead, String>, now: Instant) {
        self.reading = false;
        if let Ok(file) = &read {
            self.open_sockets.extend(file.sockets());
        }
        let wanting: Vec<AppId> = self
            .apps
            .iter()
            .filter(|e| e.app.wants_config())
            .map(|e| e.app.id())
            .collect();
        let applying = self.reload_all.as_ref().is_some_and(|a| a.reading);
        for id in wanting {
            let Some(name) = self.app(id).map(|a| a.name().to_string()) else {
                continue;
            };
            if applying && matches!(&read, Ok(file) if file.app(&name).is_none()) {
                // The reload of every app removes it below: stopping ends its own reload
                // (and whatever waited behind it) first, so that nothing starts on the way.
                continue;
            }
            let mine = match &read {
                Err(e) => Err(format!("config no longer valid, nothing changed: {e}")),
                Ok(file) => match file.app(&name) {
                    Some(a) => a
                        .settings
                        .clone()
                        .map_err(|e| format!("nothing changed: {e}")),
                    None => Err(format!(
                        "app {name} is no longer in the config file: `supervisor reload` (of every app) removes it"
                    )),
                },
            };
            if mine.is_ok() {
                self.out.push(Action::ConfigApplied(Some(name)));
            }
            if let Some(e) = self.entry_mut(id) {
                e.app.config_read(mine, now);
            }
            self.collect(id, now);
        }
        // Only the reload of every app that waited for this read applies it: one that began
        // meanwhile (queued behind the one an app's report just ended) reads the file again,
        // after what this read did to the apps.
        if applying && self.reload_all.as_ref().is_some_and(|a| a.reading) {
            self.apply_file(read, now);
        }
    }

    /// The reload of every app applies the file read: refused as a whole, or apps removed,
    /// added and queued to roll one at a time.
    fn apply_file(&mut self, read: Result<FileRead, String>, now: Instant) {
        let refusal = match &read {
            Err(e) => Some(format!("config no longer valid, nothing changed: {e}")),
            Ok(file) => {
                let mut why = file.refused.clone();
                why.extend(file.apps.iter().filter_map(|a| {
                    a.settings
                        .as_ref()
                        .err()
                        .map(|e| format!("app {}: {e}", a.name))
                }));
                (!why.is_empty()).then(|| {
                    format!(
                        "the file cannot be applied while the supervisor runs, nothing changed: {}",
                        why.join("; ")
                    )
                })
            }
        };
        let present: Vec<AppId> = self
            .apps
            .iter()
            .filter(|e| !e.removing)
            .map(|e| e.app.id())
            .collect();
        let (file, refusal) = match (read, refusal) {
            (Ok(file), None) => (file, None),
            (_, why) => (FileRead::default(), why),
        };
        if let Some(why) = refusal {
            tracing::error!("{why}");
            if let Some(all) = &mut self.reload_all {
                all.reading = false;
                all.queue = present
                    .into_iter()
                    .map(|id| (id, Err(why.clone())))
                    .collect();
            }
            self.next_in_reload_all(now);
            self.answer_not_waiting();
            return;
        }
        let mut changes = BTreeMap::new();
        let mut queue = VecDeque::new();
        let mut reports = Vec::new();
        // Removed: drain, sockets closed at once, forgotten once stopped.
        for id in &present {
            let Some(e) = self.entry_mut(*id) else {
                continue;
            };
            if file.app(e.app.name()).is_some() {
                continue;
            }
            e.removing = true;
            let workers = e.app.worker_count();
            let stopped = e.app.phase() == Phase::Stopped;
            e.app
                .stop_by_hand(None, "it was removed from the config file", now);
            let report = removed_report(&e.app, workers);
            tracing::info!(app = %report.app, workers, "removed from the config file: draining");
            reports.push(report);
            if stopped {
                // Stopped by hand already: nothing to drain, forgotten now.
                tracing::info!(app = %e.app.name(), "removed");
                self.apps.retain(|e| e.app.id() != *id);
            } else {
                self.collect(*id, now);
            }
        }
        // Added and kept, in file order.
        let mut order: Vec<AppId> = Vec::with_capacity(file.apps.len());
        let mut added = Vec::new();
        for a in &file.apps {
            let Ok(settings) = &a.settings else { continue };
            match self
                .apps
                .iter()
                .find(|e| !e.removing && e.app.name() == a.name)
            {
                Some(e) => {
                    let id = e.app.id();
                    order.push(id);
                    queue.push_back((id, Ok(settings.clone())));
                    if !a.changed.is_empty() {
                        changes.insert(id, (AppChange::Changed, a.changed.clone()));
                    }
                }
                None => {
                    let id = self.next_app;
                    self.next_app += 1;
                    let mut app = App::added(id, settings.clone());
                    app.wait_until_up(Waiter::EveryApp);
                    if settings.singleton.is_some() {
                        self.out.push(Action::WatchLease(id));
                    }
                    tracing::info!(app = %a.name, "added to the config file: starting");
                    self.apps.push(Entry {
                        app,
                        after: Vec::new(),
                        up: false,
                        removing: false,
                    });
                    order.push(id);
                    added.push(id);
                    changes.insert(id, (AppChange::Added, Vec::new()));
                }
            }
        }
        // `after` by name, now that every app has an id; the running config's order.
        for a in &file.apps {
            let after: Vec<AppId> = a
                .after
                .iter()
                .filter_map(|n| self.app_named(n).map(App::id))
                .collect();
            if let Some(id) = self.app_named(&a.name).map(App::id)
                && let Some(e) = self.entry_mut(id)
            {
                e.after = after;
            }
        }
        self.apps.sort_by_key(|e| {
            order
                .iter()
                .position(|id| *id == e.app.id())
                .unwrap_or(usize::MAX)
        });
        self.out.push(Action::ConfigApplied(None));
        if let Some(all) = &mut self.reload_all {
            all.reading = false;
            all.queue = queue;
            all.reports.extend(reports);
            all.added = added;
            all.changes = changes;
        }
        self.next_in_reload_all(now);
        self.answer_not_waiting();
    }

    /// The clients of a reload of every app that do not wait: each app's reload started,
    /// towards which generation.
    fn answer_not_waiting(&mut self) {
        let Some(all) = &mut self.reload_all else {
            return;
        };
        let clients = std::mem::take(&mut all.not_waiting);
        let reports: Vec<ReloadReport> = self
            .apps
            .iter()
            .filter(|e| !e.removing)
            .map(|e| e.app.started_report())
            .collect();
        for to in clients {
            self.answer(Some(to), Answer::Reload(reports.clone()));
        }
    }

    /// Reloads the next app of the reload of every app, or answers when none is left and every
    /// added app is up (or failed to start).
    pub(super) fn next_in_reload_all(&mut self, now: Instant) {
        loop {
            let Some(all) = &mut self.reload_all else {
                return;
            };
            if all.reading || all.current.is_some() {
                return;
            }
            let Some((id, settings)) = all.queue.pop_front() else {
                break;
            };
            let Some(e) = self.entry_mut(id).filter(|e| !e.removing) else {
                continue;
            };
            e.app.reload_into(settings, vec![Waiter::EveryApp], now);
            if let Some(all) = &mut self.reload_all {
                all.current = Some(id);
            }
            self.collect(id, now);
        }
        if self
            .reload_all
            .as_ref()
            .is_some_and(|a| !a.added.is_empty())
        {
            return;
        }
        let Some(mut all) = self.reload_all.take() else {
            return;
        };
        // The running config's order; removed apps last.
        let position = |name: &str| {
            self.apps
                .iter()
                .position(|e| !e.removing && e.app.name() == name)
                .unwrap_or(usize::MAX)
        };
        all.reports.sort_by_key(|r| position(&r.app));
        for to in all.waiters.into_iter().chain(all.not_waiting) {
            self.out.push(Action::Reply {
                to,
                answer: Answer::Reload(all.reports.clone()),
            });
        }
        if let Some(waiters) = self.queued_all.take() {
            let mut first = waiters.into_iter();
            self.reload_every_app(first.next(), now);
            if let Some(all) = &mut self.reload_all {
                all.waiters.extend(first);
            }
        }
    }

    /// App `id`'s reload ended: answer its clients, or go on with the reload of every app.
    pub(super) fn reloaded(
        &mut self,
        id: AppId,
        mut report: ReloadReport,
        waiters: Vec<Waiter>,
        now: Instant,
    ) {
        let mut next = false;
        for waiter in waiters {
            match waiter {
                Waiter::Client(to) => self.out.push(Action::Reply {
                    to,
                    answer: Answer::Reload(vec![report.clone()]),
                }),
                Waiter::EveryApp => {
                    if let Some(all) = &mut self.reload_all
                        && all.current == Some(id)
                    {
                        if let Some((change, keys)) = all.changes.get(&id) {
                            report.change = Some(*change);
                            report.changed = keys.clone();
                        }
                        all.reports.push(report.clone());
                        all.current = None;
                        next = true;
                    }
                }
            }
        }
        if next {
            self.next_in_reload_all(now);
        }
    }

    /// An app the reload of every app added is up (or failed to start): its report.
    pub(super) fn added_app_started(
        &mut self,
        id: AppId,
        outcome: Result<(Vec<i32>, Option<String>), String>,
        now: Instant,
    ) {
        let Some(app) = self.app(id) else { return };
        let (name, generation) = (app.name().to_string(), app.generation());
        let Some(all) = &mut self.reload_all else {
            return;
        };
        if !all.added.contains(&id) {
            return;
        }
        all.added.retain(|a| *a != id);
        let took = now.saturating_duration_since(all.started).as_secs_f64();
        let (outcome, reason, note, slots) = match outcome {
            Ok((pids, note)) => (
                ReloadOutcome::Ok,
                None,
                note,
                pids.into_iter()
                    .enumerate()
                    .map(|(slot, new_pid)| SlotReplacement {
                        slot,
                        old_pid: None,
                        new_pid,
                        ready_secs: took,
                    })
                    .collect(),
            ),
            Err(why) => (ReloadOutcome::Aborted, Some(why), None, Vec::new()),
        };
        all.reports.push(ReloadReport {
            app: name,
            generation,
            outcome,
            reason,
            note,
            slots,
            duration_secs: took,
            change: Some(AppChange::Added),
            changed: Vec::new(),
        });
        self.next_in_reload_all(now);
    }
}

/// The report of an app removed from the file: its workers drain, its sockets are closed.
fn removed_report(app: &App, workers: usize) -> ReloadReport {
    ReloadReport {
        app: app.name().to_string(),
        generation: app.generation(),
        outcome: ReloadOutcome::Ok,
        reason: None,
        note: Some(format!(
            "{workers} worker(s) drain (kill_timeout {}); its sockets are closed",
            crate::units::span(app.settings().spec.kill_timeout)
        )),
        slots: Vec::new(),
        duration_secs: 0.0,
        change: Some(AppChange::Removed),
        changed: Vec::new(),
    }
}
