//! The owned-buffer TLS server stream against tokio-rustls as the client, over real loopback
//! TCP: bytes arrive whole however they are sliced, a waiting connection holds no buffer,
//! closes and truncations are told apart, bad input ends in an error (never a hang), and
//! TLS 1.2, key updates and a ClientHello read ahead all work.

mod common;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::Pki;
use netwall_tunnel::tls_stream::TlsStream;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

/// No test waits longer than this for anything.
const DEADLINE: Duration = Duration::from_secs(20);

/// The server and client configurations, speaking `versions`.
fn pki(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
    common::pki(versions, &[b"h2", b"http/1.1"], &[b"http/1.1"])
}

/// A connected pair: our server stream and a tokio-rustls client.
async fn pair(pki: &Pki) -> (TlsStream<TcpStream>, ClientStream<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        TlsStream::accept(tcp, config, Vec::new()).await
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let client = TlsConnector::from(pki.client.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("client handshake");
    let server = server.await.expect("join").expect("server handshake");
    (server, client)
}

/// A message each way, so the client has consumed everything the handshake sent (a socket
/// closed with unread data is reset, not ended).
async fn round_trip(server: &mut TlsStream<TcpStream>, client: &mut ClientStream<TcpStream>) {
    client.write_all(b"ping").await.expect("ping");
    let mut four = [0u8; 4];
    within(server.read_exact(&mut four))
        .await
        .expect("ping read");
    server.write_all(b"pong").await.expect("pong");
    server.flush().await.expect("flush");
    within(client.read_exact(&mut four))
        .await
        .expect("pong read");
}

/// A server accepting one TLS connection, and a raw TCP client to feed it what a test wants.
async fn raw_client(pki: &Pki) -> (tokio::task::JoinHandle<std::io::Result<()>>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        TlsStream::accept(tcp, config, Vec::new()).await.map(|_| ())
    });
    (server, TcpStream::connect(addr).await.expect("connect"))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("finished within the deadline")
}

/// Poll a read once: `Some(n)` if it completed with `n` bytes, `None` if it would wait.
async fn try_read<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Option<std::io::Result<usize>> {
    poll_fn(|cx| {
        let mut rb = ReadBuf::new(buf);
        Poll::Ready(match std::pin::Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Some(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn bytes_cross_whole_both_ways_whatever_the_slicing() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    for (len, chunk) in [
        (1, 1),
        (100, 7),
        (16_384, 16_384),
        (70_000, 1000),
        (1 << 20, 65_536),
    ] {
        let data = pattern(len);
        let got = relay(&mut client, &mut server, &data, chunk).await;
        assert!(
            got == data,
            "{len} bytes in {chunk}-byte writes arrived altered"
        );
        // And back, the server writing in the same slices.
        let got = relay(&mut server, &mut client, &data, chunk).await;
        assert!(
            got == data,
            "{len} bytes back in {chunk}-byte writes arrived altered"
        );
    }
}

/// Write `data` in `chunk`-byte writes on one end while the other reads it all.
async fn relay<W, R>(writer: &mut W, reader: &mut R, data: &[u8], chunk: usize) -> Vec<u8>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let write = async {
        for part in data.chunks(chunk) {
            writer.write_all(part).await.expect("write");
        }
        writer.flush().await.expect("flush");
    };
    let read = async {
        let mut got = vec![0u8; data.len()];
        reader.read_exact(&mut got).await.expect("read");
        got
    };
    within(async { tokio::join!(write, read) }).await.1
}

#[tokio::test]
async fn a_one_byte_reader_gets_every_byte_in_order() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    let data = pattern(40_000);
    client.write_all(&data).await.expect("write");
    client.flush().await.expect("flush");
    let mut got = Vec::with_capacity(data.len());
    let mut one = [0u8; 1];
    while got.len() < data.len() {
        let n = within(server.read(&mut one)).await.expect("read");
        assert_eq!(n, 1);
        got.push(one[0]);
    }
    assert!(got == data);
}

#[tokio::test]
async fn a_waiting_connection_holds_no_buffer() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    for len in [10, 5_000, 300_000] {
        let data = pattern(len);
        client.write_all(&data).await.expect("write");
        client.flush().await.expect("flush");
        let mut got = vec![0u8; len];
        within(server.read_exact(&mut got)).await.expect("read");
        server.write_all(&data).await.expect("write back");
        server.flush().await.expect("flush back");
        within(client.read_exact(&mut got))
            .await
            .expect("read back");
        // Nothing more was sent: the server's read waits, and holds nothing while it does.
        let mut buf = [0u8; 64];
        assert!(try_read(&mut server, &mut buf).await.is_none());
        assert_eq!(
            server.buffered_capacity(),
            0,
            "after {len} bytes each way a waiting connection holds a buffer"
        );
    }
}

#[tokio::test]
async fn close_notify_is_a_clean_end_both_ways() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    client.write_all(b"last words").await.expect("write");
    client.shutdown().await.expect("client close");
    let mut got = Vec::new();
    within(server.read_to_end(&mut got))
        .await
        .expect("clean end");
    assert_eq!(got, b"last words");
    // The server may still answer after the client's close, then close itself.
    server
        .write_all(b"reply")
        .await
        .expect("write after peer close");
    server.shutdown().await.expect("server close");
    let mut back = Vec::new();
    within(client.read_to_end(&mut back))
        .await
        .expect("client sees a clean end");
    assert_eq!(back, b"reply");
}

