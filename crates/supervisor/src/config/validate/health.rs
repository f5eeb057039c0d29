//! `watchdog`, `max_age` and `max_age_jitter`: replacing a worker that is hung (systemd's
//! watchdog protocol) or old, the graceful way.

use std::time::Duration;

use super::super::human::HumanDuration;
use super::super::model::AgePolicy;
use super::super::raw::Spanned;
use super::bounds::{MAX_AGE, MAX_WAIT};
use super::{ConfigError, Validator};

/// The raw keys, taken out of the app's table.
pub(super) struct Raw {
    pub(super) watchdog: Option<Spanned<HumanDuration>>,
    pub(super) max_age: Option<Spanned<HumanDuration>>,
    pub(super) max_age_jitter: Option<Spanned<HumanDuration>>,
}

/// The shortest `watchdog`: a worker pings several times per period, from its event loop.
const MIN_WATCHDOG: Duration = Duration::from_millis(100);

/// The shortest `max_age`: anything shorter replaces workers faster than they warm up.
const MIN_AGE: Duration = Duration::from_secs(1);

impl Validator<'_> {
    /// The watchdog period and the age policy of app `key`.
    pub(super) fn health(
        &self,
        key: &str,
        raw: Raw,
    ) -> Result<(Option<Duration>, AgePolicy), ConfigError> {
        let at_least = |d: &Spanned<HumanDuration>, name: &str, min: Duration, bound| {
            let value = self.at_most(&format!("{key}.{name}"), d, bound)?;
            if value < min {
                return Err(self.err_at(
                    d.span(),
                    format!("{key}.{name}"),
                    format!("must be at least {}", crate::units::span(min)),
                ));
            }
            Ok(value)
        };
        let watchdog = raw
            .watchdog
            .as_ref()
            .map(|d| at_least(d, "watchdog", MIN_WATCHDOG, MAX_WAIT))
            .transpose()?;
        let max_age = raw
            .max_age
            .as_ref()
            .map(|d| at_least(d, "max_age", MIN_AGE, MAX_AGE))
            .transpose()?;
        let jitter = match (&raw.max_age_jitter, max_age) {
            (Some(j), None) => {
                return Err(self.err_at(
                    j.span(),
                    format!("{key}.max_age_jitter"),
                    "has no effect without `max_age`",
                ));
            }
            (Some(j), Some(_)) => self.at_most(&format!("{key}.max_age_jitter"), j, MAX_AGE)?,
            // A tenth of the age by default: workers started together leave over a while.
            (None, Some(age)) => age / 10,
            (None, None) => Duration::ZERO,
        };
        Ok((watchdog, AgePolicy { max_age, jitter }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::load_app as load;

    #[test]
    fn watchdog_and_max_age() {
        let c = load("watchdog = \"10s\"\nmax_age = \"1h\"").unwrap();
        let app = &c.apps[0];
        assert_eq!(app.worker.watchdog, Some(Duration::from_secs(10)));
        assert_eq!(app.age.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(
            app.age.jitter,
            Duration::from_secs(360),
            "a tenth by default"
        );
        let c = load("max_age = \"30m\"\nmax_age_jitter = \"0s\"").unwrap();
        assert_eq!(c.apps[0].age.jitter, Duration::ZERO);
        assert_eq!(load("").unwrap().apps[0].worker.watchdog, None);
    }

    #[test]
    fn bad_values_are_named() {
        let e = load("watchdog = \"10ms\"").unwrap_err();
        assert!(
            e.contains("app[0].watchdog") && e.contains("at least 100 ms"),
            "{e}"
        );
        let e = load("max_age_jitter = \"1m\"").unwrap_err();
        assert!(
            e.contains("app[0].max_age_jitter") && e.contains("without `max_age`"),
            "{e}"
        );
        let e = load("max_age = \"400days\"").unwrap_err();
        assert!(e.contains("app[0].max_age"), "{e}");
    }

    #[test]
    fn each_worker_gets_its_own_share_of_the_jitter() {
        let age = crate::config::AgePolicy {
            max_age: Some(Duration::from_secs(3600)),
            jitter: Duration::from_secs(360),
        };
        let limits: Vec<Duration> = (0..50).map(|id| age.limit_for(id).unwrap()).collect();
        assert!(
            limits
                .iter()
                .all(|l| *l >= Duration::from_secs(3600) && *l <= Duration::from_secs(3960))
        );
        let distinct: std::collections::BTreeSet<_> = limits.iter().collect();
        assert!(distinct.len() > 40, "spread: {distinct:?}");
        assert_eq!(
            age.limit_for(7),
            age.limit_for(7),
            "the same worker, the same limit"
        );
    }
}
