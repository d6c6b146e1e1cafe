//! `[challenge]` (the signing keys, shared by every gateway) and `[route.challenge]` (one
//! route's puzzle, pass lifetime, bypass rules and branding).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use netwall_config::duration;

use super::token::MAX_DIFFICULTY_BITS;

/// Default puzzle: 2^16 hashes on average, about a second in a browser on one core of this
/// machine's class (see the issue note's table), while a scripted client pays the same
/// second of CPU for every pass it wants.
pub const DEFAULT_DIFFICULTY_BITS: u8 = 16;
/// How far a flood raises the difficulty by default: four bits is 16 times the work.
pub const DEFAULT_ADAPTIVE_HEADROOM_BITS: u8 = 4;
/// Lifetime of a pass (the cookie): a day, so a visitor solves about once a day per network and
/// browser, and a stolen pass stops working by the next one.
pub const DEFAULT_COOKIE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a seed: long enough that a slow browser at a high difficulty finishes before
/// it ends (24 bits averages about two minutes on one core of a 2-core machine, and a 5-minute
/// life sent one in fourteen such visitors back to the start in `ops/bench --challenge`).
/// A longer life gives an attacker nothing: a seed still costs its work, is bound to one
/// network and host, and is redeemed once.
pub const DEFAULT_SEED_TTL: Duration = Duration::from_secs(30 * 60);
/// A second with more new visitors than this multiple of the recent average raises the
/// difficulty (the WebSocket spike detector's default).
pub const DEFAULT_SPIKE_MULTIPLE: f64 = crate::spike::DEFAULT_MULTIPLE;
/// Seconds with fewer new visitors than this never raise it: a quiet site is not "flooded"
/// by a handful of visitors after an idle night.
pub const DEFAULT_SPIKE_MIN_PER_SECOND: u64 = 20;
/// Averaging window for the recent rate of new visitors.
pub const DEFAULT_SPIKE_WINDOW: Duration = Duration::from_secs(60);
/// Page title when the route sets none.
pub const DEFAULT_TITLE: &str = "Checking your browser";
/// Page text when the route sets none.
pub const DEFAULT_TEXT: &str = "This site makes every new visitor's browser do a moment of work before it opens, so that automated floods cannot overwhelm it. It happens once, then you continue to the page you asked for.";
/// Accent colour when the route sets none.
pub const DEFAULT_COLOUR: &str = "#2b6cb0";

fn d_difficulty() -> u8 {
    DEFAULT_DIFFICULTY_BITS
}
fn d_cookie_ttl() -> Duration {
    DEFAULT_COOKIE_TTL
}
fn d_seed_ttl() -> Duration {
    DEFAULT_SEED_TTL
}
fn d_multiple() -> f64 {
    DEFAULT_SPIKE_MULTIPLE
}
fn d_min() -> u64 {
    DEFAULT_SPIKE_MIN_PER_SECOND
}
fn d_window() -> Duration {
    DEFAULT_SPIKE_WINDOW
}

/// `[challenge]`: where the HMAC keys of seeds and passes come from. Every gateway behind one
/// name must have the same keys, or a pass from one is refused by the next.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeKeysConfig {
    /// File with one key per line (at least 32 bytes each, e.g. `openssl rand -hex 32`); the
    /// first signs, the others are still accepted (rotation: add the new key on top, remove
    /// the old one a pass lifetime later). Blank lines and `#` comments are skipped.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// Environment variable with the keys, separated by commas or white space (wins over the
    /// file).
    #[serde(default)]
    pub keys_env: Option<String>,
}

