//! Bans through the real binary: `spinforge bans` and the API, a ban in
//! force from the next request, gone at its TTL (on the debug build's
//! test clock) and kept across a restart of `serve`; spoofed headers do
//! not escape a ban; brute force and error floods ban automatically.
//!
//! 127.0.0.2 is the trusted proxy; 127.0.0.1 is a plain client.

mod common;
mod shield_support;

use common::*;
use reqwest::Method;
use serde_json::json;
use shield_support::*;

const TRUSTED: &str = "[edge]\ntrusted_proxies = [\"127.0.0.2/32\"]\n";

async fn status(server: &Server, via: &str, xff: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
    let response = get(server, &client_from(via), "site.localhost", "/", &headers).await;
    response.status().as_u16()
}

#[tokio::test]
async fn a_ban_applies_at_once_ends_at_its_ttl_and_can_be_lifted() {
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}{TRUSTED}"));
    let token = server.admin_token().await;
    static_site(&server, "site.localhost");
    assert_eq!(status(&server, "127.0.0.1", None).await, 200);

    let out = server.cli(
        &[
            "bans",
            "add",
            "127.0.0.1",
            "--ttl-secs",
            "600",
            "--reason",
            "test",
        ],
        None,
    );
    assert_ok(&out);
    let banned = plain_get(&server, "site.localhost").await;
    assert_eq!(banned.status(), 403);
    assert_eq!(banned.headers()["x-content-type-options"], "nosniff");
    assert_eq!(banned.text().await.expect("text"), "403 Forbidden\n");
    wait_for_log(&server, "event=\"shield.ban\"").await;

    // A made-up X-Forwarded-For from the banned client changes nothing;
    // through the trusted proxy, the forwarded address is what counts.
    assert_eq!(
        status(&server, "127.0.0.1", Some("198.51.100.7")).await,
        403
    );
    assert_eq!(
        status(&server, "127.0.0.2", Some("198.51.100.7")).await,
        200
    );
    assert_eq!(status(&server, "127.0.0.2", Some("127.0.0.1")).await, 403);

    let out = server.cli(&["bans", "list", "--json"], None);
    assert_ok(&out);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(list["bans"][0]["ip"], "127.0.0.1");
    assert_eq!(list["bans"][0]["reason"], "test");
    let created = list["bans"][0]["created_at"].as_u64().expect("created_at");
    assert_eq!(list["bans"][0]["expires_at"].as_u64(), Some(created + 600));

    // Ten seconds of slack on the near side for a slow machine; the far
    // side is exact.
    advance_clock(&server, &token, 590).await;
    assert_eq!(status(&server, "127.0.0.1", None).await, 403);
    advance_clock(&server, &token, 10).await;
    assert_eq!(status(&server, "127.0.0.1", None).await, 200);

    // Lifting works at once, and lifting what is not banned is a 404.
    assert_ok(&server.cli(&["bans", "add", "2001:db8::5"], None));
    assert_eq!(
        status(&server, "127.0.0.2", Some("2001:db8::77")).await,
        403
    );
    assert_ok(&server.cli(&["bans", "rm", "2001:db8::/64"], None));
    assert_eq!(
        status(&server, "127.0.0.2", Some("2001:db8::77")).await,
        200
    );
    let out = server.cli(&["bans", "rm", "2001:db8::/64"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test]
async fn bans_survive_a_restart_of_serve() {
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}{TRUSTED}"));
    let token = server.admin_token().await;
    static_site(&server, "site.localhost");
    let (code, body) = api(
        &server,
        &token,
        Method::POST,
        "/bans",
        Some(json!({"ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["reason"], "manual");
    assert_eq!(status(&server, "127.0.0.1", None).await, 403);

    let server = server.restart();
    assert_eq!(status(&server, "127.0.0.1", None).await, 403);
    assert_eq!(
        status(&server, "127.0.0.2", Some("198.51.100.1")).await,
        200
    );
    // The CLI's stored login names the old API port; the token lives on.
    let (code, list) = api(&server, &token, Method::GET, "/bans", None).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["bans"][0]["ip"], "127.0.0.1");
}

#[tokio::test]
async fn bad_ban_requests_name_the_field_and_change_nothing() {
    let server = Server::start();
    let token = server.admin_token().await;
    for body in [
        json!({"ip": "not-an-ip"}),
        json!({"ip": "10.0.0.0/8"}),
        json!({"ip": "192.0.2.1", "ttl_secs": 0}),
        json!({"ip": "192.0.2.1", "reason": "a\nb"}),
        json!({"ip": "192.0.2.1", "extra": 1}),
    ] {
        let (code, answer) = api(&server, &token, Method::POST, "/bans", Some(body.clone())).await;
        assert_eq!(code, 400, "{body} -> {answer}");
        assert!(answer["error"]["message"].as_str().is_some(), "{answer}");
    }
    let (code, answer) = api(
        &server,
        &token,
        Method::POST,
        "/bans",
        Some(json!({"ip": "nope"})),
    )
    .await;
    assert_eq!((code, answer["error"]["field"].as_str()), (400, Some("ip")));
    let (_, list) = api(&server, &token, Method::GET, "/bans", None).await;
    assert_eq!(list["bans"], json!([]));

    // Without a token nothing is listed or changed.
    let response = http()
        .get(format!("{}/api/v1/bans", server.api_url()))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 401);
    let out = server.cli(&["bans", "add", "not-an-ip"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ip"));
}

#[tokio::test]
async fn the_sixth_failed_login_bans_the_client_within_one_request() {
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}{TRUSTED}"));
    let token = server.admin_token().await;
    let upstream = Upstream::start();
    proxy_site(&server, &token, "app.localhost", &upstream.url()).await;

    let attacker = client_from("127.0.0.2");
    let attempt = || async {
        get(
            &server,
            &attacker,
            "app.localhost",
            "/login",
            &[("x-forwarded-for", "203.0.113.50")],
        )
        .await
        .status()
        .as_u16()
    };
    for n in 1..=6 {
        assert_eq!(attempt().await, 401, "attempt {n} reaches the app");
    }
    assert_eq!(attempt().await, 403, "the seventh is stopped at the edge");
    let before = upstream.count().await;
    assert_eq!(attempt().await, 403);
    assert_eq!(
        upstream.count().await,
        before,
        "a banned client never reaches the app"
    );
    wait_for_log(&server, "reason=\"failed logins\"").await;

    // Someone else behind the same proxy is unaffected.
    let other = get(
        &server,
        &attacker,
        "app.localhost",
        "/",
        &[("x-forwarded-for", "203.0.113.51")],
    )
    .await;
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn an_error_flood_bans_when_configured_and_only_audits_by_default() {
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}{TRUSTED}[shield]\nerrors_per_minute = 5\nban_on_error_flood = true\n"
    ));
    server.create_admin_and_login();
    static_site(&server, "site.localhost");
    let client = client_from("127.0.0.1");
    for n in 1..=6 {
        let r = get(&server, &client, "site.localhost", "/missing", &[]).await;
        assert_eq!(r.status(), 404, "error {n}");
    }
    let r = get(&server, &client, "site.localhost", "/", &[]).await;
    assert_eq!(r.status(), 403);
    let out = server.cli(&["bans", "list", "--json"], None);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(list["bans"][0]["reason"], "error flood");

    let quiet = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[shield]\nerrors_per_minute = 5\n"
    ));
    quiet.create_admin_and_login();
    static_site(&quiet, "site.localhost");
    for _ in 0..8 {
        let r = get(&quiet, &client, "site.localhost", "/missing", &[]).await;
        assert_eq!(r.status(), 404);
    }
    assert_eq!(
        get(&quiet, &client, "site.localhost", "/", &[])
            .await
            .status(),
        200
    );
    wait_for_log(&quiet, "event=\"shield.abuse\"").await;
}
