//! The `secret_versions` table in the store's SQLite file, reached through
//! this crate's own small pool (as the audit log does). The schema is a
//! migration of the `store` crate.

use crate::crypto::RowId;
use crate::{Result, SecretMeta, SecretsError};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// One stored version, still sealed.
pub(crate) struct StoredRow {
    pub id: RowId,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

pub(crate) async fn open(data_dir: &Path) -> Result<SqlitePool> {
    let path = data_dir.join(store::DB_FILE);
    if !path.exists() {
        return Err(SecretsError::Io(format!(
            "{} holds no SpinForge store",
            data_dir.display()
        )));
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        // Sealing an old plain key overwrites it; secure_delete zeroes the
        // space it leaves instead of keeping a copy in free space.
        .pragma("secure_delete", "on")
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?)
}

fn stored(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRow> {
    Ok(StoredRow {
        id: RowId {
            site_id: row.try_get("site_id")?,
            name: row.try_get("name")?,
            version: row.try_get("version")?,
        },
        kek_id: row.try_get("kek_id")?,
        wrapped: row.try_get("wrapped_key")?,
        ciphertext: row.try_get("ciphertext")?,
    })
}

/// The current (highest) version of each name: of one site without the
/// names an incident withholds (what an app start gets), or of all sites
/// with every name (the start-up check).
pub(crate) async fn current_rows(pool: &SqlitePool, site: Option<i64>) -> Result<Vec<StoredRow>> {
    // Two statements rather than `?1 IS NULL OR ...`, so the one-site
    // query (every spinlet start) is a primary-key range scan.
    let rows = match site {
        Some(site) => {
            sqlx::query(
                "SELECT site_id, name, MAX(version) AS version, kek_id, wrapped_key, ciphertext
                 FROM secret_versions
                 WHERE site_id = ?1
                   AND name NOT IN (SELECT name FROM secret_rotations WHERE site_id = ?1)
                 GROUP BY name ORDER BY name",
            )
            .bind(site)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT site_id, name, MAX(version) AS version, kek_id, wrapped_key, ciphertext
                 FROM secret_versions GROUP BY site_id, name ORDER BY site_id, name",
            )
            .fetch_all(pool)
            .await?
        }
    };
    rows.iter().map(stored).collect()
}

pub(crate) async fn next_version(
    tx: &mut Transaction<'_, Sqlite>,
    site_id: i64,
    name: &str,
) -> Result<i64> {
    let max: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(version) FROM secret_versions WHERE site_id = ? AND name = ?",
    )
    .bind(site_id)
    .bind(name)
    .fetch_one(&mut **tx)
    .await?;
    Ok(max.unwrap_or(0) + 1)
}

pub(crate) async fn insert(
    tx: &mut Transaction<'_, Sqlite>,
    row: &RowId,
    kek_id: &str,
    wrapped: &[u8],
    ciphertext: &[u8],
    by: Option<i64>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO secret_versions
         (site_id, name, version, kek_id, wrapped_key, ciphertext, created_by, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.site_id)
    .bind(&row.name)
    .bind(row.version)
    .bind(kek_id)
    .bind(wrapped)
    .bind(ciphertext)
    .bind(by)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => SecretsError::NotFound,
        _ => SecretsError::Storage(e),
    })?;
    Ok(())
}

pub(crate) async fn list(pool: &SqlitePool, site_id: i64) -> Result<Vec<SecretMeta>> {
    let rows = sqlx::query(
        "SELECT s.name, s.version, s.created_by, s.created_at, s.kek_id,
                (SELECT MIN(r.incident) FROM secret_rotations r
                 WHERE r.site_id = s.site_id AND r.name = s.name) AS rotation_incident
         FROM secret_versions s
         WHERE s.site_id = ?1
           AND s.version = (SELECT MAX(version) FROM secret_versions t
                            WHERE t.site_id = s.site_id AND t.name = s.name)
         ORDER BY s.name",
    )
    .bind(site_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SecretMeta {
                name: r.try_get("name")?,
                version: r.try_get("version")?,
                created_by: r.try_get("created_by")?,
                created_at: r.try_get("created_at")?,
                master_key: r.try_get("kek_id")?,
                rotation_incident: r.try_get("rotation_incident")?,
            })
        })
        .collect()
}

