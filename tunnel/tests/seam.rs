//! The transport seam on the in-memory duplex pair: bulk data both ways under flow control,
//! a thousand streams waiting together, close semantics, stream limits and abandoned streams.
//! In each test `a` is the accepting side (the gateway, which opens request streams) and `b`
//! the dialing side (the connector, which accepts them).

mod common;

use std::time::Duration;

use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::{Closed, duplex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARAMS: MuxParams = MuxParams {
    max_streams: 64,
    accept_backlog: 256,
};

#[tokio::test]
async fn eight_mebibytes_cross_one_stream_each_way() {
    let (b, a) = duplex::pair(PARAMS).await.expect("pair");
    let writer = tokio::spawn(async move {
        let mut s = a.open().await.expect("open");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..128 {
            s.send.write_all(&chunk).await.expect("write");
        }
        s.send.shutdown().await.expect("finish");
        let mut back = Vec::new();
        s.recv.read_to_end(&mut back).await.expect("read back");
        (a, back.len())
    });
    let mut s = b.accept().await.expect("accept");
    let mut got = Vec::new();
    s.recv.read_to_end(&mut got).await.expect("read");
    assert_eq!(got.len(), 8 << 20);
    assert!(got.iter().all(|c| *c == b'x'));
    s.send.write_all(&got).await.expect("echo");
    s.send.shutdown().await.expect("finish");
    let (_a, n) = writer.await.expect("writer");
    assert_eq!(n, 8 << 20);
}

#[tokio::test]
async fn a_thousand_streams_wait_unanswered_together() {
    let (b, a) = duplex::pair(MuxParams {
        max_streams: 2048,
        ..PARAMS
    })
    .await
    .expect("pair");
    // The opener sends a request on each and waits; the acceptor answers none until it has
    // all of them, as a service holding a thousand slow requests does.
    let opener = tokio::spawn(async move {
        let mut streams = Vec::new();
        for i in 0..1000u32 {
            let mut s = a.open().await.expect("open");
            s.send.write_all(&i.to_be_bytes()).await.expect("write");
            streams.push(s);
        }
        let mut answers = Vec::new();
        for s in &mut streams {
            let mut buf = [0u8; 4];
            s.recv.read_exact(&mut buf).await.expect("answer");
            answers.push(u32::from_be_bytes(buf));
        }
        (a, answers)
    });
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::time::timeout(Duration::from_secs(10), b.accept())
            .await
            .expect("every stream arrives while none is answered")
            .expect("accept");
        let mut buf = [0u8; 4];
        s.recv.read_exact(&mut buf).await.expect("request");
        held.push((s, buf));
    }
    for (s, buf) in &mut held {
        s.send.write_all(buf).await.expect("answer");
    }
    let (_a, answers) = opener.await.expect("opener");
    assert_eq!(answers, (0..1000).collect::<Vec<u32>>());
}

#[tokio::test]
async fn closing_ends_streams_accepts_and_opens_on_both_sides() {
    let (b, a) = duplex::pair(PARAMS).await.expect("pair");
    let mut s = a.open().await.expect("open");
    s.send.write_all(b"hi").await.expect("write");
    let mut t = b.accept().await.expect("accept");
    let mut buf = [0u8; 2];
    t.recv.read_exact(&mut buf).await.expect("read");
    a.close(0, b"bye");
    assert_eq!(a.closed().await, Closed::Locally);
    assert!(matches!(b.closed().await, Closed::Lost(_)));
    assert!(b.accept().await.is_err());
    assert!(b.open().await.is_err());
    assert!(a.open().await.is_err());
    let mut rest = Vec::new();
    assert!(
        t.recv.read_to_end(&mut rest).await.is_err() || rest.is_empty(),
        "a stream of a closed connection yields nothing more"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_beyond_the_limit_waits_for_a_free_slot() {
    // Four streams at once: the control stream and three requests.
    let (b, a) = duplex::pair(MuxParams {
        max_streams: 4,
        ..PARAMS
    })
    .await
    .expect("pair");
    let mut open = Vec::new();
    for i in 0..3u8 {
        let mut s = a.open().await.expect("within the limit");
        s.send.write_all(&[i]).await.expect("write");
        open.push(s);
    }
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(b.accept().await.expect("accept"));
    }
    // The fifth waits (HTTP/2 holds it back, as QUIC's flow control would): it neither fails
    // nor reaches the peer while four are open.
    let mut fifth = a.open().await.expect("queued, not refused");
    let writer = tokio::spawn(async move {
        fifth.send.write_all(b"5").await.expect("write");
        fifth
    });
    let waiting = tokio::spawn(async move { b.accept().await.map(|s| (b, s)) });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !waiting.is_finished(),
        "a stream was carried past the limit"
    );
    // One request finishes both ways: its slot frees and the waiting stream goes through.
    let mut done = open.remove(0);
    let mut ended = accepted.remove(0);
    done.send.shutdown().await.expect("finish");
    ended.send.shutdown().await.expect("finish");
    let mut rest = Vec::new();
    done.recv.read_to_end(&mut rest).await.expect("end");
    ended.recv.read_to_end(&mut rest).await.expect("end");
    drop((done, ended));
    let (b, mut s) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting stream arrives once a slot is free")
        .expect("task")
        .expect("accept");
    let mut byte = [0u8; 1];
    s.recv.read_exact(&mut byte).await.expect("read");
    assert_eq!(&byte, b"5");
    let _fifth = writer.await.expect("writer");
    assert!(a.close_reason().is_none() && b.close_reason().is_none());
}

