//! WebSocket origin allow-list entries: `https://app.example.com[:port]`, a scheme-less host
//! pattern, `https://*.example.com` or `*`; matched against the `Origin` header.

use super::host::HostPattern;

/// One entry of an origin allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

impl OriginPattern {
    /// Parse `https://app.example.com`, `https://app.example.com:8443`, `*.example.com`,
    /// `https://*.example.com` or `*`.
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        let s = s.trim().to_ascii_lowercase();
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) if matches!(scheme, "http" | "https") => {
                (Some(scheme.to_owned()), rest.to_owned())
            }
            Some(_) => return Err(format!("origin `{s}`: the scheme must be http or https")),
            None => (None, s.clone()),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("origin `{s}`: bad port"))?,
                ),
            ),
            None => (rest, None),
        };
        let host = HostPattern::parse(&host).map_err(|e| format!("origin `{s}`: {e}"))?;
        Ok(OriginPattern { scheme, host, port })
    }

    /// Whether the `Origin` header value `origin` matches.
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, Some(p)),
                Err(_) => return false,
            },
            None => (rest, None),
        };
        // An origin is scheme, host and port (RFC 6454); browsers leave the default port out.
        let port = port.or_else(|| default_port(scheme));
        let port_ok = match (&self.scheme, self.port) {
            (_, Some(want)) => port == Some(want),
            // `https://app.example.com` is that origin, not every port of its host.
            (Some(want_scheme), None) => port == default_port(want_scheme),
            // A bare host pattern names the host on any scheme and port.
            (None, None) => true,
        };
        self.scheme.as_deref().is_none_or(|s| s == scheme) && self.host.matches(host) && port_ok
    }
}

/// The port an origin of `scheme` has when it names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_with_a_scheme_is_that_origin_only() {
        let exact = OriginPattern::parse("https://app.example.com").expect("parse");
        for (origin, want) in [
            ("https://app.example.com", true),
            ("HTTPS://App.Example.com", true),
            ("https://app.example.com:443", true),
            ("https://app.example.com:8443", false),
            ("http://app.example.com", false),
            ("https://app.example.com.evil.test", false),
            ("https://app.example.com/", false),
            ("null", false),
        ] {
            assert_eq!(exact.matches(origin), want, "{origin}");
        }
        let port = OriginPattern::parse("https://app.example.com:8443").expect("parse");
        assert!(port.matches("https://app.example.com:8443"));
        assert!(!port.matches("https://app.example.com"));
        let wild = OriginPattern::parse("https://*.example.com").expect("parse");
        assert!(wild.matches("https://a.example.com"));
        assert!(!wild.matches("https://a.example.com:444"));
        assert!(!wild.matches("https://example.com"));
        let host = OriginPattern::parse("*.trusted.test").expect("parse");
        assert!(host.matches("http://y.trusted.test:8080"));
        assert!(host.matches("https://y.trusted.test"));
        let host_port = OriginPattern::parse("app.test:8443").expect("parse");
        assert!(host_port.matches("https://app.test:8443"));
        assert!(!host_port.matches("https://app.test"));
    }
}
