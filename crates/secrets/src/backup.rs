//! Backups that can be restored: one `.tar.gz` holding a consistent
//! snapshot of the store (`VACUUM INTO`, taken while `serve` runs), the
//! release folders, the shield state, and a section sealed with a
//! passphrase (Argon2id → AES-256-GCM) holding the master keyring, the
//! audit keys and the manifest of every other file's SHA-256.
//!
//! Restore unpacks into a fresh folder beside the target, checks every
//! hash against the sealed manifest, decrypts every secret and opens
//! every sealed key (certificates, ACME account, signing keys), and only
//! then renames the folder into place: a wrong passphrase or a damaged
//! file changes nothing.

use crate::master::{self, Keyring, SecretsConfig};
use crate::{crypto, Result, Secrets, SecretsError};
use argon2::{Algorithm, Argon2, Params, Version};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use zeroize::Zeroizing;

/// The file, in the data directory, that lists each backup made.
pub const BACKUP_LOG: &str = "backups.jsonl";
/// Name of the sealed section inside the archive; always the last entry.
const SEALED: &str = "keys.sealed";
const MAGIC: &[u8; 8] = b"SFBKEY1\0";
/// Argon2id cost: 19 MiB, 2 passes (OWASP's recommended minimum).
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_PASSES: u32 = 2;
const SALT_LEN: usize = 16;
/// Top-level entries copied as they are; anything else is runtime state.
const PLAIN_DIRS: [&str; 3] = ["sites", "shield", "spinlets/volumes"];
/// Key folders sealed with the passphrase.
const SEALED_DIRS: [&str; 2] = [master::SECRETS_DIR, "audit"];
/// Mode bits a restored file or folder keeps: no set-id bits, and no
/// write access for others than the owner.
const KEPT_MODE_BITS: u32 = 0o755;

/// What a finished backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub file: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub files: usize,
}

/// SHA-256 (hex) of each plain entry, by archive path.
type FileHashes = BTreeMap<String, String>;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created: String,
    /// SHA-256 of each plain entry, by archive path.
    files: BTreeMap<String, String>,
    /// The file's first bytes, up to where the key section starts, as
    /// written: length and SHA-256. They hold every tar header and all
    /// padding, which the per-file hashes do not cover, so a damaged or
    /// edited byte there is caught even when it decompresses the same.
    /// Absent in backups made before it was added.
    #[serde(default)]
    prefix: Option<Prefix>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Prefix {
    bytes: u64,
    sha256: String,
}

