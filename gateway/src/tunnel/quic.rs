//! QUIC tunnel listener: connectors dial in, authenticate on a control stream, and then carry
//! one bidirectional stream per request.
//!
//! Each handshake runs in its own task, off the accept loop, under one deadline covering the
//! QUIC/TLS handshake, the hello and the credential check; a source IP may have only a few
//! unfinished handshakes at once. Junk on the tunnel port therefore costs one bounded task,
//! never a stall of the accept loop or of other tunnels.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netwall_proto::io::{FrameReader, FrameWriter};
use netwall_proto::{Codec, Frame, PROTOCOL_VERSION, Reject, RejectCode, Welcome};
use quinn::crypto::rustls::QuicServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span};

use super::{Registry, StreamRead, StreamWrite, Transport, Tunnel, TunnelConn};
use crate::config::TunnelListenerConfig;
use crate::metrics::{Metrics, ResultLabel};
use crate::tls::{CertPair, TlsError};

pub use netwall_proto::wire::{CLOSE_DRAINED, CLOSE_REJECTED, CLOSE_SHUTDOWN};

/// What a connector is told when its tunnel name or credential is wrong (the same for both).
pub const REJECTED_CREDENTIAL: &str = "tunnel name or credential rejected";

/// How long a rejected connector gets to read the reject before the connection is closed.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Bind the QUIC endpoint.
pub fn bind(
    cfg: &TunnelListenerConfig,
    pair: &CertPair,
) -> Result<quinn::Endpoint, std::io::Error> {
    let tls = crate::tls::tunnel_server_config(pair).map_err(std::io::Error::other)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| {
        std::io::Error::other(TlsError::Rustls(rustls::Error::General(e.to_string())))
    })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            cfg.idle_timeout.try_into().map_err(std::io::Error::other)?,
        ))
        .keep_alive_interval(Some(cfg.keep_alive))
        // Connectors open only the control stream; requests flow on gateway-opened streams.
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    server.migration(true);
    quinn::Endpoint::server(server, cfg.listen)
}

/// Shared state of the tunnel listener.
pub struct TunnelServer {
    /// Tunnels.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Frame codec.
    pub codec: Codec,
    /// This gateway's id, sent in `Welcome`.
    pub gateway_id: String,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Per-IP cap on unfinished handshakes.
    pub max_pending_per_ip: usize,
    pending: Mutex<HashMap<IpAddr, usize>>,
    throttle: super::throttle::AuthThrottle,
}

/// Releases a pending-handshake slot on drop.
struct PendingSlot<'a> {
    server: &'a TunnelServer,
    ip: IpAddr,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.server.pending.lock()
            && let Some(n) = p.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.ip);
            }
        }
    }
}

/// Why a handshake failed, for metrics and logs.
enum HandshakeError {
    Rejected(RejectCode, String),
    Transport(String),
}

