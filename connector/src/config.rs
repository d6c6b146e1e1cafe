//! `connector.toml`: which gateways to dial, which tunnel to serve, and the local services.
//!
//! Strict like the gateway's: unknown keys are errors, and every error names file, line and
//! key. The credential never appears in the file itself: it comes from `credential_file` or
//! the `NETWALL_CREDENTIAL` environment variable (which wins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use netwall_config::{ConfigError, ConfigErrors, Located, duration, parse_duration};
use netwall_proto::Secret;

/// Environment variable that supplies (and overrides) the tunnel credential.
pub const CREDENTIAL_ENV: &str = "NETWALL_CREDENTIAL";
/// Tunnel connections per gateway address; one is enough unless a single core limits it.
pub const DEFAULT_CONNECTIONS_PER_GATEWAY: usize = 1;
/// Streams the gateway may have open on one connection at once. Every open WebSocket holds
/// one for its lifetime, so this allows 10,000 idle WebSockets and more per tunnel connection,
/// not just in-flight requests (quinn's default of 100 is for browsers). It is not free: quinn
/// keeps state for every stream slot the gateway may open, about 2 KiB each once requests have
/// cycled through them (measured: peak 16 MiB at 4,096, 22 MiB at 16,384, 46 MiB at 65,536),
/// so a QUIC connection grants 1,024 first and widens the grant as they fill.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 16_384;
/// Silence after which the tunnel connection is declared dead (matches the gateway).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive interval, well under the idle timeout.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Deadline for one dial (QUIC handshake + hello + welcome).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay (linkerd2-proxy uses 100-500 ms jittered).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay: a gateway back from a restart is found within this.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Time to connect to a local service before answering 502.
pub const DEFAULT_SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections kept per local service.
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;
/// How long shutdown waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// With `transport = "auto"`, a QUIC handshake that has not completed within this falls back
/// to TLS over TCP: a healthy path completes it in one or two round trips, and a blocked one
/// never does, so waiting the whole dial timeout would only delay the fallback.
pub const DEFAULT_QUIC_FALLBACK_AFTER: Duration = Duration::from_secs(3);
/// While on the TLS fallback, how often QUIC is tried again (jittered by up to a quarter
/// either way, so a fleet does not probe in step).
pub const DEFAULT_QUIC_PROBE_INTERVAL: Duration = Duration::from_secs(300);

fn d_connections() -> usize {
    DEFAULT_CONNECTIONS_PER_GATEWAY
}
fn d_streams() -> u32 {
    DEFAULT_MAX_CONCURRENT_STREAMS
}
fn d_idle() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}
fn d_keep_alive() -> Duration {
    DEFAULT_KEEP_ALIVE
}
fn d_dial() -> Duration {
    DEFAULT_DIAL_TIMEOUT
}
fn d_reconnect_min() -> Duration {
    DEFAULT_RECONNECT_MIN
}
fn d_reconnect_max() -> Duration {
    DEFAULT_RECONNECT_MAX
}
fn d_service_connect() -> Duration {
    DEFAULT_SERVICE_CONNECT_TIMEOUT
}
fn d_pool() -> usize {
    DEFAULT_POOL_MAX_IDLE
}
fn d_drain() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}
fn d_fallback() -> Duration {
    DEFAULT_QUIC_FALLBACK_AFTER
}
fn d_probe() -> Duration {
    DEFAULT_QUIC_PROBE_INTERVAL
}
fn d_rekey() -> Duration {
    netwall_tunnel::wireguard::REKEY_AFTER_TIME
}

/// Which transport carries the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// QUIC, falling back to TLS over TCP when UDP does not get through, and back again.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only (to the gateway's HTTPS port).
    Tls,
    /// Unix socket only (every gateway address is `unix:/path`).
    Unix,
    /// WireGuard only, to the gateway's `wireguard_listen` port. Never chosen by `auto`: it
    /// needs keys on both sides.
    Wireguard,
}

/// One gateway to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAddr {
    /// `host:port`: QUIC to that UDP port, TLS to `tls_port` (or the same port) over TCP.
    Net {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// `unix:/run/netwall/app.sock`
    Unix(PathBuf),
}

