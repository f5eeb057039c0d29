//! Resource use of a process from `/proc`: resident memory and CPU time, with a meter that turns
//! CPU time into a percentage between two status samples.

use std::collections::HashMap;
use std::time::Instant;

use crate::control::protocol::ProcessInfo;

fn sysconf(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 { v as u64 } else { fallback }
}

/// User + system CPU time of `pid` in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 14 (utime) is the 12th after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * sysconf(libc::_SC_PAGESIZE, 4096))
}

/// Remembers the last CPU sample of each pid.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: HashMap<i32, (u64, Instant)>,
}

impl CpuMeter {
    /// Samples `pid`, started at `started`, and returns its resource use. CPU percent covers the
    /// time since the previous sample of this pid, or since start for the first one.
    pub fn sample(&mut self, pid: i32, started: Instant) -> ProcessInfo {
        let now = Instant::now();
        let ticks = cpu_ticks(pid).unwrap_or(0);
        let hz = sysconf(libc::_SC_CLK_TCK, 100) as f64;
        let (prev_ticks, since) = self.last.get(&pid).copied().unwrap_or((0, started));
        let secs = now.duration_since(since).as_secs_f64();
        let cpu_percent = if secs > 0.0 {
            (ticks.saturating_sub(prev_ticks) as f64 / hz) / secs * 100.0
        } else {
            0.0
        };
        self.last.insert(pid, (ticks, now));
        ProcessInfo {
            pid,
            uptime_secs: now.duration_since(started).as_secs_f64(),
            cpu_percent: (cpu_percent * 10.0).round() / 10.0,
            rss_bytes: rss_bytes(pid).unwrap_or(0),
        }
    }

    /// Forgets pids not in `alive`.
    pub fn retain(&mut self, alive: impl Fn(i32) -> bool) {
        self.last.retain(|pid, _| alive(*pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(rss_bytes(me).unwrap() > 100_000);
        assert!(cpu_ticks(me).is_some());
        let mut m = CpuMeter::default();
        let info = m.sample(me, Instant::now());
        assert_eq!(info.pid, me);
        assert!(info.cpu_percent >= 0.0);
    }
}
