//! `gateway.toml`: the listeners, certificates, tunnels and routes of one gateway.
//!
//! Parsing is strict (unknown keys are errors) and validation runs after parsing, collecting
//! every problem before reporting; each error names the file, line, column and key. Every
//! default is a named constant with the reason for its value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use netwall_config::{ConfigError, ConfigErrors, Located, duration, parse_duration};

/// Time allowed for a client to send a complete request head (slowloris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head; larger heads get 431. The tunnel codec is sized for this bound
/// (see `netwall_proto::MAX_CLIENT_HEADER_BYTES`), so it is also the most a route may allow.
pub const DEFAULT_MAX_HEADER_BYTES: usize = netwall_proto::MAX_CLIENT_HEADER_BYTES;
/// Time allowed for a public TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent public connections before new ones are closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Concurrent public connections per client IP across the HTTPS and HTTP listeners: a
/// browser opens 6 to 8 per site, so 256 leaves room for some 30 users behind one NAT while
/// one address can no longer hold thousands of idle TLS sessions.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Requests in flight through the tunnels per client address (IPv6 by /64), across its
/// connections: 256 connections of 256 HTTP/2 streams let one address hold 65,536 requests
/// that read nothing back, each pinning up to a stream window (about 1 MiB) of the tunnel
/// connection's window (`netwall_tunnel::CONNECTION_WINDOW`, 2 GiB) and a connection to the
/// service. 1,024 is hundreds of busy browsers behind one NAT or carrier-grade NAT, and
/// pins at most some 1.3 GB: less than a tunnel connection's window.
pub const DEFAULT_MAX_REQUESTS_PER_IP: usize = 1024;
/// Claims a route may forward as `x-netwall-claim-*` headers: what the tunnel head leaves for
/// edge-added headers (`netwall_proto::EDGE_ADDED_HEADERS`) after `Host`, the forwarding
/// headers and `x-netwall-sub`.
pub const MAX_FORWARDED_CLAIMS: usize = netwall_proto::EDGE_ADDED_HEADERS - 8;
/// Rate-limit window when a route sets only `requests` (the design's 100 requests / 60 s).
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);
/// HTTP/2 streams per client connection (hyper's 200, rounded up).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 256;
/// Handshake + hello + auth deadline on the tunnel port (rathole uses 5 s).
pub const DEFAULT_TUNNEL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A tunnel connection silent this long is dead; short so a vanished connector is noticed
/// before clients give up (quinn's default of 30 s is meant for browsers).
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive interval on tunnel connections: well under the idle timeout.
pub const DEFAULT_TUNNEL_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Unfinished tunnel handshakes allowed from one IP (junk on the tunnel port cannot starve
/// real connectors).
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP: usize = 16;
/// Time a route waits for the service's response head before answering 504.
/// Mode of a tunnel's Unix socket: only its owner may attach, so granting a container access
/// is a deliberate `unix_socket_owner` (or a looser mode), never an accident.
pub const DEFAULT_UNIX_SOCKET_MODE: u32 = 0o600;
/// Time to wait for a response head, per route.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request body limit per route (DESIGN.md: 10 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Largest WebSocket message a client may send (DESIGN.md; the hardened profile uses 10 KiB).
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Gateway ping interval on WebSockets.
pub const DEFAULT_WS_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Time a client has to answer a ping before it is closed.
pub const DEFAULT_WS_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the service to accept the WebSocket (the open handshake through the tunnel).
pub const DEFAULT_WS_OPEN_TIMEOUT: Duration = Duration::from_millis(2500);
/// Time the peer gets to answer a close frame.
pub const DEFAULT_WS_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Concurrent WebSockets per client IP on a route.
pub const DEFAULT_WS_MAX_PER_IP: usize = 100;
/// WebSockets per authenticated user on a route: one, the newest wins.
pub const DEFAULT_WS_MAX_PER_USER: usize = 1;
/// WebSocket opening attempts per user per minute (a reconnect storm is cut short).
pub const DEFAULT_WS_ATTEMPTS_PER_MINUTE: u32 = 5;
/// Pushed messages queued per WebSocket client: a burst of 256 updates rides out a slow
/// moment of a client's network, while a client that stopped reading costs at most 256 x the
/// message size (16 MiB at 64 KiB) before it is closed.
pub const DEFAULT_WS_PUSH_QUEUE: usize = 256;
/// Most pushed messages a route may queue per client.
pub const MAX_WS_PUSH_QUEUE: usize = 65_536;
/// Largest deflate window (2^bits bytes) negotiated for permessage-deflate: 4 KiB keeps an
/// idle compressed connection small.
pub const DEFAULT_WS_DEFLATE_WINDOW_BITS: u8 = 12;

/// How long shutdown waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The admin listener is private by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

fn default_header_read_timeout() -> Duration {
    DEFAULT_HEADER_READ_TIMEOUT
}
fn default_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_tls_handshake_timeout() -> Duration {
    DEFAULT_TLS_HANDSHAKE_TIMEOUT
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_h2_max_streams() -> u32 {
    DEFAULT_H2_MAX_STREAMS
}
fn default_tunnel_handshake_timeout() -> Duration {
    DEFAULT_TUNNEL_HANDSHAKE_TIMEOUT
}
fn default_tunnel_idle_timeout() -> Duration {
    DEFAULT_TUNNEL_IDLE_TIMEOUT
}
fn default_tunnel_keep_alive() -> Duration {
    DEFAULT_TUNNEL_KEEP_ALIVE
}
fn default_max_pending_per_ip() -> usize {
    DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP
}
fn default_route_timeout() -> Duration {
    DEFAULT_ROUTE_TIMEOUT
}
fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}
fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}
fn default_ws_max_message() -> usize {
    DEFAULT_WS_MAX_MESSAGE_BYTES
}
fn default_ws_heartbeat_interval() -> Duration {
    DEFAULT_WS_HEARTBEAT_INTERVAL
}
fn default_ws_heartbeat_timeout() -> Duration {
    DEFAULT_WS_HEARTBEAT_TIMEOUT
}
fn default_ws_open_timeout() -> Duration {
    DEFAULT_WS_OPEN_TIMEOUT
}
fn default_ws_close_timeout() -> Duration {
    DEFAULT_WS_CLOSE_TIMEOUT
}
fn default_ws_max_per_ip() -> usize {
    DEFAULT_WS_MAX_PER_IP
}
fn default_ws_max_per_user() -> usize {
    DEFAULT_WS_MAX_PER_USER
}
fn default_ws_attempts_per_minute() -> u32 {
    DEFAULT_WS_ATTEMPTS_PER_MINUTE
}
fn default_ws_push_queue() -> usize {
    DEFAULT_WS_PUSH_QUEUE
}
fn default_ws_window_bits() -> u8 {
    DEFAULT_WS_DEFLATE_WINDOW_BITS
}
fn default_upgrades() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["websocket".to_owned()])
}
fn default_rate_window() -> Duration {
    DEFAULT_RATE_WINDOW
}
fn default_rate_key() -> String {
    "ip".to_owned()
}
fn default_max_connections_per_ip() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_IP
}
fn default_max_requests_per_ip() -> usize {
    DEFAULT_MAX_REQUESTS_PER_IP
}
fn default_true() -> bool {
    true
}
fn default_path() -> Spanned<String> {
    Spanned::new(0..0, "/".to_owned())
}
fn default_self_signed_names() -> Vec<String> {
    vec!["localhost".to_owned()]
}
fn default_admin_listen() -> Option<SocketAddr> {
    DEFAULT_ADMIN_LISTEN.parse().ok()
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `development` (default) or `production`: the production profile refuses settings that
    /// are unsafe in front of real traffic (a `*` origin, self-signed certificates, a public
    /// admin listener).
    #[serde(default)]
    pub profile: Option<Spanned<String>>,
    /// Name of this gateway instance in logs and handshakes; defaults to the host name.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// Runtime worker threads; defaults to one per core
    /// ([`netwall_config::default_workers`]). Read at start only.
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    /// Public HTTPS listener.
    pub https: HttpsConfig,
    /// Public plain-HTTP listener that redirects to HTTPS.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Listener connectors dial.
    pub tunnel_listener: TunnelListenerConfig,
    /// Private listener for metrics and health.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Declared tunnels.
    #[serde(default, rename = "tunnel")]
    pub tunnels: Vec<TunnelConfig>,
    /// Public routes.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Raw TCP routes (databases, caches).
    #[serde(default, rename = "tcp_route")]
    pub tcp_routes: Vec<crate::tcp::config::TcpRouteConfig>,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Spike detection on new WebSocket connections.
    #[serde(default)]
    pub spike: crate::spike::SpikeConfig,
    /// Keys of the proof-of-work challenge (`[route.challenge]`).
    #[serde(default)]
    pub challenge: crate::challenge::config::ChallengeKeysConfig,
    /// Where state shared across gateways lives (`memory` by default).
    #[serde(default)]
    pub state: crate::state::config::StateConfig,
}

