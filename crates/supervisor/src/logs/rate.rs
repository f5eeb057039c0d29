//! The rate limit of one worker's output: two token buckets (lines per second and bytes per
//! second), each holding at most `burst` seconds' worth, refilled continuously. A line passes when
//! both buckets hold enough; otherwise it is dropped and counted, and the next line that passes
//! carries the count so that one line can say how many were lost. Pure: time comes in as plain
//! instants.

use std::time::{Duration, Instant};

/// How much output one worker may write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Lines per second (0: no limit on lines).
    pub lines_per_sec: u64,
    /// Bytes per second (0: no limit on bytes).
    pub bytes_per_sec: u64,
    /// How many seconds' worth each bucket holds: a quiet worker may write this much at once.
    pub burst: Duration,
}

impl RateLimit {
    /// Whether it limits anything.
    pub fn is_none(&self) -> bool {
        self.lines_per_sec == 0 && self.bytes_per_sec == 0
    }
}

/// What the limiter decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `dropped_before` lines were dropped since the last line that passed (0: none),
    /// to be said in a line of their own first.
    Pass {
        /// Lines dropped just before this one.
        dropped_before: u64,
    },
    /// Dropped (counted).
    Drop,
}

/// One bucket: tokens (scaled by 1000 to keep fractions) refilled at `rate` per second.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u64,
    capacity_milli: u128,
    tokens_milli: u128,
}

impl Bucket {
    fn new(rate: u64, burst: Duration) -> Bucket {
        let capacity_milli = (u128::from(rate) * burst.as_millis()).max(1000);
        Bucket {
            rate,
            capacity_milli,
            tokens_milli: capacity_milli,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        if self.rate == 0 {
            return;
        }
        let add = u128::from(self.rate) * elapsed.as_micros() / 1000;
        self.tokens_milli = (self.tokens_milli + add).min(self.capacity_milli);
    }

    fn has(&self, n: u64) -> bool {
        self.rate == 0 || self.tokens_milli >= u128::from(n) * 1000
    }

    fn take(&mut self, n: u64) {
        if self.rate != 0 {
            self.tokens_milli = self.tokens_milli.saturating_sub(u128::from(n) * 1000);
        }
    }
}

/// The limiter of one worker's output (stdout and stderr together).
#[derive(Debug, Clone)]
pub struct Limiter {
    lines: Bucket,
    bytes: Bucket,
    last: Option<Instant>,
    /// Dropped since the last line that passed.
    pending: u64,
    none: bool,
}

impl Limiter {
    /// A limiter with full buckets.
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter {
            lines: Bucket::new(limit.lines_per_sec, limit.burst),
            bytes: Bucket::new(limit.bytes_per_sec, limit.burst),
            last: None,
            pending: 0,
            none: limit.is_none(),
        }
    }

    /// Whether a line of `len` bytes seen at `now` passes. A line longer than the whole byte
    /// bucket passes when the bucket is full (it would never pass otherwise), emptying it.
    pub fn check(&mut self, len: usize, now: Instant) -> Verdict {
        if self.none {
            return Verdict::Pass { dropped_before: 0 };
        }
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last);
            self.lines.refill(elapsed);
            self.bytes.refill(elapsed);
        }
        self.last = Some(now);
        let len = len as u64;
        let bytes_ok = self.bytes.has(len) || self.bytes.tokens_milli == self.bytes.capacity_milli;
        if self.lines.has(1) && bytes_ok {
            self.lines.take(1);
            self.bytes.take(len);
            let dropped_before = std::mem::take(&mut self.pending);
            Verdict::Pass { dropped_before }
        } else {
            self.pending += 1;
            Verdict::Drop
        }
    }

    /// Lines dropped since the last one that passed (said at the end of the stream).
    pub fn take_pending(&mut self) -> u64 {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(lines: u64, bytes: u64, burst_ms: u64) -> RateLimit {
        RateLimit {
            lines_per_sec: lines,
            bytes_per_sec: bytes,
            burst: Duration::from_millis(burst_ms),
        }
    }

    fn passes(v: Verdict) -> bool {
        matches!(v, Verdict::Pass { .. })
    }

    #[test]
    fn no_limit_passes_everything() {
        let mut l = Limiter::new(limit(0, 0, 1000));
        let t = Instant::now();
        for _ in 0..100_000 {
            assert!(passes(l.check(1000, t)));
        }
        assert_eq!(l.take_pending(), 0);
    }

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let mut l = Limiter::new(limit(100, 0, 1000));
        let t = Instant::now();
        let passed = (0..250).filter(|_| passes(l.check(10, t))).count();
        assert_eq!(passed, 100, "the burst: one second's worth");
        assert_eq!(l.take_pending(), 150);
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_the_next_line_says_how_many_were_dropped() {
        let mut l = Limiter::new(limit(10, 0, 1000));
        let t = Instant::now();
        for _ in 0..10 {
            assert!(passes(l.check(1, t)));
        }
        for _ in 0..7 {
            assert_eq!(l.check(1, t), Verdict::Drop);
        }
        // 100 ms later: one token back.
        let later = t + Duration::from_millis(100);
        assert_eq!(l.check(1, later), Verdict::Pass { dropped_before: 7 });
        assert_eq!(l.check(1, later), Verdict::Drop);
        assert_eq!(l.take_pending(), 1);
        assert_eq!(l.take_pending(), 0);
        // Long quiet: never more than the burst.
        let much_later = later + Duration::from_secs(3600);
        let passed = (0..50).filter(|_| passes(l.check(1, much_later))).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn over_a_long_flood_the_passed_lines_follow_the_rate() {
        let mut l = Limiter::new(limit(1000, 0, 1000));
        let t = Instant::now();
        let mut passed = 0;
        // 10 s of 100 lines per millisecond.
        for ms in 0..10_000u64 {
            let now = t + Duration::from_millis(ms);
            passed += (0..100).filter(|_| passes(l.check(10, now))).count();
        }
        // 1000 of burst + 1000/s for 10 s (give or take the last millisecond).
        assert!((10_900..=11_001).contains(&passed), "{passed}");
    }

    #[test]
    fn bytes_are_limited_too() {
        let mut l = Limiter::new(limit(0, 1000, 1000));
        let t = Instant::now();
        let passed = (0..20).filter(|_| passes(l.check(100, t))).count();
        assert_eq!(passed, 10);
        // A line bigger than the whole bucket passes once the bucket is full again.
        let later = t + Duration::from_secs(1);
        assert!(passes(l.check(5000, later)));
        assert_eq!(l.check(1, later), Verdict::Drop);
    }
}
