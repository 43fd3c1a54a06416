//! `spinforge backup` then `spinforge restore` through the real binary
//! keeps what a data directory holds beyond the database: a release's
//! symbolic links stay links, and app data volumes come back byte for
//! byte.

mod common;

use common::*;
use flate2::{write::GzEncoder, Compression};
use std::path::{Path, PathBuf};

const PASSPHRASE: &str = "a long enough passphrase\n";

/// A bundle with `index.html` and `home.html`, a link to it.
fn bundle_with_link() -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let page = b"<h1>kept</h1>";
    let mut header = tar::Header::new_gnu();
    header.set_size(page.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "index.html", &page[..])
        .expect("append file");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder
        .append_link(&mut link, "home.html", "index.html")
        .expect("append link");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// Every path under `dir` whose file name is `name` (links not followed).
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.map(|e| e.expect("entry")) {
            let kind = entry.file_type().expect("type");
            if kind.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test]
async fn backup_and_restore_keep_release_links_and_app_data_volumes() {
    let server = Server::start();
    let token = server.admin_token().await;
    let response = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "domain": "linked.example.com" }))
        .send()
        .await
        .expect("create site");
    assert_eq!(response.status(), 201);
    let (status, body) = upload(&server, &token, "linked.example.com", bundle_with_link()).await;
    assert_eq!(status, 201, "{body}");
    let links = find(&server.data_dir.join("sites"), "home.html");
    assert_eq!(links.len(), 1, "{links:?}");

    // Stand-in for an app's /data volume: the real ones are ext4 images
    // a running spinlet makes; the backup treats either as a file.
    let volumes = server.data_dir.join("spinlets/volumes");
    std::fs::create_dir_all(&volumes).expect("volumes dir");
    let data = pseudo_random(3 * 1024 * 1024 + 17, 7);
    std::fs::write(volumes.join("site-1.ext4"), &data).expect("volume");

    let work = tempfile::tempdir().expect("work");
    let file = work.path().join("backup.tar.gz");
    let out = server.cli(
        &[
            "backup",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8"),
            "--out",
            file.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some(PASSPHRASE),
    );
    assert_ok(&out);

    let root = tempfile::tempdir().expect("restore root");
    let target = root.path().join("data");
    let out = server.cli(
        &[
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            target.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some(PASSPHRASE),
    );
    assert_ok(&out);

    let relative = links[0].strip_prefix(&server.data_dir).expect("inside");
    let restored = target.join(relative);
    let meta = std::fs::symlink_metadata(&restored).expect("restored link");
    assert!(meta.file_type().is_symlink(), "{restored:?} is a link");
    assert_eq!(
        std::fs::read_link(&restored).expect("target"),
        PathBuf::from("index.html")
    );
    assert_eq!(
        std::fs::read(&restored).expect("through the link"),
        b"<h1>kept</h1>"
    );
    let volume = std::fs::read(target.join("spinlets/volumes/site-1.ext4")).expect("volume");
    assert_eq!(sha256_hex(&volume), sha256_hex(&data));
}
