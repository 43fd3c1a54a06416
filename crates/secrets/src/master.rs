//! Master keys (KEKs): where they come from and the keyring that holds
//! them. Each master key has an id derived from the key itself, so a
//! wrong key can never pass for the right one: rows name the id of the key
//! that wrapped them, and a key with another id is simply not theirs.
//!
//! Sources, first match wins: an environment variable named in config,
//! a file named in config (both base64 of 32 bytes), else the generated
//! keyring `DATA/secrets/master.key` (mode 0600, folder 0700), which
//! `keys rotate-master` extends and `keys retire-master` trims.

use crate::crypto::KeyBytes;
use crate::SecretsError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Folder of the generated keyring inside the data directory.
pub const SECRETS_DIR: &str = "secrets";
/// File name of the generated keyring.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Where the master key comes from, as the operator configured it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Name of an environment variable holding the base64 master key.
    pub master_key_env: Option<String>,
    /// A file holding the base64 master key (mode 0600 or stricter).
    pub master_key_file: Option<PathBuf>,
    /// `[secrets.vault]`: OpenBao/Vault transit wraps the data keys; used
    /// when neither of the above is set.
    pub vault: Option<crate::transit::VaultConfig>,
}

/// The path of the generated keyring in `data_dir`.
pub fn keyring_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRETS_DIR).join(MASTER_KEY_FILE)
}

/// The id of a master key: `mk-` and 16 hex digits of a hash of the key.
pub fn key_id(key: &KeyBytes) -> String {
    let mut hash = Sha256::new();
    hash.update(b"spinforge-master-key-id:v1\0");
    hash.update(key.expose());
    format!("mk-{}", &hex::encode(hash.finalize())[..16])
}

/// Where the loaded keyring came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Env(String),
    File(PathBuf),
    /// The generated keyring file; it may change under a running server.
    Generated(PathBuf),
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Env(name) => format!("environment variable {name}"),
            Origin::File(path) => format!("file {}", path.display()),
            Origin::Generated(path) => format!("generated keyring {}", path.display()),
        }
    }
}

