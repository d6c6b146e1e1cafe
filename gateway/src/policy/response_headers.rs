//! `[route.headers]`: response headers the edge sets or removes on everything a route's
//! service answers (HSTS, `X-Content-Type-Options`, frame options, a `Server` banner removed).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The headers a route sets and removes, parsed.
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl ResponseHeaders {
    /// From `name = value` pairs to set and names to remove; each must parse (the config
    /// checks this first, naming the key).
    pub fn new<'a>(
        set: impl IntoIterator<Item = (&'a str, &'a str)>,
        remove: impl IntoIterator<Item = &'a str>,
    ) -> Result<ResponseHeaders, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("`{n}` is not a header name"))
        };
        let mut out = ResponseHeaders::default();
        for (n, v) in set {
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("the value of `{n}` is not a valid header value"))?;
            out.set.push((name(n)?, value));
        }
        for n in remove {
            out.remove.push(name(n)?);
        }
        Ok(out)
    }

    /// Apply to a response's headers: removals first, then the set values replace any the
    /// service sent under the same name.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_remove_drops() {
        let h = ResponseHeaders::new(
            [
                ("Strict-Transport-Security", "max-age=63072000"),
                ("x-frame-options", "DENY"),
            ],
            ["server", "X-Powered-By"],
        )
        .expect("policy");
        let mut resp = HeaderMap::new();
        resp.insert("server", HeaderValue::from_static("nginx/1.0"));
        resp.insert("x-powered-by", HeaderValue::from_static("php"));
        resp.insert("x-frame-options", HeaderValue::from_static("ALLOWALL"));
        resp.insert("content-type", HeaderValue::from_static("text/html"));
        h.apply(&mut resp);
        assert!(resp.get("server").is_none());
        assert!(resp.get("x-powered-by").is_none());
        assert_eq!(resp["x-frame-options"], "DENY");
        assert_eq!(resp["strict-transport-security"], "max-age=63072000");
        assert_eq!(resp["content-type"], "text/html");
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        assert!(ResponseHeaders::new([("bad name", "v")], []).is_err());
        assert!(ResponseHeaders::new([("x-ok", "line\nbreak")], []).is_err());
        assert!(ResponseHeaders::new([], ["(bad)"]).is_err());
    }
}