/// `[https]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// Address to bind, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// Generate a development certificate at start for every route host and `localhost`.
    #[serde(default)]
    pub self_signed: bool,
    /// Certificates chosen by SNI; the first one also answers clients that send no SNI.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertConfig>,
    /// Deadline for a complete request head.
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (431 beyond).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Deadline for the TLS handshake.
    #[serde(
        default = "default_tls_handshake_timeout",
        deserialize_with = "duration"
    )]
    pub tls_handshake_timeout: Duration,
    /// Concurrent public connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent public connections per client IP (HTTPS and HTTP listeners together);
    /// beyond it a new connection is closed at accept, before TLS.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Requests in flight through the tunnels per client address (IPv6 by /64), across all
    /// its connections; beyond it a request is answered 429. WebSockets have their own cap.
    #[serde(default = "default_max_requests_per_ip")]
    pub max_requests_per_ip: usize,
    /// HTTP/2 concurrent streams per connection.
    #[serde(default = "default_h2_max_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Every connection starts with a PROXY protocol v2 header (the gateway sits behind a TCP
    /// load balancer); its source address is the client's. Connections without one are dropped.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Certificates from an ACME CA (Let's Encrypt and the like), issued and renewed while
    /// the gateway runs.
    #[serde(default)]
    pub acme: Option<Spanned<crate::acme::config::AcmeConfig>>,
}

/// `[[https.certificate]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain.
    pub cert: Spanned<PathBuf>,
    /// PEM private key.
    pub key: Spanned<PathBuf>,
    /// SNI names this certificate answers (`app.example.com`, `*.example.com`).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to bind, e.g. `0.0.0.0:80`.
    pub listen: SocketAddr,
    /// Port named in redirects; defaults to the HTTPS listener's port.
    #[serde(default)]
    pub https_port: Option<u16>,
}

