//! What the tunnel's tests share: a self-signed certificate and the TLS configurations of
//! both ends built on it with netwall's provider, and a bulk payload sent as `Data` frames.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A server and a client configuration for `localhost`, the client trusting only the
/// server's freshly made self-signed certificate.
pub struct Pki {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// A [`Pki`] speaking `versions`, with ALPN `server_alpn` and `client_alpn`.
pub fn pki(
    versions: &[&'static rustls::SupportedProtocolVersion],
    server_alpn: &[&[u8]],
    client_alpn: &[&[u8]],
) -> Pki {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let der = CertificateDer::from(cert.der().to_vec());
    let provider = netwall_tunnel::crypto::provider();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    server.alpn_protocols = server_alpn.iter().map(|p| p.to_vec()).collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();
    Pki {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// `len` patterned bytes written by `from` as `Data` frames from shared chunks of several
/// sizes (so the transport takes some whole and splits others at its flow-control window),
/// then `End`; what `to` read back from the `Data` frames, with what was sent.
pub async fn data_frames_cross(
    from: &netwall_tunnel::Conn,
    to: &netwall_tunnel::Conn,
    len: usize,
) -> (Vec<u8>, Vec<u8>) {
    use netwall_proto::{Codec, Frame};
    use netwall_tunnel::io::{FrameReader, FrameWriter};

    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let sent = bytes::Bytes::from(payload.clone());
    let stream = from.open().await.expect("open");
    let writer = tokio::spawn(async move {
        let mut w = FrameWriter::new(stream.send, Codec::default());
        let mut rest = sent;
        for size in [1, 1000, 70_000, 1 << 20].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let chunk = rest.split_to(size.min(rest.len()));
            w.send_data(chunk).await.expect("data");
        }
        w.send(&Frame::End(Vec::new())).await.expect("end");
        w.shutdown().await.expect("finish");
        stream.recv
    });
    let s = to.accept().await.expect("accept");
    let mut r = FrameReader::new(s.recv, Codec::default());
    let mut got = Vec::with_capacity(len);
    loop {
        match r.next().await.expect("a frame") {
            Some(Frame::Data(d)) => got.extend_from_slice(&d),
            Some(Frame::End(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let _recv = writer.await.expect("writer");
    (payload, got)
}
