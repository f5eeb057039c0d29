//! Reading a Redis backend URL: one server, a Sentinel-managed master or a Cluster, plus the
//! replication options (`min_replicas_ack`, `wait_timeout`) every form accepts.
//!
//! ```text
//! redis://[user:pass@]host[:6379][/db][?options]                      one server
//! rediss://...                                                        the same over TLS
//! redis+unix:///path/redis.sock[?db=N&pass=...&options]                one server, Unix socket
//! redis+sentinel://[user:pass@]host1[:26379][,host2...]/master[/db][?options]
//! rediss+sentinel://...                      TLS to the sentinels and to the data nodes
//! redis+cluster://[user:pass@]host1[:6379][,host2...][/][?options]   seeds of a Redis Cluster
//! rediss+cluster://...                       TLS to every node
//! ```
//!
//! The same forms with a `redis://` / `rediss://` scheme, for tools that accept only those:
//! `redis://host1:26379,host2:26379/?sentinel=master` and `redis://host1:7000,host2:7001/?cluster=yes`.
//!
//! Options: `min_replicas_ack=N` (claims, lease acquisitions and renewals are followed by
//! `WAIT N wait_timeout`; one acknowledged by fewer replicas is not used), `wait_timeout=200ms`
//! (`ms`, `s`, or bare milliseconds; default 200 ms), and for Sentinel `sentinel_username=`,
//! `sentinel_password=` (credentials of the sentinels themselves, when they have their own; the
//! user-info of the URL is for the data nodes) and `db=N`. The user-info is percent-decoded.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::url::RedactedUrl;

/// Default `wait_timeout`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(200);

/// A host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct HostPort {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Credentials (percent-decoded).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Auth {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A master watched by sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelSpec {
    pub(crate) sentinels: Vec<HostPort>,
    pub(crate) master: String,
    pub(crate) db: i64,
    pub(crate) tls: bool,
    /// For the master and replicas.
    pub(crate) data_auth: Auth,
    /// For the sentinels.
    pub(crate) sentinel_auth: Auth,
}

/// Seeds of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterSpec {
    pub(crate) seeds: Vec<HostPort>,
    pub(crate) tls: bool,
    pub(crate) auth: Auth,
}

/// What the URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deployment {
    /// One server: the URL to hand to the `redis` crate (our own options taken out).
    Single { url: String },
    /// A master found through sentinels.
    Sentinel(SentinelSpec),
    /// A Redis Cluster.
    Cluster(ClusterSpec),
}

/// The replication requirement of writes that hand out a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// Replicas that must acknowledge a claim, a lease acquisition or a renewal (`WAIT n`);
    /// 0: none (asynchronous replication, the Redis default).
    pub min_replicas_ack: u32,
    /// How long `WAIT` may block.
    pub wait_timeout: Duration,
}

impl Default for AckPolicy {
    fn default() -> Self {
        Self {
            min_replicas_ack: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

/// A parsed Redis backend URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl {
    pub(crate) redacted: RedactedUrl,
    pub(crate) deployment: Deployment,
    /// The replication options given in the URL (`None`: not given).
    pub(crate) min_replicas_ack: Option<u32>,
    pub(crate) wait_timeout: Option<Duration>,
}

fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: crate::url::redact_url(url),
        reason: reason.into(),
    }
}

/// Decodes `%XX` escapes (an invalid escape is kept as written).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `200ms`, `1s`, `1.5s` or `200` (milliseconds).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "ms"),
    };
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn parse_hosts(url: &str, list: &str, default_port: u16) -> Result<Vec<HostPort>> {
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(invalid(url, "empty host in the host list"));
        }
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let Some((h, after)) = rest.split_once(']') else {
                return Err(invalid(
                    url,
                    format!("`{item}`: unclosed `[` of an IPv6 address"),
                ));
            };
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => {
                    return Err(invalid(
                        url,
                        format!("`{item}`: expected `:port` after `]`"),
                    ));
                }
            }
        } else {
            match item.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (item, None),
            }
        };
        if host.is_empty() {
            return Err(invalid(url, format!("`{item}`: empty host name")));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(url, format!("`{item}`: invalid port `{p}`")))?,
        };
        out.push(HostPort {
            host: host.to_owned(),
            port,
        });
    }
    Ok(out)
}

