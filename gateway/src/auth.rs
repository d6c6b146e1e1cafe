//! JWT authentication at the edge, and token revocation.
//!
//! A route with `[route.auth]` requires a JWT (HS256, RS256 or ES256; key from a file, an
//! environment variable or a JWKS file) taken from the configured sources in order:
//! `Authorization: Bearer`, a query parameter, or a cookie. `iss`, `aud`, `exp` and `nbf`
//! are checked with a small leeway. A missing or invalid token is refused with 401 before the
//! tunnel is touched. The subject and the claims the route names reach the service in
//! `x-netwall-*` headers; any client-sent copy of those headers is always removed.
//!
//! Revocation (by subject or token id) comes from the admin listener; WebSocket sessions
//! re-check it periodically and are closed at once when it happens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use netwall_config::duration;

/// Default clock-skew allowance for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default interval at which open WebSockets are re-checked against revocations.
pub const DEFAULT_REVALIDATE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Prefix of every header the edge adds about the caller's identity.
pub const IDENTITY_PREFIX: &str = "x-netwall-";
/// Header carrying the token's subject to the service.
pub const SUB_HEADER: HeaderName = HeaderName::from_static("x-netwall-sub");

fn d_leeway() -> Duration {
    DEFAULT_LEEWAY
}
fn d_revalidate() -> Duration {
    DEFAULT_REVALIDATE_INTERVAL
}
fn d_sources() -> Vec<String> {
    vec!["header".to_owned()]
}

/// `[route.auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted algorithms: `HS256`, `RS256`, `ES256`.
    pub algorithms: Vec<String>,
    /// File holding the HS256 secret.
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// Environment variable holding the HS256 secret (wins over the file).
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// PEM public key for RS256 or ES256.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// JWKS file; keys are chosen by the token's `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required audience.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock-skew allowance.
    #[serde(default = "d_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    /// Where the token is looked for, in order: `header`, `query:NAME`, `cookie:NAME`.
    #[serde(default = "d_sources")]
    pub token_sources: Vec<String>,
    /// Claims passed to the service as `x-netwall-claim-NAME` (the subject always goes as
    /// `x-netwall-sub`).
    #[serde(default)]
    pub forward_claims: Vec<String>,
    /// How often open WebSockets are re-checked against revocations.
    #[serde(default = "d_revalidate", deserialize_with = "duration")]
    pub revalidate_interval: Duration,
}

/// Where a token may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Header,
    Query(String),
    Cookie(String),
}

/// A compiled `[route.auth]`.
pub struct Auth {
    config: AuthConfig,
    sources: Vec<Source>,
    hs_key: Option<DecodingKey>,
    public_key: Option<(Algorithm, DecodingKey)>,
    jwks: Option<JwkSet>,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("algorithms", &self.algorithms)
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

/// The verified identity of a caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`.
    pub sub: String,
    /// `jti`, if present.
    pub jti: Option<String>,
    /// `iat`, if present.
    pub iat: Option<u64>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// Headers for the service.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a token was refused (logged, never shown to the client).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in any configured source.
    #[error("no token")]
    Missing,
    /// The token is malformed, badly signed, expired, not yet valid or for someone else.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token or its subject was revoked.
    #[error("token revoked")]
    Revoked,
    /// One token source holds two different tokens.
    #[error("two different tokens in one source")]
    Ambiguous,
}

/// The one value `values` holds (repeats of it allowed), none, or [`AuthError::Ambiguous`].
fn only_one<T: PartialEq>(values: impl Iterator<Item = T>) -> Result<Option<T>, AuthError> {
    let mut found = None;
    for v in values {
        match &found {
            None => found = Some(v),
            Some(f) if *f == v => {}
            Some(_) => return Err(AuthError::Ambiguous),
        }
    }
    Ok(found)
}