impl TunnelServer {
    /// A listener over `registry`.
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        codec: Codec,
        gateway_id: String,
        cfg: &TunnelListenerConfig,
    ) -> Self {
        TunnelServer {
            registry,
            metrics,
            codec,
            gateway_id,
            handshake_timeout: cfg.handshake_timeout,
            max_pending_per_ip: cfg.max_pending_handshakes_per_ip,
            pending: Mutex::new(HashMap::new()),
            throttle: super::throttle::AuthThrottle::default(),
        }
    }

    fn claim(&self, ip: IpAddr) -> Option<PendingSlot<'_>> {
        let mut p = self.pending.lock().ok()?;
        let n = p.entry(ip).or_insert(0);
        if *n >= self.max_pending_per_ip {
            return None;
        }
        *n += 1;
        Some(PendingSlot { server: self, ip })
    }

    /// Accept connectors until `shutdown`; connection tasks are spawned on `tasks`.
    pub async fn serve(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i { Some(i) => i, None => break },
                _ = shutdown.cancelled() => break,
            };
            let remote = incoming.remote_address();
            let this = self.clone();
            let shutdown = shutdown.clone();
            let span = info_span!("tunnel_conn", remote = %remote);
            tasks.spawn(
                async move { this.handle(incoming, remote, shutdown).await }.instrument(span),
            );
        }
    }

    async fn handle(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        remote: SocketAddr,
        shutdown: CancellationToken,
    ) {
        if self
            .throttle
            .locked_out(remote.ip(), std::time::Instant::now())
        {
            self.metrics
                .tunnel_handshakes
                .get_or_create(&ResultLabel {
                    result: "locked_out",
                })
                .inc();
            crate::security_event!(event = "tunnel_locked_out", remote = %remote, "refusing tunnel handshake: too many failed authentications");
            incoming.refuse();
            return;
        }
        let Some(slot) = self.claim(remote.ip()) else {
            self.metrics
                .tunnel_handshakes
                .get_or_create(&ResultLabel {
                    result: "too_many_pending",
                })
                .inc();
            debug!("refusing tunnel handshake: too many pending from this address");
            incoming.refuse();
            return;
        };
        let result = tokio::time::timeout(self.handshake_timeout, self.handshake(incoming)).await;
        drop(slot);
        let (tunnel, conn, reader, quic) = match result {
            Ok(Ok(v)) => v,
            Ok(Err(HandshakeError::Rejected(code, reason))) => {
                let result = match code {
                    RejectCode::BadCredential => "bad_credential",
                    RejectCode::UnknownTunnel => "unknown_tunnel",
                    RejectCode::UnsupportedVersion => "unsupported_version",
                    _ => "malformed",
                };
                self.metrics
                    .tunnel_handshakes
                    .get_or_create(&ResultLabel { result })
                    .inc();
                crate::security_event!(event = "tunnel_auth_failed", remote = %remote, reason = %reason);
                return;
            }
            Ok(Err(HandshakeError::Transport(e))) => {
                self.metrics
                    .tunnel_handshakes
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                debug!(error = %e, "tunnel handshake failed");
                return;
            }
            Err(_) => {
                self.metrics
                    .tunnel_handshakes
                    .get_or_create(&ResultLabel { result: "timeout" })
                    .inc();
                debug!("tunnel handshake timed out");
                return;
            }
        };
        self.metrics
            .tunnel_handshakes
            .get_or_create(&ResultLabel { result: "accepted" })
            .inc();
        info!(tunnel = %tunnel.name, connector = %conn.connector_id, conn_id = conn.id, "tunnel connection up");
        self.registry.register(&tunnel, conn.clone());
        self.control_loop(&tunnel, &conn, reader, &quic, shutdown)
            .await;
        self.registry.unregister(&tunnel, &conn);
        info!(tunnel = %tunnel.name, connector = %conn.connector_id, conn_id = conn.id, "tunnel connection down");
    }

    async fn handshake(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<
        (
            Arc<Tunnel>,
            Arc<TunnelConn>,
            FrameReader<StreamRead>,
            quinn::Connection,
        ),
        HandshakeError,
    > {
        let t = |e: &dyn std::fmt::Display| HandshakeError::Transport(e.to_string());
        let quic = incoming.await.map_err(|e| t(&e))?;
        let remote = quic.remote_address();
        let (send, recv) = quic.accept_bi().await.map_err(|e| t(&e))?;
        let mut reader = FrameReader::new(Box::new(recv) as StreamRead, self.codec);
        let mut writer = FrameWriter::new(Box::new(send) as StreamWrite, self.codec);
        let hello = match reader.next().await {
            Ok(Some(Frame::Hello(h))) => h,
            Ok(_) | Err(_) => {
                return Err(self
                    .reject(
                        &quic,
                        &mut writer,
                        RejectCode::Malformed,
                        "expected a hello frame".into(),
                    )
                    .await);
            }
        };
        if hello.version != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {} is not supported (this gateway speaks {PROTOCOL_VERSION})",
                hello.version
            );
            return Err(self
                .reject(&quic, &mut writer, RejectCode::UnsupportedVersion, reason)
                .await);
        }
        // An unknown name and a wrong credential get the same answer after the same work
        // and the same delay, so a stranger cannot learn which tunnel names exist. The
        // gateway's own metrics and logs still tell them apart.
        let tunnel = self.registry.get(&hello.tunnel).cloned();
        let verified = match &tunnel {
            Some(t) => t.verify(&hello.credential.0),
            None => {
                super::Tunnel::verify_nothing(&hello.credential.0);
                false
            }
        };
        let tunnel = match tunnel {
            Some(t) if verified => t,
            found => {
                let delay = self.throttle.failed(remote.ip(), std::time::Instant::now());
                tokio::time::sleep(delay).await;
                self.reject(
                    &quic,
                    &mut writer,
                    RejectCode::BadCredential,
                    REJECTED_CREDENTIAL.into(),
                )
                .await;
                return Err(match found {
                    None => HandshakeError::Rejected(
                        RejectCode::UnknownTunnel,
                        format!("no tunnel named `{}`", hello.tunnel),
                    ),
                    Some(_) => HandshakeError::Rejected(
                        RejectCode::BadCredential,
                        format!("credential rejected for tunnel `{}`", hello.tunnel),
                    ),
                });
            }
        };
        self.throttle.succeeded(remote.ip());
        let welcome = Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            gateway_id: self.gateway_id.clone(),
        });
        writer.send(&welcome).await.map_err(|e| t(&e))?;
        writer.flush().await.map_err(|e| t(&e))?;
        let conn = Arc::new(TunnelConn::new(
            self.registry.next_id(),
            hello.connector_id,
            remote,
            Transport::Quic(quic.clone()),
            writer,
        ));
        Ok((tunnel, conn, reader, quic))
    }

    async fn reject(
        &self,
        quic: &quinn::Connection,
        writer: &mut FrameWriter<StreamWrite>,
        code: RejectCode,
        reason: String,
    ) -> HandshakeError {
        let _ = writer
            .send(&Frame::Reject(Reject {
                code,
                reason: reason.clone(),
            }))
            .await;
        let _ = writer.shutdown().await;
        // Give the connector a moment to read the reject and close first; the close frame also
        // carries the reason in case the stream data is lost.
        let _ = tokio::time::timeout(REJECT_LINGER, quic.closed()).await;
        quic.close(
            quinn::VarInt::from_u32(CLOSE_REJECTED + u32::from(code.to_u16())),
            reason.as_bytes(),
        );
        HandshakeError::Rejected(code, reason)
    }

    async fn control_loop(
        &self,
        tunnel: &Tunnel,
        conn: &TunnelConn,
        mut reader: FrameReader<StreamRead>,
        quic: &quinn::Connection,
        shutdown: CancellationToken,
    ) {
        let mut told_go_away = false;
        let mut control_open = true;
        loop {
            let frame = tokio::select! {
                f = reader.next(), if control_open => f,
                _ = quic.closed() => break,
                // A drained connection is closed by the gateway, the side that knows when
                // the last response has been received in full.
                _ = conn.idle(), if conn.is_draining() => {
                    info!(tunnel = %tunnel.name, connector = %conn.connector_id, "connection drained; closing");
                    quic.close(quinn::VarInt::from_u32(CLOSE_DRAINED), b"drained");
                    break;
                }
                _ = shutdown.cancelled(), if !told_go_away => {
                    told_go_away = true;
                    conn.send_control(&Frame::GoAway { reason: "gateway shutting down".into() }).await;
                    continue;
                }
            };
            match frame {
                Ok(Some(Frame::Drain)) => {
                    let opened = tunnel.drain(conn);
                    info!(tunnel = %tunnel.name, connector = %conn.connector_id, streams_opened = opened, in_flight = conn.in_flight(), "connector draining");
                    conn.send_control(&Frame::DrainAck {
                        streams_opened: opened,
                    })
                    .await;
                }
                Ok(Some(Frame::Ping(v))) => conn.send_control(&Frame::Pong(v)).await,
                Ok(Some(Frame::Pong(_))) => {}
                Ok(Some(other)) => {
                    debug!(
                        kind = other.kind(),
                        "unexpected frame on the control stream"
                    );
                    quic.close(
                        quinn::VarInt::from_u32(1),
                        b"protocol error on control stream",
                    );
                    break;
                }
                Ok(None) => {
                    // The connector finished its control stream: treat it as a drain.
                    control_open = false;
                    tunnel.drain(conn);
                }
                Err(e) => {
                    debug!(error = %e, "control stream ended");
                    break;
                }
            }
        }
    }
}
