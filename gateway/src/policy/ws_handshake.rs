//! The WebSocket opening handshake a client must make (RFC 6455 §4.2.1) before the edge
//! answers `101` for the service: `GET`, `Connection: upgrade`, one `Sec-WebSocket-Key` that
//! is sixteen bytes in base64, one `Sec-WebSocket-Version: 13`. The edge computes the accept
//! key itself and the service never sees the client's handshake, so this is the only place
//! it is checked.
//!
//! Pure functions over `http` types: no I/O.

use base64::Engine as _;
use http::{HeaderMap, Method, header};

/// The one protocol version the edge speaks, sent back with a `426` to a client asking for
/// another (RFC 6455 §4.4).
pub const VERSION: &str = "13";

/// Bytes a `Sec-WebSocket-Key` decodes to (RFC 6455 §4.1, item 7).
const KEY_BYTES: usize = 16;

/// Why a WebSocket opening handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a `GET`.
    #[error("method is not GET")]
    NotGet,
    /// `Connection` does not name `upgrade`.
    #[error("Connection does not name upgrade")]
    Connection,
    /// No `Sec-WebSocket-Key`, more than one, or not sixteen bytes in base64.
    #[error("Sec-WebSocket-Key is missing, repeated or not 16 bytes of base64")]
    Key,
    /// No `Sec-WebSocket-Version`, more than one, or not `13`: answered `426` with the
    /// version the edge speaks.
    #[error("Sec-WebSocket-Version is not 13")]
    Version,
}

/// Check a WebSocket opening handshake (already known to carry `Upgrade: websocket` over
/// HTTP/1.1).
pub fn check(method: &Method, headers: &HeaderMap) -> Result<(), HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !super::headers::connection_names_upgrade(headers) {
        return Err(HandshakeError::Connection);
    }
    let key = only(headers, header::SEC_WEBSOCKET_KEY).ok_or(HandshakeError::Key)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.trim_ascii())
        .map_err(|_| HandshakeError::Key)?;
    if decoded.len() != KEY_BYTES {
        return Err(HandshakeError::Key);
    }
    match only(headers, header::SEC_WEBSOCKET_VERSION) {
        Some(v) if v.trim_ascii() == VERSION.as_bytes() => Ok(()),
        _ => Err(HandshakeError::Version),
    }
}

/// Whether `chosen`, the subprotocol a service answered with, is one the client offered in
/// `Sec-WebSocket-Protocol` (RFC 6455 §4.2.2: the server picks one of the client's; a client
/// fails a WebSocket whose server named another).
pub fn offered(headers: &HeaderMap, chosen: &[u8]) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii() == chosen)
}

/// The value of `name` when the request carries exactly one.
fn only(headers: &HeaderMap, name: header::HeaderName) -> Option<&[u8]> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, value.parse().expect("value"));
        }
        h
    }

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
        ]
    }

    #[test]
    fn a_valid_handshake_passes() {
        assert_eq!(check(&Method::GET, &headers(&valid())), Ok(()));
    }

    #[test]
    fn a_subprotocol_must_be_one_the_client_offered() {
        let h = headers(&[
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-protocol", "graphql-ws"),
        ]);
        for ok in ["chat", "superchat", "graphql-ws"] {
            assert!(offered(&h, ok.as_bytes()), "{ok}");
        }
        for no in ["Chat", "chat, superchat", "", "mqtt"] {
            assert!(!offered(&h, no.as_bytes()), "{no}");
        }
        assert!(!offered(&HeaderMap::new(), b"chat"));
    }

    #[test]
    fn each_broken_part_is_named() {
        use HandshakeError::*;
        assert_eq!(check(&Method::POST, &headers(&valid())), Err(NotGet));
        let with = |name: &'static str, values: &[&'static str]| {
            let mut fields: Vec<_> = valid().into_iter().filter(|(n, _)| *n != name).collect();
            fields.extend(values.iter().map(|v| (name, *v)));
            check(&Method::GET, &headers(&fields))
        };
        assert_eq!(with("connection", &["keep-alive"]), Err(Connection));
        assert_eq!(with("connection", &[]), Err(Connection));
        assert_eq!(with("connection", &["close", "upgrade"]), Ok(()));
        assert_eq!(with("sec-websocket-key", &[]), Err(Key));
        assert_eq!(with("sec-websocket-key", &["abc"]), Err(Key));
        // Valid base64 of 15 and 17 bytes.
        assert_eq!(
            with("sec-websocket-key", &["AAAAAAAAAAAAAAAAAAAA"]),
            Err(Key)
        );
        assert_eq!(
            with("sec-websocket-key", &["AAAAAAAAAAAAAAAAAAAAAAA="]),
            Err(Key)
        );
        assert_eq!(with("sec-websocket-key", &[KEY, KEY]), Err(Key));
        assert_eq!(with("sec-websocket-version", &[]), Err(Version));
        assert_eq!(with("sec-websocket-version", &["8"]), Err(Version));
        assert_eq!(with("sec-websocket-version", &["13", "13"]), Err(Version));
        assert_eq!(with("sec-websocket-version", &["13, 8"]), Err(Version));
    }
}
