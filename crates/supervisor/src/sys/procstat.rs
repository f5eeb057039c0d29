//! Resource use from `/proc`: resident memory and CPU time of a process or of a whole process
//! group (a worker and the children it forked, e.g. a gunicorn arbiter and its workers, from one
//! scan of `/proc` per status), with a meter that turns CPU time into a percentage between two
//! status samples; and the sockets each group holds (for [`super::connections`]).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

fn sysconf(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 { v as u64 } else { fallback }
}

/// A process's (or process group's) resource use, as sampled by [`CpuMeter`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// The process (group leader).
    pub pid: i32,
    /// Seconds since it started.
    pub uptime_secs: f64,
    /// CPU use in percent of one core since the previous sample (or since start).
    pub cpu_percent: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second (`/proc` CPU times are in these).
pub fn ticks_per_second() -> u64 {
    sysconf(libc::_SC_CLK_TCK, 100)
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

/// How many descriptors `pid` has open.
pub fn open_fds(pid: i32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// This process's limit on open descriptors (the soft `RLIMIT_NOFILE`).
pub fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives for the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some(limit.rlim_cur)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * sysconf(libc::_SC_PAGESIZE, 4096))
}

/// CPU time and resident memory of one process or a group of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User + system CPU time in clock ticks, including that of waited-for children.
    pub ticks: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
}

/// The fields of `/proc/<pid>/stat` the group sums need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: i32,
    pgrp: i32,
    /// utime + stime + cutime + cstime: a child reaped by a member keeps counting.
    ticks: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and parentheses, so the fields
/// are counted after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // After ')': state(3) ppid(4) pgrp(5) ... utime(14) stime(15) cutime(16) cstime(17) ... rss(24)
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<i64>().ok();
    let ticks = (11..=14).map(num).sum::<Option<i64>>()?;
    Some(Stat {
        pid,
        pgrp: i32::try_from(num(2)?).ok()?,
        ticks: u64::try_from(ticks).unwrap_or(0),
        rss_pages: u64::try_from(num(21)?).unwrap_or(0),
    })
}

/// Per process group, the summed usage of its members and their pids: one pass over `/proc`.
#[derive(Debug, Default)]
pub struct GroupScan {
    groups: HashMap<i32, Usage>,
    members: HashMap<i32, Vec<i32>>,
}

impl GroupScan {
    /// Reads `/proc/<pid>/stat` of every process once (processes that vanish meanwhile are
    /// skipped).
    pub fn scan() -> GroupScan {
        let stats = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|text| parse_stat(&text));
        GroupScan::from_stats(stats, sysconf(libc::_SC_PAGESIZE, 4096))
    }

    fn from_stats(stats: impl IntoIterator<Item = Stat>, page: u64) -> GroupScan {
        let mut groups: HashMap<i32, Usage> = HashMap::new();
        let mut members: HashMap<i32, Vec<i32>> = HashMap::new();
        for s in stats {
            let g = groups.entry(s.pgrp).or_default();
            g.ticks += s.ticks;
            g.rss_bytes += s.rss_pages * page;
            members.entry(s.pgrp).or_default().push(s.pid);
        }
        GroupScan { groups, members }
    }

    /// The summed usage of process group `pgid` (a worker's pid: each worker leads its group).
    pub fn group(&self, pgid: i32) -> Option<Usage> {
        self.groups.get(&pgid).copied()
    }

    /// The pids of process group `pgid` when it was scanned.
    pub fn members(&self, pgid: i32) -> &[i32] {
        self.members.get(&pgid).map_or(&[], Vec::as_slice)
    }

    /// The inodes of the sockets process group `pgid` holds open, each once (a socket a
    /// member inherited from another is one socket): `/proc/PID/fd` of each member. Members
    /// that exited meanwhile, or whose descriptors this process may not read, hold none.
    pub fn socket_inodes(&self, pgid: i32) -> HashSet<u64> {
        self.members(pgid)
            .iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .flat_map(|dir| dir.flatten())
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|link| super::connections::socket_inode(link.to_str()?))
            .collect()
    }
}

/// Remembers the last CPU sample of each pid.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: HashMap<i32, (u64, Instant)>,
}