/// `[tunnel_listener]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelListenerConfig {
    /// UDP address for QUIC, e.g. `0.0.0.0:4443`.
    pub listen: SocketAddr,
    /// PEM certificate chain connectors verify.
    #[serde(default)]
    pub cert: Option<Spanned<PathBuf>>,
    /// PEM private key.
    #[serde(default)]
    pub key: Option<Spanned<PathBuf>>,
    /// Generate the tunnel certificate at start (development only).
    #[serde(default)]
    pub self_signed: bool,
    /// Names in the generated certificate.
    #[serde(default = "default_self_signed_names")]
    pub self_signed_names: Vec<String>,
    /// Write the generated certificate here (PEM) so connectors can trust it.
    #[serde(default)]
    pub self_signed_cert_out: Option<PathBuf>,
    /// Deadline for handshake, hello and authentication together.
    #[serde(
        default = "default_tunnel_handshake_timeout",
        deserialize_with = "duration"
    )]
    pub handshake_timeout: Duration,
    /// Silence after which a tunnel connection is declared dead.
    #[serde(default = "default_tunnel_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    #[serde(default = "default_tunnel_keep_alive", deserialize_with = "duration")]
    pub keep_alive: Duration,
    /// Unfinished handshakes allowed per source IP.
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_handshakes_per_ip: usize,
    /// Also accept tunnels over TLS/TCP on the public HTTPS listener, told apart from
    /// browsers by ALPN, for connectors whose network blocks UDP.
    #[serde(default = "default_true")]
    pub tls_on_https: bool,
    /// UDP address of the WireGuard listener, e.g. `0.0.0.0:51820`; off when absent. Peers
    /// are the tunnels with a `wireguard_public_key`.
    #[serde(default)]
    pub wireguard_listen: Option<Spanned<SocketAddr>>,
    /// File holding the gateway's WireGuard private key (base64, as `wg genkey` writes it).
    #[serde(default)]
    pub wireguard_private_key_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the gateway's WireGuard private key instead.
    #[serde(default)]
    pub wireguard_private_key_env: Option<Spanned<String>>,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address for `/metrics` and `/healthz`; keep it private.
    #[serde(default = "default_admin_listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

/// `[[tunnel]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Name connectors present in their hello.
    pub name: Spanned<String>,
    /// SHA-256 of the tunnel credential, hex (`netwall-gateway credential` prints one).
    /// May be left out only for a tunnel with a `unix_socket`, whose permissions then
    /// authenticate; when set, Unix-socket connections must present it too.
    #[serde(default)]
    pub credential_sha256: Option<Spanned<String>>,
    /// A Unix socket that is this tunnel's own listener (for containers without a network).
    #[serde(default)]
    pub unix_socket: Option<Spanned<PathBuf>>,
    /// Octal mode of the socket file, e.g. `"0660"`.
    #[serde(default)]
    pub unix_socket_mode: Option<Spanned<String>>,
    /// Owner of the socket file, numeric: `"uid"`, `"uid:gid"` or `":gid"`.
    #[serde(default)]
    pub unix_socket_owner: Option<Spanned<String>>,
    /// The connector's WireGuard public key (base64): connections over the WireGuard
    /// listener from this key serve this tunnel, and the key authenticates them (a
    /// configured credential must still match).
    #[serde(default)]
    pub wireguard_public_key: Option<Spanned<String>>,
}

impl TunnelConfig {
    /// The socket file's mode (validated).
    pub fn socket_mode(&self) -> u32 {
        self.unix_socket_mode
            .as_ref()
            .and_then(|m| parse_mode(m.get_ref()))
            .unwrap_or(DEFAULT_UNIX_SOCKET_MODE)
    }

    /// The socket file's owner (validated): `(uid, gid)`.
    pub fn socket_owner(&self) -> (Option<u32>, Option<u32>) {
        self.unix_socket_owner
            .as_ref()
            .and_then(|o| parse_owner(o.get_ref()))
            .unwrap_or((None, None))
    }
}

/// `"0660"` → `0o660`; at most `0o777`.
fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o777)
}

/// `"uid"`, `"uid:gid"`, `":gid"`, numeric.
fn parse_owner(s: &str) -> Option<(Option<u32>, Option<u32>)> {
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    let num = |p: &str| -> Option<Option<u32>> {
        if p.is_empty() {
            Some(None)
        } else {
            p.parse().ok().map(Some)
        }
    };
    let (u, g) = (num(u)?, num(g)?);
    (u.is_some() || g.is_some()).then_some((u, g))
}

