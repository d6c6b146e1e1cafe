//! WebSockets terminated at the edge and relayed per message through the tunnel, over real
//! TLS and QUIC: echo, size, rate, JSON, origin, per-IP limits, heartbeats, closes both ways,
//! shutdown, compression and 1,000 concurrent connections.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use netwall_tests::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yawc::{Frame, OpCode, Options};

struct Setup {
    pki: Pki,
    gateway: netwall_gateway::RunningGateway,
    name: String,
    _connector: netwall_connector::RunningConnector,
}

/// A gateway whose route `app.test/` carries `ws_policy` lines in `[route.websocket]`, and a
/// connector in front of a sample service named `name`.
async fn setup(name: &str, ws_policy: &str) -> Setup {
    init_logs();
    // Per-service statistics are kept by name: one name per transport keeps the runs of a
    // test over each transport apart.
    let name = &match via() {
        Via::Quic => name.to_owned(),
        other => format!("{name}-{other:?}"),
    };
    let pki = Pki::new();
    let sample = start_sample(name).await;
    let route = format!(
        "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n[route.websocket]\n{ws_policy}\n"
    );
    let (gateway, connector) =
        start_stack(&pki, &route, &format!("web = \"http://{sample}\"")).await;
    Setup {
        pki,
        gateway,
        name: name.to_owned(),
        _connector: connector,
    }
}

impl Setup {
    async fn open(&self, headers: &[(&str, &str)]) -> Result<Wss, u16> {
        self.open_with(headers, Options::default()).await
    }

    /// A WebSocket to `/ws` with the client's own `options` (compression, limits).
    async fn open_with(&self, headers: &[(&str, &str)], options: Options) -> Result<Wss, u16> {
        wss(
            self.gateway.https_addr,
            &self.pki.ca_der,
            "wss://app.test/ws",
            headers,
            options,
        )
        .await
    }

    async fn metrics(&self) -> String {
        metrics_text(self.gateway.admin_addr.expect("admin")).await
    }

