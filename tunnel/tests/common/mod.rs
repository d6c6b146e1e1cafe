//! What the tunnel's tests share: a self-signed certificate and the TLS configurations of
//! both ends built on it with netwall's provider.

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
