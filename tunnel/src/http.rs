//! Conversions between protocol heads and the `http` crate's types.
//!
//! Both ends of a tunnel turn frames into `http` values here, so header validation and
//! hop-by-hop handling are written once.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use netwall_proto::Header;

/// A header from the tunnel that is not valid HTTP.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The name is not a valid header name.
    #[error("invalid header name")]
    Name,
    /// The value contains bytes a header value cannot.
    #[error("invalid value for header {0}")]
    Value(String),
}

/// Convert wire headers into a `HeaderMap`, validating every name and value.
pub fn to_header_map(headers: &[Header]) -> Result<HeaderMap, HeaderError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = HeaderName::from_bytes(&h.name).map_err(|_| HeaderError::Name)?;
        let value = HeaderValue::from_maybe_shared(h.value.clone())
            .map_err(|_| HeaderError::Value(name.as_str().to_owned()))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Convert a `HeaderMap` into wire headers.
pub fn from_header_map(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header {
            name: Bytes::copy_from_slice(name.as_str().as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect()
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Make a response head's `Content-Length` say what its body is. A response framed by
/// `Transfer-Encoding` loses it (RFC 9112 §6.3: the encoding overrides it, and an
/// intermediary forwarding such a message must remove it), and so does a status that has no
/// content (1xx and 204, RFC 9110 §8.6): a client that trusted the stale length would read the
/// next response on its connection as this one's body. Call before [`strip_hop_by_hop`],
/// which removes the `Transfer-Encoding` this looks at.
pub fn fix_response_framing(status: u16, map: &mut HeaderMap) {
    if map.contains_key(header::TRANSFER_ENCODING) || status < 200 || status == 204 {
        map.remove(header::CONTENT_LENGTH);
    }
}

/// Fields that cannot be trailers (RFC 9110 §6.5.1): they frame or route the message,
/// authenticate, modify the request, control the response or describe the content, and a
/// recipient acts on them before the body. The service's (or client's) trailers lose them,
/// with the hop-by-hop ones, before they reach the other end.
const NOT_TRAILERS: [HeaderName; 20] = [
    header::AGE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::CONTENT_TYPE,
    header::COOKIE,
    header::EXPECT,
    header::EXPIRES,
    header::HOST,
    header::LOCATION,
    header::MAX_FORWARDS,
    header::PRAGMA,
    header::RANGE,
    header::RETRY_AFTER,
    header::SET_COOKIE,
    header::VARY,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
];

/// Remove from trailers every field that cannot be one (see [`NOT_TRAILERS`]) and every
/// hop-by-hop field.
pub fn strip_trailer_fields(map: &mut HeaderMap) {
    strip_hop_by_hop(map, false);
    for name in &NOT_TRAILERS {
        map.remove(name);
    }
}

/// Remove hop-by-hop headers and every header `Connection` names. With `keep_upgrade`, the
/// `Connection: upgrade` and `Upgrade` pair survives so an upgrade can be relayed.
pub fn strip_hop_by_hop(map: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = map
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = if keep_upgrade {
        map.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        map.remove(name);
    }
    map.remove("proxy-connection");
    if let Some(up) = upgrade {
        map.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        map.insert(header::UPGRADE, up);
    }
}
