//! Constants both ends of a tunnel must agree on besides the frames: how a tunnel connection
//! is recognised, and the application close codes that end one. Defined once here so the
//! gateway and the connector cannot drift apart.

/// ALPN protocol of a tunnel connection (QUIC, and TLS on the public port later): a peer that
/// does not speak it fails the TLS handshake.
pub const TUNNEL_ALPN: &[u8] = b"netwall/1";

/// Application close code when the gateway shuts down (the connector reconnects elsewhere).
pub const CLOSE_SHUTDOWN: u32 = 0x2;

/// Application close code once a draining connection has no request left.
pub const CLOSE_DRAINED: u32 = 0x3;

/// Application close code when the connection's tunnel was removed from the gateway's
/// configuration by a reload.
pub const CLOSE_TUNNEL_REMOVED: u32 = 0x4;

/// Application close code for a rejected handshake; the [`RejectCode`](crate::RejectCode)
/// is added to it, so a connector that lost the reject frame still learns why.
pub const CLOSE_REJECTED: u32 = 0x100;
