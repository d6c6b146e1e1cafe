//! Dialing out: one gateway connection over the transport chosen for it, the hello
//! handshake on top, and the reconnect backoff.
//!
//! The gateway's certificate is always verified ([`trust`]), by a CA bundle or by pinning the
//! exact leaf; a Unix socket needs no TLS. A failed dial is retried with exponential backoff
//! and full jitter; a permanent rejection (bad credential, unknown tunnel, unsupported
//! version) is not retried.

pub mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use netwall_proto::{Codec, Hello, PROTOCOL_VERSION, RejectCode};
use netwall_tunnel::handshake::{self, HelloError, Session};
use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::quic::{QuicDialer, QuicParams};
use netwall_tunnel::wireguard::WgDialer;
use netwall_tunnel::wireguard::keys::PublicKey;
use netwall_tunnel::{TransportKind, tls, unix};
use rand::Rng;

use crate::config::{GatewayAddr, Resolved, TransportChoice};

pub use crate::config::{pin_of_pem_file, split_host_port};
pub use netwall_proto::wire::{CLOSE_REJECTED, TUNNEL_ALPN};

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The transport failed (unreachable, certificate mismatch, blocked).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The gateway address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The gateway refused the handshake.
    #[error("gateway {addr} rejected the connector: {reason}")]
    Rejected {
        /// The gateway address.
        addr: String,
        /// Machine-readable reason.
        code: RejectCode,
        /// The gateway's explanation.
        reason: String,
    },
    /// The whole dial took longer than the dial timeout.
    #[error("dial to {0} timed out")]
    Timeout(String),
}

impl DialError {
    /// Whether retrying can never help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DialError::Rejected { code, .. } if code.is_permanent())
    }
}

/// Dials gateways over any transport and says hello.
pub struct Dialer {
    quic: Option<QuicDialer>,
    /// The WireGuard dialer and the gateway's key (`transport = "wireguard"`).
    wireguard: Option<(WgDialer, PublicKey)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    mux: MuxParams,
    codec: Codec,
    /// Swapped by a reload: a new credential or services list is sent by the next dial.
    hello: ArcSwap<Hello>,
    tunnel: String,
    choice: TransportChoice,
    tls_port: Option<u16>,
    server_name: Option<String>,
    dial_timeout: Duration,
    fallback_after: Duration,
}

impl Dialer {
    /// A dialer for `resolved`.
    pub fn new(resolved: &Resolved, codec: Codec) -> Result<Dialer, String> {
        let cfg = &resolved.config;
        let (quic, tls) = match &resolved.trust {
            Some(t) => {
                let tls = trust::client_config(t)?;
                let params = QuicParams {
                    idle_timeout: cfg.idle_timeout,
                    keep_alive: cfg.keep_alive,
                    max_peer_streams: cfg.max_concurrent_streams,
                };
                (
                    Some(QuicDialer::new(tls.clone(), &params)?),
                    Some(Arc::new(tls)),
                )
            }
            None => (None, None),
        };
        let wireguard = resolved
            .wireguard
            .as_ref()
            .map(|w| (WgDialer::new(w.key.clone(), w.params), w.gateway_key));
        Ok(Dialer {
            quic,
            wireguard,
            tls,
            mux: MuxParams {
                max_streams: usize::try_from(cfg.max_concurrent_streams)
                    .unwrap_or(usize::MAX)
                    .saturating_add(4),
                accept_backlog: netwall_tunnel::mux::CONNECTOR_ACCEPT_BACKLOG,
            },
            codec,
            hello: ArcSwap::from_pointee(hello_for(resolved)),
            tunnel: cfg.tunnel.clone(),
            choice: cfg.transport,
            tls_port: cfg.tls_port,
            server_name: cfg.server_name.clone(),
            dial_timeout: cfg.dial_timeout,
            fallback_after: cfg.quic_fallback_after,
        })
    }

    /// Send what `resolved` says (credential, services) in the hello of every later dial;
    /// connections already up keep the session they authenticated.
    pub fn reload(&self, resolved: &Resolved) {
        self.hello.store(Arc::new(hello_for(resolved)));
    }

    /// Whether `gw` starts on QUIC and falls back to TLS (`transport = "auto"`).
    pub fn falls_back(&self, gw: &GatewayAddr) -> bool {
        self.choice == TransportChoice::Auto && matches!(gw, GatewayAddr::Net { .. })
    }

    /// The transport `gw` is dialed with when there is no fallback to decide.
    pub fn primary(&self, gw: &GatewayAddr) -> TransportKind {
        match (gw, self.choice) {
            (GatewayAddr::Unix(_), _) => TransportKind::Unix,
            (_, TransportChoice::Tls) => TransportKind::Tls,
            (_, TransportChoice::Wireguard) => TransportKind::WireGuard,
            _ => TransportKind::Quic,
        }
    }

