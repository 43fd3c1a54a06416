//! Secrets at rest: each site's secret values, envelope-encrypted in the
//! store's SQLite file, and the master keys that wrap their data keys.
//!
//! A value gets its own random data key (AES-256-GCM, 96-bit random
//! nonce, bound to site id, name and version); the data key is wrapped by
//! the active master key, whose id the row records. This crate never
//! returns a value except to the spinlet start path ([`Secrets::site_env`])
//! and never logs one. Who may call what is the hub's business.
//!
//! The platform's own keys (certificate keys, the ACME account, token
//! signing keys) are sealed the same way through [`Secrets::seal_key`]
//! and [`Secrets::open_key`]; see [`sealed`].
//
// Limitation: the audit log's HMAC and checkpoint keys (files in
// DATA/audit) are still kept in plain form (sealing them with
// `Secrets::seal_key` would lift it, but the audit log starts before the
// secret store and must not depend on it).
#![forbid(unsafe_code)]

pub mod backup;
pub mod crypto;
mod db;
pub mod master;
pub mod redact;
mod rotation;
pub mod sealed;
pub mod transit;

pub use master::{Keyring, SecretsConfig};
pub use rotation::SiteRotation;
pub use sealed::{KeyId, KeyKind};
pub use store::Sealed;

use crypto::{KeyBytes, RowId};
use secrecy::{ExposeSecret, SecretString};
use sqlx::sqlite::SqlitePool;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use zeroize::Zeroizing;

/// Longest secret value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Names the platform sets itself; a secret may not replace them.
const RESERVED: [&str; 6] = ["PORT", "HOST", "PATH", "HOME", "LANG", "TZ"];

/// What can go wrong with secrets. Each variant says whose fault it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The client sent something invalid; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The client named a secret or key that does not exist.
    #[error("not found")]
    NotFound,
    /// The operator's setup: the master key is missing, unreadable or
    /// malformed.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The operator's setup: rows are wrapped by a master key this process
    /// does not have (a wrong or lost key, or an unreachable key service).
    #[error(
        "secrets are wrapped by master key {needed}, which is not available \
         (this server has {have}); start with the right master key"
    )]
    UnknownMasterKey { needed: String, have: String },
    /// Stored data: a row does not decrypt with its own key and place. It
    /// was moved, altered, or wrapped by a different key of the same id.
    #[error(
        "secret {name} v{version} of site {site_id} does not decrypt: the stored row was \
         altered or moved, or the master key is wrong"
    )]
    Corrupt {
        site_id: i64,
        name: String,
        version: i64,
    },
    /// Stored data or the operator's setup: one of the platform's sealed
    /// keys (a certificate key, the ACME account, a token signing key)
    /// does not open. Names the key, never its material.
    #[error("{what} {name} does not open: {reason}")]
    KeyUnsealable {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// An upstream: the key service (OpenBao/Vault) cannot be reached or
    /// failed. Nothing was written.
    #[error("the key service is unavailable: {0}")]
    KeyService(String),
    /// An upstream: the key service refused a request (policy, missing
    /// key).
    #[error("the key service refused: {0}")]
    KeyServiceRefused(String),
    /// Our side: the random source or cipher failed.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// Our side: the database failed.
    #[error("secret store: {0}")]
    Storage(#[from] sqlx::Error),
    /// A backup file: wrong passphrase, damaged, or not a backup.
    #[error("backup: {0}")]
    Backup(String),
    /// Our side: a file operation failed.
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = SecretsError> = std::result::Result<T, E>;

/// What a listing shows of one secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretMeta {
    pub name: String,
    /// The current version; every `set` adds one.
    pub version: i64,
    /// The user who set the current version, if any.
    pub created_by: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// The master key that wraps the current version's data key.
    pub master_key: String,
    /// The (earliest) incident whose containment rotated this secret: it
    /// is withheld from app starts until a new value is set or the
    /// incident lifts the action. `None` while the value is in use.
    pub rotation_incident: Option<i64>,
}

/// What a master-key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The id of the master key that is now active.
    pub active: String,
    /// Data keys of site secrets re-wrapped to it.
    pub secrets: usize,
    /// Data keys of sealed keys (certificates, ACME, signing) re-wrapped.
    pub keys: usize,
}

/// The secret store of one data directory; cheap to clone.
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

/// What wraps data keys: local master keys, or a transit key service.
enum Kek {
    Local(Mutex<Keyring>),
    Transit(Arc<transit::Transit>),
}

struct Inner {
    pool: SqlitePool,
    kek: Kek,
    /// Unwrapped data keys by row, so running sites keep starting if the
    /// master key's service goes away.
    data_keys: Mutex<HashMap<RowId, KeyBytes>>,
}

