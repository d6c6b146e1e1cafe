//! The WireGuard transport on loopback: real UDP sockets, boringtun sessions and the userspace
//! TCP/IP stack on both ends. Bulk both ways, silence towards strangers (junk, unknown keys,
//! a replayed handshake, a forged response), rekeying under load, roaming, and packet sizes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::wireguard::{self, WgDialer, WgListener, WgParams, WgPeer, keys};
use netwall_tunnel::{Conn, TransportKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PARAMS: MuxParams = MuxParams {
    max_streams: 64,
    accept_backlog: 256,
};

/// How long a stranger's datagram is given to draw an answer that must never come.
const SILENCE: Duration = Duration::from_millis(500);

struct Gateway {
    listener: Arc<WgListener>,
    addr: SocketAddr,
    accepted: mpsc::Receiver<wireguard::Accepted>,
    _stop: tokio_util::sync::DropGuard,
}

impl Gateway {
    async fn start(peers: &[&keys::PrivateKey]) -> Gateway {
        let (private, _) = keys::generate();
        let key = keys::parse_private(&private).expect("key");
        let listener = Arc::new(
            WgListener::bind(
                "127.0.0.1:0".parse().expect("addr"),
                key,
                WgParams::default(),
            )
            .expect("bind"),
        );
        let peers: Vec<WgPeer> = peers
            .iter()
            .map(|k| WgPeer {
                public: k.public(),
                tunnel: "app".into(),
            })
            .collect();
        listener.set_peers(&peers);
        let addr = listener.local_addr().expect("addr");
        let (tx, accepted) = mpsc::channel(16);
        let stop = CancellationToken::new();
        tokio::spawn(listener.clone().serve(tx, stop.clone()));
        Gateway {
            listener,
            addr,
            accepted,
            _stop: stop.drop_guard(),
        }
    }

    async fn accept(&mut self) -> Conn {
        let a = tokio::time::timeout(Duration::from_secs(10), self.accepted.recv())
            .await
            .expect("a connection within 10 s")
            .expect("listener runs");
        assert_eq!(a.tunnel, "app");
        a.establish(PARAMS).await.expect("mux")
    }
}

fn new_key() -> keys::PrivateKey {
    keys::parse_private(&keys::generate().0).expect("key")
}

/// One tunnel connection over WireGuard: `(gateway side, connector side)`.
async fn connect(gw: &mut Gateway, dialer: &WgDialer, to: SocketAddr) -> (Conn, Conn) {
    let public = gw.listener.public_key();
    let dial = dialer.dial(to, &public, PARAMS);
    let (c, g) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), dial),
        gw.accept()
    );
    let c = c.expect("dial within 10 s").expect("dial");
    assert_eq!(c.kind(), TransportKind::WireGuard);
    (g, c)
}

/// A request of `n` bytes answered with the same bytes, over a fresh stream.
async fn echo(g: &Conn, c: &Conn, n: usize) {
    let writer = {
        let g = g.clone();
        tokio::spawn(async move {
            let mut s = g.open().await.expect("open");
            let chunk = vec![7u8; n];
            s.send.write_all(&chunk).await.expect("write");
            s.send.shutdown().await.expect("finish");
            let mut back = Vec::new();
            s.recv.read_to_end(&mut back).await.expect("read back");
            back.len()
        })
    };
    let mut s = c.accept().await.expect("accept");
    let mut got = Vec::new();
    s.recv.read_to_end(&mut got).await.expect("read");
    assert_eq!(got.len(), n);
    s.send.write_all(&got).await.expect("echo");
    s.send.shutdown().await.expect("finish");
    assert_eq!(writer.await.expect("writer"), n);
}

