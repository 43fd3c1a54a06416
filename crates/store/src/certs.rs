//! The part of the store that TLS needs: certificates, the ACME account
//! and each site's HTTPS settings. Kept apart from the site and release
//! methods of [`crate::Store`], which requires it.

use crate::sealed::sealed_from_row;
use crate::sqlite::SqliteStore;
use crate::{Result, Sealed, StoreError};
use async_trait::async_trait;
use sqlx::Row;

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Acme,
    Upload,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Acme => "acme",
            CertSource::Upload => "upload",
        }
    }

    fn parse(text: &str) -> Result<CertSource> {
        match text {
            "acme" => Ok(CertSource::Acme),
            "upload" => Ok(CertSource::Upload),
            other => Err(StoreError::Corrupt(format!("certificate source {other:?}"))),
        }
    }
}

/// A stored certificate with its sealed key.
#[derive(Debug, Clone)]
pub struct CertRecord {
    pub domain: String,
    pub chain_pem: String,
    /// The PEM private key, sealed (purpose `certificate-key`, name =
    /// domain).
    pub key: Sealed,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: i64,
    pub source: CertSource,
    /// Unix seconds.
    pub updated_at: i64,
}

/// How a site answers plain HTTP once it has a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpsMode {
    /// 308 to the same URL over HTTPS (the default).
    Redirect,
    /// Serve the site over both.
    Both,
    /// Refuse plain HTTP.
    HttpsOnly,
}

impl HttpsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpsMode::Redirect => "redirect",
            HttpsMode::Both => "both",
            HttpsMode::HttpsOnly => "https_only",
        }
    }

    pub fn parse(text: &str) -> Option<HttpsMode> {
        match text {
            "redirect" => Some(HttpsMode::Redirect),
            "both" => Some(HttpsMode::Both),
            "https_only" => Some(HttpsMode::HttpsOnly),
            _ => None,
        }
    }
}

/// A site's HTTPS settings; sites without a row get the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTls {
    pub domain: String,
    pub mode: HttpsMode,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
}

/// A domain whose ACME orders keep failing: how often in a row, and the
/// earliest time of the next order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeBackoff {
    pub domain: String,
    pub failures: u32,
    /// Unix seconds.
    pub next_attempt: i64,
}

#[async_trait]
pub trait CertStore: Send + Sync + 'static {
    /// Inserts or replaces the certificate of `record.domain`.
    async fn put_cert(&self, record: &CertRecord) -> Result<()>;
    async fn cert(&self, domain: &str) -> Result<Option<CertRecord>>;
    /// Every stored certificate, by domain.
    async fn list_certs(&self) -> Result<Vec<CertRecord>>;
    /// Deletes the certificate and HTTPS settings of a deleted site.
    async fn delete_site_tls(&self, domain: &str) -> Result<()>;

    /// The ACME account credentials for a directory URL, sealed (purpose
    /// `acme-account`, name = directory).
    async fn acme_account(&self, directory: &str) -> Result<Option<Sealed>>;
    async fn put_acme_account(&self, directory: &str, credentials: &Sealed, now: i64)
        -> Result<()>;

    async fn put_site_tls(&self, settings: &SiteTls) -> Result<()>;
    /// Every site's stored HTTPS settings.
    async fn list_site_tls(&self) -> Result<Vec<SiteTls>>;

    /// Every domain's ACME backoff, by domain.
    async fn list_acme_backoff(&self) -> Result<Vec<AcmeBackoff>>;
    /// Inserts or replaces the backoff of `backoff.domain`.
    async fn put_acme_backoff(&self, backoff: &AcmeBackoff, now: i64) -> Result<()>;
    /// Forgets a domain's backoff (its order succeeded).
    async fn clear_acme_backoff(&self, domain: &str) -> Result<()>;
}

