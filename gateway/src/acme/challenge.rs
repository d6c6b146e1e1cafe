//! What the gateway shows an ACME CA while it checks a name, and the certificate the CA
//! issued: shared by the HTTPS certificate resolver (TLS-ALPN-01 and the issued
//! certificate), the plain-HTTP listener (HTTP-01) and the task that orders certificates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::tls::TlsError;

/// The ALPN protocol a CA offers when it checks TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Path prefix of HTTP-01 answers (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Challenge answers being checked and the certificate in use.
#[derive(Debug, Default)]
pub struct AcmeState {
    names: Vec<String>,
    issued: ArcSwapOption<CertifiedKey>,
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    http: RwLock<HashMap<String, String>>,
}

impl AcmeState {
    /// State for a certificate covering `names` (lowercase).
    pub fn new(names: Vec<String>) -> Arc<AcmeState> {
        Arc::new(AcmeState {
            names,
            ..AcmeState::default()
        })
    }

    /// The names the certificate covers.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The issued certificate, for a server name it covers.
    pub fn certificate_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if self.names.iter().any(|n| n == name) {
            self.issued.load_full()
        } else {
            None
        }
    }

    /// The issued certificate, if there is one yet.
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.issued.load_full()
    }

    /// Serve `cert` from the next handshake on.
    pub fn set_certificate(&self, cert: Arc<CertifiedKey>) {
        self.issued.store(Some(cert));
    }

    /// The TLS-ALPN-01 certificate for `name`, while the CA checks it.
    pub fn tls_alpn_answer(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn.read().ok()?.get(name).cloned()
    }

    /// The HTTP-01 answer (the key authorization) for `token`, while the CA checks it.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.read().ok()?.get(token).cloned()
    }

    /// Answer TLS-ALPN-01 for `name` with a certificate carrying `digest` (SHA-256 of the
    /// key authorization) in its critical acmeIdentifier extension (RFC 8737 §3).
    pub fn arm_tls_alpn(&self, name: &str, digest: &[u8]) -> Result<(), TlsError> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = netwall_tunnel::crypto::signing_key(&der)?;
        let ck = CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signer);
        if let Ok(mut m) = self.tls_alpn.write() {
            m.insert(name.to_owned(), Arc::new(ck));
        }
        Ok(())
    }

    /// Answer HTTP-01 for `token` with `key_authorization`.
    pub fn arm_http(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http.write() {
            m.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    /// Stop answering every challenge.
    pub fn disarm(&self) {
        if let Ok(mut m) = self.tls_alpn.write() {
            m.clear();
        }
        if let Ok(mut m) = self.http.write() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let state = AcmeState::new(vec!["app.example".into()]);
        let digest = [7u8; 32];
        state.arm_tls_alpn("app.example", &digest).expect("arm");
        let ck = state.tls_alpn_answer("app.example").expect("armed");
        use x509_cert::der::Decode;
        let cert = x509_cert::Certificate::from_der(ck.cert[0].as_ref()).expect("parse");
        let ext = cert
            .tbs_certificate
            .extensions
            .expect("extensions")
            .into_iter()
            .find(|e| e.extn_id.to_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING (0x04) of 32 bytes holding the digest.
        assert_eq!(ext.extn_value.as_bytes()[..2], [0x04, 32]);
        assert_eq!(&ext.extn_value.as_bytes()[2..], &digest);
        assert!(state.tls_alpn_answer("other.example").is_none());
        state.disarm();
        assert!(state.tls_alpn_answer("app.example").is_none());
    }

    #[test]
    fn the_issued_certificate_answers_only_its_names() {
        let state = AcmeState::new(vec!["app.example".into()]);
        assert!(state.certificate_for("app.example").is_none());
        let pair = crate::tls::CertPair::self_signed(&["app.example".into()]).expect("cert");
        let signer = netwall_tunnel::crypto::signing_key(&pair.key).expect("key");
        state.set_certificate(Arc::new(CertifiedKey::new(pair.chain.clone(), signer)));
        assert!(state.certificate_for("app.example").is_some());
        assert!(state.certificate_for("else.example").is_none());
        state.arm_http("tok", "tok.thumb");
        assert_eq!(state.http_answer("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(state.http_answer("other"), None);
    }
}
