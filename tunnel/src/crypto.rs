//! The one cryptographic provider every TLS and QUIC configuration in netwall is built with.
//!
//! aws-lc-rs, measured against ring on an edge host (`ops/crypto-ab/run`: one thread, in
//! memory, CPU time only, TLS 1.3 with an ECDSA P-256 certificate):
//!
//! | per operation                          | ring      | aws-lc-rs |
//! |----------------------------------------|-----------|-----------|
//! | server CPU per full handshake, X25519  | 64–67 µs  | 46–47 µs  |
//! | AES-128-GCM 16 KiB TLS record, seal    | 7.7–8.4 GB/s | 12.6–13.8 GB/s |
//! | AES-128-GCM 16 KiB TLS record, open    | 7.0–7.5 GB/s | 10.1–11.3 GB/s |
//! | AES-128-GCM 1,200-byte QUIC packet     | 5.5 GB/s  | 5.7–6.1 GB/s |
//!
//! A new public connection costs the gateway ~30% less CPU in the handshake, bulk TLS
//! records ~40–70% less in the cipher; QUIC packets, where the fixed per-packet work
//! dominates, gain little. aws-lc-rs also carries the X25519MLKEM768 hybrid key exchange
//! (about 15 µs more per server handshake, still below ring's X25519 alone), which both
//! ends prefer: a tunnel recorded today stays unreadable to a future quantum computer.
//! Clients that offer only classical groups (X25519, P-256, P-384) are served as before.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};

/// Key-exchange groups in the order a netwall client offers them: the post-quantum hybrid
/// first, then the classical groups every TLS 1.3 peer has. A server chooses by the client's
/// order, so listing the hybrid costs a classical client nothing (no retry round trip).
pub const KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    kx_group::X25519MLKEM768,
    kx_group::X25519,
    kx_group::SECP256R1,
    kx_group::SECP384R1,
];

/// The provider: aws-lc-rs with its default cipher suites (AES-GCM and ChaCha20-Poly1305,
/// forward-secret only) and [`KX_GROUPS`].
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: KX_GROUPS.to_vec(),
        ..aws_lc_rs::default_provider()
    })
}

/// A signing key for a certificate from its DER private key (ECDSA, Ed25519 or RSA), with
/// the same provider.
pub fn signing_key(
    der: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    aws_lc_rs::sign::any_supported_type(der)
}
