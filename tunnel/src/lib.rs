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
