//! Keys at rest, black box (issue #10): certificate keys, the ACME
//! account and token signing keys are sealed with the secrets envelope.
//! The real binary runs; the store's files are searched for the keys'
//! bytes; `openssl s_client` checks what HTTPS serves; tokens are checked
//! through the API. An older version's plain rows are written with sqlx
//! into a store migrated only up to the migrations before 0013.

mod common;
mod keys_support;

use common::{assert_ok, http, write_tree, Server, LOOPBACK_UPSTREAMS};
use keys_support::{assert_absent, der_needles, open_stored, pem_needles};
use secrets::KeyKind;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The harness config plus an HTTPS listener on a free loopback port.
fn tls_config() -> String {
    format!("tls_listen = \"127.0.0.1:0\"\n{LOOPBACK_UPSTREAMS}")
}

/// A self-signed certificate for `name`: (chain PEM, key PEM).
fn self_signed(name: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

fn deploy_static(server: &Server, domain: &str) {
    let dir = tempfile::tempdir().expect("site");
    write_tree(dir.path(), &[("index.html", b"<h1>sealed</h1>")]);
    let dir = dir.path().to_str().expect("utf-8").to_owned();
    assert_ok(&server.cli(&["deploy", &dir, "--domain", domain], None));
}

/// Deploys `domain` and uploads a fresh certificate for it with the CLI;
/// returns the key PEM.
fn site_with_cert(server: &Server, domain: &str) -> String {
    deploy_static(server, domain);
    let (chain, key) = self_signed(domain);
    let dir = tempfile::tempdir().expect("pem dir");
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, chain).expect("cert");
    std::fs::write(&key_file, &key).expect("key");
    let out = server.cli(
        &[
            "certs",
            "upload",
            domain,
            "--cert",
            cert_file.to_str().expect("utf-8"),
            "--key",
            key_file.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_ok(&out);
    key
}

/// The `subject=` line of the certificate HTTPS serves for `name`.
fn served_subject(tls: SocketAddr, name: &str) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &tls.to_string()])
        .args(["-servername", name])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client (apt package openssl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no certificate in:\n{text}"))
        .to_owned()
}

async fn whoami(server: &Server, token: &str) -> u16 {
    http()
        .get(format!("{}/api/v1/whoami", server.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("whoami")
        .status()
        .as_u16()
}

/// The kid in a token's header: the signing key that signed it.
fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

/// Runs `serve` on `data_dir` expecting it to refuse to start; returns
/// what it printed on stderr.
fn serve_refuses(data_dir: &Path) -> String {
    let mut child = Command::new(common::BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--tls-listen", "127.0.0.1:0"])
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
            let _ = child.wait();
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

/// Swaps `columns` between the rows of `table` whose `key` is `pair.0`
/// and `pair.1`, as an attacker with write access to the file would.
async fn swap_rows(data_dir: &Path, table: &str, key: &str, pair: (&str, &str), columns: &[&str]) {
    use sqlx::Row;
    let db = data_dir.join("spinforge.db");
    let writer = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("db");
    for column in columns {
        let read = |name: &str| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {column} AS v FROM {table} WHERE {key} = ?"
            )))
            .bind(name.to_owned())
        };
        let a = read(pair.0).fetch_one(&writer).await.expect("row a");
        let b = read(pair.1).fetch_one(&writer).await.expect("row b");
        let (a, b): (Vec<u8>, Vec<u8>) = (a.get("v"), b.get("v"));
        assert_ne!(a, b, "{column} differs between the rows");
        for (name, value) in [(pair.0, &b), (pair.1, &a)] {
            let set = format!("UPDATE {table} SET {column} = ? WHERE {key} = ?");
            let done = sqlx::query(sqlx::AssertSqlSafe(set))
                .bind(value.clone())
                .bind(name.to_owned())
                .execute(&writer)
                .await
                .expect("swap");
            assert_eq!(done.rows_affected(), 1);
        }
    }
    writer.close().await;
}

fn host_cli(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    let data = server.data_dir.to_str().expect("utf-8").to_owned();
    all.extend(["--data-dir", &data, "--json"]);
    let out = server.cli(&all, None);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test]