#[tokio::test]
async fn a_transport_that_ends_without_close_notify_is_a_truncation() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    round_trip(&mut server, &mut client).await;
    let (tcp, _) = client.into_inner();
    drop(tcp);
    let mut buf = [0u8; 16];
    let err = within(server.read(&mut buf)).await.expect_err("truncated");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn junk_after_the_handshake_is_an_error_and_the_peer_gets_an_alert() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut server, mut client) = pair(&pki).await;
    round_trip(&mut server, &mut client).await;
    let (mut tcp, _) = client.into_inner();
    // An application-data record that does not decrypt.
    let mut record = vec![23u8, 3, 3, 0, 40];
    record.extend(std::iter::repeat_n(0xAB, 40));
    tcp.write_all(&record).await.expect("junk");
    let mut buf = [0u8; 16];
    let err = within(server.read(&mut buf))
        .await
        .expect_err("undecryptable record");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // Every later call fails the same way, at once.
    let again = within(server.read(&mut buf))
        .await
        .expect_err("still failed");
    assert_eq!(again.kind(), std::io::ErrorKind::InvalidData);
    // The peer was told: one encrypted record (the alert) came before the end.
    drop(server);
    let mut wire = Vec::new();
    within(tcp.read_to_end(&mut wire))
        .await
        .expect("read alert");
    assert!(wire.len() > 5, "no alert reached the peer: {wire:?}");
    assert_eq!(wire[0], 23, "an encrypted record");
}

#[tokio::test]
async fn junk_instead_of_a_client_hello_fails_the_accept() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (server, mut tcp) = raw_client(&pki).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("junk");
    let err = within(server).await.expect("join").expect_err("not TLS");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_record_longer_than_tls_allows_is_refused_not_buffered() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (server, mut tcp) = raw_client(&pki).await;
    // A handshake record announcing more than a record may hold, then a stream of bytes.
    tcp.write_all(&[22, 3, 1, 0xff, 0xff])
        .await
        .expect("header");
    let junk = vec![0u8; 64 * 1024];
    for _ in 0..4 {
        if tcp.write_all(&junk).await.is_err() {
            break;
        }
    }
    let err = within(server).await.expect("join").expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn a_client_hello_read_ahead_is_processed_first() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server.clone();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        // Some of the hello, read before the handshake starts (an SNI look-ahead).
        let mut ahead = vec![0u8; 100];
        tcp.read_exact(&mut ahead).await.expect("read ahead");
        let mut s = TlsStream::accept(tcp, config, ahead)
            .await
            .expect("handshake");
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.expect("read");
        s.write_all(&got).await.expect("echo");
        s.flush().await.expect("flush");
        s
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut client = TlsConnector::from(pki.client.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("client handshake");
    client.write_all(b"hello").await.expect("write");
    let mut back = [0u8; 5];
    within(client.read_exact(&mut back)).await.expect("echo");
    assert_eq!(&back, b"hello");
    within(server).await.expect("join");
}