/// Keep echoing small requests until `stop`; returns how many succeeded.
fn load(g: Conn, c: Conn, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut done = 0;
        while !stop.is_cancelled() {
            tokio::time::timeout(Duration::from_secs(10), echo(&g, &c, 4096))
                .await
                .expect("every request is answered within 10 s");
            done += 1;
        }
        done
    })
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sixteen_mebibytes_cross_each_way() {
    let ck = new_key();
    let mut gw = Gateway::start(&[&ck]).await;
    let dialer = WgDialer::new(ck, WgParams::default());
    let to = gw.addr;
    let (g, c) = connect(&mut gw, &dialer, to).await;
    echo(&g, &c, 16 << 20).await;
    // A second connection shares the link.
    let (g2, c2) = connect(&mut gw, &dialer, to).await;
    echo(&g2, &c2, 1 << 20).await;
    echo(&g, &c, 1 << 20).await;
}

#[tokio::test]
async fn strangers_get_no_answer_and_the_tunnel_carries_on() {
    let ck = new_key();
    let mut gw = Gateway::start(&[&ck]).await;
    let dialer = WgDialer::new(ck, WgParams::default());
    let to = gw.addr;
    let (g, c) = connect(&mut gw, &dialer, to).await;
    let stop = CancellationToken::new();
    let running = load(g.clone(), c.clone(), stop.clone());

    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    stranger.connect(gw.addr).await.expect("connect");
    let mut datagrams: Vec<Vec<u8>> = vec![
        b"hello?".to_vec(),
        vec![0u8; 1200],
        vec![1u8; 148],
        vec![4u8; 64],
        // A data packet naming a session index that may be live, with garbage inside.
        {
            let mut d = vec![4, 0, 0, 0];
            d.extend_from_slice(&[0xaa; 60]);
            d
        },
        // A handshake response and a cookie reply nobody asked for.
        {
            let mut d = vec![2, 0, 0, 0];
            d.extend_from_slice(&[0x55; 88]);
            d
        },
        {
            let mut d = vec![3, 0, 0, 0];
            d.extend_from_slice(&[0x33; 60]);
            d
        },
    ];
    for i in 0..=255u8 {
        // Every receiver index the gateway could have given out in its low bits.
        let mut d = vec![2, 0, 0, 0, 1, 2, 3, 4, i, 0, 0, 0];
        d.resize(92, 0x42);
        datagrams.push(d);
    }
    // A real handshake initiation, but for a key this gateway does not know.
    let other = WgDialer::new(new_key(), WgParams::default());
    let before = gw.listener.counters().rejected.load(Ordering::Relaxed);
    for d in &datagrams {
        stranger.send(d).await.expect("send");
    }
    let unknown = tokio::time::timeout(
        Duration::from_secs(2),
        other.dial(gw.addr, &gw.listener.public_key(), PARAMS),
    )
    .await;
    assert!(unknown.is_err(), "an unknown key gets no connection");
    let mut buf = [0u8; 2048];
    let answer = tokio::time::timeout(SILENCE, stranger.recv(&mut buf)).await;
    assert!(
        answer.is_err(),
        "the gateway answered a stranger: {answer:?}"
    );
    let rejected = gw.listener.counters().rejected.load(Ordering::Relaxed) - before;
    assert!(
        rejected >= datagrams.len() as u64,
        "{rejected} of {} stranger datagrams counted",
        datagrams.len()
    );
    stop.cancel();
    let done = running.await.expect("load");
    assert!(done > 0);
    echo(&g, &c, 1 << 20).await;
}

/// A UDP relay between the connector and the gateway whose gateway-facing socket can be
/// swapped, as a NAT that rebinds: the gateway sees the connector's source port change.
struct Relay {
    addr: SocketAddr,
    rebind: mpsc::Sender<()>,
    /// Every datagram the gateway sent back, copied for replay tests.
    seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Every datagram the connector sent, copied.
    sent: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Relay {
    async fn start(gateway: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let addr = front.local_addr().expect("addr");
        let (rebind, mut rebinds) = mpsc::channel::<()>(4);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen2, sent2) = (seen.clone(), sent.clone());
        tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
            back.connect(gateway).await.expect("connect");
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        sent2.lock().expect("lock").push(a[..n].to_vec());
                        let _ = back.send(&a[..n]).await;
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { continue };
                        seen2.lock().expect("lock").push(b[..n].to_vec());
                        if let Some(c) = client {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                    r = rebinds.recv() => {
                        if r.is_none() { break }
                        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                        s.connect(gateway).await.expect("connect");
                        back = Arc::new(s);
                    }
                }
            }
        });
        Relay {
            addr,
            rebind,
            seen,
            sent,
        }
    }
}

