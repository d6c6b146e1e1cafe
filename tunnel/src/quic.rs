//! QUIC (quinn over UDP): the default transport, one bidirectional QUIC stream per tunnel
//! stream. This is the only file of netwall that names quinn.
//!
//! A connector dials from a UDP socket *connected* to its gateway: the kernel then delivers
//! nothing but the gateway's datagrams, so a stranger probing the connector's port gets what
//! any closed port gives (ICMP port unreachable), never a QUIC Stateless Reset that would tell
//! a scanner a QUIC endpoint lives there.

use std::future::Future as _;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::{AsyncRead, ReadBuf};

use crate::transport::{BoxFuture, Closed, Conn, Connection, Peer, Stream, TransportKind};

/// Streams a connector may open toward the gateway: the control stream, with room to spare.
/// Requests flow on gateway-opened streams only.
const GATEWAY_MAX_PEER_STREAMS: u32 = 4;

/// Streams a connector lets the gateway have open at first; the grant doubles, up to the
/// configured maximum, whenever three quarters of it are in use ([`next_grant`]). quinn keeps
/// a slot for every stream the peer may open, in hash maps it looks up for every stream
/// frame: measured under 64 connections of small requests, 16,384 slots from the start cost a
/// connector 5-7 MiB more memory and some 2 % more CPU per request than 1,024, while a tunnel
/// that carries thousands of WebSockets still gets room for all of them as they arrive.
const INITIAL_PEER_STREAMS: u32 = 1024;

/// Bytes a peer may send on one stream ahead of what this side has read: quinn's default,
/// sized for 100 Mbit/s per stream at a 100 ms round trip.
const STREAM_RECEIVE_WINDOW: u32 = 1_250_000;

/// Bytes a peer may send on one connection, all streams together, ahead of what this side has
/// read: see [`crate::CONNECTION_WINDOW`].
const CONNECTION_RECEIVE_WINDOW: u32 = crate::CONNECTION_WINDOW;

/// Kernel buffer asked for on each tunnel UDP socket, each way. Linux's default (about 208 KiB)
/// overflows under a bulk transfer's bursts and every dropped datagram costs a retransmission;
/// quinn's documentation advises raising it. The kernel caps the request at
/// `net.core.rmem_max` / `net.core.wmem_max` (the README's tuning section says how to raise
/// them).
const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The largest UDP payload a tunnel connection sends or accepts; path MTU discovery searches up
/// to it (or to less, see [`path_datagram_limit`]). Each QUIC packet is sealed and tracked on its
/// own, so on a path that carries large datagrams (loopback, jumbo-frame networks) bigger packets
/// cut the CPU per byte: 1 GiB over loopback, 1,452-byte packets (quinn's default bound) against
/// 6,500, three interleaved rounds: download 558-599 -> 802-863 MiB/s, upload 457-479 -> 636-706,
/// CPU per byte gateway 0.89-1.01 -> 0.59-0.67 ns, connector 0.99-1.03 -> 0.48-0.52. Not more:
/// quinn hands the kernel up to ten packets in one GSO call, the kernel refuses a call over 64
/// KiB (EMSGSIZE, which quinn-udp takes for a failed MTU probe and drops silently), so with
/// 9,000-byte packets a busy connection lost whole batches, quinn's black-hole detection fell
/// back to 1,200 bytes and bulk ran 15-25 % slower than with the default. Ten packets of 6,500
/// bytes fit in 64 KiB.
pub const LARGEST_DATAGRAM: u16 = 6_500;

/// The UDP payload every path must carry for QUIC (RFC 9000, section 14).
const SMALLEST_DATAGRAM: u16 = 1_200;

/// quinn's own bound, used when the path's MTU cannot be read: fits Ethernet under IPv6.
const ETHERNET_DATAGRAM: u16 = 1_452;

/// The largest UDP payload worth probing for on a link of `link_mtu` bytes: the MTU less the
/// IP and UDP headers, within [`SMALLEST_DATAGRAM`]..=[`LARGEST_DATAGRAM`].
pub fn datagram_limit(link_mtu: u32, ipv6: bool) -> u16 {
    let headers = if ipv6 { 40 + 8 } else { 20 + 8 };
    let payload = link_mtu.saturating_sub(headers);
    u16::try_from(payload)
        .unwrap_or(u16::MAX)
        .clamp(SMALLEST_DATAGRAM, LARGEST_DATAGRAM)
}

