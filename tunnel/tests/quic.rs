//! The QUIC transport over real loopback UDP: the connector grants the gateway a first window
//! of streams and widens it as they fill, so thousands of long-lived streams (WebSockets)
//! open together, but never past the configured maximum.

mod common;

use std::sync::Arc;
use std::time::Duration;

use netwall_proto::wire::TUNNEL_ALPN;
use netwall_tunnel::quic::{QuicDialer, QuicListener, QuicParams};
use netwall_tunnel::{Conn, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// No test waits longer than this for anything that must happen.
const DEADLINE: Duration = Duration::from_secs(30);

/// How long a stream that must wait is watched not to go through.
const HELD_BACK: Duration = Duration::from_secs(1);

/// A gateway-side and a connector-side QUIC connection, the connector allowing the gateway
/// `max_peer_streams` open streams at most.
async fn pair(max_peer_streams: u32) -> (Conn, Conn) {
    let pki = common::pki(&[&rustls::version::TLS13], &[TUNNEL_ALPN], &[TUNNEL_ALPN]);
    let params = QuicParams {
        idle_timeout: Duration::from_secs(30),
        keep_alive: Duration::from_secs(5),
        max_peer_streams,
    };
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::unwrap_or_clone(pki.server),
        &QuicParams {
            max_peer_streams: 0,
            ..params
        },
    )
    .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepting = tokio::spawn(async move {
        let incoming = listener.accept().await.expect("incoming");
        incoming.establish().await.expect("gateway handshake")
    });
    let dialer = QuicDialer::new(Arc::unwrap_or_clone(pki.client), &params).expect("dialer");
    let connector = tokio::time::timeout(DEADLINE, dialer.dial(addr, "localhost"))
        .await
        .expect("dial in time")
        .expect("dial");
    let gateway = accepting.await.expect("join");
    (gateway, connector)
}

/// The gateway opens `n` streams, each carrying its number and held open; the connector
/// accepts and reads every one while all stay open. Both sides' streams come back.
async fn hold_open(gateway: &Conn, connector: &Conn, n: u32) -> (Vec<Stream>, Vec<Stream>) {
    let opener = {
        let gateway = Arc::clone(gateway);
        tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..n {
                let mut s = gateway.open().await.expect("open");
                s.send.write_all(&i.to_be_bytes()).await.expect("write");
                held.push(s);
            }
            held
        })
    };
    let mut accepted = Vec::new();
    for _ in 0..n {
        let mut s = connector.accept().await.expect("accept");
        let mut buf = [0u8; 4];
        s.recv.read_exact(&mut buf).await.expect("stream number");
        accepted.push((u32::from_be_bytes(buf), s));
    }
    let opened = opener.await.expect("opener");
    accepted.sort_by_key(|(i, _)| *i);
    assert!(
        accepted.iter().map(|(i, _)| *i).eq(0..n),
        "every stream arrived once"
    );
    (opened, accepted.into_iter().map(|(_, s)| s).collect())
}

#[tokio::test]
async fn thousands_of_open_streams_fit_past_the_first_grant() {
    let (gateway, connector) = pair(16_384).await;
    // Four times the first grant, all open at once, as many idle WebSockets are.
    let (opened, accepted) = tokio::time::timeout(DEADLINE, hold_open(&gateway, &connector, 4096))
        .await
        .expect("every stream is carried while the others stay open");
    assert_eq!((opened.len(), accepted.len()), (4096, 4096));
    assert!(gateway.close_reason().is_none() && connector.close_reason().is_none());
}

