//! Which public certificates a configuration asks for: the files under `[https]`, and the
//! development certificate for every routed host when `self_signed` is on. Start and reload
//! both build them here, and set each certificate's expiry gauge.

use std::path::Path;

use crate::config::GatewayConfig;
use crate::metrics::{self, Metrics};
use crate::route::{HostPattern, RouteTable};
use crate::tls::{CertPair, TlsError};

/// A generated development certificate and the names it covers.
#[derive(Clone)]
pub struct Generated {
    /// Host names in the certificate.
    pub names: Vec<String>,
    /// The certificate.
    pub pair: CertPair,
}

/// The public certificates of one configuration.
pub struct PublicCerts {
    /// Host patterns each certificate serves, in configuration order (the first is the
    /// default for clients that send no server name).
    pub entries: Vec<(Vec<HostPattern>, CertPair)>,
    /// The development certificate, when `self_signed` is on.
    pub generated: Option<Generated>,
}

/// Set the expiry gauge of one certificate.
pub fn expiry(metrics: &Metrics, listener: &'static str, file: String, pair: &CertPair) {
    if let Some(t) = pair.not_after_unix() {
        metrics
            .certificate_not_after
            .get_or_create(&metrics::CertificateLabel { listener, file })
            .set(i64::try_from(t).unwrap_or(i64::MAX));
    }
}

/// Load the certificate files `config` names (relative to `base`) and, with `self_signed`,
/// the development certificate for the hosts of `routes`. `previous` is the development
/// certificate in use: kept when it covers the same names, so a reload does not change a
/// certificate clients may have pinned.
pub fn load(
    config: &GatewayConfig,
    base: &Path,
    routes: &RouteTable,
    metrics: &Metrics,
    previous: Option<&Generated>,
) -> Result<PublicCerts, TlsError> {
    let mut entries = Vec::new();
    for c in &config.https.certificates {
        let pair = CertPair::load(&base.join(c.cert.get_ref()), &base.join(c.key.get_ref()))?;
        expiry(
            metrics,
            "https",
            c.cert.get_ref().display().to_string(),
            &pair,
        );
        let hosts = c
            .hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect();
        entries.push((hosts, pair));
    }
    let mut generated = None;
    if config.https.self_signed {
        let mut names: Vec<String> = routes.exact_hosts().map(str::to_owned).collect();
        names.extend(
            config
                .routes
                .iter()
                .map(|r| r.host.get_ref().to_ascii_lowercase())
                .filter(|h| h.starts_with("*.")),
        );
        names.push("localhost".to_owned());
        names.sort();
        names.dedup();
        let g = match previous {
            Some(p) if p.names == names => p.clone(),
            _ => Generated {
                pair: CertPair::self_signed(&names)?,
                names,
            },
        };
        expiry(metrics, "https", "generated".into(), &g.pair);
        entries.push((vec![HostPattern::Any], g.pair.clone()));
        generated = Some(g);
    }
    Ok(PublicCerts { entries, generated })
}
