//! `[app.cgroup]`: `memory_max` (a size), `cpu_max` (`"50%"` of one CPU, or `0.5` CPUs) and
//! `pids_max`, read into the values cgroup v2's files take. Whether this host lets the supervisor
//! create cgroups is not the file's business: `check` and `start` say so (see
//! [`crate::sys::cgroup`]).

use std::ops::Range;

use super::super::human::parse_size;
use super::super::model::{CGROUP_MAX, CPU_PERIOD_US, CgroupLimits};
use super::super::raw::{RawCgroup, RawCpu, RawLimitValue};
use super::{ConfigError, Validator};

/// The smallest `cpu.max` quota the kernel takes: 1 ms per period (1% of a CPU).
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The most CPUs `cpu_max` may name.
const MAX_CPUS: f64 = 4096.0;

/// `cpu_max` as microseconds per 100 ms period: `"50%"` (of one CPU), `"0.5"` or `0.5` (CPUs),
/// `"max"`.
pub(super) fn cpu_quota(v: &RawCpu) -> Result<u64, String> {
    let cpus = match v {
        RawCpu::Number(n) => *n,
        RawCpu::Word(w) if w.trim().eq_ignore_ascii_case("max") => return Ok(CGROUP_MAX),
        RawCpu::Word(w) => {
            let t = w.trim();
            let parsed = match t.strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
                None => t.parse::<f64>(),
            };
            parsed.map_err(|_| {
                format!("{w:?}: write a share of one CPU (\"50%\"), CPUs (0.5, 2) or \"max\"")
            })?
        }
    };
    if !cpus.is_finite() || cpus <= 0.0 || cpus > MAX_CPUS {
        return Err(format!(
            "{cpus} CPUs: must be above 0 and at most {MAX_CPUS}"
        ));
    }
    let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
    if quota < MIN_CPU_QUOTA_US {
        return Err(format!(
            "{cpus} CPUs is below the kernel's least, 1% of one CPU"
        ));
    }
    Ok(quota)
}

/// A size (`"512MiB"`), a number of bytes, or `"max"`.
fn memory(v: &RawLimitValue) -> Result<u64, String> {
    match v {
        RawLimitValue::Number(n) if *n > 0 => Ok(*n as u64),
        RawLimitValue::Number(n) => Err(format!("{n}: must be above 0")),
        RawLimitValue::Word(w) if w.trim().eq_ignore_ascii_case("max") => Ok(CGROUP_MAX),
        RawLimitValue::Word(w) => match parse_size(w) {
            Ok(0) => Err(format!("{w:?}: must be above 0")),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("{e} (or \"max\")")),
        },
    }
}

/// A count of processes, or `"max"`.
fn pids(v: &RawLimitValue) -> Result<u64, String> {
    match v {
        RawLimitValue::Number(n) if *n > 0 => Ok(*n as u64),
        RawLimitValue::Number(n) => Err(format!("{n}: must be above 0")),
        RawLimitValue::Word(w) if w.trim().eq_ignore_ascii_case("max") => Ok(CGROUP_MAX),
        RawLimitValue::Word(w) => Err(format!("{w:?}: write a number or \"max\"")),
    }
}

impl Validator<'_> {
    /// `[app.cgroup]` of app `key`; `None` when the table sets nothing.
    pub(super) fn cgroup(
        &self,
        key: &str,
        raw: &RawCgroup,
    ) -> Result<Option<CgroupLimits>, ConfigError> {
        let at = |name: &str, span: Range<usize>, r: Result<u64, String>| {
            r.map_err(|why| self.err_at(span, format!("{key}.cgroup.{name}"), why))
        };
        let limits = CgroupLimits {
            memory_max: raw
                .memory_max
                .as_ref()
                .map(|v| at("memory_max", v.span(), memory(v.get_ref())))
                .transpose()?,
            cpu_max: raw
                .cpu_max
                .as_ref()
                .map(|v| at("cpu_max", v.span(), cpu_quota(v.get_ref())))
                .transpose()?,
            pids_max: raw
                .pids_max
                .as_ref()
                .map(|v| at("pids_max", v.span(), pids(v.get_ref())))
                .transpose()?,
        };
        Ok((limits != CgroupLimits::default()).then_some(limits))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn cpu_shares_and_cpus_become_a_quota_per_100ms() {
        let word = |w: &str| cpu_quota(&RawCpu::Word(w.into()));
        assert_eq!(word("50%"), Ok(50_000));
        assert_eq!(word("150 %"), Ok(150_000));
        assert_eq!(word("0.5"), Ok(50_000));
        assert_eq!(word("max"), Ok(CGROUP_MAX));
        assert_eq!(cpu_quota(&RawCpu::Number(2.0)), Ok(200_000));
        assert!(word("0.1%").unwrap_err().contains("1% of one CPU"));
        assert!(word("0").unwrap_err().contains("above 0"));
        assert!(word("half").unwrap_err().contains("\"50%\""));
        assert!(cpu_quota(&RawCpu::Number(f64::NAN)).is_err());
    }

    #[test]
    fn the_files_an_app_cgroup_gets() {
        let load = |extra: &str| super::super::load_app(&format!("[app.cgroup]\n{extra}"));
        let c = load("memory_max = \"512MiB\"\ncpu_max = \"50%\"\npids_max = 100").unwrap();
        let limits = c.apps[0].worker.confine.cgroup.clone().unwrap();
        assert_eq!(
            limits.files(),
            [
                ("memory", "memory.max", "536870912".to_string()),
                ("cpu", "cpu.max", "50000 100000".to_string()),
                ("pids", "pids.max", "100".to_string()),
            ]
        );
        let c = load("memory_max = \"max\"\ncpu_max = 0.25").unwrap();
        let limits = c.apps[0].worker.confine.cgroup.clone().unwrap();
        assert_eq!(
            limits.files(),
            [
                ("memory", "memory.max", "max".to_string()),
                ("cpu", "cpu.max", "25000 100000".to_string()),
            ]
        );
        assert_eq!(load("").unwrap().apps[0].worker.confine.cgroup, None);
        let e = load("pids_max = 0").unwrap_err();
        assert!(
            e.contains(":5:12: app[0].cgroup.pids_max: 0: must be above 0"),
            "{e}"
        );
        let e = load("memory_max = \"lots\"").unwrap_err();
        assert!(e.contains("app[0].cgroup.memory_max"), "{e}");
        let e = load("cpu = 1").unwrap_err();
        assert!(e.contains("app[0].cgroup") && e.contains("cpu"), "{e}");
    }
}