#[tokio::test]
async fn a_stream_abandoned_before_it_is_accepted_ends_only_itself() {
    let (b, a) = duplex::pair(PARAMS).await.expect("pair");
    // A request given up at once (its client went away): opened, written, dropped.
    let mut gone = a.open().await.expect("open");
    gone.send.write_all(b"gone").await.expect("write");
    drop(gone);
    let mut kept = a.open().await.expect("open");
    kept.send.write_all(b"kept").await.expect("write");
    // Whether the first is still delivered or skipped, the connection carries the second.
    let mut got = Vec::new();
    for _ in 0..2 {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), b.accept()).await else {
            break;
        };
        let mut buf = [0u8; 4];
        if s.recv.read_exact(&mut buf).await.is_ok() {
            got.push(buf);
        }
        if got.contains(b"kept") {
            break;
        }
    }
    assert!(got.contains(b"kept"), "the second stream was lost: {got:?}");
    assert!(b.close_reason().is_none() && a.close_reason().is_none());
}

#[tokio::test]
async fn hundreds_of_streams_abandoned_before_they_are_accepted_end_only_themselves() {
    // A burst of clients giving up together (a load generator's deadline, a browser closing
    // its tabs) while the connector is too busy to accept: more abandoned streams than the
    // accept backlog holds, so some are still inside HTTP/2 when their resets arrive.
    let (b, a) = duplex::pair(MuxParams {
        max_streams: 1024,
        accept_backlog: 16,
    })
    .await
    .expect("pair");
    let mut gone = Vec::new();
    for _ in 0..300 {
        let mut s = a.open().await.expect("open");
        s.send.write_all(b"gone").await.expect("write");
        gone.push(s);
    }
    drop(gone);
    let mut kept = a.open().await.expect("open");
    kept.send.write_all(b"kept").await.expect("write");
    let mut found = false;
    for _ in 0..302 {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), b.accept()).await else {
            break;
        };
        let mut buf = [0u8; 4];
        if s.recv.read_exact(&mut buf).await.is_ok() && &buf == b"kept" {
            found = true;
            break;
        }
    }
    assert!(
        found,
        "the stream after the burst was lost: {:?} {:?}",
        a.close_reason(),
        b.close_reason()
    );
    assert!(b.close_reason().is_none(), "{:?}", b.close_reason());
    assert!(a.close_reason().is_none(), "{:?}", a.close_reason());
}

/// A byte stream that counts the writes reaching it.
struct Counted {
    inner: tokio::io::DuplexStream,
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn requests_sent_in_the_same_turn_share_writes() {
    use netwall_tunnel::mux::{self, Role};
    use netwall_tunnel::{Peer, TransportKind};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Under the stream limit, which the control stream shares.
    const N: usize = 48;
    let writes = Arc::new(AtomicUsize::new(0));
    let (x, y) = tokio::io::duplex(1 << 20);
    let counted = Counted {
        inner: y,
        writes: writes.clone(),
    };
    let (b, a) = tokio::join!(
        mux::connect(x, Role::Client, TransportKind::Duplex, Peer::Memory, PARAMS),
        mux::connect(
            counted,
            Role::Server,
            TransportKind::Duplex,
            Peer::Memory,
            PARAMS
        ),
    );
    let (b, a) = (b.expect("dialing side"), a.expect("accepting side"));
    // N streams open and idle, their requests waiting on one signal, as N clients' requests
    // that one read from the network made runnable together.
    let mut streams = Vec::new();
    for _ in 0..N {
        streams.push(a.open().await.expect("open"));
    }
    let (go, wait) = tokio::sync::watch::channel(false);
    let mut senders = tokio::task::JoinSet::new();
    for mut s in streams {
        let mut wait = wait.clone();
        senders.spawn(async move {
            let _ = wait.wait_for(|go| *go).await;
            s.send.write_all(b"request").await.expect("write");
            s.send.shutdown().await.expect("finish");
            s
        });
    }
    // Every stream's HEADERS is out and accepted before the signal.
    let mut accepted = Vec::new();
    for _ in 0..N {
        accepted.push(b.accept().await.expect("accept"));
    }
    let before = writes.load(Ordering::Relaxed);
    tokio::spawn(async move { go.send_replace(true) })
        .await
        .expect("signal");
    for mut s in accepted {
        let mut got = Vec::new();
        s.recv.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"request");
    }
    let during = writes.load(Ordering::Relaxed) - before;
    assert!(
        during <= N / 8,
        "{N} requests made ready together took {during} writes"
    );
    while senders.join_next().await.is_some() {}
}

#[tokio::test]
async fn data_frames_larger_than_the_stream_window_arrive_whole() {
    let (b, a) = duplex::pair(PARAMS).await.expect("pair");
    let (sent, got) = tokio::time::timeout(
        Duration::from_secs(30),
        common::data_frames_cross(&a, &b, 5 << 20),
    )
    .await
    .expect("the payload crosses in time");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the payload arrived changed");
}
