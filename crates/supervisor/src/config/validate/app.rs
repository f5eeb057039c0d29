//! `[[app]]`: its name, worker program and environment, `[app.restart]` and `[app.reload]`,
//! memory recycling, the cluster-singleton lease, and `after` between apps. Every value is read
//! spanned, so every error about an app's key carries its line.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use super::super::human::HumanDuration;
use super::super::model::{
    DEFAULT_LEASE_TTL, MAX_INSTANCES, MemoryPolicy, Readiness, ReloadPolicy, RestartPolicy,
    Runtime, Scope, SingletonPolicy, WorkerSpec,
};
use super::super::raw::{RawApp, RawReload, RawRestart, Spanned};
use super::bounds::{MAX_MEMORY, MAX_NAME, MAX_RESTARTS, MAX_STRINGS, MAX_WAIT, MAX_WINDOW};
use super::program::runs_node;
use super::{AppConfig, ConfigError, Validator, confine, health, resolve, triggers};

/// Where an app's values are in the file, for the checks across apps (unique names and
/// addresses, `after`).
pub(super) struct AppSpans {
    /// `name`.
    pub(super) name: Range<usize>,
    /// Each listener's `address` or `path`, in order.
    pub(super) listeners: Vec<Range<usize>>,
    /// `after` as a whole (for a cycle).
    after: Option<Range<usize>>,
    /// Each name in `after`.
    after_each: Vec<Range<usize>>,
}