/// Writes a backup of `data_dir` (running or not) to `out`, which must
/// not exist yet, and appends it to `DATA/backups.jsonl`.
pub async fn create(
    data_dir: &Path,
    config: &SecretsConfig,
    out: &Path,
    passphrase: &SecretString,
) -> Result<BackupSummary> {
    check_passphrase(passphrase)?;
    if out.exists() {
        return Err(SecretsError::Invalid {
            field: "out",
            message: format!("{} exists already; choose a new file", out.display()),
        });
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".spinforge-backup-")
        .tempdir_in(parent)
        .map_err(io("cannot make a staging folder next to the output"))?;

    // The keys first: the database snapshot is then at least as new as
    // the audit log's last checkpoint file.
    // The master key: the configured one or the generated keyring. A
    // transit key stays in its service; restoring then needs its config.
    let local = config.master_key_env.is_some() || config.master_key_file.is_some();
    let generated = master::keyring_path(data_dir);
    let mut sealed_tar = tar::Builder::new(Vec::new());
    if local || config.vault.is_none() || generated.exists() {
        let keyring = Keyring::load(config, data_dir)?.to_file_bytes()?;
        add_bytes(
            &mut sealed_tar,
            &format!("{}/{}", master::SECRETS_DIR, master::MASTER_KEY_FILE),
            &keyring,
        )?;
    }
    for dir in SEALED_DIRS.iter().filter(|d| **d != master::SECRETS_DIR) {
        add_tree(&mut sealed_tar, data_dir, dir, None)?;
    }

    let snapshot = staging.path().join(store::DB_FILE);
    vacuum_into(data_dir, &snapshot).await?;

    let partial = staging.path().join("backup.tar.gz");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io("cannot write the backup"))?;
    let mut archive = tar::Builder::new(GzEncoder::new(Hashing::new(file), Compression::fast()));
    let mut hashes = BTreeMap::new();
    let db = std::fs::read(&snapshot).map_err(io("cannot read the snapshot"))?;
    hashes.insert(store::DB_FILE.to_owned(), hex::encode(Sha256::digest(&db)));
    add_bytes(&mut archive, store::DB_FILE, &db)?;
    drop(db);
    for dir in PLAIN_DIRS {
        add_tree(&mut archive, data_dir, dir, Some(&mut hashes))?;
    }

    // Everything so far goes out now (a sync flush), so these bytes stay
    // as they are whatever follows.
    archive
        .get_mut()
        .flush()
        .map_err(io("cannot write the backup"))?;
    let written = archive.get_ref().get_ref();
    let prefix = Prefix {
        bytes: written.len,
        sha256: written.hex(),
    };
    let manifest = Manifest {
        format: 1,
        created: now_rfc3339(),
        files: hashes,
        prefix: Some(prefix),
    };
    let files = manifest.files.len();
    let manifest = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| SecretsError::Backup(format!("cannot encode the manifest: {e}")))?;
    add_bytes(&mut sealed_tar, "MANIFEST.json", &manifest)?;
    let inner = Zeroizing::new(
        sealed_tar
            .into_inner()
            .map_err(io("cannot build the key section"))?,
    );
    let sealed = seal_with_passphrase(passphrase, &inner)?;
    add_bytes(&mut archive, SEALED, &sealed)?;
    let mut file = archive
        .into_inner()
        .map_err(io("cannot finish the backup"))?
        .finish()
        .map_err(io("cannot finish the backup"))?
        .inner;
    file.flush().map_err(io("cannot finish the backup"))?;
    file.sync_all().map_err(io("cannot finish the backup"))?;
    drop(file);

    let bytes = std::fs::metadata(&partial)
        .map_err(io("cannot read the backup"))?
        .len();
    let sha256 = sha256_file(&partial)?;
    std::fs::hard_link(&partial, out)
        .or_else(|_| std::fs::rename(&partial, out))
        .map_err(io("cannot move the backup into place"))?;
    let file = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_owned());
    append_log(data_dir, &file, &sha256)?;
    Ok(BackupSummary {
        file,
        sha256,
        bytes,
        files,
    })
}

/// Restores `file` into `data_dir`, which must not exist or be empty.
/// Returns how many secrets were checked to decrypt.
pub async fn restore(
    file: &Path,
    data_dir: &Path,
    config: &SecretsConfig,
    passphrase: &SecretString,
) -> Result<usize> {
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .map_err(io("cannot read the target folder"))?
            .next()
            .is_none();
        if !empty {
            return Err(SecretsError::Invalid {
                field: "data_dir",
                message: format!(
                    "{} is not empty; restore only into a new or empty folder",
                    data_dir.display()
                ),
            });
        }
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("cannot create the target's parent"))?;
    let staging = tempfile::Builder::new()
        .prefix(".spinforge-restore-")
        .tempdir_in(parent)
        .map_err(io("cannot make a staging folder"))?;

    let source = std::fs::File::open(file)
        .map_err(|e| SecretsError::Backup(format!("cannot open {}: {e}", file.display())))?;
    let (hashes, sealed) = unpack_plain(source, staging.path())?;
    let sealed = sealed.ok_or_else(|| {
        SecretsError::Backup(
            "the file is truncated or not a SpinForge backup (no key section)".into(),
        )
    })?;
    let inner = open_with_passphrase(passphrase, &sealed)?;
    let manifest = unpack_sealed(&inner, staging.path())?;
    let damaged = || {
        SecretsError::Backup(
            "the archive's files do not match its sealed manifest: the file is damaged".into(),
        )
    };
    if hashes != manifest.files {
        return Err(damaged());
    }
    if let Some(prefix) = &manifest.prefix {
        if prefix_of(file, prefix.bytes)? != *prefix {
            return Err(damaged());
        }
    }

    // Today's schema first: a backup from an older version gets its
    // migrations (and its plain keys sealed by `Secrets::open`) here.
    store::SqliteStore::open(staging.path())
        .await
        .map_err(|e| SecretsError::Backup(format!("the store in the backup does not open: {e}")))?
        .close()
        .await;
    // Every secret and sealed key must decrypt before the folder goes
    // into place. Without a configured key source the sealed keyring is
    // the key.
    let secrets = Secrets::open(staging.path(), config).await?;
    let checked = secrets.check_all().await?;
    secrets.check_keys().await?;
    secrets.close().await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(staging.path().join(format!("{}{suffix}", store::DB_FILE)));
    }

    let staged = staging.keep();
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).map_err(io("cannot replace the empty target folder"))?;
    }
    std::fs::rename(&staged, data_dir).map_err(io("cannot move the restore into place"))?;
    Ok(checked)
}

