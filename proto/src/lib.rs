//! The netwall tunnel wire protocol.
//!
//! A connector dials out to a gateway and the two exchange [`Frame`]s over the streams of one
//! tunnel connection (QUIC, TLS/TCP or WireGuard: the protocol does not care). The core of
//! this crate is pure: [`Codec`] turns bytes into frames and back, with no sockets, no tasks
//! and no clock, so it can be unit-tested and fuzzed exhaustively. Every length is checked
//! against [`Limits`] before anything is allocated.
//!
//! Optional modules hold the glue both ends share: [`io`] (feature `tokio`) reads and
//! writes frames on async byte streams, and [`http`] (feature `http`) converts heads to and
//! from the `http` crate's types, [`body`] streams HTTP bodies over tunnel streams, and
//! [`config`] (feature `config`) reports configuration errors by file, line and key.

mod codec;
mod frame;
pub mod wire;

#[cfg(all(feature = "http", feature = "tokio"))]
pub mod body;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "tokio")]
pub mod io;

pub use codec::{
    Codec, DEFAULT_MAX_CONTROL_LEN, DEFAULT_MAX_DATA_LEN, DEFAULT_MAX_HEAD_LEN,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_MESSAGE_LEN, DEFAULT_MAX_SERVICES, DecodeError,
    EDGE_ADDED_HEADER_BYTES, EDGE_ADDED_HEADERS, EncodeError, FRAME_HEADER_LEN, Limits,
    MAX_CLIENT_HEADER_BYTES, MAX_CLIENT_HEADERS,
};
pub use frame::{
    Frame, Header, Hello, PROTOCOL_VERSION, Reject, RejectCode, RequestHead, Reset, ResetCode,
    ResponseHead, Secret, Welcome, WsKind,
};