/// The datagram limit of the route a *connected* socket sends on, from the MTU the kernel
/// knows for it (the interface's, or a smaller one learned from the path); quinn's default
/// when the kernel does not say. The connector offers the gateway no more than this, so a
/// connector behind an ordinary 1,500-byte link probes and is probed as it always was.
fn path_datagram_limit(socket: &UdpSocket, ipv6: bool) -> u16 {
    crate::route::mtu(socket, ipv6).map_or(ETHERNET_DATAGRAM, |mtu| datagram_limit(mtu, ipv6))
}

/// quinn's endpoint settings for datagrams of at most `limit` bytes: the size offered to the
/// peer (QUIC's `max_udp_payload_size`), which also bounds the peer's MTU discovery.
fn endpoint_config(limit: u16) -> io::Result<quinn::EndpointConfig> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(limit)
        .map_err(io::Error::other)?;
    Ok(config)
}

/// A UDP socket bound to `addr`, its kernel buffers raised toward [`UDP_SOCKET_BUFFER`].
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a kernel that grants less still works, only with more loss under bursts.
    let _ = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_SOCKET_BUFFER);
    Ok(socket)
}

/// Liveness and stream settings of QUIC connections.
#[derive(Debug, Clone, Copy)]
pub struct QuicParams {
    /// Silence after which a connection is dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval, well under the idle timeout.
    pub keep_alive: Duration,
    /// Streams the peer may have open toward this side at once (connector side: the
    /// gateway's request streams). A dialed connection grants [`INITIAL_PEER_STREAMS`] of
    /// them first and widens the grant as they fill.
    pub max_peer_streams: u32,
}

/// quinn's transport settings for `p`, probing for datagrams of up to `datagram_limit` bytes.
fn transport_config(p: &QuicParams, datagram_limit: u16) -> Result<quinn::TransportConfig, String> {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(datagram_limit);
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        p.idle_timeout
            .try_into()
            .map_err(|e| format!("idle_timeout: {e}"))?,
    ))
    .keep_alive_interval(Some(p.keep_alive))
    .max_concurrent_bidi_streams(p.max_peer_streams.into())
    .max_concurrent_uni_streams(0u32.into())
    .stream_receive_window(STREAM_RECEIVE_WINDOW.into())
    .receive_window(CONNECTION_RECEIVE_WINDOW.into())
    // The tunnel carries streams only: no unreliable datagrams, so none are buffered.
    .datagram_receive_buffer_size(None)
    .mtu_discovery_config(Some(mtu));
    Ok(t)
}

/// A QUIC connection as a tunnel [`Connection`].
struct QuicConn {
    conn: quinn::Connection,
    /// A dialed connection owns its endpoint (its connected socket).
    endpoint: Option<quinn::Endpoint>,
    /// The streams a dialed connection grants its peer, widened as they fill.
    grant: Option<StreamGrant>,
}

/// How many streams the peer may have open toward this side, and how many it has.
struct StreamGrant {
    /// Accepted streams whose receiving half is still alive.
    open: Arc<AtomicU32>,
    /// What the peer is granted now.
    granted: AtomicU32,
    /// What it may be granted at most.
    max: u32,
}

impl StreamGrant {
    fn new(max: u32) -> Self {
        StreamGrant {
            open: Arc::new(AtomicU32::new(0)),
            granted: AtomicU32::new(max.min(INITIAL_PEER_STREAMS)),
            max,
        }
    }

    /// Count a newly accepted stream, widen the grant on `conn` if it is filling up, and hand
    /// back the receiving half that counts the stream as open while it lives.
    fn accepted(&self, conn: &quinn::Connection, recv: quinn::RecvStream) -> CountedRecv {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let granted = self.granted.load(Ordering::Relaxed);
        if let Some(wider) = next_grant(open, granted, self.max)
            && self
                .granted
                .compare_exchange(granted, wider, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            conn.set_max_concurrent_bi_streams(wider.into());
        }
        CountedRecv {
            inner: recv,
            open: self.open.clone(),
        }
    }
}

/// The grant after `open` streams are open under `granted`: doubled (at most to `max`) once
/// three quarters of it are in use, so the peer rarely waits for room; `None` to keep it.
fn next_grant(open: u32, granted: u32, max: u32) -> Option<u32> {
    let filling = u64::from(open) * 4 >= u64::from(granted) * 3;
    (filling && granted < max).then(|| granted.saturating_mul(2).clamp(1, max))
}

