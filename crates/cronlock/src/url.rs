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

/// Returns `url` with the password of its user-info part replaced by `***`.
///
/// `redis://user:pw@host:6379/2` -> `redis://user:***@host:6379/2`; `redis://:pw@host` ->
/// `redis://:***@host`. A user-info without a colon (`redis://token@host`, which Redis clients may
/// treat as a password) is redacted as a whole (`redis://***@host`). Other URLs are unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let redacted_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!(
        "{}{}{}",
        &url[..rest_start],
        redacted_userinfo,
        &url[rest_start + at..]
    )
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
}
