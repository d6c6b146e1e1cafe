//! The gateway's side: one UDP port for every peer. Each datagram is routed before anything
//! expensive happens: a handshake initiation must carry a valid MAC for this gateway's key
//! (under load also a cookie, WireGuard's DoS defence) before the key exchange reveals which
//! peer sent it, and every other message is routed by the session index the gateway chose.
//! A datagram that fails any of this is counted and dropped without an answer. Each peer's
//! link runs in a task of its own, started by its first valid handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::peer::Accepted;
use super::peer::{Acceptor, Datagram, Driver, Inbox};
use super::stack::{Link, Shared};
use super::udp::{WgSocket, datagrams};
use super::{
    CONNECTOR_ADDR, Counters, GATEWAY_ADDR, GATEWAY_PORT, MAX_CONNECTIONS_PER_PEER, MAX_DATAGRAM,
    PrivateKey, WgParams,
};
use crate::mux::{self, MuxParams, Role};
use crate::transport::{Conn, Peer, TransportKind};

/// Handshake initiations per second the whole listener takes before it asks for cookies
/// (WireGuard's answer to a flood: the sender must prove its address first).
const HANDSHAKES_BEFORE_COOKIES: u64 = 1000;

/// Datagrams waiting for one peer's task; beyond this they are dropped (the protocol and TCP
/// recover), so a flood at one peer costs the others nothing.
const PEER_INBOX: usize = 1024;

/// A peer the gateway knows: its public key and the tunnel its connections serve.
#[derive(Debug, Clone)]
pub struct WgPeer {
    /// The connector's public key.
    pub public: PublicKey,
    /// The tunnel it serves.
    pub tunnel: String,
}

impl Accepted {
    /// Run the multiplexer over the stream (the gateway is its server).
    pub async fn establish(self, mux_params: MuxParams) -> Result<Conn, String> {
        mux::connect(
            self.stream,
            Role::Server,
            TransportKind::WireGuard,
            Peer::Addr(self.remote),
            mux_params,
        )
        .await
    }
}

struct Slot {
    index: u32,
    public: PublicKey,
    tunnel: String,
    stop: CancellationToken,
    inbox: Mutex<Option<mpsc::Sender<Datagram>>>,
}

#[derive(Default)]
struct Peers {
    by_key: HashMap<[u8; 32], Arc<Slot>>,
    by_index: HashMap<u32, Arc<Slot>>,
    next_index: u32,
}

