//! Secrets at rest: each site's secret values, envelope-encrypted in the
//! store's SQLite file, and the master keys that wrap their data keys.
//!
//! A value gets its own random data key (AES-256-GCM, 96-bit random
//! nonce, bound to site id, name and version); the data key is wrapped by
//! the active master key, whose id the row records. This crate never
//! returns a value except to the spinlet start path ([`Secrets::site_env`])
//! and never logs one. Who may call what is the hub's business.
//
// Limitation: the identity crate's token signing keys (in the store) and
// the audit log's HMAC and checkpoint keys (files in DATA/audit) are still
// kept in plain form; wrapping them with `Secrets` would lift it, but that
// is a change to those crates.
#![forbid(unsafe_code)]

pub mod backup;
pub mod crypto;
mod db;
pub mod master;
pub mod redact;
mod rotation;
pub mod transit;

pub use master::{Keyring, SecretsConfig};
pub use rotation::SiteRotation;

use crypto::{KeyBytes, RowId};
use secrecy::{ExposeSecret, SecretString};
use sqlx::sqlite::SqlitePool;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
        secrets.check_all().await?;
        Ok(secrets)
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

    /// Re-wraps every data key under a new master key, in one transaction.
    /// The new key is written to the keyring (old keys kept) before the
    /// transaction, so a server running meanwhile reads both. Returns the
    /// new key's id and how many data keys moved to it.
    pub async fn rotate_master(&self) -> Result<(String, usize)> {
        let ring = match &self.inner.kek {
            Kek::Local(ring) => ring,
            Kek::Transit(transit) => return self.rotate_transit(transit).await,
        };
        let new_id = lock(ring).add_active()?;
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = db::all_wrapped(&mut tx).await?;
        let mut moved = 0;
        for row in &rows {
            if row.kek_id == new_id {
                continue;
            }
            let data_key = self.unwrap_key(&row.id, &row.kek_id, &row.wrapped).await?;
            let wrapped = {
                let keyring = lock(ring);
                let kek = keyring.get(&new_id).ok_or_else(|| {
                    SecretsError::MasterKey("the new key vanished from the keyring".into())
                })?;
                crypto::seal(kek, &row.id.key_aad(&new_id), data_key.expose())?
            };
            db::rewrap(&mut tx, &row.id, &new_id, &wrapped).await?;
            moved += 1;
        }
        tx.commit().await?;
        Ok((new_id, moved))
    }

    /// Transit: a new key version in the service, then every wrapped key
    /// re-wrapped by the service (the key never leaves it), in one
    /// transaction.
    async fn rotate_transit(&self, transit: &transit::Transit) -> Result<(String, usize)> {
        transit.rotate().await?;
        let id = transit.kek_id();
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = db::all_wrapped(&mut tx).await?;
        let mut moved = 0;
        for row in rows.iter().filter(|r| r.kek_id == id) {
            let wrapped = transit.rewrap(&row.wrapped).await?;
            db::rewrap(&mut tx, &row.id, &id, &wrapped).await?;
            moved += 1;
        }
        tx.commit().await?;
        Ok((id, moved))
    }

    /// How many data keys each master key of the keyring wraps.
    pub async fn master_key_usage(&self) -> Result<Vec<(String, i64)>> {
        let used = db::usage(&self.inner.pool).await?;
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
        let used = db::usage(&self.inner.pool).await?;
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
    async fn wrap(&self, row: &RowId, data_key: &KeyBytes) -> Result<(String, Vec<u8>)> {
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

    async fn unwrap_key(&self, row: &RowId, kek_id: &str, wrapped: &[u8]) -> Result<KeyBytes> {
        let corrupt = || SecretsError::Corrupt {
            site_id: row.site_id,
            name: row.name.clone(),
            version: row.version,
        };
        let ring = match &self.inner.kek {
            Kek::Local(ring) => ring,
            Kek::Transit(transit) => {
                if kek_id != transit.kek_id() {
                    return Err(SecretsError::UnknownMasterKey {
                        needed: kek_id.to_owned(),
                        have: transit.kek_id(),
                    });
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
            return Err(SecretsError::UnknownMasterKey {
                needed: kek_id.to_owned(),
                have: keyring.ids().join(", "),
            });
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
