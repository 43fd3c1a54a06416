//! [`PrivacyStore`] on SQLite.

use crate::sqlite::{site_from_row, user_from_row};
use crate::*;
use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

fn consent_from_row(row: &SqliteRow) -> Result<ConsentRecord> {
    let purpose: String = row.try_get("purpose")?;
    Ok(ConsentRecord {
        id: row.try_get("id")?,
        user_id: UserId(row.try_get("user_id")?),
        purpose: Purpose::parse(&purpose)
            .ok_or_else(|| StoreError::Corrupt(format!("consent purpose `{purpose}`")))?,
        granted: row.try_get::<i64, _>("granted")? != 0,
        time: row.try_get("time")?,
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

#[async_trait]
impl PrivacyStore for SqliteStore {
    async fn record_consent(&self, consent: ConsentRecord) -> Result<ConsentRecord> {
        let row = sqlx::query(
            "INSERT INTO consents (user_id, purpose, granted, time, client_ip, user_agent)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
        )
        .bind(consent.user_id.0)
        .bind(consent.purpose.as_str())
        .bind(i64::from(consent.granted))
        .bind(consent.time)
        .bind(&consent.client_ip)
        .bind(&consent.user_agent)
        .fetch_one(&self.pool)
        .await?;
        consent_from_row(&row)
    }

    async fn consent_history(&self, user: UserId) -> Result<Vec<ConsentRecord>> {
        sqlx::query("SELECT * FROM consents WHERE user_id = ? ORDER BY id")
            .bind(user.0)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(consent_from_row)
            .collect()
    }

    async fn current_consent(
        &self,
        user: UserId,
        purpose: Purpose,
    ) -> Result<Option<ConsentRecord>> {
        sqlx::query(
            "SELECT * FROM consents WHERE user_id = ? AND purpose = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(user.0)
        .bind(purpose.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(consent_from_row)
        .transpose()
    }

    async fn erase_user(&self, erasure: Erasure) -> Result<Erased> {
        let mut conn = self.pool.acquire().await?;
        // Deleted cells and freed pages are overwritten with zeros, so the
        // file keeps no copy of what is erased. Per connection; it stays
        // on for this pooled connection, which costs only some writes.
        sqlx::query("PRAGMA secure_delete = ON")
            .execute(&mut *conn)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let user = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(erasure.user.0)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let user = user_from_row(&user)?;

        let mut sites = Vec::new();
        for site in &erasure.sites {
            let row = sqlx::query("DELETE FROM sites WHERE id = ? RETURNING *")
                .bind(site.0)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            sites.push(site_from_row(&row)?);
        }
        let mut removed = [0u64; 3];
        let deletes = [
            "DELETE FROM consents WHERE user_id = ?",
            "DELETE FROM sessions WHERE user_id = ?",
            "DELETE FROM api_keys WHERE user_id = ?",
        ];
        for (count, sql) in removed.iter_mut().zip(deletes) {
            *count = sqlx::query(sql)
                .bind(user.id.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        // The account's own count and its per-network counts
        // (`email` + U+001F + network, see identity's lockout module).
        sqlx::query(
            "DELETE FROM login_failures WHERE subject = ?1 COLLATE NOCASE
               OR lower(substr(subject, 1, length(?1) + 1)) = lower(?1) || char(31)",
        )
        .bind(&user.email)
        .execute(&mut *tx)
        .await?;
        let mut audit_keys = 0;
        for subject in &erasure.audit_key_subjects {
            audit_keys += sqlx::query("DELETE FROM audit_pii_keys WHERE subject = ?")
                .bind(subject)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        // Foreign keys clear the rest: tokens go, sites and releases lose
        // their owner and author.
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(user.id.0)
            .execute(&mut *tx)
            .await?;
        // The planner's samples (sqlite_stat4) copy index keys such as
        // addresses; sampling again replaces them.
        for sql in ["ANALYZE users", "ANALYZE login_failures"] {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Erased {
            user,
            sites,
            consents: removed[0],
            sessions: removed[1],
            api_keys: removed[2],
            audit_keys,
        })
    }

    async fn truncate_wal(&self) -> Result<bool> {
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await?;
        let busy: i64 = row.try_get(0)?;
        Ok(busy == 0)
    }
}
