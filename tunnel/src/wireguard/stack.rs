//! The userspace TCP/IP stack (smoltcp) inside one WireGuard peer link: IP packets in and
//! out of two bounded queues, TCP connections handed to the tunnel as [`WgStream`]s.
//!
//! Nothing here touches a socket or a clock: the peer driver ([`super::peer`]) moves packets
//! between these queues and WireGuard, says what time it is, and is woken ([`Shared::kick`])
//! whenever a stream wrote or read something the stack must act on.

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::{DEFAULT_MTU, TCP_BUFFER, TCP_IDLE_ABORT};

/// Bytes of packets waiting for the stack (1,024 packets of the default MTU); beyond this a
/// burst is dropped and TCP retransmits, so a peer that floods the link cannot grow the queue.
/// The queues are bounded in packets of the link's MTU, so a link with larger packets holds
/// no more bytes.
const RX_QUEUE_BYTES: usize = 1024 * DEFAULT_MTU;

/// Bytes of packets the stack produced that the driver has not encrypted yet (256 packets of
/// the default MTU); the stack holds back (and keeps the data in its socket buffers) when
/// this is full.
const TX_QUEUE_BYTES: usize = 256 * DEFAULT_MTU;

/// Bytes of packet buffers kept for reuse, so the bulk path allocates nothing per packet.
const SPARE_BYTES: usize = 256 * DEFAULT_MTU;

/// Fewest packets any of the queues holds, whatever the MTU: a GSO batch's worth.
const MIN_QUEUE: usize = 16;

/// How many packets of `mtu` bytes make `bytes`.
fn packets(bytes: usize, mtu: usize) -> usize {
    (bytes / mtu.max(1)).max(MIN_QUEUE)
}

/// The two packet queues smoltcp sees as its network device.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    spare: Spare,
    mtu: usize,
    /// The bounds of `rx` and `tx` in packets.
    rx_max: usize,
    tx_max: usize,
}

/// Packet buffers kept for reuse, at most `max` of them.
struct Spare {
    buffers: Vec<Vec<u8>>,
    max: usize,
}

impl Spare {
    fn take(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    fn put(&mut self, mut b: Vec<u8>) {
        if self.buffers.len() < self.max {
            b.clear();
            self.buffers.push(b);
        }
    }
}

/// A packet for the stack; its buffer goes back to the spare list once read.
struct Rx<'a> {
    packet: Vec<u8>,
    spare: &'a mut Spare,
}

/// Room for one packet from the stack, queued for the driver once written.
struct Tx<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