#[tokio::test]
async fn tls_1_2_works_too() {
    let pki = pki(&[&rustls::version::TLS12]);
    let (mut server, mut client) = pair(&pki).await;
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let data = pattern(100_000);
    assert!(relay(&mut client, &mut server, &data, data.len()).await == data);
}

#[tokio::test]
async fn data_flows_across_key_updates_both_ways() {
    let pki = pki(&[&rustls::version::TLS13]);
    let (mut server, mut client) = pair(&pki).await;
    for round in 0..3 {
        // The client moves to new keys and asks the server to do the same.
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        let data = pattern(20_000 + round);
        client.write_all(&data).await.expect("write");
        client.flush().await.expect("flush");
        let mut got = vec![0u8; data.len()];
        within(server.read_exact(&mut got)).await.expect("read");
        assert!(
            got == data,
            "round {round}: altered after the client's key update"
        );
        server.write_all(&data).await.expect("write back");
        server.flush().await.expect("flush back");
        within(client.read_exact(&mut got))
            .await
            .expect("read back");
        assert!(
            got == data,
            "round {round}: altered after the server's key update"
        );
    }
}

#[tokio::test]
async fn both_sides_sending_at_once_do_not_deadlock() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (server, client) = pair(&pki).await;
    let len = 8 << 20;
    let data = Arc::new(pattern(len));
    let (mut sr, mut sw) = tokio::io::split(server);
    let (mut cr, mut cw) = tokio::io::split(client);
    let (d1, d2) = (data.clone(), data.clone());
    let results = within(async {
        tokio::join!(
            async move {
                sw.write_all(&d1).await.expect("server write");
                sw.flush().await.expect("server flush");
            },
            async move {
                cw.write_all(&d2).await.expect("client write");
                cw.flush().await.expect("client flush");
            },
            async move {
                let mut got = vec![0u8; len];
                sr.read_exact(&mut got).await.expect("server read");
                got
            },
            async move {
                let mut got = vec![0u8; len];
                cr.read_exact(&mut got).await.expect("client read");
                got
            },
        )
    })
    .await;
    assert!(results.2 == *data && results.3 == *data);
}

#[tokio::test]
async fn a_reader_that_stops_holds_the_writer_back_with_bounded_memory() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    round_trip(&mut server, &mut client).await;
    let data = pattern(32 << 20);
    // The client reads nothing: the server's writes stop once the sockets are full, and
    // what it holds meanwhile stays within one write's worth.
    let mut offered = 0;
    let stalled = loop {
        let n =
            match tokio::time::timeout(Duration::from_millis(500), server.write(&data[offered..]))
                .await
            {
                Ok(r) => r.expect("write"),
                Err(_) => break true,
            };
        offered += n;
        assert!(
            server.buffered_capacity() <= 80 * 1024,
            "a stalled connection holds {} bytes",
            server.buffered_capacity()
        );
        if offered == data.len() {
            break false;
        }
    };
    assert!(stalled, "32 MiB went into a connection nobody reads");
    // Once the client reads, everything offered arrives intact and the rest follows.
    let write = async {
        server
            .write_all(&data[offered..])
            .await
            .expect("write rest");
        server.flush().await.expect("flush");
    };
    let mut got = vec![0u8; data.len()];
    within(async { tokio::join!(write, client.read_exact(&mut got)) })
        .await
        .1
        .expect("read");
    assert!(got == data, "the stalled stream arrived altered");
}

