//! Privacy through the real binary: a consent-bound route answers 451
//! until its purpose is given, a user's export carries a checksum that
//! matches its data, and after an erasure neither the database file nor
//! its write-ahead log holds the user's address or name, while
//! `spinforge audit verify` still passes.

mod common;

use common::*;
use flate2::{write::GzEncoder, Compression};
use reqwest::Method;
use serde_json::{json, Value};

const PASSWORD: &str = "a long enough password 42";

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, format!("{}{path}", server.api_url()))
        .header("user-agent", "privacy-test/2.0");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_json(request.send().await.expect("api call")).await
}

/// Creates a developer of customer `acme` and logs it in: (id, token).
async fn developer(server: &Server, admin: &str, email: &str, name: &str) -> (i64, String) {
    let body = json!({
        "email": email, "password": PASSWORD, "role": "developer",
        "customer": "acme", "name": name,
    });
    let (status, created) = call(
        server,
        Method::POST,
        "/api/v1/users",
        Some(admin),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let login = json!({ "email": email, "password": PASSWORD });
    let (status, pair) = call(
        server,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(login),
    )
    .await;
    assert_eq!(status, 200, "{pair}");
    let token = pair["access_token"].as_str().expect("token").to_owned();
    (created["id"].as_i64().expect("id"), token)
}

async fn get(server: &Server, path: &str, token: &str) -> (u16, Value) {
    call(server, Method::GET, path, Some(token), None).await
}

async fn consent(server: &Server, token: &str, purpose: &str, granted: bool) -> (u16, Value) {
    let body = json!({ "purpose": purpose, "granted": granted });
    call(
        server,
        Method::POST,
        "/api/v1/me/consents",
        Some(token),
        Some(body),
    )
    .await
}

/// A one-file static bundle.
fn bundle() -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let page = b"<h1>privacy</h1>";
    let mut header = tar::Header::new_gnu();
    header.set_size(page.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "index.html", &page[..])
        .expect("append");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// As the user of `token`: a site `domain` with one release, and an API
/// key named `key_name`. Returns the release.
async fn site_release_and_key(server: &Server, token: &str, domain: &str, key_name: &str) -> Value {
    let site = json!({ "domain": domain });
    let (status, _) = call(
        server,
        Method::POST,
        "/api/v1/sites",
        Some(token),
        Some(site),
    )
    .await;
    assert_eq!(status, 201);
    let (status, release) = upload(server, token, domain, bundle()).await;
    assert_eq!(status, 201, "{release}");
    let key = json!({ "name": key_name, "permissions": ["sites:read"] });
    let (status, _) = call(
        server,
        Method::POST,
        "/api/v1/apikeys",
        Some(token),
        Some(key),
    )
    .await;
    assert_eq!(status, 201);
    release
}

/// The SHA-256 an export states, and the one of its `data` as sent.
fn export_sums(body: &[u8]) -> (String, String, Value) {
    let export: Value = serde_json::from_slice(body).expect("export is JSON");
    let stated = export["sha256"].as_str().expect("sha256").to_owned();
    let data = serde_json::to_vec(&export["data"]).expect("data");
    (stated, sha256_hex(&data), export)
}

/// True iff `needle` occurs in the database file or its write-ahead log,
/// compared case-insensitively over the raw bytes.
fn on_disk(server: &Server, needle: &str) -> Option<String> {
    let needle = needle.to_ascii_lowercase();
    for name in ["spinforge.db", "spinforge.db-wal"] {
        let path = server.data_dir.join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        if text.contains(&needle) {
            return Some(name.to_owned());
        }
    }
    None
}

#[tokio::test]
async fn a_consent_bound_route_answers_451_until_its_purpose_is_given() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (_, dev) = developer(&server, &admin, "consent.dev@example.org", "Connie Sent").await;

    let (status, refused) = get(&server, "/api/v1/me/activity", &dev).await;
    assert_eq!(status, 451, "{refused}");
    assert_eq!(refused["error"]["code"], "consent_required");
    assert_eq!(refused["error"]["field"], "purpose");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.contains("analytics"), "{message}");

    // Another purpose does not open it.
    assert_eq!(consent(&server, &dev, "marketing", true).await.0, 201);
    let (status, _) = get(&server, "/api/v1/me/activity", &dev).await;
    assert_eq!(status, 451);

    let (status, given) = consent(&server, &dev, "analytics", true).await;
    assert_eq!(status, 201, "{given}");
    assert_eq!(given["client_ip"], "127.0.0.0", "stored anonymised");
    assert_eq!(given["user_agent"], "privacy-test/2.0");
    let (status, activity) = get(&server, "/api/v1/me/activity", &dev).await;
    assert_eq!(status, 200, "{activity}");
    assert!(
        activity["by_type"]["auth.succeeded"].as_u64() >= Some(1),
        "{activity}"
    );

    // Withdrawn: refused again, and the history keeps all three acts.
    assert_eq!(consent(&server, &dev, "analytics", false).await.0, 201);
    let (status, _) = get(&server, "/api/v1/me/activity", &dev).await;
    assert_eq!(status, 451);
    let (status, consents) = get(&server, "/api/v1/me/consents", &dev).await;
    assert_eq!(status, 200);
    assert_eq!(consents["current"]["analytics"], false);
    assert_eq!(consents["current"]["marketing"], true);
    assert_eq!(consents["current"]["necessary"], true);
    let history: Vec<(String, bool)> = consents["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|c| {
            (
                c["purpose"].as_str().expect("purpose").to_owned(),
                c["granted"].as_bool().expect("granted"),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("marketing".to_owned(), true),
            ("analytics".to_owned(), true),
            ("analytics".to_owned(), false)
        ]
    );

    // Bad input names its field and records nothing.
    for (body, field) in [
        (json!({ "purpose": "tracking", "granted": true }), "purpose"),
        (
            json!({ "purpose": "necessary", "granted": false }),
            "granted",
        ),
    ] {
        let (status, error) = call(
            &server,
            Method::POST,
            "/api/v1/me/consents",
            Some(&dev),
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["field"], field);
    }
    let (_, after) = get(&server, "/api/v1/me/consents", &dev).await;
    assert_eq!(after["history"].as_array().map(Vec::len), Some(3));

    // The refusal is an audit event.
    let (status, page) = get(
        &server,
        "/api/v1/audit?type=privacy.consent_missing",
        &admin,
    )
    .await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 3, "{page}");
    assert_eq!(events[0]["metadata"]["purpose"], "analytics");
}