impl GatewayAddr {
    /// Parse one `gateways` entry; a relative socket path resolves against `base`.
    pub fn parse(s: &str, base: &Path) -> Option<GatewayAddr> {
        if let Some(p) = s.strip_prefix("unix:") {
            return (!p.is_empty()).then(|| GatewayAddr::Unix(base.join(p)));
        }
        split_host_port(s).map(|(host, port)| GatewayAddr::Net { host, port })
    }
}

/// The whole connector configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Identity in gateway logs; defaults to the host name.
    #[serde(default)]
    pub connector_id: Option<String>,
    /// Tunnel to serve.
    pub tunnel: String,
    /// Runtime worker threads; defaults to one per core
    /// ([`netwall_config::default_workers`]). Read at start only.
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    /// File holding the credential (trailing whitespace ignored).
    #[serde(default)]
    pub credential_file: Option<Spanned<PathBuf>>,
    /// Gateway tunnel addresses, `host:port` or `unix:/path`; the connector keeps
    /// connections to all of them.
    pub gateways: Spanned<Vec<String>>,
    /// `auto` (default), `quic`, `tls` or `unix`.
    #[serde(default)]
    pub transport: TransportChoice,
    /// TCP port of the gateway's HTTPS listener for the TLS transport; defaults to the port
    /// of each gateway address.
    #[serde(default)]
    pub tls_port: Option<u16>,
    /// With `transport = "wireguard"`: the gateway's WireGuard public key (base64).
    #[serde(default)]
    pub gateway_wireguard_public_key: Option<Spanned<String>>,
    /// File holding this connector's WireGuard private key (base64, as `wg genkey` or
    /// `netwall-connector wg-keygen` writes it).
    #[serde(default)]
    pub wireguard_private_key_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the private key instead of a file.
    #[serde(default)]
    pub wireguard_private_key_env: Option<Spanned<String>>,
    /// Start a new WireGuard handshake once the session is this old; at most the protocol's
    /// REKEY-AFTER-TIME (120 s), which also applies when this is longer.
    #[serde(default = "d_rekey", deserialize_with = "duration")]
    pub wireguard_rekey_after: Duration,
    /// Largest IP packet inside the WireGuard link. By default the route's MTU to the
    /// gateway less 80 bytes, at most 1,420 unless the route is the loopback device
    /// (`wireguard::link_mtu`); set it where the whole path is known to carry more (jumbo
    /// frames end to end) or less.
    #[serde(default)]
    pub wireguard_mtu: Option<Spanned<usize>>,
    /// With `auto`: how long the QUIC handshake may take before falling back to TLS.
    #[serde(default = "d_fallback", deserialize_with = "duration")]
    pub quic_fallback_after: Duration,
    /// With `auto`, while on TLS: how often QUIC is tried again.
    #[serde(default = "d_probe", deserialize_with = "duration")]
    pub quic_probe_interval: Duration,
    /// Connections per gateway address.
    #[serde(default = "d_connections")]
    pub connections_per_gateway: usize,
    /// TLS name to verify; defaults to the host part of each gateway address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA bundle that signs the gateway's tunnel certificate.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Accept exactly these leaf certificates (SHA-256, hex).
    #[serde(default)]
    pub pin_sha256: Vec<Spanned<String>>,
    /// Accept exactly the leaf certificate in this PEM file (for self-signed gateways).
    #[serde(default)]
    pub pin_cert_file: Option<Spanned<PathBuf>>,
    /// Streams the gateway may open at once per connection.
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
    /// Tunnel idle timeout.
    #[serde(default = "d_idle", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Tunnel keep-alive interval.
    #[serde(default = "d_keep_alive", deserialize_with = "duration")]
    pub keep_alive: Duration,
    /// Deadline for one dial.
    #[serde(default = "d_dial", deserialize_with = "duration")]
    pub dial_timeout: Duration,
    /// First reconnect delay.
    #[serde(default = "d_reconnect_min", deserialize_with = "duration")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "d_reconnect_max", deserialize_with = "duration")]
    pub reconnect_max: Duration,
    /// Time to connect to a local service.
    #[serde(default = "d_service_connect", deserialize_with = "duration")]
    pub service_connect_timeout: Duration,
    /// Idle pooled connections per service.
    #[serde(default = "d_pool")]
    pub pool_max_idle_per_service: usize,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "d_drain", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// File the connector keeps its status in (live tunnel connections, refreshed every few
    /// seconds), for `netwall-connector probe`; none by default.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// The local publish endpoint (`POST /publish`) through which a service pushes to
    /// WebSocket clients: a loopback `host:port` or `unix:/path`; off by default.
    #[serde(default)]
    pub publish_listen: Option<Spanned<String>>,
    /// Service name to local URL: `http://127.0.0.1:8080` or `unix:/run/app.sock` for HTTP
    /// services, `tcp://127.0.0.1:5432` or `tcp+unix:/run/pg.sock` for raw TCP ones.
    pub services: BTreeMap<String, Spanned<String>>,
}

