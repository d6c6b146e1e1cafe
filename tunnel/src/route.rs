//! What the kernel knows of the route a connected UDP socket sends on: its MTU. The QUIC and
//! WireGuard transports size their datagrams from it.

use std::net::UdpSocket;

/// The MTU the kernel reports for a route through the loopback device (whose own MTU is
/// 65,536; a route's is capped at an IP packet's largest, 65,535), the only route whose MTU
/// reaches this: a path through it never leaves the host, so no router on the way can carry
/// less than it says.
pub const LOOPBACK_MTU: u32 = 65_535;

/// The MTU the kernel knows for the route `socket` (connected) sends on: the interface's, or
/// a smaller one learned from the path. `None` when the kernel does not say.
pub fn mtu(socket: &UdpSocket, ipv6: bool) -> Option<u32> {
    use std::os::fd::AsRawFd as _;
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the call (borrowed from `socket`) and the kernel
    // writes at most `len` bytes into `mtu`, an int as the option requires.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    u32::try_from(mtu).ok().filter(|m| rc == 0 && *m > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_route_reports_the_loopback_mtu_and_an_unconnected_socket_none() {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert_eq!(mtu(&s, false), None, "an unconnected socket has no route");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.connect(peer.local_addr().expect("addr"))
            .expect("connect");
        assert_eq!(mtu(&s, false), Some(LOOPBACK_MTU));
    }
}