#[tokio::test]
async fn an_export_holds_the_users_data_and_its_checksum_matches() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (id, dev) = developer(&server, &admin, "export.dev@example.org", "Ex Porter").await;
    let release = site_release_and_key(&server, &dev, "export-site.example.com", "export-ci").await;
    assert_eq!(consent(&server, &dev, "functional", true).await.0, 201);

    let response = http()
        .get(format!("{}/api/v1/me/export", server.api_url()))
        .bearer_auth(&dev)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    let (stated, actual, export) = export_sums(&body);
    assert_eq!(stated, actual, "the checksum covers the data as sent");
    let data = &export["data"];
    assert_eq!(data["profile"]["id"], id);
    assert_eq!(data["profile"]["email"], "export.dev@example.org");
    assert_eq!(data["profile"]["name"], "Ex Porter");
    assert_eq!(data["sites"][0]["domain"], "export-site.example.com");
    assert_eq!(data["releases"][0]["id"], release["id"]);
    assert_eq!(data["consents"]["current"]["functional"], true);
    assert_eq!(data["api_keys"][0]["name"], "export-ci");
    assert!(data["api_keys"][0].get("key").is_none(), "no key material");
    assert!(!data["sessions"].as_array().expect("sessions").is_empty());
    let events = data["audit_events"].as_array().expect("events");
    let login = events
        .iter()
        .find(|e| e["type"] == "auth.succeeded")
        .expect("the login is in the export");
    assert_eq!(login["metadata"]["subject"], "export.dev@example.org");
    assert_eq!(login["user_agent"], "privacy-test/2.0");
    assert!(events.iter().all(|e| e["actor"]["user_id"] == id));

    // The admin's CLI export of the same user, by address, checked and
    // written to a file.
    let out = server.root.path().join("export.json");
    let cli = server.cli(
        &[
            "privacy",
            "export",
            "export.dev@example.org",
            "--out",
            out.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_ok(&cli);
    let (stated, actual, export) = export_sums(&std::fs::read(&out).expect("export file"));
    assert_eq!(stated, actual);
    assert_eq!(export["data"]["profile"]["id"], id);

    // Both exports are audited, naming whose data left.
    let (_, page) = get(&server, "/api/v1/audit?type=privacy.export", &admin).await;
    let exports = page["events"].as_array().expect("events");
    assert_eq!(exports.len(), 2, "{page}");
    assert!(exports.iter().all(|e| e["metadata"]["subject_user"] == id));
    assert_eq!(exports[0]["metadata"]["sha256"], stated.as_str());

    // A developer cannot export someone else.
    let (status, _) = get(&server, "/api/v1/users/1/export", &dev).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn erasure_leaves_no_address_or_name_on_disk_and_the_chain_verifies() {
    const EMAIL: &str = "zelda.erasable@example.org";
    const NAME: &str = "Zelda Erasable-Person";
    let server = Server::start();
    let admin = server.admin_token().await;
    let (id, dev) = developer(&server, &admin, EMAIL, NAME).await;
    // Personal data in many places: sessions, a failed login under the
    // address, consents, a site with a release, an API key.
    let wrong = json!({ "email": EMAIL, "password": "not the password" });
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(wrong),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(consent(&server, &dev, "analytics", true).await.0, 201);
    site_release_and_key(&server, &dev, "zelda-site.example.com", "zelda-ci").await;
    let (_, before) = get(
        &server,
        &format!("/api/v1/audit?user={id}&type=auth.succeeded"),
        &admin,
    )
    .await;
    assert_eq!(before["events"][0]["metadata"]["subject"], EMAIL);
    // The search below can see them: before the erasure it finds both.
    for needle in [EMAIL, NAME] {
        assert!(on_disk(&server, needle).is_some(), "`{needle}` is stored");
    }

    // Deleting sites needs the confirmation, and a refusal changes nothing.
    let (status, error) = call(
        &server,
        Method::POST,
        &format!("/api/v1/users/{id}/erase"),
        Some(&admin),
        Some(json!({ "with_sites": true })),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["field"], "confirm");
    let (status, _) = get(&server, "/api/v1/whoami", &dev).await;
    assert_eq!(status, 200, "the user is still there");

    let usage = server.cli(&["privacy", "erase", EMAIL, "--with-sites"], None);
    assert_eq!(usage.status.code(), Some(2), "--with-sites needs --confirm");
    let out = server.cli(
        &["privacy", "erase", EMAIL, "--with-sites", "--confirm"],
        None,
    );
    assert_ok(&out);
    let said = stdout(&out);
    assert!(said.contains("zelda-site.example.com"), "{said}");

    // Gone: the user, its tokens, its site.
    let (status, _) = get(&server, "/api/v1/whoami", &dev).await;
    assert_eq!(status, 401);
    let (status, _) = get(&server, "/api/v1/sites/zelda-site.example.com", &admin).await;
    assert_eq!(status, 404);
    assert_eq!(
        server.get("zelda-site.example.com", "/").await.status(),
        404
    );

    // Its audit events stay, pseudonymous.
    let (_, after) = get(
        &server,
        &format!("/api/v1/audit?user={id}&type=auth.succeeded"),
        &admin,
    )
    .await;
    let event = &after["events"][0];
    assert_eq!(event["metadata"]["subject"], "[erased]", "{event}");
    assert_eq!(event["user_agent"], "[erased]");
    let (_, erase) = get(&server, "/api/v1/audit?type=privacy.erase", &admin).await;
    assert_eq!(erase["events"][0]["metadata"]["subject_user"], id);

    // Nothing on disk names the user, while running and after a stop.
    for needle in [EMAIL, NAME] {
        assert_eq!(on_disk(&server, needle), None, "`{needle}` on disk");
    }
    let mut server = server;
    server.stop();
    for needle in [EMAIL, NAME] {
        assert_eq!(
            on_disk(&server, needle),
            None,
            "`{needle}` on disk after stop"
        );
    }
    let verify = server.cli(
        &[
            "audit",
            "verify",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert_ok(&verify);
}

#[tokio::test]
async fn a_masked_log_shows_no_full_address_ip_or_user_agent() {
    let server = Server::start_in_workspace(&["--log-pii", "masked"]);
    let login = json!({ "email": "leak.check@example.org", "password": "wrong password here" });
    let response = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .header("user-agent", "LeakyAgent/9.9")
        .json(&login)
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 401);
    assert!(
        server.log_shows("l***@example.org").await,
        "the failed login is logged, masked:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(!log.contains("leak.check@example.org"), "{log}");
    assert!(!log.contains("LeakyAgent"), "{log}");
    assert!(!log.contains("client_ip=127.0.0.1"), "{log}");
    assert!(
        log.contains("client_ip=127.0.0.0"),
        "the address is cut, not lost: {log}"
    );
}