    async fn wait_metric(&self, sample: &str, value: f64) {
        let admin = self.gateway.admin_addr.expect("admin");
        let sample = sample.to_owned();
        wait_until(Duration::from_secs(10), &sample.clone(), || {
            let sample = sample.clone();
            async move { metric(&metrics_text(admin).await, &sample) == value }
        })
        .await;
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn messages_are_echoed_through_the_tunnel_and_counted() {
        let s = setup("ws-echo", "").await;
        let mut ws = s.open(&[]).await.expect("accepted");
        ws.send(Frame::text("hello through the tunnel"))
            .await
            .expect("send");
        let f = next_message(&mut ws).await;
        assert_eq!(
            (f.opcode(), f.payload().as_ref()),
            (OpCode::Text, &b"hello through the tunnel"[..])
        );
        let blob = Bytes::from((0..60_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        ws.send(Frame::binary(blob.clone())).await.expect("send");
        let f = next_message(&mut ws).await;
        assert_eq!((f.opcode(), f.payload()), (OpCode::Binary, &blob));

        let m = s.metrics().await;
        assert_eq!(
            metric(&m, "netwall_websocket_connections{route=\"app.test/\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric(&m, "netwall_websocket_opened_total{route=\"app.test/\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric(
                &m,
                "netwall_websocket_messages_total{direction=\"to_service\"}"
            ),
            2.0,
            "{m}"
        );
        assert_eq!(
            metric(
                &m,
                "netwall_websocket_messages_total{direction=\"to_client\"}"
            ),
            2.0,
            "{m}"
        );

        ws.send(Frame::close(yawc::close::CloseCode::Normal, "bye"))
            .await
            .expect("close");
        s.wait_metric(
            "netwall_websocket_closed_total{route=\"app.test/\",code=\"1000\"}",
            1.0,
        )
        .await;
        s.wait_metric("netwall_websocket_connections{route=\"app.test/\"}", 0.0)
            .await;
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn a_message_over_the_limit_closes_1009_and_never_reaches_the_service() {
        let s = setup("ws-size", "max_message_bytes = 10240").await;
        let mut ws = s.open(&[]).await.expect("accepted");
        ws.send(Frame::binary(vec![1u8; 5 * 1024]))
            .await
            .expect("send");
        assert_eq!(next_message(&mut ws).await.payload().len(), 5 * 1024);
        ws.send(Frame::binary(vec![2u8; 20 * 1024]))
            .await
            .expect("send");
        assert_eq!(
            close_code(&mut ws, Duration::from_secs(5)).await,
            Some(1009)
        );
        // The service saw only the first message.
        assert_eq!(netwall_tests::sample::ws_stats(&s.name), (1, 5 * 1024));
        s.wait_metric("netwall_rejections_total{reason=\"size\"}", 1.0)
            .await;
    }
}

#[tokio::test]
async fn a_fragmented_message_over_the_limit_is_refused_too() {
    let s = setup(
        "ws-fragments",
        "max_message_bytes = 10240\nmax_frame_bytes = 4096",
    )
    .await;
    let mut ws = s.open(&[]).await.expect("accepted");
    // Three 4 KiB fragments: each frame is allowed, the message is not.
    ws.send(Frame::binary(vec![3u8; 4096]).with_fin(false))
        .await
        .expect("send");
    ws.send(Frame::continuation(vec![3u8; 4096]).with_fin(false))
        .await
        .expect("send");
    ws.send(Frame::continuation(vec![3u8; 4096]))
        .await
        .expect("send");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1009)
    );
    assert_eq!(netwall_tests::sample::ws_stats(&s.name), (0, 0));
}

/// The limit is on the message the service would receive: a compressed message a few KiB on
/// the wire that inflates past it (a decompression bomb) closes 1009 like any other.
#[tokio::test]
async fn a_compressed_message_that_inflates_past_the_limit_closes_1009() {
    let s = setup("ws-bomb", "max_message_bytes = 10240").await;
    let mut ws = s
        .open_with(&[], Options::default().with_low_latency_compression())
        .await
        .expect("accepted");
    // Compressed, 9,000 bytes pass.
    ws.send(Frame::text("a".repeat(9000))).await.expect("send");
    assert_eq!(next_message(&mut ws).await.payload().len(), 9000);
    // A megabyte of one letter is some 1 KiB compressed.
    ws.send(Frame::text("b".repeat(1 << 20)))
        .await
        .expect("send");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1009)
    );
    assert_eq!(netwall_tests::sample::ws_stats(&s.name), (1, 9000));
}

#[tokio::test]
async fn non_json_text_closes_1007_when_json_is_required() {
    let s = setup("ws-json", "text_must_be_json = true").await;
    let mut ws = s.open(&[]).await.expect("accepted");
    ws.send(Frame::text(r#"{"op":"subscribe","topics":["a"]}"#))
        .await
        .expect("send");
    assert_eq!(
        next_message(&mut ws).await.payload().as_ref(),
        br#"{"op":"subscribe","topics":["a"]}"#
    );
    ws.send(Frame::text("not json at all")).await.expect("send");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1007)
    );
    assert_eq!(netwall_tests::sample::ws_stats(&s.name).0, 1);
    s.wait_metric("netwall_rejections_total{reason=\"not_json\"}", 1.0)
        .await;
}

#[tokio::test]
async fn too_many_messages_per_second_close_1008() {
    let s = setup("ws-rate", "messages_per_second = 5").await;
    let mut ws = s.open(&[]).await.expect("accepted");
    for i in 0..20 {
        if ws.send(Frame::text(format!("m{i}"))).await.is_err() {
            break;
        }
    }
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1008)
    );
    let (received, _) = netwall_tests::sample::ws_stats(&s.name);
    assert!(
        (1..=5).contains(&received),
        "the service got {received} messages under a limit of 5/s"
    );
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403_with_code_4009() {
    let s = setup(
        "ws-origin",
        "allowed_origins = [\"https://app.example.com\", \"*.trusted.test\"]",
    )
    .await;
    for origin in [
        "https://app.example.com",
        "https://app.example.com:443",
        "https://x.trusted.test",
        "http://y.trusted.test:8080",
    ] {
        let ws = s.open(&[("origin", origin)]).await;
        assert!(ws.is_ok(), "{origin} should be allowed");
    }
    for origin in [
        Some("https://evil.test"),
        Some("http://app.example.com"),
        Some("https://app.example.com.evil.test"),
        Some("https://app.example.com:8443"),
        None,
    ] {
        let origin_line = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin_line}\r\n"
        );
        let (mut tls, head) = answer_to(&s, &req).await;
        assert!(
            head.starts_with("http/1.1 403 forbidden\r\n"),
            "{origin:?}: {head}"
        );
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .expect("content-length");
        let mut body = vec![0u8; length];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut body))
            .await
            .expect("the body in time")
            .expect("read");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.ends_with(r#"{"code":4009,"message":"Origin not allowed"}"#),
            "{origin:?}: {text}"
        );
    }
    s.wait_metric("netwall_rejections_total{reason=\"origin\"}", 5.0)
        .await;
}

