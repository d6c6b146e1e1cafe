//! A raw TCP connection of a `[[tcp_route]]`, from accept to close: the address check, the
//! per-IP cap, the client certificate, the tunnel stream, then bytes both ways until both
//! sides are done or the connection has been idle too long.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use netwall_proto::{Codec, Frame, TCP_SINCE_VERSION, TcpOpen};
use netwall_tunnel::body::pipe_upgraded;
use netwall_tunnel::io::{FrameReader, FrameWriter};
use netwall_tunnel::tls_stream::TlsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::info;

use super::config::{StartTls, TcpRouteConfig};
use super::sni::{Hello, Replayed};
use super::starttls::{self, PgOpening};
use crate::metrics::{Metrics, RouteLabel, TcpDirLabel, TcpResultLabel};
use crate::policy::conn_limit::SlotTable;
use crate::tunnel::Registry;

/// One TCP route, ready to serve connections.
pub struct TcpRoute {
    /// Name in metrics and logs: the public listen address.
    pub name: String,
    cfg: TcpRouteConfig,
    networks: Vec<IpNet>,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    slots: Arc<SlotTable<IpAddr>>,
    open: Arc<tokio::sync::Semaphore>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    codec: Codec,
}

/// A connection's places under the per-IP and per-route caps.
struct Admitted {
    _slot: crate::policy::conn_limit::Slot<IpAddr>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why a connection went no further; each is a metric label.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Ip,
    PerIp,
    RouteFull,
    Certificate,
    TlsNotRequested,
    HandshakeTimeout,
    TunnelOffline,
    ConnectorTooOld,
    ServiceUnavailable,
    ServiceTimeout,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Ip => "ip_refused",
            Refusal::PerIp => "too_many_connections",
            Refusal::RouteFull => "route_full",
            Refusal::Certificate => "certificate_refused",
            Refusal::TlsNotRequested => "tls_not_requested",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::TunnelOffline => "tunnel_offline",
            Refusal::ConnectorTooOld => "connector_too_old",
            Refusal::ServiceUnavailable => "service_unavailable",
            Refusal::ServiceTimeout => "service_timeout",
        }
    }
}

