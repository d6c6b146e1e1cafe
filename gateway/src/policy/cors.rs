//! CORS at the edge (`[route.cors]`): preflights are answered here and never reach the tunnel;
//! responses to allowed cross-origin requests carry the `Access-Control-*` headers the edge
//! decides, in place of whatever the service sent.

use std::time::Duration;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::origin::OriginPattern;

/// How long a browser may cache a preflight's answer when the route does not say: long enough
/// to spare a busy page a preflight per request, short enough that a narrowed policy applies
/// within minutes (Chromium caps it at 2 h anyway).
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The policy of one route, parsed.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<OriginPattern>,
    any_origin: bool,
    methods: Vec<Method>,
    headers: Vec<HeaderName>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
    allow_methods: HeaderValue,
}

/// What the edge does with a request, as far as CORS goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Not a preflight: forward it.
    No,
    /// A preflight the policy allows: answer it with these headers (status 204).
    Allowed(HeaderMap),
    /// A preflight the policy refuses, and why: answer 403 without CORS headers.
    Refused(&'static str),
}

impl Cors {
    /// A policy from its configured parts; every entry must parse (the config checks this
    /// first, naming the key).
    pub fn new(
        origins: &[String],
        methods: &[String],
        headers: &[String],
        expose: &[String],
        credentials: bool,
        max_age: Duration,
    ) -> Result<Cors, String> {
        let any_origin = origins.iter().any(|o| o.trim() == "*");
        if any_origin && credentials {
            return Err(
                "allowed_origins = [\"*\"] with allow_credentials would let every site act as the user"
                    .into(),
            );
        }
        let mut parsed = Vec::new();
        for o in origins.iter().filter(|o| o.trim() != "*") {
            if !o.contains("://") {
                return Err(format!(
                    "origin `{o}`: give the scheme (https://{o}); a CORS origin is scheme-specific"
                ));
            }
            parsed.push(OriginPattern::parse(o)?);
        }
        let methods = methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("`{m}` is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let headers = headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("`{h}` is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for h in expose {
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| format!("`{h}` is not a header name"))?;
        }
        let join = |items: Vec<&str>| {
            HeaderValue::from_str(&items.join(", ")).map_err(|_| "bad header list".to_owned())
        };
        let allow_methods = join(methods.iter().map(Method::as_str).collect())?;
        let expose = if expose.is_empty() {
            None
        } else {
            Some(join(expose.iter().map(|s| s.trim()).collect())?)
        };
        Ok(Cors {
            origins: parsed,
            any_origin,
            methods,
            headers,
            expose,
            credentials,
            max_age: HeaderValue::from(max_age.as_secs()),
            allow_methods,
        })
    }