async fn vacuum_into(data_dir: &Path, target: &Path) -> Result<()> {
    let pool = crate::db::open(data_dir).await?;
    let target = target
        .to_str()
        .ok_or_else(|| SecretsError::Io("the staging path is not UTF-8".into()))?;
    let done = sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&pool)
        .await;
    pool.close().await;
    done?;
    Ok(())
}

/// Unpacks the plain entries into `dir`, hashing each; returns the
/// hashes and the sealed section. Refuses links, devices and any path
/// outside the expected folders.
fn unpack_plain(source: impl Read, dir: &Path) -> Result<(FileHashes, Option<Vec<u8>>)> {
    let damaged =
        |e: std::io::Error| SecretsError::Backup(format!("the file is damaged or truncated: {e}"));
    let mut archive = tar::Archive::new(GzDecoder::new(source));
    let mut hashes = BTreeMap::new();
    let mut sealed = None;
    let mut dir_modes = Vec::new();
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        let name = safe_name(&path)?;
        let kind = entry.header().entry_type();
        if sealed.is_some() {
            return Err(SecretsError::Backup("entries after the key section".into()));
        }
        if kind.is_dir() {
            if !PLAIN_DIRS
                .iter()
                .any(|d| name == *d || name.starts_with(&format!("{d}/")))
            {
                return Err(SecretsError::Backup(format!("unexpected folder {name}")));
            }
            // The owner keeps full access; modes are set once all is in.
            let mode = (entry.header().mode().map_err(damaged)? & KEPT_MODE_BITS) | 0o700;
            mkdir_private(&dir.join(&name))?;
            dir_modes.push((dir.join(&name), mode));
            continue;
        }
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(damaged)?
                .ok_or_else(|| SecretsError::Backup(format!("{name}: a link without a target")))?
                .into_owned();
            check_link(&name, &target)?;
            let text = target
                .to_str()
                .ok_or_else(|| SecretsError::Backup(format!("{name}: target not UTF-8")))?;
            hashes.insert(name.clone(), link_hash(text));
            let path = dir.join(&name);
            if let Some(parent) = path.parent() {
                mkdir_private(parent)?;
            }
            std::os::unix::fs::symlink(&target, &path)
                .map_err(|e| SecretsError::Backup(format!("{name}: {e}")))?;
            continue;
        }
        if !kind.is_file() {
            return Err(SecretsError::Backup(format!("{name} is not a plain file")));
        }
        if name == SEALED {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(damaged)?;
            sealed = Some(bytes);
            continue;
        }
        let allowed = name == store::DB_FILE
            || PLAIN_DIRS
                .iter()
                .any(|d| name.starts_with(&format!("{d}/")));
        if !allowed {
            return Err(SecretsError::Backup(format!("unexpected file {name}")));
        }
        let mode = entry.header().mode().map_err(damaged)?;
        let hash = write_stream(&dir.join(&name), &mut entry, mode)?;
        hashes.insert(name.clone(), hash);
    }
    // tar stops at its end marker; reading the gzip stream to its end
    // checks the CRC-32 and length in its trailer, which cover the bytes
    // no hash does (headers, padding) and catch a cut-off trailer.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(damaged)?;
    for (path, mode) in dir_modes {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("cannot set a folder's mode"))?;
    }
    Ok((hashes, sealed))
}