async fn keys_are_sealed_on_disk_and_serve_again_after_rotation_and_restart() {
    let server = Server::start_with(&tls_config());
    let token = server.admin_token().await;
    let key_pem = site_with_cert(&server, "alpha.test");
    let tls = server.tls.expect("HTTPS listener");
    assert!(served_subject(tls, "alpha.test").contains("alpha.test"));

    // The signing key, opened as an attacker with the master key would:
    // it is the key that signed our token, and the store holds it sealed.
    let kid = kid_of(&token);
    let signing = open_stored(&server.data_dir, KeyKind::SigningKey, &kid).await;
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&signing).expect("Ed25519");
    let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let check = jsonwebtoken::DecodingKey::from_ed_der(&public);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(&token, &check, &validation)
        .expect("the opened key is the one that signs");
    let cert_key = open_stored(&server.data_dir, KeyKind::CertificateKey, "alpha.test").await;
    assert_eq!(cert_key, key_pem.as_bytes());

    let mut needles = pem_needles("certificate key", &key_pem);
    needles.extend(der_needles("signing key", &signing));
    assert_absent(&server.data_dir, &needles);

    // Rotation re-wraps these keys too: the old master key retires.
    let rotated = host_cli(&server, &["keys", "rotate-master"]);
    // One certificate key and one signing key; no site secrets.
    assert_eq!(rotated["rewrapped_keys"], 2, "{rotated}");
    assert_eq!(rotated["rewrapped"], 0, "{rotated}");
    let old = rotated["unused"][0].as_str().expect("old key").to_owned();
    let retired = host_cli(&server, &["keys", "retire-master", &old]);
    assert_eq!(retired["retired"], old.as_str());

    let server = server.restart();
    let tls = server.tls.expect("HTTPS listener after restart");
    assert!(served_subject(tls, "alpha.test").contains("alpha.test"));
    assert_eq!(whoami(&server, &token).await, 200, "{}", server.log());
    assert_absent(&server.data_dir, &needles);
}

#[tokio::test]
async fn swapped_certificate_keys_are_not_served_and_the_error_names_the_domains() {
    let mut server = Server::start_with(&tls_config());
    server.create_admin_and_login();
    let mut keys = Vec::new();
    for domain in ["alpha.test", "beta.test", "gamma.test"] {
        keys.push(site_with_cert(&server, domain));
    }
    server.stop();

    // Each sealed key moved, whole, into the other domain's row (both are
    // wrapped by the same master key, so kek_id is the same).
    swap_rows(
        &server.data_dir,
        "certificates",
        "domain",
        ("alpha.test", "beta.test"),
        &["wrapped_key", "ciphertext"],
    )
    .await;

    let server = server.restart();
    let tls = server.tls.expect("HTTPS listener");
    for domain in ["alpha.test", "beta.test"] {
        let subject = served_subject(tls, domain);
        assert!(!subject.contains(domain), "{domain} served: {subject}");
        let named = format!("the certificate key of {domain} does not open");
        assert!(server.log_shows(&named).await, "{}", server.log());
    }
    assert!(served_subject(tls, "gamma.test").contains("gamma.test"));
    let log = server.log();
    assert!(log.contains("cert.unusable"), "{log}");
    for key in &keys {
        for (label, needle) in pem_needles("key", key) {
            let text = String::from_utf8_lossy(&needle).into_owned();
            assert!(!log.contains(&text), "{label} in the log");
        }
    }
}

#[tokio::test]
async fn serve_refuses_to_start_when_the_signing_key_does_not_open() {
    let mut server = Server::start();
    let token = server.admin_token().await;
    let first = kid_of(&token);
    assert_ok(&server.cli(&["keys", "rotate-signing"], None));
    let second = kid_of(&server.login_token().await);
    assert_ne!(first, second);
    server.stop();

    // The two keys' ciphertexts change places: the active one no longer
    // opens under its own kid.
    let pair = (first.as_str(), second.as_str());
    swap_rows(
        &server.data_dir,
        "signing_keys",
        "kid",
        pair,
        &["ciphertext"],
    )
    .await;
    let err = serve_refuses(&server.data_dir);
    assert!(err.contains("cannot open the token signing key"), "{err}");
    assert!(
        err.contains(&format!("the token signing key {second} does not open")),
        "{err}"
    );

    // Another data directory's keyring: a well-formed, wrong master key.
    swap_rows(
        &server.data_dir,
        "signing_keys",
        "kid",
        pair,
        &["ciphertext"],
    )
    .await;
    let mut other = Server::start();
    other.stop();
    std::fs::copy(
        other.data_dir.join("secrets/master.key"),
        server.data_dir.join("secrets/master.key"),
    )
    .expect("copy keyring");
    let err = serve_refuses(&server.data_dir);
    assert!(
        err.contains(&format!("the token signing key {second} does not open")),
        "{err}"
    );
    assert!(err.contains("which is not available"), "{err}");
}

/// A store as a version before 0013 left it: every migration up to 0011
/// applied by sqlx from the repository's files.
async fn old_version_store(data_dir: &Path) -> sqlx::SqlitePool {
    let source = common::workspace_root().join("crates/store/migrations/sqlite");
    let old = tempfile::tempdir().expect("old migrations");
    for entry in std::fs::read_dir(&source).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let number: u32 = name[..4].parse().expect("numbered");
        if number < 13 {
            std::fs::copy(&path, old.path().join(&name)).expect("copy");
        }
    }
    std::fs::create_dir_all(data_dir).expect("data dir");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("spinforge.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .foreign_keys(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("db");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("migrator")
        .run(&pool)
        .await
        .expect("old migrations");
    pool
}

