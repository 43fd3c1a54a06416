//! Crash safety of the deploy pipeline: `serve` is killed with SIGKILL in
//! the middle of an upload, or just after one, and started again on the
//! same data directory. Whatever the moment, the site serves either the old
//! release or the complete new one, the API lists exactly the releases on
//! disk, `tmp/` is empty and the store passes its integrity check.

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::stream;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const DOMAIN: &str = "crash.localhost";
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Bytes handed to the HTTP client per body chunk.
const CHUNK: usize = 64 * KIB;

/// Release `n` of the site: `index.html` names it, `big.bin` is `size`
/// incompressible bytes that only it has.
struct Version {
    n: usize,
    index: String,
    big: Vec<u8>,
    bundle: Vec<u8>,
}

impl Version {
    fn new(n: usize, size: usize) -> Version {
        let index = format!("<h1>v{n}</h1>");
        let big = pseudo_random(size, n as u64);
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [("index.html", index.as_bytes()), ("big.bin", &big)] {
            let mut header = tar::Header::new_gnu();
            header.set_path(name).expect("path");
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append(&header, data).expect("append");
        }
        let tar = tar.into_inner().expect("tar");
        // The content is random: compressing harder would only cost time.
        let mut gz = GzEncoder::new(Vec::new(), Compression::none());
        gz.write_all(&tar).expect("gzip");
        let bundle = gz.finish().expect("gzip");
        Version {
            n,
            index,
            big,
            bundle,
        }
    }

    fn size_bytes(&self) -> usize {
        self.index.len() + self.big.len()
    }

    /// The edge serves exactly this release.
    async fn assert_served(&self, server: &Server, when: &str) {
        let index = server.get(DOMAIN, "/").await;
        assert_eq!(index.status(), 200, "{when}");
        assert_eq!(index.text().await.expect("index"), self.index, "{when}");
        let big = server.get(DOMAIN, "/big.bin").await;
        assert_eq!(big.status(), 200, "{when}");
        let body = big.bytes().await.expect("big.bin");
        assert_eq!(
            sha256_hex(&body),
            sha256_hex(&self.big),
            "{when}: big.bin of v{} is not served whole",
            self.n
        );
    }
}

// ---- API helpers -----------------------------------------------------------