/// The credentials of an `Authorization: Bearer` value (the scheme is case-insensitive, RFC
/// 9110 §11.1), or `None` for another scheme.
fn bearer(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Whether a subject reaches the service in `x-netwall-sub` exactly as it was verified.
fn forwardable(sub: &str) -> bool {
    !sub.is_empty() && sub.trim_matches([' ', '\t']) == sub && HeaderValue::from_str(sub).is_ok()
}

fn read(base: &Path, p: &Path) -> Result<Vec<u8>, String> {
    // `join` keeps an absolute `p` as it is.
    let path = base.join(p);
    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Auth {
    /// Compile, loading keys (paths relative to `base`). Errors name what is wrong.
    pub fn new(config: AuthConfig, base: &Path) -> Result<Auth, String> {
        let mut algorithms = Vec::new();
        for a in &config.algorithms {
            algorithms.push(match a.as_str() {
                "HS256" => Algorithm::HS256,
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                other => {
                    return Err(format!(
                        "algorithm `{other}` is not supported (HS256, RS256, ES256)"
                    ));
                }
            });
        }
        if algorithms.is_empty() {
            return Err(
                "algorithms lists none: a route with [route.auth] must accept at least one".into(),
            );
        }
        let mut sources = Vec::new();
        for s in &config.token_sources {
            sources.push(match s.split_once(':') {
                None if s == "header" => Source::Header,
                Some(("query", name)) if !name.is_empty() => Source::Query(name.to_owned()),
                Some(("cookie", name)) if !name.is_empty() => Source::Cookie(name.to_owned()),
                _ => {
                    return Err(format!(
                        "token source `{s}` is not `header`, `query:NAME` or `cookie:NAME`"
                    ));
                }
            });
        }
        let hs_key = if algorithms.contains(&Algorithm::HS256) {
            let secret = match (&config.hs256_secret_env, &config.hs256_secret_file) {
                (Some(var), _) if std::env::var(var).is_ok_and(|v| !v.is_empty()) => {
                    std::env::var(var)
                        .map(String::into_bytes)
                        .unwrap_or_default()
                }
                (_, Some(file)) => read(base, file)?.trim_ascii().to_vec(),
                _ => {
                    return Err(
                        "HS256 needs hs256_secret_file or hs256_secret_env (set and non-empty)"
                            .into(),
                    );
                }
            };
            if secret.len() < 32 {
                return Err("the HS256 secret must be at least 32 bytes".into());
            }
            Some(DecodingKey::from_secret(&secret))
        } else {
            None
        };
        let jwks = match &config.jwks_file {
            Some(f) => Some(
                serde_json::from_slice::<JwkSet>(&read(base, f)?)
                    .map_err(|e| format!("jwks_file: {e}"))?,
            ),
            None => None,
        };
        let public_key = match &config.public_key_file {
            Some(f) => {
                let pem = read(base, f)?;
                if algorithms.contains(&Algorithm::RS256) {
                    Some((
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(&pem)
                            .map_err(|e| format!("public_key_file (RS256): {e}"))?,
                    ))
                } else if algorithms.contains(&Algorithm::ES256) {
                    Some((
                        Algorithm::ES256,
                        DecodingKey::from_ec_pem(&pem)
                            .map_err(|e| format!("public_key_file (ES256): {e}"))?,
                    ))
                } else {
                    return Err("public_key_file needs RS256 or ES256 in algorithms".into());
                }
            }
            None => None,
        };
        let asymmetric = algorithms.iter().any(|a| *a != Algorithm::HS256);
        if asymmetric && public_key.is_none() && jwks.is_none() {
            return Err("RS256/ES256 need public_key_file or jwks_file".into());
        }
        Ok(Auth {
            config,
            sources,
            hs_key,
            public_key,
            jwks,
            algorithms,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Find the token in `headers` and the request's `query`: the first configured source
    /// holding one wins. A source holding two different candidates (two `Authorization`
    /// fields, `?token=a&token=b`, two `session` cookies) is refused as ambiguous: which one a
    /// service reads depends on its framework, and the edge must verify the one it reads.
    pub fn token(&self, headers: &HeaderMap, query: Option<&str>) -> Result<String, AuthError> {
        for source in &self.sources {
            let found = match source {
                Source::Header => only_one(
                    headers
                        .get_all(header::AUTHORIZATION)
                        .iter()
                        .map(|v| v.as_bytes()),
                )?
                .and_then(bearer),
                Source::Query(name) => only_one(query.into_iter().flat_map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .filter(|(k, _)| k == name.as_str())
                        .map(|(_, v)| v)
                }))?
                .map(std::borrow::Cow::into_owned),
                Source::Cookie(name) => only_one(
                    crate::policy::headers::cookies(headers)
                        .filter(|(k, _)| *k == name.as_bytes())
                        .map(|(_, v)| v),
                )?
                .and_then(|v| std::str::from_utf8(v).ok().map(str::to_owned)),
            };
            if let Some(token) = found {
                return Ok(token);
            }
        }
        Err(AuthError::Missing)
    }

    /// Verify a token and build the identity, checking `revocations`.
    pub fn verify(&self, token: &str, revocations: &Revocations) -> Result<Identity, AuthError> {
        let invalid = |e: &dyn std::fmt::Display| AuthError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let from_jwks;
        let key = match header.alg {
            Algorithm::HS256 => self.hs_key.as_ref(),
            alg => match (&self.public_key, &self.jwks, &header.kid) {
                (Some((a, k)), _, _) if *a == alg => Some(k),
                (_, Some(set), Some(kid)) => {
                    let jwk = set
                        .find(kid)
                        .ok_or_else(|| AuthError::Invalid(format!("no key `{kid}` in the JWKS")))?;
                    from_jwks = DecodingKey::from_jwk(jwk).map_err(|e| invalid(&e))?;
                    Some(&from_jwks)
                }
                _ => None,
            },
        }
        .ok_or_else(|| AuthError::Invalid("no key for this token".into()))?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v)
                .map_err(|e| invalid(&e))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or_else(|| AuthError::Invalid("sub is not a string".into()))?
            .to_owned();
        if !forwardable(&sub) {
            // The service learns who the caller is from `x-netwall-sub` alone: a subject it
            // would read differently (trimmed) or not at all must not pass as authenticated.
            return Err(AuthError::Invalid(
                "sub is empty, padded or not a valid header value".into(),
            ));
        }
        let jti = claims
            .get("jti")
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        let iat = claims.get("iat").and_then(serde_json::Value::as_u64);
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| AuthError::Invalid("exp is not a number".into()))?;
        let identity_headers = self.identity_headers(&sub, &claims);
        let identity = Identity {
            sub,
            jti,
            iat,
            exp,
            headers: identity_headers,
        };
        if revocations.is_revoked(&identity) {
            return Err(AuthError::Revoked);
        }
        Ok(identity)
    }

    fn identity_headers(
        &self,
        sub: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Ok(v) = HeaderValue::from_str(sub) {
            out.push((SUB_HEADER, v));
        }
        for name in &self.config.forward_claims {
            let Some(value) = claims.get(name) else {
                continue;
            };
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(
                    format!("{IDENTITY_PREFIX}claim-{}", name.to_ascii_lowercase()).as_bytes(),
                ),
                HeaderValue::from_str(&text),
            ) {
                out.push((n, v));
            }
        }
        out
    }
}

