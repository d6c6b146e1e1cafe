//! One WireGuard peer link at work: a task that owns the peer's boringtun session, decrypts
//! the datagrams that reach it into the link's [stack](super::stack), and encrypts what the
//! stack sends. The same driver runs on both ends; the connector's reads its own UDP socket,
//! the gateway's is handed datagrams by the listener that routed them to this peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stack::{Link, Shared, WgStream};
use super::udp::{Batch, WgSocket, datagrams};
use super::{Counters, MAX_DATAGRAM, REKEY_TIMEOUT, TIMER_TICK};

/// Datagrams taken in one go before the stack runs: fewer stack passes under a burst, and a
/// bound on how long the stack waits.
const RECEIVE_BATCH: usize = 64;

/// A datagram the gateway's listener routed to a peer.
pub(crate) struct Datagram {
    pub data: Vec<u8>,
    pub from: SocketAddr,
}

/// Where a driver's datagrams come from.
pub(crate) enum Inbox {
    /// Its own socket, connected to the one peer (connector).
    Socket,
    /// The listener's routing (gateway).
    Routed(mpsc::Receiver<Datagram>),
}

/// A tunnel connection a peer opened (gateway side).
pub struct Accepted {
    /// The byte stream.
    pub stream: WgStream,
    /// The peer's address when it connected.
    pub remote: SocketAddr,
    /// The tunnel the peer's key is bound to.
    pub tunnel: String,
}

/// Gateway side: where connections the peer opened go.
pub(crate) struct Acceptor {
    /// The tunnel the peer's key is bound to.
    pub tunnel: String,
    /// Accepted connections; when the gateway is this far behind, new ones are dropped (the
    /// peer retries).
    pub out: mpsc::Sender<Accepted>,
}

/// The driver of one link.
pub(crate) struct Driver {
    pub tunn: Tunn,
    pub shared: Arc<Shared>,
    pub link: Link,
    pub udp: Arc<WgSocket>,
    /// Where datagrams go; follows the peer's latest authenticated source when `roaming`.
    pub endpoint: Option<SocketAddr>,
    /// Follow the peer's address (gateway side).
    pub roaming: bool,
    /// Start a new handshake once the session is this old (connector side).
    pub rekey_after: Option<Duration>,
    pub accept: Option<Acceptor>,
    pub counters: Arc<Counters>,
    pub epoch: Instant,
}

impl Driver {
    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    async fn send(&self, packet: &[u8], to: Option<SocketAddr>) {
        self.send_batch(packet, None, to).await;
    }

