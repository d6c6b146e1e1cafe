//! An in-memory transport: two ends of a [`tokio::io::duplex`] pipe, multiplexed like the
//! TLS and Unix transports. Tunnel logic (handshake, drain, go-away, stream limits) runs over
//! it in tests with tokio's paused clock, so timing is exact and nothing touches the network.

use crate::mux::{self, MuxParams, Role};
use crate::transport::{Conn, Peer, TransportKind};

/// Pipe buffer per direction; small, so backpressure shows in tests.
const PIPE_BUFFER: usize = 64 * 1024;

/// A connected pair: (dialing side, accepting side).
pub async fn pair(params: MuxParams) -> Result<(Conn, Conn), String> {
    let (a, b) = tokio::io::duplex(PIPE_BUFFER);
    let (dialing, accepting) = tokio::join!(
        mux::connect(a, Role::Client, TransportKind::Duplex, Peer::Memory, params),
        mux::connect(b, Role::Server, TransportKind::Duplex, Peer::Memory, params),
    );
    Ok((dialing?, accepting?))
}
