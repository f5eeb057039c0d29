//! Backend URL parsing helpers and password redaction (a raw URL is never logged).

use std::fmt;

/// A backend URL that displays with its password replaced by `***`.
///
/// `redis://:hunter2@db:6379/0` displays as `redis://:***@db:6379/0`; URLs without a password
/// display unchanged. Use this (or [`redact_url`]) wherever a URL goes into a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl {
    raw: String,
    redacted: String,
}

impl RedactedUrl {
    /// Wraps a raw URL.
    pub fn new(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        let redacted = redact_url(&raw);
        Self { raw, redacted }
    }

    /// The URL with the password, for connecting. Never log this.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The redacted form.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedUrl({})", self.redacted)
    }
}

/// Returns `url` with the password of its user-info part, and any `pass=` / `password=` query
/// value, replaced by `***`.
///
/// `redis://user:pw@host:6379/2` -> `redis://user:***@host:6379/2`; `redis://:pw@host` ->
/// `redis://:***@host`. A user-info without a colon (`redis://token@host`, which Redis clients may
/// treat as a password) is redacted as a whole (`redis://***@host`). Passwords are often pasted
/// without percent-encoding, so the user-info ends at the last `@` of the URL:
/// `redis://:a/b#c@host/0` -> `redis://:***@host/0` (an `@` in a query hides more than needed,
/// never less). `redis+unix:///run/redis.sock?db=1&pass=pw` ->
/// `redis+unix:///run/redis.sock?db=1&pass=***`. Other URLs are unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let (head, rest) = match rest.rfind('@') {
        None => (url[..rest_start].to_owned(), rest),
        Some(at) => {
            // The last `@` of all: a password pasted without percent-encoding may contain `@`,
            // `/`, `?` or `#`. An `@` in a query hides more than needed, never less.
            let userinfo = &rest[..at];
            let redacted = match userinfo.find(':') {
                Some(colon) if !userinfo[..colon].contains(['/', '?', '#']) => {
                    format!("{}:***", &userinfo[..colon])
                }
                _ if userinfo.is_empty() => String::new(),
                _ => "***".to_owned(),
            };
            (format!("{}{redacted}", &url[..rest_start]), &rest[at..])
        }
    };
    format!("{head}{}", redact_query(rest))
}

/// `pass`, `password`, `sentinel_password`, ...: any key ending in `pass` or `password`.
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.ends_with("pass") || k.ends_with("password")
}

/// Replaces the values of `pass` and `password` query parameters (the form `redis+unix://` URLs
/// carry their password in) and of `sentinel_password` (Sentinel URLs) with `***`.
fn redact_query(rest: &str) -> String {
    let Some(q) = rest.find('?') else {
        return rest.to_owned();
    };
    let (before, query) = rest.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if is_secret_key(k) => {
                format!("{k}=***")
            }
            _ => p.to_owned(),
        })
        .collect();
    format!("{before}{}{fragment}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://alice:p@ss@host:6380/1?x=1"),
            "rediss://alice:***@host:6380/1?x=1"
        );
        assert_eq!(redact_url("redis://token@host"), "redis://***@host");
        assert_eq!(redact_url("redis://host:6379/0"), "redis://host:6379/0");
        assert_eq!(redact_url("file:///var/lib/cron"), "file:///var/lib/cron");
        assert_eq!(redact_url("/plain/path"), "/plain/path");
        let u = RedactedUrl::new("redis://:pw@h:1/2");
        assert_eq!(u.to_string(), "redis://:***@h:1/2");
        assert_eq!(format!("{u:?}"), "RedactedUrl(redis://:***@h:1/2)");
        assert_eq!(u.expose(), "redis://:pw@h:1/2");
    }

    #[test]
    fn redacts_passwords_with_raw_delimiters_and_query_passwords() {
        for (raw, shown) in [
            (
                "redis://app:hun/ter2@127.0.0.1:6379/0",
                "redis://app:***@127.0.0.1:6379/0",
            ),
            ("redis://:a#b@h:1/0", "redis://:***@h:1/0"),
            ("redis://:a?b@h:1/0?x=1", "redis://:***@h:1/0?x=1"),
            ("redis://app:h@u/n?t#er@h/0", "redis://app:***@h/0"),
            ("rediss://:p@h/0?client=me@x", "rediss://:***@x"),
            ("redis://tok/en@h", "redis://***@h"),
            (
                "redis+unix:///run/r.sock?db=1&pass=pw&x=2",
                "redis+unix:///run/r.sock?db=1&pass=***&x=2",
            ),
            (
                "redis+sentinel://:pw@h1,h2/m?sentinel_password=spw&db=1",
                "redis+sentinel://:***@h1,h2/m?sentinel_password=***&db=1",
            ),
            (
                "unix:///r.sock?password=pw#f",
                "unix:///r.sock?password=***#f",
            ),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }
}