impl Validator<'_> {
    /// One `[[app]]` table at `key` (`app[0]`), on its own.
    pub(super) fn app(
        &self,
        key: &str,
        mut ra: RawApp,
        log_dir: &std::path::Path,
    ) -> Result<(AppConfig, AppSpans), ConfigError> {
        let name_span = ra.name.span();
        let name = ra.name.get_ref().clone();
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            let shown: String = name.chars().take(MAX_NAME).collect();
            let more = if name.chars().count() > MAX_NAME {
                "..."
            } else {
                ""
            };
            return Err(self.err_at(
                name_span,
                format!("{key}.name"),
                format!(
                    "{shown:?}{more}: use letters, digits, '-' and '_', 1 to {MAX_NAME} of \
                     them (worker names are `name.slot`)"
                ),
            ));
        }
        let (mut listeners, listener_spans) = self.listeners(key, &ra.listen)?;
        let balance = ra.balance.unwrap_or_default();
        for l in &mut listeners {
            if matches!(l.addr, crate::config::ListenAddr::Tcp(_)) {
                l.balance = balance;
            }
        }
        let restart = self.restart(key, &ra.restart)?;
        let (after, after_span, after_each) = match ra.after.take() {
            None => (Vec::new(), None, Vec::new()),
            Some(list) => {
                let span = list.span();
                let (names, spans) = list
                    .into_inner()
                    .into_iter()
                    .map(|n| {
                        let span = n.span();
                        (n.into_inner(), span)
                    })
                    .unzip();
                (names, Some(span), spans)
            }
        };
        let raw_reload = std::mem::take(&mut ra.reload);
        if let Some(max) = ra
            .max_memory
            .as_ref()
            .filter(|b| b.get_ref().0 > MAX_MEMORY)
        {
            return Err(self.err_at(
                max.span(),
                format!("{key}.max_memory"),
                format!(
                    "{} is more than the limit of 16 TiB",
                    crate::units::size(max.get_ref().0)
                ),
            ));
        }
        let memory = MemoryPolicy {
            max_bytes: ra.max_memory.as_ref().map(|b| b.get_ref().0),
            grace: self.duration(
                &format!("{key}.max_memory_grace"),
                ra.max_memory_grace.as_ref(),
                Duration::from_secs(30),
                MAX_WINDOW,
            )?,
        };
        let singleton = self.singleton(key, &ra)?;
        let triggers = triggers::Raw {
            watch: ra.watch.take(),
            ignore_watch: ra.ignore_watch.take(),
            watch_delay: ra.watch_delay.take(),
            cron_restart: ra.cron_restart.take(),
        };
        let health = health::Raw {
            watchdog: ra.watchdog.take(),
            max_age: ra.max_age.take(),
            max_age_jitter: ra.max_age_jitter.take(),
        };
        let confine = confine::Raw {
            user: ra.user.take(),
            group: ra.group.take(),
            rlimits: std::mem::take(&mut ra.rlimits),
            cgroup: std::mem::take(&mut ra.cgroup),
        };
        let logs = self.logs(key, &ra, log_dir)?;
        let mut worker = self.worker(key, ra)?;
        worker.confine = self.confinement(key, confine, &worker)?;
        let triggers = self.triggers(key, triggers, &worker.cwd)?;
        let (watchdog, age) = self.health(key, health)?;
        worker.watchdog = watchdog;
        let reload = self.reload(key, &raw_reload, worker.instances)?;
        let app = AppConfig {
            name,
            key: key.to_string(),
            after,
            listeners,
            balance,
            worker,
            restart,
            reload,
            memory,
            age,
            singleton,
            triggers,
            logs,
        };
        let spans = AppSpans {
            name: name_span,
            listeners: listener_spans,
            after: after_span,
            after_each,
        };
        Ok((app, spans))
    }

    /// `[app.reload] canary_hold`: at least a second (a hold of nothing is a plain reload).
    fn canary_hold(&self, key: &str, d: &Spanned<HumanDuration>) -> Result<Duration, ConfigError> {
        let name = format!("{key}.reload.canary_hold");
        let hold = self.at_most(&name, d, MAX_WAIT)?;
        if hold < Duration::from_secs(1) {
            return Err(self.err_at(
                d.span(),
                name,
                "must be at least 1s (leave it out for reloads that roll every slot; \
                 `supervisor reload APP --canary` holds until --continue or --rollback)",
            ));
        }
        Ok(hold)
    }

    /// `[app.reload]`, checked against the number of workers.
    fn reload(
        &self,
        key: &str,
        r: &RawReload,
        instances: usize,
    ) -> Result<ReloadPolicy, ConfigError> {
        let reload = ReloadPolicy {
            max_surge: r.max_surge.as_ref().map_or(1, |s| *s.get_ref()),
            max_unavailable: r.max_unavailable.as_ref().map_or(0, |u| *u.get_ref()),
            canary_hold: r
                .canary_hold
                .as_ref()
                .map(|d| self.canary_hold(key, d))
                .transpose()?,
        };
        if reload.max_surge == 0 || reload.max_surge > MAX_INSTANCES {
            let why = if reload.max_surge == 0 {
                "must be at least 1".to_string()
            } else {
                format!("must be at most {MAX_INSTANCES}")
            };
            return Err(self.err_at(
                r.max_surge.as_ref().map(Spanned::span),
                format!("{key}.reload.max_surge"),
                why,
            ));
        }
        if reload.max_unavailable >= instances.max(1) {
            return Err(self.err_at(
                r.max_unavailable.as_ref().map(Spanned::span),
                format!("{key}.reload.max_unavailable"),
                format!("must be less than instances ({instances})"),
            ));
        }
        Ok(reload)
    }

    /// `scope`, `lease_ttl` and `standby_poll`: the lease of a cluster singleton.
    fn singleton(&self, key: &str, ra: &RawApp) -> Result<Option<SingletonPolicy>, ConfigError> {
        let scope = ra.scope.as_ref().map_or(Scope::default(), |s| *s.get_ref());
        if scope == Scope::Host {
            for (k, value) in [
                ("lease_ttl", &ra.lease_ttl),
                ("standby_poll", &ra.standby_poll),
            ] {
                if let Some(value) = value {
                    return Err(self.err_at(
                        value.span(),
                        format!("{key}.{k}"),
                        "only for a cluster singleton: add `scope = \"cluster\"`",
                    ));
                }
            }
            return Ok(None);
        }
        let lease_key = format!("{key}.lease_ttl");
        let lease_ttl = match &ra.lease_ttl {
            None => DEFAULT_LEASE_TTL,
            Some(ttl) => self.at_most(&lease_key, ttl, MAX_WAIT)?,
        };
        if lease_ttl < Duration::from_millis(300) {
            return Err(self.err_at(
                ra.lease_ttl.as_ref().map(Spanned::span),
                lease_key,
                "must be at least 300ms (it is renewed every third of it)",
            ));
        }
        let standby_poll = self.duration(
            &format!("{key}.standby_poll"),
            ra.standby_poll.as_ref(),
            lease_ttl / 3,
            MAX_WAIT,
        )?;
        Ok(Some(SingletonPolicy {
            lease_ttl,
            standby_poll,
        }))
    }

    /// What an app's workers run: program, arguments, environment, directory, how many, how
    /// they report readiness, and their timeouts.
    fn worker(&self, key: &str, mut rw: RawApp) -> Result<WorkerSpec, ConfigError> {
        // `env_file`, then `env`, then the chosen profile: one map, checked as one below.
        rw.env = self.app_env(key, &rw)?;
        let program = self
            .program(key, rw.command.get_ref())
            .map_err(|e| self.located(e, rw.command.span()))?;
        let name = rw.name.into_inner();
        let first = |spans: Vec<Range<usize>>| spans.get(MAX_STRINGS).cloned();
        let env_spans = rw.env.values().map(Spanned::span).collect();
        let env_key = format!("{key}.env");
        self.count(
            first(env_spans),
            &env_key,
            rw.env.len(),
            MAX_STRINGS,
            "variables",
        )?;
        let arg_spans = rw.args.iter().map(Spanned::span).collect();
        let args_key = format!("{key}.args");
        self.count(
            first(arg_spans),
            &args_key,
            rw.args.len(),
            MAX_STRINGS,
            "arguments",
        )?;
        for (name, value) in &rw.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(self.err_at(
                    value.span(),
                    format!("{key}.env.{name}"),
                    "not a valid environment variable name",
                ));
            }
            self.exec_string(
                value.span(),
                &format!("{key}.env.{name}"),
                name.len() + 1 + value.get_ref().len(),
            )?;
        }
        for (i, a) in rw.args.iter().enumerate() {
            if a.get_ref().contains('\0') {
                return Err(self.err_at(
                    a.span(),
                    format!("{key}.args[{i}]"),
                    "contains a NUL byte",
                ));
            }
            self.exec_string(a.span(), &format!("{key}.args[{i}]"), a.get_ref().len())?;
        }
        self.interpreter(
            rw.command.span(),
            &format!("{key}.command"),
            &program,
            rw.env.get("PATH").map(|p| p.get_ref().as_str()),
        )?;
        let cwd = rw
            .cwd
            .as_ref()
            .map(|c| resolve(&self.base, c.get_ref()))
            .unwrap_or_else(|| self.base.clone());
        if !cwd.is_dir() {
            return Err(self.err_at(
                rw.cwd.as_ref().map(Spanned::span),
                format!("{key}.cwd"),
                format!("{} is not a directory", cwd.display()),
            ));
        }
        let instances = match rw.instances.as_ref().map(|n| (*n.get_ref(), n.span())) {
            None | Some((0, _)) => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            Some((n, span)) if n > MAX_INSTANCES => {
                return Err(self.err_at(
                    span,
                    format!("{key}.instances"),
                    format!("{n} is more than {MAX_INSTANCES}"),
                ));
            }
            Some((n, _)) => n,
        };
        let runtime = match rw.runtime.as_ref().map(|r| (*r.get_ref(), r.span())) {
            None => Runtime::detect(&program),
            Some((Runtime::Node, span)) if !runs_node(&program) => {
                return Err(self.err_at(
                    span,
                    format!("{key}.runtime"),
                    format!(
                        "\"node\" needs Node as the program, but {key}.command is {} (run node itself: \
                         command = \"node\", args = [\"app.js\"]; a wrapper such as npm or a shell \
                         starts Node in another process, which cannot take the sockets)",
                        program.display()
                    ),
                ));
            }
            Some((r, _)) => r,
        };
        let readiness = rw
            .readiness
            .as_ref()
            .map_or(Readiness::Notify, |r| *r.get_ref());
        if runtime == Runtime::Node && readiness == Readiness::Exec {
            return Err(self.err_at(
                rw.readiness.as_ref().map(Spanned::span),
                format!("{key}.readiness"),
                "\"exec\" with runtime \"node\": the Node preload reports readiness once the app \
                 listens; remove `readiness` (or set runtime = \"none\")",
            ));
        }
        let ready_timeout = self.duration(
            &format!("{key}.ready_timeout"),
            rw.ready_timeout.as_ref(),
            Duration::from_secs(30),
            MAX_WAIT,
        )?;
        let kill_timeout = self.duration(
            &format!("{key}.kill_timeout"),
            rw.kill_timeout.as_ref(),
            Duration::from_secs(10),
            MAX_WAIT,
        )?;
        let contract = self.contract(
            key,
            (&rw.kill_signal, &rw.wait_ready, &rw.shutdown_with_message),
            runtime,
        )?;
        let env: BTreeMap<String, String> = rw
            .env
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect();
        Ok(WorkerSpec {
            name,
            program,
            args: rw.args.into_iter().map(Spanned::into_inner).collect(),
            env,
            cwd,
            instances,
            readiness,
            runtime,
            ready_timeout,
            kill_timeout,
            cron_backend: rw.cron_backend.unwrap_or(false),
            contract,
            watchdog: None,
            confine: Default::default(),
        })
    }

    /// `[app.restart]`.
    fn restart(&self, app: &str, r: &RawRestart) -> Result<RestartPolicy, ConfigError> {
        let key = |k: &str| format!("{app}.restart.{k}");
        let policy = RestartPolicy {
            min_uptime: self.duration(
                &key("min_uptime"),
                r.min_uptime.as_ref(),
                Duration::from_secs(1),
                MAX_WAIT,
            )?,
            max_restarts: r.max_restarts.as_ref().map_or(5, |m| *m.get_ref()),
            window: self.duration(
                &key("window"),
                r.window.as_ref(),
                Duration::from_secs(60),
                MAX_WINDOW,
            )?,
            backoff_initial: self.duration(
                &key("backoff_initial"),
                r.backoff_initial.as_ref(),
                Duration::from_millis(100),
                MAX_WAIT,
            )?,
            backoff_max: self.duration(
                &key("backoff_max"),
                r.backoff_max.as_ref(),
                Duration::from_secs(30),
                MAX_WAIT,
            )?,
        };
        if let Some(m) = r
            .max_restarts
            .as_ref()
            .filter(|m| *m.get_ref() > MAX_RESTARTS)
        {
            return Err(self.err_at(
                m.span(),
                key("max_restarts"),
                format!("{} is more than {MAX_RESTARTS}", m.get_ref()),
            ));
        }
        if policy.backoff_max < policy.backoff_initial {
            // At `backoff_max` if it is written, else at the `backoff_initial` above its default.
            let span = r.backoff_max.as_ref().or(r.backoff_initial.as_ref());
            return Err(self.err_at(
                span.map(Spanned::span),
                key("backoff_max"),
                "must not be smaller than backoff_initial",
            ));
        }
        Ok(policy)
    }

    /// Every `after` names another app, and no app waits for itself through others.
    pub(super) fn check_after(
        &self,
        apps: &[AppConfig],
        spans: &[AppSpans],
    ) -> Result<(), ConfigError> {
        for (a, at) in apps.iter().zip(spans) {
            for (j, dep) in a.after.iter().enumerate() {
                let span = at.after_each.get(j).cloned();
                if dep == &a.name {
                    return Err(self.err_at(
                        span,
                        format!("{}.after[{j}]", a.key),
                        "an app cannot wait for itself",
                    ));
                }
                if !apps.iter().any(|o| &o.name == dep) {
                    let names: Vec<&str> = apps.iter().map(|o| o.name.as_str()).collect();
                    return Err(self.err_at(
                        span,
                        format!("{}.after[{j}]", a.key),
                        format!("no app is named {dep:?} (apps: {})", names.join(", ")),
                    ));
                }
            }
        }
        // A cycle: following `after` from an app comes back to it.
        for (a, at) in apps.iter().zip(spans) {
            let mut seen = vec![a.name.as_str()];
            let mut frontier: Vec<&str> = a.after.iter().map(String::as_str).collect();
            while let Some(name) = frontier.pop() {
                if name == a.name {
                    return Err(self.err_at(
                        at.after.clone(),
                        format!("{}.after", a.key),
                        format!(
                            "{:?} waits for itself through {}",
                            a.name,
                            seen[1..].join(" -> ")
                        ),
                    ));
                }
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                if let Some(o) = apps.iter().find(|o| o.name == name) {
                    frontier.extend(o.after.iter().map(String::as_str));
                }
            }
        }
        Ok(())
    }
}