async fn login(server: &Server) -> String {
    let response = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

async fn get_json(server: &Server, token: &str, path: &str) -> Value {
    let response = http()
        .get(format!("{}{path}", server.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("json")
}

async fn releases(server: &Server, token: &str) -> Vec<Value> {
    let list = get_json(server, token, &format!("/api/v1/sites/{DOMAIN}/releases")).await;
    list.as_array().expect("release list").clone()
}

fn upload_url(server: &Server) -> String {
    format!("{}/api/v1/sites/{DOMAIN}/releases", server.api_url())
}

/// Creates the site and deploys `v1`; returns the site id and release id.
async fn create_and_deploy(server: &Server, token: &str, v1: &Version) -> (i64, String) {
    let created = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(token)
        .json(&json!({ "domain": DOMAIN, "type": "static" }))
        .send()
        .await
        .expect("create site");
    assert_eq!(created.status(), 201);
    let deployed = http()
        .post(upload_url(server))
        .bearer_auth(token)
        .body(v1.bundle.clone())
        .send()
        .await
        .expect("deploy");
    assert_eq!(deployed.status(), 201);
    let release: Value = deployed.json().await.expect("json");
    let id = release["id"].as_str().expect("release id").to_owned();

    let site_ids: Vec<i64> = std::fs::read_dir(server.data_dir.join("sites"))
        .expect("sites folder")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(site_ids.len(), 1, "{site_ids:?}");
    (site_ids[0], id)
}

/// Bytes of the partial upload in `tmp/`, if one is there.
fn partial_upload_bytes(server: &Server) -> u64 {
    std::fs::read_dir(server.data_dir.join("tmp"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("upload-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn assert_store_is_intact(server: &Server, when: &str) {
    let data_dir = server.data_dir.to_str().expect("utf-8 path");
    let out = server.cli(&["admin", "check", "--data-dir", data_dir], None);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), "ok", "{when}");
}

/// Release folders on disk equal the releases the API lists, and `tmp/`
/// is empty.
fn assert_disk_matches(server: &Server, site_id: i64, listed: &[Value], when: &str) {
    let mut ids: Vec<String> = listed
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    assert_eq!(server.release_dirs(site_id), ids, "{when}: folders vs. API");
    assert_eq!(server.tmp_entries(), 0, "{when}: tmp/ is not empty");
}

// ---- the crashes -----------------------------------------------------------

#[tokio::test]
async fn kill9_during_an_upload_keeps_the_old_release() {
    let mut server = Server::start();
    let token = server.admin_token().await;
    let v1 = Version::new(1, 4 * KIB);
    let (site_id, v1_id) = create_and_deploy(&server, &token, &v1).await;

    // Stream the first half of v2 through a channel we control, then stall.
    let v2 = Version::new(2, 20 * MIB);
    let half = v2.bundle.len() / 2;
    let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let request = tokio::spawn(
        http()
            .post(upload_url(&server))
            .bearer_auth(&token)
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    for chunk in v2.bundle[..half].chunks(CHUNK) {
        tx.send(Ok(chunk.to_vec())).await.expect("body channel");
    }

    // Wait until the server has stored most of that half in tmp/.
    let deadline = Instant::now() + Duration::from_secs(20);
    while partial_upload_bytes(&server) < (half - MIB) as u64 {
        assert!(
            Instant::now() < deadline,
            "the server stored only {} of {half} bytes",
            partial_upload_bytes(&server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    assert!(server.tmp_entries() > 0, "the kill landed mid-upload");
    let outcome = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("the client noticed the kill")
        .expect("request task");
    assert!(
        outcome.is_err(),
        "a half upload must not succeed: {outcome:?}"
    );
    drop(tx);

    let server = server.restart();
    let token = login(&server).await;
    v1.assert_served(&server, "after the restart").await;
    let listed = releases(&server, &token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], v1_id.as_str());
    assert_eq!(listed[0]["active"], true);
    assert_eq!(server.release_dirs(site_id), vec![v1_id]);
    assert_eq!(server.tmp_entries(), 0, "the start-up sweep empties tmp/");
    assert_store_is_intact(&server, "after the restart");
}

#[tokio::test]
async fn kill9_right_after_an_upload_never_leaves_a_half_release() {
    let mut server = Server::start();
    let mut token = server.admin_token().await;
    let v1 = Version::new(1, 4 * KIB);
    let (site_id, v1_id) = create_and_deploy(&server, &token, &v1).await;
    let mut known: HashMap<String, Version> = HashMap::from([(v1_id.clone(), v1)]);
    let mut active_id = v1_id;

    // Delays after the last body byte, bunched near zero: with a bundle
    // this small the whole deploy takes a few ms, so the kill lands in
    // different steps (receive, unpack, rename, commit) or just after.
    for (i, delay_ms) in [0u64, 2, 5, 12, 40].into_iter().enumerate() {
        let version = Version::new(i + 2, 96 * KIB);
        let when = format!("v{} killed {delay_ms} ms after the upload", version.n);

        // The stream says when the client has taken its last byte.
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let chunks: Vec<Vec<u8>> = version.bundle.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        let body = stream::unfold(
            (chunks.into_iter(), Some(done_tx)),
            |(mut chunks, mut done)| async move {
                match chunks.next() {
                    Some(chunk) => Some((Ok::<_, std::io::Error>(chunk), (chunks, done))),
                    None => {
                        if let Some(done) = done.take() {
                            let _ = done.send(());
                        }
                        None
                    }
                }
            },
        );
        let request = tokio::spawn(
            http()
                .post(upload_url(&server))
                .bearer_auth(&token)
                .body(reqwest::Body::wrap_stream(body))
                .send(),
        );
        tokio::time::timeout(Duration::from_secs(30), done_rx)
            .await
            .expect("the body was sent within 30 s")
            .expect("body stream");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill9();
        let acknowledged = tokio::time::timeout(Duration::from_secs(15), request)
            .await
            .expect("the client noticed the kill")
            .expect("request task")
            .is_ok_and(|response| response.status() == 201);

        server = server.restart();
        token = login(&server).await;
        let listed = releases(&server, &token).await;

        // At most one release is new, and it is v_n in full.
        let new: Vec<&Value> = listed
            .iter()
            .filter(|r| !known.contains_key(r["id"].as_str().expect("id")))
            .collect();
        assert!(new.len() <= 1, "{when}: {listed:?}");
        if let Some(release) = new.first() {
            assert_eq!(release["sha256"], sha256_hex(&version.bundle), "{when}");
            assert_eq!(release["file_count"], 2, "{when}");
            assert_eq!(release["size_bytes"], version.size_bytes(), "{when}");
            let id = release["id"].as_str().expect("id").to_owned();
            known.insert(id, version);
        }

        // The active release is the old one or the new one, served whole.
        let active: Vec<&str> = listed
            .iter()
            .filter(|r| r["active"] == true)
            .map(|r| r["id"].as_str().expect("id"))
            .collect();
        assert_eq!(active.len(), 1, "{when}: {listed:?}");
        let new_id = new.first().and_then(|r| r["id"].as_str());
        assert!(
            active[0] == active_id || Some(active[0]) == new_id,
            "{when}: {} is active, expected {active_id} or {new_id:?}",
            active[0]
        );
        if acknowledged {
            assert_eq!(
                Some(active[0]),
                new_id,
                "{when}: an acknowledged deploy was lost"
            );
        }
        active_id = active[0].to_owned();
        let site = get_json(&server, &token, &format!("/api/v1/sites/{DOMAIN}")).await;
        assert_eq!(site["active_release"], active_id.as_str(), "{when}");
        known[&active_id].assert_served(&server, &when).await;

        assert_disk_matches(&server, site_id, &listed, &when);
        assert_store_is_intact(&server, &when);
    }
}

#[tokio::test]
async fn restart_keeps_serving_without_redeploy() {
    let server = Server::start();
    let token = server.admin_token().await;
    let v1 = Version::new(1, 64 * KIB);
    let (site_id, _) = create_and_deploy(&server, &token, &v1).await;
    let before = releases(&server, &token).await;

    // `restart` stops with SIGTERM and starts again on the same data.
    let server = server.restart();
    v1.assert_served(&server, "after a clean restart").await;
    let token = login(&server).await;
    let after = releases(&server, &token).await;
    assert_eq!(after, before);
    assert_disk_matches(&server, site_id, &after, "after a clean restart");
    assert_store_is_intact(&server, "after a clean restart");
}
