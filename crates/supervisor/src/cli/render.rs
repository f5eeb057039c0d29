//! What the client commands print for people: the `status` screen, reload reports and the
//! answers to `restart`, `scale`, `stop` and `upgrade`. Pure functions from the control
//! protocol's types to text (the `--json` forms are the types themselves, serialized).

use std::time::Duration;

use super::table::Table;
use crate::control::protocol::{
    AppChange, AppStatus, CanaryStage, ReloadOutcome, ReloadProgress, ReloadReport, Response,
    SingletonStatus, StatusReport,
};
use crate::units;

/// The `status` screen: the supervisor, then each app with its listeners and workers.
/// The supervisor's own figures, as `status` and `monit` head their view with them:
/// `pid 4200  up 1h 2m  cpu 0.3%  mem 12.1 MB  running`.
pub(super) fn supervisor_figures(r: &StatusReport) -> String {
    let s = &r.supervisor;
    format!(
        "pid {}  up {}  cpu {:.1}%  mem {}  {}",
        s.pid,
        units::duration(s.uptime_secs),
        s.cpu_percent,
        units::bytes(s.rss_bytes),
        r.phase
    )
}

pub(super) fn render_status(r: &StatusReport) -> String {
    let mut out = format!(
        "supervisor {} {}\nconfig {}",
        r.version,
        supervisor_figures(r),
        r.config
    );
    if !r.name.is_empty() {
        out.push_str(&format!("  name {}", r.name));
    }
    out.push('\n');
    if !r.build.is_empty() {
        out.push_str(&format!("build {}  binary {}\n", r.build, r.binary));
    }
    if let Some(at) = r.upgrades.last_at_unix {
        let when = chrono::DateTime::from_timestamp(at as i64, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "upgraded in place {} time(s), last at {when} from {}\n",
            r.upgrades.count,
            r.upgrades.last_from.as_deref().unwrap_or("?")
        ));
    }
    if let Some(e) = &r.upgrades.last_error {
        out.push_str(&format!("last upgrade attempt failed: {e}\n"));
    }
    for app in &r.apps {
        out.push('\n');
        out.push_str(&render_app(app));
    }
    out
}

/// `scope cluster: holder host:pid token N (this host|standby)`.
fn render_singleton(s: &SingletonStatus) -> String {
    let holder = match (&s.holder, s.token) {
        (Some(h), Some(t)) => format!("holder {h} token {t}"),
        (Some(h), None) => format!("holder {h}"),
        _ => "holder none".to_string(),
    };
    format!(
        "scope cluster: {holder} ({}), lease ttl {}\n",
        s.role,
        units::span(Duration::try_from_secs_f64(s.lease_ttl_secs).unwrap_or_default())
    )
}

