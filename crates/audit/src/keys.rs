//! The log's two keys, kept as files outside the database: the MAC chain
//! key (32 random bytes) and the checkpoint signing key (Ed25519, PKCS#8).
//! Both are created on first start with mode 0600 in a 0700 folder, and
//! refused if another user could read them. The last checkpoint is also
//! kept here as a file, so deleting checkpoints from the database alone
//! does not hide a truncated tail.

use crate::chain::{ChainKey, Checkpoint, SigningKey};
use crate::AuditError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the MAC chain key inside the key folder.
pub const CHAIN_KEY_FILE: &str = "chain.key";
/// File name of the checkpoint signing key inside the key folder.
pub const SIGNING_KEY_FILE: &str = "checkpoint.key";
/// File name of the newest checkpoint inside the key folder.
pub const LAST_CHECKPOINT_FILE: &str = "last-checkpoint.json";

/// The default key folder inside a data directory.
pub fn default_key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

pub struct Keys {
    pub chain: ChainKey,
    pub signing: SigningKey,
}

/// Loads both keys from `dir`, creating any that is missing when
/// `create` is set. Returns the keys and whether a new signing key was
/// made.
pub fn load_or_create(dir: &Path, create: bool) -> Result<(Keys, bool), AuditError> {
    if create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuditError::key(dir, e))?;
    }
    let chain = read_or_make(&dir.join(CHAIN_KEY_FILE), create, || {
        let mut bytes = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "cannot read random bytes".to_owned())?;
        Ok(bytes)
    })?;
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let existed = signing_path.exists();
    let signing = read_or_make(&signing_path, create, SigningKey::generate_pkcs8)?;
    let signing =
        SigningKey::from_pkcs8(&signing.0).map_err(|e| AuditError::key(&signing_path, e))?;
    if chain.0.len() < 32 {
        return Err(AuditError::key(
            &dir.join(CHAIN_KEY_FILE),
            "shorter than 32 bytes",
        ));
    }
    Ok((
        Keys {
            chain: ChainKey::new(&chain.0),
            signing,
        },
        !existed,
    ))
}

/// Key bytes, wiped from memory when dropped.
pub(crate) struct KeyBytes(pub(crate) Vec<u8>);

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

pub(crate) fn read_or_make(
    path: &Path,
    create: bool,
    make: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<KeyBytes, AuditError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(AuditError::key(
                    path,
                    "readable by other users; make it mode 0600",
                ));
            }
            std::fs::read(path)
                .map(KeyBytes)
                .map_err(|e| AuditError::key(path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let bytes = KeyBytes(make().map_err(|e| AuditError::key(path, e))?);
            write_private(path, &bytes.0).map_err(|e| AuditError::key(path, e))?;
            tracing::info!(key = %path.display(), "audit key created");
            Ok(bytes)
        }
        Err(e) => Err(AuditError::key(path, e)),
    }
}

/// Writes a file of mode 0600 through a temporary name and a rename, so a
/// crash never leaves half a file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The newest checkpoint as kept in its file.
#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    seq: i64,
    mac: String,
    time_us: i64,
    key_id: String,
    signature: String,
}

pub(crate) fn save_last_checkpoint(dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let file = CheckpointFile {
        seq: checkpoint.seq,
        mac: hex::encode(&checkpoint.mac),
        time_us: checkpoint.time_us,
        key_id: checkpoint.key_id.clone(),
        signature: hex::encode(&checkpoint.signature),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    write_private(&dir.join(LAST_CHECKPOINT_FILE), &text)
}

/// The checkpoint in the file, if there is a readable one.
pub(crate) fn load_last_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, String> {
    let path = dir.join(LAST_CHECKPOINT_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: CheckpointFile =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let decode = |s: &str| hex::decode(s).map_err(|e| format!("{}: {e}", path.display()));
    Ok(Some(Checkpoint {
        seq: file.seq,
        mac: decode(&file.mac)?,
        time_us: file.time_us,
        key_id: file.key_id,
        signature: decode(&file.signature)?,
    }))
}