/// Where a service lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceTarget {
    /// `http://host:port`
    Tcp {
        /// `host:port`
        authority: String,
    },
    /// `unix:/path`
    Unix(PathBuf),
}

/// What a service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// HTTP/1.1 (and WebSocket upgrades): requests are replayed to it.
    Http,
    /// Raw bytes both ways (a database, a cache): the tunnel stream is spliced to it.
    Tcp,
}

/// Parse one `[services]` value: what it speaks and where it lives.
pub fn parse_service(s: &str) -> Result<(ServiceKind, ServiceTarget), String> {
    if let Some(path) = s.strip_prefix("tcp+unix:") {
        return Ok((
            ServiceKind::Tcp,
            unix_target(s, path, "tcp+unix:/run/pg.sock")?,
        ));
    }
    if let Some(rest) = s.strip_prefix("tcp://") {
        let rest = rest.trim_end_matches('/');
        let addr: std::net::SocketAddr = rest
            .parse()
            .map_err(|_| format!("`{s}`: a TCP service is tcp://ip:port (tcp://127.0.0.1:5432)"))?;
        return Ok((
            ServiceKind::Tcp,
            ServiceTarget::Tcp {
                authority: addr.to_string(),
            },
        ));
    }
    Ok((ServiceKind::Http, ServiceTarget::parse(s)?))
}

fn unix_target(s: &str, path: &str, example: &str) -> Result<ServiceTarget, String> {
    let path = path.trim_start_matches("//");
    if !path.starts_with('/') {
        return Err(format!(
            "`{s}`: a unix socket path must be absolute ({example})"
        ));
    }
    Ok(ServiceTarget::Unix(PathBuf::from(path)))
}

impl ServiceTarget {
    /// Parse `http://host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<ServiceTarget, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return unix_target(s, path, "unix:/run/app.sock");
        }
        let Some(rest) = s.strip_prefix("http://") else {
            return Err(format!(
                "`{s}`: services are `http://host:port`, `unix:/path`, `tcp://ip:port` or `tcp+unix:/path`"
            ));
        };
        let authority = rest.trim_end_matches('/');
        let parsed: http::uri::Authority = authority
            .parse()
            .map_err(|_| format!("`{s}`: not a valid host:port"))?;
        if authority.contains('/') || parsed.as_str().contains('@') {
            return Err(format!("`{s}`: give only scheme, host and port"));
        }
        let authority = if parsed.port().is_some() {
            parsed.to_string()
        } else {
            format!("{parsed}:80")
        };
        Ok(ServiceTarget::Tcp { authority })
    }
}

/// How the gateway's tunnel certificate is verified.
#[derive(Debug, Clone)]
pub enum Trust {
    /// WebPKI path validation against these roots (PEM file).
    Ca(PathBuf),
    /// Exact leaf certificates.
    Pins(Vec<[u8; 32]>),
}

/// A configuration ready to run: services parsed, credential read, paths resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The parsed file.
    pub config: ConnectorConfig,
    /// The credential.
    pub credential: Secret,
    /// HTTP services.
    pub services: BTreeMap<String, ServiceTarget>,
    /// Raw TCP services.
    pub tcp_services: BTreeMap<String, ServiceTarget>,
    /// Gateways to dial.
    pub gateways: Vec<GatewayAddr>,
    /// Certificate trust; `None` when every gateway is a Unix socket or WireGuard carries
    /// the tunnel.
    pub trust: Option<Trust>,
    /// Keys and settings of the WireGuard transport (`transport = "wireguard"`).
    pub wireguard: Option<WireguardSetup>,
    /// Connector identity.
    pub connector_id: String,
    /// Where the status is kept, resolved.
    pub status_file: Option<PathBuf>,
    /// Where the publish endpoint listens, resolved.
    pub publish: Option<crate::publish::Listen>,
    /// The file as a TOML table, to tell which settings a reload changed.
    pub raw: toml::Table,
}

