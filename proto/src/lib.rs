//! The netwall tunnel wire protocol.
//!
//! A connector dials out to a gateway and the two exchange [`Frame`]s over the streams of one
//! tunnel connection (QUIC, TLS/TCP or WireGuard: the protocol does not care). The core of
//! this crate is pure: [`Codec`] turns bytes into frames and back, with no sockets, no tasks
//! and no clock, so it can be unit-tested and fuzzed exhaustively. Every length is checked
//! against [`Limits`] before anything is allocated.
//!
//! [`wire`] holds the constants both ends must agree on besides frames (ALPN, close codes).
//! Reading frames from sockets is the tunnel crate's job, not this one's.

mod codec;
mod frame;
pub mod wire;

pub use codec::{
    BARE_END, Codec, DEFAULT_MAX_CONTROL_LEN, DEFAULT_MAX_DATA_LEN, DEFAULT_MAX_HEAD_LEN,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_MESSAGE_LEN, DEFAULT_MAX_PUBLISH_LEN, DEFAULT_MAX_SERVICES,
    DecodeError, EDGE_ADDED_HEADER_BYTES, EDGE_ADDED_HEADERS, EncodeError, FRAME_HEADER_LEN,
    Limits, MAX_CLIENT_HEADER_BYTES, MAX_CLIENT_HEADERS,
};
pub use frame::{
    Frame, Header, Hello, MAX_CHANNEL_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    PUBLISH_SINCE_VERSION, Reject, RejectCode, RequestHead, Reset, ResetCode, ResponseHead, Secret,
    TCP_SINCE_VERSION, TcpOpen, Welcome, WsKind, valid_channel,
};
