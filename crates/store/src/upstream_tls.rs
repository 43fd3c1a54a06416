//! Each proxy site's own TLS settings towards its upstream: a CA to trust
//! and a client certificate for mutual TLS. The client key is carried
//! sealed; this module stores it and never sees it in plain form.

use crate::sealed::sealed_from_row;
use crate::sqlite::SqliteStore;
use crate::{Result, Sealed, StoreError};
use async_trait::async_trait;
use sqlx::Row;

/// A site's client certificate: the PEM chain and its sealed key
/// (purpose `upstream-client-key`, name = domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamClientCert {
    pub chain_pem: String,
    pub key: Sealed,
}

/// One site's upstream TLS settings. At least one part is set; a site
/// with neither has no row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUpstreamTls {
    pub domain: String,
    /// PEM CA certificates trusted besides the system's roots.
    pub ca_pem: Option<String>,
    pub client: Option<UpstreamClientCert>,
    /// Unix seconds (the edge caches clients by its own version counter).
    pub updated_at: i64,
}

#[async_trait]
pub trait UpstreamTlsStore: Send + Sync + 'static {
    /// Inserts or replaces the settings of `settings.domain`;
    /// [`StoreError::NotFound`] if the site does not exist.
    async fn put_upstream_tls(&self, settings: &SiteUpstreamTls) -> Result<()>;
    /// Removes a site's settings; true iff it had any.
    async fn clear_upstream_tls(&self, domain: &str) -> Result<bool>;
    async fn upstream_tls(&self, domain: &str) -> Result<Option<SiteUpstreamTls>>;
    /// Every site's settings, by domain.
    async fn list_upstream_tls(&self) -> Result<Vec<SiteUpstreamTls>>;
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<SiteUpstreamTls> {
    let domain: String = row.try_get("domain")?;
    let chain: Option<String> = row.try_get("client_cert_pem")?;
    let client = match chain {
        None => None,
        Some(chain_pem) => Some(UpstreamClientCert {
            chain_pem,
            key: sealed_from_row(row, &format!("the upstream client key of {domain}"))?,
        }),
    };
    Ok(SiteUpstreamTls {
        ca_pem: row.try_get("ca_pem")?,
        client,
        updated_at: row.try_get("updated_at")?,
        domain,
    })
}

#[async_trait]
impl UpstreamTlsStore for SqliteStore {
    async fn put_upstream_tls(&self, settings: &SiteUpstreamTls) -> Result<()> {
        let key = settings.client.as_ref().map(|c| &c.key);
        sqlx::query(
            "INSERT INTO site_upstream_tls (domain, ca_pem, client_cert_pem, kek_id, \
             wrapped_key, ciphertext, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (domain) DO UPDATE SET ca_pem = excluded.ca_pem, \
             client_cert_pem = excluded.client_cert_pem, kek_id = excluded.kek_id, \
             wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at",
        )
        .bind(&settings.domain)
        .bind(&settings.ca_pem)
        .bind(settings.client.as_ref().map(|c| &c.chain_pem))
        .bind(key.map(|k| &k.kek_id))
        .bind(key.map(|k| &k.wrapped_key))
        .bind(key.map(|k| &k.ciphertext))
        .bind(settings.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => StoreError::Backend(e),
        })?;
        Ok(())
    }

    async fn clear_upstream_tls(&self, domain: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM site_upstream_tls WHERE domain = ?")
            .bind(domain)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn upstream_tls(&self, domain: &str) -> Result<Option<SiteUpstreamTls>> {
        let row = sqlx::query("SELECT * FROM site_upstream_tls WHERE domain = ?")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn list_upstream_tls(&self) -> Result<Vec<SiteUpstreamTls>> {
        let rows = sqlx::query("SELECT * FROM site_upstream_tls ORDER BY domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }
}