#[tokio::test]
async fn the_tunnel_follows_the_connector_to_a_new_source_port() {
    let ck = new_key();
    let mut gw = Gateway::start(&[&ck]).await;
    let relay = Relay::start(gw.addr).await;
    // After the relay moves to a new port, what the gateway sends goes to the old one until
    // the connector sends something from the new one. A real connector's control stream pings
    // every 2 s; with no control stream here, the link's own keepalive plays that part at the
    // same pace (with WireGuard's 25 s, a connector that was only receiving stayed lost past
    // the deadlines below).
    let dialer = WgDialer::new(
        ck,
        WgParams {
            persistent_keepalive: 2,
            ..WgParams::default()
        },
    );
    let (g, c) = connect(&mut gw, &dialer, relay.addr).await;
    let stop = CancellationToken::new();
    let running = load(g.clone(), c.clone(), stop.clone());
    for round in 1..=3u64 {
        relay.rebind.send(()).await.expect("relay runs");
        let counters = gw.listener.counters();
        wait_until("the gateway follows the new port", || {
            counters.roams.load(Ordering::Relaxed) >= round
        })
        .await;
        // Requests keep flowing from the new address.
        let before = relay.seen.lock().expect("lock").len();
        wait_until("replies reach the new port", || {
            relay.seen.lock().expect("lock").len() > before + 20
        })
        .await;
    }
    stop.cancel();
    assert!(running.await.expect("load") > 0);
    echo(&g, &c, 1 << 20).await;
}

#[tokio::test]
async fn rekeying_under_load_loses_nothing() {
    let ck = new_key();
    let mut gw = Gateway::start(&[&ck]).await;
    let dialer = WgDialer::new(
        ck,
        WgParams {
            rekey_after: Duration::from_secs(1),
            ..WgParams::default()
        },
    );
    let to = gw.addr;
    let (g, c) = connect(&mut gw, &dialer, to).await;
    let stop = CancellationToken::new();
    let running = load(g.clone(), c.clone(), stop.clone());
    let (dc, gc) = (dialer.counters(), gw.listener.counters());
    wait_until("three rekeys", || {
        dc.rekeys.load(Ordering::Relaxed) >= 3 && gc.handshakes.load(Ordering::Relaxed) >= 4
    })
    .await;
    stop.cancel();
    // `load` panics on any failed or unanswered request.
    assert!(running.await.expect("no request failed") > 0);
    echo(&g, &c, 4 << 20).await;
}

#[tokio::test]
async fn replayed_and_forged_handshakes_change_nothing() {
    let ck = new_key();
    let mut gw = Gateway::start(&[&ck]).await;
    let relay = Relay::start(gw.addr).await;
    let dialer = WgDialer::new(ck, WgParams::default());
    let (g, c) = connect(&mut gw, &dialer, relay.addr).await;
    echo(&g, &c, 64 * 1024).await;
    let first_init = relay
        .sent
        .lock()
        .expect("lock")
        .iter()
        .find(|d| d.first() == Some(&1))
        .cloned()
        .expect("the connector sent a handshake initiation");
    let first_response = relay
        .seen
        .lock()
        .expect("lock")
        .iter()
        .find(|d| d.first() == Some(&2))
        .cloned()
        .expect("the gateway answered it");
    let stop = CancellationToken::new();
    let running = load(g.clone(), c.clone(), stop.clone());
    // From another address: the captured initiation replayed (its timestamp is old), the
    // gateway's own response sent back to it, and a response with one bit flipped.
    let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    attacker.connect(gw.addr).await.expect("connect");
    let handshakes = gw.listener.counters().handshakes.load(Ordering::Relaxed);
    let mut flipped = first_response.clone();
    flipped[20] ^= 1;
    for d in [&first_init, &first_response, &flipped, &first_init] {
        attacker.send(d).await.expect("send");
    }
    let mut buf = [0u8; 2048];
    let answer = tokio::time::timeout(SILENCE, attacker.recv(&mut buf)).await;
    assert!(answer.is_err(), "the gateway answered a replay: {answer:?}");
    assert_eq!(
        gw.listener.counters().handshakes.load(Ordering::Relaxed),
        handshakes,
        "a replayed initiation made a new session"
    );
    assert_eq!(gw.listener.counters().roams.load(Ordering::Relaxed), 0);
    stop.cancel();
    assert!(running.await.expect("load") > 0);
    echo(&g, &c, 1 << 20).await;
}

