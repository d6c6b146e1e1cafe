//! The proof-of-work bot challenge (`[route.challenge]`).
//!
//! ```text
//! request on a challenged route
//!   -> {route}/.netwall/challenge/*      the page's script, worker, style, verify, check
//!   -> bypass: method, path prefix, client network, (proxy) valid JWT
//!   -> valid pass cookie                 continue to the service
//!   -> otherwise                         403 (429 while raised) challenge page, new seed
//! page: workers find a nonce -> POST verify -> Set-Cookie pass -> GET check -> reload
//! ```
//!
//! The gateway keeps no state per visitor: seeds and passes are HMAC-signed and bound to the
//! visitor's network (see [`token`]); the only memory is the set of redeemed seeds, which makes
//! every solution usable once ([`replay`]). The difficulty adapts to floods of new visitors
//! ([`adaptive`]).

pub mod adaptive;
pub mod config;
pub mod keys;
pub mod page;
pub mod replay;
pub mod token;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use ipnet::IpNet;
use serde::Deserialize;

use adaptive::{Adaptive, AdaptiveConfig};
use config::{ChallengeConfig, DEFAULT_COLOUR, DEFAULT_TEXT, DEFAULT_TITLE, parse_colour};
use replay::Redeemed;
use token::{Binding, KeyRing};

/// Where a challenged route serves the challenge's own endpoints, under its path prefix. The
/// name cannot collide with a page of the service by accident, and these requests never
/// reach the service.
pub const ENDPOINT_DIR: &str = ".netwall/challenge/";
/// Marks a challenge answer, so API clients can tell it from the service's own 403.
pub const CHALLENGE_HEADER: HeaderName = HeaderName::from_static("x-netwall-challenge");
/// The pass cookie of a route at `/`: `__Host-` makes browsers refuse it unless it is
/// `Secure`, host-only and for `/`, so a sibling subdomain cannot plant one.
pub const ROOT_COOKIE: &str = "__Host-netwall-pass";
/// The pass cookie of a route under a path prefix (scoped to that path).
pub const PATH_COOKIE: &str = "netwall-pass";
/// Largest verify body: a seed, a nonce and a number.
pub const MAX_VERIFY_BODY_BYTES: usize = 1024;
/// Time a client gets to send the verify body.
pub const VERIFY_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pass cookies looked at per request: a browser sends one or two, so more is an attempt to
/// make the edge compute many HMACs.
const MAX_PASS_CANDIDATES: usize = 4;

/// State every challenged route of a gateway shares. It outlives a reload: the keys are
/// replaced when `[challenge]` names new ones, the set of redeemed seeds stays.
#[derive(Debug)]
pub struct Shared {
    keys: arc_swap::ArcSwap<KeyRing>,
    redeemed: Redeemed,
}

impl Shared {
    /// Shared state over `keys`.
    pub fn new(keys: KeyRing) -> Shared {
        Shared {
            keys: arc_swap::ArcSwap::from_pointee(keys),
            redeemed: Redeemed::default(),
        }
    }

    /// Sign with `keys` from now on (a reload that rotated them).
    pub fn set_keys(&self, keys: KeyRing) {
        self.keys.store(Arc::new(keys));
    }
}

/// Which of the challenge's endpoints a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The page's script.
    App,
    /// The worker script.
    Worker,
    /// The style sheet.
    Style,
    /// `POST`: a solution.
    Verify,
    /// Whether the request carries a valid pass (the page's cookie check).
    Check,
    /// Anything else under the directory, or a wrong method.
    Unknown,
}

/// What the challenge decides about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// A valid pass: continue.
    Pass,
    /// Exempt by a bypass rule (the reason, for metrics).
    Bypass(&'static str),
    /// One of the challenge's own endpoints.
    Endpoint(Endpoint),
    /// No pass: challenge it (unless the proxy finds a valid JWT and `bypass_jwt` is on).
    Unsigned,
}

/// A challenge page issued.
pub struct Issued {
    /// The page.
    pub response: Response<Full<Bytes>>,
    /// Its difficulty.
    pub difficulty: u8,
}

/// A solution accepted.
pub struct Verified {
    /// 200 with the pass cookie.
    pub response: Response<Full<Bytes>>,
    /// Solve time the page reported (bounded by the seed's lifetime).
    pub solve_time: Option<Duration>,
}

#[derive(Deserialize)]
struct Solution {
    seed: String,
    nonce: String,
    #[serde(default)]
    elapsed_ms: Option<u64>,
}

