//! `[https.acme]`: where certificates come from when an ACME CA issues them.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use netwall_config::{ConfigError, Located, duration};

use crate::config::GatewayConfig;

/// Renew this long before expiry: Let's Encrypt's advice for its 90-day certificates (renew
/// with a third of the lifetime left), so a CA outage of weeks still leaves time.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// After a failed attempt, try again this much later: soon enough that a short CA outage
/// costs little of the renewal margin, rare enough to stay far under the CA's rate limits.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);
/// Shortest retry delay accepted, so a misconfiguration cannot hammer a CA.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

fn d_renew_before() -> Duration {
    DEFAULT_RENEW_BEFORE
}
fn d_retry_after() -> Duration {
    DEFAULT_RETRY_AFTER
}
fn d_challenge() -> ChallengeKind {
    ChallengeKind::TlsAlpn01
}

/// How the CA checks that the gateway answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChallengeKind {
    /// RFC 8737: a special certificate on the HTTPS port, for clients asking ALPN
    /// `acme-tls/1`. Needs nothing but the HTTPS listener on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: a token under `/.well-known/acme-challenge/` on the plain-HTTP
    /// listener (`[http]`, port 80).
    #[serde(rename = "http-01")]
    Http01,
}

/// `[https.acme]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Names in the certificate; by default every exact host in the routes.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Folder for the account key and the issued certificate (kept across restarts, so a
    /// restart does not ask the CA again). Relative to the configuration's folder.
    pub storage: PathBuf,
    /// `tls-alpn-01` (default) or `http-01`.
    #[serde(default = "d_challenge")]
    pub challenge: ChallengeKind,
    /// Renew this long before the certificate expires.
    #[serde(default = "d_renew_before", deserialize_with = "duration")]
    pub renew_before: Duration,
    /// Wait this long after a failed attempt.
    #[serde(default = "d_retry_after", deserialize_with = "duration")]
    pub retry_after: Duration,
    /// PEM root that signs the directory's own HTTPS certificate, for a private CA; the
    /// system's roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl AcmeConfig {
    /// The names to ask for: `domains`, or every exact route host.
    pub fn names(&self, config: &GatewayConfig) -> Vec<String> {
        let mut names: Vec<String> = if self.domains.is_empty() {
            config
                .routes
                .iter()
                .map(|r| r.host.get_ref().to_ascii_lowercase())
                .filter(|h| !h.contains('*') && h != "localhost")
                .collect()
        } else {
            self.domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect()
        };
        names.sort();
        names.dedup();
        names
    }

    pub(crate) fn validate(
        &self,
        at: &Located<'_>,
        span: Range<usize>,
        config: &GatewayConfig,
    ) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let here = |key: &str| at.find("https.acme", Some(key)).or(Some(span.clone()));
        if !self.directory.starts_with("https://") {
            errs.push(at.error(
                here("directory"),
                "https.acme.directory",
                "must be an https:// URL (the CA's directory)",
            ));
        }
        if self.names(config).is_empty() {
            errs.push(at.error(
                here("domains"),
                "https.acme.domains",
                "names no domain, and no route has an exact host to default to",
            ));
        }
        for d in &self.domains {
            if d.contains('*') {
                errs.push(at.error(
                    here("domains"),
                    "https.acme.domains",
                    &format!("`{d}`: wildcards need DNS-01, which the gateway does not answer"),
                ));
            }
        }
        if self.retry_after < MIN_RETRY_AFTER {
            errs.push(at.error(
                here("retry_after"),
                "https.acme.retry_after",
                "must be at least 1s",
            ));
        }
        if self.challenge == ChallengeKind::Http01 && config.http.is_none() {
            errs.push(at.error(
                here("challenge"),
                "https.acme.challenge",
                "http-01 is answered on the plain-HTTP listener: add [http]",
            ));
        }
        errs
    }
}
