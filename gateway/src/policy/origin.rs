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
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.host.matches(host)
            && (self.port.is_none() || self.port == port)
    }
}