#[tokio::test]
async fn vectored_writes_arrive_joined_and_in_order() {
    let pki = pki(rustls::DEFAULT_VERSIONS);
    let (mut server, mut client) = pair(&pki).await;
    assert!(tokio::io::AsyncWrite::is_write_vectored(&server));
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n".to_vec();
    let body = pattern(70_000);
    let mut expected = head.clone();
    expected.extend_from_slice(&body);
    let mut sent = 0;
    while sent < expected.len() {
        // The head (or what is left of it), an empty slice, then the body's rest.
        let (h, b) = if sent < head.len() {
            (&head[sent..], &body[..])
        } else {
            (&head[..0], &body[sent - head.len()..])
        };
        let slices = [
            std::io::IoSlice::new(h),
            std::io::IoSlice::new(&[]),
            std::io::IoSlice::new(b),
        ];
        let n = within(server.write_vectored(&slices)).await.expect("write");
        assert!(n > 0);
        sent += n;
    }
    server.flush().await.expect("flush");
    let mut got = vec![0u8; expected.len()];
    within(client.read_exact(&mut got)).await.expect("read");
    assert!(got == expected);
}

/// A transport that counts the writes that handed it bytes (each one a system call on a real
/// socket, and a segment the peer wakes up for).
struct CountedWrites {
    tcp: TcpStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncRead for CountedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// One TLS 1.3 connection as a web client makes it: handshake, a request, the response, with
/// the server's writes counted; the client's handshake kind and the tickets it received.
async fn request_response(pki: &Pki, client: &TlsConnector) -> (usize, rustls::HandshakeKind, u32) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server.clone();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = writes.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let io = CountedWrites {
            tcp,
            writes: counted,
        };
        let mut tls = TlsStream::accept(io, config, Vec::new())
            .await
            .expect("server handshake");
        // An HTTP server flushes whenever it looks for work, before any response exists.
        tls.flush().await.expect("flush");
        let mut request = [0u8; 4];
        tls.read_exact(&mut request).await.expect("request");
        tls.flush().await.expect("flush");
        tls.write_all(b"response").await.expect("response");
        tls.flush().await.expect("flush");
        tls
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut tls = within(client.connect(ServerName::try_from("localhost").expect("name"), tcp))
        .await
        .expect("client handshake");
    tls.write_all(b"GET ").await.expect("request");
    let mut response = [0u8; 8];
    within(tls.read_exact(&mut response))
        .await
        .expect("response");
    assert_eq!(&response, b"response");
    let _server = within(server).await.expect("join");
    let conn = tls.get_ref().1;
    (
        writes.load(std::sync::atomic::Ordering::Relaxed),
        conn.handshake_kind().expect("handshake done"),
        conn.tls13_tickets_received(),
    )
}

#[tokio::test]
async fn session_tickets_leave_with_the_first_response_and_resume() {
    let pki = pki(&[&rustls::version::TLS13]);
    let client = TlsConnector::from(pki.client.clone());
    // Two writes in all: the handshake's flight, then the tickets and the response in one;
    // the tickets still arrive first and work.
    let (writes, kind, tickets) = request_response(&pki, &client).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert_eq!(tickets, 2, "the client did not get the session tickets");
    assert_eq!(writes, 2, "tickets sent in a segment of their own");
    let (writes, kind, tickets) = request_response(&pki, &client).await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert_eq!(tickets, 2);
    assert_eq!(writes, 2);
}

#[tokio::test]
async fn a_tls_1_2_servers_last_flight_is_not_held() {
    // In a full TLS 1.2 handshake the client waits for the server's Finished, which is the
    // server's last flight: holding it would stall both sides.
    let pki = pki(&[&rustls::version::TLS12]);
    let (mut server, mut client) = within(pair(&pki)).await;
    round_trip(&mut server, &mut client).await;
}
