//! Request header checks the edge makes before routing: one `Host`, no user info, HTTP/2
//! cookie crumbs joined, header count and size within what the tunnel carries, and no header
//! names that differ from another only by `_` (which some backends read as `-`); the cookies
//! and the client address (behind trusted proxies) decisions read.
//!
//! Pure functions over `http` types: no I/O.

use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, Request, Version};
use std::net::{IpAddr, SocketAddr};

/// Where trusted proxies name the client.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Why a request's headers were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No usable host (RFC 9112 §3.2: a request without one is invalid).
    #[error("no host")]
    MissingHost,
    /// More than one `Host`, user info in the host, or `Host` that contradicts the authority.
    #[error("invalid host")]
    BadHost,
    /// More header fields or bytes than the edge accepts.
    #[error("request headers too large")]
    TooLarge,
}

/// A request's host as the edge reads it: routes, challenges and limits match `name`, and the
/// service receives [`RequestHost::authority`] in `Host`, `X-Forwarded-Host` and `Forwarded`,
/// so both read the same bytes however the client spelled them (`App.Test.:8443`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// Lower case, without port and trailing dot.
    pub name: String,
    /// The port the client named, if any.
    pub port: Option<u16>,
}

impl RequestHost {
    /// `name[:port]`: the authority forwarded to the service.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The request's host: the authority (HTTP/2, absolute form) or the single `Host` header.
/// Refuses user info (`evil@host`), two `Host` headers, a port that is not one, and a `Host`
/// that names another host than the authority.
pub fn request_host<B>(req: &Request<B>) -> Result<RequestHost, HeaderError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(HeaderError::BadHost);
    }
    let from_header = match host_header {
        Some(v) => Some(parse_authority_host(v.as_bytes())?),
        None => None,
    };
    let host = match req.uri().authority() {
        Some(a) => {
            let h = parse_authority_host(a.as_str().as_bytes())?;
            // An HTTP/1.1 absolute-form target wins over `Host` (RFC 9112 §3.2.2); HTTP/2
            // must not carry a different one (RFC 9113 §8.3.1).
            if req.version() == Version::HTTP_2
                && from_header.as_ref().is_some_and(|f| f.name != h.name)
            {
                return Err(HeaderError::BadHost);
            }
            h
        }
        None => from_header.ok_or(HeaderError::MissingHost)?,
    };
    Ok(host)
}

/// The host of an authority (`host[:port]`), lower case, without a trailing dot, and its port.
fn parse_authority_host(raw: &[u8]) -> Result<RequestHost, HeaderError> {
    if raw.contains(&b'@') {
        return Err(HeaderError::BadHost);
    }
    let text = std::str::from_utf8(raw).map_err(|_| HeaderError::BadHost)?;
    let authority: http::uri::Authority = text.parse().map_err(|_| HeaderError::BadHost)?;
    let name = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err(HeaderError::MissingHost);
    }
    // What follows the host (user info was refused above, so the host starts the text): nothing,
    // a bare `:` (no port, RFC 3986 §3.2.3) or `:` and a port number.
    let port = match text.get(authority.host().len()..).unwrap_or_default() {
        "" | ":" => None,
        rest => Some(
            rest.strip_prefix(':')
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or(HeaderError::BadHost)?,
        ),
    };
    Ok(RequestHost { name, port })
}

/// Whether `Connection` names `upgrade` (in any of its fields, any case): what makes an
/// `Upgrade` header a request to switch protocols (RFC 9110 §7.8).
pub fn connection_names_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `name=value` pairs of every `Cookie` field, names and values trimmed as the most
/// lenient service frameworks trim them, so a decision on a cookie (a token, a pass) sees
/// every cookie any service would.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|field| field.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            Some((pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()))
        })
}