/// One route's compiled `[route.challenge]`.
pub struct Challenge {
    shared: Arc<Shared>,
    adaptive: Mutex<Adaptive>,
    started: Instant,
    cookie_ttl: Duration,
    seed_ttl: Duration,
    /// Whether a valid JWT exempts a request.
    pub bypass_jwt: bool,
    bypass_ips: Vec<IpNet>,
    bypass_paths: Vec<String>,
    bypass_methods: Vec<Method>,
    base: String,
    dir: String,
    cookie: &'static str,
    title: String,
    text: String,
    style: Bytes,
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenge")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Challenge {
    /// The challenge of a route whose normalised path prefix is `prefix`.
    pub fn new(
        c: &ChallengeConfig,
        prefix: &str,
        shared: Arc<Shared>,
    ) -> Result<Challenge, String> {
        if let Some((key, e)) = c.problems(true).into_iter().next() {
            return Err(format!("{key}: {e}"));
        }
        let base = if prefix.is_empty() { "/" } else { prefix }.to_owned();
        let dir = if base == "/" {
            format!("/{ENDPOINT_DIR}")
        } else {
            format!("{}/{ENDPOINT_DIR}", base.trim_end_matches('/'))
        };
        let colour = c
            .colour
            .as_deref()
            .and_then(parse_colour)
            .unwrap_or_else(|| DEFAULT_COLOUR.to_owned());
        Ok(Challenge {
            shared,
            adaptive: Mutex::new(Adaptive::new(AdaptiveConfig {
                base: c.difficulty,
                max: c.max(),
                multiple: c.spike_multiple,
                min_per_second: c.spike_min_per_second,
                window: c.spike_window,
            })),
            started: Instant::now(),
            cookie_ttl: c.cookie_ttl,
            seed_ttl: c.seed_ttl,
            bypass_jwt: c.bypass_jwt,
            bypass_ips: c
                .bypass_ips
                .iter()
                .filter_map(|s| crate::tcp::config::parse_network(s).ok())
                .collect(),
            bypass_paths: c
                .bypass_paths
                .iter()
                .map(|p| {
                    let t = p.trim_end_matches('/');
                    if t.is_empty() { "/" } else { t }.to_owned()
                })
                .collect(),
            bypass_methods: c
                .bypass_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            cookie: if base == "/" {
                ROOT_COOKIE
            } else {
                PATH_COOKIE
            },
            base,
            dir,
            title: c.title.clone().unwrap_or_else(|| DEFAULT_TITLE.to_owned()),
            text: c.text.clone().unwrap_or_else(|| DEFAULT_TEXT.to_owned()),
            style: Bytes::from(page::style(&colour)),
        })
    }

    /// What to do with a request (path normalised, as routed).
    pub fn gate(
        &self,
        method: &Method,
        path: &str,
        ip: IpAddr,
        host: &str,
        headers: &HeaderMap,
        now: u64,
    ) -> Gate {
        let key = crate::policy::path::route_key(path);
        if let Some(name) = key.strip_prefix(self.dir.as_str()) {
            let get = method == Method::GET || method == Method::HEAD;
            return Gate::Endpoint(match name {
                "app.js" if get => Endpoint::App,
                "worker.js" if get => Endpoint::Worker,
                "style.css" if get => Endpoint::Style,
                "check" if get => Endpoint::Check,
                "verify" if method == Method::POST => Endpoint::Verify,
                _ => Endpoint::Unknown,
            });
        }
        if self.bypass_methods.contains(method) {
            return Gate::Bypass("method");
        }
        if self
            .bypass_paths
            .iter()
            .any(|p| crate::route::prefix_matches(p, &key))
        {
            return Gate::Bypass("path");
        }
        let canonical = ip.to_canonical();
        if self.bypass_ips.iter().any(|n| n.contains(&canonical)) {
            return Gate::Bypass("ip");
        }
        if self.has_pass(ip, host, headers, now) {
            Gate::Pass
        } else {
            Gate::Unsigned
        }
    }

    fn binding(&self, ip: IpAddr, host: &str, headers: &HeaderMap) -> Binding {
        let agent = headers
            .get(header::USER_AGENT)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        Binding::new(ip, &format!("{host}{}", self.base), agent)
    }