fn unpack_sealed(inner: &[u8], dir: &Path) -> Result<Manifest> {
    let damaged = |e: std::io::Error| SecretsError::Backup(format!("key section: {e}"));
    let mut archive = tar::Archive::new(inner);
    let mut manifest = None;
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let name = safe_name(&entry.path().map_err(damaged)?)?;
        let under_key_dir = SEALED_DIRS
            .iter()
            .any(|d| name == *d || name.starts_with(&format!("{d}/")));
        if entry.header().entry_type().is_dir() && under_key_dir {
            mkdir_private(&dir.join(&name))?;
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(SecretsError::Backup(format!("{name} is not a plain file")));
        }
        let mut bytes = Zeroizing::new(Vec::new());
        entry.read_to_end(&mut bytes).map_err(damaged)?;
        if name == "MANIFEST.json" {
            manifest = Some(
                serde_json::from_slice::<Manifest>(&bytes)
                    .map_err(|e| SecretsError::Backup(format!("manifest: {e}")))?,
            );
        } else if SEALED_DIRS
            .iter()
            .any(|d| name.starts_with(&format!("{d}/")))
        {
            write_file(&dir.join(&name), &bytes, 0o600)?;
        } else {
            return Err(SecretsError::Backup(format!("unexpected key file {name}")));
        }
    }
    let manifest = manifest.ok_or_else(|| SecretsError::Backup("no manifest".into()))?;
    if manifest.format != 1 {
        return Err(SecretsError::Backup(format!(
            "backup format {} is not supported",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// A relative path of normal components only, as a `/`-joined string.
fn safe_name(path: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| SecretsError::Backup("a path is not UTF-8".into()))?
                    .to_owned(),
            ),
            Component::CurDir => {}
            _ => {
                return Err(SecretsError::Backup(format!(
                    "unsafe path {} in the archive",
                    path.display()
                )))
            }
        }
    }
    if parts.is_empty() {
        return Err(SecretsError::Backup("an empty path in the archive".into()));
    }
    Ok(parts.join("/"))
}

fn seal_with_passphrase(passphrase: &SecretString, plain: &[u8]) -> Result<Vec<u8>> {
    let mut salt = [0u8; SALT_LEN];
    crypto::fill_random(&mut salt)?;
    let mut header = Vec::with_capacity(MAGIC.len() + SALT_LEN + 8);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&salt);
    header.extend_from_slice(&KDF_MEMORY_KIB.to_le_bytes());
    header.extend_from_slice(&KDF_PASSES.to_le_bytes());
    let key = derive(passphrase, &salt, KDF_MEMORY_KIB, KDF_PASSES)?;
    let sealed = crypto::seal(&key, &header, plain)?;
    let mut out = header;
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open_with_passphrase(passphrase: &SecretString, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let header_len = MAGIC.len() + SALT_LEN + 8;
    if blob.len() < header_len || &blob[..MAGIC.len()] != MAGIC {
        return Err(SecretsError::Backup(
            "the key section is not recognised".into(),
        ));
    }
    let (header, sealed) = blob.split_at(header_len);
    let salt = &header[MAGIC.len()..MAGIC.len() + SALT_LEN];
    let number = |at: usize| {
        let bytes: [u8; 4] = header[at..at + 4].try_into().unwrap_or_default();
        u32::from_le_bytes(bytes)
    };
    let (memory, passes) = (
        number(MAGIC.len() + SALT_LEN),
        number(MAGIC.len() + SALT_LEN + 4),
    );
    // Bounds, so a crafted header cannot make us allocate gigabytes.
    if !(8 * 1024..=1024 * 1024).contains(&memory) || !(1..=16).contains(&passes) {
        return Err(SecretsError::Backup(
            "the key section's parameters are out of range".into(),
        ));
    }
    let key = derive(passphrase, salt, memory, passes)?;
    crypto::open(&key, header, sealed).ok_or_else(|| {
        SecretsError::Backup("wrong passphrase (or the key section is damaged)".into())
    })
}