/// A stream's receiving half, counted as open until it is dropped.
struct CountedRecv {
    inner: quinn::RecvStream,
    open: Arc<AtomicU32>,
}

impl AsyncRead for CountedRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Drop for CountedRecv {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn closed_of(e: &quinn::ConnectionError) -> Closed {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Closed::ByPeer {
            code: u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        quinn::ConnectionError::LocallyClosed => Closed::Locally,
        other => Closed::Lost(other.to_string()),
    }
}

fn stream(s: quinn::SendStream, r: quinn::RecvStream) -> Stream {
    Stream {
        send: Box::new(s),
        recv: Box::new(r),
    }
}

impl crate::transport::SendHalf for quinn::SendStream {
    fn stopped(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = quinn::SendStream::stopped(self).await;
        })
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut bytes::Bytes,
    ) -> Poll<io::Result<usize>> {
        // quinn keeps the chunk itself (its `poll_write` copies into a new one). Its
        // `write_chunks` writes nothing unless it resolves, so polling a fresh one each time
        // loses nothing.
        let written = std::pin::pin!(self.write_chunks(std::slice::from_mut(data))).poll(cx);
        written.map(|r| r.map(|w| w.bytes).map_err(io::Error::from))
    }
}

impl Connection for QuicConn {
    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn peer(&self) -> Peer {
        Peer::Addr(self.conn.remote_address())
    }

    fn open(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            let (s, r) = self.conn.open_bi().await.map_err(|e| closed_of(&e))?;
            Ok(stream(s, r))
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Stream, Closed>> {
        Box::pin(async move {
            let (s, r) = self.conn.accept_bi().await.map_err(|e| closed_of(&e))?;
            Ok(match &self.grant {
                Some(grant) => Stream {
                    send: Box::new(s),
                    recv: Box::new(grant.accepted(&self.conn, r)),
                },
                None => stream(s, r),
            })
        })
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(quinn::VarInt::from_u32(code), reason);
    }

    fn closed(&self) -> BoxFuture<'_, Closed> {
        Box::pin(async move { closed_of(&self.conn.closed().await) })
    }

    fn close_reason(&self) -> Option<Closed> {
        self.conn.close_reason().map(|e| closed_of(&e))
    }

    fn datagram_size(&self) -> Option<u16> {
        Some(self.conn.stats().path.current_mtu)
    }
}

impl Drop for QuicConn {
    fn drop(&mut self) {
        // A dialed endpoint lingers just long enough to deliver the close, off this task.
        if let Some(ep) = self.endpoint.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
            });
        }
    }
}

// === Gateway side ===

/// The gateway's QUIC tunnel listener.
pub struct QuicListener {
    endpoint: quinn::Endpoint,
}

/// A connection attempt not yet accepted.
pub struct QuicIncoming(quinn::Incoming);