/// `[[route]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Public host name, exact or `*.example.com`.
    pub host: Spanned<String>,
    /// Path prefix, matched on segment boundaries; the longest match wins.
    #[serde(default = "default_path")]
    pub path: Spanned<String>,
    /// Tunnel that carries the route.
    pub tunnel: Spanned<String>,
    /// Service name the connector resolves.
    pub service: String,
    /// Time to wait for the response head.
    #[serde(default = "default_route_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Request body limit.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// WebSocket policy for upgrades on this route.
    #[serde(default)]
    pub websocket: WsConfig,
    /// JWT required on this route (HTTP and WebSocket).
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    /// Proxies in front of the gateway whose `X-Forwarded-For` entries are trusted: the client
    /// is the entry this many places from the right. 0 (default): the socket peer.
    #[serde(default)]
    pub trusted_proxy_hops: usize,
    /// `Upgrade` protocols relayed on this route. `websocket` (terminated at the edge) is the
    /// only one by default; any other upgrade request is forwarded as a plain request with
    /// its `Upgrade` removed, so `h2c` and the like never reach the service raw.
    #[serde(default = "default_upgrades")]
    pub upgrades: Spanned<Vec<String>>,
    /// Pass `TRACE` through to the service (refused with 405 at the edge by default: it
    /// echoes credentials back to scripts).
    #[serde(default)]
    pub allow_trace: bool,
    /// Forward header names that contain `_` (dropped by default, as nginx does, so
    /// `X-Netwall_Sub` cannot pass for `X-Netwall-Sub` at a backend that maps `_` to `-`).
    #[serde(default)]
    pub allow_underscores_in_headers: bool,
    /// HTTP rate limit for this route (off by default).
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimitConfig>>,
    /// CORS answered at the edge (off by default: the service's own headers pass).
    #[serde(default)]
    pub cors: Option<Spanned<CorsConfig>>,
    /// Response headers the edge sets or removes.
    #[serde(default)]
    pub headers: Option<Spanned<ResponseHeadersConfig>>,
    /// Proof-of-work challenge for visitors without a pass (off by default).
    #[serde(default)]
    pub challenge: Option<Spanned<crate::challenge::config::ChallengeConfig>>,
}

/// `[route.cors]`: which other origins' pages may call this route, answered at the edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `https://app.example.com`, `https://*.example.com` (scheme-specific), or `"*"`.
    pub allowed_origins: Vec<String>,
    /// Methods a cross-origin request may use.
    #[serde(default = "default_cors_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a cross-origin request may send beyond the CORS-safelisted ones.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response headers a cross-origin page may read beyond the safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Cookies and HTTP authentication cross with the request (not with `"*"`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(default = "default_cors_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_cors_max_age() -> Duration {
    crate::policy::cors::DEFAULT_CORS_MAX_AGE
}

impl CorsConfig {
    /// The policy, parsed.
    pub fn policy(&self) -> Result<crate::policy::cors::Cors, String> {
        crate::policy::cors::Cors::new(
            &self.allowed_origins,
            &self.allowed_methods,
            &self.allowed_headers,
            &self.expose_headers,
            self.allow_credentials,
            self.max_age,
        )
    }
}

/// `[route.headers]`: response headers set (`set = { "x-frame-options" = "DENY" }`) or
/// removed (`remove = ["server"]`) on the service's responses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseHeadersConfig {
    /// Header name to value; replaces whatever the service sent.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl ResponseHeadersConfig {
    /// The policy, parsed.
    pub fn policy(&self) -> Result<crate::policy::response_headers::ResponseHeaders, String> {
        crate::policy::response_headers::ResponseHeaders::new(
            self.set.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.remove.iter().map(String::as_str),
        )
    }
}

/// `[route.rate_limit]`: requests per window, keyed by client IP or JWT subject.
///
/// Recommended for APIs: `requests = 100`, `window = "60s"`. A page that loads 50 assets
/// needs far more, or a route of its own for the assets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window.
    #[serde(default = "default_rate_window", deserialize_with = "duration")]
    pub window: Duration,
    /// Largest burst; defaults to `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `ip` (default: the client address after PROXY protocol and `trusted_proxy_hops`,
    /// IPv6 by /64) or `sub` (the JWT subject; needs `[route.auth]`).
    #[serde(default = "default_rate_key")]
    pub key: String,
    /// What the limit decides while a shared store (`[state] driver = "redis"`) cannot be
    /// reached: `allow` (default: fail open) or `deny` (fail closed, 429).
    #[serde(default)]
    pub on_store_error: crate::state::OnError,
}