impl RxToken for Rx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(&self.packet);
        self.spare.put(self.packet);
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.buf;
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        let buf = self.spare.take();
        Some((
            Rx {
                packet,
                spare: &mut self.spare,
            },
            Tx {
                tx: &mut self.tx,
                buf,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        if self.tx.len() >= self.tx_max {
            return None;
        }
        let buf = self.spare.take();
        Some(Tx {
            tx: &mut self.tx,
            buf,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Checksums are computed on what the stack sends, and not verified on what it
        // receives: every packet reaching it was authenticated by WireGuard's AEAD under the
        // peer's session key, which catches any change a checksum could (Linux's WireGuard
        // marks decrypted packets CHECKSUM_UNNECESSARY for the same reason). Verifying was
        // 3.6 % of the receiving end's CPU in a bulk transfer. Sending them keeps every peer
        // that does verify (an older connector) working.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

/// One end of a point-to-point link: this side's and the other side's tunnel address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
}

/// The stack of one peer link.
pub(crate) struct Stack {
    iface: Interface,
    queues: Queues,
    sockets: SocketSet<'static>,
    link: Link,
    /// Gateway side: the port accepted on and the most connections open at once.
    accepting: Option<(u16, usize)>,
    /// The listening socket (gateway side), waiting for the next connection.
    listener: Option<SocketHandle>,
    /// Connections still open, accepted or dialed.
    open: usize,
    /// Sockets whose stream was dropped: removed once TCP has finished with them.
    orphans: Vec<SocketHandle>,
    /// Next local port for a dialed connection.
    next_port: u16,
    /// Set once the link is gone; streams fail with it.
    ended: Option<String>,
}

/// The stack and the driver's wake-up, shared by the driver and every stream on the link.
pub(crate) struct Shared {
    stack: Mutex<Stack>,
    /// Woken when a stream changed something the stack must send (data, a window, a close).
    pub kick: Notify,
    /// Set by a dial on a link that already carried connections: the peer may have lost
    /// the session (a restarted gateway, a reload that took the key away and gave it back),
    /// so the driver starts a fresh handshake at once instead of waiting for the protocol's
    /// 15 s without an answer.
    pub rehandshake: std::sync::atomic::AtomicBool,
}

/// First local port of dialed connections; each dial takes the next one from a random start,
/// so a restarted connector does not reuse the 4-tuple of a connection the gateway still
/// holds.
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

impl Shared {
    /// A stack for `link`, with IP packets of at most `mtu` bytes.
    pub fn new(link: Link, mtu: usize, now: Instant) -> Arc<Shared> {
        let mut queues = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            spare: Spare {
                buffers: Vec::new(),
                max: packets(SPARE_BYTES, mtu),
            },
            mtu,
            rx_max: packets(RX_QUEUE_BYTES, mtu),
            tx_max: packets(TX_QUEUE_BYTES, mtu),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut queues, now);
        iface.update_ip_addrs(|addrs| {
            // A /30 holds both ends, so the peer is on-link and no route is needed.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(link.local), 30));
        });
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start();
        let next_port = EPHEMERAL_PORTS.start() + rand::random::<u16>() % span;
        Arc::new(Shared {
            stack: Mutex::new(Stack {
                iface,
                queues,
                sockets: SocketSet::new(Vec::new()),
                link,
                accepting: None,
                listener: None,
                open: 0,
                orphans: Vec::new(),
                next_port,
                ended: None,
            }),
            kick: Notify::new(),
            rehandshake: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The stack, even if a holder panicked (its state stays consistent between calls).
    pub fn lock(&self) -> MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    // The multiplexer above already gathers its writes; Nagle would only add delay.
    s.set_nagle_enabled(false);
    s.set_timeout(Some(smoltcp::time::Duration::from_micros(
        TCP_IDLE_ABORT.as_micros() as u64,
    )));
    s
}

impl Stack {
    /// Hand a decrypted IP packet to the stack; false when the queue is full (dropped).
    pub fn push_packet(&mut self, packet: &[u8]) -> bool {
        if self.queues.rx.len() >= self.queues.rx_max {
            return false;
        }
        let mut b = self.queues.spare.take();
        b.extend_from_slice(packet);
        self.queues.rx.push_back(b);
        true
    }

    /// The next packet the stack wants sent, to be encrypted and then given back with
    /// [`Stack::recycle`].
    pub fn pop_packet(&mut self) -> Option<Vec<u8>> {
        self.queues.tx.pop_front()
    }

    /// Return a sent packet's buffer.
    pub fn recycle(&mut self, b: Vec<u8>) {
        self.queues.spare.put(b);
    }

    /// Run TCP: take in queued packets, produce what is due. Returns how long until the
    /// stack next needs to run if nothing else happens.
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll(now, &mut self.queues, &mut self.sockets);
        self.reap();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Whether packets wait to be sent.
    pub fn has_output(&self) -> bool {
        !self.queues.tx.is_empty()
    }

    /// Whether packets wait to be taken in.
    pub fn has_input(&self) -> bool {
        !self.queues.rx.is_empty()
    }

    fn reap(&mut self) {
        let sockets = &mut self.sockets;
        let before = self.orphans.len();
        self.orphans.retain(|h| {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                sockets.remove(*h);
            }
            !done
        });
        self.open -= before - self.orphans.len();
        self.keep_listening();
    }

    /// Accept connections from the peer on `port`, at most `max` open at once (gateway
    /// side). One listening socket waits at a time; TCP has no backlog here, so a second SYN
    /// in the same instant is reset and retried by the peer.
    pub fn listen(&mut self, port: u16, max: usize) {
        self.accepting = Some((port, max));
        self.keep_listening();
    }

    fn keep_listening(&mut self) {
        let Some((port, max)) = self.accepting else {
            return;
        };
        if self.listener.is_some() || self.open >= max {
            return;
        }
        let mut s = new_socket();
        if s.listen(port).is_ok() {
            self.listener = Some(self.sockets.add(s));
        }
    }

    /// The connection the listening socket took, if any.
    pub fn take_accepted(&mut self) -> Option<SocketHandle> {
        let h = self.listener?;
        if self.sockets.get_mut::<tcp::Socket>(h).is_listening() {
            return None;
        }
        self.listener = None;
        self.open += 1;
        self.keep_listening();
        Some(h)
    }

    /// Start a connection to the peer's `port` (connector side).
    pub fn connect(&mut self, port: u16) -> Result<SocketHandle, String> {
        if let Some(why) = &self.ended {
            return Err(why.clone());
        }
        let local = self.next_port;
        self.next_port = if local == *EPHEMERAL_PORTS.end() {
            *EPHEMERAL_PORTS.start()
        } else {
            local + 1
        };
        let mut s = new_socket();
        let remote = IpEndpoint::new(IpAddress::Ipv4(self.link.remote), port);
        s.connect(self.iface.context(), remote, local)
            .map_err(|e| format!("tunnel connect: {e}"))?;
        self.open += 1;
        Ok(self.sockets.add(s))
    }

    /// End the link: every stream fails with `why`.
    pub fn end(&mut self, why: &str) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(why.to_owned());
        for (_, s) in self.sockets.iter_mut() {
            let smoltcp::socket::Socket::Tcp(s) = s;
            s.abort();
        }
    }

    /// Whether the link is gone.
    pub fn has_ended(&self) -> bool {
        self.ended.is_some()
    }
}

/// A TCP connection inside a WireGuard link: the byte stream the multiplexer runs over.
pub struct WgStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl WgStream {
    pub(crate) fn new(shared: Arc<Shared>, handle: SocketHandle) -> WgStream {
        WgStream { shared, handle }
    }

    /// Resolves once the connection is established, or fails if it never will be.
    pub(crate) async fn established(&self) -> Result<(), String> {
        std::future::poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(why) = &st.ended {
                return Poll::Ready(Err(why.clone()));
            }
            let s = st.sockets.get_mut::<tcp::Socket>(self.handle);
            match s.state() {
                tcp::State::Established => Poll::Ready(Ok(())),
                tcp::State::SynSent | tcp::State::SynReceived => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                other => Poll::Ready(Err(format!("tunnel connection refused ({other})"))),
            }
        })
        .await
    }
}

impl Drop for WgStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let s = st.sockets.get_mut::<tcp::Socket>(self.handle);
        s.close();
        st.orphans.push(self.handle);
        drop(st);
        self.shared.kick.notify_one();
    }
}

