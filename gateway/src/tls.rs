//! Certificates: loading PEM files, choosing a certificate by SNI, generating development
//! certificates, and the rustls configurations of the public and tunnel listeners.
//!
//! TLS 1.2 and 1.3 with rustls' default (safe) suites on the public side; TLS 1.3 only on the
//! tunnel side, where QUIC requires it anyway.

use std::path::Path;
use std::sync::Arc;

use netwall_tunnel::crypto::provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::acme::challenge::{ACME_TLS_ALPN, AcmeState};
use crate::policy::host::HostPattern;

pub use netwall_proto::wire::TUNNEL_ALPN;

/// Failure to set up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate chain with its private key, as DER.
pub struct CertPair {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf as PEM, for generated certificates (to hand to connectors and clients).
    pub generated_pem: Option<String>,
}

impl CertPair {
    /// When the leaf certificate expires, in seconds since the Unix epoch, if it parses.
    pub fn not_after_unix(&self) -> Option<u64> {
        use x509_cert::der::Decode;
        let leaf = self.chain.first()?;
        let cert = x509_cert::Certificate::from_der(leaf.as_ref()).ok()?;
        Some(
            cert.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs(),
        )
    }
}

impl Clone for CertPair {
    fn clone(&self) -> Self {
        CertPair {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            generated_pem: self.generated_pem.clone(),
        }
    }
}

impl CertPair {
    /// Read a PEM chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<CertPair, TlsError> {
        let file_err = |p: &Path, m: String| TlsError::File {
            path: p.display().to_string(),
            message: m,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_err(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(file_err(cert, "contains no PEM certificate".into()));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
        let pair = CertPair {
            chain,
            key: key_der,
            generated_pem: None,
        };
        pair.certified()
            .map_err(|e| file_err(cert, format!("{e} (key {})", key.display())))?;
        Ok(pair)
    }

    /// A self-signed certificate for `names` (development only), valid from a day ago (for
    /// clock skew) for [`SELF_SIGNED_VALIDITY`].
    pub fn self_signed(names: &[String]) -> Result<CertPair, TlsError> {
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + SELF_SIGNED_VALIDITY;
        let key_pair = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key_pair)?;
        Ok(CertPair {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
            generated_pem: Some(cert.pem()),
        })
    }

    /// SHA-256 of the leaf certificate, hex: what a connector pins.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.chain[0].as_ref()))
    }

    pub(crate) fn certified(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let signer = netwall_tunnel::crypto::signing_key(&self.key)?;
        let ck = CertifiedKey::new(self.chain.clone(), signer);
        // A key that does not belong to the certificate would fail every handshake; refuse
        // it here (at start, or in a reload that keeps the old pair serving).
        ck.keys_match()?;
        Ok(Arc::new(ck))
    }
}

/// Chooses the certificate by SNI: exact names first, then the longest wildcard, then the
/// default (first configured) certificate.
#[derive(Debug)]
pub struct SniResolver {
    entries: Vec<(HostPattern, Arc<CertifiedKey>)>,
    /// The first configured certificate; none when every certificate comes from ACME.
    default: Option<Arc<CertifiedKey>>,
    /// Certificates from an ACME CA and the answers to its TLS-ALPN-01 checks.
    acme: Option<Arc<AcmeState>>,
    /// Served to clients that offer only the tunnel ALPN (connectors on the HTTPS port), so
    /// they verify the same certificate as over QUIC.
    tunnel: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Build from `(hosts, pair)` entries; the first entry is the default. Entries may be
    /// empty only when [`SniResolver::with_acme`] follows (the configuration checks it).
    pub fn new(entries: Vec<(Vec<HostPattern>, CertPair)>) -> Result<SniResolver, TlsError> {
        let mut out = Vec::new();
        let mut default = None;
        for (hosts, pair) in entries {
            let ck = pair.certified()?;
            default.get_or_insert_with(|| ck.clone());
            for h in hosts {
                out.push((h, ck.clone()));
            }
        }
        let rank = |p: &HostPattern| match p {
            HostPattern::Exact(_) => (0, 0),
            HostPattern::Suffix(s) => (1, usize::MAX - s.len()),
            HostPattern::Any => (2, 0),
        };
        out.sort_by_key(|(p, _)| rank(p));
        Ok(SniResolver {
            entries: out,
            default,
            acme: None,
            tunnel: None,
        })
    }

    /// Serve the ACME certificate for its names (ahead of the configured ones) and answer
    /// the CA's TLS-ALPN-01 checks.
    pub fn with_acme(mut self, acme: Option<Arc<AcmeState>>) -> SniResolver {
        self.acme = acme;
        self
    }

    /// Whether ACME checks may arrive (the ALPN list offers `acme-tls/1`).
    pub fn answers_acme(&self) -> bool {
        self.acme.is_some()
    }

    /// Also answer tunnel connections (ALPN `netwall/1`) with the tunnel certificate.
    pub fn with_tunnel(mut self, pair: &CertPair) -> Result<SniResolver, TlsError> {
        self.tunnel = Some(pair.certified()?);
        Ok(self)
    }

