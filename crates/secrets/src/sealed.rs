//! Keys the platform holds for itself, sealed with the same envelope as
//! site secrets: certificate private keys, ACME account credentials and
//! token signing keys. Each lives in its own store table (columns
//! `kek_id`, `wrapped_key`, `ciphertext`, and `legacy_plaintext` for a
//! row written before migration 0013); this module is the one place that
//! knows those tables, so rotation, retirement, usage counts and the
//! one-time sealing of old rows cover all of them.
//!
//! The callers (hub, identity) decide when to seal and open; this module
//! never returns key material except to them.

use crate::{Result, SecretsError};
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, Sqlite, Transaction};
use std::collections::HashMap;
use store::Sealed;
use zeroize::Zeroizing;

/// What a sealed key is for. The purpose is part of the associated data,
/// so a blob moved to another table does not open either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyKind {
    /// A certificate's PEM private key; named by its domain.
    CertificateKey,
    /// An ACME account's credentials (JSON with its key); named by the
    /// directory URL.
    AcmeAccount,
    /// A token signing key's PKCS#8 document; named by its kid.
    SigningKey,
    /// A proxy site's PEM client key for its upstream; named by its
    /// domain.
    UpstreamClientKey,
}

impl KeyKind {
    pub const ALL: [KeyKind; 4] = [
        KeyKind::CertificateKey,
        KeyKind::AcmeAccount,
        KeyKind::SigningKey,
        KeyKind::UpstreamClientKey,
    ];

    /// The purpose bound into the associated data.
    fn purpose(self) -> &'static str {
        match self {
            KeyKind::CertificateKey => "certificate-key",
            KeyKind::AcmeAccount => "acme-account",
            KeyKind::SigningKey => "signing-key",
            KeyKind::UpstreamClientKey => "upstream-client-key",
        }
    }

    /// How an error names a key of this kind: `{label} {name}`.
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::CertificateKey => "the certificate key of",
            KeyKind::AcmeAccount => "the ACME account key of",
            KeyKind::SigningKey => "the token signing key",
            KeyKind::UpstreamClientKey => "the upstream client key of",
        }
    }

    /// The store table and the column that names its rows.
    fn table(self) -> (&'static str, &'static str) {
        match self {
            KeyKind::CertificateKey => ("certificates", "domain"),
            KeyKind::AcmeAccount => ("acme_accounts", "directory"),
            KeyKind::SigningKey => ("signing_keys", "kid"),
            KeyKind::UpstreamClientKey => ("site_upstream_tls", "domain"),
        }
    }
}

/// One sealed key's place: its kind and its row's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    pub kind: KeyKind,
    pub name: String,
}

impl KeyId {
    pub fn new(kind: KeyKind, name: &str) -> KeyId {
        KeyId {
            kind,
            name: name.to_owned(),
        }
    }

    /// Associated data of the key material's ciphertext.
    pub(crate) fn value_aad(&self) -> Vec<u8> {
        format!(
            "spinforge-sealed-value:v1\0{}\0{}",
            self.kind.purpose(),
            self.name
        )
        .into_bytes()
    }

    /// The error for a key that does not open, naming it and never its
    /// material.
    pub(crate) fn unsealable(&self, reason: String) -> SecretsError {
        SecretsError::KeyUnsealable {
            what: self.kind.label(),
            name: self.name.clone(),
            reason,
        }
    }
}

impl crate::Bound for KeyId {
    fn key_aad(&self, kek_id: &str) -> Vec<u8> {
        format!(
            "spinforge-sealed-key:v1\0{kek_id}\0{}\0{}",
            self.kind.purpose(),
            self.name
        )
        .into_bytes()
    }

    fn corrupt(&self) -> SecretsError {
        self.unsealable("the stored row was altered or moved, or the master key is wrong".into())
    }

    fn unknown_master(&self, needed: &str, have: String) -> SecretsError {
        self.unsealable(format!(
            "it is wrapped by master key {needed}, which is not available (this server has \
             {have}); start with the right master key"
        ))
    }
}

/// A statement naming a table and columns from [`KeyKind::table`]: fixed
/// names of our own schema, never input (values are always bound).
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// One stored sealed key.
pub(crate) struct SealedRow {
    pub id: KeyId,
    pub sealed: Sealed,
}

/// Every sealed key of every table (for rotation and the restore check).
pub(crate) async fn all_sealed(tx: &mut Transaction<'_, Sqlite>) -> Result<Vec<SealedRow>> {
    let mut out = Vec::new();
    for kind in KeyKind::ALL {
        let (table, name) = kind.table();
        let rows = sqlx::query(sql(format!(
            "SELECT {name} AS name, kek_id, wrapped_key, ciphertext FROM {table}
             WHERE ciphertext IS NOT NULL ORDER BY {name}"
        )))
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            out.push(SealedRow {
                id: KeyId {
                    kind,
                    name: row.try_get("name")?,
                },
                sealed: Sealed {
                    kek_id: row.try_get("kek_id")?,
                    wrapped_key: row.try_get("wrapped_key")?,
                    ciphertext: row.try_get("ciphertext")?,
                },
            });
        }
    }
    Ok(out)
}

