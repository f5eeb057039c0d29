//! `supervisor check`: validate the config file, run `start`'s own preflight (each listener, the
//! metrics address, the control socket and its directory) without starting anything, and print
//! what it would run, for people or as JSON.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::config::{Config, JobAction};
use crate::control::server::ControlError;
use crate::daemon::StartupError;
use crate::daemon::preflight::preflight;
use crate::units;

/// `check`: the verdict and what `start` would run; a failed check is an error, or with `--json`
/// a JSON verdict on stdout and exit code 1. A Redis cron backend is asked for its topology:
/// what it finds wrong is shown, not a failed check (as at `start`, jobs wait for the backend).
pub(super) async fn check(path: &Path, json: bool) -> Result<ExitCode> {
    let checked = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|c| Ok(try_start(&c).map(|note| (c, note))?));
    let (c, note) = match checked {
        Ok(ok) => ok,
        Err(e) if json => {
            // Scripts get the verdict on stdout too, as JSON, besides the exit code.
            let v = serde_json::json!({ "config": path, "ok": false, "error": format!("{e:#}") });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e),
    };
    // With a supervisor running the file: what its reload would refuse that the file alone
    // cannot say.
    let warnings = match note {
        Some(_) => reload_refusals(&c).await,
        None => Vec::new(),
    };
    // The cron URL may carry a password: shown redacted, like in every log line.
    let cron = cronlock::redact_url(&c.cron_url);
    let topology = super::jobs::topology(&c.cron_url).await;
    if json {
        let apps: Vec<serde_json::Value> = c
            .apps
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "program": a.worker.program,
                    "args": a.worker.args,
                    "instances": a.worker.instances,
                    "runtime": a.worker.runtime,
                    "readiness": a.worker.readiness,
                    "ready_timeout_ms": a.worker.ready_timeout.as_millis() as u64,
                    "kill_timeout_ms": a.worker.kill_timeout.as_millis() as u64,
                    "listen": a.listeners.iter().map(|l| serde_json::json!({
                        "name": l.name, "address": l.addr.to_string(),
                    })).collect::<Vec<_>>(),
                    "balance": a.balance,
                    "after": a.after,
                    "canary_hold_ms": a.reload.canary_hold.map(|d| d.as_millis() as u64),
                    "max_memory": a.memory.max_bytes,
                    "max_memory_grace_ms": a.memory.grace.as_millis() as u64,
                    "scope": if a.singleton.is_some() { "cluster" } else { "host" },
                    "lease_ttl_ms": a.singleton.map(|p| p.lease_ttl.as_millis() as u64),
                    "standby_poll_ms": a.singleton.map(|p| p.standby_poll.as_millis() as u64),
                    "cron_backend": a.worker.cron_backend,
                    "user": a.worker.confine.user.as_ref().map(|u| u.uid),
                    "cgroup_unavailable": a.worker.confine.cgroup.as_ref().and_then(crate::sys::cgroup::unavailable),
                    "watch": a.triggers.watch.as_ref().map(|w| serde_json::json!({
                        "paths": w.paths, "ignore": w.ignore,
                        "delay_ms": w.delay.as_millis() as u64,
                    })),
                    "cron_restart": a.triggers.cron_restart.as_ref().map(|c| serde_json::json!({
                        "schedule": c.expr, "timezone": c.timezone,
                    })),
                })
            })
            .collect();
        let jobs: Vec<serde_json::Value> = c
            .jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "name": j.spec.name,
                    "schedule": j.spec.schedule,
                    "timezone": j.spec.timezone.name(),
                    "kind": j.action.kind(),
                    "run": job_action_text(&j.action),
                    "timeout_ms": j.timeout.as_millis() as u64,
                    "kill_timeout_ms": j.kill_timeout.as_millis() as u64,
                    "lease_ttl_ms": j.spec.lease_ttl.as_millis() as u64,
                    "overlap": j.spec.overlap,
                    "misfire": j.spec.misfire,
                })
            })
            .collect();
        let v = serde_json::json!({
            "config": path,
            "ok": true,
            "apps": apps,
            "jobs": jobs,
            "name": c.name,
            "control_socket": c.control_socket,
            "metrics": c.metrics.map(|a| a.to_string()),
            "cron_backend": cron,
            "cron_topology": topology.as_ref().map(super::jobs::topology_json).transpose()?,
            "note": note,
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: ok", path.display());
    for app in &c.apps {
        let w = &app.worker;
        let args: String = w.args.iter().map(|a| format!(" {a}")).collect();
        println!("app {}", app.name);
        println!("  program:        {}{args}", w.program.display());
        println!("  instances:      {}", w.instances);
        println!("  runtime:        {}", w.runtime);
        if let Some(u) = &w.confine.user {
            println!("  user:           {}, gid {}", u.describe(), u.gid);
        }
        for r in &w.confine.rlimits {
            println!(
                "  rlimit:         {} {}/{}",
                r.resource.key(),
                crate::config::show_limit(r.soft),
                crate::config::show_limit(r.hard)
            );
        }
        if let Some(limits) = &w.confine.cgroup {
            let files: Vec<String> = limits
                .files()
                .iter()
                .map(|(_, f, v)| format!("{f}={v}"))
                .collect();
            println!("  cgroup:         {}", files.join(", "));
            if let Some(why) = crate::sys::cgroup::unavailable(limits) {
                println!("  warning:        [app.cgroup] is not applied on this host: {why}");
            }
        }
        if w.cron_backend {
            println!("  cron backend:   handed to its workers (SUPERVISOR_CRON_URL)");
        }
        for l in &app.listeners {
            println!("  listen:         {} {}", l.name, l.addr);
        }
        let tcp = app
            .listeners
            .iter()
            .any(|l| matches!(l.addr, crate::config::ListenAddr::Tcp(_)));
        match app.balance {
            crate::config::Balance::Shared => {}
            b if !tcp => println!(
                "  note:           balance = \"{b}\" applies to TCP listeners: this app has none (a Unix socket keeps one shared queue)"
            ),
            b => println!(
                "  balance:        {b} (a socket per worker, {})",
                if b == crate::config::Balance::Sticky {
                    "picked by the client's address"
                } else {
                    "picked by the connection's addresses and ports"
                }
            ),
        }
        if !app.after.is_empty() {
            println!("  after:          {}", app.after.join(", "));
        }
        if let Some(p) = app.singleton {
            println!(
                "  scope:          cluster (lease ttl {}, standby poll {})",
                units::span(p.lease_ttl),
                units::span(p.standby_poll)
            );
        }
        if let Some(w) = &app.triggers.watch {
            let paths: Vec<String> = w.paths.iter().map(|p| p.display().to_string()).collect();
            let ignore = if w.ignore.is_empty() {
                String::new()
            } else {
                format!(", ignoring {}", w.ignore.join(" "))
            };
            println!(
                "  watch:          {} (reload {} after the last change{ignore})",
                paths.join(", "),
                units::span(w.delay)
            );
        }
        if let Some(c) = &app.triggers.cron_restart {
            println!(
                "  cron_restart:   {} ({}): rolling reload",
                c.expr, c.timezone
            );
        }
        if let Some(hold) = app.reload.canary_hold {
            println!(
                "  canary_hold:    {}: every reload replaces one slot, holds, then the rest",
                units::span(hold)
            );
        }
        if let Some(max) = app.memory.max_bytes {
            println!(
                "  max_memory:     {} (grace {})",
                units::size(max),
                units::span(app.memory.grace)
            );
        }
    }
    for j in &c.jobs {
        println!(
            "job {}  {} {}  {}: {}",
            j.spec.name,
            j.spec.schedule,
            j.spec.timezone.name(),
            j.action.kind(),
            job_action_text(&j.action)
        );
    }
    println!("name:             {}", c.name);
    println!("control socket:   {}", c.control_socket.display());
    if let Some(addr) = c.metrics {
        println!("metrics:          http://{addr}/metrics");
    }
    match &topology {
        Some(t) => print!("{}", super::jobs::render_topology("cron backend:     ", t)),
        None => println!("cron backend:     {cron}"),
    }
    if let Some(note) = note {
        println!("note: {note}");
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the running supervisor's reload of this file would refuse, by app: a `balance` changed
/// between one shared socket and a socket per worker on an address it serves (found in its
/// status; nothing when it does not answer).
async fn reload_refusals(c: &Config) -> Vec<String> {
    let request = crate::control::protocol::Request::Status { app: None };
    let answer =
        crate::control::client::request(&c.control_socket, request, Duration::from_secs(5));
    let Ok(crate::control::protocol::Response::Status(running)) = answer.await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for app in &c.apps {
        let Some(now) = running.apps.iter().find(|a| a.name == app.name) else {
            continue;
        };
        if now.phase == crate::core::Phase::Stopped
            || now.balance.per_slot() == app.balance.per_slot()
        {
            continue;
        }
        // A listener on the address the file names (port 0: on the same IP, the port it was
        // given), as the reload shares an address it keeps.
        let kept = app.listeners.iter().find(|l| {
            let crate::config::ListenAddr::Tcp(file) = l.addr else {
                return false;
            };
            now.listeners.iter().any(|r| {
                let bound: Option<std::net::SocketAddr> = r.address.parse().ok();
                bound.is_some_and(|b| b == file || (file.port() == 0 && b.ip() == file.ip()))
            })
        });
        if let Some(l) = kept {
            out.push(format!(
                "app {name}: `balance` changes from {from} to {to} on {addr}, which the running supervisor serves: its reload refuses that; `supervisor stop {name}`, `supervisor reload`, then `supervisor start {name}`",
                name = app.name,
                from = now.balance,
                to = app.balance,
                addr = l.addr,
            ));
        }
    }
    out
}

/// What `start` would find before starting a worker: the same [`preflight`] (every listener
/// binds, closed again at once; the control socket can be created). With a supervisor already
/// running on the control socket its ports are taken by design (`check` before `reload`):
/// nothing is bound, and the returned note says so.
fn try_start(c: &Config) -> Result<Option<String>, StartupError> {
    match preflight(c) {
        Ok(bound) => {
            drop(bound);
            Ok(None)
        }
        Err(StartupError::Control(ControlError::InUse { socket, .. })) => Ok(Some(format!(
            "a supervisor is running on control socket {}: its listeners were not bound again",
            socket.display()
        ))),
        Err(e) => Err(e),
    }
}

/// What a `[[job]]` runs, in one line: the command line, or `POST /path -> app`.
fn job_action_text(a: &JobAction) -> String {
    match a {
        JobAction::Command { program, args, .. } => {
            let args: String = args.iter().map(|a| format!(" {a}")).collect();
            format!("{}{args}", program.display())
        }
        JobAction::Http { method, path, app } => {
            format!("{method} {path} -> app {app}")
        }
    }
}
