//! The tunnel seam shared by the gateway and the connector.
//!
//! A [`Connection`] carries bidirectional [`Stream`]s, whatever the transport: [`quic`]
//! (default), [`tls`] over TCP (accepted on the gateway's HTTPS port), a [`unix`] socket (for
//! containers with no network), [`wireguard`] (silent to strangers, a userspace TCP/IP stack
//! inside), or the in-memory [`duplex`] pipe tests use; all but QUIC multiplex with [`mux`]. On top of any of them, [`handshake`] runs the hello exchange, and
//! [`io`], [`body`] and [`http`] move frames, HTTP bodies and heads over streams. Relay code
//! in both ends sees only [`Conn`] and [`Stream`]; [`crypto`] names the one cryptographic
//! provider both ends build their TLS with.

pub mod body;
pub mod crypto;
pub mod duplex;
pub mod handshake;
pub mod http;
pub mod io;
pub mod mux;
pub mod quic;
pub mod route;
pub mod tls;
pub mod tls_stream;
mod transport;
pub mod unix;
pub mod wireguard;

pub use transport::{
    BoxFuture, Closed, Conn, Connection, Peer, SendHalf, Stream, StreamRead, StreamWrite,
    TransportKind,
};

/// Bytes a peer may send on one tunnel connection, all its streams together, ahead of what
/// this side has read (QUIC's connection window, HTTP/2's on the multiplexed transports).
///
/// Data a stream's reader has not taken counts against it until read, and a client that
/// reads nothing back pins its stream's whole window (about 1 MiB): with 16 MiB, thirteen
/// such requests from one client stopped every stream of the connection, the control
/// stream's pings among them, and the gateway closed the tunnel as silent. HTTP/2's largest
/// window, 2 GiB, takes some 1,700 stalled streams: more than one client network may have in
/// flight under the gateway's `max_requests_per_ip` (1,024, at most some 1.3 GB pinned).
/// Nothing is allocated ahead: a connection holds only what was sent and not yet read.
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