    /// How long a QUIC attempt may take before `auto` falls back.
    pub fn fallback_after(&self) -> Duration {
        self.fallback_after
    }

    /// Dial `gw` over `kind` and say hello, all within `deadline` (the dial timeout when
    /// `None`).
    pub async fn dial(
        &self,
        gw: &GatewayAddr,
        kind: TransportKind,
        deadline: Option<Duration>,
    ) -> Result<Session, DialError> {
        let name = describe(gw, kind, self.tls_port);
        tokio::time::timeout(
            deadline.unwrap_or(self.dial_timeout),
            self.dial_inner(gw, kind, &name),
        )
        .await
        .map_err(|_| DialError::Timeout(name.clone()))?
    }

    async fn dial_inner(
        &self,
        gw: &GatewayAddr,
        kind: TransportKind,
        name: &str,
    ) -> Result<Session, DialError> {
        let connect_err = |reason: String| DialError::Connect {
            addr: name.to_owned(),
            reason,
        };
        let conn = match gw {
            GatewayAddr::Unix(path) => unix::dial(path, self.mux).await.map_err(connect_err)?,
            GatewayAddr::Net { host, port } => {
                let port = match kind {
                    TransportKind::Tls => self.tls_port.unwrap_or(*port),
                    _ => *port,
                };
                let target = resolve(host, port)
                    .await
                    .ok_or_else(|| DialError::Resolve(name.to_owned()))?;
                let server_name = self.server_name.as_deref().unwrap_or(host);
                match (kind, &self.quic, &self.tls) {
                    (TransportKind::WireGuard, _, _) => match &self.wireguard {
                        Some((wg, gateway_key)) => wg
                            .dial(target, gateway_key, self.mux)
                            .await
                            .map_err(connect_err)?,
                        None => return Err(connect_err("no WireGuard keys configured".into())),
                    },
                    (TransportKind::Tls, _, Some(tls_cfg)) => {
                        tls::dial(target, server_name, tls_cfg.clone(), self.mux)
                            .await
                            .map_err(connect_err)?
                    }
                    (_, Some(q), _) => q.dial(target, server_name).await.map_err(connect_err)?,
                    _ => return Err(connect_err("no TLS trust configured".into())),
                }
            }
        };
        match handshake::say_hello(conn, Hello::clone(&self.hello.load()), self.codec).await {
            Ok(s) => Ok(s),
            Err(HelloError::Rejected { code, reason }) => {
                // The gateway does not say which of the two was wrong; the connector's
                // operator is told which of its own settings to check.
                let reason = match code {
                    RejectCode::BadCredential | RejectCode::UnknownTunnel => format!(
                        "{reason} (check this connector's `tunnel = \"{}\"` and its credential)",
                        self.tunnel
                    ),
                    _ => reason,
                };
                Err(DialError::Rejected {
                    addr: name.to_owned(),
                    code,
                    reason,
                })
            }
            Err(HelloError::Transport(e)) => Err(connect_err(e)),
        }
    }
}

fn hello_for(resolved: &Resolved) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        tunnel: resolved.config.tunnel.clone(),
        credential: resolved.credential.clone(),
        connector_id: resolved.connector_id.clone(),
        services: resolved
            .services
            .keys()
            .chain(resolved.tcp_services.keys())
            .cloned()
            .collect(),
    }
}

/// How a gateway address is named in logs for one transport.
fn describe(gw: &GatewayAddr, kind: TransportKind, tls_port: Option<u16>) -> String {
    match gw {
        GatewayAddr::Unix(p) => format!("unix:{}", p.display()),
        GatewayAddr::Net { host, port } => {
            let port = if kind == TransportKind::Tls {
                tls_port.unwrap_or(*port)
            } else {
                *port
            };
            format!("{kind}://{host}:{port}")
        }
    }
}

async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

/// Exponential backoff with full jitter.
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in `[min, min(max, min * 2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        if cap <= self.min {
            return self.min;
        }
        rand::rng().random_range(self.min..=cap)
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        for attempt in 0..40u32 {
            let d = b.next_delay();
            let cap = min.saturating_mul(1 << attempt.min(16)).min(max);
            assert!(
                d >= min && d <= cap,
                "attempt {attempt}: {d:?} outside [{min:?}, {cap:?}]"
            );
        }
        b.reset();
        assert_eq!(b.next_delay(), min);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("edge.example.com:4443"),
            Some(("edge.example.com".into(), 4443))
        );
        assert_eq!(split_host_port("[::1]:4443"), Some(("::1".into(), 4443)));
        assert_eq!(
            split_host_port("127.0.0.1:1"),
            Some(("127.0.0.1".into(), 1))
        );
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":443"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }
}
