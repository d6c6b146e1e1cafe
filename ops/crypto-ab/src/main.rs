//! ring against aws-lc-rs for what netwall's edge spends crypto on: full TLS 1.3 handshakes
//! as the server (ECDSA P-256 certificate, X25519; and X25519MLKEM768 on aws-lc-rs), TLS record protection and QUIC packet
//! protection, per cipher suite. One thread, in memory, CPU time only.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::Side;
use rustls::quic::{Keys, Version};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedCipherSuite};

/// How long each figure is measured for.
const RUN: Duration = Duration::from_secs(2);
/// A full-size QUIC payload on a 1,500-byte path.
const QUIC_PAYLOAD: usize = 1_200;
/// A full TLS record.
const RECORD: usize = 16 * 1024;

struct Side2 {
    name: &'static str,
    provider: fn() -> CryptoProvider,
    suites: [SupportedCipherSuite; 3],
    x25519: &'static dyn rustls::crypto::SupportedKxGroup,
}

fn sides() -> [Side2; 2] {
    use rustls::crypto::{aws_lc_rs as a, ring as r};
    [
        Side2 {
            name: "ring",
            provider: r::default_provider,
            suites: [
                r::cipher_suite::TLS13_AES_128_GCM_SHA256,
                r::cipher_suite::TLS13_AES_256_GCM_SHA384,
                r::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            x25519: r::kx_group::X25519,
        },
        Side2 {
            name: "aws-lc-rs",
            provider: a::default_provider,
            suites: [
                a::cipher_suite::TLS13_AES_128_GCM_SHA256,
                a::cipher_suite::TLS13_AES_256_GCM_SHA384,
                a::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            x25519: a::kx_group::X25519,
        },
    ]
}

fn configs(
    side: &Side2,
    suite: SupportedCipherSuite,
    kx: &'static dyn rustls::crypto::SupportedKxGroup,
    cert: &CertificateDer<'static>,
    key: &[u8],
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut provider = (side.provider)();
    provider.cipher_suites = vec![suite];
    provider.kx_groups = vec![kx];
    let provider = Arc::new(provider);
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .expect("server config");
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

/// Move every pending TLS byte from `from` to `to`; the time `to` spent processing them.
fn pump(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8]), wire: &mut Vec<u8>) {
    wire.clear();
    from(wire);
    if !wire.is_empty() {
        to(wire);
    }
}

/// Server CPU per full handshake, in microseconds.
fn handshake_us(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> f64 {
    let name = ServerName::try_from("localhost").expect("name");
    let mut server_time = Duration::ZERO;
    let mut n = 0u32;
    let start = Instant::now();
    let mut wire = Vec::with_capacity(8192);
    while start.elapsed() < RUN {
        let mut c = ClientConnection::new(client.clone(), name.clone()).expect("client");
        let t = Instant::now();
        let mut s = ServerConnection::new(server.clone()).expect("server");
        server_time += t.elapsed();
        while c.is_handshaking() || s.is_handshaking() {
            pump(
                &mut |w| {
                    while c.wants_write() {
                        c.write_tls(w).expect("client write");
                    }
                },
                &mut |b| {
                    let t = Instant::now();
                    let mut r = b;
                    while !r.is_empty() {
                        s.read_tls(&mut r).expect("server read");
                    }
                    s.process_new_packets().expect("server process");
                    server_time += t.elapsed();
                },
                &mut wire,
            );
            let t = Instant::now();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).expect("server write");
            }
            server_time += t.elapsed();
            if !wire.is_empty() {
                let mut r = &wire[..];
                while !r.is_empty() {
                    c.read_tls(&mut r).expect("client read");
                }
                c.process_new_packets().expect("client process");
            }
        }
        n += 1;
    }
    server_time.as_secs_f64() * 1e6 / f64::from(n)
}