impl QuicListener {
    /// Bind `listen` with `tls` (whose ALPN must be the tunnel's).
    pub fn bind(
        listen: SocketAddr,
        tls: rustls::ServerConfig,
        params: &QuicParams,
    ) -> io::Result<QuicListener> {
        let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let params = QuicParams {
            max_peer_streams: GATEWAY_MAX_PEER_STREAMS,
            ..*params
        };
        server.transport_config(Arc::new(
            // Up to the largest datagram this side takes; each connector offers what its
            // own path carries, and the search stops at the smaller of the two.
            transport_config(&params, LARGEST_DATAGRAM).map_err(io::Error::other)?,
        ));
        server.migration(true);
        let runtime = quinn::default_runtime()
            .ok_or_else(|| io::Error::other("no async runtime for QUIC"))?;
        Ok(QuicListener {
            endpoint: quinn::Endpoint::new(
                endpoint_config(LARGEST_DATAGRAM)?,
                Some(server),
                udp_socket(listen)?,
                runtime,
            )?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The next connection attempt; `None` once the listener is closed.
    pub async fn accept(&self) -> Option<QuicIncoming> {
        self.endpoint.accept().await.map(QuicIncoming)
    }

    /// Close every connection with `code`, then wait up to `linger` for the closes to go out.
    pub async fn close(&self, code: u32, reason: &[u8], linger: Duration) {
        self.endpoint.close(quinn::VarInt::from_u32(code), reason);
        let _ = tokio::time::timeout(linger, self.endpoint.wait_idle()).await;
    }
}

impl Clone for QuicListener {
    fn clone(&self) -> Self {
        QuicListener {
            endpoint: self.endpoint.clone(),
        }
    }
}

impl QuicIncoming {
    /// Where the attempt comes from.
    pub fn remote(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Refuse it (CONNECTION_REFUSED), before any TLS work.
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Complete the QUIC and TLS handshake.
    pub async fn establish(self) -> Result<Conn, String> {
        let conn = self.0.await.map_err(|e| e.to_string())?;
        Ok(Arc::new(QuicConn {
            conn,
            endpoint: None,
            grant: None,
        }))
    }
}

// === Connector side ===

/// Dials QUIC connections to gateways.
#[derive(Clone)]
pub struct QuicDialer {
    config: quinn::ClientConfig,
    /// The settings a connection starts with (its transport settings are completed per dial,
    /// with the datagram limit of the path dialed).
    first: QuicParams,
    /// Streams the gateway may have open at most on one connection.
    max_peer_streams: u32,
}

impl QuicDialer {
    /// A dialer with `tls` (ALPN set by the caller) and `params`.
    pub fn new(tls: rustls::ClientConfig, params: &QuicParams) -> Result<QuicDialer, String> {
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let first = QuicParams {
            max_peer_streams: params.max_peer_streams.min(INITIAL_PEER_STREAMS),
            ..*params
        };
        config.transport_config(Arc::new(transport_config(&first, ETHERNET_DATAGRAM)?));
        Ok(QuicDialer {
            config,
            first,
            max_peer_streams: params.max_peer_streams,
        })
    }

    /// Connect to `target`, checking its certificate for `server_name`, from a fresh UDP
    /// socket connected to `target`.
    pub async fn dial(&self, target: SocketAddr, server_name: &str) -> Result<Conn, String> {
        let bind: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = udp_socket(bind).map_err(|e| format!("udp bind: {e}"))?;
        socket
            .connect(target)
            .map_err(|e| format!("udp connect {target}: {e}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("udp socket: {e}"))?;
        let limit = path_datagram_limit(&socket, target.is_ipv6());
        let mut config = self.config.clone();
        config.transport_config(Arc::new(transport_config(&self.first, limit)?));
        let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(limit).map_err(|e| format!("udp endpoint: {e}"))?,
            None,
            socket,
            runtime,
        )
        .map_err(|e| format!("udp endpoint: {e}"))?;
        let conn = endpoint
            .connect_with(config, target, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(QuicConn {
            conn,
            endpoint: Some(endpoint),
            grant: Some(StreamGrant::new(self.max_peer_streams)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{datagram_limit, next_grant};

    #[test]
    fn the_datagram_limit_is_the_link_mtu_less_headers_within_quic_and_gso_bounds() {
        assert_eq!(datagram_limit(1_500, false), 1_472);
        assert_eq!(datagram_limit(1_500, true), 1_452);
        assert_eq!(datagram_limit(1_280, true), 1_232);
        // A link too small for QUIC still gets QUIC's minimum (and fails its handshake).
        assert_eq!(datagram_limit(576, false), 1_200);
        assert_eq!(datagram_limit(0, true), 1_200);
        // Jumbo frames and loopback stop where ten packets still fit one GSO call.
        assert_eq!(datagram_limit(9_000, false), 6_500);
        assert_eq!(datagram_limit(65_536, false), 6_500);
        assert_eq!(datagram_limit(u32::MAX, true), 6_500);
        const { assert!(10 * super::LARGEST_DATAGRAM as u32 <= 65_507) };
    }

    #[test]
    fn the_grant_doubles_at_three_quarters_and_stops_at_the_maximum() {
        assert_eq!(next_grant(767, 1024, 16_384), None);
        assert_eq!(next_grant(768, 1024, 16_384), Some(2048));
        assert_eq!(next_grant(12_288, 16_384, 16_384), None);
        assert_eq!(next_grant(6_200, 8_192, 10_000), Some(10_000));
        assert_eq!(next_grant(1, 1, 1), None);
        assert_eq!(next_grant(0, 0, 5), Some(1));
        assert_eq!(next_grant(u32::MAX, u32::MAX - 1, u32::MAX), Some(u32::MAX));
    }
}