#[tokio::test]
async fn the_grant_stops_at_the_configured_maximum() {
    let max = 1500;
    let (gateway, connector) = pair(max).await;
    let (mut opened, mut accepted) =
        tokio::time::timeout(DEADLINE, hold_open(&gateway, &connector, max))
            .await
            .expect("streams up to the maximum are carried");
    // One more waits for free slots: it is neither refused nor carried.
    let extra = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move { gateway.open().await })
    };
    assert!(
        tokio::time::timeout(HELD_BACK, connector.accept())
            .await
            .is_err(),
        "a stream was carried past the maximum"
    );
    assert!(
        !extra.is_finished(),
        "the opener got a stream past the maximum"
    );
    // Streams end both ways and their slots free. quinn tells the peer about freed slots
    // once more than an eighth of the window is free again; then the waiting one goes through.
    for (mut done, mut ended) in opened.drain(..200).zip(accepted.drain(..200)) {
        done.send.shutdown().await.expect("finish");
        ended.send.shutdown().await.expect("finish");
        let mut rest = Vec::new();
        ended.recv.read_to_end(&mut rest).await.expect("end");
        done.recv.read_to_end(&mut rest).await.expect("end");
    }
    let mut s = tokio::time::timeout(DEADLINE, extra)
        .await
        .expect("the waiting stream opens once a slot is free")
        .expect("join")
        .expect("open");
    s.send.write_all(b"late").await.expect("write");
    let mut t = tokio::time::timeout(DEADLINE, connector.accept())
        .await
        .expect("and arrives")
        .expect("accept");
    let mut buf = [0u8; 4];
    t.recv.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"late");
}

#[tokio::test]
async fn data_frames_larger_than_the_stream_window_arrive_whole() {
    let (gateway, connector) = pair(16).await;
    let (sent, got) = tokio::time::timeout(
        DEADLINE,
        common::data_frames_cross(&gateway, &connector, 5 << 20),
    )
    .await
    .expect("the payload crosses in time");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the payload arrived changed");
}

/// Exchanges one-byte round trips on `ping` (gateway side) and `pong` (connector side) until
/// both ends send datagrams of more than `bytes`: discovery moves on the traffic and its
/// acknowledgements, so every check follows a real exchange. Panics at the deadline with the
/// sizes reached.
async fn datagrams_grow_past(
    (gateway, ping): (&Conn, &mut Stream),
    (connector, pong): (&Conn, &mut Stream),
    bytes: u16,
) {
    let size = |c: &Conn| c.datagram_size().expect("QUIC reports its datagram size");
    let grown = async {
        let mut byte = [0u8; 1];
        while size(gateway) <= bytes || size(connector) <= bytes {
            ping.send.write_all(b"?").await.expect("ping");
            pong.recv.read_exact(&mut byte).await.expect("ping arrives");
            pong.send.write_all(b"!").await.expect("pong");
            ping.recv.read_exact(&mut byte).await.expect("pong arrives");
        }
    };
    if tokio::time::timeout(DEADLINE, grown).await.is_err() {
        panic!(
            "datagrams stayed at {} (gateway) and {} (connector) bytes",
            size(gateway),
            size(connector)
        );
    }
}

#[tokio::test]
async fn loopback_bulk_runs_in_large_datagrams_and_keeps_them() {
    const BULK: usize = 64 << 20;
    let (gateway, connector) = pair(16).await;
    let mut down = gateway.open().await.expect("open");
    down.send.write_all(b"go").await.expect("write");
    let mut up = connector.accept().await.expect("accept");
    let mut go = [0u8; 2];
    up.recv.read_exact(&mut go).await.expect("read");
    // Loopback carries 64 KiB; both ends find datagrams well past Ethernet's 1,452 bytes.
    datagrams_grow_past((&gateway, &mut down), (&connector, &mut up), 6_000).await;

    // Full-speed transfers both ways at once: every GSO batch of large packets must be one
    // the kernel takes. A refused batch is lost whole, and quinn's black-hole detection then
    // drops the connection to 1,200-byte datagrams.
    let chunk = vec![0x5au8; 256 << 10];
    let send = |mut w: netwall_tunnel::StreamWrite, chunk: Vec<u8>| async move {
        for _ in 0..BULK / chunk.len() {
            w.write_all(&chunk).await.expect("write");
        }
        w.shutdown().await.expect("finish");
    };
    let count = |mut r: netwall_tunnel::StreamRead| async move {
        let mut n = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = r.read(&mut buf).await.expect("read");
            if got == 0 {
                return n;
            }
            n += got;
        }
    };
    let (_, _, to_connector, to_gateway) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(
            send(down.send, chunk.clone()),
            send(up.send, chunk.clone()),
            count(up.recv),
            count(down.recv),
        )
    })
    .await
    .expect("the transfers finish in time");
    assert_eq!((to_connector, to_gateway), (BULK, BULK));
    for (side, conn) in [("gateway", &gateway), ("connector", &connector)] {
        let size = conn.datagram_size().expect("size");
        assert!(
            size > 6_000,
            "the {side} fell back to {size}-byte datagrams"
        );
    }
}