/// `[route.websocket]`: how the edge treats WebSockets on a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsConfig {
    /// Largest message a client may send (close 1009 beyond; never forwarded).
    #[serde(default = "default_ws_max_message")]
    pub max_message_bytes: usize,
    /// Largest single frame; defaults to `max_message_bytes`.
    #[serde(default)]
    pub max_frame_bytes: Option<usize>,
    /// Messages per second a client may send (close 1008 beyond); unlimited when unset.
    #[serde(default)]
    pub messages_per_second: Option<u32>,
    /// Text messages must be JSON (close 1007 otherwise).
    #[serde(default)]
    pub text_must_be_json: bool,
    /// JSON Schema every text message must match (close 1008 otherwise; implies JSON).
    #[serde(default)]
    pub json_schema: Option<PathBuf>,
    /// Browser origins allowed to open a WebSocket (`https://app.example.com`,
    /// `*.example.com`, `*`); when empty the Origin header is not checked.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Ping interval.
    #[serde(
        default = "default_ws_heartbeat_interval",
        deserialize_with = "duration"
    )]
    pub heartbeat_interval: Duration,
    /// Time to answer a ping.
    #[serde(
        default = "default_ws_heartbeat_timeout",
        deserialize_with = "duration"
    )]
    pub heartbeat_timeout: Duration,
    /// Time for the service to accept the WebSocket.
    #[serde(default = "default_ws_open_timeout", deserialize_with = "duration")]
    pub open_timeout: Duration,
    /// Time the peer gets to answer a close.
    #[serde(default = "default_ws_close_timeout", deserialize_with = "duration")]
    pub close_timeout: Duration,
    /// Concurrent WebSockets per client IP (429 before the upgrade beyond).
    #[serde(default = "default_ws_max_per_ip")]
    pub max_connections_per_ip: usize,
    /// Concurrent WebSockets per authenticated user; a new one closes the oldest (4002).
    #[serde(default = "default_ws_max_per_user")]
    pub max_connections_per_user: usize,
    /// WebSocket opening attempts per authenticated user per minute (429 with Retry-After
    /// beyond; 0 turns the limit off).
    #[serde(default = "default_ws_attempts_per_minute")]
    pub connect_attempts_per_user_per_minute: u32,
    /// Negotiate permessage-deflate when the client offers it.
    #[serde(default = "default_true")]
    pub compression: bool,
    /// Largest deflate window, 9 to 15 bits.
    #[serde(default = "default_ws_window_bits")]
    pub compression_window_bits: u8,
    /// Deliver messages the service publishes through its connector (see
    /// [`crate::fanout`]): every session is subscribed to `route:NAME`, `connection:ID` and,
    /// with auth, `user:SUB`.
    #[serde(default)]
    pub push: bool,
    /// Pushed messages queued per client before it is closed as too slow (4005).
    #[serde(default = "default_ws_push_queue")]
    pub push_queue: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            max_frame_bytes: None,
            messages_per_second: None,
            text_must_be_json: false,
            json_schema: None,
            allowed_origins: Vec::new(),
            heartbeat_interval: DEFAULT_WS_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_WS_HEARTBEAT_TIMEOUT,
            open_timeout: DEFAULT_WS_OPEN_TIMEOUT,
            close_timeout: DEFAULT_WS_CLOSE_TIMEOUT,
            max_connections_per_ip: DEFAULT_WS_MAX_PER_IP,
            max_connections_per_user: DEFAULT_WS_MAX_PER_USER,
            connect_attempts_per_user_per_minute: DEFAULT_WS_ATTEMPTS_PER_MINUTE,
            compression: true,
            compression_window_bits: DEFAULT_WS_DEFLATE_WINDOW_BITS,
            push: false,
            push_queue: DEFAULT_WS_PUSH_QUEUE,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// A parsed configuration with the source it came from (for error locations).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: GatewayConfig,
    /// Folder of the file, against which relative paths resolve.
    pub base: PathBuf,
    /// The file, which a reload reads again (`None`: configured in code, nothing to re-read).
    pub path: Option<PathBuf>,
    /// The file as a TOML table, so a reload can tell which sections changed.
    pub raw: toml::Table,
}

impl Loaded {
    /// A configuration made in code (relative paths resolve against `base`); it cannot be
    /// reloaded.
    pub fn in_code(config: GatewayConfig, base: PathBuf) -> Loaded {
        Loaded {
            config,
            base,
            path: None,
            raw: toml::Table::new(),
        }
    }
}