impl CpuMeter {
    /// Samples `pid`, started at `started`, and returns its resource use. CPU percent covers the
    /// time since the previous sample of this pid, or since start for the first one.
    pub fn sample(&mut self, pid: i32, started: Instant) -> Sample {
        let usage = Usage {
            ticks: cpu_ticks(pid).unwrap_or(0),
            rss_bytes: rss_bytes(pid).unwrap_or(0),
        };
        self.record(pid, started, usage)
    }

    /// Like [`CpuMeter::sample`] for the whole process group led by `pid` (a worker and every
    /// process it started that stayed in its group), from a [`GroupScan`] taken once per status.
    pub fn sample_group(&mut self, scan: &GroupScan, pid: i32, started: Instant) -> Sample {
        let usage = scan.group(pid).unwrap_or_default();
        self.record(pid, started, usage)
    }

    fn record(&mut self, pid: i32, started: Instant, usage: Usage) -> Sample {
        let now = Instant::now();
        let ticks = usage.ticks;
        let hz = sysconf(libc::_SC_CLK_TCK, 100) as f64;
        let (prev_ticks, since) = self.last.get(&pid).copied().unwrap_or((0, started));
        let secs = now.duration_since(since).as_secs_f64();
        let cpu_percent = if secs > 0.0 {
            (ticks.saturating_sub(prev_ticks) as f64 / hz) / secs * 100.0
        } else {
            0.0
        };
        self.last.insert(pid, (ticks, now));
        Sample {
            pid,
            uptime_secs: now.duration_since(started).as_secs_f64(),
            cpu_percent: (cpu_percent * 10.0).round() / 10.0,
            rss_bytes: usage.rss_bytes,
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
    fn stat_fields_are_counted_after_the_last_paren() {
        let line = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 \
                    30 12 5 3 20 0 1 0 100 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 4242,
                pgrp: 4240,
                ticks: 30 + 12 + 5 + 3,
                rss_pages: 250
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn groups_sum_their_members() {
        let st = |pid, pgrp, ticks, rss_pages| Stat {
            pid,
            pgrp,
            ticks,
            rss_pages,
        };
        let scan = GroupScan::from_stats(
            [
                st(10, 10, 0, 100),
                st(12, 10, 56, 200),
                st(13, 10, 75, 300),
                st(11, 11, 7, 1),
            ],
            4096,
        );
        assert_eq!(
            scan.group(10),
            Some(Usage {
                ticks: 131,
                rss_bytes: 600 * 4096
            })
        );
        assert_eq!(scan.group(11).unwrap().ticks, 7);
        assert_eq!(scan.group(12), None);
        assert_eq!(scan.members(10), [10, 12, 13]);
        assert_eq!(scan.members(11), [11]);
        assert!(scan.members(12).is_empty());
    }

    #[test]
    fn scan_sums_a_group_with_a_child_in_it() {
        use std::os::unix::process::CommandExt;
        // A group of its own: `sh` (the leader, idle in `wait`) and the `sleep` it forked, like a
        // worker and its child. Our own group would mix in the test runner's processes, whose
        // memory changes between two reads. Both hold one socket, as their stdin.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let inode = {
            use std::os::unix::fs::MetadataExt;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .process_group(0)
            .stdin(std::os::fd::OwnedFd::from(client))
            .spawn()
            .unwrap();
        let leader = sh.id() as i32;
        let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let sleeper_runs = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    return false;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
                stat.and_then(|t| parse_stat(&t))
                    .is_some_and(|s| s.pgrp == leader)
                    && pid != sh.id()
                    && comm(pid).is_some_and(|c| c.trim() == "sleep")
            })
        };
        while !sleeper_runs() {
            assert!(Instant::now() < deadline, "sh never forked its sleep");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let scan = GroupScan::scan();
        let leader_alone = rss_bytes(leader).unwrap();
        let members = scan.members(leader).len();
        let sockets = scan.socket_inodes(leader);
        // SAFETY: kill of the process group this test created (sh and its sleep).
        unsafe { libc::kill(-leader, libc::SIGKILL) };
        let _ = sh.wait();
        assert!(
            scan.group(leader).unwrap().rss_bytes > leader_alone,
            "the child's memory counts for its group"
        );
        assert_eq!(members, 2, "sh and its sleep");
        assert_eq!(
            sockets,
            HashSet::from([inode]),
            "the socket both hold, once"
        );
    }

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