/// Revoked subjects and token ids, kept for a retention time (the longest a token the
/// gateway accepts may live; see `[state] revocation_retention`), so the table is bounded by
/// the revocations of one retention period.
pub struct Revocations {
    /// Subject -> revocation time (seconds since the epoch): tokens issued before are dead.
    subs: RwLock<HashMap<String, u64>>,
    /// Revoked token id -> revocation time.
    jtis: RwLock<HashMap<String, u64>>,
    retention: u64,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::new(crate::state::config::DEFAULT_REVOCATION_RETENTION)
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Revocations {
    /// An empty table keeping each revocation for `retention`.
    pub fn new(retention: std::time::Duration) -> Revocations {
        Revocations {
            subs: RwLock::default(),
            jtis: RwLock::default(),
            retention: retention.as_secs().max(1),
        }
    }

    /// Revoke every token of `sub` issued up to now (tokens without `iat` included).
    pub fn revoke_sub(&self, sub: &str) {
        self.revoke_sub_at(sub, now_secs());
    }

    /// Revoke every token of `sub` issued up to `at`; a later revocation already known wins.
    pub fn revoke_sub_at(&self, sub: &str, at: u64) {
        if let Ok(mut s) = self.subs.write() {
            self.prune(&mut s);
            let e = s.entry(sub.to_owned()).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Revoke one token id.
    pub fn revoke_jti(&self, jti: &str) {
        self.revoke_jti_at(jti, now_secs());
    }

    /// Revoke one token id, as of `at`.
    pub fn revoke_jti_at(&self, jti: &str, at: u64) {
        if let Ok(mut j) = self.jtis.write() {
            self.prune(&mut j);
            let e = j.entry(jti.to_owned()).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Drop revocations older than the retention, each time the table reaches a power of
    /// two: amortised constant time per revocation, and at most twice the live entries.
    fn prune(&self, table: &mut HashMap<String, u64>) {
        if !table.len().is_power_of_two() {
            return;
        }
        let oldest = now_secs().saturating_sub(self.retention);
        table.retain(|_, at| *at >= oldest);
    }

    /// Whether `id` is revoked.
    pub fn is_revoked(&self, id: &Identity) -> bool {
        let by_sub = self
            .subs
            .read()
            .ok()
            .and_then(|s| s.get(&id.sub).copied())
            .is_some_and(|at| id.iat.is_none_or(|iat| iat <= at));
        let by_jti = id
            .jti
            .as_ref()
            .is_some_and(|j| self.jtis.read().is_ok_and(|s| s.contains_key(j)));
        by_sub || by_jti
    }
}

/// Shared by every route of a gateway.
pub type SharedRevocations = Arc<Revocations>;

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(sources: &[&str]) -> Auth {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("secret"), "x".repeat(32)).expect("secret");
        let config = AuthConfig {
            algorithms: vec!["HS256".into()],
            hs256_secret_file: Some("secret".into()),
            hs256_secret_env: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            token_sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            forward_claims: Vec::new(),
            revalidate_interval: DEFAULT_REVALIDATE_INTERVAL,
        };
        Auth::new(config, dir.path()).expect("auth")
    }

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_not_tokens() {
        let a = auth(&["header"]);
        for (value, want) in [
            ("Bearer abc", Ok("abc".to_owned())),
            ("bearer abc", Ok("abc".to_owned())),
            ("BEARER   abc  ", Ok("abc".to_owned())),
            ("Basic abc", Err(AuthError::Missing)),
            ("Bearerabc", Err(AuthError::Missing)),
        ] {
            assert_eq!(
                a.token(&headers(&[("authorization", value)]), None),
                want,
                "{value}"
            );
        }
    }

    #[test]
    fn two_different_tokens_in_one_source_are_ambiguous() {
        let a = auth(&["header", "query:token", "cookie:session"]);
        let two_fields = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(a.token(&two_fields, None), Err(AuthError::Ambiguous));
        let bearer_and_basic =
            headers(&[("authorization", "Bearer a"), ("authorization", "Basic b")]);
        assert_eq!(a.token(&bearer_and_basic, None), Err(AuthError::Ambiguous));
        let repeated = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert_eq!(a.token(&repeated, None), Ok("a".to_owned()));
        let none = HeaderMap::new();
        assert_eq!(
            a.token(&none, Some("token=a&token=b")),
            Err(AuthError::Ambiguous)
        );
        // The name as a service decodes it.
        assert_eq!(
            a.token(&none, Some("token=a&%74oken=b")),
            Err(AuthError::Ambiguous)
        );
        assert_eq!(a.token(&none, Some("x=1&token=a")), Ok("a".to_owned()));
        let cookies = headers(&[
            ("cookie", "session=a; theme=dark"),
            ("cookie", "session =b"),
        ]);
        assert_eq!(a.token(&cookies, None), Err(AuthError::Ambiguous));
        let cookie = headers(&[("cookie", "theme=dark;session= a ")]);
        assert_eq!(a.token(&cookie, None), Ok("a".to_owned()));
        // The first source holding a token decides; a later one is not read.
        let both = headers(&[("authorization", "Bearer a")]);
        assert_eq!(a.token(&both, Some("token=b&token=c")), Ok("a".to_owned()));
    }

    #[test]
    fn a_subject_the_service_would_read_differently_is_not_forwardable() {
        for sub in ["alice", "user 1", "Zoë", "a\tb"] {
            assert!(forwardable(sub), "{sub:?}");
        }
        for sub in [
            "",
            " alice",
            "alice ",
            "\talice",
            "ali\nce",
            "ali\u{7f}ce",
            "a\u{0}",
        ] {
            assert!(!forwardable(sub), "{sub:?}");
        }
    }
}
