//! WireGuard: the silent transport. A WireGuard port answers nothing to a datagram that is not
//! from a known key, so a scanner sees a closed port; connectors need only an ordinary UDP
//! socket (no TUN device, no `NET_ADMIN`, no root) and the gateway needs no kernel module.
//!
//! The protocol is boringtun's ([`peer`] drives one peer's session); inside it a userspace
//! TCP/IP stack (smoltcp, [`stack`]) carries one TCP connection per tunnel connection, and the
//! same [HTTP/2 multiplexer](crate::mux) as the TLS/TCP transport runs over that, so relay
//! code sees no difference. The connector dials ([`dial`]), the gateway listens on one UDP
//! port for every peer and routes datagrams by key and session index ([`listen`]).
//!
//! **Tunnel addresses.** Every peer link is its own point-to-point network inside its own
//! stack: nothing routes between links, so every link uses the same two addresses, the
//! gateway [`GATEWAY_ADDR`] and the connector [`CONNECTOR_ADDR`] (from 100.64.0.0/10, the
//! shared address space of RFC 6598, which no public network routes), and the gateway accepts
//! on [`GATEWAY_PORT`]. A decrypted packet from any other source address is dropped
//! (WireGuard's cryptokey routing with one allowed address per peer).

pub mod dial;
pub mod keys;
pub mod listen;
mod peer;
mod stack;
mod udp;

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use dial::WgDialer;
pub use keys::PrivateKey;
pub use listen::{Accepted, WgListener, WgPeer};
pub use stack::WgStream;

/// The gateway's address inside every link.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// The connector's address inside every link.
pub const CONNECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// The TCP port the gateway accepts tunnel connections on inside a link.
pub const GATEWAY_PORT: u16 = 443;

/// Bytes WireGuard adds around each IP packet, counted as `wg-quick` counts them: the outer
/// IPv6 (40) and UDP (8) headers and WireGuard's own (32), so one figure holds for both
/// address families.
pub const OVERHEAD: usize = 80;

/// WireGuard's data-plane MTU for a 1,500-byte path, the value `wg-quick` uses; a connector's
/// MTU when the kernel does not say what its route carries, and the most it takes from a
/// route that leaves the host (see [`link_mtu`]).
pub const DEFAULT_MTU: usize = 1500 - OVERHEAD;

/// Largest IP packet inside a link: what a 9,000-byte jumbo-frame path carries. The gateway's
/// stacks take and advertise this, and each connection's TCP MSS (set by the connector's side
/// from its own MTU) bounds what either end sends. Measured on loopback (512 MiB each way,
/// two rounds): 1,420 → 8,920 took bulk from 484-492 to 587-594 MiB/s down and 433 to
/// 526-535 up, the CPU per byte a quarter lower; 16,000, 32,000 and 65,000 were within noise
/// of 8,920.
pub const LARGEST_MTU: usize = 9000 - OVERHEAD;

/// Smallest MTU a link is given: IPv4's minimum datagram every host must take (576) less the
/// overhead. A route that carries less than 576 bytes cannot carry the tunnel well anyway.
pub const SMALLEST_MTU: usize = 576 - OVERHEAD;

/// A connector's MTU inside its link, from the MTU the kernel knows for its route to the
/// gateway (`None`: it does not say). WireGuard has no path MTU discovery and the socket sets
/// Don't Fragment, so a packet larger than the path carries is lost without a word: the MTU
/// follows `wg-quick`'s rule (the route's MTU less [`OVERHEAD`]), which keeps a link over a
/// smaller route (an overlay network, a VPN, PPPoE) working, but trusts a route's MTU above
/// 1,500 only when the route is the loopback device. An interface with jumbo frames says
/// nothing of the routers past it (a cloud host's 9,001-byte interface reaches the Internet
/// through 1,500-byte links), so it gets [`DEFAULT_MTU`]; an operator who knows the whole path
/// carries more sets `wireguard_mtu`.
pub fn link_mtu(route_mtu: Option<u32>) -> usize {
    match route_mtu {
        None => DEFAULT_MTU,
        Some(m) if m >= crate::route::LOOPBACK_MTU => LARGEST_MTU,
        Some(m) => usize::try_from(m)
            .unwrap_or(usize::MAX)
            .saturating_sub(OVERHEAD)
            .clamp(SMALLEST_MTU, DEFAULT_MTU),
    }
}