#[tokio::test]
async fn connections_per_ip_are_capped_with_429() {
    let s = setup("ws-per-ip", "max_connections_per_ip = 3").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(s.open(&[]).await.expect("under the limit"));
    }
    assert_eq!(s.open(&[]).await.err(), Some(429));
    s.wait_metric("netwall_rejections_total{reason=\"per_ip\"}", 1.0)
        .await;
    // Closing one frees its slot.
    let mut first = open.remove(0);
    first
        .send(Frame::close(yawc::close::CloseCode::Normal, ""))
        .await
        .expect("close");
    s.wait_metric("netwall_websocket_connections{route=\"app.test/\"}", 2.0)
        .await;
    assert!(s.open(&[]).await.is_ok());
}

#[tokio::test]
async fn a_silent_client_is_closed_by_the_heartbeat_and_a_live_one_is_not() {
    let s = setup(
        "ws-heartbeat",
        "heartbeat_interval = \"200ms\"\nheartbeat_timeout = \"300ms\"",
    )
    .await;
    // This client answers pings (the WebSocket layer pongs while it reads).
    let mut live = s.open(&[]).await.expect("accepted");
    let mut pings = 0;
    while pings < 4 {
        let f = tokio::time::timeout(Duration::from_secs(5), live.next_frame())
            .await
            .expect("ping in time")
            .expect("frame");
        assert_ne!(
            f.opcode(),
            OpCode::Close,
            "a client that answers pings was closed"
        );
        if f.opcode() == OpCode::Ping {
            pings += 1;
        }
    }
    live.send(Frame::text("still here")).await.expect("send");
    assert_eq!(
        next_message(&mut live).await.payload().as_ref(),
        b"still here"
    );
    live.send(Frame::close(yawc::close::CloseCode::Normal, "done"))
        .await
        .expect("close");
    s.wait_metric("netwall_websocket_connections{route=\"app.test/\"}", 0.0)
        .await;

    // This one never reads, so it never answers.
    let mut silent = s.open(&[]).await.expect("accepted");
    s.wait_metric(
        "netwall_websocket_closed_total{route=\"app.test/\",code=\"4004\"}",
        1.0,
    )
    .await;
    assert_eq!(
        close_code(&mut silent, Duration::from_secs(5)).await,
        Some(4004)
    );
    s.wait_metric("netwall_rejections_total{reason=\"heartbeat\"}", 1.0)
        .await;
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn closes_travel_both_ways_and_refusals_keep_their_status() {
        let s = setup("ws-close", "").await;
        let mut ws = s.open(&[]).await.expect("accepted");
        ws.send(Frame::text("close 4321")).await.expect("send");
        assert_eq!(
            close_code(&mut ws, Duration::from_secs(5)).await,
            Some(4321)
        );

        let refused = wss(
            s.gateway.https_addr,
            &s.pki.ca_der,
            "wss://app.test/ws/refuse",
            &[],
            Options::default(),
        )
        .await;
        assert_eq!(refused.err(), Some(403));
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn shutdown_closes_every_websocket_with_1001() {
        let s = setup("ws-shutdown", "").await;
        let mut sockets = Vec::new();
        for _ in 0..5 {
            sockets.push(s.open(&[]).await.expect("accepted"));
        }
        let Setup { gateway, .. } = s;
        let drained = tokio::spawn(gateway.shutdown());
        for ws in &mut sockets {
            assert_eq!(close_code(ws, Duration::from_secs(5)).await, Some(1001));
        }
        assert!(
            drained.await.expect("shutdown task"),
            "the gateway drained within its deadline"
        );
    }
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn permessage_deflate_is_negotiated_with_a_bounded_window() {
        let s = setup("ws-deflate", "compression_window_bits = 10").await;
        // RFC 7692: the answer carries only parameters the accepted offer allows; of several
        // offers, the first acceptable one wins.
        let cases: &[(&str, Option<&str>)] = &[
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            ("permessage-deflate", Some("permessage-deflate")),
            (
                "permessage-deflate; server_max_window_bits=15",
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            ("permessage-deflate; server_max_window_bits=8", None),
            (
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover",
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            ("permessage-deflate; bogus", None),
        ];
        for (offer, want) in cases {
            let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
            tls.write_all(format!("GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n").as_bytes()).await.expect("write");
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .expect("answer")
                .expect("read");
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 101 switching protocols\r\n"),
                "{offer}: {head}"
            );
            let ext = head
                .lines()
                .find_map(|l| l.strip_prefix("sec-websocket-extensions: "))
                .map(str::trim);
            assert_eq!(ext, *want, "{offer}: {head}");
        }

        // And compressed messages round-trip.
        let mut ws = s
            .open_with(&[], Options::default().with_low_latency_compression())
            .await
            .expect("accepted");
        let text = "compressible ".repeat(2000);
        ws.send(Frame::text(text.clone())).await.expect("send");
        assert_eq!(
            next_message(&mut ws).await.payload().as_ref(),
            text.as_bytes()
        );
    }
}

#[tokio::test]
async fn the_101st_connection_from_one_ip_is_refused_by_default() {
    let s = setup("ws-hundred", "").await;
    let opening: Vec<_> = (0..100).map(|_| s.open(&[])).collect();
    let sockets: Vec<Wss> = futures_util::future::join_all(opening)
        .await
        .into_iter()
        .map(|r| r.expect("within the default limit"))
        .collect();
    assert_eq!(sockets.len(), 100);
    assert_eq!(s.open(&[]).await.err(), Some(429));
}

#[tokio::test]
async fn messages_that_break_the_json_schema_close_1008() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, r#"{"type":"object","required":["op"],"properties":{"op":{"enum":["subscribe","unsubscribe"]}}}"#).expect("write");
    let s = setup(
        "ws-schema",
        &format!("json_schema = \"{}\"", schema.display()),
    )
    .await;
    let mut ws = s.open(&[]).await.expect("accepted");
    ws.send(Frame::text(r#"{"op":"subscribe"}"#))
        .await
        .expect("send");
    assert_eq!(
        next_message(&mut ws).await.payload().as_ref(),
        br#"{"op":"subscribe"}"#
    );
    ws.send(Frame::text(r#"{"op":"delete"}"#))
        .await
        .expect("send");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1008)
    );
    assert_eq!(
        netwall_tests::sample::ws_stats(&s.name).0,
        1,
        "the invalid message reached the service"
    );
    s.wait_metric("netwall_rejections_total{reason=\"schema\"}", 1.0)
        .await;
    // Not JSON at all is 1007.
    let mut ws = s.open(&[]).await.expect("accepted");
    ws.send(Frame::text("hello")).await.expect("send");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(1007)
    );
}

#[tokio::test]
async fn client_pings_are_answered_at_the_edge() {
    let s = setup("ws-ping", "").await;
    let mut ws = s.open(&[]).await.expect("accepted");
    ws.send(Frame::ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let f = ws.next_frame().await.expect("frame");
            if f.opcode() == OpCode::Pong {
                return f;
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(pong.payload().as_ref(), b"are you there");
    assert_eq!(
        netwall_tests::sample::ws_stats(&s.name).0,
        0,
        "the ping went to the service"
    );
}

netwall_tests::over_every_transport! {
    #[tokio::test]
    async fn a_service_that_never_accepts_the_websocket_gets_504_in_time() {
        init_logs();
        let pki = Pki::new();
        // A "service" that accepts TCP connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr");
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = silent.accept().await {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    // Reads the handshake and then nothing, until the connector lets go.
                    let mut sink = Vec::new();
                    let _ = tcp.read_to_end(&mut sink).await;
                    let _ = closed_tx.send(());
                });
            }
        });
        let route = "[[route]]\nhost = \"app.test\"\ntunnel = \"app\"\nservice = \"web\"\n[route.websocket]\nopen_timeout = \"400ms\"\n";
        let (gateway, _c) = start_stack(&pki, route, &format!("web = \"http://{addr}\"")).await;
        let started = std::time::Instant::now();
        let refused = wss(
            gateway.https_addr,
            &pki.ca_der,
            "wss://app.test/ws",
            &[],
            Options::default(),
        )
        .await;
        assert_eq!(refused.err(), Some(504));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        // The connector gives up with the gateway: it does not hold a connection (and a task)
        // to the silent service for as long as the service stays silent.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the connector closed its connection to the silent service")
            .expect("signal");
    }
}