    /// Whether `origin` (the request's `Origin` value) may read responses.
    fn allows_origin(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|p| p.matches(origin))
    }

    /// The `Access-Control-Allow-Origin` value for an allowed `origin`.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Classify a request: a preflight is an `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn preflight(&self, method: &Method, req: &HeaderMap) -> Preflight {
        if method != Method::OPTIONS {
            return Preflight::No;
        }
        let (Some(origin), Some(asked)) = (
            req.get(header::ORIGIN),
            req.get(header::ACCESS_CONTROL_REQUEST_METHOD),
        ) else {
            return Preflight::No;
        };
        if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
            return Preflight::Refused("origin not allowed");
        }
        let Some(asked) = asked
            .to_str()
            .ok()
            .and_then(|m| Method::from_bytes(m.trim().as_bytes()).ok())
        else {
            return Preflight::Refused("bad Access-Control-Request-Method");
        };
        if !self.methods.contains(&asked) {
            return Preflight::Refused("method not allowed");
        }
        let mut asked_headers = Vec::new();
        for v in req.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(text) = v.to_str() else {
                return Preflight::Refused("bad Access-Control-Request-Headers");
            };
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let lower = name.to_ascii_lowercase();
                if !self.headers.iter().any(|h| h.as_str() == lower) {
                    return Preflight::Refused("header not allowed");
                }
                asked_headers.push(lower);
            }
        }
        let mut out = HeaderMap::new();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if !asked_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&asked_headers.join(", "))
        {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        out.insert(header::VARY, preflight_vary());
        Preflight::Allowed(out)
    }

    /// Put the edge's CORS headers on a response to a request with `req` headers: the
    /// service's own `Access-Control-*` headers are replaced, and `Vary: Origin` is added,
    /// since the answer depends on it.
    pub fn apply(&self, req_origin: Option<&HeaderValue>, resp: &mut HeaderMap) {
        let names: Vec<HeaderName> = resp
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for n in names {
            resp.remove(n);
        }
        if !self.any_origin {
            resp.append(header::VARY, HeaderValue::from_static("origin"));
        }
        let Some(origin) = req_origin.filter(|o| o.to_str().is_ok_and(|o| self.allows_origin(o)))
        else {
            return;
        };
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        if self.credentials {
            resp.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

/// What a preflight's answer depends on.
fn preflight_vary() -> HeaderValue {
    HeaderValue::from_static(
        "origin, access-control-request-method, access-control-request-headers",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Cors {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Cors::new(
            &s(origins),
            &s(&["GET", "POST"]),
            &s(&["Content-Type", "x-api-key"]),
            &s(&["x-request-id"]),
            credentials,
            DEFAULT_CORS_MAX_AGE,
        )
        .expect("policy")
    }

    fn preflight_req(origin: &str, method: &str, headers: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).expect("v"));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).expect("v"),
        );
        if let Some(v) = headers {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(v).expect("v"),
            );
        }
        h
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_methods_and_headers_only() {
        let p = policy(&["https://app.example.com", "https://*.example.org"], true);
        let ok = p.preflight(
            &Method::OPTIONS,
            &preflight_req(
                "https://app.example.com",
                "POST",
                Some("content-type, X-API-Key"),
            ),
        );
        let Preflight::Allowed(h) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, x-api-key"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(matches!(
            p.preflight(
                &Method::OPTIONS,
                &preflight_req("https://a.b.example.org", "GET", None)
            ),
            Preflight::Allowed(_)
        ));
        for (origin, method, headers, why) in [
            ("https://evil.example", "GET", None, "origin not allowed"),
            // Scheme-specific: the http origin of an allowed host is another origin.
            ("http://app.example.com", "GET", None, "origin not allowed"),
            ("https://example.org", "GET", None, "origin not allowed"),
            (
                "https://app.example.com",
                "DELETE",
                None,
                "method not allowed",
            ),
            (
                "https://app.example.com",
                "GET",
                Some("authorization"),
                "header not allowed",
            ),
            (
                "https://app.example.com",
                "G E T",
                None,
                "bad Access-Control-Request-Method",
            ),
        ] {
            assert_eq!(
                p.preflight(&Method::OPTIONS, &preflight_req(origin, method, headers)),
                Preflight::Refused(why),
                "{origin} {method} {headers:?}"
            );
        }
        // An OPTIONS without the preflight headers is an ordinary request, and so is a GET.
        assert_eq!(
            p.preflight(&Method::OPTIONS, &HeaderMap::new()),
            Preflight::No
        );
        assert_eq!(
            p.preflight(
                &Method::GET,
                &preflight_req("https://app.example.com", "GET", None)
            ),
            Preflight::No
        );
    }

    #[test]
    fn responses_carry_the_edges_headers_not_the_services() {
        let p = policy(&["https://app.example.com"], false);
        let mut resp = HeaderMap::new();
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        let origin = HeaderValue::from_static("https://app.example.com");
        p.apply(Some(&origin), &mut resp);
        assert_eq!(
            resp[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert_eq!(resp[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert_eq!(resp[header::VARY], "origin");
        // Another origin: no CORS header at all, whatever the service said.
        let mut resp = HeaderMap::new();
        resp.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        p.apply(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut resp,
        );
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn a_wildcard_with_credentials_and_scheme_less_origins_are_refused() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let make =
            |o: &[&str], cred| Cors::new(&s(o), &s(&["GET"]), &[], &[], cred, DEFAULT_CORS_MAX_AGE);
        assert!(make(&["*"], true).is_err());
        assert!(make(&["*"], false).is_ok());
        assert!(make(&["app.example.com"], false).is_err());
        let any = make(&["*"], false).expect("policy");
        let Preflight::Allowed(h) = any.preflight(
            &Method::OPTIONS,
            &preflight_req("https://x.test", "GET", None),
        ) else {
            panic!("wildcard preflight")
        };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