    async fn send_batch(&self, contents: &[u8], segment: Option<usize>, to: Option<SocketAddr>) {
        let Some(to) = to.or(self.endpoint) else {
            return;
        };
        if self.udp.send(to, contents, segment).await.is_err() {
            self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn flush(&self, batch: &mut Batch) {
        if !batch.is_empty() {
            let (contents, segment) = batch.contents();
            self.send_batch(contents, segment, None).await;
            batch.clear();
        }
    }

    async fn on_received(&mut self, got: Received, rx: &[u8], out: &mut [u8]) {
        match got {
            Received::Buffer { len, stride, from } => {
                for d in datagrams(rx, len, stride) {
                    self.on_datagram(d, from, out).await;
                }
            }
            Received::Routed(d) => self.on_datagram(&d.data, d.from, out).await,
        }
    }

    /// Run until `cancel` or until the inbox closes; every stream on the link then fails.
    pub async fn run(mut self, mut inbox: Inbox, cancel: CancellationToken) {
        let mut out = vec![0u8; MAX_DATAGRAM];
        let mut rx = vec![0u8; MAX_DATAGRAM];
        let mut next_tick = tokio::time::Instant::now() + TIMER_TICK;
        let mut rekey_sent: Option<Instant> = None;
        let mut sending = Batch::new();
        let mut packets = Vec::new();
        let why = loop {
            let delay = self.pump(&mut out, &mut sending, &mut packets).await;
            let wake = match delay {
                Some(d) => next_tick.min(tokio::time::Instant::now() + d),
                None => next_tick,
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break "tunnel link closed",
                got = receive(&mut inbox, &self.udp, &mut rx) => match got {
                    Some(Ok(first)) => {
                        self.on_received(first, &rx, &mut out).await;
                        for _ in 1..RECEIVE_BATCH {
                            match try_receive(&mut inbox, &self.udp, &mut rx) {
                                Some(more) => self.on_received(more, &rx, &mut out).await,
                                None => break,
                            }
                        }
                    }
                    // A connected socket reports an ICMP unreachable as an error: the gateway
                    // is down for now; keep trying, the stack's timers retransmit.
                    Some(Err(_)) => {}
                    None => break "tunnel listener closed",
                },
                _ = self.shared.kick.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if self.shared.rehandshake.swap(false, Ordering::Relaxed)
                && let TunnResult::WriteToNetwork(p) =
                    self.tunn.format_handshake_initiation(&mut out, true)
            {
                self.send(p, None).await;
            }
            if tokio::time::Instant::now() >= next_tick {
                next_tick = tokio::time::Instant::now() + TIMER_TICK;
                self.on_tick(&mut out, &mut rekey_sent).await;
            }
        };
        self.shared.lock().end(why);
    }

    /// Run the stack, hand out accepted connections and send what it produced, until it has
    /// nothing more to send. Returns when the stack next needs to run.
    async fn pump(
        &mut self,
        out: &mut [u8],
        sending: &mut Batch,
        packets: &mut Vec<Vec<u8>>,
    ) -> Option<Duration> {
        loop {
            let now = self.now();
            let (delay, more) = {
                let mut st = self.shared.lock();
                // The buffers of the packets sent last round go back for reuse.
                for b in packets.drain(..) {
                    st.recycle(b);
                }
                let delay = st.poll(now);
                if let Some(acc) = &self.accept {
                    while let Some(h) = st.take_accepted() {
                        let accepted = Accepted {
                            stream: WgStream::new(self.shared.clone(), h),
                            remote: self.endpoint.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                            tunnel: acc.tunnel.clone(),
                        };
                        let _ = acc.out.try_send(accepted);
                    }
                }
                while let Some(p) = st.pop_packet() {
                    packets.push(p);
                }
                (delay, st.has_output() || st.has_input())
            };
            let limit = self.udp.batch_limit();
            for p in packets.iter() {
                if let TunnResult::WriteToNetwork(d) = self.tunn.encapsulate(p, out) {
                    if !sending.fits(d, limit) {
                        self.flush(sending).await;
                    }
                    sending.push(d);
                }
            }
            self.flush(sending).await;
            if !more {
                return delay;
            }
        }
    }

    async fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr, out: &mut [u8]) {
        let kind = datagram.first().copied();
        match self.tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToNetwork(reply) => {
                // A handshake answered (2) or a session confirmed (4) proves the sender holds
                // the peer's key; a cookie reply (3, under load) proves nothing.
                let authenticated = reply.first() != Some(&3);
                if authenticated {
                    self.roam(from);
                    if kind == Some(1) {
                        self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let to = if authenticated { None } else { Some(from) };
                self.send(reply, to).await;
                // Packets queued while the session was being set up.
                while let TunnResult::WriteToNetwork(p) = self.tunn.decapsulate(None, &[], out) {
                    self.send(p, None).await;
                }
            }
            TunnResult::WriteToTunnelV4(packet, source) => {
                if source != self.link.remote {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.roam(from);
                if !self.shared.lock().push_packet(packet) {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
            TunnResult::Done => {
                // A keepalive: an authenticated data packet with nothing inside.
                if kind == Some(4) {
                    self.roam(from);
                }
            }
            TunnResult::Err(_) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn roam(&mut self, from: SocketAddr) {
        if self.roaming && self.endpoint != Some(from) {
            if self.endpoint.is_some() {
                self.counters.roams.fetch_add(1, Ordering::Relaxed);
            }
            self.endpoint = Some(from);
        }
    }

    async fn on_tick(&mut self, out: &mut [u8], rekey_sent: &mut Option<Instant>) {
        // Keepalives and handshake retries; an expired session (no handshake for a long
        // while) needs nothing here: the next packet starts a new handshake.
        if let TunnResult::WriteToNetwork(p) = self.tunn.update_timers(out) {
            self.send(p, None).await;
        }
        let Some(after) = self.rekey_after else {
            return;
        };
        let due = self
            .tunn
            .time_since_last_handshake()
            .is_some_and(|age| age >= after);
        let waiting = rekey_sent.is_some_and(|t| t.elapsed() < REKEY_TIMEOUT);
        if due && !waiting {
            *rekey_sent = Some(Instant::now());
            if let TunnResult::WriteToNetwork(p) = self.tunn.format_handshake_initiation(out, true)
            {
                self.counters.rekeys.fetch_add(1, Ordering::Relaxed);
                self.send(p, None).await;
            }
        } else if !due {
            *rekey_sent = None;
        }
    }
}

/// What one receive brought.
enum Received {
    /// Datagrams in the receive buffer, `stride` bytes each.
    Buffer {
        len: usize,
        stride: usize,
        from: SocketAddr,
    },
    /// One datagram the listener routed here.
    Routed(Datagram),
}

async fn receive(
    inbox: &mut Inbox,
    udp: &WgSocket,
    rx: &mut [u8],
) -> Option<std::io::Result<Received>> {
    match inbox {
        Inbox::Socket => Some(
            udp.recv(rx)
                .await
                .map(|(len, stride, from)| Received::Buffer { len, stride, from }),
        ),
        Inbox::Routed(ch) => Some(Ok(Received::Routed(ch.recv().await?))),
    }
}

fn try_receive(inbox: &mut Inbox, udp: &WgSocket, rx: &mut [u8]) -> Option<Received> {
    match inbox {
        Inbox::Socket => udp
            .try_recv(rx)
            .ok()
            .map(|(len, stride, from)| Received::Buffer { len, stride, from }),
        Inbox::Routed(ch) => ch.try_recv().ok().map(Received::Routed),
    }
}
