//! The tunnel server: every connector connection, whatever its transport, is authenticated
//! and then served here, by the same code.
//!
//! Each connection runs in its own task, off any accept loop, under one deadline covering the
//! transport handshake, the hello and the credential check; a source IP may have only a few
//! unfinished handshakes at once, and one that keeps failing authentication is locked out for
//! a while. Junk on a tunnel port therefore costs one bounded task, never a stall of the
//! accept loop or of other tunnels. Once up, the control loop answers pings, handles drains
//! and go-aways, and declares the connection dead after `idle_timeout` of control silence.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netwall_proto::{Codec, Frame, RejectCode};
use netwall_tunnel::handshake::{self, ControlReader, HelloError};
use netwall_tunnel::{Conn, Peer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Registry, Tunnel, TunnelConn};
use crate::config::TunnelListenerConfig;
use crate::metrics::{Metrics, ResultLabel};

pub use netwall_proto::wire::{CLOSE_DRAINED, CLOSE_REJECTED, CLOSE_SHUTDOWN};

/// What a connector is told when its tunnel name or credential is wrong (the same for both).
pub const REJECTED_CREDENTIAL: &str = "tunnel name or credential rejected";

/// How long a rejected connector gets to read the reject before the connection is closed.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Application close code for a control-stream protocol error.
const CLOSE_PROTOCOL: u32 = 0x1;

/// Shared state of every tunnel listener.
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
    /// Control silence after which a connection is dead.
    pub idle_timeout: Duration,
    /// Per-IP cap on unfinished handshakes.
    pub max_pending_per_ip: usize,
    pending: Mutex<HashMap<IpAddr, usize>>,
    throttle: super::throttle::AuthThrottle,
    /// Every authenticated connection, so shutdown can close them all.
    live: Mutex<HashMap<u64, Conn>>,
    /// Where messages a connector publishes go (none: they are counted and dropped).
    publisher: Option<crate::fanout::Publisher>,
}

/// A claimed handshake slot for one source IP; released on drop.
pub struct PendingSlot {
    server: Arc<TunnelServer>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
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

/// Why a connection attempt may not even start its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many failed authentications from this address lately.
    LockedOut,
    /// Too many unfinished handshakes from this address.
    TooManyPending,
}

/// What a connection on a listener is allowed to be.
#[derive(Debug, Clone)]
pub enum Binding {
    /// Any tunnel, by name and credential (the network listeners).
    Any,
    /// Only this tunnel (its Unix socket); a credential is checked if it has one.
    Tunnel(String),
}