/// One app: its phase, singleton lease, listeners, workers table, memory limit and reloads.
fn render_app(a: &AppStatus) -> String {
    let mut out = format!("app {}  generation {}  {}", a.name, a.generation, a.phase);
    if !a.listeners.is_empty() {
        out.push_str(&format!("  balance {}", a.balance));
    }
    if a.removed {
        out.push_str(" (removed from the config file: its workers drain)");
    } else if a.phase == crate::core::Phase::Stopped {
        out.push_str(&format!(
            " (sockets closed: `supervisor start {}` starts it)",
            a.name
        ));
    }
    if !a.waiting_for.is_empty() {
        out.push_str(&format!(" for {}", a.waiting_for.join(", ")));
    }
    out.push('\n');
    if let Some(s) = &a.singleton {
        out.push_str(&render_singleton(s));
    }
    for l in &a.listeners {
        out.push_str(&format!("listen {} {} (fd {})\n", l.name, l.address, l.fd));
    }
    // Connections per worker, for an app with a TCP listener (before `status`, the last).
    let conns = a.workers.iter().any(|w| w.connections.is_some());
    let mut headers = vec![
        "slot", "name", "pid", "gen", "state", "uptime", "restarts", "cpu", "mem", "status",
    ];
    if conns {
        headers.insert(9, "conns");
    }
    let mut t = Table::new(&headers);
    let mut row = |mut cells: Vec<String>, connections: Option<u64>| {
        if conns {
            cells.insert(9, connections.map_or("-".into(), |n| n.to_string()));
        }
        t.row(cells);
    };
    for w in &a.workers {
        let over = w
            .over_max_memory_secs
            .map(|secs| format!("above max_memory for {}", units::duration(secs)));
        let hung = w.hung.then(|| "hung (missed its watchdog)".to_string());
        let lag = w
            .event_loop_lag_ms
            .map(|ms| format!("event loop lag {}", units::duration(ms / 1000.0)));
        let status = [hung, over, lag, w.status_text.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        row(
            vec![
                w.slot.to_string(),
                w.name.clone(),
                w.process.pid.to_string(),
                w.generation.to_string(),
                w.state.to_string(),
                units::duration(w.process.uptime_secs),
                w.restarts.to_string(),
                format!("{:.1}%", w.process.cpu_percent),
                units::bytes(w.process.rss_bytes),
                status,
            ],
            w.connections,
        );
    }
    for s in &a.waiting {
        row(
            vec![
                s.slot.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                s.state.to_string(),
                "-".into(),
                s.restarts.to_string(),
                "-".into(),
                "-".into(),
                format!(
                    "restart in {}: {}",
                    units::duration(s.restart_in_secs),
                    s.last_exit
                ),
            ],
            None,
        );
    }
    if !a.workers.is_empty() || !a.waiting.is_empty() {
        out.push_str(&t.to_string());
    }
    if let Some(m) = &a.max_memory {
        out.push_str(&format!(
            "max_memory {} (grace {}): recycled {} (memory)",
            units::size(m.bytes),
            units::span(Duration::try_from_secs_f64(m.grace_secs).unwrap_or_default()),
            a.memory_recycles
        ));
    } else if a.memory_recycles > 0 {
        out.push_str(&format!("recycled {} (memory)", a.memory_recycles));
    }
    if a.max_memory.is_some() || a.memory_recycles > 0 {
        if a.memory_recycle_failures > 0 {
            out.push_str(&format!(
                ", {} replacement(s) failed",
                a.memory_recycle_failures
            ));
        }
        out.push('\n');
    }
    if a.watchdog_replacements > 0 || a.age_replacements > 0 || a.watchdog_timeouts > 0 {
        out.push_str(&format!(
            "replaced: {} hung (watchdog missed {}), {} for max_age\n",
            a.watchdog_replacements, a.watchdog_timeouts, a.age_replacements
        ));
    }
    if let Some(r) = &a.memory_recycling {
        let why = match r.reason {
            crate::core::report::ReplaceReason::Memory => {
                format!(
                    "for memory: pid {} ({})",
                    r.old_pid,
                    units::bytes(r.rss_bytes)
                )
            }
            crate::core::report::ReplaceReason::Watchdog => format!("hung: pid {}", r.old_pid),
            crate::core::report::ReplaceReason::MaxAge => {
                format!("for max_age: pid {}", r.old_pid)
            }
        };
        out.push_str(&format!(
            "replacing slot {} {why} -> {} starting for {}\n",
            r.slot,
            r.new_pid
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "new worker".into()),
            units::duration(r.elapsed_secs)
        ));
    }
    if let Some(p) = &a.reload_in_progress {
        out.push_str(&render_progress(&a.name, p));
    }
    if let Some(l) = &a.last_reload {
        let why = l
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let took = units::duration(l.duration_secs);
        out.push_str(&match l.outcome {
            // A rollback's generation is the one that serves again, not the canary's.
            ReloadOutcome::RolledBack => format!(
                "last reload: canary rolled back, generation {} serves again, in {took}{why}\n",
                l.generation
            ),
            _ => format!(
                "last reload: generation {} {} in {took}{why}\n",
                l.generation, l.outcome
            ),
        });
    }
    out
}