fn gone(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, why.to_owned())
}

impl AsyncRead for WgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        let ended = st.ended.clone();
        let s = st.sockets.get_mut::<tcp::Socket>(this.handle);
        if s.can_recv() {
            let n = match s.recv_slice(buf.initialize_unfilled()) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(gone(&e.to_string()))),
            };
            buf.advance(n);
            drop(st);
            // The window opened: the stack may owe the peer an update.
            this.shared.kick.notify_one();
            return Poll::Ready(Ok(()));
        }
        let opening = matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived);
        if !s.may_recv() && !opening {
            return match (s.state(), ended) {
                (_, Some(why)) => Poll::Ready(Err(gone(&why))),
                (tcp::State::Closed, None) => Poll::Ready(Err(gone("tunnel connection reset"))),
                _ => Poll::Ready(Ok(())),
            };
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for WgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if let Some(why) = &st.ended {
            return Poll::Ready(Err(gone(why)));
        }
        let s = st.sockets.get_mut::<tcp::Socket>(this.handle);
        if s.can_send() {
            let n = match s.send_slice(data) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(gone(&e.to_string()))),
            };
            drop(st);
            this.shared.kick.notify_one();
            return Poll::Ready(Ok(n));
        }
        if !s.may_send() && !matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        s.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(this.handle)
            .close();
        this.shared.kick.notify_one();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};

    use super::*;

    const GATEWAY: Link = Link {
        local: Ipv4Addr::new(100, 64, 0, 1),
        remote: Ipv4Addr::new(100, 64, 0, 2),
    };
    const CONNECTOR: Link = Link {
        local: GATEWAY.remote,
        remote: GATEWAY.local,
    };

    /// The packets `stack` sends after a poll.
    fn sent(stack: &Arc<Shared>) -> Vec<Vec<u8>> {
        sent_at(stack, Instant::from_millis(0))
    }

    /// A gateway stack listening on 443 and a connector stack dialing it, not yet connected.
    fn pair() -> (Arc<Shared>, Arc<Shared>) {
        let (gateway, connector, _) = pair_of(1420, 1420);
        (gateway, connector)
    }

    /// Like [`pair`] with the given MTUs; also the connector's socket.
    fn pair_of(
        gateway_mtu: usize,
        connector_mtu: usize,
    ) -> (Arc<Shared>, Arc<Shared>, SocketHandle) {
        let gateway = Shared::new(GATEWAY, gateway_mtu, Instant::from_millis(0));
        gateway.lock().listen(443, 8);
        let connector = Shared::new(CONNECTOR, connector_mtu, Instant::from_millis(0));
        let dialed = connector.lock().connect(443).expect("connect");
        (gateway, connector, dialed)
    }

    /// The packets `stack` sends after a poll at `now`.
    fn sent_at(stack: &Arc<Shared>, now: Instant) -> Vec<Vec<u8>> {
        let mut st = stack.lock();
        st.poll(now);
        std::iter::from_fn(|| st.pop_packet()).collect()
    }

    /// Move packets both ways until neither stack has more to send, the clock advancing
    /// 20 ms per exchange (so delayed ACKs go out); returns the largest packet each way
    /// (connector to gateway, gateway to connector).
    fn shuttle(
        gateway: &Arc<Shared>,
        connector: &Arc<Shared>,
        clock: &mut Instant,
    ) -> (usize, usize) {
        let (mut up, mut down) = (0, 0);
        for _ in 0..10_000 {
            *clock += smoltcp::time::Duration::from_millis(20);
            let from_connector = sent_at(connector, *clock);
            let from_gateway = sent_at(gateway, *clock);
            if from_connector.is_empty() && from_gateway.is_empty() {
                return (up, down);
            }
            for p in from_connector {
                up = up.max(p.len());
                assert!(
                    gateway.lock().push_packet(&p),
                    "the gateway's queue is full"
                );
            }
            for p in from_gateway {
                down = down.max(p.len());
                assert!(
                    connector.lock().push_packet(&p),
                    "the connector's queue is full"
                );
            }
        }
        panic!("the stacks never went quiet");
    }

    /// Largest packets each way (up, down) while 256 KiB cross the link each way.
    fn largest_packets(gateway_mtu: usize, connector_mtu: usize) -> (usize, usize) {
        let (gateway, connector, dialed) = pair_of(gateway_mtu, connector_mtu);
        let mut clock = Instant::from_millis(0);
        shuttle(&gateway, &connector, &mut clock);
        let accepted = gateway.lock().take_accepted().expect("accepted");
        let data = vec![7u8; 256 * 1024];
        let (mut up, mut down) = (0, 0);
        let (mut sent_up, mut sent_down, mut got_up, mut got_down) = (0, 0, 0, 0);
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            if got_up == data.len() && got_down == data.len() {
                return (up, down);
            }
            {
                let mut st = connector.lock();
                let s = st.sockets.get_mut::<tcp::Socket>(dialed);
                sent_up += s.send_slice(&data[sent_up..]).expect("send");
                got_down += s.recv_slice(&mut buf).expect("recv");
            }
            {
                let mut st = gateway.lock();
                let s = st.sockets.get_mut::<tcp::Socket>(accepted);
                sent_down += s.send_slice(&data[sent_down..]).expect("send");
                got_up += s.recv_slice(&mut buf).expect("recv");
            }
            let (u, d) = shuttle(&gateway, &connector, &mut clock);
            up = up.max(u);
            down = down.max(d);
        }
        panic!("the transfer never finished: {got_up} up, {got_down} down");
    }

    #[test]
    fn the_connectors_mtu_bounds_the_packets_both_ways() {
        // The gateway takes the largest MTU; a connector on an ordinary path advertises an
        // MSS from its own, and neither end sends more.
        let (up, down) = largest_packets(super::super::LARGEST_MTU, 1420);
        assert_eq!((up, down), (1420, 1420));
        let (up, down) = largest_packets(super::super::LARGEST_MTU, 1370);
        assert_eq!((up, down), (1370, 1370));
        // A connector on loopback takes the largest too, and both ends use it.
        let (up, down) = largest_packets(super::super::LARGEST_MTU, super::super::LARGEST_MTU);
        assert_eq!((up, down), (8920, 8920));
        // An older gateway that keeps 1,420 bounds a larger connector.
        let (up, down) = largest_packets(1420, super::super::LARGEST_MTU);
        assert_eq!((up, down), (1420, 1420));
    }

    #[test]
    fn queues_hold_the_same_bytes_whatever_the_mtu() {
        assert_eq!(packets(RX_QUEUE_BYTES, DEFAULT_MTU), 1024);
        assert_eq!(packets(TX_QUEUE_BYTES, DEFAULT_MTU), 256);
        assert_eq!(packets(RX_QUEUE_BYTES, 8920), 163);
        assert_eq!(packets(TX_QUEUE_BYTES, 8920), MIN_QUEUE.max(40));
        assert_eq!(packets(1, 8920), MIN_QUEUE);
        let (gateway, _, _) = pair_of(8920, 1420);
        let packet = vec![0u8; 8920];
        let mut st = gateway.lock();
        let taken = (0..2000).take_while(|_| st.push_packet(&packet)).count();
        assert_eq!(
            taken, 163,
            "a large-MTU link queues no more bytes than an ordinary one"
        );
    }

    fn checksums_hold(packet: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(packet).expect("an IPv4 packet");
        assert_eq!(ip.next_header(), IpProtocol::Tcp);
        let tcp = TcpPacket::new_checked(ip.payload()).expect("a TCP segment");
        ip.verify_checksum()
            && tcp.verify_checksum(
                &IpAddress::Ipv4(ip.src_addr()),
                &IpAddress::Ipv4(ip.dst_addr()),
            )
    }

    #[test]
    fn what_the_stack_sends_carries_valid_checksums() {
        let (gateway, connector) = pair();
        let syn = sent(&connector);
        assert_eq!(syn.len(), 1);
        assert!(checksums_hold(&syn[0]), "the SYN's checksums are wrong");
        assert!(gateway.lock().push_packet(&syn[0]));
        let syn_ack = sent(&gateway);
        assert_eq!(syn_ack.len(), 1);
        assert!(
            checksums_hold(&syn_ack[0]),
            "the SYN-ACK's checksums are wrong"
        );
    }

    #[test]
    fn what_the_stack_receives_is_not_checked_again() {
        // WireGuard authenticated the packet; a wrong checksum inside it is not a reason to
        // drop it.
        let (gateway, connector) = pair();
        let mut syn = sent(&connector).pop().expect("a SYN");
        let ip_header = usize::from(syn[0] & 0x0f) * 4;
        syn[ip_header + 16] ^= 0xff;
        syn[10] ^= 0xff;
        assert!(!checksums_hold(&syn));
        assert!(gateway.lock().push_packet(&syn));
        let answer = sent(&gateway);
        assert_eq!(answer.len(), 1, "the SYN was dropped");
        let ip = Ipv4Packet::new_checked(&answer[0][..]).expect("IPv4");
        let tcp = TcpPacket::new_checked(ip.payload()).expect("TCP");
        assert!(
            tcp.syn() && tcp.ack(),
            "the SYN was not answered with a SYN-ACK"
        );
    }
}