fn derive(
    passphrase: &SecretString,
    salt: &[u8],
    memory: u32,
    passes: u32,
) -> Result<crypto::KeyBytes> {
    let params = Params::new(memory, passes, 1, Some(crypto::KEY_LEN))
        .map_err(|e| SecretsError::Crypto(format!("Argon2 parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; crypto::KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut key[..])
        .map_err(|e| SecretsError::Crypto(format!("Argon2: {e}")))?;
    crypto::KeyBytes::from_slice(&key[..])
        .ok_or_else(|| SecretsError::Crypto("Argon2 gave a short key".into()))
}

fn check_passphrase(passphrase: &SecretString) -> Result<()> {
    if passphrase.expose_secret().chars().count() < 12 {
        return Err(SecretsError::Invalid {
            field: "passphrase",
            message: "must be at least 12 characters".into(),
        });
    }
    Ok(())
}

fn add_bytes<W: Write>(archive: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    add_file(archive, name, bytes, 0o600)
}

fn add_file<W: Write>(
    archive: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    archive
        .append_data(&mut header, name, bytes)
        .map_err(io("cannot write the backup"))
}

/// Adds `data_dir/dir` recursively: folders, regular files (streamed,
/// never read whole) and symbolic links (kept as links; the deploy
/// extractor checked their targets). Hashes files and links into `hashes`
/// if given. Anything else, or a name that is not UTF-8, fails the backup
/// with its path: nothing is skipped silently.
// Limitation: sparse files (app data volumes) are stored at full length,
// as the tar crate writes no sparse entries (a GNU sparse writer would
// lift this); restore makes holes of their zero blocks again.
fn add_tree<W: Write>(
    archive: &mut tar::Builder<W>,
    data_dir: &Path,
    dir: &str,
    mut hashes: Option<&mut BTreeMap<String, String>>,
) -> Result<()> {
    let unsaved = |rel: &str, why: &str| SecretsError::Backup(format!("cannot save {rel}: {why}"));
    let mut stack = vec![dir.to_owned()];
    while let Some(rel) = stack.pop() {
        let path = data_dir.join(&rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel == dir => continue,
            Err(e) => return Err(unsaved(&rel, &e.to_string())),
        };
        let mode = meta.permissions().mode() & KEPT_MODE_BITS;
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(mode);
            header.set_size(0);
            header.set_mtime(0);
            archive
                .append_data(&mut header, &rel, std::io::empty())
                .map_err(io("cannot write the backup"))?;
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&path).map_err(|e| unsaved(&rel, &e.to_string()))? {
                let entry = entry.map_err(|e| unsaved(&rel, &e.to_string()))?;
                let name = entry.file_name().into_string().map_err(|name| {
                    unsaved(
                        &format!("{rel}/{}", name.to_string_lossy()),
                        "the name is not UTF-8",
                    )
                })?;
                names.push(name);
            }
            names.sort_unstable_by(|a, b| b.cmp(a));
            stack.extend(names.into_iter().map(|n| format!("{rel}/{n}")));
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| unsaved(&rel, &e.to_string()))?;
            let target = target
                .to_str()
                .ok_or_else(|| unsaved(&rel, "the link target is not UTF-8"))?
                .to_owned();
            if let Some(hashes) = hashes.as_deref_mut() {
                hashes.insert(rel.clone(), link_hash(&target));
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            header.set_mtime(0);
            archive
                .append_link(&mut header, &rel, &target)
                .map_err(io("cannot write the backup"))?;
        } else if kind.is_file() {
            let file = std::fs::File::open(&path).map_err(|e| unsaved(&rel, &e.to_string()))?;
            let mut reader = Hashing::new(file);
            let mut header = tar::Header::new_gnu();
            header.set_size(meta.len());
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            archive
                .append_data(&mut header, &rel, &mut reader)
                .map_err(|e| unsaved(&rel, &e.to_string()))?;
            if reader.len != meta.len() {
                return Err(unsaved(&rel, "the file changed while it was saved"));
            }
            if let Some(hashes) = hashes.as_deref_mut() {
                hashes.insert(rel.clone(), reader.hex());
            }
        } else {
            return Err(unsaved(&rel, "not a file, folder or link"));
        }
    }
    Ok(())
}

/// The manifest's hash of a symbolic link: of its target, marked as one.
fn link_hash(target: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"symlink\0");
    hasher.update(target.as_bytes());
    hex::encode(hasher.finalize())
}

/// Hashes (and counts) what passes through it, read or written.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    /// Bytes passed so far.
    len: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