#[tokio::test]
async fn a_peer_holds_at_most_its_connection_limit_and_gets_a_slot_back() {
    let ck = new_key();
    let mut gw = Gateway::start(&[&ck]).await;
    let dialer = WgDialer::new(ck, WgParams::default());
    let to = gw.addr;
    let mut held = Vec::new();
    for _ in 0..wireguard::MAX_CONNECTIONS_PER_PEER {
        held.push(connect(&mut gw, &dialer, to).await);
    }
    // One more is refused by the peer link itself, and nothing reaches the gateway.
    let public = gw.listener.public_key();
    let over = tokio::time::timeout(Duration::from_secs(10), dialer.dial(to, &public, PARAMS))
        .await
        .expect("refused within 10 s, not left hanging");
    assert!(over.is_err(), "a connection beyond the limit was accepted");
    assert!(gw.accepted.try_recv().is_err());
    // The gateway ends one; its slot comes back.
    let (g, c) = held.pop().expect("held");
    g.close(0, b"done");
    drop((g, c));
    // The slot is free once both ends have closed the connection; until then a dial is
    // refused at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dial = tokio::time::timeout(Duration::from_secs(5), dialer.dial(to, &public, PARAMS));
        let (c, g) = tokio::join!(dial, async {
            match tokio::time::timeout(Duration::from_secs(5), gw.accepted.recv()).await {
                Ok(Some(a)) => a.establish(PARAMS).await.ok(),
                _ => None,
            }
        });
        if let (Ok(Ok(c)), Some(g)) = (c, g) {
            echo(&g, &c, 64 * 1024).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot came back after a connection ended"
        );
    }
    // The others still work.
    let (g, c) = &held[0];
    echo(g, c, 64 * 1024).await;
}

#[tokio::test]
async fn packets_are_as_large_as_the_connectors_route_or_setting_allows() {
    // Over loopback a connector takes 8,920-byte packets inside the link; one set to 1,200
    // holds both directions to that, though the gateway would take 8,920. A data datagram
    // carries the packet, WireGuard's 16-byte header and 16-byte tag, and up to 15 bytes of
    // padding.
    for (mtu, largest) in [(None, wireguard::LARGEST_MTU), (Some(1200), 1200)] {
        let ck = new_key();
        let mut gw = Gateway::start(&[&ck]).await;
        let relay = Relay::start(gw.addr).await;
        let dialer = WgDialer::new(
            ck,
            WgParams {
                mtu,
                ..WgParams::default()
            },
        );
        let (g, c) = connect(&mut gw, &dialer, relay.addr).await;
        echo(&g, &c, 1 << 20).await;
        let biggest = |v: &std::sync::Mutex<Vec<Vec<u8>>>| {
            v.lock()
                .expect("lock")
                .iter()
                .map(Vec::len)
                .max()
                .unwrap_or(0)
        };
        for (way, size) in [("up", biggest(&relay.sent)), ("down", biggest(&relay.seen))] {
            assert!(
                (largest + 32..largest + 32 + 16).contains(&size),
                "MTU {mtu:?}: the largest datagram {way} is {size} bytes, for {largest}-byte packets"
            );
        }
    }
}
