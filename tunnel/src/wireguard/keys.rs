//! WireGuard keys: Curve25519, 32 bytes, written in standard base64 as `wg(8)` writes them,
//! so keys made by `wg genkey` and by `wg-keygen` are interchangeable.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
pub use boringtun::x25519::PublicKey;
use boringtun::x25519::StaticSecret;

/// A private key: where it came from stays out of every message that shows it.
#[derive(Clone)]
pub struct PrivateKey(pub(crate) StaticSecret);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(…)")
    }
}

impl PrivateKey {
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey::from(&self.0)
    }

    /// The public key in base64.
    pub fn public_base64(&self) -> String {
        public_base64(&self.public())
    }
}

fn decode32(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "not base64 (a WireGuard key is 44 characters of base64)".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, a WireGuard key has 32", bytes.len()))
}

/// A public key in base64.
pub fn public_base64(key: &PublicKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parse a base64 public key.
pub fn parse_public(text: &str) -> Result<PublicKey, String> {
    decode32(text).map(PublicKey::from)
}

/// Parse a base64 private key.
pub fn parse_private(text: &str) -> Result<PrivateKey, String> {
    decode32(text).map(|b| PrivateKey(StaticSecret::from(b)))
}

/// Read a private key from `file` or from the environment variable `env` (exactly one is
/// given). The error says which source failed, never the key.
pub fn load_private(file: Option<&Path>, env: Option<&str>) -> Result<PrivateKey, String> {
    match (file, env) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            parse_private(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        (None, Some(var)) => {
            let text =
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
            parse_private(&text).map_err(|e| format!("environment variable {var}: {e}"))
        }
        _ => Err("give exactly one of a key file and an environment variable".into()),
    }
}

/// A fresh key pair, `(private, public)` in base64.
pub fn generate() -> (String, String) {
    let key = PrivateKey(StaticSecret::from(rand::random::<[u8; 32]>()));
    (STANDARD.encode(key.0.to_bytes()), key.public_base64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_parse_and_match() {
        let (private, public) = generate();
        assert_eq!(private.len(), 44);
        let key = parse_private(&private).expect("private key parses");
        assert_eq!(key.public_base64(), public);
        assert_eq!(
            parse_public(&public).expect("public key parses").as_bytes(),
            key.public().as_bytes()
        );
    }

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private and public keys, in base64.
        let key = parse_private("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").expect("parses");
        assert_eq!(
            key.public_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        assert!(parse_public("short").is_err());
        assert!(parse_public("AAAA").unwrap_err().contains("3 bytes"));
        let secret = "c2VjcmV0LWJ1dC1ub3QtMzItYnl0ZXM=";
        let e = parse_private(secret).unwrap_err();
        assert!(!e.contains(secret));
        assert!(load_private(None, None).is_err());
        assert!(
            load_private(None, Some("NETWALL_TEST_SURELY_UNSET_VAR"))
                .unwrap_err()
                .contains("not set")
        );
    }
}