// Limitation: links outside releases are backed up but refused on
// restore, and data volumes are copied while apps may write them (a
// check before backup, or a filesystem freeze, would lift these).
/// Checks a restored link: relative, and resolving (lexically) inside the
/// release folder (`sites/<id>/releases/<id>`) that holds it.
fn check_link(name: &str, target: &Path) -> Result<()> {
    let refuse = || SecretsError::Backup(format!("{name}: the link leaves its release"));
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() < 5 || parts[0] != "sites" || parts[2] != "releases" {
        return Err(SecretsError::Backup(format!(
            "{name}: links are kept only inside releases"
        )));
    }
    // Depth below the release root of the link's folder.
    let mut depth = parts.len() - 5;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(refuse)?,
            _ => return Err(refuse()),
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir_private(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & KEPT_MODE_BITS)
        .open(path)
        .map_err(|e| SecretsError::Backup(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("cannot write the restore"))
}

/// Writes `source` to a new file at `path`, streamed; answers its hash.
/// Blocks of zeros become holes, so a sparse data volume comes back
/// sparse rather than taking its full size on disk.
fn write_stream(path: &Path, source: &mut impl Read, mode: u32) -> Result<String> {
    use std::io::{Seek, SeekFrom};
    const BLOCK: usize = 64 * 1024;
    if let Some(parent) = path.parent() {
        mkdir_private(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & KEPT_MODE_BITS)
        .open(path)
        .map_err(|e| SecretsError::Backup(format!("{}: {e}", path.display())))?;
    let mut hashing = Hashing::new(source);
    let mut block = vec![0u8; BLOCK];
    let written = (|| -> std::io::Result<()> {
        loop {
            let mut filled = 0;
            while filled < BLOCK {
                match hashing.read(&mut block[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            let chunk = &block[..filled];
            if chunk.iter().all(|b| *b == 0) {
                file.seek(SeekFrom::Current(filled as i64))?;
            } else {
                file.write_all(chunk)?;
            }
        }
        file.set_len(hashing.len)?;
        file.sync_all()
    })();
    written.map_err(io("cannot write the restore"))?;
    Ok(hashing.hex())
}

fn mkdir_private(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("cannot create a folder"))
}

/// Length and SHA-256 of the first `bytes` bytes of `path`.
fn prefix_of(path: &Path, bytes: u64) -> Result<Prefix> {
    let file = std::fs::File::open(path).map_err(io("cannot read the backup"))?;
    let mut hashing = Hashing::new(file.take(bytes));
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("cannot read the backup"))?;
    Ok(Prefix {
        bytes: hashing.len,
        sha256: hashing.hex(),
    })
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io("cannot read the backup"))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io("cannot read the backup"))?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

fn append_log(data_dir: &Path, file: &Path, sha256: &str) -> Result<()> {
    let line = serde_json::json!({
        "time": now_rfc3339(),
        "file": file.display().to_string(),
        "sha256": sha256,
    });
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(data_dir.join(BACKUP_LOG))
        .map_err(io("cannot append to backups.jsonl"))?;
    writeln!(log, "{line}").map_err(io("cannot append to backups.jsonl"))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> SecretsError {
    move |e| SecretsError::Io(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_section_opens_only_with_its_passphrase() {
        let good = SecretString::from("correct horse battery");
        let blob = seal_with_passphrase(&good, b"keys").expect("seal");
        assert_eq!(
            &open_with_passphrase(&good, &blob).expect("open")[..],
            b"keys"
        );
        let bad = SecretString::from("wrong horse battery");
        let err = open_with_passphrase(&bad, &blob).expect_err("wrong");
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
    }

    #[test]
    fn restored_links_stay_inside_their_release() {
        let name = "sites/1/releases/r1/assets/home.html";
        assert!(check_link(name, Path::new("../index.html")).is_ok());
        assert!(check_link(name, Path::new("img/./a.png")).is_ok());
        assert!(check_link(name, Path::new("../../r2/index.html")).is_err());
        assert!(check_link(name, Path::new("/etc/passwd")).is_err());
        assert!(check_link("shield/x", Path::new("y")).is_err());
    }

    #[test]
    fn unsafe_archive_paths_are_refused() {
        assert!(safe_name(Path::new("../etc/passwd")).is_err());
        assert!(safe_name(Path::new("/etc/passwd")).is_err());
        assert_eq!(
            safe_name(Path::new("./sites/1/a")).expect("ok"),
            "sites/1/a"
        );
    }
}
