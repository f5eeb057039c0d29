//! `user`, `group` and `[app.rlimits]`: who an app's workers run as and the limits they start
//! with, resolved now: the forked child only gets numbers (looking a user up is not
//! async-signal-safe). A supervisor that is not root may only name itself.

use std::ops::Range;
use std::path::PathBuf;

use super::super::human::parse_size;
use super::super::model::{Confinement, RLIM_INFINITY, Rlimit, RlimitResource, RunAs, WorkerSpec};
use super::super::raw::{RawCgroup, RawId, RawLimit, RawLimitValue, RawRlimits, Spanned};
use super::{ConfigError, Validator};
use crate::users;

/// The raw keys, taken out of the app's table.
pub(super) struct Raw {
    pub(super) user: Option<Spanned<RawId>>,
    pub(super) group: Option<Spanned<RawId>>,
    pub(super) rlimits: RawRlimits,
    pub(super) cgroup: RawCgroup,
}

/// The most open files the kernel allows a process (`fs.nr_open`), the bound of `nofile`.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// A limit as the file writes it.
pub(crate) fn show_limit(v: u64) -> String {
    if v == RLIM_INFINITY {
        "infinity".to_string()
    } else {
        v.to_string()
    }
}

/// Why a supervisor running as `euid`/`egid` (named `me`) may not run workers as `run_as`.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    User(String),
    Group(String),
}

fn refusal(run_as: &RunAs, euid: u32, egid: u32, me: Option<&str>) -> Option<Refusal> {
    if euid == 0 {
        return None;
    }
    if run_as.uid != euid {
        let me = me.map_or_else(|| format!("uid {euid}"), |n| format!("{n} (uid {euid})"));
        return Some(Refusal::User(format!(
            "{} is not the user this supervisor runs as, {me}: only a supervisor started as root \
             can run workers as another user",
            run_as.describe()
        )));
    }
    if run_as.gid != egid {
        return Some(Refusal::Group(format!(
            "group {} is not this supervisor's group ({egid}): only a supervisor started as root \
             can run workers in another group",
            run_as.gid
        )));
    }
    None
}