/// The master keys this process knows, and the one new data keys are
/// wrapped with.
#[derive(Debug)]
pub struct Keyring {
    pub origin: Origin,
    active: String,
    keys: Vec<(String, KeyBytes)>,
    /// Identity of the generated file when it was read (inode, size,
    /// mtime in ns), to notice a rotation by another process.
    stamp: Option<(u64, u64, i128)>,
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    active: String,
    keys: Vec<KeyringEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyringEntry {
    id: String,
    key: String,
}

impl Keyring {
    /// Loads the master key from the configured source, or the generated
    /// keyring, creating it (with one loud warning) if none exists yet.
    pub fn load(config: &SecretsConfig, data_dir: &Path) -> Result<Keyring, SecretsError> {
        if let Some(name) = &config.master_key_env {
            let text = Zeroizing::new(std::env::var(name).map_err(|_| {
                SecretsError::MasterKey(format!(
                    "secrets.master_key_env names {name}, which is not set"
                ))
            })?);
            let key = decode_key(&text, &format!("environment variable {name}"))?;
            return Ok(Keyring::single(Origin::Env(name.clone()), key));
        }
        if let Some(path) = &config.master_key_file {
            check_private(path)?;
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                SecretsError::MasterKey(format!("cannot read {}: {e}", path.display()))
            })?);
            let key = decode_key(&text, &path.display().to_string())?;
            return Ok(Keyring::single(Origin::File(path.clone()), key));
        }
        let path = keyring_path(data_dir);
        if !path.exists() {
            let key = KeyBytes::random()?;
            let id = key_id(&key);
            let mut ring = Keyring {
                origin: Origin::Generated(path.clone()),
                active: id.clone(),
                keys: vec![(id, key)],
                stamp: None,
            };
            ring.save()?;
            tracing::warn!(
                "\n\n!!! SpinForge generated a new master key for secrets at {path}.\n\
                 !!! Without it no stored secret can ever be decrypted again.\n\
                 !!! Back it up now, away from this machine: `spinforge backup \
                 --data-dir {data} --out FILE` seals it with a passphrase, or copy \
                 {path} to a safe place. To keep it outside the data directory \
                 instead, set [secrets] master_key_file or master_key_env.\n",
                path = path.display(),
                data = data_dir.display(),
            );
            return Ok(ring);
        }
        Keyring::read_file(&path)
    }

    fn single(origin: Origin, key: KeyBytes) -> Keyring {
        let id = key_id(&key);
        Keyring {
            origin,
            active: id.clone(),
            keys: vec![(id, key)],
            stamp: None,
        }
    }

    /// Reads a generated keyring file.
    pub fn read_file(path: &Path) -> Result<Keyring, SecretsError> {
        check_private(path)?;
        let text = Zeroizing::new(std::fs::read(path).map_err(|e| {
            SecretsError::MasterKey(format!("cannot read {}: {e}", path.display()))
        })?);
        let stamp = stamp(path)?;
        let file: KeyringFile = serde_json::from_slice(&text).map_err(|e| {
            SecretsError::MasterKey(format!("{} is not a keyring: {e}", path.display()))
        })?;
        let mut keys = Vec::new();
        for entry in &file.keys {
            let key = decode_key(&entry.key, &path.display().to_string())?;
            if key_id(&key) != entry.id {
                return Err(SecretsError::MasterKey(format!(
                    "{}: key {} does not match its id (the file is damaged)",
                    path.display(),
                    entry.id
                )));
            }
            keys.push((entry.id.clone(), key));
        }
        if !keys.iter().any(|(id, _)| *id == file.active) {
            return Err(SecretsError::MasterKey(format!(
                "{}: the active key {} is not in the file",
                path.display(),
                file.active
            )));
        }
        Ok(Keyring {
            origin: Origin::Generated(path.to_owned()),
            active: file.active,
            keys,
            stamp: Some(stamp),
        })
    }

    /// Reads the generated file again if another process changed it.
    /// Returns true iff it was reloaded.
    pub fn refresh(&mut self) -> Result<bool, SecretsError> {
        let Origin::Generated(path) = &self.origin else {
            return Ok(false);
        };
        if Some(stamp(path)?) == self.stamp {
            return Ok(false);
        }
        *self = Keyring::read_file(&path.clone())?;
        Ok(true)
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    pub fn active(&self) -> (&str, &KeyBytes) {
        self.keys
            .iter()
            .find(|(id, _)| *id == self.active)
            .map(|(id, key)| (id.as_str(), key))
            .unwrap_or_else(|| (self.keys[0].0.as_str(), &self.keys[0].1))
    }

    pub fn get(&self, id: &str) -> Option<&KeyBytes> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Adds a fresh key and makes it active, writing the file first: a
    /// running server that reloads it can then open rows wrapped by
    /// either key. Only the generated keyring can rotate.
    pub fn add_active(&mut self) -> Result<String, SecretsError> {
        if !matches!(self.origin, Origin::Generated(_)) {
            return Err(SecretsError::MasterKey(format!(
                "the master key comes from {}; rotate it there",
                self.origin.describe()
            )));
        }
        let key = KeyBytes::random()?;
        let id = key_id(&key);
        self.keys.push((id.clone(), key));
        self.active = id.clone();
        self.save()?;
        Ok(id)
    }

    /// Drops a key that is not the active one and writes the file.
    pub fn remove(&mut self, id: &str) -> Result<(), SecretsError> {
        if id == self.active {
            return Err(SecretsError::Invalid {
                field: "key",
                message: format!("{id} is the active master key; rotate first"),
            });
        }
        let before = self.keys.len();
        self.keys.retain(|(k, _)| k != id);
        if self.keys.len() == before {
            return Err(SecretsError::NotFound);
        }
        self.save()
    }

    /// The keyring as the bytes of its file, for a sealed backup.
    pub fn to_file_bytes(&self) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let file = KeyringFile {
            format: 1,
            active: self.active.clone(),
            keys: self
                .keys
                .iter()
                .map(|(id, key)| KeyringEntry {
                    id: id.clone(),
                    key: B64.encode(key.expose()),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| SecretsError::MasterKey(format!("cannot encode the keyring: {e}")))?;
        Ok(Zeroizing::new(bytes))
    }

    /// Writes the generated keyring by temporary file and rename.
    fn save(&mut self) -> Result<(), SecretsError> {
        let Origin::Generated(path) = &self.origin else {
            return Ok(());
        };
        let path = path.clone();
        let bytes = self.to_file_bytes()?;
        write_private(&path, &bytes).map_err(|e| {
            SecretsError::MasterKey(format!("cannot write {}: {e}", path.display()))
        })?;
        self.stamp = Some(stamp(&path)?);
        Ok(())
    }
}

/// Writes `bytes` to `path` with mode 0600 in a 0700 folder, by a
/// temporary file, fsync and rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent folder"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn stamp(path: &Path) -> Result<(u64, u64, i128), SecretsError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| SecretsError::MasterKey(format!("cannot read {}: {e}", path.display())))?;
    Ok((
        meta.ino(),
        meta.len(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    ))
}

/// Refuses a key file that another local user could read.
fn check_private(path: &Path) -> Result<(), SecretsError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| SecretsError::MasterKey(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretsError::MasterKey(format!(
            "{} is readable by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

fn decode_key(text: &str, whence: &str) -> Result<KeyBytes, SecretsError> {
    let bytes =
        Zeroizing::new(B64.decode(text.trim()).map_err(|_| {
            SecretsError::MasterKey(format!("{whence}: the master key is not base64"))
        })?);
    KeyBytes::from_slice(&bytes).ok_or_else(|| {
        SecretsError::MasterKey(format!(
            "{whence}: the master key must be 32 bytes (base64), not {}",
            bytes.len()
        ))
    })
}

/// A new random master key as base64, for operators who keep it outside
/// the data directory.
pub fn generate_base64() -> Result<Zeroizing<String>, SecretsError> {
    Ok(Zeroizing::new(B64.encode(KeyBytes::random()?.expose())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_keyring_is_private_and_reloads_with_the_same_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = Keyring::load(&SecretsConfig::default(), dir.path()).expect("load");
        let path = keyring_path(dir.path());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let folder = std::fs::metadata(path.parent().expect("dir")).expect("meta");
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
        let again = Keyring::load(&SecretsConfig::default(), dir.path()).expect("reload");
        assert_eq!(ring.active_id(), again.active_id());
    }

    #[test]
    fn a_readable_keyring_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Keyring::load(&SecretsConfig::default(), dir.path()).expect("load");
        let path = keyring_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Keyring::load(&SecretsConfig::default(), dir.path()).expect_err("refused");
        assert!(err.to_string().contains("readable by other users"), "{err}");
    }

    #[test]
    fn rotation_keeps_the_old_key_and_another_process_sees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ring = Keyring::load(&SecretsConfig::default(), dir.path()).expect("load");
        let mut other = Keyring::load(&SecretsConfig::default(), dir.path()).expect("load");
        let old = ring.active_id().to_owned();
        let new = ring.add_active().expect("rotate");
        assert_ne!(old, new);
        assert!(other.refresh().expect("refresh"));
        assert_eq!(other.active_id(), new);
        assert!(other.get(&old).is_some());
        assert!(!other.refresh().expect("refresh"));
    }

    #[test]
    fn a_short_configured_key_names_its_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("mk");
        std::fs::write(&file, B64.encode([1u8; 16])).expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = SecretsConfig {
            master_key_file: Some(file),
            ..SecretsConfig::default()
        };
        let err = Keyring::load(&config, dir.path()).expect_err("short key");
        assert!(err.to_string().contains("must be 32 bytes"), "{err}");
    }
}