/// Largest datagram handled: a full UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// How often the protocol's timers are looked at (keepalive, rekey, retry); the WireGuard
/// paper's timers are whole seconds or more, and its reference implementations tick at this
/// granularity or finer.
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// REKEY-AFTER-TIME of the WireGuard paper (section 6.1): a session older than this starts a
/// new handshake. boringtun enforces it; a shorter `rekey_after` only rekeys sooner.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);

/// REKEY-TIMEOUT of the paper (section 6.1): a handshake with no answer is retried after this.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);

/// Persistent keepalive the connector sends: 25 s, the interval `wg(8)` recommends to keep a
/// NAT mapping alive (most expire UDP mappings after 30 s or more).
pub const PERSISTENT_KEEPALIVE: u16 = 25;

/// Send and receive buffer of each TCP connection inside a link: the most unacknowledged data
/// in flight each way. 1 MiB fills a 50 MB/s path with 20 ms of round trip and matches the
/// HTTP/2 stream window above it.
const TCP_BUFFER: usize = 1024 * 1024;

/// A TCP connection inside a link whose data goes unacknowledged this long is aborted (the
/// peer is gone); the multiplexer's own keepalive notices sooner.
const TCP_IDLE_ABORT: Duration = Duration::from_secs(60);

/// Tunnel connections one peer may hold open at once (a connector keeps
/// `connections_per_gateway` of them, one by default).
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;

/// Settings of WireGuard links.
#[derive(Debug, Clone, Copy)]
pub struct WgParams {
    /// Largest IP packet inside the tunnel. `None`, the default: a connector takes
    /// [`link_mtu`] of its route to the gateway, a gateway [`LARGEST_MTU`] (each connection's
    /// MSS, from the connector's MTU, bounds what it sends).
    pub mtu: Option<usize>,
    /// Connector side: start a new handshake once the session is this old
    /// ([`REKEY_AFTER_TIME`] by default).
    pub rekey_after: Duration,
    /// Connector side: seconds of silence after which an empty packet is sent
    /// ([`PERSISTENT_KEEPALIVE`] by default). It keeps a NAT mapping alive, and it is what
    /// tells the gateway the connector's new address after a NAT rebinds it while the
    /// connector only receives; the connector's control-stream pings usually do that first.
    pub persistent_keepalive: u16,
}

impl Default for WgParams {
    fn default() -> Self {
        WgParams {
            mtu: None,
            rekey_after: REKEY_AFTER_TIME,
            persistent_keepalive: PERSISTENT_KEEPALIVE,
        }
    }
}

/// What happened on WireGuard links, for metrics and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams refused: not WireGuard, a bad MAC, an unknown key or session, a replay, a
    /// failed decryption, a packet from an address the peer may not use.
    pub rejected: AtomicU64,
    /// Decrypted packets dropped because the stack's queue was full.
    pub dropped: AtomicU64,
    /// Handshakes completed as responder.
    pub handshakes: AtomicU64,
    /// Handshakes started early because the session reached `rekey_after`.
    pub rekeys: AtomicU64,
    /// Times a peer's address changed (roaming).
    pub roams: AtomicU64,
    /// Datagrams the socket would not send.
    pub send_errors: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_mtu_follows_the_route_and_trusts_more_than_1500_only_on_loopback() {
        assert_eq!(link_mtu(None), 1420, "the kernel said nothing");
        assert_eq!(link_mtu(Some(1500)), 1420, "Ethernet");
        assert_eq!(link_mtu(Some(1450)), 1370, "a VXLAN overlay");
        assert_eq!(link_mtu(Some(1492)), 1412, "PPPoE");
        assert_eq!(
            link_mtu(Some(9001)),
            1420,
            "a jumbo interface says nothing past it"
        );
        assert_eq!(link_mtu(Some(65_535)), 8920, "loopback");
        assert_eq!(link_mtu(Some(65_534)), 1420);
        assert_eq!(link_mtu(Some(300)), 496, "the floor");
        assert_eq!(link_mtu(Some(u32::MAX)), 8920);
    }
}