#[tokio::test]
async fn plain_keys_from_an_older_version_are_sealed_at_start() {
    let root = Arc::new(tempfile::tempdir().expect("root"));
    let data_dir = root.path().join("data");
    let pool = old_version_store(&data_dir).await;

    let (chain, key_pem) = self_signed("old.test");
    let document =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .expect("Ed25519");
    let signing = document.as_ref().to_vec();
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&signing).expect("pair");
    let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let account_key = rcgen::KeyPair::generate().expect("account key");
    let account_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(account_key.serialize_der())
    };
    let directory = "https://acme.invalid/directory";
    let credentials = serde_json::json!({
        "id": "https://acme.invalid/acct/1",
        "key_pkcs8": account_b64,
        "directory": directory,
    })
    .to_string();
    sqlx::query(
        "INSERT INTO certificates (domain, chain_pem, key_pem, issuer, not_after, source,
         updated_at) VALUES ('old.test', ?, ?, 'CN=old.test', 4102444800, 'upload', 0)",
    )
    .bind(&chain)
    .bind(&key_pem)
    .execute(&pool)
    .await
    .expect("old certificate");
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, public_key, created_at, active)
         VALUES ('kold', ?, ?, 0, 1)",
    )
    .bind(&signing)
    .bind(&public)
    .execute(&pool)
    .await
    .expect("old signing key");
    sqlx::query("INSERT INTO acme_accounts (directory, credentials, created_at) VALUES (?, ?, 0)")
        .bind(directory)
        .bind(&credentials)
        .execute(&pool)
        .await
        .expect("old account");
    pool.close().await;
    let mut needles = pem_needles("certificate key", &key_pem);
    needles.extend(der_needles("signing key", &signing));
    needles.extend(der_needles("account key", &account_key.serialize_der()));
    needles.push((
        "account credentials".into(),
        account_b64.clone().into_bytes(),
    ));

    // The search finds the plain keys where the old version left them.
    let mut planted: Vec<(String, Vec<u8>)> = pem_needles("certificate key", &key_pem)
        .into_iter()
        .filter(|(label, _)| label.contains("PEM line"))
        .collect();
    planted.push(("signing key DER".into(), signing.clone()));
    planted.push((
        "account credentials".into(),
        account_b64.clone().into_bytes(),
    ));
    keys_support::assert_present(&data_dir, &planted);

    let server = Server::start_at_with(root, &tls_config());
    assert!(
        server.log_shows("keys.sealed_legacy").await,
        "{}",
        server.log()
    );
    assert_absent(&server.data_dir, &needles);

    // The same keys, now sealed, do their work.
    let tls = server.tls.expect("HTTPS listener");
    assert!(served_subject(tls, "old.test").contains("old.test"));
    let token = server.admin_token().await;
    assert_eq!(kid_of(&token), "kold");
    let check = jsonwebtoken::DecodingKey::from_ed_der(&public);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(&token, &check, &validation)
        .expect("signed by the old key");
    let opened = open_stored(&server.data_dir, KeyKind::AcmeAccount, directory).await;
    assert_eq!(opened, credentials.as_bytes());
    let reader = keys_support::pool(&server.data_dir).await;
    for table in ["certificates", "signing_keys", "acme_accounts"] {
        let plain: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {table} WHERE legacy_plaintext IS NOT NULL"
        )))
        .fetch_one(&reader)
        .await
        .expect("count");
        assert_eq!(plain, 0, "{table}");
    }
    reader.close().await;

    // Sealed once: a restart seals nothing more and still serves.
    let server = server.restart();
    assert!(
        !server.log().contains("keys.sealed_legacy"),
        "{}",
        server.log()
    );
    let tls = server.tls.expect("HTTPS listener");
    assert!(served_subject(tls, "old.test").contains("old.test"));
    assert_eq!(whoami(&server, &token).await, 200);
}

#[tokio::test]
async fn a_backup_restores_sealed_keys_that_serve_in_the_new_data_dir() {
    let server = Server::start_with(&tls_config());
    let token = server.admin_token().await;
    let key_pem = site_with_cert(&server, "kept.test");
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
        Some("a long enough passphrase\n"),
    );
    assert_ok(&out);

    let root = Arc::new(tempfile::tempdir().expect("restore root"));
    let target = root.path().join("data");
    let out = server.cli(
        &[
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            target.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some("a long enough passphrase\n"),
    );
    assert_ok(&out);
    drop(server);

    let restored = Server::start_at_with(root, &tls_config());
    let tls = restored.tls.expect("HTTPS listener");
    assert!(served_subject(tls, "kept.test").contains("kept.test"));
    assert_eq!(whoami(&restored, &token).await, 200, "{}", restored.log());
    assert_absent(
        &restored.data_dir,
        &pem_needles("certificate key", &key_pem),
    );
}