impl TunnelServer {
    /// A server over `registry`.
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
            idle_timeout: cfg.idle_timeout,
            max_pending_per_ip: cfg.max_pending_handshakes_per_ip,
            pending: Mutex::new(HashMap::new()),
            throttle: super::throttle::AuthThrottle::default(),
            live: Mutex::new(HashMap::new()),
            publisher: None,
        }
    }

    /// Hand what connectors publish to `publisher`.
    pub fn with_publisher(mut self, publisher: crate::fanout::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .tunnel_handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Decide, before any handshake work, whether `ip` may start one; the slot is held until
    /// the handshake ends.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, Refused> {
        if self.throttle.locked_out(ip, std::time::Instant::now()) {
            self.count("locked_out");
            crate::security_event!(event = "tunnel_locked_out", remote = %ip, "refusing tunnel handshake: too many failed authentications");
            return Err(Refused::LockedOut);
        }
        let mut p = self.pending.lock().map_err(|_| Refused::TooManyPending)?;
        let n = p.entry(ip).or_insert(0);
        if *n >= self.max_pending_per_ip {
            drop(p);
            self.count("too_many_pending");
            debug!("refusing tunnel handshake: too many pending from this address");
            return Err(Refused::TooManyPending);
        }
        *n += 1;
        Ok(PendingSlot {
            server: self.clone(),
            ip,
        })
    }

    /// Run one connection: finish the transport handshake (`establish`), authenticate, serve
    /// the control loop until the connection ends. `slot` is released once authenticated.
    pub async fn run<F>(
        self: Arc<Self>,
        slot: Option<PendingSlot>,
        remote: Peer,
        binding: Binding,
        establish: F,
        shutdown: CancellationToken,
    ) where
        F: Future<Output = Result<Conn, String>>,
    {
        let result = tokio::time::timeout(self.handshake_timeout, async {
            let conn = establish.await.map_err(HelloError::Transport)?;
            self.authenticate(conn, &remote, &binding).await
        })
        .await;
        drop(slot);
        let (tunnel, conn, reader) = match result {
            Ok(Ok(v)) => v,
            Ok(Err(HelloError::Rejected { code, reason })) => {
                self.count(match code {
                    RejectCode::BadCredential => "bad_credential",
                    RejectCode::UnknownTunnel => "unknown_tunnel",
                    RejectCode::UnsupportedVersion => "unsupported_version",
                    _ => "malformed",
                });
                crate::security_event!(event = "tunnel_auth_failed", remote = %remote, reason = %reason);
                return;
            }
            Ok(Err(HelloError::Transport(e))) => {
                self.count("failed");
                debug!(error = %e, "tunnel handshake failed");
                return;
            }
            Err(_) => {
                self.count("timeout");
                debug!("tunnel handshake timed out");
                return;
            }
        };
        self.count("accepted");
        let transport = conn.transport.kind();
        info!(tunnel = %tunnel.name, connector = %conn.connector_id, conn_id = conn.id, %transport, remote = %remote, "tunnel connection up");
        if let Ok(mut live) = self.live.lock() {
            live.insert(conn.id, conn.transport.clone());
        }
        // Registered before the welcome: a connector moving its traffic to this connection
        // drains the old one as soon as it is welcomed, and requests must find this one.
        self.registry.register(&tunnel, conn.clone());
        {
            let mut w = conn.control.lock().await;
            if let Err(e) = handshake::welcome(&mut w, &self.gateway_id, conn.version).await {
                debug!(error = %e, "welcome not delivered");
            }
        }
        self.control_loop(&tunnel, &conn, reader, shutdown).await;
        self.registry.unregister(&tunnel, &conn);
        if let Ok(mut live) = self.live.lock() {
            live.remove(&conn.id);
        }
        info!(tunnel = %tunnel.name, connector = %conn.connector_id, conn_id = conn.id, %transport, "tunnel connection down");
    }

    /// Close every live tunnel connection with `code`.
    pub fn close_all(&self, code: u32, reason: &[u8]) {
        let conns: Vec<Conn> = match self.live.lock() {
            Ok(live) => live.values().cloned().collect(),
            Err(_) => return,
        };
        for c in conns {
            c.close(code, reason);
        }
    }

    async fn authenticate(
        &self,
        conn: Conn,
        remote: &Peer,
        binding: &Binding,
    ) -> Result<(Arc<Tunnel>, Arc<TunnelConn>, ControlReader), HelloError> {
        let greeting = handshake::read_hello(&conn, self.codec, REJECT_LINGER).await?;
        let handshake::Greeting {
            hello,
            mut control_w,
            control_r,
        } = greeting;
        // The welcome goes out once the connection is registered (see `run`).
        // An unknown name and a wrong credential get the same answer after the same work
        // and the same delay, so a stranger cannot learn which tunnel names exist. The
        // gateway's own metrics and logs still tell them apart.
        let tunnel = match binding {
            Binding::Tunnel(name) if *name != hello.tunnel => None,
            _ => self.registry.get(&hello.tunnel),
        };
        let verified = match (&tunnel, binding) {
            // The socket's permissions authenticated the peer; a configured credential must
            // still match.
            (Some(t), Binding::Tunnel(_)) if !t.requires_credential() => true,
            (Some(t), _) => t.verify(&hello.credential.0),
            (None, _) => {
                super::Tunnel::verify_nothing(&hello.credential.0);
                false
            }
        };
        let ip = remote.addr().map(|a| a.ip());
        let tunnel = match tunnel {
            Some(t) if verified => t,
            found => {
                if let Some(ip) = ip {
                    let delay = self.throttle.failed(ip, std::time::Instant::now());
                    tokio::time::sleep(delay).await;
                }
                handshake::reject(
                    &conn,
                    &mut control_w,
                    RejectCode::BadCredential,
                    REJECTED_CREDENTIAL.into(),
                    REJECT_LINGER,
                )
                .await;
                return Err(HelloError::Rejected {
                    code: if found.is_some() {
                        RejectCode::BadCredential
                    } else {
                        RejectCode::UnknownTunnel
                    },
                    reason: match found {
                        None => format!("no tunnel named `{}` here", hello.tunnel),
                        Some(_) => format!("credential rejected for tunnel `{}`", hello.tunnel),
                    },
                });
            }
        };
        if let Some(ip) = ip {
            self.throttle.succeeded(ip);
        }
        let conn = Arc::new(TunnelConn::new(
            self.registry.next_id(),
            hello.connector_id,
            hello.version,
            remote.clone(),
            conn,
            control_w,
        ));
        Ok((tunnel, conn, control_r))
    }

    async fn control_loop(
        &self,
        tunnel: &Tunnel,
        conn: &TunnelConn,
        mut reader: ControlReader,
        shutdown: CancellationToken,
    ) {
        let quic = &conn.transport;
        let mut told_go_away = false;
        let mut control_open = true;
        let silence = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(silence);
        loop {
            let frame = tokio::select! {
                f = reader.next(), if control_open => f,
                c = quic.closed() => {
                    debug!(reason = %c, "tunnel connection ended");
                    break;
                }
                // Connectors open nothing after the control stream: refuse (reset) any
                // stream they do, so none holds a window here.
                s = quic.accept() => match s {
                    Ok(_) => {
                        debug!("connector opened an unexpected stream; refused");
                        continue;
                    }
                    Err(_) => break,
                },
                // A connector pings on the control stream; silence means it is gone, whatever
                // the transport's own keep-alive thinks.
                _ = &mut silence, if control_open => {
                    info!(tunnel = %tunnel.name, connector = %conn.connector_id, timeout = ?self.idle_timeout, "tunnel connection silent; closing");
                    quic.close(CLOSE_PROTOCOL, b"idle");
                    break;
                }
                // A drained connection is closed by the gateway, the side that knows when
                // the last response has been received in full.
                _ = conn.idle(), if conn.is_draining() => {
                    info!(tunnel = %tunnel.name, connector = %conn.connector_id, "connection drained; closing");
                    quic.close(CLOSE_DRAINED, b"drained");
                    break;
                }
                _ = shutdown.cancelled(), if !told_go_away => {
                    told_go_away = true;
                    conn.send_control(&Frame::GoAway { reason: "gateway shutting down".into() }).await;
                    continue;
                }
            };
            silence
                .as_mut()
                .reset(tokio::time::Instant::now() + self.idle_timeout);
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
                // In order, on this stream: waits (and so slows the connector down) while the
                // gateway's publishing queue is full.
                Ok(Some(Frame::Publish { channel, message })) => match &self.publisher {
                    Some(p) => {
                        p.publish(&tunnel.name, channel, message, &self.metrics)
                            .await;
                    }
                    None => debug!("publish without a publisher; dropped"),
                },
                Ok(Some(other)) => {
                    debug!(
                        kind = other.kind(),
                        "unexpected frame on the control stream"
                    );
                    quic.close(CLOSE_PROTOCOL, b"protocol error on control stream");
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