/// `[route.challenge]`: a proof-of-work check before a visitor without a pass reaches the
/// route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeConfig {
    /// Leading zero bits of SHA-256 the solution needs (each bit doubles the work).
    #[serde(default = "d_difficulty")]
    pub difficulty: u8,
    /// Highest difficulty a flood of new visitors raises it to; equal to `difficulty` turns
    /// adaptation off. Defaults to `difficulty` + 4.
    #[serde(default)]
    pub max_difficulty: Option<u8>,
    /// How long a pass (the signed cookie a solved puzzle buys) is valid.
    #[serde(default = "d_cookie_ttl", deserialize_with = "duration")]
    pub cookie_ttl: Duration,
    /// How long a puzzle may take to solve and post.
    #[serde(default = "d_seed_ttl", deserialize_with = "duration")]
    pub seed_ttl: Duration,
    /// A request with a valid JWT for the route's `[route.auth]` is not challenged (API
    /// clients).
    #[serde(default)]
    pub bypass_jwt: bool,
    /// Client addresses or networks never challenged (`10.0.0.0/8`, `2001:db8::1`).
    #[serde(default)]
    pub bypass_ips: Vec<String>,
    /// Path prefixes never challenged, matched on segment boundaries (`/.well-known`).
    #[serde(default)]
    pub bypass_paths: Vec<String>,
    /// Methods never challenged (`OPTIONS`).
    #[serde(default)]
    pub bypass_methods: Vec<String>,
    /// New visitors per second above this multiple of their recent average raise the
    /// difficulty.
    #[serde(default = "d_multiple")]
    pub spike_multiple: f64,
    /// Fewer new visitors per second than this never raise it.
    #[serde(default = "d_min")]
    pub spike_min_per_second: u64,
    /// Averaging window for the recent rate of new visitors.
    #[serde(default = "d_window", deserialize_with = "duration")]
    pub spike_window: Duration,
    /// Page title (plain text).
    #[serde(default)]
    pub title: Option<String>,
    /// Page text (plain text).
    #[serde(default)]
    pub text: Option<String>,
    /// Accent colour, `#rrggbb`.
    #[serde(default)]
    pub colour: Option<String>,
}

impl ChallengeConfig {
    /// The highest difficulty a flood may reach.
    pub fn max(&self) -> u8 {
        self.max_difficulty.unwrap_or_else(|| {
            self.difficulty
                .saturating_add(DEFAULT_ADAPTIVE_HEADROOM_BITS)
                .min(MAX_DIFFICULTY_BITS)
        })
    }

    /// Every problem with the table, as (key, message).
    pub fn problems(&self, has_auth: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(1..=MAX_DIFFICULTY_BITS).contains(&self.difficulty) {
            out.push((
                "difficulty",
                format!("must be 1 to {MAX_DIFFICULTY_BITS} bits"),
            ));
        }
        if let Some(m) = self.max_difficulty
            && !(self.difficulty..=MAX_DIFFICULTY_BITS).contains(&m)
        {
            out.push((
                "max_difficulty",
                format!("must be from `difficulty` to {MAX_DIFFICULTY_BITS} bits"),
            ));
        }
        if self.cookie_ttl < Duration::from_secs(1) {
            out.push(("cookie_ttl", "must be at least 1s".into()));
        }
        if self.seed_ttl < Duration::from_secs(10) {
            out.push(("seed_ttl", "must be at least 10s: time to solve".into()));
        }
        if self.bypass_jwt && !has_auth {
            out.push((
                "bypass_jwt",
                "needs [route.auth] to know which tokens are valid".into(),
            ));
        }
        for ip in &self.bypass_ips {
            if let Err(e) = crate::tcp::config::parse_network(ip) {
                out.push(("bypass_ips", e));
            }
        }
        for p in &self.bypass_paths {
            let ok = p.starts_with('/')
                && crate::policy::path::normalize(p)
                    .is_ok_and(|n| n.trim_end_matches('/') == p.trim_end_matches('/'));
            if !ok {
                out.push((
                    "bypass_paths",
                    format!("`{p}` must be an absolute path in normal form"),
                ));
            }
        }
        for m in &self.bypass_methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
                out.push((
                    "bypass_methods",
                    format!("`{m}` is not an upper-case HTTP method"),
                ));
            }
        }
        if !(self.spike_multiple.is_finite() && self.spike_multiple >= 1.0) {
            out.push(("spike_multiple", "must be at least 1".into()));
        }
        if self.spike_window < Duration::from_secs(1) {
            out.push(("spike_window", "must be at least 1s".into()));
        }
        if self.title.as_ref().is_some_and(|t| t.len() > 200) {
            out.push(("title", "must be at most 200 bytes".into()));
        }
        if self.text.as_ref().is_some_and(|t| t.len() > 4000) {
            out.push(("text", "must be at most 4000 bytes".into()));
        }
        if let Some(c) = &self.colour
            && parse_colour(c).is_none()
        {
            out.push(("colour", format!("`{c}` must be `#rrggbb`")));
        }
        out
    }
}

/// `#rrggbb`, lower-cased; anything else is refused (it is written into a style sheet).
pub fn parse_colour(s: &str) -> Option<String> {
    let hex = s.strip_prefix('#')?;
    (hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("#{}", hex.to_ascii_lowercase()))
}

/// Split a key list (a file's lines, or an environment variable's words).
pub fn parse_keys(text: &str, lines: bool) -> Vec<Vec<u8>> {
    let items: Vec<&str> = if lines {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    } else {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect()
    };
    items.into_iter().map(|k| k.as_bytes().to_vec()).collect()
}
