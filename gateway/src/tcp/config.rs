//! `[[tcp_route]]`: raw TCP connections that cross a tunnel to a raw TCP service (a database,
//! a cache), arriving on a public listener of their own (`listen`) or on the shared HTTPS port,
//! chosen by the TLS server name (`sni`), where TLS is terminated at the edge or passed through
//! to a service that does its own. A TCP route open to the world is refused: each names who may
//! connect, by client certificate, by address, or both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use netwall_config::{ConfigError, Located, duration};
use serde::Deserialize;
use toml::Spanned;

/// Concurrent connections per client IP on one TCP route: a connection pool of a busy
/// application fits; one address cannot take every socket of the listener.
pub const DEFAULT_TCP_MAX_CONNECTIONS_PER_IP: usize = 64;

/// Concurrent connections on one TCP route, from everyone: a database fronted by the edge
/// takes hundreds of sessions at most, and unauthenticated handshakes from many addresses
/// must not take every file descriptor of the gateway.
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 4096;

/// A TCP connection with no byte either way for this long is closed: database sessions sit
/// idle for minutes between queries, but a dead client must not hold its slot for ever.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long the connector has to reach the service and say so.
pub const DEFAULT_TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_max_connections() -> usize {
    DEFAULT_TCP_MAX_CONNECTIONS
}
fn default_max_per_ip() -> usize {
    DEFAULT_TCP_MAX_CONNECTIONS_PER_IP
}
fn default_idle() -> Duration {
    DEFAULT_TCP_IDLE_TIMEOUT
}
fn default_connect() -> Duration {
    DEFAULT_TCP_CONNECT_TIMEOUT
}

/// `[[tcp_route]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteConfig {
    /// Public address to bind, e.g. `0.0.0.0:5432`; or set `sni`.
    #[serde(default)]
    pub listen: Option<Spanned<SocketAddr>>,
    /// A TLS server name on the shared HTTPS port (`db.example.com`): connections whose
    /// ClientHello names it take this route instead of HTTP; or set `listen`.
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// On an `sni` route: `"terminate"` (TLS ends at the edge, with the HTTPS certificates;
    /// the default) or `"passthrough"` (the client's TLS, ClientHello and all, reaches the
    /// service, which holds its own certificate; admission is by address only).
    #[serde(default)]
    pub tls: Option<Spanned<TcpTls>>,
    /// Tunnel that carries the route.
    pub tunnel: Spanned<String>,
    /// TCP service name the connector resolves (`tcp://` or `tcp+unix:` in its `[services]`).
    pub service: String,
    /// PEM file of the CA whose client certificates are admitted: TLS is terminated here
    /// with the HTTPS certificates, and a client without such a certificate is refused in
    /// the handshake, before anything is sent through the tunnel.
    #[serde(default)]
    pub client_ca: Option<Spanned<PathBuf>>,
    /// Client networks admitted (`203.0.113.0/24`, `2001:db8::/32`, or one address);
    /// anyone else is closed at accept.
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    /// Concurrent connections per client IP.
    #[serde(default = "default_max_per_ip")]
    pub max_connections_per_ip: usize,
    /// Concurrent connections on the route in all; more are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Close a connection after this long without a byte either way.
    #[serde(default = "default_idle", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Time for the connector to reach the service.
    #[serde(default = "default_connect", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Start the service's connection with a PROXY protocol v2 header naming the client
    /// (and its certificate subject), so the database logs the real client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The service's own way of asking for TLS inside its protocol, answered here so that
    /// its clients' ordinary TLS settings work against the edge: `"postgres"` (the client
    /// asks with an SSLRequest and starts TLS on `S`). Needs `client_ca`.
    #[serde(default)]
    pub starttls: Option<Spanned<StartTls>>,
}

/// Where an `sni` route's TLS ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpTls {
    /// At the edge.
    Terminate,
    /// At the service.
    Passthrough,
}

/// Protocols whose clients ask for TLS before starting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// PostgreSQL: SSLRequest, then TLS (`sslmode=require` or stricter in libpq).
    Postgres,
}

impl TcpRouteConfig {
    /// The route's server name on the HTTPS port, lowercased, when it has one.
    pub fn server_name(&self) -> Option<String> {
        self.sni
            .as_ref()
            .map(|s| s.get_ref().trim_end_matches('.').to_ascii_lowercase())
    }

