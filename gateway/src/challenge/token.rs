//! The challenge's two signed tokens, as pure functions over bytes: no clock, no I/O.
//!
//! A **seed** is what a visitor must work on. It carries the difficulty, an expiry and 16
//! random bytes, and its HMAC also covers the visitor's network and the host, so a seed cannot
//! be made up, precomputed, used after it expires, or carried to another network or site.
//! The work is to find a decimal `nonce` such that `SHA-256(seed ":" nonce)` starts with at
//! least `difficulty` zero bits; [`verify_work`] recomputes that hash itself.
//!
//! A **pass** is the cookie a solved seed buys. Its HMAC covers its expiry, the visitor's
//! network, a hash of the `User-Agent` and the host. The gateway keeps no state per visitor.
//!
//! Both are `base64url(payload) "." base64url(mac)`; the payload starts with a version and the
//! id of the key that signed it, so keys rotate: the first key of a [`KeyRing`] signs, every
//! key verifies, and a token signed by a key no longer in the ring is refused.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Shortest signing key accepted: the HMAC-SHA-256 block of entropy an operator is told to
/// generate (`openssl rand -hex 32` gives 64 characters).
pub const MIN_KEY_BYTES: usize = 32;
/// Hardest puzzle a seed may carry: 2^32 hashes is hours in a browser.
pub const MAX_DIFFICULTY_BITS: u8 = 32;
/// Longest nonce a solution may carry: a `u64` in decimal.
const MAX_NONCE_DIGITS: usize = 20;

/// What tells the two tokens apart: version, payload length, the MAC's domain, and whether
/// the MAC covers the browser.
struct Kind {
    version: u8,
    len: usize,
    domain: &'static [u8],
    agent: bool,
}

/// Seed payload: version, key id, difficulty, expiry, random.
const SEED: Kind = Kind {
    version: 1,
    len: 1 + 4 + 1 + 8 + 16,
    domain: b"netwall challenge seed v1\0",
    agent: false,
};
/// Pass payload: version, key id, expiry.
const PASS: Kind = Kind {
    version: 1,
    len: 1 + 4 + 8,
    domain: b"netwall challenge pass v1\0",
    agent: true,
};

/// Why a seed, solution or pass was refused (logged and counted, never shown in detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format or version.
    #[error("malformed")]
    Malformed,
    /// Signed by a key that is not (or no longer) in the ring.
    #[error("unknown or retired key")]
    UnknownKey,
    /// The signature does not match (tampered, or for another network, browser or host).
    #[error("bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// The hash does not have the seed's difficulty of leading zero bits.
    #[error("insufficient work")]
    InsufficientWork,
}

/// One HMAC key and its id (the first 4 bytes of its SHA-256).
#[derive(Clone)]
struct Key {
    id: [u8; 4],
    secret: Vec<u8>,
}

/// The keys that sign and verify tokens: the first signs, all verify.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// A ring of `secrets`, the first of which signs. Each must be at least
    /// [`MIN_KEY_BYTES`] long.
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<KeyRing, String> {
        if secrets.is_empty() {
            return Err("no key".into());
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.into_iter().enumerate() {
            if secret.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "key {} is {} bytes; at least {MIN_KEY_BYTES} are needed",
                    i + 1,
                    secret.len()
                ));
            }
            let digest = Sha256::digest(&secret);
            let id = [digest[0], digest[1], digest[2], digest[3]];
            if keys.iter().any(|k: &Key| k.id == id) {
                return Err(format!("key {} is listed twice", i + 1));
            }
            keys.push(Key { id, secret });
        }
        Ok(KeyRing { keys })
    }

    /// A ring of one random key (a single gateway whose passes need not outlive it).
    pub fn random() -> KeyRing {
        let secret: [u8; 32] = rand::random();
        KeyRing {
            keys: vec![Key {
                id: rand::random(),
                secret: secret.to_vec(),
            }],
        }
    }

    fn signer(&self) -> &Key {
        // `new` and `random` never build an empty ring.
        &self.keys[0]
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// What a token is bound to: the client's network, the host, and (for passes) the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    network: [u8; 9],
    host: String,
    agent: [u8; 32],
}

