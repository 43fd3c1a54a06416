//! Erasure reaches a person's data in other people's audit events: an
//! admin creates, renames and disables Bob, Bob logs in from his own
//! address (once wrongly), and after Bob's erasure neither the database
//! file nor its write-ahead log holds Bob's address, names, client IP or
//! user agent in clear, while the admin's own events and export still
//! read and `spinforge audit verify` passes.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::IpAddr;

const PASSWORD: &str = "a long enough password 42";
const BOB_EMAIL: &str = "bob.erasable-target@example.org";
const BOB_NAME: &str = "Bobby Firstname-Erasable";
const BOB_NEW_NAME: &str = "Robert Secondname-Erasable";
/// Bob's client: his own loopback address and browser.
const BOB_IP: &str = "127.0.0.77";
const BOB_AGENT: &str = "BobBrowser/7.7 (bobs-own-laptop)";
const ADMIN_AGENT: &str = "admin-console/1.0";

/// A client whose connections leave from `source`.
fn client_from(source: &str) -> reqwest::Client {
    let source: IpAddr = source.parse().expect("address");
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn call(
    client: &reqwest::Client,
    server: &Server,
    agent: &str,
    (method, path): (Method, &str),
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client
        .request(method, format!("{}{path}", server.api_url()))
        .header("user-agent", agent);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_json(request.send().await.expect("api call")).await
}

/// Where `needle` occurs in clear in the database or its write-ahead
/// log (raw bytes, case-insensitive), if anywhere.
fn on_disk(server: &Server, needle: &str) -> Option<String> {
    let needle = needle.to_ascii_lowercase();
    ["spinforge.db", "spinforge.db-wal"]
        .into_iter()
        .find(|name| {
            std::fs::read(server.data_dir.join(name))
                .map(|bytes| {
                    String::from_utf8_lossy(&bytes)
                        .to_ascii_lowercase()
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .map(str::to_owned)
}

/// The admin's export: its checksum matches, and the data comes back.
async fn export_admin(server: &Server, admin: &str) -> Value {
    let response = http()
        .get(format!("{}/api/v1/me/export", server.api_url()))
        .bearer_auth(admin)
        .header("user-agent", ADMIN_AGENT)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    let export: Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("export is JSON");
    let data = serde_json::to_vec(&export["data"]).expect("data");
    assert_eq!(export["sha256"].as_str(), Some(sha256_hex(&data).as_str()));
    export["data"].clone()
}

/// The admin's events of type `kind` about Bob, newest first.
fn about_bob(events: &Value, kind: &str, bob: i64) -> Vec<Value> {
    events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == kind && e["resource"] == format!("user:{bob}"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn erasing_bob_removes_him_from_the_admins_events_too() {
    // Full client addresses, so Bob's own address is what would leak.
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}\n[audit]\nclient_ip = \"full\"\n"
    ));
    let admin = server.admin_token().await;
    let admin_http = http();
    let bob_http = client_from(BOB_IP);

    // The admin creates Bob, renames him.
    let body = json!({
        "email": BOB_EMAIL, "password": PASSWORD, "role": "developer",
        "customer": "acme", "name": BOB_NAME,
    });
    let (status, created) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::POST, "/api/v1/users"),
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let bob = created["id"].as_i64().expect("id");
    let bob_path = format!("/api/v1/users/{bob}");
    let (status, renamed) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::PATCH, &bob_path),
        Some(&admin),
        Some(json!({ "name": BOB_NEW_NAME })),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");

    // Bob logs in from his own address: once wrongly, then rightly.
    let login = |password: &str| json!({ "email": BOB_EMAIL, "password": password });
    let (status, _) = call(
        &bob_http,
        &server,
        BOB_AGENT,
        (Method::POST, "/api/v1/auth/login"),
        None,
        Some(login("not the password")),
    )
    .await;
    assert_eq!(status, 401);
    let (status, pair) = call(
        &bob_http,
        &server,
        BOB_AGENT,
        (Method::POST, "/api/v1/auth/login"),
        None,
        Some(login(PASSWORD)),
    )
    .await;
    assert_eq!(status, 200, "{pair}");

    // Then the admin disables him.
    let (status, disabled) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::PATCH, &bob_path),
        Some(&admin),
        Some(json!({ "disabled": true })),
    )
    .await;
    assert_eq!(status, 200, "{disabled}");

    // Before the erasure the log holds all of it, readable with the keys.
    let (status, page) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::GET, "/api/v1/audit?type=user.&limit=100"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let created_events = about_bob(&page["events"], "user.created", bob);
    assert_eq!(created_events.len(), 1, "{page}");
    assert_eq!(created_events[0]["metadata"]["target_email"], BOB_EMAIL);
    assert_eq!(created_events[0]["metadata"]["target_name"], BOB_NAME);
    assert_eq!(created_events[0]["client_ip"], "127.0.0.1");
    let updates = about_bob(&page["events"], "user.updated", bob);
    assert_eq!(updates.len(), 2, "{page}");
    assert_eq!(updates[1]["metadata"]["target_name"], BOB_NEW_NAME);
    let (_, bobs_login) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (
            Method::GET,
            &format!("/api/v1/audit?user={bob}&type=auth.succeeded"),
        ),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(bobs_login["events"][0]["client_ip"], BOB_IP);
    assert_eq!(bobs_login["events"][0]["user_agent"], BOB_AGENT);
    let (_, failures) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::GET, "/api/v1/audit?type=auth.failed"),
        Some(&admin),
        None,
    )
    .await;
    let failure = failures["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["client_ip"] == BOB_IP)
        .cloned()
        .expect("Bob's failed login is recorded");
    assert_eq!(failure["metadata"]["subject"], BOB_EMAIL);
    // The admin's export is the admin's data: Bob's fields are withheld.
    let data = export_admin(&server, &admin).await;
    let exported = about_bob(&data["audit_events"], "user.created", bob);
    assert_eq!(exported[0]["metadata"]["target_email"], "[withheld]");
    assert_eq!(exported[0]["user_agent"], ADMIN_AGENT);
    // The search below sees what is in clear: Bob's profile row is.
    assert!(on_disk(&server, BOB_EMAIL).is_some(), "the search works");

    let (status, erased) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::POST, &format!("/api/v1/users/{bob}/erase")),
        Some(&admin),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{erased}");

    // Nothing of Bob's in clear: not his address, names, IP or browser.
    let needles = [BOB_EMAIL, BOB_NAME, BOB_NEW_NAME, BOB_IP, "BobBrowser"];
    for needle in needles {
        assert_eq!(on_disk(&server, needle), None, "`{needle}` on disk");
    }

    // The admin's own events still read; Bob's parts of them are gone.
    let (_, page) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::GET, "/api/v1/audit?type=user.&limit=100"),
        Some(&admin),
        None,
    )
    .await;
    let created_events = about_bob(&page["events"], "user.created", bob);
    let event = &created_events[0];
    assert_eq!(event["metadata"]["target_email"], "[erased]", "{event}");
    assert_eq!(event["metadata"]["target_name"], "[erased]");
    assert_eq!(event["client_ip"], "127.0.0.1", "the admin's own field");
    assert_eq!(event["user_agent"], ADMIN_AGENT);
    for update in about_bob(&page["events"], "user.updated", bob) {
        assert_eq!(update["metadata"]["target_name"], "[erased]", "{update}");
        assert_eq!(update["user_agent"], ADMIN_AGENT);
    }
    let (_, failures) = call(
        &admin_http,
        &server,
        ADMIN_AGENT,
        (Method::GET, "/api/v1/audit?type=auth.failed"),
        Some(&admin),
        None,
    )
    .await;
    assert!(
        failures["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["client_ip"] != BOB_IP && e["metadata"]["subject"] != BOB_EMAIL),
        "{failures}"
    );

    // The admin's export still works.
    let data = export_admin(&server, &admin).await;
    let exported = about_bob(&data["audit_events"], "user.created", bob);
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["client_ip"], "127.0.0.1");

    // Still nothing after a stop, and the chain verifies.
    let mut server = server;
    server.stop();
    for needle in needles {
        assert_eq!(on_disk(&server, needle), None, "`{needle}` after stop");
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