    /// Whether the client's TLS goes through to the service untouched.
    pub fn passthrough(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| *t.get_ref() == TcpTls::Passthrough)
    }

    /// The span errors about the whole entry point at.
    pub fn span(&self) -> std::ops::Range<usize> {
        match (&self.listen, &self.sni) {
            (Some(l), _) => l.span(),
            (None, Some(s)) => s.span(),
            (None, None) => self.tunnel.span(),
        }
    }

    /// The allow-list, parsed (entries that do not parse are config errors, so none here).
    pub fn networks(&self) -> Vec<IpNet> {
        self.allow_ips
            .iter()
            .filter_map(|s| parse_network(s.get_ref()).ok())
            .collect()
    }
}

/// `203.0.113.0/24` or a single address.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an address or a network (203.0.113.0/24)"))
}

/// Check `[[tcp_route]]` entry `i` against the declared tunnel names.
pub fn validate(
    at: &Located<'_>,
    i: usize,
    r: &TcpRouteConfig,
    tunnels: &std::collections::HashSet<&str>,
    errs: &mut Vec<ConfigError>,
) {
    let key = |k: &str| format!("tcp_route[{i}].{k}");
    let whole = format!("tcp_route[{i}]");
    match (&r.listen, &r.sni) {
        (Some(_), Some(s)) => errs.push(at.error(
            Some(s.span()),
            &key("sni"),
            "set listen (a port of its own) or sni (the HTTPS port), not both",
        )),
        (None, None) => errs.push(at.error(
            Some(r.span()),
            &whole,
            "set listen (a port of its own) or sni (a server name on the HTTPS port)",
        )),
        _ => {}
    }
    if let Some(s) = &r.sni
        && let Err(e) = match crate::policy::host::HostPattern::parse(s.get_ref()) {
            Ok(crate::policy::host::HostPattern::Exact(_)) => Ok(()),
            Ok(_) => Err("must be one exact name, not a wildcard".to_owned()),
            Err(e) => Err(e),
        }
    {
        errs.push(at.error(Some(s.span()), &key("sni"), &e));
    }
    if let Some(t) = &r.tls {
        if r.sni.is_none() {
            errs.push(at.error(
                Some(t.span()),
                &key("tls"),
                "only an sni route has a choice of where TLS ends",
            ));
        } else if r.passthrough() && r.client_ca.is_some() {
            errs.push(at.error(
                Some(t.span()),
                &key("tls"),
                "a passed-through TLS connection shows the edge no client certificate: use allow_ips, or terminate",
            ));
        }
    }
    if let (Some(st), Some(_)) = (&r.starttls, &r.sni) {
        errs.push(at.error(
            Some(st.span()),
            &key("starttls"),
            "an sni route starts with a TLS ClientHello; starttls needs a port of its own",
        ));
    }
    if !tunnels.contains(r.tunnel.get_ref().as_str()) {
        errs.push(at.error(
            Some(r.tunnel.span()),
            &key("tunnel"),
            "no [[tunnel]] of this name is declared",
        ));
    }
    if r.client_ca.is_none() && r.allow_ips.is_empty() {
        errs.push(at.error(
            Some(r.span()),
            &whole,
            "a TCP route open to the world is refused: set client_ca, allow_ips or both",
        ));
    }
    if let Some(st) = &r.starttls
        && r.client_ca.is_none()
    {
        errs.push(at.error(
            Some(st.span()),
            &key("starttls"),
            "starttls terminates TLS at the edge and needs client_ca",
        ));
    }
    for s in &r.allow_ips {
        if let Err(e) = parse_network(s.get_ref()) {
            errs.push(at.error(Some(s.span()), &key("allow_ips"), &e));
        }
    }
    if r.max_connections == 0 {
        errs.push(at.error(
            Some(r.span()),
            &key("max_connections"),
            "must be at least 1",
        ));
    }
    if r.max_connections_per_ip == 0 {
        errs.push(at.error(
            Some(r.span()),
            &key("max_connections_per_ip"),
            "must be at least 1",
        ));
    }
    if r.service.is_empty() {
        errs.push(at.error(Some(r.span()), &key("service"), "must not be empty"));
    }
}
