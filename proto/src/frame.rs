//! The messages that cross a tunnel.
//!
//! A tunnel connection carries one *control* stream, opened by the connector, and one stream
//! per proxied request, opened by the gateway. Every stream is a sequence of [`Frame`]s:
//!
//! ```text
//! control  connector -> gateway : Hello, then Drain / Pong
//!          gateway -> connector : Welcome | Reject, then DrainAck / GoAway / Ping
//! request  gateway -> connector : RequestHead, Data*, End        (or Reset)
//!          connector -> gateway : ResponseHead, Data*, End       (or Reset)
//! ```
//!
//! After an HTTP upgrade (`101 Switching Protocols`) both directions carry raw `Data` frames
//! until `End`.

use bytes::Bytes;

/// Protocol version spoken by this build. Version 2 added [`TcpOpen`], version 3
/// [`Frame::Publish`].
pub const PROTOCOL_VERSION: u16 = 3;

/// Oldest version a gateway of this build still serves: a connector not yet upgraded keeps
/// its HTTP routes; it gets no raw TCP stream.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// First version whose connectors understand [`TcpOpen`].
pub const TCP_SINCE_VERSION: u16 = 2;

/// Longest channel name of a [`Frame::Publish`] (a route name or a JWT subject, with its
/// kind).
pub const MAX_CHANNEL_LEN: usize = 1024;

/// Whether `channel` names a channel a service may publish on: `route:NAME`, `user:SUB` or
/// `connection:ID`, none empty, at most [`MAX_CHANNEL_LEN`] bytes.
pub fn valid_channel(channel: &str) -> bool {
    if channel.len() > MAX_CHANNEL_LEN {
        return false;
    }
    match channel.split_once(':') {
        Some(("route" | "user" | "connection", rest)) => !rest.is_empty(),
        _ => false,
    }
}

/// First version whose gateways accept [`Frame::Publish`]; a connector publishes only through
/// gateways that welcomed it with this version or later.
pub const PUBLISH_SINCE_VERSION: u16 = 3;

/// One header field, kept as raw bytes so the codec never judges HTTP semantics.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Header {
    /// Field name, lower case on the wire.
    pub name: Bytes,
    /// Field value.
    pub value: Bytes,
}

/// A secret that never shows itself in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Bytes);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// First frame on the control stream: who the connector is and what it offers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the connector.
    pub version: u16,
    /// Name of the tunnel this connector serves, as declared in the gateway's config.
    pub tunnel: String,
    /// Tunnel credential; the gateway holds only its SHA-256.
    pub credential: Secret,
    /// Stable identity of this connector process (for logs and metrics).
    pub connector_id: String,
    /// Service names this connector can reach.
    pub services: Vec<String>,
}

/// Gateway's acceptance of a `Hello`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`] of the gateway.
    pub version: u16,
    /// Identity of the gateway instance (for logs).
    pub gateway_id: String,
}

/// Why a gateway refused a connector.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RejectCode {
    /// The credential does not match the tunnel's. Permanent.
    BadCredential,
    /// No tunnel of that name is configured. Permanent.
    UnknownTunnel,
    /// The protocol version is not spoken by this gateway. Permanent.
    UnsupportedVersion,
    /// The handshake was malformed. Permanent.
    Malformed,
    /// The gateway is at capacity; try again later.
    Overloaded,
    /// The gateway is shutting down; try another or again later.
    ShuttingDown,
    /// A code this build does not know; treated as permanent.
    Other(u16),
}

impl RejectCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            RejectCode::BadCredential => 1,
            RejectCode::UnknownTunnel => 2,
            RejectCode::UnsupportedVersion => 3,
            RejectCode::Malformed => 4,
            RejectCode::Overloaded => 5,
            RejectCode::ShuttingDown => 6,
            RejectCode::Other(v) => v,
        }
    }

    /// Decode a wire value; unknown values are kept, not refused.
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => RejectCode::BadCredential,
            2 => RejectCode::UnknownTunnel,
            3 => RejectCode::UnsupportedVersion,
            4 => RejectCode::Malformed,
            5 => RejectCode::Overloaded,
            6 => RejectCode::ShuttingDown,
            other => RejectCode::Other(other),
        }
    }

    /// Whether retrying the same handshake can ever succeed.
    pub fn is_permanent(self) -> bool {
        !matches!(self, RejectCode::Overloaded | RejectCode::ShuttingDown)
    }
}

/// Gateway's refusal of a `Hello`; the connection is closed after it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reject {
    /// Machine-readable reason.
    pub code: RejectCode,
    /// Human-readable reason the connector prints.
    pub reason: String,
}

/// Start of a proxied request, gateway to connector.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RequestHead {
    /// Service name, resolved by the connector to a local address.
    pub service: String,
    /// HTTP method.
    pub method: String,
    /// Request target: path and query (origin form).
    pub uri: String,
    /// Request headers, hop-by-hop headers already removed (except for upgrades).
    pub headers: Vec<Header>,
    /// Address of the public client, for logs.
    pub client_addr: String,
    /// The request asks for an HTTP/1.1 upgrade; body frames follow only after a `101`.
    pub upgrade: bool,
    /// The gateway terminated a WebSocket handshake: the connector opens its own WebSocket to
    /// the service and, after a `101`, both sides exchange `WsMessage` / `WsClose` frames.
    pub websocket: bool,
}