impl ConnectorConfig {
    /// Runtime worker threads: the file's `workers`, else one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .as_ref()
            .map_or_else(netwall_config::default_workers, |w| *w.get_ref())
    }

    /// Read, parse, validate and resolve a file.
    pub fn load(path: &Path) -> Result<Resolved, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::whole_file(
                path,
                format!("cannot read: {e}"),
            )])
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(path, &src, &base, std::env::var(CREDENTIAL_ENV).ok())
    }

    /// Parse `src` (read from `path`), resolving relative paths against `base`; `env_credential`
    /// overrides `credential_file`.
    pub fn parse(
        path: &Path,
        src: &str,
        base: &Path,
        env_credential: Option<String>,
    ) -> Result<Resolved, ConfigErrors> {
        let at = Located::new(path, src);
        let config: ConnectorConfig = at.parse()?;
        // Relative paths are relative to the config's folder; `join` keeps absolute ones.
        let resolve = |p: &Path| base.join(p);
        let mut errs = Vec::new();

        if let Some(w) = &config.workers
            && let Err(e) = netwall_config::check_workers(*w.get_ref())
        {
            errs.push(at.error(Some(w.span()), "workers", &e));
        }
        if config.gateways.get_ref().is_empty() {
            errs.push(at.error(Some(config.gateways.span()), "gateways", "lists no gateway"));
        }
        let mut gateways = Vec::new();
        for g in config.gateways.get_ref() {
            match GatewayAddr::parse(g, base) {
                Some(a) => {
                    let unix = matches!(a, GatewayAddr::Unix(_));
                    let fits = match config.transport {
                        TransportChoice::Unix => unix,
                        TransportChoice::Quic
                        | TransportChoice::Tls
                        | TransportChoice::Wireguard => !unix,
                        TransportChoice::Auto => true,
                    };
                    if !fits {
                        errs.push(at.error(
                            Some(config.gateways.span()),
                            "gateways",
                            &format!(
                                "`{g}` cannot be dialed with transport = \"{}\"",
                                format!("{:?}", config.transport).to_lowercase()
                            ),
                        ));
                    }
                    gateways.push(a);
                }
                None => errs.push(at.error(
                    Some(config.gateways.span()),
                    "gateways",
                    &format!("`{g}` is not host:port or unix:/path"),
                )),
            }
        }
        let networked = gateways
            .iter()
            .any(|g| matches!(g, GatewayAddr::Net { .. }));
        if config.quic_fallback_after.is_zero() || config.quic_probe_interval.is_zero() {
            errs.push(
                at.error(
                    at.find("", Some("quic_probe_interval"))
                        .or_else(|| at.find("", Some("quic_fallback_after"))),
                    "quic_probe_interval",
                    "quic_fallback_after and quic_probe_interval must be positive",
                ),
            );
        }
        if config.connections_per_gateway == 0 || config.connections_per_gateway > 64 {
            errs.push(at.error(
                at.find("", Some("connections_per_gateway")),
                "connections_per_gateway",
                "must be 1 to 64",
            ));
        }
        if config.keep_alive >= config.idle_timeout {
            errs.push(at.error(
                at.find("", Some("keep_alive")),
                "keep_alive",
                "must be shorter than idle_timeout",
            ));
        }
        if config.reconnect_min > config.reconnect_max {
            errs.push(at.error(
                at.find("", Some("reconnect_min")),
                "reconnect_min",
                "must not exceed reconnect_max",
            ));
        }

        let (mut services, mut tcp_services) = (BTreeMap::new(), BTreeMap::new());
        if config.services.is_empty() {
            errs.push(at.error(at.find("services", None), "services", "lists no service"));
        }
        for (name, url) in &config.services {
            match parse_service(url.get_ref()) {
                Ok((ServiceKind::Http, t)) => {
                    services.insert(name.clone(), t);
                }
                Ok((ServiceKind::Tcp, t)) => {
                    tcp_services.insert(name.clone(), t);
                }
                Err(e) => errs.push(at.error(Some(url.span()), &format!("services.{name}"), &e)),
            }
        }

        let wireguard = wireguard_setup(&at, &config, &resolve, &mut errs);
        // WireGuard authenticates the gateway by its key: no certificate to verify, and the
        // key pair authenticates the connector (a credential is sent if configured).
        let networked = networked && config.transport != TransportChoice::Wireguard;
        let trust = match (
            &config.ca_file,
            config.pin_sha256.is_empty(),
            &config.pin_cert_file,
        ) {
            (Some(ca), true, None) => Some(Trust::Ca(resolve(ca.get_ref()))),
            (None, false, None) => {
                let mut pins = Vec::new();
                for p in &config.pin_sha256 {
                    match hex::decode(p.get_ref().replace(':', ""))
                        .ok()
                        .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    {
                        Some(pin) => pins.push(pin),
                        None => errs.push(at.error(
                            Some(p.span()),
                            "pin_sha256",
                            "must be 64 hex digits",
                        )),
                    }
                }
                Some(Trust::Pins(pins))
            }
            (None, true, Some(file)) => match pin_of_pem_file(&resolve(file.get_ref())) {
                Ok(pin) => Some(Trust::Pins(vec![pin])),
                Err(e) => {
                    errs.push(at.error(Some(file.span()), "pin_cert_file", &e));
                    None
                }
            },
            // A Unix socket needs no TLS: its permissions are the authentication.
            (None, true, None) if !networked => None,
            (None, true, None) => {
                errs.push(at.error(None, "ca_file", "set one of ca_file, pin_sha256 or pin_cert_file: the gateway's certificate is always verified"));
                None
            }
            _ => {
                let place = at
                    .find("", Some("ca_file"))
                    .or_else(|| at.find("", Some("pin_cert_file")));
                errs.push(at.error(
                    place,
                    "ca_file",
                    "set only one of ca_file, pin_sha256 and pin_cert_file",
                ));
                None
            }
        };

        let credential = match (env_credential, &config.credential_file) {
            (Some(c), _) if !c.trim().is_empty() => Some(c.trim().to_owned()),
            (_, Some(file)) => match std::fs::read_to_string(resolve(file.get_ref())) {
                Ok(c) if !c.trim().is_empty() => Some(c.trim().to_owned()),
                Ok(_) => {
                    errs.push(at.error(Some(file.span()), "credential_file", "is empty"));
                    None
                }
                Err(e) => {
                    errs.push(at.error(
                        Some(file.span()),
                        "credential_file",
                        &format!("cannot read {}: {e}", resolve(file.get_ref()).display()),
                    ));
                    None
                }
            },
            // A tunnel reached only through its socket may go without a credential.
            _ if !networked => Some(String::new()),
            _ => {
                errs.push(at.error(None, "credential_file", &format!("no credential: set credential_file or the {CREDENTIAL_ENV} environment variable")));
                None
            }
        };

        let publish = config.publish_listen.as_ref().and_then(|p| {
            let text = p.get_ref();
            let parsed = match text.strip_prefix("unix:") {
                Some(path) if !path.is_empty() => {
                    Ok(crate::publish::Listen::Unix(resolve(Path::new(path))))
                }
                Some(_) => Err("`unix:` needs a socket path".to_owned()),
                None => match text.parse::<std::net::SocketAddr>() {
                    Ok(a) if a.ip().is_loopback() => Ok(crate::publish::Listen::Tcp(a)),
                    Ok(_) => Err(
                        "must be a loopback address or a Unix socket: being local is what lets a publisher in"
                            .to_owned(),
                    ),
                    Err(_) => Err("expected `127.0.0.1:PORT` or `unix:/path`".to_owned()),
                },
            };
            match parsed {
                Ok(l) => Some(l),
                Err(e) => {
                    errs.push(at.error(Some(p.span()), "publish_listen", &e));
                    None
                }
            }
        });
        match (credential, trust) {
            (Some(c), trust) if errs.is_empty() && (trust.is_some() || !networked) => {
                let connector_id = config.connector_id.clone().unwrap_or_else(host_name);
                let status_file = config.status_file.as_deref().map(resolve);
                // `at.parse` has read it already; a table is the same file without types.
                let raw = toml::from_str(src).unwrap_or_default();
                Ok(Resolved {
                    raw,
                    status_file,
                    publish,
                    config,
                    credential: Secret(c.into_bytes().into()),
                    services,
                    tcp_services,
                    gateways,
                    trust,
                    wireguard,
                    connector_id,
                })
            }
            _ => Err(ConfigErrors(errs)),
        }
    }
}