    /// Whether the request carries a pass valid for its client, browser and host.
    pub fn has_pass(&self, ip: IpAddr, host: &str, headers: &HeaderMap, now: u64) -> bool {
        let binding = self.binding(ip, host, headers);
        crate::policy::headers::cookies(headers)
            .filter(|(name, _)| *name == self.cookie.as_bytes())
            .take(MAX_PASS_CANDIDATES)
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .any(|value| token::verify_pass(&self.shared.keys.load(), &binding, value, now).is_ok())
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The difficulty now (for the metric).
    pub fn difficulty(&self) -> u8 {
        let second = self.second();
        self.adaptive.lock().map(|mut a| a.at(second)).unwrap_or(0)
    }

    /// A new challenge for a visitor without a pass: counts the visitor for the adaptive
    /// difficulty and answers 403, or 429 while a flood has raised the difficulty.
    pub fn issue(&self, ip: IpAddr, host: &str, headers: &HeaderMap, now: u64) -> Issued {
        let second = self.second();
        let (difficulty, raised) = match self.adaptive.lock() {
            Ok(mut a) => {
                let d = a.visitor(second);
                (d, a.raised())
            }
            Err(_) => (token::MAX_DIFFICULTY_BITS, true),
        };
        let binding = self.binding(ip, host, headers);
        let expires = now + self.seed_ttl.as_secs();
        let seed = token::issue_seed(&self.shared.keys.load(), &binding, difficulty, expires);
        let body = page::render(&self.dir, &self.title, &self.text, &seed, difficulty);
        let status = if raised {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::FORBIDDEN
        };
        let mut response = answer(status, "text/html; charset=utf-8", Bytes::from(body));
        if let Ok(v) = HeaderValue::from_str(&format!("pow; difficulty={difficulty}")) {
            response.headers_mut().insert(CHALLENGE_HEADER, v);
        }
        Issued {
            response,
            difficulty,
        }
    }

    /// Check a posted solution; on success the pass cookie. The error is the reason, for the
    /// security log.
    pub fn verify(
        &self,
        body: &[u8],
        ip: IpAddr,
        host: &str,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Verified, &'static str> {
        let solution: Solution = serde_json::from_slice(body).map_err(|_| "malformed body")?;
        let binding = self.binding(ip, host, headers);
        let seed = token::verify_seed(&self.shared.keys.load(), &binding, &solution.seed, now)
            .map_err(|e| match e {
                token::TokenError::Malformed => "malformed seed",
                token::TokenError::UnknownKey => "seed of an unknown key",
                token::TokenError::BadSignature => "seed not issued for this client",
                token::TokenError::Expired => "seed expired",
                token::TokenError::InsufficientWork => "insufficient work",
            })?;
        token::verify_work(&solution.seed, &solution.nonce, seed.difficulty).map_err(|e| {
            if e == token::TokenError::Malformed {
                "malformed nonce"
            } else {
                "insufficient work"
            }
        })?;
        if !self.shared.redeemed.redeem(seed.id, seed.expires, now) {
            return Err("solution already used");
        }
        let ttl = self.cookie_ttl.as_secs().max(1);
        let pass = token::issue_pass(&self.shared.keys.load(), &binding, now + ttl);
        let cookie = format!(
            "{}={pass}; Path={}; Max-Age={ttl}; Secure; HttpOnly; SameSite=Lax",
            self.cookie, self.base
        );
        let mut response = answer(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(b"{\"ok\":true}"),
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        let solve_time = solution
            .elapsed_ms
            .map(|ms| Duration::from_millis(ms).min(self.seed_ttl));
        Ok(Verified {
            response,
            solve_time,
        })
    }

    /// A static asset, or the cookie check.
    pub fn asset(&self, endpoint: Endpoint, pass: bool) -> Option<Response<Full<Bytes>>> {
        let (kind, body) = match endpoint {
            Endpoint::App => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(page::APP_JS.as_bytes()),
            ),
            Endpoint::Worker => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(page::WORKER_JS.as_bytes()),
            ),
            Endpoint::Style => ("text/css; charset=utf-8", self.style.clone()),
            Endpoint::Check => (
                "application/json",
                Bytes::from_static(if pass {
                    b"{\"pass\":true}"
                } else {
                    b"{\"pass\":false}"
                }),
            ),
            Endpoint::Verify | Endpoint::Unknown => return None,
        };
        Some(answer(StatusCode::OK, kind, body))
    }
}

/// A response of the challenge, with the headers all of them carry.
fn answer(status: StatusCode, kind: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}