impl GatewayConfig {
    /// Runtime worker threads: the file's `workers`, else one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .as_ref()
            .map_or_else(netwall_config::default_workers, |w| *w.get_ref())
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::whole_file(
                path,
                format!("cannot read: {e}"),
            )])
        })?;
        let config = Self::parse(path, &src)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // `parse` accepted it, so it is a table.
        let raw = src.parse::<toml::Table>().unwrap_or_default();
        Ok(Loaded {
            config,
            base,
            path: Some(path.to_path_buf()),
            raw,
        })
    }

    /// Parse and validate `src`, reporting errors against `path`.
    pub fn parse(path: &Path, src: &str) -> Result<GatewayConfig, ConfigErrors> {
        let located = Located::new(path, src);
        let config: GatewayConfig = located.parse()?;
        let errors = config.validate(&located);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn validate(&self, at: &Located<'_>) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let production = match self
            .profile
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("development", _)) => false,
            Some(("production", _)) => true,
            Some((_, span)) => {
                errs.push(at.error(
                    Some(span),
                    "profile",
                    "must be \"development\" or \"production\"",
                ));
                false
            }
        };
        if let Some(w) = &self.workers
            && let Err(e) = netwall_config::check_workers(*w.get_ref())
        {
            errs.push(at.error(Some(w.span()), "workers", &e));
        }
        self.state.validate(at, &mut errs);
        if production {
            if self.https.self_signed {
                errs.push(at.error(
                    at.find("https", Some("self_signed")),
                    "https.self_signed",
                    "the production profile refuses self-signed certificates",
                ));
            }
            if self.tunnel_listener.self_signed {
                errs.push(at.error(
                    at.find("tunnel_listener", Some("self_signed")),
                    "tunnel_listener.self_signed",
                    "the production profile refuses self-signed certificates",
                ));
            }
            if self.admin.listen.is_some_and(|a| !a.ip().is_loopback()) {
                errs.push(at.error(
                    at.find("admin", Some("listen")),
                    "admin.listen",
                    "the production profile keeps the admin listener on loopback",
                ));
            }
            let keys = &self.challenge;
            if keys.keys_file.is_none()
                && keys.keys_env.is_none()
                && let Some((i, Some(c))) = self
                    .routes
                    .iter()
                    .map(|r| r.challenge.as_ref())
                    .enumerate()
                    .find(|(_, c)| c.is_some())
            {
                errs.push(at.error(
                    Some(c.span()),
                    &format!("route[{i}].challenge"),
                    "the production profile needs [challenge] keys_file or keys_env: every gateway must sign passes with the same key",
                ));
            }
            for (i, r) in self.routes.iter().enumerate() {
                if r.websocket.allowed_origins.iter().any(|o| o.trim() == "*") {
                    errs.push(at.error(
                        Some(r.host.span()),
                        &format!("route[{i}].websocket.allowed_origins"),
                        "the production profile refuses the `*` origin: list the origins",
                    ));
                }
            }
        }
        if !self.https.self_signed
            && self.https.certificates.is_empty()
            && self.https.acme.is_none()
        {
            errs.push(at.error(
                at.find("https", None),
                "https",
                "needs `self_signed = true`, [https.acme] or at least one [[https.certificate]]",
            ));
        }
        if let Some(acme) = &self.https.acme {
            errs.extend(acme.get_ref().validate(at, acme.span(), self));
        }
        if !(8192..=netwall_proto::MAX_CLIENT_HEADER_BYTES).contains(&self.https.max_header_bytes) {
            errs.push(at.error(
                at.find("https", Some("max_header_bytes")),
                "https.max_header_bytes",
                &format!(
                    "must be between 8192 and {} (what the tunnel carries)",
                    netwall_proto::MAX_CLIENT_HEADER_BYTES
                ),
            ));
        }
        if self.https.max_connections_per_ip == 0 {
            errs.push(at.error(
                at.find("https", Some("max_connections_per_ip")),
                "https.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        if self.https.max_requests_per_ip == 0 {
            errs.push(at.error(
                at.find("https", Some("max_requests_per_ip")),
                "https.max_requests_per_ip",
                "must be at least 1",
            ));
        }
        let tl = &self.tunnel_listener;
        match (&tl.cert, &tl.key, tl.self_signed) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            (Some(c), _, true) => errs.push(at.error(
                Some(c.span()),
                "tunnel_listener.cert",
                "cannot be combined with self_signed = true",
            )),
            _ => errs.push(at.error(
                at.find("tunnel_listener", None),
                "tunnel_listener",
                "needs both `cert` and `key`, or `self_signed = true`",
            )),
        }
        if tl.keep_alive >= tl.idle_timeout {
            errs.push(at.error(
                at.find("tunnel_listener", Some("keep_alive")),
                "tunnel_listener.keep_alive",
                "must be shorter than idle_timeout",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            if !valid_name(t.name.get_ref()) {
                errs.push(at.error(
                    Some(t.name.span()),
                    &format!("tunnel[{i}].name"),
                    "must be 1-64 characters of a-z, 0-9, '-', '_', '.'",
                ));
            }
            if !names.insert(t.name.get_ref().as_str()) {
                errs.push(at.error(
                    Some(t.name.span()),
                    &format!("tunnel[{i}].name"),
                    &format!("tunnel `{}` is declared twice", t.name.get_ref()),
                ));
            }
            validate_tunnel(at, i, t, &mut errs);
        }
        let mut sockets = std::collections::HashSet::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            if let Some(p) = &t.unix_socket
                && !sockets.insert(p.get_ref())
            {
                errs.push(at.error(
                    Some(p.span()),
                    &format!("tunnel[{i}].unix_socket"),
                    "another tunnel already listens on this socket",
                ));
            }
        }
        validate_wireguard(at, &self.tunnel_listener, &self.tunnels, &mut errs);
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            validate_websocket(at, i, r, &mut errs);
            validate_route(at, i, r, &names, &mut errs);
            let key = (
                r.host.get_ref().to_ascii_lowercase(),
                crate::policy::path::normalize_prefix(r.path.get_ref()),
            );
            if !seen.insert(key) {
                errs.push(at.error(
                    Some(r.host.span()),
                    &format!("route[{i}]"),
                    "duplicates an earlier route's host and path",
                ));
            }
        }
        let mut listens = std::collections::HashSet::new();
        let mut server_names = std::collections::HashSet::new();
        let http_hosts: std::collections::HashSet<String> = self
            .routes
            .iter()
            .map(|r| r.host.get_ref().to_ascii_lowercase())
            .collect();
        for (i, r) in self.tcp_routes.iter().enumerate() {
            crate::tcp::config::validate(at, i, r, &names, &mut errs);
            if let Some(listen) = &r.listen {
                let addr = *listen.get_ref();
                // Port 0 asks the system for a free port: never a clash.
                if addr.port() != 0 && (addr == self.https.listen || !listens.insert(addr)) {
                    errs.push(at.error(
                        Some(listen.span()),
                        &format!("tcp_route[{i}].listen"),
                        "another listener already binds this address",
                    ));
                }
            }
            if let (Some(sni), Some(name)) = (&r.sni, r.server_name()) {
                let clash = if http_hosts.contains(&name) {
                    Some("an HTTP [[route]] already serves this host")
                } else if !server_names.insert(name) {
                    Some("another tcp_route already takes this server name")
                } else {
                    None
                };
                if let Some(m) = clash {
                    errs.push(at.error(Some(sni.span()), &format!("tcp_route[{i}].sni"), m));
                }
            }
        }
        for (i, c) in self.https.certificates.iter().enumerate() {
            for h in &c.hosts {
                if let Err(e) = crate::policy::host::HostPattern::parse(h) {
                    errs.push(at.error(
                        Some(c.cert.span()),
                        &format!("https.certificate[{i}].hosts"),
                        &e,
                    ));
                }
            }
        }
        errs
    }
}

