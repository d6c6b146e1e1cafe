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
//!
//! The TLS 1.3 key schedule derives some twenty secrets and keys per handshake with HKDF.
//! The provider's HKDF keys HMAC afresh for every expansion (two extra hash compressions, and
//! aws-lc's HMAC set-up, each time); `ops/profile handshakes gateway` put HKDF at 19 % of
//! the gateway's CPU per new connection. The suites here are the provider's own with one
//! change: HKDF over aws-lc-rs's HMAC with the key set up once per secret
//! ([`rustls::crypto::tls13::HkdfUsingHmac`]), shown equal to the provider's by a test.

use std::sync::{Arc, OnceLock};

use ::aws_lc_rs::hmac as aws_lc_rs_hmac;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, hmac};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

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
/// forward-secret only) in its order, their TLS 1.3 key schedule on HMAC keyed once per
/// secret, and [`KX_GROUPS`].
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: cipher_suites().to_vec(),
        kx_groups: KX_GROUPS.to_vec(),
        ..aws_lc_rs::default_provider()
    })
}

/// The provider's default suites, TLS 1.3 ones with the key schedule below (built once).
fn cipher_suites() -> &'static [SupportedCipherSuite] {
    static SUITES: OnceLock<Vec<SupportedCipherSuite>> = OnceLock::new();
    SUITES.get_or_init(|| {
        aws_lc_rs::DEFAULT_CIPHER_SUITES
            .iter()
            .map(|s| with_keyed_hkdf(*s))
            .collect()
    })
}

/// `suite` with HKDF on keyed HMAC, if it is a TLS 1.3 suite of a hash offered here.
fn with_keyed_hkdf(suite: SupportedCipherSuite) -> SupportedCipherSuite {
    let SupportedCipherSuite::Tls13(t) = suite else {
        return suite;
    };
    let hkdf: &'static dyn Hkdf = match t.common.hash_provider.algorithm() {
        HashAlgorithm::SHA256 => &HKDF_SHA256,
        HashAlgorithm::SHA384 => &HKDF_SHA384,
        _ => return suite,
    };
    // Built once per process (see `cipher_suites`); a suite must live as long as rustls.
    SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: t.common.suite,
            hash_provider: t.common.hash_provider,
            confidentiality_limit: t.common.confidentiality_limit,
        },
        hkdf_provider: hkdf,
        aead_alg: t.aead_alg,
        quic: t.quic,
    })))
}

/// HKDF-SHA-256 for the TLS 1.3 key schedule, on [`KeyedHmac`].
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
/// HKDF-SHA-384 for the TLS 1.3 key schedule, on [`KeyedHmac`].
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);
static HMAC_SHA256: KeyedHmac = KeyedHmac(aws_lc_rs_hmac::HMAC_SHA256);
static HMAC_SHA384: KeyedHmac = KeyedHmac(aws_lc_rs_hmac::HMAC_SHA384);

/// HMAC whose key is set up once: aws-lc-rs keeps the keyed state, and each signature starts
/// from a copy of it.
struct KeyedHmac(aws_lc_rs_hmac::Algorithm);

impl hmac::Hmac for KeyedHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn hmac::Key> {
        Box::new(KeyedHmacKey(aws_lc_rs_hmac::Key::new(self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

struct KeyedHmacKey(aws_lc_rs_hmac::Key);

impl hmac::Key for KeyedHmacKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> hmac::Tag {
        let mut ctx = aws_lc_rs_hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        hmac::Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

/// A signing key for a certificate from its DER private key (ECDSA, Ed25519 or RSA), with
/// the same provider.
pub fn signing_key(
    der: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    aws_lc_rs::sign::any_supported_type(der)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rustls::crypto::tls13::OkmBlock;

    use super::*;

    /// Every derivation the key schedule makes, on random inputs, is the same as the
    /// provider's own HKDF gives.
    #[test]
    fn keyed_hkdf_derives_exactly_what_the_providers_hkdf_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut checked = 0;
        for suite in aws_lc_rs::DEFAULT_CIPHER_SUITES {
            let (SupportedCipherSuite::Tls13(theirs), SupportedCipherSuite::Tls13(ours)) =
                (*suite, with_keyed_hkdf(*suite))
            else {
                continue;
            };
            let (theirs, ours) = (theirs.hkdf_provider, ours.hkdf_provider);
            assert!(!std::ptr::addr_eq(theirs, ours), "the suite kept its HKDF");
            for _ in 0..200 {
                let mut bytes = |max: usize| {
                    let mut v = vec![0u8; rng.random_range(0..=max)];
                    rng.fill(&mut v[..]);
                    v
                };
                let (salt, secret, info, other) = (bytes(80), bytes(80), bytes(100), bytes(20));
                // An output block of the hash, as the key schedule's secrets are.
                let mut okm = vec![0u8; theirs.extract_from_zero_ikm(None).hash_len()];
                rng.fill(&mut okm[..]);
                let len = rng.random_range(1..=255);
                let mut a = vec![0u8; len];
                let mut b = vec![0u8; len];
                let expanders = [
                    (
                        theirs.extract_from_secret(Some(&salt), &secret),
                        ours.extract_from_secret(Some(&salt), &secret),
                    ),
                    (
                        theirs.extract_from_zero_ikm(Some(&salt)),
                        ours.extract_from_zero_ikm(Some(&salt)),
                    ),
                    (
                        theirs.expander_for_okm(&OkmBlock::new(&okm)),
                        ours.expander_for_okm(&OkmBlock::new(&okm)),
                    ),
                ];
                for (x, y) in &expanders {
                    x.expand_slice(&[&info, &other], &mut a).expect("theirs");
                    y.expand_slice(&[&info, &other], &mut b).expect("ours");
                    assert_eq!(a, b, "expansion to {len} bytes differs");
                    assert_eq!(
                        x.expand_block(&[&info]).as_ref(),
                        y.expand_block(&[&info]).as_ref()
                    );
                }
                let key = OkmBlock::new(&okm);
                assert_eq!(
                    theirs.hmac_sign(&key, &info).as_ref(),
                    ours.hmac_sign(&key, &info).as_ref()
                );
                checked += 1;
            }
        }
        assert!(checked >= 400, "both TLS 1.3 hashes were checked");
    }
}
