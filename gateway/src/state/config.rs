//! `[state]`: where the policy state that must hold across gateways lives.
//!
//! ```toml
//! [state]
//! driver = "redis"                        # "memory" (default): this gateway only
//! url = "rediss://redis.internal:6380/0"  # redis://, rediss:// (TLS) or redis+unix:///path
//! username = "netwall"                    # optional (Redis ACL user)
//! password_env = "NETWALL_REDIS_PASSWORD" # the password comes from the environment only
//! ca_file = "redis-ca.pem"                # private CA of a rediss:// server
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use netwall_config::{ConfigError, Located, duration};

/// A Redis command that has not answered in this long counts as failed: a rate-limit check
/// is on every request's path, so a stalled Redis must cost a request little more than a
/// round trip inside a data centre (well under a millisecond) plus headroom for a busy server.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// Time allowed to open a connection to Redis (TCP, TLS and authentication).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a revocation is kept: tokens of every issuer netwall is meant for (access tokens
/// of minutes to hours) have expired by then, so a revoked token cannot come back; the
/// revocation of a user also outlives every token issued before it.
pub const DEFAULT_REVOCATION_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Prefix of every key and channel netwall uses, so one Redis can serve other tenants.
pub const DEFAULT_KEY_PREFIX: &str = "netwall";

fn d_command_timeout() -> Duration {
    DEFAULT_COMMAND_TIMEOUT
}
fn d_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn d_retention() -> Duration {
    DEFAULT_REVOCATION_RETENTION
}
fn d_driver() -> Spanned<Driver> {
    Spanned::new(0..0, Driver::Memory)
}
fn d_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_owned()
}

/// Which store holds shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// In this process: one gateway, nothing to run beside it.
    #[default]
    Memory,
    /// Redis or Valkey: every gateway pointed at the same server shares one policy.
    Redis,
}

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `memory` (default) or `redis`.
    #[serde(default = "d_driver")]
    pub driver: Spanned<Driver>,
    /// The Redis server: `redis://host:port/db`, `rediss://` for TLS, `redis+unix:///path`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Redis ACL user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the Redis password (never the file: it is read by
    /// every operator who reads the routes).
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    /// PEM root certificate of a `rediss://` server signed by a private CA (the system's
    /// roots otherwise). Relative to the configuration's folder.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Prefix of every key and channel.
    #[serde(default = "d_prefix")]
    pub key_prefix: String,
    /// Deadline of one Redis command.
    #[serde(default = "d_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Deadline of opening a Redis connection.
    #[serde(default = "d_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long revocations are kept (both drivers).
    #[serde(default = "d_retention", deserialize_with = "duration")]
    pub revocation_retention: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            driver: d_driver(),
            url: None,
            username: None,
            password_env: None,
            ca_file: None,
            key_prefix: d_prefix(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            revocation_retention: DEFAULT_REVOCATION_RETENTION,
        }
    }
}

impl StateConfig {
    /// Problems with `[state]`, each with its place in the file.
    pub fn validate(&self, at: &Located<'_>, errs: &mut Vec<ConfigError>) {
        let driver = *self.driver.get_ref();
        match (driver, &self.url) {
            (Driver::Redis, None) => errs.push(at.error(
                at.find("state", Some("driver")),
                "state.url",
                "the redis driver needs `url`",
            )),
            (Driver::Memory, Some(u)) => errs.push(at.error(
                Some(u.span()),
                "state.url",
                "`url` is for driver = \"redis\"",
            )),
            (Driver::Redis, Some(u)) => {
                if let Err(e) = check_url(u.get_ref()) {
                    errs.push(at.error(Some(u.span()), "state.url", &e));
                }
            }
            (Driver::Memory, None) => {}
        }
        if let Some(p) = &self.password_env
            && p.get_ref().is_empty()
        {
            errs.push(at.error(Some(p.span()), "state.password_env", "must not be empty"));
        }
        if let Some(c) = &self.ca_file
            && !self
                .url
                .as_ref()
                .is_some_and(|u| u.get_ref().starts_with("rediss://"))
        {
            errs.push(at.error(
                Some(c.span()),
                "state.ca_file",
                "`ca_file` is for a rediss:// (TLS) url",
            ));
        }
        // Used in SCAN patterns: no glob characters.
        let word = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
        if self.key_prefix.is_empty() || !self.key_prefix.chars().all(word) {
            errs.push(at.error(
                at.find("state", Some("key_prefix")),
                "state.key_prefix",
                "must be letters, digits and - _ . : only",
            ));
        }
        for (key, value) in [
            ("state.command_timeout", self.command_timeout),
            ("state.connect_timeout", self.connect_timeout),
            ("state.revocation_retention", self.revocation_retention),
        ] {
            if value.is_zero() {
                let name = key.trim_start_matches("state.");
                errs.push(at.error(at.find("state", Some(name)), key, "must be above zero"));
            }
        }
    }
}

/// Whether `url` names a Redis server netwall can reach, without a password in it.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "redis" | "rediss" | "redis+unix" | "unix" => {}
        s => {
            return Err(format!(
                "scheme `{s}`: use redis://, rediss:// or redis+unix://"
            ));
        }
    }
    if parsed.password().is_some() {
        return Err("no password in the URL: put it in the variable `password_env` names".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://redis.internal:6380").is_ok());
        assert!(check_url("redis+unix:///run/redis.sock").is_ok());
        assert!(check_url("http://x").is_err());
        assert!(check_url("redis://:hunter2@127.0.0.1").is_err());
        assert!(check_url("not a url").is_err());
    }
}