impl Secrets {
    /// Opens the secret store of `data_dir` (whose store must already be
    /// migrated), loads the master key, and checks that every stored
    /// secret decrypts. Any failure is an error: a server must not start
    /// apps with secrets it cannot read.
    pub async fn open(data_dir: &Path, config: &SecretsConfig) -> Result<Secrets> {
        let pool = db::open(data_dir).await?;
        let local = config.master_key_env.is_some() || config.master_key_file.is_some();
        let kek = match &config.vault {
            Some(vault) if !local => Kek::Transit(transit::Transit::connect(vault).await?),
            _ => Kek::Local(Mutex::new(Keyring::load(config, data_dir)?)),
        };
        let secrets = Secrets {
            inner: Arc::new(Inner {
                pool,
                kek,
                data_keys: Mutex::new(HashMap::new()),
            }),
        };
        secrets.seal_legacy_keys().await?;
        secrets.check_all().await?;
        Ok(secrets)
    }

    /// Seals every key a version before migration 0013 stored in plain
    /// form, in one transaction (a crash leaves every row as it was, never
    /// a key lost), then empties the WAL so no page image of a plain key
    /// is left there. Returns how many keys were sealed.
    async fn seal_legacy_keys(&self) -> Result<usize> {
        let pool = &self.inner.pool;
        if !sealed::any_legacy(pool).await? {
            return Ok(0);
        }
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let legacy = sealed::legacy_rows(&mut tx).await?;
        let mut counts: HashMap<KeyKind, usize> = HashMap::new();
        for (id, plain) in &legacy {
            let sealed = self.seal_key(id, plain).await?;
            sealed::store_sealed(&mut tx, id, &sealed).await?;
            *counts.entry(id.kind).or_insert(0) += 1;
        }
        tx.commit().await?;
        let wal_empty = sealed::truncate_wal(pool).await?;
        let count = |kind| counts.get(&kind).copied().unwrap_or(0);
        tracing::info!(target: "spinforge::audit", event = "keys.sealed_legacy",
            certificate_keys = count(KeyKind::CertificateKey),
            acme_accounts = count(KeyKind::AcmeAccount),
            signing_keys = count(KeyKind::SigningKey),
            master_key = %self.active_master_key()?,
            "keys stored in plain form by an older version are now sealed");
        if !wal_empty {
            tracing::warn!(
                "the write-ahead log could not be emptied (a reader held it); the plain \
                 keys' old page images leave it at the next checkpoint"
            );
        }
        Ok(legacy.len())
    }

    /// Seals one of the platform's keys under a fresh data key bound to
    /// `id`, wrapped by the active master key. Touches no row: the caller
    /// stores the result.
    pub async fn seal_key(&self, id: &KeyId, plaintext: &[u8]) -> Result<Sealed> {
        let data_key = KeyBytes::random()?;
        let ciphertext = crypto::seal(&data_key, &id.value_aad(), plaintext)?;
        let (kek_id, wrapped_key) = self.wrap(id, &data_key).await?;
        Ok(Sealed {
            kek_id,
            wrapped_key,
            ciphertext,
        })
    }

