//! Certificates from an ACME CA (RFC 8555): ordered at start when the storage holds none for
//! the configured names, renewed `renew_before` their expiry, and served from the next
//! handshake on, without a restart. A failed order is logged and counted, the certificate in
//! use keeps serving, and the order is tried again `retry_after` later.
//!
//! The protocol is `instant-acme`'s; this module decides when to order, answers the CA's
//! challenge through [`challenge::AcmeState`], and keeps what was issued in
//! [`storage::Storage`].

pub mod challenge;
pub mod config;
pub mod storage;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::challenge::AcmeState;
use self::config::{AcmeConfig, ChallengeKind};
use self::storage::Storage;
use crate::metrics::{Metrics, ResultLabel};
use crate::tls::CertPair;

/// Longest one order may take, account to certificate: a CA validates in seconds, so a
/// minute past that is an outage, and the next attempt comes `retry_after` later.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// How the order's state is polled while the CA validates and signs: quick at first (a CA
/// usually takes under a second), backing off to spare it, within the order's deadline.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// The certificate manager of one gateway.
pub struct Acme {
    config: AcmeConfig,
    names: Vec<String>,
    storage: Storage,
    state: Arc<AcmeState>,
    metrics: Arc<Metrics>,
    /// When the certificate in use expires (Unix seconds).
    not_after: Option<u64>,
}

impl Acme {
    /// Open the storage (relative to `base`) and serve the certificate it holds for the
    /// configured names, if any.
    pub fn prepare(
        config: &AcmeConfig,
        names: Vec<String>,
        base: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Acme, String> {
        let storage = Storage::open(base.join(&config.storage))?;
        let state = AcmeState::new(names.clone());
        let mut acme = Acme {
            config: config.clone(),
            names,
            storage,
            state,
            metrics,
            not_after: None,
        };
        match acme.storage.certificate(&acme.names) {
            Ok(Some(pair)) => {
                info!(names = ?acme.names, file = %acme.storage.certificate_path().display(), "serving the stored ACME certificate");
                acme.serve(&pair)?;
            }
            Ok(None) => {
                info!(names = ?acme.names, "no stored ACME certificate for these names; ordering one")
            }
            // An unreadable stored certificate is replaced by a fresh order.
            Err(e) => error!(error = %e, "stored ACME certificate unusable; ordering a new one"),
        }
        Ok(acme)
    }

    /// The state the certificate resolver and the HTTP listener read.
    pub fn state(&self) -> Arc<AcmeState> {
        self.state.clone()
    }

    fn serve(&mut self, pair: &CertPair) -> Result<(), String> {
        let ck = pair.certified().map_err(|e| e.to_string())?;
        self.state.set_certificate(ck);
        self.not_after = pair.not_after_unix();
        crate::certs::expiry(
            &self.metrics,
            "https",
            self.storage.certificate_path().display().to_string(),
            pair,
        );
        Ok(())
    }

    /// How long until the certificate in use is due for renewal (zero when there is none;
    /// `retry_after` when its expiry cannot be read, so a CA is never asked in a loop).
    fn until_due(&self) -> Duration {
        let Some(not_after) = self.not_after else {
            return if self.state.certificate().is_some() {
                self.config.retry_after
            } else {
                Duration::ZERO
            };
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let due = not_after.saturating_sub(self.config.renew_before.as_secs());
        Duration::from_secs(due.saturating_sub(now))
    }

    /// Order and renew until `shutdown`: one wait, then one order, each round; the wait is
    /// until renewal after an issuance and `retry_after` after a failure.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut wait = self.until_due();
        loop {
            if !wait.is_zero() {
                info!(names = ?self.names, after = ?wait, "next ACME order scheduled");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no certificate within {ORDER_TIMEOUT:?}")),
            };
            self.state.disarm();
            wait = match result.and_then(|pair| self.serve(&pair).map(|()| pair)) {
                Ok(pair) => {
                    self.count("issued");
                    info!(names = ?self.names, not_after = pair.not_after_unix(), directory = %self.config.directory, "ACME certificate issued; serving it from the next handshake");
                    match self.until_due() {
                        // A lifetime shorter than `renew_before`: renewing at once would
                        // order in a loop. Order again no sooner than `retry_after`.
                        due if due.is_zero() => {
                            warn!(renew_before = ?self.config.renew_before, not_after = pair.not_after_unix(), "the CA's certificates live shorter than renew_before; renewing every retry_after");
                            self.config.retry_after
                        }
                        due => due,
                    }
                }
                Err(e) => {
                    self.count("failed");
                    error!(error = %e, names = ?self.names, directory = %self.config.directory, retry_in = ?self.config.retry_after, serving_until = self.not_after, "ACME order failed; the certificate in use keeps serving");
                    self.config.retry_after
                }
            };
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .acme_orders
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    async fn account(&self) -> Result<Account, String> {
        let e = |what: &str, err: instant_acme::Error| format!("{what}: {err}");
        let builder = || match &self.config.ca_file {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        if let Some(json) = self.storage.account(&self.config.directory)? {
            let credentials =
                serde_json::from_str(&json).map_err(|err| format!("stored ACME account: {err}"))?;
            return builder()
                .map_err(|err| e("ACME client", err))?
                .from_credentials(credentials)
                .await
                .map_err(|err| e("ACME account", err));
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()
            .map_err(|err| e("ACME client", err))?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await
            .map_err(|err| e("ACME account", err))?;
        let json = serde_json::to_string(&credentials)
            .map_err(|err| format!("ACME account credentials: {err}"))?;
        self.storage.save_account(&self.config.directory, &json)?;
        info!(id = account.id(), "ACME account created");
        Ok(account)
    }

    /// One order: answer every authorization's challenge, finalize with a fresh key, store
    /// and return the certificate.
    async fn order(&self) -> Result<CertPair, String> {
        fn err(what: &'static str) -> impl Fn(instant_acme::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(err("new order"))?;
        let kind = match self.config.challenge {
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(err("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let key_authorization = challenge.key_authorization();
            match self.config.challenge {
                ChallengeKind::TlsAlpn01 => {
                    let name = challenge.identifier().to_string();
                    self.state
                        .arm_tls_alpn(&name, key_authorization.digest().as_ref())
                        .map_err(|e| e.to_string())?;
                }
                ChallengeKind::Http01 => self
                    .state
                    .arm_http(&challenge.token, key_authorization.as_str()),
            }
            challenge.set_ready().await.map_err(err("challenge"))?;
        }
        let status = order.poll_ready(&POLL).await.map_err(err("validation"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the CA did not validate the order ({status:?})"));
        }
        let mut params =
            rcgen::CertificateParams::new(self.names.clone()).map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(err("finalize"))?;
        let chain = order
            .poll_certificate(&POLL)
            .await
            .map_err(err("certificate"))?;
        self.storage
            .save_certificate(&self.names, &chain, &key.serialize_pem())?;
        self.storage
            .certificate(&self.names)?
            .ok_or_else(|| "the stored certificate vanished".to_owned())
    }
}
