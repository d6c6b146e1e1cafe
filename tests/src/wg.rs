//! WireGuard messages a stranger can make: a well-formed handshake initiation from a fresh key
//! the gateway was never told about.

use boringtun::noise::{Tunn, TunnResult};
use netwall_tunnel::wireguard::keys;

/// A handshake initiation to the gateway whose public key is `gateway_key` (base64), from a
/// key of its own: valid MACs, so it passes every check a stranger can pass.
pub fn stranger_initiation(gateway_key: &str) -> Vec<u8> {
    let gateway = keys::parse_public(gateway_key).expect("gateway key");
    let (private, _) = keys::generate();
    let secret: [u8; 32] = base64_32(&private);
    let mut tunn = Tunn::new(
        boringtun::x25519::StaticSecret::from(secret),
        gateway,
        None,
        None,
        1,
        None,
    );
    let mut out = vec![0u8; 2048];
    match tunn.format_handshake_initiation(&mut out, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

fn base64_32(text: &str) -> [u8; 32] {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    <[u8; 32]>::try_from(v.as_slice()).expect("32 bytes")
}