/// Points a sealed key's row at a re-wrapped data key.
pub(crate) async fn rewrap(
    tx: &mut Transaction<'_, Sqlite>,
    id: &KeyId,
    kek_id: &str,
    wrapped: &[u8],
) -> Result<()> {
    let (table, name) = id.kind.table();
    sqlx::query(sql(format!(
        "UPDATE {table} SET kek_id = ?, wrapped_key = ? WHERE {name} = ?"
    )))
    .bind(kek_id)
    .bind(wrapped)
    .bind(&id.name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// True iff any row still holds its key in plain form.
pub(crate) async fn any_legacy(pool: &SqlitePool) -> Result<bool> {
    for kind in KeyKind::ALL {
        let (table, _) = kind.table();
        let found: bool = sqlx::query_scalar(sql(format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE legacy_plaintext IS NOT NULL)"
        )))
        .fetch_one(pool)
        .await?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every row still holding its key in plain form, with that key.
pub(crate) async fn legacy_rows(
    tx: &mut Transaction<'_, Sqlite>,
) -> Result<Vec<(KeyId, Zeroizing<Vec<u8>>)>> {
    let mut out = Vec::new();
    for kind in KeyKind::ALL {
        let (table, name) = kind.table();
        let rows = sqlx::query(sql(format!(
            "SELECT {name} AS name, CAST(legacy_plaintext AS BLOB) AS plain FROM {table}
             WHERE legacy_plaintext IS NOT NULL ORDER BY {name}"
        )))
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let plain: Vec<u8> = row.try_get("plain")?;
            out.push((
                KeyId {
                    kind,
                    name: row.try_get("name")?,
                },
                Zeroizing::new(plain),
            ));
        }
    }
    Ok(out)
}

/// Replaces a row's plain key with its sealed form.
pub(crate) async fn store_sealed(
    tx: &mut Transaction<'_, Sqlite>,
    id: &KeyId,
    sealed: &Sealed,
) -> Result<()> {
    let (table, name) = id.kind.table();
    sqlx::query(sql(format!(
        "UPDATE {table} SET legacy_plaintext = NULL, kek_id = ?, wrapped_key = ?,
         ciphertext = ? WHERE {name} = ?"
    )))
    .bind(&sealed.kek_id)
    .bind(&sealed.wrapped_key)
    .bind(&sealed.ciphertext)
    .bind(&id.name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sealed keys per master key id, over every table.
pub(crate) async fn usage(pool: &SqlitePool) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for kind in KeyKind::ALL {
        let (table, _) = kind.table();
        let rows = sqlx::query(sql(format!(
            "SELECT kek_id, COUNT(*) AS n FROM {table} WHERE kek_id IS NOT NULL GROUP BY kek_id"
        )))
        .fetch_all(pool)
        .await?;
        for row in rows {
            let n: i64 = row.try_get("n")?;
            *out.entry(row.try_get("kek_id")?).or_insert(0) += n;
        }
    }
    Ok(out)
}

/// Moves every WAL frame into the database file and empties the WAL, so
/// the page images that held plain keys are gone from it. Readers can
/// keep a checkpoint from finishing; it is retried a few times.
pub(crate) async fn truncate_wal(pool: &SqlitePool) -> Result<bool> {
    for _ in 0..20 {
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await?;
        let busy: i64 = row.try_get(0)?;
        if busy == 0 {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Secrets, SecretsConfig};

    /// A migrated store in a temporary data directory and its secrets.
    async fn fixture() -> (tempfile::TempDir, Secrets) {
        let dir = tempfile::tempdir().expect("tempdir");
        store::SqliteStore::open(dir.path())
            .await
            .expect("store")
            .close()
            .await;
        let secrets = Secrets::open(dir.path(), &SecretsConfig::default())
            .await
            .expect("secrets");
        (dir, secrets)
    }

    /// Writes a signing key row the way a version before 0013 did.
    async fn plant_plain_signing_key(secrets: &Secrets, kid: &str, plain: &[u8]) {
        sqlx::query(
            "INSERT INTO signing_keys (kid, legacy_plaintext, public_key, created_at, active)
             VALUES (?, ?, x'00', 0, 0)",
        )
        .bind(kid)
        .bind(plain)
        .execute(&secrets.inner.pool)
        .await
        .expect("plant");
    }

    /// A signing key row's plain and sealed columns.
    async fn stored_signing_key(pool: &SqlitePool, kid: &str) -> (Option<Vec<u8>>, Option<Sealed>) {
        let row = sqlx::query("SELECT * FROM signing_keys WHERE kid = ?")
            .bind(kid)
            .fetch_one(pool)
            .await
            .expect("row");
        let ciphertext: Option<Vec<u8>> = row.try_get("ciphertext").expect("col");
        let sealed = ciphertext.map(|ciphertext| Sealed {
            kek_id: row.try_get("kek_id").expect("kek"),
            wrapped_key: row.try_get("wrapped_key").expect("wrapped"),
            ciphertext,
        });
        (row.try_get("legacy_plaintext").expect("legacy"), sealed)
    }

    #[tokio::test]
    async fn a_sealed_key_opens_only_under_its_own_kind_and_name() {
        let (_dir, secrets) = fixture().await;
        let alpha = KeyId::new(KeyKind::CertificateKey, "alpha.test");
        let sealed = secrets
            .seal_key(&alpha, b"-----BEGIN PRIVATE KEY-----")
            .await
            .expect("seal");
        assert_eq!(
            &secrets.open_key(&alpha, &sealed).await.expect("open")[..],
            b"-----BEGIN PRIVATE KEY-----"
        );

        let beta = KeyId::new(KeyKind::CertificateKey, "beta.test");
        let err = secrets.open_key(&beta, &sealed).await.expect_err("moved");
        assert_eq!(
            err.to_string(),
            "the certificate key of beta.test does not open: the stored row was altered \
             or moved, or the master key is wrong"
        );
        let other_kind = KeyId::new(KeyKind::AcmeAccount, "alpha.test");
        assert!(secrets.open_key(&other_kind, &sealed).await.is_err());

        // The data key of one row with the ciphertext of another: refused.
        let beta_sealed = secrets.seal_key(&beta, b"beta key").await.expect("seal");
        let mixed = Sealed {
            ciphertext: beta_sealed.ciphertext.clone(),
            ..sealed.clone()
        };
        assert!(secrets.open_key(&alpha, &mixed).await.is_err());
    }

    #[tokio::test]
    async fn plain_rows_are_sealed_at_open_and_a_failure_midway_keeps_every_row_plain() {
        let (dir, secrets) = fixture().await;
        plant_plain_signing_key(&secrets, "k-first", b"first pkcs8").await;
        plant_plain_signing_key(&secrets, "k-second", b"second pkcs8").await;
        // A crash stand-in: the second row's rewrite fails after the first
        // one's succeeded inside the transaction.
        sqlx::query(
            "CREATE TRIGGER fail_second BEFORE UPDATE ON signing_keys
             WHEN OLD.kid = 'k-second' BEGIN SELECT RAISE(ABORT, 'disk gone'); END",
        )
        .execute(&secrets.inner.pool)
        .await
        .expect("trigger");
        secrets.close().await;

        let err = Secrets::open(dir.path(), &SecretsConfig::default())
            .await
            .err()
            .expect("the rewrite fails");
        assert!(err.to_string().contains("disk gone"), "{err}");
        let pool = crate::db::open(dir.path()).await.expect("pool");
        for (kid, plain) in [
            ("k-first", &b"first pkcs8"[..]),
            ("k-second", b"second pkcs8"),
        ] {
            let (legacy, sealed) = stored_signing_key(&pool, kid).await;
            assert_eq!(legacy.as_deref(), Some(plain), "{kid} kept its key");
            assert!(sealed.is_none(), "{kid} is not half sealed");
        }
        sqlx::query("DROP TRIGGER fail_second")
            .execute(&pool)
            .await
            .expect("drop trigger");
        pool.close().await;

        let secrets = Secrets::open(dir.path(), &SecretsConfig::default())
            .await
            .expect("open seals");
        for (kid, plain) in [
            ("k-first", &b"first pkcs8"[..]),
            ("k-second", b"second pkcs8"),
        ] {
            let (legacy, sealed) = stored_signing_key(&secrets.inner.pool, kid).await;
            assert!(legacy.is_none(), "{kid} has no plain copy");
            let id = KeyId::new(KeyKind::SigningKey, kid);
            let opened = secrets
                .open_key(&id, &sealed.expect("sealed"))
                .await
                .expect("opens");
            assert_eq!(&opened[..], plain);
        }
        assert!(!any_legacy(&secrets.inner.pool).await.expect("query"));
    }

    #[tokio::test]
    async fn rotation_rewraps_sealed_keys_and_retirement_waits_for_them() {
        let (_dir, secrets) = fixture().await;
        plant_plain_signing_key(&secrets, "k-rotate", b"rotating pkcs8").await;
        secrets.seal_legacy_keys().await.expect("seal");
        let old = secrets.active_master_key().expect("active");
        let usage = secrets.master_key_usage().await.expect("usage");
        assert_eq!(usage, vec![(old.clone(), 1)]);
        let err = secrets.retire_master(&old).await.expect_err("in use");
        assert!(err.to_string().contains("still wraps 1 data keys"), "{err}");

        let rotated = secrets.rotate_master().await.expect("rotate");
        assert_eq!((rotated.secrets, rotated.keys), (0, 1));
        let new = rotated.active;
        let (_, sealed) = stored_signing_key(&secrets.inner.pool, "k-rotate").await;
        let sealed = sealed.expect("sealed");
        assert_eq!(sealed.kek_id, new);
        secrets.retire_master(&old).await.expect("retired");
        let id = KeyId::new(KeyKind::SigningKey, "k-rotate");
        let opened = secrets.open_key(&id, &sealed).await.expect("opens");
        assert_eq!(&opened[..], b"rotating pkcs8");
        assert_eq!(secrets.check_keys().await.expect("check"), 1);
    }
}