/// Open a WebSocket by hand over raw TLS: the bytes after the `101` are frames.
async fn raw_ws(s: &Setup) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (tls, head) = answer_to(s, "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    tls
}

/// Send `head` (a whole request head) over a new TLS connection to the gateway and read the
/// answer's head, lower-cased; the connection stays open for what follows a `101`.
async fn answer_to(
    s: &Setup,
    head: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
) {
    let mut tls = raw_tls(s.gateway.https_addr, &s.pki.ca_der, "app.test").await;
    tls.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut b))
            .await
            .expect("an answer in time")
            .expect("read");
        got.push(b[0]);
    }
    (tls, String::from_utf8_lossy(&got).to_lowercase())
}

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![first];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Everything the gateway sends until it closes the connection (or `limit` passes).
async fn until_closed(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, tls.read_to_end(&mut out))
        .await
        .is_ok();
    (out, closed)
}

/// The frames in `bytes` from the gateway (unmasked): (first byte, payload) each.
fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let (len, head) = match bytes[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 => panic!("unexpectedly large frame"),
            n => (usize::from(n), 2),
        };
        assert_eq!(bytes[at + 1] & 0x80, 0, "server frames are not masked");
        let end = (at + head + len).min(bytes.len());
        out.push((bytes[at], bytes[at + head..end].to_vec()));
        at = end;
    }
    out
}