/// Start of a raw TCP stream, gateway to connector: the connector connects to the service and
/// both sides then carry `Data` frames; an `End` is a half-close (FIN) of that direction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TcpOpen {
    /// Service name, resolved by the connector to a local TCP or Unix-socket address.
    pub service: String,
    /// Address of the public client (`ip:port`), for logs and the PROXY header.
    pub client_addr: String,
    /// Public address the client connected to (`ip:port`), for the PROXY header.
    pub server_addr: String,
    /// Subject of the client's certificate, empty without one.
    pub client_subject: String,
    /// Send a PROXY protocol v2 header to the service before the client's bytes.
    pub proxy_protocol: bool,
}

/// Start of a response, connector to gateway.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResponseHead {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<Header>,
}

/// Why a stream was abandoned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ResetCode {
    /// The sender gave up on the stream (client went away, deadline passed).
    Cancelled,
    /// The stream was refused before any of it was processed; it is safe to retry elsewhere.
    Refused,
    /// The connector does not know the requested service.
    UnknownService,
    /// The local service could not be reached (connection refused, socket missing).
    ServiceUnavailable,
    /// The local service failed while answering.
    ServiceError,
    /// The peer broke the protocol.
    Protocol,
    /// A body exceeded a limit.
    TooLarge,
    /// A code this build does not know.
    Other(u16),
}

impl ResetCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ResetCode::Cancelled => 0,
            ResetCode::Refused => 1,
            ResetCode::UnknownService => 2,
            ResetCode::ServiceUnavailable => 3,
            ResetCode::ServiceError => 4,
            ResetCode::Protocol => 5,
            ResetCode::TooLarge => 6,
            ResetCode::Other(v) => v,
        }
    }

    /// Decode a wire value; unknown values are kept, not refused.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => ResetCode::Cancelled,
            1 => ResetCode::Refused,
            2 => ResetCode::UnknownService,
            3 => ResetCode::ServiceUnavailable,
            4 => ResetCode::ServiceError,
            5 => ResetCode::Protocol,
            6 => ResetCode::TooLarge,
            other => ResetCode::Other(other),
        }
    }
}

/// Abandonment of a stream, either direction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reset {
    /// Machine-readable reason.
    pub code: ResetCode,
    /// Human-readable detail for logs; never shown to public clients.
    pub reason: String,
}

/// Kind of a relayed WebSocket message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WsKind {
    /// UTF-8 text.
    Text,
    /// Binary data.
    Binary,
}

/// Every message of the tunnel protocol.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    /// Connector handshake.
    Hello(Hello),
    /// Handshake accepted.
    Welcome(Welcome),
    /// Handshake refused.
    Reject(Reject),
    /// Request start.
    RequestHead(RequestHead),
    /// Response start.
    ResponseHead(ResponseHead),
    /// Raw TCP stream start.
    TcpOpen(TcpOpen),
    /// A chunk of body (or of upgraded bytes).
    Data(Bytes),
    /// End of a body, with optional trailers.
    End(Vec<Header>),
    /// Stream abandoned.
    Reset(Reset),
    /// One whole WebSocket message (after a WebSocket `101`).
    WsMessage {
        /// Text or binary.
        kind: WsKind,
        /// The message, reassembled and decompressed.
        payload: Bytes,
    },
    /// A WebSocket close, relayed with its code and reason.
    WsClose {
        /// Close code (RFC 6455 section 7.4).
        code: u16,
        /// Close reason (at most 123 bytes on the wire of a WebSocket).
        reason: String,
    },
    /// Connector asks the gateway to send no new streams on this connection.
    Drain,
    /// Gateway confirms a drain: no new request will be sent on this connection, and the gateway
    /// closes it once the last response has been received in full. `streams_opened` counts every
    /// request stream it opened on the connection, for the connector's logs.
    DrainAck {
        /// Total request streams opened by the gateway on this connection.
        streams_opened: u64,
    },
    /// Gateway is going away; the connector should reconnect (elsewhere or later).
    GoAway {
        /// Human-readable reason.
        reason: String,
    },
    /// Liveness probe; the peer echoes the value in a `Pong`.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
    /// A message the service pushes to WebSocket clients (connector to gateway, on the
    /// control stream): `channel` names who receives it (`route:NAME`, `user:SUB`,
    /// `connection:ID`), the gateway decides who that may be.
    Publish {
        /// The channel.
        channel: String,
        /// The message, UTF-8 text (sent to clients as a text message).
        message: Bytes,
    },
}

impl Frame {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Reject(_) => "reject",
            Frame::RequestHead(_) => "request_head",
            Frame::ResponseHead(_) => "response_head",
            Frame::TcpOpen(_) => "tcp_open",
            Frame::Data(_) => "data",
            Frame::End(_) => "end",
            Frame::Reset(_) => "reset",
            Frame::WsMessage { .. } => "ws_message",
            Frame::WsClose { .. } => "ws_close",
            Frame::Drain => "drain",
            Frame::DrainAck { .. } => "drain_ack",
            Frame::GoAway { .. } => "go_away",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
            Frame::Publish { .. } => "publish",
        }
    }
}