impl TcpRoute {
    /// A route over `registry`'s tunnels, named `name` (its bound address, or `sni:` and its
    /// server name); `tls` when TLS ends here.
    pub fn new(
        name: String,
        cfg: TcpRouteConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        handshake_timeout: Duration,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        codec: Codec,
    ) -> Self {
        TcpRoute {
            name,
            networks: cfg.networks(),
            open: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
            cfg,
            tls,
            handshake_timeout,
            slots: Arc::new(SlotTable::default()),
            registry,
            metrics,
            codec,
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .tcp_connections
            .get_or_create(&TcpResultLabel {
                route: self.name.clone(),
                result,
            })
            .inc();
    }

    fn refuse(&self, why: Refusal, client: SocketAddr, detail: &str) {
        self.count(why.label());
        crate::security_event!(event = "tcp_refused", route = %self.name, client = %client, reason = why.label(), detail = %detail);
    }

    /// The address check, the per-IP cap and the route's cap; what it returns is held for
    /// the connection's life.
    fn admit(&self, client: SocketAddr) -> Option<Admitted> {
        let ip = client.ip();
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(&ip)) {
            self.refuse(Refusal::Ip, client, "address not in allow_ips");
            return None;
        }
        let Some(slot) = self.slots.claim(ip, self.cfg.max_connections_per_ip) else {
            self.refuse(Refusal::PerIp, client, "per-IP connection cap");
            return None;
        };
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            self.refuse(Refusal::RouteFull, client, "route connection cap");
            return None;
        };
        Some(Admitted {
            _slot: slot,
            _permit: permit,
        })
    }

    /// Serve one connection accepted on the route's own listener to its end.
    pub async fn handle(self: Arc<Self>, tcp: TcpStream, client: SocketAddr) {
        let Some(_slot) = self.admit(client) else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        match &self.tls {
            None => self.relay(tcp, client, local, String::new()).await,
            Some(config) => {
                let starttls = self.cfg.starttls.as_ref().map(|s| *s.get_ref());
                let handshake = async {
                    let mut tcp = tcp;
                    if let Some(StartTls::Postgres) = starttls {
                        pg_starttls(&mut tcp).await?;
                    }
                    TlsStream::accept(tcp, config.clone(), Vec::new())
                        .await
                        .map_err(|e| (Refusal::Certificate, e.to_string()))
                };
                if let Some((tls, subject)) = self.finish_tls(handshake, client).await {
                    self.relay(tls, client, local, subject).await
                }
            }
        }
    }

    /// Serve a connection of the shared HTTPS port whose ClientHello named this route.
    pub async fn handle_hello(self: Arc<Self>, hello: Hello, client: SocketAddr) {
        let Some(_slot) = self.admit(client) else {
            return;
        };
        let local = hello.tcp.local_addr().ok();
        match &self.tls {
            // Passthrough: the service completes the handshake the client began.
            None => {
                let io = Replayed::new(hello.recorded, hello.tcp);
                self.relay(io, client, local, String::new()).await
            }
            Some(config) => {
                // The handshake starts over from the bytes already read.
                let handshake = async {
                    TlsStream::accept(hello.tcp, config.clone(), hello.recorded)
                        .await
                        .map_err(|e| (Refusal::Certificate, e.to_string()))
                };
                if let Some((tls, subject)) = self.finish_tls(handshake, client).await {
                    self.relay(tls, client, local, subject).await
                }
            }
        }
    }

    /// Complete a TLS handshake under the route's deadline; the stream and the client
    /// certificate's subject (empty without one), or the refusal counted.
    async fn finish_tls<F>(
        &self,
        handshake: F,
        client: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, String)>
    where
        F: std::future::Future<Output = Result<TlsStream<TcpStream>, (Refusal, String)>>,
    {
        let tls = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err((why, detail))) => {
                self.refuse(why, client, &detail);
                return None;
            }
            Err(_) => {
                self.refuse(Refusal::HandshakeTimeout, client, "TLS handshake");
                return None;
            }
        };
        let subject = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| subject_of(c.as_ref()))
            .unwrap_or_default();
        Some((tls, subject))
    }

    async fn relay<IO>(
        &self,
        io: IO,
        client: SocketAddr,
        local: Option<SocketAddr>,
        subject: String,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(lease) = self
            .registry
            .get(self.cfg.tunnel.get_ref())
            .and_then(|t| t.pick())
        else {
            return self.refuse(Refusal::TunnelOffline, client, "no connector");
        };
        if lease.conn().version < TCP_SINCE_VERSION {
            return self.refuse(
                Refusal::ConnectorTooOld,
                client,
                "connector predates TCP services",
            );
        }
        let open = Frame::TcpOpen(TcpOpen {
            service: self.cfg.service.clone(),
            client_addr: client.to_string(),
            server_addr: local.map(|a| a.to_string()).unwrap_or_default(),
            client_subject: subject.clone(),
            proxy_protocol: self.cfg.proxy_protocol,
        });
        let connect = async {
            let (send, recv) = lease
                .conn()
                .open_stream()
                .await
                .map_err(|e| e.to_string())?;
            let mut writer = FrameWriter::new(send, self.codec);
            let mut reader = FrameReader::new(recv, self.codec);
            writer.send(&open).await.map_err(|e| e.to_string())?;
            match reader.next().await {
                Ok(Some(Frame::ResponseHead(h))) if h.status == 200 => Ok((writer, reader)),
                Ok(Some(Frame::Reset(r))) => Err(r.reason),
                Ok(Some(other)) => Err(format!("unexpected {} frame", other.kind())),
                Ok(None) => Err("stream ended".into()),
                Err(e) => Err(e.to_string()),
            }
        };
        let (writer, reader) = match tokio::time::timeout(self.cfg.connect_timeout, connect).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.refuse(Refusal::ServiceUnavailable, client, &e),
            Err(_) => return self.refuse(Refusal::ServiceTimeout, client, "connect timeout"),
        };
        self.count("relayed");
        // One line at each end of every session: who reached which service, and for how long
        // (database sessions are few and long; this is their access log).
        info!(route = %self.name, %client, subject = %subject, service = %self.cfg.service, "TCP connection relayed");
        let active = self
            .metrics
            .tcp_active
            .get_or_create(&RouteLabel {
                route: self.name.clone(),
            })
            .clone();
        active.inc();
        let started = Instant::now();
        let seen = Arc::new(Activity::new());
        let tracked = Tracked {
            inner: io,
            seen: seen.clone(),
        };
        let ended = tokio::select! {
            _ = pipe_upgraded(tracked, writer, reader) => "closed",
            _ = idle(&seen, self.cfg.idle_timeout) => "idle_timeout",
        };
        active.dec();
        info!(
            route = %self.name,
            %client,
            subject = %subject,
            ended,
            to_service = seen.read.load(Ordering::Relaxed),
            to_client = seen.written.load(Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f64(),
            "TCP connection ended"
        );
        let dir = |direction| TcpDirLabel {
            route: self.name.clone(),
            direction,
        };
        self.metrics
            .tcp_bytes
            .get_or_create(&dir("to_service"))
            .inc_by(seen.read.load(Ordering::Relaxed));
        self.metrics
            .tcp_bytes
            .get_or_create(&dir("to_client"))
            .inc_by(seen.written.load(Ordering::Relaxed));
        self.metrics
            .tcp_duration_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Answer a PostgreSQL client's request for TLS, so that its TLS handshake comes next. The
/// socket is read unbuffered, exactly the request's bytes: anything a client sends before
/// its handshake is read by the TLS acceptor as a malformed record, never relayed.
async fn pg_starttls(tcp: &mut TcpStream) -> Result<(), (Refusal, String)> {
    let mut gssenc = 0;
    loop {
        let mut head = [0u8; starttls::PG_REQUEST_LEN];
        tcp.read_exact(&mut head).await.map_err(|e| {
            (
                Refusal::TlsNotRequested,
                format!("before the SSLRequest: {e}"),
            )
        })?;
        let answer = match starttls::pg_opening(&head) {
            PgOpening::Tls => starttls::PG_TLS_YES,
            PgOpening::GssEnc if gssenc < starttls::PG_MAX_GSSENC_REQUESTS => {
                gssenc += 1;
                starttls::PG_NO
            }
            PgOpening::GssEnc | PgOpening::Plaintext => {
                let _ = tcp
                    .write_all(&starttls::pg_fatal(PG_TLS_REQUIRED_MESSAGE))
                    .await;
                return Err((
                    Refusal::TlsNotRequested,
                    "the client did not ask for TLS".into(),
                ));
            }
        };
        tcp.write_all(&[answer])
            .await
            .map_err(|e| (Refusal::TlsNotRequested, e.to_string()))?;
        if answer == starttls::PG_TLS_YES {
            return Ok(());
        }
    }
}

/// What a PostgreSQL client without TLS is told (libpq shows it after `FATAL:`).
const PG_TLS_REQUIRED_MESSAGE: &str = "netwall: this address requires TLS with a client certificate (sslmode=require or stricter, sslcert, sslkey)";

/// The certificate's subject as RFC 4514 text, or empty when it does not parse.
fn subject_of(der: &[u8]) -> String {
    use x509_cert::der::Decode;
    x509_cert::Certificate::from_der(der)
        .map(|c| c.tbs_certificate.subject.to_string())
        .unwrap_or_default()
}

/// When a connection last moved a byte, and how many it moved each way.
struct Activity {
    since: Instant,
    last_ms: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Resolves once `seen` has moved no byte for `limit`.
async fn idle(seen: &Activity, limit: Duration) {
    loop {
        let deadline = seen.last() + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The client's side of the connection, noting each byte it moves.
struct Tracked<IO> {
    inner: IO,
    seen: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.seen.read.fetch_add(n as u64, Ordering::Relaxed);
            self.seen.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.seen.written.fetch_add(n as u64, Ordering::Relaxed);
            self.seen.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