/// The query parameters of `query` (without the `?`), decoded, in order.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Options this crate reads (all forms), and those of Sentinel URLs.
const OWN_OPTIONS: [&str; 2] = ["min_replicas_ack", "wait_timeout"];
const SENTINEL_OPTIONS: [&str; 4] = ["sentinel", "sentinel_username", "sentinel_password", "db"];

fn yes(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "" | "1" | "yes" | "true" | "on"
    )
}

impl RedisUrl {
    /// Whether `url` has one of the Redis schemes (the caller then parses it with
    /// [`RedisUrl::parse`]).
    pub(crate) fn is_redis(url: &str) -> bool {
        [
            "redis://",
            "rediss://",
            "redis+unix://",
            "unix://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    }

    /// Parses a Redis backend URL (trimmed).
    pub(crate) fn parse(url: &str) -> Result<RedisUrl> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(url, "expected a scheme such as redis://"));
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let params = parse_query(query);
        let get = |k: &str| {
            params
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let min_replicas_ack = match get("min_replicas_ack") {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|n| *n <= 100).ok_or_else(|| {
                invalid(
                    url,
                    format!("min_replicas_ack=`{v}`: expected a number of replicas (0-100)"),
                )
            })?),
        };
        let wait_timeout = match get("wait_timeout") {
            None => None,
            Some(v) => Some(parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                invalid(
                    url,
                    format!("wait_timeout=`{v}`: expected a positive duration like 200ms or 1s"),
                )
            })?),
        };
        let (tls, kind) = match scheme {
            "redis" => (false, None),
            "rediss" => (true, None),
            "redis+sentinel" => (false, Some("sentinel")),
            "rediss+sentinel" => (true, Some("sentinel")),
            "redis+cluster" => (false, Some("cluster")),
            "rediss+cluster" => (true, Some("cluster")),
            "redis+unix" | "unix" => {
                return Ok(RedisUrl {
                    redacted: RedactedUrl::new(url),
                    deployment: Deployment::Single {
                        url: strip_own_options(url, scheme, before_query, &params, fragment)?,
                    },
                    min_replicas_ack,
                    wait_timeout,
                });
            }
            other => {
                return Err(invalid(
                    url,
                    format!(
                        "unknown scheme `{other}://` (expected redis://, rediss://, \
                         redis+sentinel://, redis+cluster://, their rediss+ forms, or redis+unix://)"
                    ),
                ));
            }
        };
        let kind = match kind {
            Some(k) => Some(k),
            None if get("sentinel").is_some() => Some("sentinel"),
            None if get("cluster").is_some_and(yes) => Some("cluster"),
            None => None,
        };
        // The authority ends at the first `/` (the user-info must be percent-encoded).
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let auth = match userinfo {
            None => Auth::default(),
            Some(ui) => {
                let (user, pass) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => ("", Some(ui)),
                };
                Auth {
                    username: Some(percent_decode(user)).filter(|u| !u.is_empty()),
                    password: pass.map(percent_decode).filter(|p| !p.is_empty()),
                }
            }
        };
        if hosts.is_empty() {
            return Err(invalid(url, "no host"));
        }
        let Some(kind) = kind else {
            if hosts.contains(',') {
                return Err(invalid(
                    url,
                    "several hosts: use redis+sentinel://hosts/master-name or \
                     redis+cluster://hosts (or add ?sentinel=master-name or ?cluster=yes)",
                ));
            }
            return Ok(RedisUrl {
                redacted: RedactedUrl::new(url),
                deployment: Deployment::Single {
                    url: strip_own_options(url, scheme, before_query, &params, fragment)?,
                },
                min_replicas_ack,
                wait_timeout,
            });
        };
        if fragment.is_some() {
            return Err(invalid(url, "a #fragment is not supported here"));
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let deployment = if kind == "sentinel" {
            for (k, _) in &params {
                if !OWN_OPTIONS.contains(&k.as_str()) && !SENTINEL_OPTIONS.contains(&k.as_str()) {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown option `{k}` (Sentinel URLs take min_replicas_ack, \
                             wait_timeout, sentinel_username, sentinel_password, db)"
                        ),
                    ));
                }
            }
            let (master, db_segment) = match get("sentinel").filter(|s| !s.is_empty()) {
                Some(name) => (name.to_owned(), segments.first().copied()),
                None => match segments.as_slice() {
                    [] => {
                        return Err(invalid(
                            url,
                            "the master name is missing: redis+sentinel://host:26379/master-name",
                        ));
                    }
                    [name, rest @ ..] => (percent_decode(name), rest.first().copied()),
                },
            };
            let db_text = get("db").or(db_segment);
            let db =
                match db_text {
                    None => 0,
                    Some(d) => d.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                        invalid(url, format!("database `{d}`: expected a number"))
                    })?,
                };
            Deployment::Sentinel(SentinelSpec {
                sentinels: parse_hosts(url, hosts, 26379)?,
                master,
                db,
                tls,
                data_auth: auth,
                sentinel_auth: Auth {
                    username: get("sentinel_username")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                    password: get("sentinel_password")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                },
            })
        } else {
            for (k, _) in &params {
                if !OWN_OPTIONS.contains(&k.as_str()) && k != "cluster" {
                    return Err(invalid(
                        url,
                        format!(
                            "unknown option `{k}` (Cluster URLs take min_replicas_ack, wait_timeout)"
                        ),
                    ));
                }
            }
            if let Some(s) = segments.first().filter(|s| **s != "0") {
                return Err(invalid(
                    url,
                    format!("`/{s}`: a Redis Cluster has only database 0"),
                ));
            }
            Deployment::Cluster(ClusterSpec {
                seeds: parse_hosts(url, hosts, 6379)?,
                tls,
                auth,
            })
        };
        Ok(RedisUrl {
            redacted: RedactedUrl::new(url),
            deployment,
            min_replicas_ack,
            wait_timeout,
        })
    }
}

