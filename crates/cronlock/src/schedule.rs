//! Cron expressions evaluated in a job's own IANA timezone (DST-correct), on top of `croner`.
//!
//! # DST behaviour
//!
//! Iteration happens on the wall clock of the job's timezone (never a fixed UTC offset), and every
//! occurrence is returned as the UTC instant it corresponds to:
//!
//! - **Spring forward (gap)**: a fixed-time job whose wall-clock time does not exist that day
//!   (`0 30 2 * * *` in Europe/Berlin on 2026-03-29, where 02:00 jumps to 03:00) runs **once, at
//!   the first valid instant after the gap** (03:00:00 CEST = 01:00:00 UTC). This is croner's
//!   documented behaviour (OCPS / Vixie cron). Interval or wildcard jobs (`0 */15 * * * *`) simply
//!   have no occurrences inside the gap.
//! - **Fall back (overlap)**: a fixed-time job whose wall-clock time occurs twice (02:30 on
//!   2026-10-25 in Europe/Berlin) runs **once, at the first occurrence** (02:30 CEST = 00:30 UTC).
//!   Interval or wildcard jobs run at both instants (they are different UTC times).
//!
//! The tick identity of an occurrence is its UTC instant, so every instance agrees on it.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::error::{Error, Result};

/// A parsed cron schedule bound to a timezone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
    fixed_time: bool,
}

/// Parses an IANA timezone name (`Europe/Berlin`, `UTC`) for the job `job`.
///
/// The error names both the job and the zone.
pub fn parse_timezone(job: &str, name: &str) -> Result<Tz> {
    Tz::from_str(name.trim()).map_err(|_| Error::UnknownTimezone {
        job: job.to_owned(),
        zone: name.to_owned(),
    })
}

impl Schedule {
    /// Parses a cron expression: 5 fields as crontab, node-cron and Kubernetes write them
    /// (`30 2 * * *`: 02:30 every day, at second 0), 6 with a seconds field first
    /// (`0 30 2 * * *`), or 7 with a year. Nicknames such as `@daily` are accepted too.
    ///
    /// The job name is only used for the error message.
    pub fn parse_for(job: &str, expr: &str, tz: Tz) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidSchedule {
            job: job.to_owned(),
            expr: expr.to_owned(),
            reason,
        };
        let trimmed = expr.trim();
        let mut with_seconds = trimmed.to_owned();
        if !trimmed.starts_with('@') {
            match trimmed.split_whitespace().count() {
                5 => with_seconds = format!("0 {trimmed}"),
                6 | 7 => {}
                fields => {
                    return Err(invalid(format!(
                        "expected 5 fields (minutes hours day-of-month month day-of-week), or 6 \
                         with seconds first, or 7 with a year last; got {fields}"
                    )));
                }
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(&with_seconds)
            .map_err(|e| invalid(e.to_string()))?;
        let fixed_time = cron.determine_job_type() == croner::JobType::FixedTime;
        let schedule = Self {
            expr: trimmed.to_owned(),
            cron,
            tz,
            fixed_time,
        };
        // A pattern that never matches (e.g. 30 February) is rejected up front.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(invalid("the expression never matches".to_owned()));
        }
        Ok(schedule)
    }

