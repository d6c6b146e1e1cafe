//! Host patterns as written in routes, certificates and origin allow-lists: one exact name,
//! `*.domain` (any name under it) or `*`. Parsing normalises to lower case and checks every
//! label, so a route and the request it is matched against compare the same bytes.

/// A host as written in a route or certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One exact name.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored with the leading dot).
    Suffix(String),
    /// `*`: every host.
    Any,
}

impl HostPattern {
    /// Parse and normalise (lower case) a host pattern.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!("`{s}` is not a host name or `*.domain` wildcard"));
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether `host` (lower case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }
}