/// The URL of one server without the options this crate reads (the `redis` crate gets the
/// rest). A misspelt replication option is refused rather than passed on and ignored.
fn strip_own_options(
    url: &str,
    scheme: &str,
    before_query: &str,
    params: &[(String, String)],
    fragment: Option<&str>,
) -> Result<String> {
    let mut kept = Vec::new();
    for (k, v) in params {
        if OWN_OPTIONS.contains(&k.as_str()) {
            continue;
        }
        if k.contains("replica") || k.contains("wait") {
            return Err(invalid(
                url,
                format!("unknown option `{k}` (did you mean min_replicas_ack or wait_timeout?)"),
            ));
        }
        kept.push(if v.is_empty() {
            k.clone()
        } else {
            format!("{k}={v}")
        });
    }
    let mut out = format!("{scheme}://{before_query}");
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sentinel(url: &str) -> SentinelSpec {
        match RedisUrl::parse(url).unwrap().deployment {
            Deployment::Sentinel(s) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn sentinel_forms() {
        let s = sentinel("redis+sentinel://u:p%40ss@h1:26380,h2,[::1]:5/mymaster/2");
        assert_eq!(
            s.sentinels,
            vec![hp("h1", 26380), hp("h2", 26379), hp("::1", 5)]
        );
        assert_eq!((s.master.as_str(), s.db, s.tls), ("mymaster", 2, false));
        assert_eq!(s.data_auth.username.as_deref(), Some("u"));
        assert_eq!(s.data_auth.password.as_deref(), Some("p@ss"));
        assert_eq!(s.sentinel_auth, Auth::default());
        let s = sentinel(
            "rediss+sentinel://h1/m?sentinel_password=sp&sentinel_username=su&db=3&min_replicas_ack=1",
        );
        assert!(s.tls);
        assert_eq!(s.db, 3);
        assert_eq!(s.sentinel_auth.password.as_deref(), Some("sp"));
        assert_eq!(s.sentinel_auth.username.as_deref(), Some("su"));
        // The alias a redis:// only tool accepts.
        let s = sentinel("redis://:pw@h1:26379,h2:26379/?sentinel=mymaster&wait_timeout=1s");
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.data_auth.password.as_deref(), Some("pw"));
        assert_eq!(s.data_auth.username, None);
        let u = RedisUrl::parse("redis://h1,h2/1?sentinel=m&min_replicas_ack=2").unwrap();
        assert_eq!(u.min_replicas_ack, Some(2));
        assert!(matches!(u.deployment, Deployment::Sentinel(ref s) if s.db == 1));
    }

    #[test]
    fn cluster_and_single_forms() {
        let u =
            RedisUrl::parse("rediss+cluster://:pw@n1:7000,n2:7001/?min_replicas_ack=1").unwrap();
        let Deployment::Cluster(c) = u.deployment else {
            panic!()
        };
        assert!(c.tls);
        assert_eq!(c.seeds, vec![hp("n1", 7000), hp("n2", 7001)]);
        assert_eq!(c.auth.password.as_deref(), Some("pw"));
        assert_eq!(u.min_replicas_ack, Some(1));
        assert!(matches!(
            RedisUrl::parse("redis://n1:7000,n2:7001?cluster=yes")
                .unwrap()
                .deployment,
            Deployment::Cluster(_)
        ));
        let u = RedisUrl::parse(
            "redis://:pw@h:6379/2?protocol=resp3&min_replicas_ack=1&wait_timeout=150ms",
        )
        .unwrap();
        assert_eq!(
            u.deployment,
            Deployment::Single {
                url: "redis://:pw@h:6379/2?protocol=resp3".into()
            }
        );
        assert_eq!(u.wait_timeout, Some(Duration::from_millis(150)));
        let u = RedisUrl::parse("redis+unix:///r.sock?db=1&pass=x&min_replicas_ack=1").unwrap();
        assert_eq!(
            u.deployment,
            Deployment::Single {
                url: "redis+unix:///r.sock?db=1&pass=x".into()
            }
        );
        assert_eq!(
            RedisUrl::parse("rediss://h/0#insecure").unwrap().deployment,
            Deployment::Single {
                url: "rediss://h/0#insecure".into()
            }
        );
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (url, needle) in [
            ("redis+sentinel://h1,h2", "master name is missing"),
            ("redis+sentinel://h1:x/m", "invalid port `x`"),
            (
                "redis+sentinel://h1/m?min_replica_ack=1",
                "unknown option `min_replica_ack`",
            ),
            (
                "redis://h/0?min_replica_ack=1",
                "did you mean min_replicas_ack",
            ),
            ("redis://h/0?min_replicas_ack=x", "min_replicas_ack=`x`"),
            ("redis://h/0?wait_timeout=0", "wait_timeout=`0`"),
            ("redis://h1,h2/0", "several hosts"),
            ("redis+cluster://h1/3", "only database 0"),
            ("redis+cluster://h1?db=1", "unknown option `db`"),
            ("mongodb://h", "unknown scheme"),
            ("redis+sentinel://:secret@/m", "no host"),
        ] {
            let e = RedisUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn durations_and_decoding() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), None);
        assert_eq!(percent_decode("a%2Fb%40c%zz%4"), "a/b@c%zz%4");
    }
}