/// Deletes every version of a name and what withholds it; how many
/// versions went.
pub(crate) async fn delete(pool: &SqlitePool, site_id: i64, name: &str) -> Result<u64> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let gone = sqlx::query("DELETE FROM secret_versions WHERE site_id = ? AND name = ?")
        .bind(site_id)
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    clear_rotation(&mut tx, site_id, name).await?;
    tx.commit().await?;
    Ok(gone)
}

// ---- rotation by incident containment (issue 9) ----

/// Every stored version of one site's secrets.
pub(crate) async fn site_versions(
    tx: &mut Transaction<'_, Sqlite>,
    site_id: i64,
) -> Result<Vec<StoredRow>> {
    let rows = sqlx::query(
        "SELECT site_id, name, version, kek_id, wrapped_key, ciphertext
         FROM secret_versions WHERE site_id = ? ORDER BY name, version",
    )
    .bind(site_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(stored).collect()
}

/// Replaces a version's sealed value and wrapped data key (the same row,
/// so the same associated data).
pub(crate) async fn reseal(
    tx: &mut Transaction<'_, Sqlite>,
    row: &RowId,
    kek_id: &str,
    wrapped: &[u8],
    ciphertext: &[u8],
) -> Result<()> {
    sqlx::query(
        "UPDATE secret_versions SET kek_id = ?, wrapped_key = ?, ciphertext = ?
         WHERE site_id = ? AND name = ? AND version = ?",
    )
    .bind(kek_id)
    .bind(wrapped)
    .bind(ciphertext)
    .bind(row.site_id)
    .bind(&row.name)
    .bind(row.version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Withholds `name` of the site for `incident` (kept if already held).
pub(crate) async fn require_rotation(
    tx: &mut Transaction<'_, Sqlite>,
    site_id: i64,
    name: &str,
    incident: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO secret_rotations (site_id, name, incident, required_at)
         VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(site_id)
    .bind(name)
    .bind(incident)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Hands `name` of the site back to app starts, whatever withheld it.
pub(crate) async fn clear_rotation(
    tx: &mut Transaction<'_, Sqlite>,
    site_id: i64,
    name: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM secret_rotations WHERE site_id = ? AND name = ?")
        .bind(site_id)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Drops what `incident` withholds of the site; the names it held.
pub(crate) async fn release_rotation(
    pool: &SqlitePool,
    site_id: i64,
    incident: i64,
) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "DELETE FROM secret_rotations WHERE site_id = ? AND incident = ? RETURNING name",
    )
    .bind(site_id)
    .bind(incident)
    .fetch_all(pool)
    .await?;
    let mut names = rows
        .iter()
        .map(|r| r.try_get("name"))
        .collect::<Result<Vec<String>, _>>()?;
    names.sort();
    Ok(names)
}

/// The names of the site that some incident withholds, sorted.
pub(crate) async fn withheld(pool: &SqlitePool, site_id: i64) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT name FROM secret_rotations WHERE site_id = ? ORDER BY name",
    )
    .bind(site_id)
    .fetch_all(pool)
    .await?)
}

/// Every version's wrapped data key, for rotation.
pub(crate) async fn all_wrapped(tx: &mut Transaction<'_, Sqlite>) -> Result<Vec<StoredRow>> {
    let rows = sqlx::query(
        "SELECT site_id, name, version, kek_id, wrapped_key, ciphertext FROM secret_versions",
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(stored).collect()
}

pub(crate) async fn rewrap(
    tx: &mut Transaction<'_, Sqlite>,
    row: &RowId,
    kek_id: &str,
    wrapped: &[u8],
) -> Result<()> {
    sqlx::query(
        "UPDATE secret_versions SET kek_id = ?, wrapped_key = ?
         WHERE site_id = ? AND name = ? AND version = ?",
    )
    .bind(kek_id)
    .bind(wrapped)
    .bind(row.site_id)
    .bind(&row.name)
    .bind(row.version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Data keys per master key id.
pub(crate) async fn usage(pool: &SqlitePool) -> Result<HashMap<String, i64>> {
    let rows = sqlx::query("SELECT kek_id, COUNT(*) AS n FROM secret_versions GROUP BY kek_id")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("kek_id")?, r.try_get("n")?)))
        .collect()
}