/// What a reload of every app did to the apps, in one line (`None` when it added, removed and
/// changed nothing): `added worker; removed old; changed web (listen)`.
pub(super) fn render_reload_changes(reports: &[ReloadReport]) -> Option<String> {
    let of = |kind: AppChange| -> Vec<String> {
        reports
            .iter()
            .filter(|r| r.change == Some(kind))
            .map(|r| match kind {
                AppChange::Changed => format!("{} ({})", r.app, r.changed.join(", ")),
                _ => r.app.clone(),
            })
            .collect()
    };
    let parts: Vec<String> = [AppChange::Added, AppChange::Removed, AppChange::Changed]
        .into_iter()
        .map(|k| (k, of(k)))
        .filter(|(_, apps)| !apps.is_empty())
        .map(|(k, apps)| format!("{k} {}", apps.join(", ")))
        .collect();
    (!parts.is_empty()).then(|| format!("config applied: {}\n", parts.join("; ")))
}

/// A reload of several apps that none of them ran, for one reason (an invalid file, a change
/// only a restart applies): the reason once. `None` otherwise.
pub(super) fn render_reload_refused(reports: &[ReloadReport]) -> Option<String> {
    let reason = reports.first()?.reason.as_ref()?;
    let all_same = reports.len() > 1
        && reports.iter().all(|r| {
            r.outcome == crate::control::protocol::ReloadOutcome::Aborted
                && r.slots.is_empty()
                && r.reason.as_ref() == Some(reason)
        });
    all_same.then(|| {
        let apps: Vec<&str> = reports.iter().map(|r| r.app.as_str()).collect();
        format!(
            "reload aborted for every app ({}): {reason}\n",
            apps.join(", ")
        )
    })
}

/// The line of `status` on a reload under way: a canary that holds says what to do next.
fn render_progress(app: &str, p: &ReloadProgress) -> String {
    let queued = if p.queued { " (one more queued)" } else { "" };
    let elapsed = units::duration(p.elapsed_secs);
    if let Some(of) = p.rolling_back {
        return format!(
            "rolling back generation {of}'s canary: generation {} back on {}/{} slot(s), {elapsed}{queued}\n",
            p.generation, p.done, p.total
        );
    }
    let Some(c) = &p.canary else {
        return format!(
            "reload to generation {} in progress: {}/{} slots, {elapsed}{queued}\n",
            p.generation, p.done, p.total
        );
    };
    let canary = match (c.slot, c.pid) {
        (Some(slot), Some(pid)) => format!("slot {slot}, pid {pid}"),
        (Some(slot), None) => format!("slot {slot}"),
        _ => "starting".to_string(),
    };
    match c.stage {
        CanaryStage::Starting => format!(
            "canary reload to generation {}: canary starting ({canary}), {elapsed}\n",
            p.generation
        ),
        CanaryStage::Held => {
            let next = match c.continues_in_secs {
                Some(s) => format!("continues by itself in {}", units::duration(s)),
                None => format!(
                    "`reload {app} --continue` rolls the rest, `reload {app} --rollback` takes it back"
                ),
            };
            format!(
                "canary reload to generation {} HELD for {}: canary {canary}, {} of {} slots; {next}\n",
                p.generation,
                units::duration(c.held_secs),
                p.done,
                p.total
            )
        }
        CanaryStage::Continued => format!(
            "canary reload to generation {} continued: {}/{} slots, {elapsed}{queued}\n",
            p.generation, p.done, p.total
        ),
    }
}