/// The client's address: the socket peer, or with `hops` trusted proxies in front, the
/// `X-Forwarded-For` entry `hops` places from the right (the address the outermost trusted
/// proxy saw), with or without a port (`203.0.113.7:41000`, `[2001:db8::7]:41000`, as some
/// balancers write it). A chain shorter than that, or an entry that is no address, is not
/// trusted: the peer it is.
pub fn client_addr(headers: &HeaderMap, peer: SocketAddr, hops: usize) -> SocketAddr {
    if hops == 0 {
        return peer;
    }
    let chain: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    chain
        .len()
        .checked_sub(hops)
        .and_then(|i| forwarded_ip(chain[i]))
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// An `X-Forwarded-For` entry's address.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
}

/// Join HTTP/2 `cookie` crumbs into one field with `; ` (RFC 9113 §8.2.3), so a browser's
/// hundred cookies count as one header and reach an HTTP/1.1 service as one.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Remove every header whose name contains `_` (nginx's `underscores_in_headers off`):
/// `X-Netwall_Sub` must not reach a backend that reads it as `X-Netwall-Sub`. Returns how
/// many fields were removed.
pub fn drop_underscored(headers: &mut HeaderMap) -> usize {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    let mut n = 0;
    for name in names {
        if let header::Entry::Occupied(e) = headers.entry(name) {
            n += e.iter().count();
            e.remove_entry_mult().1.for_each(drop);
        }
    }
    n
}

/// Headers only the edge may set: forwarding headers describe what the edge saw, and
/// `x-netwall-*` says who the edge authenticated.
const EDGE_OWNED: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// Whether `name` is, or folds into, a header only the edge may set: compared after
/// mapping `_` to `-` (header names are already lower case), since several backends (CGI,
/// PHP, WSGI, some frameworks) read `X-Netwall_Sub` as `X-Netwall-Sub`.
pub fn is_edge_owned(name: &str) -> bool {
    let prefix = crate::auth::IDENTITY_PREFIX;
    (name.len() >= prefix.len() && folded_eq(&name.as_bytes()[..prefix.len()], prefix))
        || EDGE_OWNED
            .iter()
            .any(|owned| folded_eq(name.as_bytes(), owned))
}

/// `name == want` with `_` in `name` read as `-` (no allocation: this runs for every header
/// of every request).
fn folded_eq(name: &[u8], want: &str) -> bool {
    name.len() == want.len()
        && name
            .iter()
            .zip(want.as_bytes())
            .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
}

/// Remove every client header that [`is_edge_owned`].
pub fn strip_edge_owned(headers: &mut HeaderMap) {
    let forged: Vec<_> = headers
        .keys()
        .filter(|k| is_edge_owned(k.as_str()))
        .cloned()
        .collect();
    for k in forged {
        headers.remove(k);
    }
}

/// Bytes a header block takes on the tunnel (names plus values).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum()
}

