//! The one seam between tunnel logic and the wire: a [`Connection`] opens and accepts
//! bidirectional [`Stream`]s and can be closed; nothing above it knows whether QUIC, TLS over
//! TCP, a Unix socket or an in-memory pipe carries them.
//!
//! Every transport is one file beside this one and hands out a [`Conn`]. Close codes are the
//! application codes of [`netwall_proto::wire`]; QUIC carries them in its CONNECTION_CLOSE, and
//! the multiplexed transports carry them in a last frame before the byte stream ends.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite};

/// Receiving half of a tunnel stream, whatever the transport.
pub type StreamRead = Box<dyn AsyncRead + Send + Unpin>;
/// Sending half of a tunnel stream, whatever the transport.
pub type StreamWrite = Box<dyn SendHalf>;

/// The sending half of a stream: bytes out, and word of a peer that stopped reading.
pub trait SendHalf: AsyncWrite + Send + Unpin {
    /// Resolves once the peer said it will read no more (QUIC STOP_SENDING): the request
    /// was abandoned and its work can stop. Transports that cannot tell never resolve.
    fn stopped(&mut self) -> BoxFuture<'_, ()>;

    /// Write the front of `data` as [`AsyncWrite::poll_write`] does, and advance `data` past
    /// what was taken. A transport that keeps a send buffer of its own (QUIC, HTTP/2) keeps a
    /// slice of `data` as it is instead of copying it; the default copies.
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        poll_copy_chunk(self, cx, data)
    }
}

/// Write the front of `data` to `w` by copying it, and advance `data` past what was taken:
/// the chunk write of a writer that has no buffer of its own to keep `data` in.
pub(crate) fn poll_copy_chunk<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    cx: &mut Context<'_>,
    data: &mut Bytes,
) -> Poll<io::Result<usize>> {
    let n = std::task::ready!(Pin::new(w).poll_write(cx, data))?;
    data.advance(n);
    Poll::Ready(Ok(n))
}

/// A future a transport returns from a trait method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A live tunnel connection, shared by every request that uses it.
pub type Conn = Arc<dyn Connection>;

/// One bidirectional tunnel stream.
pub struct Stream {
    /// Sending half.
    pub send: StreamWrite,
    /// Receiving half.
    pub recv: StreamRead,
}

/// Which transport carries a connection; the label in metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP, streams multiplexed by HTTP/2.
    Tls,
    /// A Unix socket, streams multiplexed by HTTP/2.
    Unix,
    /// WireGuard over UDP, a userspace TCP connection inside, streams multiplexed by HTTP/2.
    WireGuard,
    /// An in-memory pipe (tests).
    Duplex,
}

impl TransportKind {
    /// Lower-case name, as in configs, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Tls => "tls",
            TransportKind::Unix => "unix",
            TransportKind::WireGuard => "wireguard",
            TransportKind::Duplex => "duplex",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A network address.
    Addr(SocketAddr),
    /// A Unix socket: its path on this side, and the peer process's uid when known.
    Unix {
        /// The socket file.
        path: PathBuf,
        /// The peer's user id (`SO_PEERCRED`).
        uid: Option<u32>,
    },
    /// An in-memory pipe.
    Memory,
}

impl Peer {
    /// The network address, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Peer::Addr(a) => Some(*a),
            _ => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Addr(a) => write!(f, "{a}"),
            Peer::Unix {
                path,
                uid: Some(uid),
            } => write!(f, "unix:{} (uid {uid})", path.display()),
            Peer::Unix { path, uid: None } => write!(f, "unix:{}", path.display()),
            Peer::Memory => f.write_str("memory"),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed it with an application code (see [`netwall_proto::wire`]).
    ByPeer {
        /// The code.
        code: u32,
        /// The peer's reason text.
        reason: String,
    },
    /// This side closed it.
    Locally,
    /// It broke: reset, timed out, or ended without a close.
    Lost(String),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::ByPeer { code, reason } => write!(f, "closed by peer ({code:#x}: {reason})"),
            Closed::Locally => f.write_str("closed locally"),
            Closed::Lost(why) => write!(f, "connection lost: {why}"),
        }
    }
}

impl std::error::Error for Closed {}

impl From<Closed> for io::Error {
    fn from(c: Closed) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, c)
    }
}

/// A tunnel connection, whatever carries it.
pub trait Connection: Send + Sync + 'static {
    /// The transport.
    fn kind(&self) -> TransportKind;

    /// The other end.
    fn peer(&self) -> Peer;

    /// Open a new stream to the peer. Waits while the peer's stream limit is reached.
    fn open(&self) -> BoxFuture<'_, Result<Stream, Closed>>;

    /// The next stream the peer opened.
    fn accept(&self) -> BoxFuture<'_, Result<Stream, Closed>>;

    /// Close the connection at once with an application `code`; open streams end.
    fn close(&self, code: u32, reason: &[u8]);

    /// Resolves when the connection has ended, with why.
    fn closed(&self) -> BoxFuture<'_, Closed>;

    /// Why the connection ended, or `None` while it is up.
    fn close_reason(&self) -> Option<Closed>;

    /// The largest datagram this side sends on the connection now (QUIC: the path MTU found
    /// by discovery), or `None` for transports that carry a byte stream.
    fn datagram_size(&self) -> Option<u16> {
        None
    }
}