impl Binding {
    /// The binding of a request from `ip` for `host` with `user_agent`.
    pub fn new(ip: IpAddr, host: &str, user_agent: &[u8]) -> Binding {
        Binding {
            network: client_network(ip),
            host: host.to_ascii_lowercase(),
            agent: Sha256::digest(user_agent).into(),
        }
    }
}

/// The network a client is in: its IPv4 /24 or IPv6 /64 (an address family tag first), so a
/// token survives a new address from the same provider pool but not a move to another network.
/// An IPv4-mapped IPv6 address counts as the IPv4 address.
pub fn client_network(ip: IpAddr) -> [u8; 9] {
    let mut out = [0u8; 9];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..4].copy_from_slice(&v4.octets()[..3]);
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..9].copy_from_slice(&v6.octets()[..8]);
        }
    }
    out
}

fn mac(key: &Key, kind: &Kind, payload: &[u8], binding: &Binding) -> HmacSha256 {
    // A key of any length is valid for HMAC; `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(&key.secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    m.update(kind.domain);
    m.update(payload);
    m.update(&binding.network);
    if kind.agent {
        m.update(&binding.agent);
    }
    m.update(binding.host.as_bytes());
    m
}

/// `base64url(payload) "." base64url(mac)`; the payload's first byte is the version and the
/// next four are filled with the signing key's id here.
fn seal(ring: &KeyRing, kind: &Kind, payload: &mut [u8], binding: &Binding) -> String {
    let key = ring.signer();
    payload[0] = kind.version;
    payload[1..5].copy_from_slice(&key.id);
    let mut s = B64.encode(&*payload);
    s.push('.');
    B64.encode_string(
        mac(key, kind, payload, binding).finalize().into_bytes(),
        &mut s,
    );
    s
}

/// The payload of `token` once its form, version, key and MAC for `binding` are checked.
fn open(
    ring: &KeyRing,
    kind: &Kind,
    token: &str,
    binding: &Binding,
) -> Result<Vec<u8>, TokenError> {
    // Generous bound on the encoded length, so junk is not decoded at all.
    if token.len() > 2 * (kind.len + 32) + 8 {
        return Err(TokenError::Malformed);
    }
    let (p, m) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = B64.decode(p).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(m).map_err(|_| TokenError::Malformed)?;
    if payload.len() != kind.len || sig.len() != 32 || payload[0] != kind.version {
        return Err(TokenError::Malformed);
    }
    let key = ring.find(&payload[1..5]).ok_or(TokenError::UnknownKey)?;
    mac(key, kind, &payload, binding)
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    Ok(payload)
}

fn expiry(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

/// A verified seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    /// Leading zero bits the solution's hash must have.
    pub difficulty: u8,
    /// Unix seconds after which the seed is void.
    pub expires: u64,
    /// The seed's random bytes: what makes a solution usable once.
    pub id: [u8; 16],
}

/// A new seed of `difficulty` expiring at `expires` (Unix seconds), bound to `binding`.
pub fn issue_seed(ring: &KeyRing, binding: &Binding, difficulty: u8, expires: u64) -> String {
    let mut payload = [0u8; SEED.len];
    payload[5] = difficulty.min(MAX_DIFFICULTY_BITS);
    payload[6..14].copy_from_slice(&expires.to_be_bytes());
    payload[14..30].copy_from_slice(&rand::random::<[u8; 16]>());
    seal(ring, &SEED, &mut payload, binding)
}

/// Check that `seed` was issued by this ring for `binding` and has not expired at `now`.
pub fn verify_seed(
    ring: &KeyRing,
    binding: &Binding,
    seed: &str,
    now: u64,
) -> Result<Seed, TokenError> {
    let payload = open(ring, &SEED, seed, binding)?;
    let difficulty = payload[5];
    if difficulty > MAX_DIFFICULTY_BITS {
        return Err(TokenError::Malformed);
    }
    let expires = expiry(&payload[6..14]);
    if now >= expires {
        return Err(TokenError::Expired);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&payload[14..30]);
    Ok(Seed {
        difficulty,
        expires,
        id,
    })
}

/// Leading zero bits of `hash`.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for b in hash {
        if *b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