impl Validator<'_> {
    /// The confinement of app `key`.
    pub(super) fn confinement(
        &self,
        key: &str,
        raw: Raw,
        worker: &WorkerSpec,
    ) -> Result<Confinement, ConfigError> {
        let user_span = raw.user.as_ref().map(Spanned::span);
        let user = self.run_as(key, raw.user, raw.group)?;
        if let Some(u) = user.as_ref().filter(|u| u.switch) {
            self.reachable(key, u, worker, user_span)?;
        }
        let rlimits = self.rlimits(key, &raw.rlimits)?;
        let cgroup = self.cgroup(key, &raw.cgroup)?;
        Ok(Confinement {
            user,
            rlimits,
            cgroup,
        })
    }

    /// `user` and `group`, looked up, with the user's groups.
    fn run_as(
        &self,
        key: &str,
        user: Option<Spanned<RawId>>,
        group: Option<Spanned<RawId>>,
    ) -> Result<Option<RunAs>, ConfigError> {
        let group_key = format!("{key}.group");
        let Some(user) = user else {
            if let Some(g) = group {
                return Err(self.err_at(
                    g.span(),
                    group_key,
                    "needs `user` (the workers run as the supervisor's user and group otherwise)",
                ));
            }
            return Ok(None);
        };
        let user_key = format!("{key}.user");
        let span = user.span();
        let lookup_err = |what: &str, e: std::io::Error| {
            self.err_at(
                span.clone(),
                &user_key,
                format!("cannot look up {what}: {e}"),
            )
        };
        let (uid, entry) = match user.get_ref() {
            RawId::Name(name) => match users::user_by_name(name) {
                Ok(Some(u)) => (u.uid, Some(u)),
                Ok(None) => match name.parse::<u32>() {
                    Ok(uid) => (
                        uid,
                        users::user_by_uid(uid).map_err(|e| lookup_err(name, e))?,
                    ),
                    Err(_) => {
                        return Err(self.err_at(
                            span,
                            user_key,
                            format!("no user is named {name:?} on this host (see `getent passwd`)"),
                        ));
                    }
                },
                Err(e) => return Err(lookup_err(name, e)),
            },
            RawId::Id(uid) => (
                *uid,
                users::user_by_uid(*uid).map_err(|e| lookup_err(&format!("uid {uid}"), e))?,
            ),
        };
        let group_span = group.as_ref().map(Spanned::span);
        let gid = match group.as_ref().map(Spanned::get_ref) {
            Some(g) => self.group_id(group_span.clone().unwrap_or(span.clone()), &group_key, g)?,
            None => match &entry {
                Some(u) => u.gid,
                None => {
                    return Err(self.err_at(
                        span,
                        user_key,
                        format!(
                            "uid {uid} has no entry in the password database, so no primary \
                             group: set `group` too"
                        ),
                    ));
                }
            },
        };
        let groups = match &entry {
            Some(u) => users::group_list(&u.name, gid)
                .map_err(|e| lookup_err(&format!("the groups of {}", u.name), e))?,
            None => vec![gid],
        };
        let run_as = RunAs {
            name: entry.as_ref().map(|u| u.name.clone()),
            uid,
            gid,
            groups,
            home: entry.map_or_else(|| PathBuf::from("/"), |u| u.home),
            switch: users::effective().0 == 0,
        };
        self.allowed(key, &run_as, span, group_span)?;
        Ok(Some(run_as))
    }

    /// A supervisor that is not root runs its workers as itself: `user` may only name it, and
    /// `group` its own group.
    fn allowed(
        &self,
        key: &str,
        run_as: &RunAs,
        user_span: Range<usize>,
        group_span: Option<Range<usize>>,
    ) -> Result<(), ConfigError> {
        let (euid, egid) = users::effective();
        let me = users::user_by_uid(euid).ok().flatten().map(|u| u.name);
        match refusal(run_as, euid, egid, me.as_deref()) {
            None => Ok(()),
            Some(Refusal::User(why)) => Err(self.err_at(user_span, format!("{key}.user"), why)),
            Some(Refusal::Group(why)) => {
                Err(self.err_at(group_span.unwrap_or(user_span), format!("{key}.group"), why))
            }
        }
    }

    /// The user may enter the app's `cwd` and execute its program (what the forked child's
    /// `chdir` and `execve` would fail on, said now).
    fn reachable(
        &self,
        key: &str,
        user: &RunAs,
        worker: &WorkerSpec,
        span: Option<Range<usize>>,
    ) -> Result<(), ConfigError> {
        let why = if let Some(b) = users::blocked(&worker.cwd, user.uid, &user.groups) {
            format!(
                "{} cannot enter the app's cwd {}: {b} does not let it through",
                user.describe(),
                worker.cwd.display()
            )
        } else if let Some(b) = users::blocked(&worker.program, user.uid, &user.groups) {
            format!(
                "{} cannot run the app's program {}: {b} does not let it through",
                user.describe(),
                worker.program.display()
            )
        } else {
            return Ok(());
        };
        Err(self.err_at(span, format!("{key}.user"), why))
    }

    /// A group's id, by name or number.
    fn group_id(&self, span: Range<usize>, key: &str, g: &RawId) -> Result<u32, ConfigError> {
        match g {
            RawId::Id(gid) => Ok(*gid),
            RawId::Name(name) => match users::group_by_name(name) {
                Ok(Some(gid)) => Ok(gid),
                Ok(None) => name.parse::<u32>().map_err(|_| {
                    self.err_at(
                        span,
                        key,
                        format!("no group is named {name:?} on this host (see `getent group`)"),
                    )
                }),
                Err(e) => Err(self.err_at(span, key, format!("cannot look up {name:?}: {e}"))),
            },
        }
    }

    /// `[app.rlimits]`, each within what the supervisor may set.
    fn rlimits(&self, key: &str, raw: &RawRlimits) -> Result<Vec<Rlimit>, ConfigError> {
        let mut out = Vec::new();
        for (resource, value) in [
            (RlimitResource::Nofile, &raw.nofile),
            (RlimitResource::Nproc, &raw.nproc),
            (RlimitResource::Core, &raw.core),
            (RlimitResource::Memlock, &raw.memlock),
            (RlimitResource::Stack, &raw.stack),
        ] {
            let Some(v) = value else { continue };
            let k = format!("{key}.rlimits.{}", resource.key());
            let span = v.span();
            let one = |x: &RawLimitValue| self.limit_value(span.clone(), &k, resource, x);
            let (soft, hard) = match v.get_ref() {
                RawLimit::Both(x) => {
                    let n = one(x)?;
                    (n, n)
                }
                RawLimit::Pair(pair) if pair.len() == 2 => (one(&pair[0])?, one(&pair[1])?),
                RawLimit::Pair(_) => {
                    return Err(self.err_at(
                        span,
                        k,
                        "write one value (soft and hard alike) or [soft, hard]",
                    ));
                }
            };
            if soft > hard {
                return Err(self.err_at(
                    span,
                    k,
                    format!(
                        "the soft limit {} is above the hard limit {}",
                        show_limit(soft),
                        show_limit(hard)
                    ),
                ));
            }
            if resource == RlimitResource::Nofile && hard > nr_open() {
                return Err(self.err_at(
                    span,
                    k,
                    format!(
                        "{} is above the kernel's most open files per process (fs.nr_open = {})",
                        show_limit(hard),
                        nr_open()
                    ),
                ));
            }
            if users::effective().0 != 0
                && let Ok((_, own)) = users::rlimit(resource.number())
                && hard > own
            {
                return Err(self.err_at(
                    span,
                    k,
                    format!(
                        "{} is above this supervisor's own hard limit ({}): only root may raise \
                         it (raise the supervisor's, e.g. LimitNOFILE= in its systemd unit)",
                        show_limit(hard),
                        show_limit(own)
                    ),
                ));
            }
            out.push(Rlimit {
                resource,
                soft,
                hard,
            });
        }
        Ok(out)
    }

    /// One value: a number, `"infinity"`/`"unlimited"`, or a size (`"64MiB"`) for a limit in
    /// bytes.
    fn limit_value(
        &self,
        span: Range<usize>,
        key: &str,
        resource: RlimitResource,
        v: &RawLimitValue,
    ) -> Result<u64, ConfigError> {
        match v {
            RawLimitValue::Number(n) => {
                u64::try_from(*n).map_err(|_| self.err_at(span, key, format!("{n} is negative")))
            }
            RawLimitValue::Word(w)
                if w.eq_ignore_ascii_case("infinity") || w.eq_ignore_ascii_case("unlimited") =>
            {
                Ok(RLIM_INFINITY)
            }
            RawLimitValue::Word(w) => {
                let bytes = matches!(
                    resource,
                    RlimitResource::Core | RlimitResource::Memlock | RlimitResource::Stack
                );
                match parse_size(w) {
                    Ok(n) if bytes => Ok(n),
                    _ => Err(self.err_at(
                        span,
                        key,
                        format!(
                            "{w:?}: write a number, \"infinity\" or \"unlimited\"{}",
                            if bytes { ", or a size (\"64MiB\")" } else { "" }
                        ),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "confine_tests.rs"]
mod tests;
