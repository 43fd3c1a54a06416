//! Rotation of one site's secrets by incident containment (issue 9).
//!
//! SpinForge cannot change a credential at the third party that issued
//! it, so "rotating" here means what the platform can do on its own: every
//! stored version of the site's secrets is sealed again under fresh data
//! keys (a data key that sat in a compromised process's memory opens
//! nothing any more), and each current secret is withheld from app starts
//! until someone sets a new value, which the operator gets from the third
//! party. Lifting hands back the values no one has replaced; the fresh
//! data keys stay. Restarting apps and the audit trail are the caller's.

use crate::crypto::{self, KeyBytes};
use crate::{db, unix_now, Result, Secrets, SecretsError};

/// What [`Secrets::rotate_site`] did, without values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRotation {
    /// The site's secrets now withheld, sorted.
    pub withheld: Vec<String>,
    /// Stored versions sealed again under fresh data keys.
    pub resealed: usize,
}

impl Secrets {
    /// Seals every stored version of the site's secrets again under a
    /// fresh data key (wrapped by the active master key) and withholds
    /// each current secret for `incident`, all in one transaction: on any
    /// failure nothing changes.
    pub async fn rotate_site(&self, site_id: i64, incident: i64) -> Result<SiteRotation> {
        if incident <= 0 {
            return Err(SecretsError::Invalid {
                field: "incident",
                message: "must be a positive incident id".into(),
            });
        }
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = db::site_versions(&mut tx, site_id).await?;
        let mut fresh = Vec::with_capacity(rows.len());
        for row in &rows {
            let corrupt = || SecretsError::Corrupt {
                site_id: row.id.site_id,
                name: row.id.name.clone(),
                version: row.id.version,
            };
            let old_key = self.unwrap_key(&row.id, &row.kek_id, &row.wrapped).await?;
            let value =
                crypto::open(&old_key, &row.id.value_aad(), &row.ciphertext).ok_or_else(corrupt)?;
            let data_key = KeyBytes::random()?;
            let ciphertext = crypto::seal(&data_key, &row.id.value_aad(), &value)?;
            let (kek_id, wrapped) = self.wrap(&row.id, &data_key).await?;
            db::reseal(&mut tx, &row.id, &kek_id, &wrapped, &ciphertext).await?;
            fresh.push((row.id.clone(), data_key));
        }
        let mut withheld: Vec<String> = rows.iter().map(|r| r.id.name.clone()).collect();
        withheld.dedup();
        let now = unix_now();
        for name in &withheld {
            db::require_rotation(&mut tx, site_id, name, incident, now).await?;
        }
        tx.commit().await?;

        // The old data keys are gone from the store; forget them here too.
        let mut cache = self.cache();
        cache.retain(|row, _| row.site_id != site_id);
        cache.extend(fresh);
        Ok(SiteRotation {
            withheld,
            resealed: rows.len(),
        })
    }

    /// Ends what `incident` withholds of the site: those secrets go to
    /// app starts again unless another incident still holds them. Returns
    /// the names this incident held, sorted.
    pub async fn release_site(&self, site_id: i64, incident: i64) -> Result<Vec<String>> {
        db::release_rotation(&self.inner.pool, site_id, incident).await
    }

    /// The site's secrets that some incident withholds, sorted.
    pub async fn withheld(&self, site_id: i64) -> Result<Vec<String>> {
        db::withheld(&self.inner.pool, site_id).await
    }
}
