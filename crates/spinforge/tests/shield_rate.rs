//! Rate limits through the real edge, with the debug build's test clock
//! instead of sleeping: the boundary both ways and the refusal headers,
//! spoofed and honoured forwarding headers, IPv6 /64 buckets, per-site
//! policies within the admin's ceiling, and emergency mode.
//!
//! 127.0.0.2 is the trusted proxy in these tests; 127.0.0.1 is a plain
//! client. Both are loopback addresses on this machine.

mod common;
mod shield_support;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use shield_support::*;

fn rate_server(rate: u32, extra: &str) -> Server {
    Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[edge]\ntrusted_proxies = [\"127.0.0.2/32\"]\n\
         [shield]\nrate_per_minute = {rate}\n{extra}"
    ))
}

/// Sends `n` requests as the client `via` (a source address, optionally
/// with an X-Forwarded-For) and returns their statuses.
async fn statuses(server: &Server, via: &str, xff: Option<&str>, n: usize) -> Vec<u16> {
    let client = client_from(via);
    let mut out = Vec::new();
    for _ in 0..n {
        let headers: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
        let response = get(server, &client, "site.localhost", "/", &headers).await;
        out.push(response.status().as_u16());
    }
    out
}

fn allowed(n: usize) -> Vec<u16> {
    vec![200; n]
}

