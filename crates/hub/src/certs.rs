//! Certificates: checking what an operator uploads, storing it, and
//! keeping the edge's SNI map and per-site HTTPS settings in step with
//! the store. ACME issuance lives in [`crate::acme`] and installs through
//! [`Certs::install`].
//!
//! Private keys are stored only sealed ([`secrets::Secrets::seal_key`],
//! bound to the domain). A key that does not open at start is not served,
//! and the error names the domain.

use crate::error::ApiError;
use edge::tls::{self, HttpsMode as EdgeMode, SiteHttps, Tls};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrets::{KeyId, KeyKind, Secrets};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use store::{CertRecord, CertSource, HttpsMode, SiteTls, Store};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Largest PEM text accepted for a chain or a key.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// One certificate as `certs list` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertInfo {
    pub domain: String,
    pub issuer: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    /// `acme` or `upload`.
    pub source: String,
}

impl CertInfo {
    fn of(record: &CertRecord) -> CertInfo {
        CertInfo {
            domain: record.domain.clone(),
            issuer: record.issuer.clone(),
            not_after: rfc3339(record.not_after),
            source: record.source.as_str().to_owned(),
        }
    }
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// What the leaf certificate says, once it has passed every check.
#[derive(Debug, Clone)]
pub struct Checked {
    pub key: Arc<rustls::sign::CertifiedKey>,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Refuses PEM text in `field` that holds a private key: certificates are
/// stored as given, so a key inside (a combined certificate-and-key file)
/// would be stored in the clear, beside the sealed copy of the key.
pub(crate) fn no_private_key(field: &'static str, pem: &str) -> Result<(), ApiError> {
    if PrivateKeyDer::from_pem_slice(pem.as_bytes()).is_ok() {
        return Err(ApiError::Invalid {
            field,
            message: "must hold certificates only, not a private key".into(),
        });
    }
    Ok(())
}

/// Checks a chain and key for `domain` at `now` (unix seconds): both
/// parse, the key belongs to the leaf, the leaf covers the domain and is
/// valid now. Errors name the field (`cert` or `key`) and the rule.
pub fn check(domain: &str, chain_pem: &str, key_pem: &str, now: i64) -> Result<Checked, ApiError> {
    let invalid = |field: &'static str, message: String| ApiError::Invalid { field, message };
    if chain_pem.len() > MAX_PEM_BYTES {
        return Err(invalid(
            "cert",
            format!("the certificate is larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    if key_pem.len() > MAX_PEM_BYTES {
        return Err(invalid(
            "key",
            format!("the private key is larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    no_private_key("cert", chain_pem)?;
    let key = tls::certified_key(chain_pem, key_pem).map_err(|e| match e {
        tls::TlsError::NoCertificate => invalid(
            "cert",
            "the certificate is not a PEM certificate chain".into(),
        ),
        tls::TlsError::NoKey => invalid("key", "the private key is not a PEM private key".into()),
        other => invalid("key", other.to_string()),
    })?;
    let leaf: CertificateDer<'static> = key
        .end_entity_cert()
        .map_err(|_| invalid("cert", "the chain is empty".into()))?
        .clone()
        .into_owned();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).map_err(|_| {
        invalid(
            "cert",
            "the first certificate does not parse as X.509".into(),
        )
    })?;
    let validity = parsed.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if not_after <= now {
        return Err(invalid(
            "cert",
            format!("the certificate expired on {}", rfc3339(not_after)),
        ));
    }
    if not_before > now {
        return Err(invalid(
            "cert",
            format!(
                "the certificate is not valid before {}",
                rfc3339(not_before)
            ),
        ));
    }
    let end_entity = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| invalid("cert", format!("the first certificate is unusable: {e}")))?;
    let name =
        ServerName::try_from(domain).map_err(|_| invalid("domain", "not a DNS name".into()))?;
    end_entity
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| invalid("cert", format!("the certificate does not cover {domain}")))?;
    Ok(Checked {
        key: Arc::new(key),
        issuer: parsed.issuer().to_string(),
        not_after,
    })
}

/// The certificate side of the hub: store plus the edge's TLS state.
#[derive(Clone)]
pub struct Certs {
    store: Arc<dyn Store>,
    tls: Tls,
    secrets: Secrets,
}

impl Certs {
    pub fn new(store: Arc<dyn Store>, tls: Tls, secrets: Secrets) -> Certs {
        Certs {
            store,
            tls,
            secrets,
        }
    }

    /// Seals and opens the private keys (and the ACME account).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Loads every stored certificate and site setting into the edge. A
    /// certificate whose key does not open (wrong master key, a sealed key
    /// moved from another domain) or no longer parses is not served: it is
    /// logged and audited as `cert.unusable`, naming the domain.
    pub async fn load(&self) -> Result<usize, ApiError> {
        let mut loaded = 0;
        for record in self.store.list_certs().await? {
            match self.open(&record).await {
                Ok(key) => {
                    self.tls.set_cert(&record.domain, Arc::new(key));
                    loaded += 1;
                }
                // Limitation: `certs list` still shows a certificate that is
                // not served here, and ACME orders it again only in its
                // renewal window (recording the failure with the row would
                // let both see it).
                Err(reason) => {
                    tracing::error!(target: "spinforge::audit", event = "cert.unusable",
                        result = "failure", site = %record.domain, reason = %reason,
                        "stored certificate is not served");
                }
            }
        }
        self.reload_sites().await?;
        Ok(loaded)
    }

    /// The servable key of a stored certificate. The error names the
    /// domain and the rule, never key material.
    async fn open(&self, record: &CertRecord) -> Result<rustls::sign::CertifiedKey, String> {
        let id = KeyId::new(KeyKind::CertificateKey, &record.domain);
        let plain = self
            .secrets
            .open_key(&id, &record.key)
            .await
            .map_err(|e| e.to_string())?;
        let key_pem = std::str::from_utf8(&plain)
            .map_err(|_| format!("the certificate key of {} is not PEM text", record.domain))?;
        tls::certified_key(&record.chain_pem, key_pem)
            .map_err(|e| format!("the certificate of {} is unusable: {e}", record.domain))
    }

    async fn reload_sites(&self) -> Result<(), ApiError> {
        let sites = self
            .store
            .list_site_tls()
            .await?
            .into_iter()
            .map(|s| (s.domain.clone(), site_https(&s)))
            .collect::<HashMap<_, _>>();
        self.tls.set_sites(sites);
        Ok(())
    }

    /// Checks and stores an uploaded certificate, then serves it. Nothing
    /// changes when a check fails.
    pub async fn upload(
        &self,
        domain: &str,
        chain_pem: &str,
        key_pem: &str,
        user: &str,
    ) -> Result<CertInfo, ApiError> {
        let domain = domain.to_ascii_lowercase();
        let checked = match check(&domain, chain_pem, key_pem, now()) {
            Ok(checked) => checked,
            Err(e) => {
                tracing::info!(target: "spinforge::audit", event = "cert.upload",
                    result = "failure", site = %domain, user, reason = %e,
                    "certificate upload refused");
                return Err(e);
            }
        };
        let record = self
            .install(&domain, chain_pem, key_pem, checked, CertSource::Upload)
            .await?;
        tracing::info!(target: "spinforge::audit", event = "cert.upload",
            result = "success", site = %domain, user, issuer = %record.issuer,
            not_after = %record.not_after, "certificate uploaded");
        Ok(record)
    }

    /// Stores a checked certificate and swaps it into the edge.
    pub async fn install(
        &self,
        domain: &str,
        chain_pem: &str,
        key_pem: &str,
        checked: Checked,
        source: CertSource,
    ) -> Result<CertInfo, ApiError> {
        let id = KeyId::new(KeyKind::CertificateKey, domain);
        let key = self
            .secrets
            .seal_key(&id, key_pem.as_bytes())
            .await
            .map_err(crate::secrets_api::api_error)?;
        let record = CertRecord {
            domain: domain.to_owned(),
            chain_pem: chain_pem.to_owned(),
            key,
            issuer: checked.issuer,
            not_after: checked.not_after,
            source,
            updated_at: now(),
        };
        self.store.put_cert(&record).await?;
        self.tls.set_cert(domain, checked.key);
        tracing::info!(domain, source = source.as_str(), "certificate installed");
        Ok(CertInfo::of(&record))
    }

    pub async fn list(&self) -> Result<Vec<CertInfo>, ApiError> {
        Ok(self
            .store
            .list_certs()
            .await?
            .iter()
            .map(CertInfo::of)
            .collect())
    }

    /// Stores a site's HTTPS settings and applies them at once.
    pub async fn set_site_https(&self, settings: SiteTls) -> Result<(), ApiError> {
        self.store.put_site_tls(&settings).await?;
        self.reload_sites().await
    }
}

fn site_https(s: &SiteTls) -> SiteHttps {
    SiteHttps {
        mode: match s.mode {
            HttpsMode::Redirect => EdgeMode::Redirect,
            HttpsMode::Both => EdgeMode::Both,
            HttpsMode::HttpsOnly => EdgeMode::HttpsOnly,
        },
        hsts_include_subdomains: s.hsts_include_subdomains,
        hsts_preload: s.hsts_preload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ApiError) -> (&'static str, String) {
        match e {
            ApiError::Invalid { field, message } => (field, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_certificate_for_another_domain_is_refused_naming_the_domain() {
        let (cert, key) = tls::self_signed(&["a.test"], "a").expect("gen");
        assert!(check("a.test", &cert, &key, now()).is_ok());
        let (f, message) = field(check("b.test", &cert, &key, now()).expect_err("other"));
        assert_eq!(f, "cert");
        assert_eq!(message, "the certificate does not cover b.test");
    }

    #[test]
    fn a_certificate_file_holding_the_key_too_is_refused() {
        let (cert, key) = tls::self_signed(&["a.test"], "a").expect("gen");
        let combined = format!("{cert}{key}");
        let (f, message) = field(check("a.test", &combined, &key, now()).expect_err("combined"));
        assert_eq!(f, "cert");
        assert_eq!(message, "must hold certificates only, not a private key");
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let (cert, key) = tls::self_signed(&["a.test"], "a").expect("gen");
        // rcgen's default validity ends in 4096; pretend it is later.
        let later = OffsetDateTime::new_utc(
            time::Date::from_calendar_date(4100, time::Month::January, 1).expect("date"),
            time::Time::MIDNIGHT,
        )
        .unix_timestamp();
        let (f, message) = field(check("a.test", &cert, &key, later).expect_err("expired"));
        assert_eq!(f, "cert");
        assert!(
            message.starts_with("the certificate expired on 4096-"),
            "{message}"
        );
    }
}