/// A route's `[route.websocket]`; its errors point at the route (the key names the field).
fn validate_websocket(at: &Located<'_>, i: usize, r: &RouteConfig, errs: &mut Vec<ConfigError>) {
    let ws = &r.websocket;
    let ws_key = |k: &str| format!("route[{i}].websocket.{k}");
    // WebSocket errors point at their route (the key names the field).
    let ws_at = |_k: &str| Some(r.host.span());
    if ws.max_message_bytes == 0 || ws.max_message_bytes > netwall_proto::DEFAULT_MAX_MESSAGE_LEN {
        errs.push(at.error(
            ws_at("max_message_bytes"),
            &ws_key("max_message_bytes"),
            "must be 1 byte to 16 MiB",
        ));
    }
    if ws
        .max_frame_bytes
        .is_some_and(|f| f == 0 || f > ws.max_message_bytes)
    {
        errs.push(at.error(
            ws_at("max_frame_bytes"),
            &ws_key("max_frame_bytes"),
            "must be 1 byte to max_message_bytes",
        ));
    }
    if ws.push_queue == 0 || ws.push_queue > MAX_WS_PUSH_QUEUE {
        errs.push(at.error(
            ws_at("push_queue"),
            &ws_key("push_queue"),
            &format!("must be 1 to {MAX_WS_PUSH_QUEUE}"),
        ));
    }
    if !(9..=15).contains(&ws.compression_window_bits) {
        errs.push(at.error(
            ws_at("compression_window_bits"),
            &ws_key("compression_window_bits"),
            "must be 9 to 15",
        ));
    }
    if ws.heartbeat_timeout.is_zero() || ws.heartbeat_interval.is_zero() {
        errs.push(at.error(
            ws_at("heartbeat_interval"),
            &ws_key("heartbeat_interval"),
            "heartbeat interval and timeout must be positive",
        ));
    }
    for o in &ws.allowed_origins {
        if let Err(e) = crate::policy::origin::OriginPattern::parse(o) {
            errs.push(at.error(ws_at("allowed_origins"), &ws_key("allowed_origins"), &e));
        }
    }
}

/// Whether `s` is a valid tunnel or service name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// The WireGuard listener's key source, and peers that need a listener and a key of their own.
fn validate_wireguard(
    at: &Located<'_>,
    tl: &TunnelListenerConfig,
    tunnels: &[TunnelConfig],
    errs: &mut Vec<ConfigError>,
) {
    let mut keys = std::collections::HashSet::new();
    for (i, t) in tunnels.iter().enumerate() {
        let Some(k) = &t.wireguard_public_key else {
            continue;
        };
        if tl.wireguard_listen.is_none() {
            errs.push(at.error(
                Some(k.span()),
                &format!("tunnel[{i}].wireguard_public_key"),
                "needs `wireguard_listen` in [tunnel_listener]",
            ));
        }
        if !keys.insert(k.get_ref().trim()) {
            errs.push(at.error(
                Some(k.span()),
                &format!("tunnel[{i}].wireguard_public_key"),
                "another tunnel already has this key (a key picks exactly one tunnel)",
            ));
        }
    }
    let Some(listen) = &tl.wireguard_listen else {
        for (key, span) in [
            (
                "wireguard_private_key_file",
                tl.wireguard_private_key_file.as_ref().map(|f| f.span()),
            ),
            (
                "wireguard_private_key_env",
                tl.wireguard_private_key_env.as_ref().map(|f| f.span()),
            ),
        ] {
            if span.is_some() {
                errs.push(at.error(
                    span,
                    &format!("tunnel_listener.{key}"),
                    "needs `wireguard_listen`",
                ));
            }
        }
        return;
    };
    match (
        &tl.wireguard_private_key_file,
        &tl.wireguard_private_key_env,
    ) {
        (Some(_), Some(e)) => errs.push(at.error(
            Some(e.span()),
            "tunnel_listener.wireguard_private_key_env",
            "give the key by file or by environment variable, not both",
        )),
        (None, None) => errs.push(at.error(
            Some(listen.span()),
            "tunnel_listener.wireguard_private_key_file",
            "is required with `wireguard_listen` (or `wireguard_private_key_env`)",
        )),
        (None, Some(e)) if e.get_ref().is_empty() => errs.push(at.error(
            Some(e.span()),
            "tunnel_listener.wireguard_private_key_env",
            "must not be empty",
        )),
        // The key is read at start (relative to the config's folder), where a missing or
        // malformed key is a start error.
        _ => {}
    }
}

/// A tunnel's credential and Unix socket.
fn validate_tunnel(at: &Located<'_>, i: usize, t: &TunnelConfig, errs: &mut Vec<ConfigError>) {
    match (&t.credential_sha256, &t.unix_socket) {
        (Some(c), _) => {
            if crate::tunnel::parse_credential_hash(c.get_ref()).is_none() {
                errs.push(at.error(
                    Some(c.span()),
                    &format!("tunnel[{i}].credential_sha256"),
                    "must be 64 hex digits (the SHA-256 of the credential, never the credential itself)",
                ));
            }
        }
        (None, Some(_)) => {}
        (None, None) if t.wireguard_public_key.is_some() => {}
        (None, None) => errs.push(at.error(
            Some(t.name.span()),
            &format!("tunnel[{i}].credential_sha256"),
            "is required (only a tunnel with a `unix_socket` or a `wireguard_public_key` may go without a credential)",
        )),
    }
    if let Some(k) = &t.wireguard_public_key
        && let Err(e) = netwall_tunnel::wireguard::keys::parse_public(k.get_ref())
    {
        errs.push(at.error(
            Some(k.span()),
            &format!("tunnel[{i}].wireguard_public_key"),
            &e,
        ));
    }
    if let Some(p) = &t.unix_socket
        && p.get_ref().as_os_str().is_empty()
    {
        errs.push(at.error(
            Some(p.span()),
            &format!("tunnel[{i}].unix_socket"),
            "must be a path",
        ));
    }
    for (key, value, ok) in [
        (
            "unix_socket_mode",
            &t.unix_socket_mode,
            t.unix_socket_mode
                .as_ref()
                .is_none_or(|m| parse_mode(m.get_ref()).is_some()),
        ),
        (
            "unix_socket_owner",
            &t.unix_socket_owner,
            t.unix_socket_owner
                .as_ref()
                .is_none_or(|o| parse_owner(o.get_ref()).is_some()),
        ),
    ] {
        let Some(v) = value else { continue };
        if t.unix_socket.is_none() {
            errs.push(at.error(
                Some(v.span()),
                &format!("tunnel[{i}].{key}"),
                "needs `unix_socket`",
            ));
        } else if !ok {
            errs.push(at.error(
                Some(v.span()),
                &format!("tunnel[{i}].{key}"),
                if key == "unix_socket_mode" {
                    "must be an octal mode such as \"0660\""
                } else {
                    "must be numeric: \"uid\", \"uid:gid\" or \":gid\""
                },
            ));
        }
    }
}