/// Check the client's headers against the edge's limits (the tunnel codec is sized for
/// these plus what the edge adds, so an accepted head always encodes).
pub fn check_limits(headers: &HeaderMap, max_bytes: usize) -> Result<(), HeaderError> {
    if headers.len() > netwall_proto::MAX_CLIENT_HEADERS || header_bytes(headers) > max_bytes {
        return Err(HeaderError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn hosts() {
        use HeaderError::*;
        let h1 = Version::HTTP_11;
        let h2 = Version::HTTP_2;
        type Case<'a> = (
            Version,
            &'a str,
            &'a [&'a str],
            Result<&'a str, HeaderError>,
        );
        let cases: &[Case] = &[
            (h1, "/", &["App.Test:8443"], Ok("app.test:8443")),
            (h1, "/", &["App.Test.:8443"], Ok("app.test:8443")),
            (h1, "/", &["app.test:"], Ok("app.test")),
            (h1, "/", &["[::1]:8443"], Ok("[::1]:8443")),
            (h1, "/", &["[::1]"], Ok("[::1]")),
            (h1, "/", &["app.test:99999"], Err(BadHost)),
            (h1, "/", &["app.test:+80"], Err(BadHost)),
            (h1, "/", &["app.test."], Ok("app.test")),
            (h1, "/", &[], Err(MissingHost)),
            (h1, "/", &["app.test", "evil.test"], Err(BadHost)),
            (h1, "/", &["app.test", "app.test"], Err(BadHost)),
            (h1, "/", &["evil@app.test"], Err(BadHost)),
            (h1, "/", &["user:pw@app.test"], Err(BadHost)),
            (h1, "/", &["app.test/x"], Err(BadHost)),
            (h1, "http://app.test/", &["other.test"], Ok("app.test")),
            (h2, "https://app.test/", &[], Ok("app.test")),
            (h2, "https://app.test/", &["app.test"], Ok("app.test")),
            (h2, "https://app.test/", &["evil.test"], Err(BadHost)),
        ];
        for (v, uri, hosts, want) in cases {
            let got = request_host(&req(*v, uri, hosts)).map(|h| h.authority());
            assert_eq!(got.as_deref(), want.as_deref(), "{v:?} {uri} {hosts:?}");
        }
        let with_userinfo = Request::get("https://evil@app.test/")
            .version(h2)
            .body(())
            .expect("request");
        assert_eq!(request_host(&with_userinfo), Err(BadHost));
    }

    #[test]
    fn the_client_is_the_entry_the_outermost_trusted_proxy_wrote() {
        let peer: SocketAddr = "10.0.0.9:5000".parse().expect("peer");
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        let ip = |h: &HeaderMap, hops| client_addr(h, peer, hops).ip().to_string();
        let h = xff(&["1.1.1.1, 203.0.113.7"]);
        assert_eq!(ip(&h, 0), "10.0.0.9");
        assert_eq!(ip(&h, 1), "203.0.113.7");
        assert_eq!(ip(&h, 2), "1.1.1.1");
        assert_eq!(ip(&h, 3), "10.0.0.9", "a chain shorter than the hops");
        assert_eq!(
            ip(&xff(&["1.1.1.1", "203.0.113.7:41000"]), 1),
            "203.0.113.7"
        );
        assert_eq!(ip(&xff(&["[2001:db8::7]:41000"]), 1), "2001:db8::7");
        assert_eq!(ip(&xff(&["[2001:db8::7]"]), 1), "2001:db8::7");
        assert_eq!(ip(&xff(&["2001:db8::7"]), 1), "2001:db8::7");
        assert_eq!(ip(&xff(&["unknown"]), 1), "10.0.0.9");
    }

    #[test]
    fn cookies_join_and_underscores_drop() {
        let mut h = HeaderMap::new();
        for i in 0..100 {
            h.append(
                header::COOKIE,
                HeaderValue::from_str(&format!("c{i}=v")).expect("v"),
            );
        }
        h.append("x-netwall_sub", HeaderValue::from_static("admin"));
        h.append("x_a", HeaderValue::from_static("1"));
        h.append("x_a", HeaderValue::from_static("2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        let cookie = h
            .get(header::COOKIE)
            .expect("cookie")
            .to_str()
            .expect("text");
        assert!(cookie.starts_with("c0=v; c1=v; "), "{cookie}");
        assert!(cookie.ends_with("; c99=v"), "{cookie}");
        h.append("x_forwarded_for", HeaderValue::from_static("10.0.0.1"));
        h.append("X-Netwall-Claim-Role", HeaderValue::from_static("admin"));
        strip_edge_owned(&mut h);
        assert!(!h.contains_key("x-netwall_sub") && !h.contains_key("x_forwarded_for"));
        assert!(!h.contains_key("x-netwall-claim-role"));
        h.append("x-netwall_sub", HeaderValue::from_static("admin"));
        assert_eq!(drop_underscored(&mut h), 3);
        assert_eq!(h.len(), 1);
        assert!(check_limits(&h, 64 * 1024).is_ok());
        assert_eq!(check_limits(&h, 100), Err(HeaderError::TooLarge));
    }
}