fn close_frame_code(frame: &(u8, Vec<u8>)) -> u16 {
    assert_eq!(frame.0, 0x88, "not a close frame: {frame:?}");
    u16::from_be_bytes([frame.1[0], frame.1[1]])
}

#[tokio::test]
async fn a_reserved_opcode_closes_1002_once_however_it_arrives() {
    let s = setup("ws-reserved", "").await;
    for first in [0x83u8, 0x8b, 0x07] {
        for bytewise in [false, true] {
            let mut tls = raw_ws(&s).await;
            // A valid message first, then the reserved opcode.
            let mut bytes = client_frame(0x81, b"hello");
            bytes.extend(client_frame(first, b"x"));
            if bytewise {
                for b in &bytes {
                    tls.write_all(&[*b]).await.expect("write");
                    tls.flush().await.expect("flush");
                }
            } else {
                tls.write_all(&bytes).await.expect("write");
            }
            let (out, closed) = until_closed(&mut tls, Duration::from_secs(5)).await;
            assert!(closed, "the gateway did not close the connection");
            let frames = server_frames(&out);
            let closes: Vec<_> = frames.iter().filter(|f| f.0 & 0x0f == 0x8).collect();
            assert_eq!(
                closes.len(),
                1,
                "{first:#x} bytewise={bytewise}: {frames:?}"
            );
            assert_eq!(
                close_frame_code(closes[0]),
                1002,
                "{first:#x} bytewise={bytewise}"
            );
        }
    }
}

