//! The transport seam on the in-memory duplex pair: streams both ways, bulk data under flow
//! control, close semantics and stream limits, with tokio's paused clock where time matters.

use std::time::Duration;

use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::{Closed, duplex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARAMS: MuxParams = MuxParams {
    max_streams: 64,
    keep_alive: Duration::from_secs(5),
    accept_backlog: 256,
};

#[tokio::test]
async fn eight_mebibytes_cross_one_stream_each_way() {
    let (a, b) = duplex::pair(PARAMS);
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
    let (a, b) = duplex::pair(MuxParams {
        max_streams: 2048,
        ..PARAMS
    });
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
    let (a, b) = duplex::pair(PARAMS);
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

#[tokio::test]
async fn streams_beyond_the_limit_are_refused_not_buffered() {
    let (a, b) = duplex::pair(MuxParams {
        max_streams: 4,
        ..PARAMS
    });
    let mut open = Vec::new();
    for i in 0..4u8 {
        let mut s = a.open().await.expect("within the limit");
        s.send.write_all(&[i]).await.expect("write");
        open.push(s);
    }
    let mut accepted = Vec::new();
    for _ in 0..4 {
        accepted.push(b.accept().await.expect("accept"));
    }
    // The fifth cannot be had while four are open: the open fails or its stream is reset.
    let fifth = tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = a.open().await?;
        s.send
            .write_all(b"x")
            .await
            .map_err(|e| netwall_tunnel::Closed::Lost(e.to_string()))?;
        let mut buf = [0u8; 1];
        s.recv
            .read_exact(&mut buf)
            .await
            .map_err(|e| netwall_tunnel::Closed::Lost(e.to_string()))?;
        Ok::<_, netwall_tunnel::Closed>(())
    })
    .await;
    assert!(
        !matches!(fifth, Ok(Ok(()))),
        "a fifth stream was carried past a limit of four"
    );
}

#[tokio::test]
async fn a_stream_abandoned_before_it_is_accepted_ends_only_itself() {
    let (a, b) = duplex::pair(PARAMS);
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
