//! Helpers for the keys-at-rest tests (`keys_at_rest.rs`, `acme.rs`):
//! open a sealed key the way an attacker holding the data directory and
//! the master key would, and search the store's files for key material.
#![allow(dead_code)]

use base64::Engine as _;
use std::path::{Path, PathBuf};

/// The store's files: the database, its write-ahead log and its index.
pub fn store_files(data_dir: &Path) -> Vec<PathBuf> {
    ["spinforge.db", "spinforge.db-wal", "spinforge.db-shm"]
        .iter()
        .map(|name| data_dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// What to look for of a PEM private key: each base64 line of its body
/// and the DER bytes they encode.
pub fn pem_needles(label: &str, pem: &str) -> Vec<(String, Vec<u8>)> {
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    assert!(!body.is_empty(), "{label}: not PEM");
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.concat())
        .expect("PEM base64");
    let mut needles: Vec<(String, Vec<u8>)> = body
        .iter()
        .enumerate()
        .map(|(i, line)| (format!("{label} PEM line {i}"), line.as_bytes().to_vec()))
        .collect();
    needles.push((format!("{label} DER"), der));
    needles
}

/// What to look for of a DER key: its bytes, and its base64 in both
/// alphabets (without padding, so a prefix match counts).
pub fn der_needles(label: &str, der: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    vec![
        (format!("{label} DER"), der.to_vec()),
        (
            format!("{label} base64"),
            STANDARD_NO_PAD.encode(der).into_bytes(),
        ),
        (
            format!("{label} base64url"),
            URL_SAFE_NO_PAD.encode(der).into_bytes(),
        ),
    ]
}

/// Panics naming the needle and the file if any store file holds one.
pub fn assert_absent(data_dir: &Path, needles: &[(String, Vec<u8>)]) {
    let files = store_files(data_dir);
    assert!(
        files.iter().any(|f| f.ends_with("spinforge.db")),
        "no store in {}",
        data_dir.display()
    );
    for file in &files {
        let bytes = std::fs::read(file).expect("read store file");
        for (label, needle) in needles {
            assert!(needle.len() >= 16, "{label} is too short to search for");
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{label} is in {}",
                file.display()
            );
        }
    }
}

/// Panics unless every needle is in some store file: shows the search
/// finds what it looks for.
pub fn assert_present(data_dir: &Path, needles: &[(String, Vec<u8>)]) {
    let contents: Vec<Vec<u8>> = store_files(data_dir)
        .iter()
        .map(|f| std::fs::read(f).expect("read store file"))
        .collect();
    for (label, needle) in needles {
        assert!(
            contents
                .iter()
                .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_slice())),
            "{label} is not in the store"
        );
    }
}

/// The table and naming column of each kind of sealed key.
fn table(kind: secrets::KeyKind) -> (&'static str, &'static str) {
    match kind {
        secrets::KeyKind::CertificateKey => ("certificates", "domain"),
        secrets::KeyKind::AcmeAccount => ("acme_accounts", "directory"),
        secrets::KeyKind::UpstreamClientKey => ("site_upstream_tls", "domain"),
        _ => ("signing_keys", "kid"),
    }
}

/// A read-only connection pool on the store of `data_dir`.
pub async fn pool(data_dir: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("spinforge.db"))
        .read_only(true);
    sqlx::SqlitePool::connect_with(options).await.expect("db")
}

/// The stored (sealed) form of the key `name` of `kind`.
pub async fn stored(data_dir: &Path, kind: secrets::KeyKind, name: &str) -> secrets::Sealed {
    use sqlx::Row;
    let (table, column) = table(kind);
    let pool = pool(data_dir).await;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT legacy_plaintext IS NULL AS sealed, kek_id, wrapped_key, ciphertext \
         FROM {table} WHERE {column} = ?"
    )))
    .bind(name)
    .fetch_one(&pool)
    .await
    .expect("row");
    pool.close().await;
    assert!(row.get::<bool, _>("sealed"), "{name} still has a plain key");
    secrets::Sealed {
        kek_id: row.get("kek_id"),
        wrapped_key: row.get("wrapped_key"),
        ciphertext: row.get("ciphertext"),
    }
}

/// Opens the stored key `name` of `kind` with the data directory's own
/// master key.
pub async fn open_stored(data_dir: &Path, kind: secrets::KeyKind, name: &str) -> Vec<u8> {
    let sealed = stored(data_dir, kind, name).await;
    let secrets = secrets::Secrets::open(data_dir, &secrets::SecretsConfig::default())
        .await
        .expect("secrets");
    let plain = secrets
        .open_key(&secrets::KeyId::new(kind, name), &sealed)
        .await
        .expect("the sealed key opens with its master key");
    secrets.close().await;
    plain.to_vec()
}