#[tokio::test]
async fn a_client_close_is_answered_and_the_edge_closes_tcp_first() {
    let s = setup("ws-close", "").await;
    for code in [1000u16, 1001, 3000, 4999] {
        let mut tls = raw_ws(&s).await;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        tls.write_all(&client_frame(0x88, &payload))
            .await
            .expect("write");
        // The answer, then TCP closed by the gateway, well within the close timeout.
        let (out, closed) = until_closed(&mut tls, Duration::from_secs(3)).await;
        assert!(
            closed,
            "the gateway left the connection open after the close handshake"
        );
        let frames = server_frames(&out);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(close_frame_code(&frames[0]), code);
    }
    // An invalid close code is a protocol error, answered with 1002.
    let mut tls = raw_ws(&s).await;
    tls.write_all(&client_frame(0x88, &999u16.to_be_bytes()))
        .await
        .expect("write");
    let (out, closed) = until_closed(&mut tls, Duration::from_secs(3)).await;
    assert!(closed);
    let frames = server_frames(&out);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(close_frame_code(&frames[0]), 1002);
}

#[tokio::test]
async fn a_ping_flood_closes_1008_like_a_message_flood() {
    let s = setup("ws-pings", "messages_per_second = 5").await;
    let mut tls = raw_ws(&s).await;
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.extend(client_frame(0x89, b"p"));
    }
    tls.write_all(&flood).await.expect("write");
    let (out, closed) = until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(closed);
    let frames = server_frames(&out);
    let close_at = frames
        .iter()
        .position(|f| f.0 == 0x88)
        .expect("a close frame");
    assert_eq!(close_frame_code(&frames[close_at]), 1008);
    // Pings the edge answered before it closed: no more than the limit allows.
    let pongs = frames[..close_at].iter().filter(|f| f.0 == 0x8a).count();
    assert!(pongs <= 6, "{pongs} pings answered under a limit of 5/s");
    s.wait_metric("netwall_rejections_total{reason=\"rate\"}", 1.0)
        .await;
}

netwall_tests::over_every_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_of_exactly_the_maximum_is_relayed() {
        const MAX: usize = 16 * 1024 * 1024;
        let s = setup(
            "ws-max",
            &format!("max_message_bytes = {MAX}\ncompression = false"),
        )
        .await;
        let mut ws = s
            .open_with(
                &[],
                Options::default()
                    .with_max_payload_read(MAX + 1)
                    .with_max_read_buffer(MAX + 1),
            )
            .await
            .expect("accepted");
        let message = Bytes::from(vec![7u8; MAX]);
        ws.send(Frame::binary(message.clone())).await.expect("send");
        let echo = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let f = ws.next_frame().await.expect("frame");
                if matches!(f.opcode(), OpCode::Binary | OpCode::Close) {
                    return f;
                }
            }
        })
        .await
        .expect("the echo in time");
        assert_eq!(echo.opcode(), OpCode::Binary, "{:?}", echo.close_code());
        assert_eq!(echo.payload().len(), MAX);
        assert!(echo.payload().iter().all(|b| *b == 7));
    }
}