fn cert_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CertRecord> {
    let domain: String = row.try_get("domain")?;
    Ok(CertRecord {
        key: sealed_from_row(row, &format!("the certificate key of {domain}"))?,
        domain,
        chain_pem: row.try_get("chain_pem")?,
        issuer: row.try_get("issuer")?,
        not_after: row.try_get("not_after")?,
        source: CertSource::parse(row.try_get::<&str, _>("source")?)?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl CertStore for SqliteStore {
    async fn put_cert(&self, record: &CertRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO certificates (domain, chain_pem, kek_id, wrapped_key, ciphertext, \
             issuer, not_after, source, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (domain) DO UPDATE SET chain_pem = excluded.chain_pem, \
             legacy_plaintext = NULL, kek_id = excluded.kek_id, \
             wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext, \
             issuer = excluded.issuer, \
             not_after = excluded.not_after, source = excluded.source, \
             updated_at = excluded.updated_at",
        )
        .bind(&record.domain)
        .bind(&record.chain_pem)
        .bind(&record.key.kek_id)
        .bind(&record.key.wrapped_key)
        .bind(&record.key.ciphertext)
        .bind(&record.issuer)
        .bind(record.not_after)
        .bind(record.source.as_str())
        .bind(record.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn cert(&self, domain: &str) -> Result<Option<CertRecord>> {
        let row = sqlx::query("SELECT * FROM certificates WHERE domain = ?")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    async fn list_certs(&self) -> Result<Vec<CertRecord>> {
        let rows = sqlx::query("SELECT * FROM certificates ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn delete_site_tls(&self, domain: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM certificates WHERE domain = ?")
            .bind(domain)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM site_tls WHERE domain = ?")
            .bind(domain)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM acme_backoff WHERE domain = ?")
            .bind(domain)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<Sealed>> {
        let row = sqlx::query(
            "SELECT kek_id, wrapped_key, ciphertext FROM acme_accounts WHERE directory = ?",
        )
        .bind(directory)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| sealed_from_row(&r, &format!("the ACME account key of {directory}")))
            .transpose()
    }

    async fn put_acme_account(
        &self,
        directory: &str,
        credentials: &Sealed,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, kek_id, wrapped_key, ciphertext, created_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (directory) DO UPDATE SET \
             legacy_plaintext = NULL, kek_id = excluded.kek_id, \
             wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext",
        )
        .bind(directory)
        .bind(&credentials.kek_id)
        .bind(&credentials.wrapped_key)
        .bind(&credentials.ciphertext)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_site_tls(&self, settings: &SiteTls) -> Result<()> {
        sqlx::query(
            "INSERT INTO site_tls (domain, mode, hsts_include_subdomains, hsts_preload) \
             VALUES (?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET mode = excluded.mode, \
             hsts_include_subdomains = excluded.hsts_include_subdomains, \
             hsts_preload = excluded.hsts_preload",
        )
        .bind(&settings.domain)
        .bind(settings.mode.as_str())
        .bind(settings.hsts_include_subdomains)
        .bind(settings.hsts_preload)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => StoreError::Backend(e),
        })?;
        Ok(())
    }

    async fn list_site_tls(&self) -> Result<Vec<SiteTls>> {
        let rows = sqlx::query("SELECT * FROM site_tls ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let mode: &str = row.try_get("mode")?;
                Ok(SiteTls {
                    domain: row.try_get("domain")?,
                    mode: HttpsMode::parse(mode)
                        .ok_or_else(|| StoreError::Corrupt(format!("https mode {mode:?}")))?,
                    hsts_include_subdomains: row.try_get("hsts_include_subdomains")?,
                    hsts_preload: row.try_get("hsts_preload")?,
                })
            })
            .collect()
    }

    async fn list_acme_backoff(&self) -> Result<Vec<AcmeBackoff>> {
        let rows = sqlx::query("SELECT * FROM acme_backoff ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let failures: i64 = row.try_get("failures")?;
                Ok(AcmeBackoff {
                    domain: row.try_get("domain")?,
                    failures: u32::try_from(failures).map_err(|_| {
                        StoreError::Corrupt(format!("ACME failure count {failures}"))
                    })?,
                    next_attempt: row.try_get("next_attempt")?,
                })
            })
            .collect()
    }

    async fn put_acme_backoff(&self, backoff: &AcmeBackoff, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_backoff (domain, failures, next_attempt, updated_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET \
             failures = excluded.failures, next_attempt = excluded.next_attempt, \
             updated_at = excluded.updated_at",
        )
        .bind(&backoff.domain)
        .bind(i64::from(backoff.failures))
        .bind(backoff.next_attempt)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_acme_backoff(&self, domain: &str) -> Result<()> {
        sqlx::query("DELETE FROM acme_backoff WHERE domain = ?")
            .bind(domain)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