/// One app's finished reload: outcome, reason, note and each slot's replacement; an app the
/// reload added or removed says so; a canary that holds, and a rollback, say so.
pub(super) fn render_reload(r: &ReloadReport) -> String {
    let took = units::duration(r.duration_secs);
    let mut out = match r.change {
        _ if r.outcome == ReloadOutcome::Held => format!(
            "{}: canary of generation {} ready in {took}: the reload holds\n",
            r.app, r.generation
        ),
        _ if r.outcome == ReloadOutcome::RolledBack => format!(
            "{}: rolled back to generation {} in {took}\n",
            r.app, r.generation
        ),
        Some(AppChange::Added) => format!(
            "{}: added: started in generation {}: {} in {took}\n",
            r.app, r.generation, r.outcome
        ),
        Some(AppChange::Removed) => format!("{}: removed: {}\n", r.app, r.outcome),
        Some(AppChange::Changed) if !r.changed.is_empty() => format!(
            "{}: reload to generation {}: {} in {took} (changed: {})\n",
            r.app,
            r.generation,
            r.outcome,
            r.changed.join(", ")
        ),
        _ => format!(
            "{}: reload to generation {}: {} in {took}\n",
            r.app, r.generation, r.outcome
        ),
    };
    if let Some(reason) = &r.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    if let Some(note) = &r.note {
        out.push_str(&format!("note: {note}\n"));
    }
    if !r.slots.is_empty() {
        let mut t = Table::new(&["slot", "old pid", "new pid", "ready in"]);
        for s in &r.slots {
            t.row(vec![
                s.slot.to_string(),
                s.old_pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.new_pid.to_string(),
                units::duration(s.ready_secs),
            ]);
        }
        out.push_str(&t.to_string());
    }
    out
}

/// One line per app of a `reload --no-wait`: the reload it started (or queued).
pub(super) fn render_reload_request(r: &ReloadReport) -> String {
    let why = r
        .reason
        .as_deref()
        .map(|why| format!(": {why}"))
        .unwrap_or_default();
    format!(
        "{}: reload to generation {} {}{why}\n",
        r.app, r.generation, r.outcome
    )
}

/// The answer to `restart`, `scale`, `stop`, `stop APP`, `start APP` or `reset`; `None` for
/// any other answer.
pub(super) fn render_answer(answer: &Response) -> Option<String> {
    match answer {
        Response::Restarted {
            app,
            generation,
            workers,
        } => Some(format!(
            "{app}: restarting {workers} worker(s) in generation {generation} (no readiness gating; `status {app}` shows them)\n"
        )),
        Response::Scaled {
            app,
            from,
            to,
            note,
        } => {
            let mut out = format!("{app}: scaled from {from} to {to} worker(s)\n");
            if let Some(note) = note {
                out.push_str(&format!("note: {note}\n"));
            }
            Some(out)
        }
        Response::Stopped => Some("stopped\n".into()),
        Response::AppStopped {
            app,
            workers,
            already,
        } => Some(if *already {
            format!("{app}: stopped already\n")
        } else {
            format!(
                "{app}: stopped ({workers} worker(s) drained); its sockets are closed, connections are refused; `supervisor start {app}` starts it again\n"
            )
        }),
        Response::AppStarted {
            app,
            pids,
            already,
            note,
        } => {
            let pids = pids.iter().map(i32::to_string).collect::<Vec<_>>();
            let mut out = if *already {
                format!("{app}: running already (pids {})\n", pids.join(", "))
            } else if pids.is_empty() {
                format!("{app}: started\n")
            } else {
                format!(
                    "{app}: started, {} worker(s) ready (pids {})\n",
                    pids.len(),
                    pids.join(", ")
                )
            };
            if let Some(note) = note {
                out.push_str(&format!("note: {note}\n"));
            }
            Some(out)
        }
        Response::Reset { apps } => Some(format!("restart counters reset: {}\n", apps.join(", "))),
        _ => None,
    }
}

/// The outcome of `upgrade`: the supervisor's status before and after the new binary took over.
pub(super) fn render_upgraded(before: &StatusReport, after: &StatusReport) -> String {
    let workers: usize = after.apps.iter().map(|a| a.workers.len()).sum();
    format!(
        "upgraded in place: pid {} (was {}), {} {} -> {} {} ({}), {workers} worker(s) kept\n",
        after.supervisor.pid,
        before.supervisor.pid,
        before.version,
        before.build,
        after.version,
        after.build,
        after.binary
    )
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
