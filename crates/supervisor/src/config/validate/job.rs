//! `[[job]]`: a cluster-once cron job's name, schedule and timezone (cronlock's rules), its
//! policies and timeouts, and what a run does (a command, or an HTTP request to an app).

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::model::{
    Confinement, DEFAULT_JOB_KILL_TIMEOUT, DEFAULT_JOB_TIMEOUT, DEFAULT_MISFIRE_GRACE, JobAction,
    JobConfig,
};
use super::super::raw::RawJob;
use super::bounds::{MAX_JOB_TIMEOUT, MAX_STRINGS, MAX_WAIT, MAX_WINDOW};
use super::{AppConfig, ConfigError, Validator};

impl Validator<'_> {
    /// One `[[job]]` table, checked against the apps.
    pub(super) fn job(
        &self,
        key: &str,
        rj: RawJob,
        apps: &[AppConfig],
    ) -> Result<JobConfig, ConfigError> {
        let name_span = rj.name.span();
        let name = rj.name.into_inner();
        let mut spec = cronlock::JobSpec::new(name.clone(), rj.schedule.get_ref().clone());
        // Name checks first (cronlock's rules: the name is part of the backend's keys).
        if let Err(e) = cronlock::JobSpec::new(name.clone(), "* * * * * *").validate() {
            return Err(self.err_at(name_span, format!("{key}.name"), e.to_string()));
        }
        if let Some(tz) = &rj.timezone {
            spec = spec.timezone_name(tz.get_ref()).map_err(|_| {
                self.err_at(
                    tz.span(),
                    format!("{key}.timezone"),
                    format!(
                        "unknown timezone {:?} (an IANA name such as \"Europe/Berlin\" or \"UTC\")",
                        tz.get_ref()
                    ),
                )
            })?;
        }
        if let Err(e) = spec.validate() {
            return Err(self.err_at(
                rj.schedule.span(),
                format!("{key}.schedule"),
                format!("{e} (e.g. \"30 2 * * *\": 02:30 every day; or @hourly, @daily, @weekly)"),
            ));
        }
        if let Some(ttl) = &rj.lease_ttl {
            self.at_most(&format!("{key}.lease_ttl"), ttl, MAX_WAIT)?;
            if ttl.get_ref().0 < Duration::from_millis(300) {
                return Err(self.err_at(
                    ttl.span(),
                    format!("{key}.lease_ttl"),
                    "must be at least 300ms",
                ));
            }
            spec = spec.lease_ttl(ttl.get_ref().0);
        }
        if let Some(o) = rj.overlap {
            spec = spec.overlap(o);
        }
        let grace = rj.misfire_grace;
        match rj
            .misfire
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("skip", _)) => {
                if let Some(g) = grace {
                    return Err(self.err_at(
                        g.span(),
                        format!("{key}.misfire_grace"),
                        "only with misfire = \"run_late\"",
                    ));
                }
            }
            Some(("run_late", _)) => {
                let grace = self.duration(
                    &format!("{key}.misfire_grace"),
                    grace.as_ref(),
                    DEFAULT_MISFIRE_GRACE,
                    MAX_WINDOW,
                )?;
                spec = spec.misfire(cronlock::Misfire::RunLate { grace });
            }
            Some((other, span)) => {
                return Err(self.err_at(
                    span,
                    format!("{key}.misfire"),
                    format!("{other:?}: use \"skip\" or \"run_late\""),
                ));
            }
        }
        let timeout = self.duration(
            &format!("{key}.timeout"),
            rj.timeout.as_ref(),
            DEFAULT_JOB_TIMEOUT,
            MAX_JOB_TIMEOUT,
        )?;
        let app = match &rj.app {
            None => None,
            Some(a) => match apps.iter().find(|x| &x.name == a.get_ref()) {
                Some(app) => Some((app, a.span())),
                None => {
                    let names: Vec<&str> = apps.iter().map(|o| o.name.as_str()).collect();
                    return Err(self.err_at(
                        a.span(),
                        format!("{key}.app"),
                        format!(
                            "no app is named {:?} (apps: {})",
                            a.get_ref(),
                            names.join(", ")
                        ),
                    ));
                }
            },
        };
        let kill_timeout = self.duration(
            &format!("{key}.kill_timeout"),
            rj.kill_timeout.as_ref(),
            app.as_ref()
                .map_or(DEFAULT_JOB_KILL_TIMEOUT, |(a, _)| a.worker.kill_timeout),
            MAX_WAIT,
        )?;
        let action = match (rj.command, rj.http) {
            (Some(_), Some(h)) => {
                return Err(self.err_at(
                    h.span(),
                    key,
                    "give either `command` or `http`, not both",
                ));
            }
            (None, None) => {
                return Err(self.err_at(
                    name_span,
                    key,
                    "needs `command = [\"prog\", \"arg\"]` or `http = \"POST /path\"` (with `app`)",
                ));
            }
            (Some(c), None) => {
                let span = c.span();
                let argv = c.into_inner();
                let Some((prog, args)) = argv.split_first() else {
                    return Err(self.err_at(span, format!("{key}.command"), "is empty"));
                };
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(self.err_at(span, format!("{key}.command"), "contains a NUL byte"));
                }
                let command_key = format!("{key}.command");
                self.count(
                    span.clone(),
                    &command_key,
                    argv.len(),
                    MAX_STRINGS,
                    "arguments",
                )?;
                for a in &argv {
                    self.exec_string(span.clone(), &command_key, a.len())?;
                }
                let program = self
                    .program(key, prog)
                    .map_err(|e| self.located(e, span.clone()))?;
                let (env, cwd, confine) = match &app {
                    Some((a, _)) => (
                        a.worker.env.clone(),
                        a.worker.cwd.clone(),
                        Box::new(Confinement {
                            cgroup: None,
                            ..a.worker.confine.clone()
                        }),
                    ),
                    None => (BTreeMap::new(), self.base.clone(), Box::default()),
                };
                let path_env = env.get("PATH").map(String::as_str);
                self.interpreter(span.clone(), &command_key, &program, path_env)?;
                JobAction::Command {
                    program,
                    args: args.to_vec(),
                    env,
                    cwd,
                    app: app.map(|(a, _)| a.name.clone()),
                    confine,
                }
            }
            (None, Some(h)) => {
                let (method, path) = parse_http(h.get_ref())
                    .map_err(|m| self.err_at(h.span(), format!("{key}.http"), m))?;
                let Some((app, app_span)) = app else {
                    return Err(self.err_at(
                        h.span(),
                        format!("{key}.http"),
                        "needs `app = \"NAME\"`: the request goes to that app's first listener",
                    ));
                };
                if app.listeners.is_empty() {
                    return Err(self.err_at(
                        app_span,
                        format!("{key}.app"),
                        format!(
                            "app {:?} has no listener to send the request to (add [[app.listen]] to it)",
                            app.name
                        ),
                    ));
                }
                JobAction::Http {
                    method,
                    path,
                    app: app.name.clone(),
                }
            }
        };
        Ok(JobConfig {
            key: key.to_string(),
            spec,
            timeout,
            kill_timeout,
            action,
        })
    }
}

/// `"POST /tasks/report"` -> (`POST`, `/tasks/report`).
fn parse_http(text: &str) -> Result<(String, String), String> {
    let mut parts = text.split_whitespace();
    let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "{text:?}: write the method and the path, e.g. \"POST /tasks/report\""
        ));
    };
    if !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{method:?} is not a method (GET, POST, PUT, ...: upper case)"
        ));
    }
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("{path:?} is not a path starting with '/'"));
    }
    Ok((method.to_string(), path.to_string()))
}