    /// Opens a key sealed by [`Secrets::seal_key`] for the same `id`. A
    /// blob from another row, another table or another master key fails
    /// with [`SecretsError::KeyUnsealable`] naming `id`.
    pub async fn open_key(&self, id: &KeyId, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>> {
        let data_key = self
            .unwrap_key(id, &sealed.kek_id, &sealed.wrapped_key)
            .await?;
        crypto::open(&data_key, &id.value_aad(), &sealed.ciphertext).ok_or_else(|| id.corrupt())
    }

    /// Opens every sealed key once (a restore's check); the first that
    /// does not open is the error. Returns how many opened.
    pub async fn check_keys(&self) -> Result<usize> {
        let mut tx = self.inner.pool.begin().await?;
        let rows = sealed::all_sealed(&mut tx).await?;
        tx.rollback().await?;
        for row in &rows {
            self.open_key(&row.id, &row.sealed).await?;
        }
        Ok(rows.len())
    }

    /// The id of the master key new secrets are wrapped with.
    pub fn active_master_key(&self) -> Result<String> {
        match &self.inner.kek {
            Kek::Local(_) => Ok(self.keyring()?.active_id().to_owned()),
            Kek::Transit(t) => Ok(t.kek_id()),
        }
    }

    /// Where the master key came from, for operators.
    pub fn master_key_origin(&self) -> String {
        match &self.inner.kek {
            Kek::Local(ring) => lock(ring).origin.describe(),
            Kek::Transit(t) => format!("transit key service at {}", t.address()),
        }
    }

    /// True iff data keys are wrapped by a transit key service.
    pub fn uses_key_service(&self) -> bool {
        matches!(self.inner.kek, Kek::Transit(_))
    }

    /// Decrypts every stored secret once: the start-up check, which also
    /// registers each value for log masking.
    pub async fn check_all(&self) -> Result<usize> {
        let rows = db::current_rows(&self.inner.pool, None).await?;
        for row in &rows {
            let value = self.decrypt(row).await?;
            redact::register(value.expose_secret());
        }
        Ok(rows.len())
    }

    /// Stores a new version of `name` for the site. Returns its listing.
    pub async fn set(
        &self,
        site_id: i64,
        name: &str,
        value: &SecretString,
        by: Option<i64>,
    ) -> Result<SecretMeta> {
        validate_name(name)?;
        validate_value(value.expose_secret())?;
        redact::register(value.expose_secret());

        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version = db::next_version(&mut tx, site_id, name).await?;
        let row = RowId {
            site_id,
            name: name.to_owned(),
            version,
        };
        let data_key = KeyBytes::random()?;
        let ciphertext = crypto::seal(
            &data_key,
            &row.value_aad(),
            value.expose_secret().as_bytes(),
        )?;
        // A key service that is down fails here, before anything is
        // written (the transaction rolls back on drop).
        let (kek_id, wrapped) = self.wrap(&row, &data_key).await?;
        let now = unix_now();
        db::insert(&mut tx, &row, &kek_id, &wrapped, &ciphertext, by, now).await?;
        // A new value is the rotation an incident asked for.
        db::clear_rotation(&mut tx, site_id, name).await?;
        tx.commit().await?;
        self.cache().insert(row, data_key);
        Ok(SecretMeta {
            name: name.to_owned(),
            version,
            created_by: by,
            created_at: now,
            master_key: kek_id,
            rotation_incident: None,
        })
    }

    /// The site's secrets: current version of each name, sorted by name.
    pub async fn list(&self, site_id: i64) -> Result<Vec<SecretMeta>> {
        db::list(&self.inner.pool, site_id).await
    }

    /// Deletes every version of `name`; [`SecretsError::NotFound`] if none.
    pub async fn remove(&self, site_id: i64, name: &str) -> Result<()> {
        validate_name(name)?;
        if db::delete(&self.inner.pool, site_id, name).await? == 0 {
            return Err(SecretsError::NotFound);
        }
        self.cache()
            .retain(|row, _| !(row.site_id == site_id && row.name == name));
        Ok(())
    }

    /// The site's secrets as environment variables for a spinlet start,
    /// each value registered for log masking, without the ones an
    /// incident withholds ([`Secrets::withheld`]). Fails as a whole if any
    /// one does not decrypt: an app never starts with part of its secrets.
    pub async fn site_env(&self, site_id: i64) -> Result<Vec<(String, SecretString)>> {
        let rows = db::current_rows(&self.inner.pool, Some(site_id)).await?;
        let mut env = Vec::with_capacity(rows.len());
        for row in &rows {
            let value = self.decrypt(row).await?;
            redact::register(value.expose_secret());
            env.push((row.id.name.clone(), value));
        }
        Ok(env)
    }

    /// Re-wraps every data key (of site secrets and of sealed keys) under
    /// a new master key, in one transaction. The new key is written to the
    /// keyring (old keys kept) before the transaction, so a server running
    /// meanwhile reads both.
    pub async fn rotate_master(&self) -> Result<Rotated> {
        let ring = match &self.inner.kek {
            Kek::Local(ring) => ring,
            Kek::Transit(transit) => return self.rotate_transit(transit).await,
        };
        let new_id = lock(ring).add_active()?;
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = db::all_wrapped(&mut tx).await?;
        let mut moved = Rotated {
            active: new_id.clone(),
            secrets: 0,
            keys: 0,
        };
        for row in &rows {
            if row.kek_id == new_id {
                continue;
            }
            let wrapped = self
                .rewrap_local(ring, &new_id, &row.id, &row.kek_id, &row.wrapped)
                .await?;
            db::rewrap(&mut tx, &row.id, &new_id, &wrapped).await?;
            moved.secrets += 1;
        }
        for key in sealed::all_sealed(&mut tx).await? {
            if key.sealed.kek_id == new_id {
                continue;
            }
            let wrapped = self
                .rewrap_local(
                    ring,
                    &new_id,
                    &key.id,
                    &key.sealed.kek_id,
                    &key.sealed.wrapped_key,
                )
                .await?;
            sealed::rewrap(&mut tx, &key.id, &new_id, &wrapped).await?;
            moved.keys += 1;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// A data key unwrapped from `kek_id` and wrapped again by the local
    /// master key `new_id`.
    async fn rewrap_local(
        &self,
        ring: &Mutex<Keyring>,
        new_id: &str,
        id: &impl Bound,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<Vec<u8>> {
        let data_key = self.unwrap_key(id, kek_id, wrapped).await?;
        let keyring = lock(ring);
        let kek = keyring.get(new_id).ok_or_else(|| {
            SecretsError::MasterKey("the new key vanished from the keyring".into())
        })?;
        crypto::seal(kek, &id.key_aad(new_id), data_key.expose())
    }

    /// Transit: a new key version in the service, then every wrapped key
    /// re-wrapped by the service (the key never leaves it), in one
    /// transaction.
    async fn rotate_transit(&self, transit: &transit::Transit) -> Result<Rotated> {
        transit.rotate().await?;
        let id = transit.kek_id();
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = db::all_wrapped(&mut tx).await?;
        let mut moved = Rotated {
            active: id.clone(),
            secrets: 0,
            keys: 0,
        };
        for row in rows.iter().filter(|r| r.kek_id == id) {
            let wrapped = transit.rewrap(&row.wrapped).await?;
            db::rewrap(&mut tx, &row.id, &id, &wrapped).await?;
            moved.secrets += 1;
        }
        let keys = sealed::all_sealed(&mut tx).await?;
        for key in keys.iter().filter(|k| k.sealed.kek_id == id) {
            let wrapped = transit.rewrap(&key.sealed.wrapped_key).await?;
            sealed::rewrap(&mut tx, &key.id, &id, &wrapped).await?;
            moved.keys += 1;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// How many data keys each master key of the keyring wraps (those of
    /// site secrets and of sealed keys).
    pub async fn master_key_usage(&self) -> Result<Vec<(String, i64)>> {
        let used = self.usage().await?;
        if let Kek::Transit(t) = &self.inner.kek {
            let id = t.kek_id();
            let mut out = vec![(id.clone(), used.get(&id).copied().unwrap_or(0))];
            out.extend(used.into_iter().filter(|(k, _)| *k != id));
            return Ok(out);
        }
        let keyring = self.keyring()?;
        let mut out: Vec<(String, i64)> = keyring
            .ids()
            .into_iter()
            .map(|id| {
                let n = used.get(&id).copied().unwrap_or(0);
                (id, n)
            })
            .collect();
        for (id, n) in used {
            if keyring.get(&id).is_none() {
                out.push((id, n));
            }
        }
        Ok(out)
    }

    /// Removes an old master key from the keyring once no data key uses it.
    pub async fn retire_master(&self, id: &str) -> Result<()> {
        let used = self.usage().await?;
        if let Some(n) = used.get(id).filter(|n| **n > 0) {
            return Err(SecretsError::Invalid {
                field: "key",
                message: format!("{id} still wraps {n} data keys; run keys rotate-master"),
            });
        }
        match &self.inner.kek {
            Kek::Local(ring) => lock(ring).remove(id),
            // Limitation: old transit key versions stay decryptable (setting
            // the key's min_decryption_version after a rotation would retire
            // them).
            Kek::Transit(_) => Err(SecretsError::Invalid {
                field: "key",
                message: "transit key versions are retired in the key service".into(),
            }),
        }
    }

    /// Data keys per master key id: site secrets and sealed keys.
    async fn usage(&self) -> Result<HashMap<String, i64>> {
        let mut used = db::usage(&self.inner.pool).await?;
        for (id, n) in sealed::usage(&self.inner.pool).await? {
            *used.entry(id).or_insert(0) += n;
        }
        Ok(used)
    }

    /// Forgets every unwrapped data key, so the next read unwraps again
    /// (benchmarks of the cold start path; operators after a rotation).
    pub fn clear_key_cache(&self) {
        self.cache().clear();
    }

    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    async fn decrypt(&self, row: &db::StoredRow) -> Result<SecretString> {
        let corrupt = || SecretsError::Corrupt {
            site_id: row.id.site_id,
            name: row.id.name.clone(),
            version: row.id.version,
        };
        let cached = self.cache().get(&row.id).cloned();
        let data_key = match cached {
            Some(key) => key,
            None => {
                let key = self.unwrap_key(&row.id, &row.kek_id, &row.wrapped).await?;
                self.cache().insert(row.id.clone(), key.clone());
                key
            }
        };
        let plain =
            crypto::open(&data_key, &row.id.value_aad(), &row.ciphertext).ok_or_else(corrupt)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| corrupt())?;
        Ok(SecretString::from(text))
    }

    /// Wraps a fresh data key with the active master key.
    async fn wrap(&self, row: &impl Bound, data_key: &KeyBytes) -> Result<(String, Vec<u8>)> {
        match &self.inner.kek {
            Kek::Local(_) => {
                let keyring = self.keyring()?;
                let (kek_id, kek) = keyring.active();
                let wrapped = crypto::seal(kek, &row.key_aad(kek_id), data_key.expose())?;
                Ok((kek_id.to_owned(), wrapped))
            }
            Kek::Transit(transit) => {
                let kek_id = transit.kek_id();
                let wrapped = transit.wrap(&row.key_aad(&kek_id), data_key).await?;
                Ok((kek_id, wrapped))
            }
        }
    }

    async fn unwrap_key(&self, row: &impl Bound, kek_id: &str, wrapped: &[u8]) -> Result<KeyBytes> {
        let corrupt = || row.corrupt();
        let ring = match &self.inner.kek {
            Kek::Local(ring) => ring,
            Kek::Transit(transit) => {
                if kek_id != transit.kek_id() {
                    return Err(row.unknown_master(kek_id, transit.kek_id()));
                }
                return transit
                    .unwrap(&row.key_aad(kek_id), wrapped)
                    .await?
                    .ok_or_else(corrupt);
            }
        };
        let mut keyring = lock(ring);
        if keyring.get(kek_id).is_none() {
            keyring.refresh()?;
        }
        let Some(kek) = keyring.get(kek_id) else {
            return Err(row.unknown_master(kek_id, keyring.ids().join(", ")));
        };
        let bytes = crypto::open(kek, &row.key_aad(kek_id), wrapped).ok_or_else(corrupt)?;
        KeyBytes::from_slice(&bytes).ok_or_else(corrupt)
    }

    /// The local keyring, reloaded first if another process rotated it.
    fn keyring(&self) -> Result<MutexGuard<'_, Keyring>> {
        let Kek::Local(ring) = &self.inner.kek else {
            return Err(SecretsError::MasterKey(
                "master keys live in the key service".into(),
            ));
        };
        let mut keyring = lock(ring);
        keyring.refresh()?;
        Ok(keyring)
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<RowId, KeyBytes>> {
        self.inner
            .data_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a wrapped data key is bound to: a secret's row or a sealed key.
/// It gives the associated data and the errors that name the place.
pub(crate) trait Bound {
    /// Associated data of the data key wrapped by master key `kek_id`.
    fn key_aad(&self, kek_id: &str) -> Vec<u8>;
    /// The error when the blob does not open here.
    fn corrupt(&self) -> SecretsError;
    /// The error when master key `needed` is not among `have`.
    fn unknown_master(&self, needed: &str, have: String) -> SecretsError;
}

impl Bound for RowId {
    fn key_aad(&self, kek_id: &str) -> Vec<u8> {
        RowId::key_aad(self, kek_id)
    }

    fn corrupt(&self) -> SecretsError {
        SecretsError::Corrupt {
            site_id: self.site_id,
            name: self.name.clone(),
            version: self.version,
        }
    }

    fn unknown_master(&self, needed: &str, have: String) -> SecretsError {
        SecretsError::UnknownMasterKey {
            needed: needed.to_owned(),
            have,
        }
    }
}

fn lock(ring: &Mutex<Keyring>) -> MutexGuard<'_, Keyring> {
    ring.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A secret name is an environment variable name the platform does not
/// set itself: letters, digits and `_`, not starting with a digit.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |message: String| SecretsError::Invalid {
        field: "name",
        message,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(
            "must be letters, digits and _, not starting with a digit".into(),
        ));
    }
    if RESERVED.contains(&name) || name.starts_with("SPINFORGE_") {
        return Err(invalid(format!("{name} is set by the platform")));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<()> {
    let invalid = |message: &str| SecretsError::Invalid {
        field: "value",
        message: message.to_owned(),
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid("must be at most 65536 bytes"));
    }
    if value.contains('\0') {
        return Err(invalid("must not contain a NUL byte"));
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_environment_variable_rules() {
        for good in ["DATABASE_URL", "_X", "api_key2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2X", "A-B", "A B", "PORT", "SPINFORGE_SPINLET", "É"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"A".repeat(129)).is_err());
    }

    #[test]
    fn values_must_be_present_bounded_and_nul_free() {
        assert!(validate_value("x").is_ok());
        assert!(validate_value("").is_err());
        assert!(validate_value("a\0b").is_err());
        assert!(validate_value(&"a".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }
}
