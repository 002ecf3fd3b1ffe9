//! Settings of what Herald asks an app's own backend: who a connection is (the connect
//! proxy), whether a connection may join a private or presence channel (the subscribe proxy,
//! in Laravel's `/broadcasting/auth` format), and when a connection token must be renewed.
//! The server makes the requests; the core only holds these values.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// Headers a proxy never passes on by name: cookies go through `cookies`, and the others
/// are the connection's own or Herald's.
pub const NEVER_FORWARDED: &[&str] = &[
    "cookie",
    "authorization",
    "host",
    "content-length",
    "content-type",
    "connection",
    "upgrade",
    "transfer-encoding",
    "sec-websocket-key",
];

/// One backend endpoint Herald asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// Time the backend has to answer. Past it the connection or subscription is refused
    /// (the proxy fails closed).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Calls to this endpoint in flight at once for this app. Beyond it a call waits at most
    /// `timeout` for a free one, then is refused: a slow backend cannot pile up requests,
    /// nor hold up other apps.
    #[serde(default = "default_concurrency")]
    pub max_concurrent: u32,
    /// Headers of the client's connection request passed on, by name (case-insensitive):
    /// `user-agent`, `accept-language`, … Never `cookie` (see `cookies`) or `authorization`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Cookies of the client's connection request passed on, by name (`laravel_session`,
    /// `XSRF-TOKEN`); others are never sent.
    #[serde(default)]
    pub cookies: Vec<String>,
    /// Also send this cookie's URL-decoded value as `X-XSRF-TOKEN`, which Laravel's CSRF
    /// check accepts in place of a form token (Laravel's cookie is `XSRF-TOKEN`).
    #[serde(default)]
    pub xsrf_cookie: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_concurrency() -> u32 {
    64
}

impl ProxySettings {
    /// Every problem with these settings; `key` is their path in the config.
    pub fn problems(&self, key: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push((
                format!("{key}.url"),
                "must be an http:// or https:// URL".into(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(30) {
            problems.push((
                format!("{key}.timeout"),
                "must be more than 0 and at most 30s".into(),
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent) {
            problems.push((format!("{key}.max_concurrent"), "must be 1 to 10000".into()));
        }
        for h in &self.headers {
            if NEVER_FORWARDED.contains(&h.to_ascii_lowercase().as_str()) {
                problems.push((
                    format!("{key}.headers"),
                    format!("{h:?} is never passed on (cookies go in `cookies`)"),
                ));
            }
        }
        problems
    }

    /// Whether the connection request's header `name` is passed on.
    pub fn forwards_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether the cookie `name` is passed on.
    pub fn forwards_cookie(&self, name: &str) -> bool {
        self.cookies.iter().any(|c| c == name) || self.xsrf_cookie.as_deref() == Some(name)
    }
}

/// When a connection token expires on an open connection.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenExpiry {
    /// Close connections whose token has expired: at `exp` the server sends a `refresh`
    /// hint, and unless a new token arrives within `grace` it closes the connection with
    /// 4005 (token expired). Off: an expired token only stops new subscriptions.
    pub enforce: bool,
    /// Time given to refresh after the hint.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
}

impl Default for TokenExpiry {
    fn default() -> Self {
        Self {
            enforce: false,
            grace: Duration::from_secs(30),
        }
    }
}