/// A route's host, path, policies and references.
fn validate_route(
    at: &Located<'_>,
    i: usize,
    r: &RouteConfig,
    names: &std::collections::HashSet<&str>,
    errs: &mut Vec<ConfigError>,
) {
    if let Some(c) = &r.cors
        && let Err(e) = c.get_ref().policy()
    {
        errs.push(at.error(Some(c.span()), &format!("route[{i}].cors"), &e));
    }
    if let Some(h) = &r.headers
        && let Err(e) = h.get_ref().policy()
    {
        errs.push(at.error(Some(h.span()), &format!("route[{i}].headers"), &e));
    }
    if let Some(c) = &r.challenge {
        for (key, e) in c.get_ref().problems(r.auth.is_some()) {
            errs.push(at.error(Some(c.span()), &format!("route[{i}].challenge.{key}"), &e));
        }
    }
    if let Err(e) = crate::policy::host::HostPattern::parse(r.host.get_ref()) {
        errs.push(at.error(Some(r.host.span()), &format!("route[{i}].host"), &e));
    }
    match crate::policy::path::normalize(r.path.get_ref()) {
        Ok(p) if p.trim_end_matches('/') == r.path.get_ref().trim_end_matches('/') => {}
        Ok(p) => errs.push(at.error(
            Some(r.path.span()),
            &format!("route[{i}].path"),
            &format!("must be in normal form (`{p}`): requests are matched after normalisation"),
        )),
        Err(crate::policy::path::PathError::NotAbsolute) => errs.push(at.error(
            Some(r.path.span()),
            &format!("route[{i}].path"),
            "must start with '/'",
        )),
        Err(e) => errs.push(at.error(
            Some(r.path.span()),
            &format!("route[{i}].path"),
            &format!("must be a plain absolute path: {e}"),
        )),
    }
    if r.path.get_ref().contains(';') {
        errs.push(at.error(
            Some(r.path.span()),
            &format!("route[{i}].path"),
            "cannot contain ';' (parameters are ignored when matching)",
        ));
    }
    for u in r.upgrades.get_ref() {
        let ok = !u.is_empty()
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
            && !u.eq_ignore_ascii_case("h2c");
        if !ok {
            errs.push(at.error(
                Some(r.upgrades.span()).filter(|s| !s.is_empty()),
                &format!("route[{i}].upgrades"),
                &format!("`{u}` is not an upgrade protocol the edge can relay (h2c never is)"),
            ));
        }
    }
    if let Some(spanned) = &r.rate_limit {
        let rl = spanned.get_ref();
        let rl_at = Some(spanned.span());
        if rl.requests == 0 || rl.window.is_zero() || rl.burst == Some(0) {
            errs.push(at.error(
                rl_at.clone(),
                &format!("route[{i}].rate_limit"),
                "requests, window and burst must be positive",
            ));
        }
        match rl.key.as_str() {
            "ip" => {}
            "sub" if r.auth.is_some() => {}
            "sub" => errs.push(at.error(
                rl_at.clone(),
                &format!("route[{i}].rate_limit.key"),
                "`sub` needs [route.auth] on the same route",
            )),
            other => errs.push(at.error(
                rl_at.clone(),
                &format!("route[{i}].rate_limit.key"),
                &format!("`{other}` is not `ip` or `sub`"),
            )),
        }
    }
    // The tunnel head is sized for what clients send plus what the edge adds; the
    // claims a route forwards are part of the latter.
    if r.auth
        .as_ref()
        .is_some_and(|a| a.forward_claims.len() > MAX_FORWARDED_CLAIMS)
    {
        errs.push(at.error(
            Some(r.host.span()),
            &format!("route[{i}].auth.forward_claims"),
            &format!("at most {MAX_FORWARDED_CLAIMS} claims can be forwarded"),
        ));
    }
    if !names.contains(r.tunnel.get_ref().as_str()) {
        errs.push(at.error(
            Some(r.tunnel.span()),
            &format!("route[{i}].tunnel"),
            &format!("no [[tunnel]] named `{}`", r.tunnel.get_ref()),
        ));
    }
    if !valid_name(&r.service) {
        errs.push(at.error(
            Some(r.host.span()),
            &format!("route[{i}].service"),
            "must be 1-64 characters of a-z, 0-9, '-', '_', '.'",
        ));
    }
}
