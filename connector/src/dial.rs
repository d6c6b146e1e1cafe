//! Dialing out: QUIC client setup, gateway certificate verification, the hello handshake, and
//! the reconnect loop.
//!
//! The gateway's certificate is always verified, by a CA bundle or by pinning the exact leaf.
//! A failed dial is retried with exponential backoff and full jitter; a permanent rejection
//! (bad credential, unknown tunnel, unsupported version) is not retried.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use netwall_proto::io::{FrameReader, FrameWriter};
use netwall_proto::{Codec, Frame, Hello, PROTOCOL_VERSION, RejectCode};
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Resolved, Trust};

pub use netwall_proto::wire::{CLOSE_REJECTED, TUNNEL_ALPN};

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// QUIC or TLS failed (unreachable, certificate mismatch, timeout).
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

/// Split `host:port` (`[v6]:port` too).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// SHA-256 of the first certificate in a PEM file.
pub fn pin_of_pem_file(path: &Path) -> Result<[u8; 32], String> {
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{} holds no PEM certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Sha256::digest(cert.as_ref()).into())
}

/// Accepts exactly the pinned leaf certificates; handshake signatures are still verified.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pins.iter().any(|p| bool::from(p.ct_eq(&got))) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Build the QUIC client endpoint.
pub fn endpoint(resolved: &Resolved) -> Result<quinn::Endpoint, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let mut tls = match &resolved.trust {
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {} holds no certificate", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pins(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pins: pins.clone(),
                provider,
            }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let cfg = &resolved.config;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            cfg.idle_timeout
                .try_into()
                .map_err(|e| format!("idle_timeout: {e}"))?,
        ))
        .keep_alive_interval(Some(cfg.keep_alive))
        .max_concurrent_bidi_streams(cfg.max_concurrent_streams.into())
        .max_concurrent_uni_streams(0u32.into());
    client.transport_config(Arc::new(transport));
    let bind: SocketAddr = "[::]:0".parse().map_err(|e| format!("{e}"))?;
    let mut ep = match quinn::Endpoint::client(bind) {
        Ok(ep) => ep,
        // Hosts without IPv6 still get a client socket.
        Err(_) => quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| e.to_string())?,
    };
    ep.set_default_client_config(client);
    Ok(ep)
}

/// An authenticated tunnel connection.
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Control stream, sending half.
    pub control_w: FrameWriter<quinn::SendStream>,
    /// Control stream, receiving half.
    pub control_r: FrameReader<quinn::RecvStream>,
    /// The gateway's id from its welcome.
    pub gateway_id: String,
}

/// Dial `addr`, say hello, and wait for the welcome.
pub async fn connect(
    ep: &quinn::Endpoint,
    resolved: &Resolved,
    addr: &str,
    codec: Codec,
) -> Result<Session, DialError> {
    tokio::time::timeout(
        resolved.config.dial_timeout,
        connect_inner(ep, resolved, addr, codec),
    )
    .await
    .map_err(|_| DialError::Timeout(addr.to_owned()))?
}

async fn connect_inner(
    ep: &quinn::Endpoint,
    resolved: &Resolved,
    addr: &str,
    codec: Codec,
) -> Result<Session, DialError> {
    let (host, port) = split_host_port(addr).ok_or_else(|| DialError::Resolve(addr.to_owned()))?;
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| DialError::Resolve(addr.to_owned()))?
        .next()
        .ok_or_else(|| DialError::Resolve(addr.to_owned()))?;
    let server_name = resolved.config.server_name.clone().unwrap_or(host);
    let err = |e: &dyn std::fmt::Display| DialError::Connect {
        addr: addr.to_owned(),
        reason: e.to_string(),
    };
    let conn = ep
        .connect(target, &server_name)
        .map_err(|e| err(&e))?
        .await
        .map_err(|e| err(&e))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| err(&e))?;
    let mut control_w = FrameWriter::new(send, codec);
    let mut control_r = FrameReader::new(recv, codec);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        tunnel: resolved.config.tunnel.clone(),
        credential: resolved.credential.clone(),
        connector_id: resolved.connector_id.clone(),
        services: resolved.services.keys().cloned().collect(),
    };
    control_w
        .send(&Frame::Hello(hello))
        .await
        .map_err(|e| err(&e))?;
    match control_r.next().await {
        Ok(Some(Frame::Welcome(w))) => Ok(Session {
            conn,
            control_w,
            control_r,
            gateway_id: w.gateway_id,
        }),
        Ok(Some(Frame::Reject(r))) => {
            conn.close(0u32.into(), b"rejected");
            // The gateway does not say which of the two was wrong; the connector's operator
            // is told which of its own settings to check.
            let reason = match r.code {
                RejectCode::BadCredential | RejectCode::UnknownTunnel => format!(
                    "{} (check this connector's `tunnel = \"{}\"` and its credential)",
                    r.reason, resolved.config.tunnel
                ),
                _ => r.reason,
            };
            Err(DialError::Rejected {
                addr: addr.to_owned(),
                code: r.code,
                reason,
            })
        }
        Ok(Some(other)) => Err(err(&format!(
            "unexpected {} frame instead of a welcome",
            other.kind()
        ))),
        Ok(None) | Err(_) => Err(match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code.into_inner() > u64::from(CLOSE_REJECTED) =>
            {
                let code = RejectCode::from_u16(
                    u16::try_from(c.error_code.into_inner() - u64::from(CLOSE_REJECTED))
                        .unwrap_or(u16::MAX),
                );
                DialError::Rejected {
                    addr: addr.to_owned(),
                    code,
                    reason: String::from_utf8_lossy(&c.reason).into_owned(),
                }
            }
            Some(reason) => err(&reason),
            None => err(&"connection ended during the handshake"),
        }),
    }
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