/// The hash a solution is judged by: `SHA-256(seed ":" nonce)`.
pub fn work_hash(seed: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(b":");
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// Check a solution: `nonce` is a decimal number (no sign, no leading zeros) and the work
/// hash has at least `difficulty` leading zero bits. The gateway recomputes the hash; nothing
/// the client claims about it is trusted.
pub fn verify_work(seed: &str, nonce: &str, difficulty: u8) -> Result<(), TokenError> {
    let canonical = !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_DIGITS
        && nonce.bytes().all(|b| b.is_ascii_digit())
        && (nonce == "0" || !nonce.starts_with('0'))
        && nonce.parse::<u64>().is_ok();
    if !canonical {
        return Err(TokenError::Malformed);
    }
    if leading_zero_bits(&work_hash(seed, nonce)) >= u32::from(difficulty) {
        Ok(())
    } else {
        Err(TokenError::InsufficientWork)
    }
}

/// A pass for `binding` expiring at `expires` (Unix seconds).
pub fn issue_pass(ring: &KeyRing, binding: &Binding, expires: u64) -> String {
    let mut payload = [0u8; PASS.len];
    payload[5..13].copy_from_slice(&expires.to_be_bytes());
    seal(ring, &PASS, &mut payload, binding)
}

/// Check a pass for `binding` at `now`; returns its expiry.
pub fn verify_pass(
    ring: &KeyRing,
    binding: &Binding,
    pass: &str,
    now: u64,
) -> Result<u64, TokenError> {
    let payload = open(ring, &PASS, pass, binding)?;
    let expires = expiry(&payload[5..13]);
    if now >= expires {
        return Err(TokenError::Expired);
    }
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(fill: u8) -> KeyRing {
        KeyRing::new(vec![vec![fill; 32]]).expect("ring")
    }

    fn binding(ip: &str) -> Binding {
        Binding::new(ip.parse().expect("ip"), "app.test", b"Chromium")
    }

    /// Find a nonce the honest way, as the page does.
    fn solve(seed: &str, difficulty: u8) -> String {
        (0u64..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(&work_hash(seed, n)) >= u32::from(difficulty))
            .expect("a nonce")
    }

    #[test]
    fn a_seed_verifies_for_its_binding_and_nowhere_else() {
        let r = ring(1);
        let b = binding("192.0.2.10");
        let seed = issue_seed(&r, &b, 8, 1000);
        let s = verify_seed(&r, &b, &seed, 999).expect("valid");
        assert_eq!((s.difficulty, s.expires), (8, 1000));
        // The same /24 is the same network; another /24 is not.
        assert!(verify_seed(&r, &binding("192.0.2.99"), &seed, 999).is_ok());
        assert_eq!(
            verify_seed(&r, &binding("192.0.3.10"), &seed, 999),
            Err(TokenError::BadSignature)
        );
        let other_host = Binding::new("192.0.2.10".parse().expect("ip"), "evil.test", b"x");
        assert_eq!(
            verify_seed(&r, &other_host, &seed, 999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify_seed(&r, &b, &seed, 1000), Err(TokenError::Expired));
        // Seeds are unique.
        assert_ne!(seed, issue_seed(&r, &b, 8, 1000));
    }

    #[test]
    fn a_tampered_seed_is_refused_whatever_byte_changes() {
        let r = ring(2);
        let b = binding("2001:db8:1:2::5");
        let seed = issue_seed(&r, &b, 4, 1000);
        let (payload, sig) = seed.split_once('.').expect("dot");
        let mut raw = B64.decode(payload).expect("b64");
        for i in 0..raw.len() {
            raw[i] ^= 1;
            let forged = format!("{}.{sig}", B64.encode(&raw));
            assert!(verify_seed(&r, &b, &forged, 0).is_err(), "byte {i}");
            raw[i] ^= 1;
        }
        // A lower difficulty cannot be written into the seed.
        raw[5] = 0;
        let forged = format!("{}.{sig}", B64.encode(&raw));
        assert_eq!(
            verify_seed(&r, &b, &forged, 0),
            Err(TokenError::BadSignature)
        );
        for junk in ["", ".", "a.b", "....", &"A".repeat(5000), "é.é"] {
            assert_eq!(
                verify_seed(&r, &b, junk, 0),
                Err(TokenError::Malformed),
                "{junk}"
            );
        }
        // The same /64 counts as the same network.
        assert!(verify_seed(&r, &binding("2001:db8:1:2:ffff::1"), &seed, 0).is_ok());
        assert!(verify_seed(&r, &binding("2001:db8:1:3::5"), &seed, 0).is_err());
    }

    #[test]
    fn work_is_recomputed_and_must_meet_the_difficulty() {
        let seed = issue_seed(&ring(3), &binding("192.0.2.1"), 10, 1000);
        let nonce = solve(&seed, 10);
        assert_eq!(verify_work(&seed, &nonce, 10), Ok(()));
        // A nonce that does not reach the difficulty (the hash is never taken from the client).
        let weak = (0u64..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(&work_hash(&seed, n)) < 10)
            .expect("a weak nonce");
        assert_eq!(
            verify_work(&seed, &weak, 10),
            Err(TokenError::InsufficientWork)
        );
        // The same number written another way is not another solution.
        for bad in [
            format!("0{nonce}"),
            format!("+{nonce}"),
            format!(" {nonce}"),
            String::new(),
            "1".repeat(21),
            "99999999999999999999".into(),
        ] {
            assert_eq!(
                verify_work(&seed, &bad, 10),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn leading_zero_bits_counts_bits_not_hex_digits() {
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0x00, 0x80]), 8);
        assert_eq!(leading_zero_bits(&[0x00, 0x01]), 15);
        assert_eq!(leading_zero_bits(&[0x0f]), 4);
        assert_eq!(leading_zero_bits(&[0x00, 0x00]), 16);
    }

    #[test]
    fn a_pass_is_bound_to_network_browser_and_host_and_keys_rotate() {
        let old = vec![7u8; 32];
        let new = vec![8u8; 40];
        let before = KeyRing::new(vec![old.clone()]).expect("ring");
        let rotating = KeyRing::new(vec![new.clone(), old]).expect("ring");
        let after = KeyRing::new(vec![new]).expect("ring");
        let b = binding("198.51.100.7");
        let pass = issue_pass(&before, &b, 500);
        assert_eq!(verify_pass(&before, &b, &pass, 10), Ok(500));
        // During a rotation the old key still verifies; new passes use the new key.
        assert_eq!(verify_pass(&rotating, &b, &pass, 10), Ok(500));
        let fresh = issue_pass(&rotating, &b, 600);
        assert_eq!(verify_pass(&after, &b, &fresh, 10), Ok(600));
        // Once the old key is retired, its passes are refused.
        assert_eq!(
            verify_pass(&after, &b, &pass, 10),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            verify_pass(&before, &b, &pass, 500),
            Err(TokenError::Expired)
        );
        let other_agent = Binding::new("198.51.100.7".parse().expect("ip"), "app.test", b"curl");
        assert_eq!(
            verify_pass(&before, &other_agent, &pass, 10),
            Err(TokenError::BadSignature)
        );
        // A seed is not a pass and a pass is not a seed.
        let seed = issue_seed(&before, &b, 1, 500);
        assert!(verify_pass(&before, &b, &seed, 10).is_err());
        assert!(verify_seed(&before, &b, &pass, 10).is_err());
    }

    #[test]
    fn rings_refuse_short_and_repeated_keys() {
        assert!(KeyRing::new(vec![]).is_err());
        assert!(KeyRing::new(vec![vec![1; 31]]).is_err());
        assert!(KeyRing::new(vec![vec![1; 32], vec![1; 32]]).is_err());
    }

    proptest::proptest! {
        /// Whatever a client sends as a seed, a nonce or a pass, nothing panics and nothing
        /// that was not issued verifies; any change to an issued token voids it.
        #[test]
        fn arbitrary_tokens_never_verify(junk in ".{0,200}", flip in 0usize..200, nonce in "[0-9]{1,20}") {
            let r = ring(9);
            let b = binding("192.0.2.1");
            proptest::prop_assert!(verify_seed(&r, &b, &junk, 0).is_err());
            proptest::prop_assert!(verify_pass(&r, &b, &junk, 0).is_err());
            let _ = verify_work(&junk, &nonce, 1);
            for token in [issue_seed(&r, &b, 1, 100), issue_pass(&r, &b, 100)] {
                let mut bytes = token.clone().into_bytes();
                let i = flip % bytes.len();
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
                let changed = String::from_utf8(bytes).unwrap_or_default();
                proptest::prop_assert!(verify_seed(&r, &b, &changed, 0).is_err());
                proptest::prop_assert!(verify_pass(&r, &b, &changed, 0).is_err());
            }
        }
    }
}
