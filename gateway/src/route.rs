//! Route table: public host and path to (tunnel, service).
//!
//! Selection is host first, then path, like a classic virtual-host server: an exact host beats
//! the longest matching `*.suffix` wildcard, which beats `*`; within the chosen host the longest
//! path prefix wins, matched on segment boundaries (`/api` matches `/api` and `/api/x`, never
//! `/apix`). A host with no matching path answers 404 rather than falling through to another
//! host, so adding a wildcard can never capture traffic meant for an exact host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::valid_name;
use crate::config::{GatewayConfig, RouteConfig};
pub use crate::policy::host::HostPattern;
pub use crate::policy::path::normalize_prefix;
use crate::state::{Carry, PolicyState};

/// One resolved route.
#[derive(Debug, Clone)]
pub struct Route {
    /// `host` + `path` as configured, for logs and metrics.
    pub name: String,
    /// Tunnel that carries it.
    pub tunnel: String,
    /// Service name the connector resolves.
    pub service: String,
    /// Time to wait for the response head.
    pub timeout: Duration,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// WebSocket policy.
    pub websocket: Arc<crate::ws::WsPolicy>,
    /// JWT requirement, if any.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Trusted `X-Forwarded-For` hops.
    pub trusted_proxy_hops: usize,
    /// `Upgrade` protocols relayed raw (lower case; `websocket` is terminated at the edge).
    pub upgrades: Vec<String>,
    /// `TRACE` passes through.
    pub allow_trace: bool,
    /// Header names with `_` pass through.
    pub allow_underscores_in_headers: bool,
    /// HTTP rate limit.
    pub rate_limit: Option<RouteRateLimit>,
    /// CORS answered at the edge.
    pub cors: Option<crate::policy::cors::Cors>,
    /// Response headers set and removed.
    pub response_headers: Option<crate::policy::response_headers::ResponseHeaders>,
    /// Proof-of-work challenge for visitors without a pass.
    pub challenge: Option<Arc<crate::challenge::Challenge>>,
    /// Requests, errors and latency for the status page (kept across reloads).
    pub stats: Arc<crate::status::RouteStats>,
}

/// A route's HTTP rate limit.
#[derive(Debug, Clone)]
pub struct RouteRateLimit {
    /// The counter.
    pub limiter: Arc<dyn crate::policy::rate_limit::RateLimiter>,
    /// The limit, for the `RateLimit-Policy` header.
    pub limit: crate::policy::rate_limit::Limit,
    /// Key by JWT subject instead of client IP.
    pub by_sub: bool,
}

impl Route {
    /// Whether an `Upgrade: proto` request is relayed raw on this route.
    pub fn relays_upgrade(&self, proto: &str) -> bool {
        self.upgrades
            .iter()
            .any(|u| u != "websocket" && u.eq_ignore_ascii_case(proto))
    }

    /// Whether WebSockets are accepted on this route.
    pub fn accepts_websocket(&self) -> bool {
        self.upgrades.iter().any(|u| u == "websocket")
    }
}

/// Whether `path` is under `prefix`, on segment boundaries.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

fn rate_limit(
    rl: &crate::config::RateLimitConfig,
    route: &str,
    carry: &mut Carry,
) -> Option<RouteRateLimit> {
    use crate::policy::rate_limit::Limit;
    let requests = std::num::NonZeroU32::new(rl.requests)?;
    let limit = Limit {
        requests,
        window: rl.window,
        burst: rl
            .burst
            .and_then(std::num::NonZeroU32::new)
            .unwrap_or(requests),
    };
    Some(RouteRateLimit {
        limiter: carry.rate_limiter(route, limit, rl.on_store_error)?,
        limit,
        by_sub: rl.key == "sub",
    })
}

/// Routes of one host, longest prefix first.
#[derive(Debug, Default, Clone)]
struct Paths(Vec<(String, Arc<Route>)>);

impl Paths {
    fn insert(&mut self, prefix: String, route: Arc<Route>) {
        self.0.push((prefix, route));
        self.0.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.0
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(_, r)| r)
    }
}