/// The opening handshake is checked before the edge answers `101` (RFC 6455 §4.2.1): the
/// service never sees the client's, so a malformed one must stop here, counted and logged.
#[tokio::test]
async fn malformed_opening_handshakes_are_refused_before_the_101() {
    let s = setup("ws-handshake", "").await;
    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";
    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("valid", format!("GET {UPGRADE}{KEY}{VERSION}"), "101"),
        (
            "POST",
            format!("POST {UPGRADE}{KEY}{VERSION}Content-Length: 0\r\n"),
            "400",
        ),
        (
            "no Connection: upgrade",
            format!("GET Upgrade: websocket\r\n{KEY}{VERSION}"),
            "400",
        ),
        (
            "key not base64 of 16 bytes",
            format!("GET {UPGRADE}Sec-WebSocket-Key: abc\r\n{VERSION}"),
            "400",
        ),
        (
            "two keys",
            format!("GET {UPGRADE}{KEY}{KEY}{VERSION}"),
            "400",
        ),
        ("no key", format!("GET {UPGRADE}{VERSION}"), "400"),
        (
            "version 8",
            format!("GET {UPGRADE}{KEY}Sec-WebSocket-Version: 8\r\n"),
            "426",
        ),
        ("no version", format!("GET {UPGRADE}{KEY}"), "426"),
    ];
    for (name, request, want) in &cases {
        let (method, fields) = request.split_once(' ').expect("method");
        let head = format!("{method} /ws HTTP/1.1\r\nHost: app.test\r\n{fields}\r\n");
        let (_, text) = answer_to(&s, &head).await;
        assert!(
            text.starts_with(&format!("http/1.1 {want} ")),
            "{name}: {text}"
        );
        if *want == "426" {
            assert!(
                text.contains("sec-websocket-version: 13\r\n"),
                "{name}: {text}"
            );
        }
    }
    let refused = cases.iter().filter(|c| c.2 != "101").count() as f64;
    s.wait_metric(
        "netwall_rejections_total{reason=\"bad_handshake\"}",
        refused,
    )
    .await;
}

netwall_tests::over_every_transport! {
    /// The subprotocol the service chose reaches the client (a browser that offered some fails
    /// a WebSocket answered with none); one the client never offered is refused with 502.
    #[tokio::test]
    async fn the_subprotocol_the_service_chose_reaches_the_client() {
        let s = setup("ws-subprotocol", "").await;
        let open = |path: &'static str, offer: &'static str| {
            let offer = if offer.is_empty() {
                String::new()
            } else {
                format!("Sec-WebSocket-Protocol: {offer}\r\n")
            };
            let head = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n");
            let s = &s;
            async move { answer_to(s, &head).await }
        };
        let (mut tls, text) = open("/ws", "superchat, chat").await;
        assert!(text.starts_with("http/1.1 101 "), "{text}");
        assert!(text.contains("\r\nsec-websocket-protocol: chat\r\n"), "{text}");
        // Messages still cross on the WebSocket the connector opened itself.
        tls.write_all(&client_frame(0x81, b"hello")).await.expect("write");
        let mut frame = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut frame))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(&frame, b"\x81\x05hello");

        let (_, text) = open("/ws", "mqtt").await;
        assert!(text.starts_with("http/1.1 101 "), "{text}");
        assert!(!text.contains("sec-websocket-protocol"), "{text}");
        let (_, text) = open("/ws", "").await;
        assert!(!text.contains("sec-websocket-protocol"), "{text}");

        let (_, text) = open("/ws/wrong-protocol", "chat").await;
        assert!(text.starts_with("http/1.1 502 "), "{text}");
    }
}