/// The gateway's WireGuard port.
pub struct WgListener {
    udp: Arc<WgSocket>,
    key: PrivateKey,
    public: PublicKey,
    params: WgParams,
    peers: Mutex<Peers>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl WgListener {
    /// Bind `addr` with the gateway's key `key`.
    pub fn bind(addr: SocketAddr, key: PrivateKey, params: WgParams) -> std::io::Result<Self> {
        let sock = crate::quic::udp_socket(addr)?;
        let public = key.public();
        Ok(WgListener {
            udp: Arc::new(WgSocket::new(sock)?),
            key,
            public,
            params,
            peers: Mutex::new(Peers {
                next_index: rand::random::<u32>() >> 8,
                ..Peers::default()
            }),
            counters: Arc::default(),
            stop: CancellationToken::new(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// This gateway's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// What happened on the listener and its links.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `peers` the known peers: new ones are added, removed ones and those whose tunnel
    /// changed lose their link (its connections end), the others keep theirs.
    pub fn set_peers(&self, peers: &[WgPeer]) {
        let mut table = self.lock();
        let wanted: HashMap<[u8; 32], &WgPeer> =
            peers.iter().map(|p| (*p.public.as_bytes(), p)).collect();
        let gone: Vec<[u8; 32]> = table
            .by_key
            .iter()
            .filter(|(k, s)| wanted.get(*k).is_none_or(|p| p.tunnel != s.tunnel))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(slot) = table.by_key.remove(&k) {
                slot.stop.cancel();
                table.by_index.remove(&slot.index);
            }
        }
        for (k, p) in wanted {
            if table.by_key.contains_key(&k) {
                continue;
            }
            let index = table.next_index;
            table.next_index = (index + 1) & 0x00ff_ffff;
            let slot = Arc::new(Slot {
                index,
                public: p.public,
                tunnel: p.tunnel.clone(),
                stop: self.stop.child_token(),
                inbox: Mutex::new(None),
            });
            table.by_index.insert(index, slot.clone());
            table.by_key.insert(k, slot);
        }
    }

    /// Route datagrams until `shutdown`; connections peers open go to `accepted`.
    pub async fn serve(
        self: Arc<Self>,
        accepted: mpsc::Sender<Accepted>,
        shutdown: CancellationToken,
    ) {
        let limiter = RateLimiter::new(&self.public, HANDSHAKES_BEFORE_COOKIES);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut reset = tokio::time::interval(Duration::from_secs(1));
        loop {
            let (len, stride, from) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = reset.tick() => { limiter.reset_count(); continue }
                r = self.udp.recv(&mut buf) => match r {
                    Ok(r) => r,
                    Err(_) => continue,
                },
            };
            for datagram in datagrams(&buf, len, stride) {
                self.route(datagram, from, &limiter, &accepted).await;
            }
        }
        self.stop.cancel();
    }

    /// Hand one datagram to its peer's task, or count it and drop it.
    async fn route(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        limiter: &RateLimiter,
        accepted: &mpsc::Sender<Accepted>,
    ) {
        let mut cookie = [0u8; 64];
        let slot = match limiter.verify_packet(Some(from.ip()), datagram, &mut cookie) {
            Ok(Packet::HandshakeInit(init)) => {
                match parse_handshake_anon(&self.key.0, &self.public, &init) {
                    Ok(half) => self.lock().by_key.get(&half.peer_static_public).cloned(),
                    Err(_) => None,
                }
            }
            Ok(Packet::HandshakeResponse(p)) => self.by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.by_index(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.by_index(p.receiver_idx),
            Err(TunnResult::WriteToNetwork(reply)) => {
                let _ = self.udp.send(from, reply, None).await;
                return;
            }
            Err(_) => None,
        };
        let Some(slot) = slot else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.deliver(&slot, datagram, from, accepted) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn by_index(&self, receiver: u32) -> Option<Arc<Slot>> {
        self.lock().by_index.get(&(receiver >> 8)).cloned()
    }

    /// Queue `datagram` for the peer's task, whose link its first handshake initiation
    /// starts. False when it was dropped (no link yet, or the task is this far behind).
    fn deliver(
        &self,
        slot: &Arc<Slot>,
        datagram: &[u8],
        from: SocketAddr,
        accepted: &mpsc::Sender<Accepted>,
    ) -> bool {
        let mut inbox = slot.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let running = inbox.as_ref().filter(|tx| !tx.is_closed());
        // Only a handshake initiation starts a link.
        let tx = match running {
            Some(tx) => tx,
            None if datagram.first() == Some(&1) && !slot.stop.is_cancelled() => {
                inbox.insert(self.start_link(slot, accepted))
            }
            None => return false,
        };
        tx.try_send(Datagram {
            data: datagram.to_vec(),
            from,
        })
        .is_ok()
    }

    /// Start the task of `slot`'s link; returns its inbox.
    fn start_link(&self, slot: &Slot, accepted: &mpsc::Sender<Accepted>) -> mpsc::Sender<Datagram> {
        let (tx, rx) = mpsc::channel(PEER_INBOX);
        let link = Link {
            local: GATEWAY_ADDR,
            remote: CONNECTOR_ADDR,
        };
        let mtu = self.params.mtu.unwrap_or(super::LARGEST_MTU);
        let shared = Shared::new(link, mtu, smoltcp::time::Instant::ZERO);
        shared.lock().listen(GATEWAY_PORT, MAX_CONNECTIONS_PER_PEER);
        let driver = Driver {
            tunn: Tunn::new(
                self.key.0.clone(),
                slot.public,
                None,
                None,
                slot.index,
                None,
            ),
            shared,
            link,
            udp: self.udp.clone(),
            endpoint: None,
            roaming: true,
            rekey_after: None,
            accept: Some(Acceptor {
                tunnel: slot.tunnel.clone(),
                out: accepted.clone(),
            }),
            counters: self.counters.clone(),
            epoch: Instant::now(),
        };
        tokio::spawn(driver.run(Inbox::Routed(rx), slot.stop.clone()));
        tx
    }
}