/// Sealing and opening TLS records, MiB/s of plaintext each.
fn records(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (f64, f64) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut wire = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).expect("write");
        }
        let mut r = &wire[..];
        while !r.is_empty() {
            s.read_tls(&mut r).expect("read");
        }
        s.process_new_packets().expect("process");
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).expect("write");
        }
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).expect("read");
        }
        c.process_new_packets().expect("process");
    }
    let plain = vec![7u8; RECORD];
    let mut out = vec![0u8; RECORD];
    let (mut seal, mut open, mut bytes) = (Duration::ZERO, Duration::ZERO, 0u64);
    let start = Instant::now();
    while start.elapsed() < RUN {
        let t = Instant::now();
        s.writer().write_all(&plain).expect("plaintext");
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).expect("write");
        }
        seal += t.elapsed();
        let t = Instant::now();
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).expect("read");
            c.process_new_packets().expect("process");
        }
        let mut got = 0;
        while got < RECORD {
            got += c.reader().read(&mut out[got..]).expect("plaintext");
        }
        open += t.elapsed();
        bytes += RECORD as u64;
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    (mib / seal.as_secs_f64(), mib / open.as_secs_f64())
}

/// Protecting and unprotecting QUIC packets (payload and header), MiB/s of payload each.
fn quic(suite: SupportedCipherSuite) -> (f64, f64) {
    let Some(tls13) = suite.tls13() else {
        return (0.0, 0.0);
    };
    let Some(q) = tls13.quic_suite() else {
        return (0.0, 0.0);
    };
    let cid = [1u8; 8];
    let client = Keys::initial(Version::V1, q.suite, q.quic, &cid, Side::Client);
    let server = Keys::initial(Version::V1, q.suite, q.quic, &cid, Side::Server);
    let header = [0x40u8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1];
    let tag_len = 16;
    let mut packet = vec![0u8; QUIC_PAYLOAD + tag_len];
    let (mut seal, mut open, mut bytes) = (Duration::ZERO, Duration::ZERO, 0u64);
    let start = Instant::now();
    let mut pn = 0u64;
    while start.elapsed() < RUN {
        pn += 1;
        let mut hdr = header;
        let t = Instant::now();
        let payload = &mut packet[..QUIC_PAYLOAD];
        payload.fill(9);
        let tag = client
            .local
            .packet
            .encrypt_in_place(pn, &hdr, payload)
            .expect("seal");
        packet[QUIC_PAYLOAD..].copy_from_slice(tag.as_ref());
        let (first, rest) = hdr.split_at_mut(1);
        client
            .local
            .header
            .encrypt_in_place(&packet[4..20], &mut first[0], &mut rest[9..12])
            .expect("header");
        seal += t.elapsed();
        let t = Instant::now();
        let (first, rest) = hdr.split_at_mut(1);
        server
            .remote
            .header
            .decrypt_in_place(&packet[4..20], &mut first[0], &mut rest[9..12])
            .expect("header");
        let plain = server
            .remote
            .packet
            .decrypt_in_place(pn, &hdr, &mut packet)
            .expect("open");
        black_box(plain);
        open += t.elapsed();
        bytes += QUIC_PAYLOAD as u64;
    }
    let mib = bytes as f64 / (1024.0 * 1024.0);
    (mib / seal.as_secs_f64(), mib / open.as_secs_f64())
}

fn main() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert = cert.der().clone();
    let key = key.serialize_der();
    println!("provider suite handshake_server_us tls_seal_MiBs tls_open_MiBs quic_seal_MiBs quic_open_MiBs");
    for round in 0..2 {
        for side in sides() {
            for suite in side.suites {
                let (server, client) = configs(&side, suite, side.x25519, &cert, &key);
                let hs = handshake_us(&server, &client);
                let (ts, to) = records(&server, &client);
                let (qs, qo) = quic(suite);
                println!(
                    "{round} {} {:?} {hs:.1} {ts:.0} {to:.0} {qs:.0} {qo:.0}",
                    side.name,
                    suite.suite()
                );
            }
        }
        // What the post-quantum hybrid key exchange (aws-lc-rs only) adds to a handshake.
        let side = &sides()[1];
        let suite = side.suites[0];
        let (server, client) = configs(
            side,
            suite,
            rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
            &cert,
            &key,
        );
        println!(
            "{round} {}+X25519MLKEM768 {:?} {:.1} - - - -",
            side.name,
            suite.suite(),
            handshake_us(&server, &client)
        );
    }
}
