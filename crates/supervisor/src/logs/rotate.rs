//! Rotation decisions, pure: when a log file is due (by size, by age), the name its rotated copy
//! takes (`web.log.20240501-100000.123`, a counter added when that name is taken, `.gz` once
//! compressed), and which rotated copies go so that at most `retain` are kept. Names sort by
//! time, so no copy is ever renamed again after its rotation (a compression in progress never
//! races a shift).

use std::time::{Duration, SystemTime};

/// When files rotate and how many rotated copies are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file reaches this many bytes (0: never by size).
    pub max_size: u64,
    /// Rotate once the file is this old (`None`: never by age).
    pub max_age: Option<Duration>,
    /// Rotated copies kept (0: none, the file is just emptied).
    pub retain: usize,
    /// Gzip rotated copies.
    pub compress: bool,
}

impl Rotation {
    /// Whether a file of `size` bytes opened (or last rotated) at `since` is due at `now`.
    pub fn due(&self, size: u64, since: SystemTime, now: SystemTime) -> bool {
        if size == 0 {
            return false;
        }
        if self.max_size > 0 && size >= self.max_size {
            return true;
        }
        self.max_age
            .is_some_and(|age| now.duration_since(since).unwrap_or_default() >= age)
    }
}

/// The suffix of a copy rotated at `now` (UTC): `20240501-100000.123`.
pub fn stamp(now: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = now.into();
    dt.format("%Y%m%d-%H%M%S%.3f").to_string()
}

/// The name of the copy of `base` rotated at `stamp`: the first of `base.STAMP`, `base.STAMP-1`,
/// ... that `taken` says is free (with or without `.gz`).
pub fn rotated_name(base: &str, stamp: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            format!("{base}.{stamp}")
        } else {
            format!("{base}.{stamp}-{n}")
        };
        if !taken(&name) && !taken(&format!("{name}.gz")) {
            return name;
        }
        n += 1;
    }
}

/// The sort key of a rotated copy of `base` (`None` for any other file).
fn rotated_key<'a>(base: &str, name: &'a str) -> Option<(&'a str, u32)> {
    let rest = name.strip_prefix(base)?.strip_prefix('.')?;
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let (stamp, n) = match rest.split_once('-') {
        Some((day, tail)) => match tail.split_once('-') {
            Some((time, n)) => (&rest[..day.len() + 1 + time.len()], n.parse().ok()?),
            None => (rest, 0),
        },
        None => return None,
    };
    let ok = stamp.len() == 19
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'-',
            15 => b == b'.',
            _ => b.is_ascii_digit(),
        });
    ok.then_some((stamp, n))
}

/// Of the files `names` in the directory, the rotated copies of `base` beyond the newest
/// `retain` (a copy and its `.gz` count once: both go).
pub fn to_delete(base: &str, names: &[String], retain: usize) -> Vec<String> {
    let mut rotated: Vec<(&str, u32, &String)> = names
        .iter()
        .filter_map(|n| rotated_key(base, n).map(|(s, k)| (s, k, n)))
        .collect();
    rotated.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
    let mut kept = 0;
    let mut last: Option<(&str, u32)> = None;
    let mut out = Vec::new();
    for (stamp, n, name) in rotated {
        if last != Some((stamp, n)) {
            kept += 1;
            last = Some((stamp, n));
        }
        if kept > retain {
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(max_size: u64, age: Option<u64>) -> Rotation {
        Rotation {
            max_size,
            max_age: age.map(Duration::from_secs),
            retain: 5,
            compress: false,
        }
    }

    #[test]
    fn due_by_size_or_by_age_never_empty() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(rot(100, None).due(100, t, t));
        assert!(!rot(100, None).due(99, t, t));
        assert!(!rot(0, None).due(u64::MAX, t, t));
        let day = rot(0, Some(86_400));
        assert!(!day.due(10, t, t + Duration::from_secs(86_399)));
        assert!(day.due(10, t, t + Duration::from_secs(86_400)));
        assert!(
            !day.due(0, t, t + Duration::from_secs(99_999)),
            "nothing to rotate"
        );
    }

    #[test]
    fn stamps_sort_by_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_557_600_123);
        assert_eq!(stamp(t), "20240501-100000.123");
    }

    #[test]
    fn a_taken_name_gets_a_counter() {
        let s = "20240501-100000.123";
        assert_eq!(
            rotated_name("web.log", s, |_| false),
            format!("web.log.{s}")
        );
        let taken = [format!("web.log.{s}"), format!("web.log.{s}-1.gz")];
        assert_eq!(
            rotated_name("web.log", s, |n| taken.iter().any(|t| t == n)),
            format!("web.log.{s}-2")
        );
    }

    #[test]
    fn only_the_newest_copies_are_kept() {
        let names: Vec<String> = [
            "web.log",
            "web.log.20240501-100000.123",
            "web.log.20240501-100000.123-1.gz",
            "web.log.20240501-100000.123-2",
            "web.log.20240502-000000.000.gz",
            "web.log.20240502-000000.000",
            "web.log.20240430-235959.999",
            "web.log.old",
            "other.log.20200101-000000.000",
            "web.log.2024",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut gone = to_delete("web.log", &names, 2);
        gone.sort();
        assert_eq!(
            gone,
            [
                "web.log.20240430-235959.999",
                "web.log.20240501-100000.123",
                "web.log.20240501-100000.123-1.gz",
            ]
        );
        assert_eq!(to_delete("web.log", &names, 0).len(), 6);
        assert!(to_delete("web.log", &names, 10).is_empty());
        assert!(rotated_key("web.log", "web.log.20240502-000000.000.gz").is_some());
        assert!(rotated_key("web.log", "web.log").is_none());
    }
}