/// All routes of a gateway.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    exact: HashMap<String, Paths>,
    /// Longest suffix first.
    suffixes: Vec<(String, Paths)>,
    any: Option<Paths>,
}

impl RouteTable {
    /// Build from validated configuration, with fresh counters.
    /// Key files named by `[route.auth]` and `[challenge]` resolve against `base`.
    pub fn new(config: &GatewayConfig, base: &std::path::Path) -> Result<RouteTable, String> {
        Self::build(config, base, &mut PolicyState::default().begin())
    }

    /// Build from validated configuration, keeping the counters `carry` holds for routes
    /// whose policies did not change (see [`crate::state`]).
    pub fn build(
        config: &GatewayConfig,
        base: &std::path::Path,
        carry: &mut Carry,
    ) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        let routes: &[RouteConfig] = &config.routes;
        // The challenge's keys are loaded once, for every challenged route.
        let challenges = if routes.iter().any(|r| r.challenge.is_some()) {
            let keys = crate::challenge::keys::load(&config.challenge, base)
                .map_err(|e| format!("challenge.{e}"))?;
            Some(carry.challenge_shared(keys))
        } else {
            None
        };
        for (i, r) in routes.iter().enumerate() {
            let pattern = HostPattern::parse(r.host.get_ref())?;
            let auth = match &r.auth {
                Some(a) => Some(Arc::new(
                    crate::auth::Auth::new(a.clone(), base)
                        .map_err(|e| format!("route[{i}].auth: {e}"))?,
                )),
                None => None,
            };
            let prefix = normalize_prefix(r.path.get_ref());
            let name = format!("{}{}", r.host.get_ref(), r.path.get_ref());
            let challenge = match (&r.challenge, &challenges) {
                (Some(c), Some(shared)) => Some(
                    carry
                        .challenge(&name, &prefix, c.get_ref(), || {
                            crate::challenge::Challenge::new(c.get_ref(), &prefix, shared.clone())
                        })
                        .map_err(|e| format!("route[{i}].challenge.{e}"))?,
                ),
                _ => None,
            };
            let attempts = crate::ws::WsPolicy::attempt_limit(&r.websocket)
                .and_then(|l| carry.attempt_limiter(&name, l));
            let rate_limit = match &r.rate_limit {
                Some(rl) => Some(rate_limit(rl.get_ref(), &name, carry).ok_or(format!(
                    "route[{i}].rate_limit: the limit cannot be expressed"
                ))?),
                None => None,
            };
            let route = Arc::new(Route {
                challenge,
                stats: carry.route_stats(&name),
                name,
                tunnel: r.tunnel.get_ref().clone(),
                service: r.service.clone(),
                timeout: r.timeout,
                max_body_bytes: r.max_body_bytes,
                websocket: Arc::new(
                    crate::ws::WsPolicy::new(r.websocket.clone(), base, attempts)
                        .map_err(|e| format!("route[{i}].websocket: {e}"))?,
                ),
                auth,
                trusted_proxy_hops: r.trusted_proxy_hops,
                upgrades: r
                    .upgrades
                    .get_ref()
                    .iter()
                    .map(|u| u.to_ascii_lowercase())
                    .collect(),
                allow_trace: r.allow_trace,
                allow_underscores_in_headers: r.allow_underscores_in_headers,
                rate_limit,
                cors: match &r.cors {
                    Some(c) => Some(
                        c.get_ref()
                            .policy()
                            .map_err(|e| format!("route[{i}].cors: {e}"))?,
                    ),
                    None => None,
                },
                response_headers: match &r.headers {
                    Some(h) => Some(
                        h.get_ref()
                            .policy()
                            .map_err(|e| format!("route[{i}].headers: {e}"))?,
                    ),
                    None => None,
                },
            });
            let paths = match pattern {
                HostPattern::Exact(h) => table.exact.entry(h).or_default(),
                HostPattern::Any => table.any.get_or_insert_with(Paths::default),
                HostPattern::Suffix(s) => {
                    let i = match table.suffixes.iter().position(|(x, _)| *x == s) {
                        Some(i) => i,
                        None => {
                            table.suffixes.push((s, Paths::default()));
                            table.suffixes.len() - 1
                        }
                    };
                    &mut table.suffixes[i].1
                }
            };
            paths.insert(prefix, route);
        }
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(table)
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact
            .values()
            .chain(self.suffixes.iter().map(|(_, p)| p))
            .chain(self.any.iter())
            .flat_map(|p| p.0.iter().map(|(_, r)| r))
    }

    /// The route for `host` (lower case, no port) and a path normalised by
    /// [`crate::policy::path::normalize`]; `;params` do not change which route matches.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let path = crate::policy::path::route_key(path);
        let path = path.as_ref();
        let paths = self.exact.get(host).or_else(|| {
            self.suffixes
                .iter()
                .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                .map(|(_, p)| p)
                .or(self.any.as_ref())
        })?;
        paths.find(path)
    }

    /// Every exact host name, for the development certificate.
    pub fn exact_hosts(&self) -> impl Iterator<Item = &str> {
        self.exact.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;

    fn table(routes: &str) -> RouteTable {
        let src = format!(
            "[https]\nlisten = \"127.0.0.1:0\"\nself_signed = true\n[tunnel_listener]\nlisten = \"127.0.0.1:0\"\nself_signed = true\n\
             [[tunnel]]\nname = \"t\"\ncredential_sha256 = \"{}\"\n{routes}",
            "0".repeat(64)
        );
        let cfg =
            GatewayConfig::parse(std::path::Path::new("test.toml"), &src).expect("valid config");
        RouteTable::new(&cfg, std::path::Path::new("")).expect("valid routes")
    }

    #[test]
    fn host_then_longest_prefix() {
        let t = table(
            r#"
            [[route]]
            host = "app.example.com"
            tunnel = "t"
            service = "root"
            [[route]]
            host = "app.example.com"
            path = "/api"
            tunnel = "t"
            service = "api"
            [[route]]
            host = "app.example.com"
            path = "/api/v2/"
            tunnel = "t"
            service = "v2"
            [[route]]
            host = "*.example.com"
            tunnel = "t"
            service = "wild"
            [[route]]
            host = "*.eu.example.com"
            path = "/only"
            tunnel = "t"
            service = "eu"
            [[route]]
            host = "*"
            path = "/fallback"
            tunnel = "t"
            service = "any"
            "#,
        );
        let cases = [
            ("app.example.com", "/", Some("root")),
            ("app.example.com", "/api", Some("api")),
            ("app.example.com", "/api/", Some("api")),
            ("app.example.com", "/api/users", Some("api")),
            ("app.example.com", "/apix", Some("root")),
            ("app.example.com", "/api/v2", Some("v2")),
            ("app.example.com", "/api/v2/x", Some("v2")),
            ("x.example.com", "/anything", Some("wild")),
            ("a.b.example.com", "/", Some("wild")),
            ("example.com", "/", None),
            ("x.eu.example.com", "/only/1", Some("eu")),
            // the most specific host is chosen first; its paths do not fall through
            ("x.eu.example.com", "/other", None),
            ("other.org", "/fallback", Some("any")),
            ("other.org", "/", None),
        ];
        for (host, path, want) in cases {
            let got = t.find(host, path).map(|r| r.service.as_str());
            assert_eq!(got, want, "{host}{path}");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("App.Example.com"),
            Ok(HostPattern::Exact("app.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.com",
            "a_b.com",
            "*.*.com",
            "exa mple.com",
            "a.com:443",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(HostPattern::Suffix(".example.com".into()).matches("a.example.com"));
        assert!(!HostPattern::Suffix(".example.com".into()).matches("example.com"));
        assert!(!HostPattern::Suffix(".example.com".into()).matches("badexample.com"));
    }
}