    /// Whether tunnel connections are accepted.
    pub fn accepts_tunnels(&self) -> bool {
        self.tunnel.is_some()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme
            && hello
                .alpn()
                .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN))
        {
            // Only the CA asks for it, and only the check's certificate answers it.
            let name = hello.server_name()?.to_ascii_lowercase();
            return acme.tls_alpn_answer(&name);
        }
        if let Some(t) = &self.tunnel
            && hello
                .alpn()
                .is_some_and(|mut a| a.any(|p| p == TUNNEL_ALPN))
        {
            return Some(t.clone());
        }
        let fallback = || {
            self.default
                .clone()
                .or_else(|| self.acme.as_ref()?.certificate())
        };
        let Some(name) = hello.server_name() else {
            return fallback();
        };
        let name = name.to_ascii_lowercase();
        if let Some(ck) = self.acme.as_ref().and_then(|a| a.certificate_for(&name)) {
            return Some(ck);
        }
        self.entries
            .iter()
            .find(|(p, _)| p.matches(&name))
            .map(|(_, c)| c.clone())
            .or_else(fallback)
    }
}

/// Lifetime of a generated development certificate: what public CAs issue, so nothing
/// comes to rely on a certificate that never expires.
/// The certificates a listener serves, replaceable while it runs: a reload stores a new
/// [`SniResolver`] and the next handshake uses it; handshakes already done are not touched.
#[derive(Debug)]
pub struct CertStore {
    current: arc_swap::ArcSwap<SniResolver>,
}

impl CertStore {
    /// A store serving `resolver`.
    pub fn new(resolver: SniResolver) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: arc_swap::ArcSwap::from_pointee(resolver),
        })
    }

    /// Serve `resolver` from the next handshake on.
    pub fn replace(&self, resolver: SniResolver) {
        self.current.store(Arc::new(resolver));
    }

    /// Whether tunnel connections are accepted (fixed at start: the ALPN list is).
    pub fn accepts_tunnels(&self) -> bool {
        self.current.load().accepts_tunnels()
    }

    /// Whether ACME TLS-ALPN-01 checks are answered (fixed at start, like the ALPN list).
    pub fn answers_acme(&self) -> bool {
        self.current.load().answers_acme()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

pub const SELF_SIGNED_VALIDITY: time::Duration = time::Duration::days(90);

/// Sessions the public listener remembers for resumption. Each full handshake stores two
/// single-use TLS 1.3 tickets (or one TLS 1.2 session), so this covers about the last 2,000
/// clients. rustls's default of 256 covered 128, and under steady new-client traffic fewer:
/// a client coming back finds its tickets pushed out and pushes out the next one's, so a
/// returning browser on a busy edge seldom resumed. Full, the cache adds about 3.5 MB to the
/// gateway's resident memory (measured after 30,000 handshakes); the oldest entries go first,
/// so a flood of handshakes costs clients a full handshake, never more memory. Tickets stay
/// server-side and single-use: no ticket key whose theft would unlock past TLS 1.2 sessions.
pub const SESSION_CACHE_ENTRIES: usize = 4_096;

/// Public listener TLS: 1.2 and 1.3, ALPN h2 then http/1.1 (and `netwall/1` when the
/// resolver accepts tunnels; no browser offers it). The server's cipher-suite order
/// (rustls's: AEADs with forward secrecy, strongest first) wins over the client's, so a
/// client cannot steer the handshake to the weakest suite both support.
pub fn public_server_config(
    resolver: Arc<CertStore>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let tunnels = resolver.accepts_tunnels();
    let acme = resolver.answers_acme();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.ignore_client_order = true;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tunnels {
        cfg.alpn_protocols.push(TUNNEL_ALPN.to_vec());
    }
    if acme {
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(cfg))
}

/// TLS of a TCP route that ends TLS at the edge: the public certificates (by SNI), TLS 1.2
/// and 1.3, and, with `client_ca`, a client certificate it issued required in the handshake,
/// so a client without one is refused before a byte reaches the tunnel.
pub fn tcp_server_config(
    resolver: Arc<CertStore>,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let Some(client_ca) = client_ca else {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.ignore_client_order = true;
        return Ok(Arc::new(cfg));
    };
    let file_err = |m: String| TlsError::File {
        path: client_ca.display().to_string(),
        message: m,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(client_ca).map_err(|e| file_err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| file_err(e.to_string()))?)
            .map_err(|e| file_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(file_err("contains no PEM certificate".into()));
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| file_err(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Tunnel listener TLS: 1.3 only, ALPN `netwall/1`.
pub fn tunnel_server_config(pair: &CertPair) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())?;
    cfg.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_round_trips() {
        let pair = super::CertPair::self_signed(&["localhost".into()]).expect("generate");
        let pem = pair
            .generated_pem
            .clone()
            .expect("generated certificates carry PEM");
        let back = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("parse");
        assert_eq!(back, vec![pair.chain[0].clone()]);
    }
}