    /// [`Schedule::parse_for`] without a job name in errors.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self> {
        Self::parse_for("<unnamed>", expr, tz)
    }

    /// The expression as given (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The timezone the expression is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first occurrence strictly after `after`, as a UTC instant, or `None` if there is none
    /// (within croner's search horizon).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Croner keeps sub-second parts: search from the whole second (occurrences are whole
        // seconds, so "strictly after the floor" equals "strictly after `after`").
        let after = DateTime::<Utc>::from_timestamp(after.timestamp(), 0)?;
        let mut cursor = after.with_timezone(&self.tz);
        let mut found_utc = None;
        // Croner searches on the naive wall clock; in a fall-back overlap it can answer with the
        // earlier of two instants, which may lie before `after`. Step past such answers.
        for _ in 0..8 {
            let found = self.cron.find_next_occurrence(&cursor, false).ok()?;
            let utc = found.with_timezone(&Utc);
            if utc > after {
                found_utc = Some(utc);
                break;
            }
            let naive = found.naive_local();
            let latest = self.tz.from_local_datetime(&naive).latest()?;
            if !self.fixed_time
                && latest.with_timezone(&Utc) > after
                && self.cron.is_time_matching(&latest).unwrap_or(false)
            {
                found_utc = Some(latest.with_timezone(&Utc));
                break;
            }
            // Continue the search after this wall-clock time (croner steps the naive clock).
            cursor = latest;
        }
        let found = found_utc?;
        // Interval jobs inside the first pass of a repeated hour also run in the second pass,
        // which croner's naive search walks past.
        match self.second_pass_candidate(after) {
            Some(c) if c < found => Some(c),
            _ => Some(found),
        }
    }

    /// For a non-fixed-time job and `after` in the first pass of a fall-back overlap: the first
    /// occurrence in the second pass (wall-clock times repeated with the new offset).
    fn second_pass_candidate(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.fixed_time {
            return None;
        }
        let local = after.with_timezone(&self.tz);
        let LocalResult::Ambiguous(early, late) = self.tz.from_local_datetime(&local.naive_local())
        else {
            return None;
        };
        let late_utc = late.with_timezone(&Utc);
        if early.with_timezone(&Utc) != after || late_utc <= after {
            return None;
        }
        let first_offset = early.offset().fix();
        let second_offset = late.offset().fix();
        // Binary search the transition instant in (after, late]: the offset is the first one at
        // `lo` and the second one at `hi`.
        let (mut lo, mut hi) = (after.timestamp(), late_utc.timestamp());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let at = DateTime::<Utc>::from_timestamp(mid, 0)?;
            if self.tz.offset_from_utc_datetime(&at.naive_utc()).fix() == first_offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let transition = DateTime::<Utc>::from_timestamp(hi, 0)?.with_timezone(&second_offset);
        let c = self.cron.find_next_occurrence(&transition, true).ok()?;
        let c_utc = c.with_timezone(&Utc);
        let in_second_pass = matches!(
            self.tz.from_local_datetime(&c.naive_local()),
            LocalResult::Ambiguous(_, l) if l.with_timezone(&Utc) == c_utc
        );
        (c_utc > after && in_second_pass).then_some(c_utc)
    }

    /// The interval between the occurrence after `tick` and `tick` (the current period), used to
    /// size how long a tick claim is kept.
    pub fn period_after(&self, tick: DateTime<Utc>) -> Option<chrono::Duration> {
        self.next_after(tick).map(|next| next - tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => panic!("bad test time {s}: {e}"),
        }
    }

    fn berlin(expr: &str) -> Schedule {
        match Schedule::parse(expr, chrono_tz::Europe::Berlin) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn ticks(s: &Schedule, from: &str, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cur = utc(from);
        for _ in 0..n {
            match s.next_after(cur) {
                Some(t) => {
                    assert!(t > cur, "next_after must advance: {t} after {cur}");
                    out.push(t);
                    cur = t;
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn spring_forward_runs_once_at_end_of_gap() {
        let s = berlin("0 30 2 * * *");
        let got = ticks(&s, "2026-03-27T12:00:00Z", 4);
        assert_eq!(
            got,
            vec![
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-29T01:00:00Z"), // 02:30 missing -> 03:00 CEST
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
                utc("2026-03-31T00:30:00Z"),
            ]
        );
    }

    #[test]
    fn fall_back_runs_once_at_first_occurrence() {
        let s = berlin("0 30 2 * * *");
        let got = ticks(&s, "2026-10-23T12:00:00Z", 4);
        assert_eq!(
            got,
            vec![
                utc("2026-10-24T00:30:00Z"), // 02:30 CEST
                utc("2026-10-25T00:30:00Z"), // first 02:30 (CEST); the second (CET) is skipped
                utc("2026-10-26T01:30:00Z"), // 02:30 CET
                utc("2026-10-27T01:30:00Z"),
            ]
        );
        // Asking from inside the repeated hour (after the first 02:30) also skips the second one.
        assert_eq!(
            s.next_after(utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn interval_job_runs_at_both_instants_of_repeated_hour() {
        let s = berlin("0 15 * * * *");
        let got = ticks(&s, "2026-10-24T23:50:00Z", 4);
        assert_eq!(
            got,
            vec![
                utc("2026-10-25T00:15:00Z"), // 02:15 CEST
                utc("2026-10-25T01:15:00Z"), // 02:15 CET
                utc("2026-10-25T02:15:00Z"), // 03:15 CET
                utc("2026-10-25T03:15:00Z"),
            ]
        );
    }

    #[test]
    fn every_minute_through_both_dst_changes_is_evenly_spaced() {
        let s = berlin("0 * * * * *");
        for start in ["2026-10-24T23:30:00Z", "2026-03-29T00:30:00Z"] {
            let got = ticks(&s, start, 180);
            assert_eq!(got.len(), 180);
            for w in got.windows(2) {
                assert_eq!(w[1] - w[0], chrono::Duration::seconds(60), "{w:?}");
            }
        }
    }

    #[test]
    fn offset_is_not_frozen_at_creation() {
        // Created in winter, evaluated in summer: 09:00 Berlin is 07:00 UTC in summer.
        let s = berlin("0 0 9 * * *");
        assert_eq!(
            s.next_after(utc("2026-07-01T00:00:00Z")),
            Some(utc("2026-07-01T07:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T08:00:00Z"))
        );
    }

    #[test]
    fn every_second() {
        let s = berlin("* * * * * *");
        let got = ticks(&s, "2026-11-23T08:30:05.400Z", 3);
        assert_eq!(
            got,
            vec![
                utc("2026-11-23T08:30:06Z"),
                utc("2026-11-23T08:30:07Z"),
                utc("2026-11-23T08:30:08Z"),
            ]
        );
    }

    #[test]
    fn never_matching_expression_is_rejected_quickly() {
        let t0 = std::time::Instant::now();
        let err = match Schedule::parse_for("feb30", "0 0 0 30 2 *", Tz::UTC) {
            Ok(_) => panic!("accepted 30 February"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("feb30") && err.contains("never matches"),
            "{err}"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn bad_input_names_the_job() {
        let err = match Schedule::parse_for("nightly", "61 * * * * *", Tz::UTC) {
            Ok(_) => panic!("accepted an invalid expression"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("nightly") && err.contains("61 * * * * *"),
            "{err}"
        );
        let err = match Schedule::parse_for("nightly", "* * * *", Tz::UTC) {
            Ok(_) => panic!("accepted 4 fields"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("nightly") && err.contains("expected 5 fields") && err.contains("got 4"),
            "{err}"
        );
        let err = match parse_timezone("nightly", "Mars/Olympus") {
            Ok(_) => panic!("accepted an unknown zone"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("nightly") && err.contains("Mars/Olympus"),
            "{err}"
        );
        assert!(parse_timezone("x", "Europe/Berlin").is_ok());
    }

    #[test]
    fn five_fields_run_at_second_zero_and_nicknames_are_read() {
        let at = |text: &str| {
            chrono::DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{e}"))
                .with_timezone(&Utc)
        };
        let hourly = Schedule::parse("0 * * * *", Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hourly.expr(), "0 * * * *", "shown as written");
        assert_eq!(
            hourly.next_after(at("2026-12-06T10:59:59Z")),
            Some(at("2026-12-06T11:00:00Z"))
        );
        let nightly = Schedule::parse("30 2 * * *", Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            nightly.next_after(at("2026-12-06T10:00:00Z")),
            Some(at("2026-12-07T02:30:00Z"))
        );
        let daily = Schedule::parse("@daily", Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            daily.next_after(at("2026-12-06T10:00:00Z")),
            Some(at("2026-12-07T00:00:00Z"))
        );
        let hourly = Schedule::parse("@hourly", Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            hourly.next_after(at("2026-12-06T10:00:01Z")),
            Some(at("2026-12-06T11:00:00Z"))
        );
    }
}
