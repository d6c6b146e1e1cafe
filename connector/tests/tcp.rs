//! Raw TCP services on the connector, over the in-memory tunnel pair: the gateway's side is
//! played by hand with frames, the service is a real TCP socket.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netwall_connector::config::ConnectorConfig;
use netwall_connector::replay::Services;
use netwall_proto::{Codec, Frame, ResetCode, TcpOpen};
use netwall_tunnel::io::{FrameReader, FrameWriter};
use netwall_tunnel::mux::MuxParams;
use netwall_tunnel::{StreamRead, StreamWrite, duplex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PARAMS: MuxParams = MuxParams {
    max_streams: 16,
    accept_backlog: 16,
};

/// One stream's two halves, and the gateway's end of the connection that carries it.
type Ends = (
    FrameWriter<StreamWrite>,
    FrameReader<StreamRead>,
    netwall_tunnel::Conn,
);

/// A connector offering `services`, and one stream opened to it as the gateway would.
async fn stream_to(services: &str) -> Ends {
    let toml =
        format!("tunnel = \"t\"\ngateways = [\"unix:/run/none.sock\"]\n[services]\n{services}\n");
    let resolved = ConnectorConfig::parse(
        Path::new("connector.toml"),
        &toml,
        Path::new("/"),
        Some("credential".into()),
    )
    .expect("config");
    let services = Arc::new(Services::new(&resolved, Codec::default()));
    let (connector, gateway) = duplex::pair(PARAMS).await.expect("pair");
    tokio::spawn(async move {
        while let Ok(s) = connector.accept().await {
            tokio::spawn(services.clone().replay(s));
        }
    });
    let s = gateway.open().await.expect("open");
    (
        FrameWriter::new(s.send, Codec::default()),
        FrameReader::new(s.recv, Codec::default()),
        gateway,
    )
}

fn open(service: &str, proxy_protocol: bool) -> Frame {
    Frame::TcpOpen(TcpOpen {
        service: service.into(),
        client_addr: "192.0.2.7:40000".into(),
        server_addr: "198.51.100.1:6379".into(),
        client_subject: "CN=admin".into(),
        proxy_protocol,
    })
}

async fn next(r: &mut FrameReader<StreamRead>) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), r.next())
        .await
        .expect("a frame in time")
        .expect("frame")
        .expect("stream open")
}

#[tokio::test]
async fn bytes_cross_both_ways_and_a_half_close_still_gets_the_answer() {
    // The service answers only after the client's FIN: what a client that shuts down its
    // sending side must still receive.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let service = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        s.write_all(format!("{} bytes", got.len()).as_bytes())
            .await
            .expect("answer");
        s.shutdown().await.expect("fin");
        got
    });
    let (mut w, mut r, _conn) = stream_to(&format!("db = \"tcp://{addr}\"")).await;
    w.send(&open("db", true)).await.expect("open");
    match next(&mut r).await {
        Frame::ResponseHead(h) => assert_eq!(h.status, 200),
        other => panic!("expected the connected head, got {other:?}"),
    }
    let payload = Bytes::from(vec![b'x'; 300_000]);
    w.send_data(payload.clone()).await.expect("data");
    w.send(&Frame::End(Vec::new())).await.expect("half-close");
    let mut answer = Vec::new();
    loop {
        match next(&mut r).await {
            Frame::Data(d) => answer.extend_from_slice(&d),
            Frame::End(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let got = service.await.expect("service");
    // The PROXY v2 header came first, naming the client and its certificate subject.
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&got[16..20], &[192, 0, 2, 7]);
    let header_len = 16 + usize::from(u16::from_be_bytes([got[14], got[15]]));
    assert!(got[..header_len].ends_with(b"CN=admin"));
    assert_eq!(&got[header_len..], &payload[..]);
    assert_eq!(answer, format!("{} bytes", got.len()).into_bytes());
}

#[tokio::test]
async fn an_unknown_or_unreachable_service_is_a_reset_with_its_code() {
    // A port that refuses: bound but never listening, and held for the whole test so no
    // other test's listener can be handed it meanwhile.
    let refusing = tokio::net::TcpSocket::new_v4().expect("socket");
    refusing
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = refusing.local_addr().expect("addr");
    let services = format!("web = \"http://{addr}\"\ndb = \"tcp://{addr}\"");
    for (service, code) in [
        ("db", ResetCode::ServiceUnavailable),
        ("web", ResetCode::UnknownService),
        ("nothing", ResetCode::UnknownService),
    ] {
        let (mut w, mut r, _conn) = stream_to(&services).await;
        w.send(&open(service, false)).await.expect("open");
        match next(&mut r).await {
            Frame::Reset(reset) => assert_eq!(reset.code, code, "{service}: {reset:?}"),
            other => panic!("{service}: expected a reset, got {other:?}"),
        }
    }
}