#[tokio::test]
async fn the_edge_limit_allows_n_refuses_n_plus_one_and_earns_one_back() {
    let server = rate_server(5, "");
    let token = server.admin_token().await;
    static_site(&server, "site.localhost");

    assert_eq!(statuses(&server, "127.0.0.1", None, 5).await, allowed(5));
    let refused = plain_get(&server, "site.localhost").await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    // One request is earned back every 60 s / 5 = 12 s.
    assert_eq!(h["retry-after"], "12");
    assert_eq!(h["ratelimit-policy"], "\"default\";q=5;w=60");
    assert_eq!(h["ratelimit"], "\"default\";r=0;t=12");
    assert_eq!(h["x-content-type-options"], "nosniff");

    advance_clock(&server, &token, 11).await;
    assert_eq!(statuses(&server, "127.0.0.1", None, 1).await, vec![429]);
    advance_clock(&server, &token, 1).await;
    assert_eq!(
        statuses(&server, "127.0.0.1", None, 2).await,
        vec![200, 429]
    );
    advance_clock(&server, &token, 60).await;
    assert_eq!(
        statuses(&server, "127.0.0.1", None, 6).await,
        [allowed(5), vec![429]].concat()
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_clients_and_honoured_from_the_trusted_proxy() {
    let server = rate_server(3, "");
    server.create_admin_and_login();
    static_site(&server, "site.localhost");

    // A plain client rotating made-up addresses is still one client.
    let client = client_from("127.0.0.1");
    for (i, lie) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let r = get(
            &server,
            &client,
            "site.localhost",
            "/",
            &[("x-forwarded-for", lie)],
        )
        .await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    let r = get(
        &server,
        &client,
        "site.localhost",
        "/",
        &[("x-forwarded-for", "198.51.100.4")],
    )
    .await;
    assert_eq!(
        r.status(),
        429,
        "a spoofed X-Forwarded-For escaped the limit"
    );

    // The trusted proxy's forwarded clients each get their own bucket,
    // and the client's own prefix to the header changes nothing.
    let via_proxy = |xff: &'static str| statuses(&server, "127.0.0.2", Some(xff), 4);
    assert_eq!(
        via_proxy("203.0.113.1").await,
        [allowed(3), vec![429]].concat()
    );
    assert_eq!(
        via_proxy("6.6.6.6, 203.0.113.2").await,
        [allowed(3), vec![429]].concat()
    );
    assert_eq!(
        statuses(&server, "127.0.0.2", Some("7.7.7.7, 203.0.113.2"), 1).await,
        vec![429],
        "the forged left part must not make a new client"
    );
    wait_for_log(&server, "client_ip=203.0.113.2").await;
}

#[tokio::test]
async fn ipv6_clients_in_one_slash_64_share_a_bucket() {
    let server = rate_server(3, "");
    server.create_admin_and_login();
    static_site(&server, "site.localhost");

    for xff in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
    ] {
        assert_eq!(
            statuses(&server, "127.0.0.2", Some(xff), 1).await,
            vec![200]
        );
    }
    assert_eq!(
        statuses(&server, "127.0.0.2", Some("2001:db8:1:2::99"), 1).await,
        vec![429]
    );
    // The neighbouring /64 is someone else.
    assert_eq!(
        statuses(&server, "127.0.0.2", Some("2001:db8:1:3::1"), 1).await,
        vec![200]
    );
}

#[tokio::test]
async fn a_site_policy_is_held_to_the_ceiling_and_limits_only_its_site() {
    let server = rate_server(0, "site_rate_ceiling_per_minute = 100\n");
    let token = server.admin_token().await;
    static_site(&server, "site.localhost");
    static_site(&server, "other.localhost");

    let path = "/sites/site.localhost/shield";
    let (status, body) = api(
        &server,
        &token,
        Method::PUT,
        path,
        Some(json!({"rate_per_minute": 101})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "rate_per_minute");
    let (status, body) = api(
        &server,
        &token,
        Method::PUT,
        path,
        Some(json!({"rate_per_minute": 2})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(&server, &token, Method::GET, path, None).await;
    assert_eq!((status, body["rate_per_minute"].as_u64()), (200, Some(2)));

    assert_eq!(
        statuses(&server, "127.0.0.1", None, 3).await,
        vec![200, 200, 429]
    );
    let other = get(
        &server,
        &client_from("127.0.0.1"),
        "other.localhost",
        "/",
        &[],
    )
    .await;
    assert_eq!(other.status(), 200, "the other site has no limit");

    let (status, _) = api(&server, &token, Method::DELETE, path, None).await;
    assert_eq!(status, 204);
    assert_eq!(statuses(&server, "127.0.0.1", None, 3).await, allowed(3));

    let (status, body) = api(
        &server,
        &token,
        Method::PUT,
        "/sites/nope.localhost/shield",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn emergency_mode_tightens_every_limit_and_switching_off_restores_them() {
    let server = rate_server(50, "");
    server.create_admin_and_login();
    static_site(&server, "site.localhost");

    let out = server.cli(&["emergency", "on"], None);
    assert_ok(&out);
    assert!(stdout(&out).contains("ON"), "{}", stdout(&out));
    wait_for_log(&server, "shield.emergency").await;

    // 50 per minute times 0.1.
    let first = plain_get(&server, "site.localhost").await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        statuses(&server, "127.0.0.1", None, 5).await,
        [allowed(4), vec![429]].concat()
    );
    let r = plain_get(&server, "site.localhost").await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"default\";q=5;w=60");

    let out = server.cli(&["emergency", "status", "--json"], None);
    assert_ok(&out);
    let state: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(state["on"], true);

    let out = server.cli(&["emergency", "off"], None);
    assert_ok(&out);
    assert_eq!(
        statuses(&server, "127.0.0.1", None, 51).await,
        [allowed(50), vec![429]].concat()
    );
}

/// Creates a user as `admin` and logs it in from its own address.
async fn person(
    server: &Server,
    admin: &str,
    email: &str,
    role: &str,
    customer: &str,
    source: &str,
) -> String {
    let password = "a long enough passphrase";
    let (status, body) = api(
        server,
        admin,
        Method::POST,
        "/users",
        Some(json!({"email": email, "password": password, "role": role, "customer": customer})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let response = client_from(source)
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn the_sites_owner_sets_its_rate_within_the_admins_ceiling_and_no_one_else_may() {
    let server = rate_server(0, "site_rate_ceiling_per_minute = 50\n");
    let admin = server.admin_token().await;
    let owner = person(
        &server,
        &admin,
        "dev@acme.test",
        "developer",
        "acme",
        "127.0.6.1",
    )
    .await;
    let stranger = person(
        &server,
        &admin,
        "dev@globex.test",
        "developer",
        "globex",
        "127.0.6.2",
    )
    .await;
    let viewer = person(
        &server,
        &admin,
        "view@acme.test",
        "viewer",
        "acme",
        "127.0.6.3",
    )
    .await;
    let (status, body) = api(
        &server,
        &owner,
        Method::POST,
        "/sites",
        Some(
            json!({"domain": "acme.localhost", "type": "proxy", "upstream": "http://127.0.0.1:9"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let path = "/sites/acme.localhost/shield";

    // Above the ceiling: 400 naming the field and the ceiling; nothing set.
    let (status, body) = api(
        &server,
        &owner,
        Method::PUT,
        path,
        Some(json!({"rate_per_minute": 51})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "rate_per_minute");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("50"),
        "{body}"
    );
    let (_, body) = api(&server, &owner, Method::GET, path, None).await;
    assert_eq!(body["rate_per_minute"], Value::Null);

    // At the ceiling: the owner's to set.
    let (status, body) = api(
        &server,
        &owner,
        Method::PUT,
        path,
        Some(json!({"rate_per_minute": 50})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = api(&server, &owner, Method::GET, path, None).await;
    assert_eq!(body["rate_per_minute"], 50);

    // Another customer's developer and the customer's viewer may not.
    for (who, token) in [("stranger", &stranger), ("viewer", &viewer)] {
        let (status, body) = api(
            &server,
            token,
            Method::PUT,
            path,
            Some(json!({"rate_per_minute": 1})),
        )
        .await;
        assert_eq!(status, 403, "{who}: {body}");
    }
    let (_, body) = api(&server, &owner, Method::GET, path, None).await;
    assert_eq!(body["rate_per_minute"], 50, "unchanged");
    wait_for_log(&server, "shield.site_policy").await;
}