/// What the WireGuard transport needs: this connector's key, the gateway's, the settings.
#[derive(Debug, Clone)]
pub struct WireguardSetup {
    /// This connector's private key.
    pub key: netwall_tunnel::wireguard::PrivateKey,
    /// The gateway's public key.
    pub gateway_key: netwall_tunnel::wireguard::keys::PublicKey,
    /// Link settings.
    pub params: netwall_tunnel::wireguard::WgParams,
}

/// The WireGuard keys, when `transport = "wireguard"`; WireGuard settings with another
/// transport are errors, so a half-done change does not go unnoticed.
fn wireguard_setup(
    at: &Located<'_>,
    config: &ConnectorConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<ConfigError>,
) -> Option<WireguardSetup> {
    use netwall_tunnel::wireguard::{self, REKEY_AFTER_TIME, WgParams, keys};
    if config.transport != TransportChoice::Wireguard {
        let stray = [
            (
                "gateway_wireguard_public_key",
                config
                    .gateway_wireguard_public_key
                    .as_ref()
                    .map(|k| k.span()),
            ),
            (
                "wireguard_private_key_file",
                config.wireguard_private_key_file.as_ref().map(|k| k.span()),
            ),
            (
                "wireguard_private_key_env",
                config.wireguard_private_key_env.as_ref().map(|k| k.span()),
            ),
            (
                "wireguard_mtu",
                config.wireguard_mtu.as_ref().map(|k| k.span()),
            ),
        ];
        for (key, span) in stray {
            if span.is_some() {
                errs.push(at.error(span, key, "applies only with transport = \"wireguard\""));
            }
        }
        return None;
    }
    let rekey = config.wireguard_rekey_after;
    if rekey < Duration::from_secs(1) || rekey > REKEY_AFTER_TIME {
        errs.push(at.error(
            at.find("", Some("wireguard_rekey_after")),
            "wireguard_rekey_after",
            "must be 1s to 120s (the protocol rekeys at 120 s in any case)",
        ));
    }
    let mtu = config.wireguard_mtu.as_ref().map(|m| *m.get_ref());
    if let Some(m) = &config.wireguard_mtu
        && !(wireguard::SMALLEST_MTU..=wireguard::LARGEST_MTU).contains(m.get_ref())
    {
        errs.push(at.error(
            Some(m.span()),
            "wireguard_mtu",
            &format!(
                "must be {} to {} (a 576- to 9,000-byte path less WireGuard's 80 bytes)",
                wireguard::SMALLEST_MTU,
                wireguard::LARGEST_MTU
            ),
        ));
    }
    let gateway_key = match &config.gateway_wireguard_public_key {
        Some(k) => match keys::parse_public(k.get_ref()) {
            Ok(k) => Some(k),
            Err(e) => {
                errs.push(at.error(Some(k.span()), "gateway_wireguard_public_key", &e));
                None
            }
        },
        None => {
            errs.push(at.error(
                at.find("", Some("transport")),
                "gateway_wireguard_public_key",
                "is required with transport = \"wireguard\" (the gateway's `wg-keygen` public key)",
            ));
            None
        }
    };
    let key = match (
        &config.wireguard_private_key_file,
        &config.wireguard_private_key_env,
    ) {
        (Some(f), None) => keys::load_private(Some(&resolve(f.get_ref())), None)
            .map_err(|e| errs.push(at.error(Some(f.span()), "wireguard_private_key_file", &e)))
            .ok(),
        (None, Some(e)) => keys::load_private(None, Some(e.get_ref()))
            .map_err(|m| errs.push(at.error(Some(e.span()), "wireguard_private_key_env", &m)))
            .ok(),
        (Some(_), Some(e)) => {
            errs.push(at.error(
                Some(e.span()),
                "wireguard_private_key_env",
                "give the key by file or by environment variable, not both",
            ));
            None
        }
        (None, None) => {
            errs.push(at.error(
                at.find("", Some("transport")),
                "wireguard_private_key_file",
                "is required with transport = \"wireguard\" (or wireguard_private_key_env)",
            ));
            None
        }
    };
    Some(WireguardSetup {
        key: key?,
        gateway_key: gateway_key?,
        params: WgParams {
            rekey_after: rekey,
            mtu,
            ..WgParams::default()
        },
    })
}

/// Split `host:port` (`[v6]:port` too).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// SHA-256 of the first certificate in a PEM file.
pub fn pin_of_pem_file(path: &Path) -> Result<[u8; 32], String> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{} holds no PEM certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(<sha2::Sha256 as sha2::Digest>::digest(cert.as_ref()).into())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "connector".to_owned())
}
