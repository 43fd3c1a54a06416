//! The hub's rate limits through the real binary, at their defaults
//! (auth endpoints 5 *failures* per 15 minutes per address, refresh 300
//! per 15 minutes per address, the API 100 per minute per account of a
//! valid credential, else per address), with the debug build's test clock
//! instead of sleeping; the identity lockout per account and source
//! network with its account-wide ceiling and device proofs; and the
//! edge's limits keyed by a valid API key's account. Each boundary is
//! shown both ways, and the limit's 429 (`rate_limited`, with the IETF
//! headers) is told apart from the identity lockout's 429 (`locked`).
//!
//! Clients are bound to distinct 127.0.0.0/8 source addresses so each
//! test controls which bucket a request lands in.

mod common;
mod shield_support;

use common::*;
use serde_json::{json, Value};
use shield_support::*;

/// The real defaults (a `[shield]` section keeps the harness from
/// relaxing them), sustained abuse reported after 3 refusals a minute.
const DEFAULTS: &str = "[shield]\nabuse_refusals_per_minute = 3\n";

fn server(extra: &str) -> Server {
    Server::start_with(&format!("{LOOPBACK_UPSTREAMS}{DEFAULTS}{extra}"))
}

async fn login_from(
    server: &Server,
    source: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    client_from(source)
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login")
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// An admin token obtained from 127.0.0.1 (one auth request of that
/// address), after creating the admin on the host.
async fn admin(server: &Server) -> String {
    let out = server.cli(
        &[
            "admin",
            "create",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8 path"),
            "--email",
            ADMIN_EMAIL,
            "--password-stdin",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert_ok(&out);
    let response = login_from(server, "127.0.0.1", ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn auth_endpoints_allow_five_per_address_refuse_the_sixth_and_earn_one_back() {
    let server = server("");
    let token = admin(&server).await;
    freeze(&server, &token).await;

    // Five logins from one address, each naming another account, so
    // the lockout is not involved.
    for n in 1..=5 {
        let r = login_from(
            &server,
            "127.0.0.10",
            &format!("u{n}@example.com"),
            "wrong!",
        )
        .await;
        assert_eq!(code(r).await, (401, "unauthorized".into()), "attempt {n}");
    }
    let refused = login_from(&server, "127.0.0.10", "u6@example.com", "wrong!").await;
    // One request is earned back every 15 min / 5 = 180 s.
    assert_eq!(header(&refused, "retry-after"), "180");
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"default\";q=5;w=900"
    );
    assert_eq!(header(&refused, "ratelimit"), "\"default\";r=0;t=180");
    assert_eq!(code(refused).await, (429, "rate_limited".into()));

    // The refusal happens before the password check: even the right
    // password of a real account is not tried.
    let r = login_from(&server, "127.0.0.10", ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(code(r).await, (429, "rate_limited".into()));
    // Other endpoints of the auth class share the address's budget...
    let r = client_from("127.0.0.10")
        .post(format!("{}/api/v1/users/me/totp/confirm", server.api_url()))
        .bearer_auth(&token)
        .json(&json!({ "code": "000000" }))
        .send()
        .await
        .expect("totp confirm");
    assert_eq!(code(r).await, (429, "rate_limited".into()));
    // ...but refresh has its own limit: a bad token is a plain 401.
    let r = client_from("127.0.0.10")
        .post(format!("{}/api/v1/auth/refresh", server.api_url()))
        .json(&json!({ "refresh_token": "nope" }))
        .send()
        .await
        .expect("refresh");
    assert_eq!(code(r).await.0, 401);
    // Another address is untouched.
    let r = login_from(&server, "127.0.0.11", "u7@example.com", "wrong!").await;
    assert_eq!(code(r).await.0, 401);
    // Refused three times already; the fourth refusal within a minute
    // is sustained abuse, audited once.
    assert!(!server.log_shows("rate.abuse").await);
    let r = login_from(&server, "127.0.0.10", "u6@example.com", "wrong!").await;
    assert_eq!(code(r).await.0, 429);
    assert!(
        server.log_shows("rate.abuse").await,
        "sustained refusals are audited"
    );

    advance_clock(&server, &token, 179).await;
    let r = login_from(&server, "127.0.0.10", "u8@example.com", "wrong!").await;
    assert_eq!(code(r).await.0, 429, "one second early");
    advance_clock(&server, &token, 1).await;
    let r = login_from(&server, "127.0.0.10", ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 200, "one attempt earned back");
    // The success cost nothing: the earned attempt is still there, once.
    let r = login_from(&server, "127.0.0.10", "u9@example.com", "wrong!").await;
    assert_eq!(code(r).await.0, 401, "the success was given back");
    let r = login_from(&server, "127.0.0.10", "u10@example.com", "wrong!").await;
    assert_eq!(code(r).await.0, 429, "and only one");

    assert!(server.log_shows("ratelimit.refused").await);

    // The stored refusals name the bucket's kind, and its address only in
    // `client_ip`, truncated like every other address in the audit log.
    for kind in ["ratelimit.refused", "rate.abuse"] {
        let response = http()
            .get(format!("{}/api/v1/audit?type={kind}", server.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .expect("audit");
        let (status, page) = status_and_json(response).await;
        assert_eq!(status, 200, "{page}");
        let stored = page["events"].as_array().expect("events");
        assert!(!stored.is_empty(), "{kind}: {page}");
        for e in stored {
            assert_eq!(e["metadata"]["bucket"], "ip", "{e}");
            assert_eq!(e["client_ip"], "127.0.0.0", "{e}");
        }
        assert!(!page.to_string().contains("127.0.0.10"), "{page}");
    }
}

/// `name=value` of the response's Set-Cookie for `name`.
fn cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

async fn login_with_cookie(
    server: &Server,
    source: &str,
    email: &str,
    password: &str,
    cookie: &str,
) -> reqwest::Response {
    client_from(source)
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .header("cookie", cookie)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login")
}

fn create_user(server: &Server, email: &str, password: &str) {
    let out = server.cli(
        &[
            "admin",
            "create",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8 path"),
            "--email",
            email,
            "--password-stdin",
        ],
        Some(&format!("{password}\n")),
    );
    assert_ok(&out);
}

/// The attacker run's finding: five wrong logins naming the admin from
/// five addresses locked the admin out everywhere. Now failures lock the
/// account only from the network (/24) they came from; past an
/// account-wide ceiling of 20 failures only devices with a proof of an
/// earlier login get in, so guessing from many networks stays bounded.
#[tokio::test]
async fn a_stranger_naming_an_account_cannot_lock_its_owner_out() {
    let server = server("");
    let token = admin(&server).await;
    freeze(&server, &token).await;
    let target = "victim@example.com";
    let password = "the victim's own passphrase";
    create_user(&server, target, password);

    // Five guesses from five addresses of one /24: five password checks,
    // then that network is locked for this account (identity's 429).
    for n in 1..=5u8 {
        let r = login_from(&server, &format!("127.0.1.{n}"), target, "guess!!").await;
        assert_eq!(code(r).await, (401, "unauthorized".into()), "guess {n}");
    }
    let r = login_from(&server, "127.0.1.6", target, password).await;
    assert!(r.headers().get("ratelimit").is_none());
    let retry: u64 = header(&r, "retry-after").parse().expect("seconds");
    assert!((14 * 60..=15 * 60).contains(&retry), "{retry}");
    assert_eq!(code(r).await, (429, "locked".into()));
    // The case of the address does not make another account.
    let r = login_from(&server, "127.0.1.7", "Victim@Example.COM", password).await;
    assert_eq!(code(r).await, (429, "locked".into()));

    // The owner, from a brand-new address elsewhere: in, with a token
    // login and a browser login alike, and given a device proof.
    let r = login_from(&server, "127.0.9.1", target, password).await;
    assert_eq!(r.status(), 200);
    let device = cookie(&r, "sf_device").expect("device proof cookie");
    let r = client_from("127.0.9.2")
        .post(format!("{}/api/v1/auth/session", server.api_url()))
        .json(&json!({ "email": target, "password": password }))
        .send()
        .await
        .expect("browser login");
    assert_eq!(r.status(), 201);
    assert!(cookie(&r, "sf_device").is_some());
    assert!(cookie(&r, "sf_session").is_some(), "both cookies are set");

    // A distributed guesser: five failures each from three more /24s
    // reach the account-wide ceiling of 20 (each address stays within
    // its own budget of 5).
    for net in 10..=12u8 {
        for n in 1..=5 {
            let r = login_from(&server, &format!("127.0.{net}.1"), target, "guess!!").await;
            assert_eq!(code(r).await.0, 401, "network {net}, guess {n}");
        }
    }
    let locked = server
        .log()
        .lines()
        .filter(|l| l.contains("auth.locked") && l.contains("account") && l.contains(target))
        .count();
    assert_eq!(locked, 1, "the account-wide lock is audited once");

    // Now an unknown device is refused from any network, even with the
    // right password: no more guesses reach the password check...
    let r = login_from(&server, "127.0.20.1", target, password).await;
    assert_eq!(code(r).await, (429, "locked".into()));
    let r = login_from(&server, "127.0.21.1", target, "guess!!").await;
    assert_eq!(code(r).await, (429, "locked".into()));
    // ...and another account's proof, or a forged one, is no proof.
    let r = login_from(&server, "127.0.22.1", ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let admins_device = cookie(&r, "sf_device").expect("admin's proof");
    let r = login_with_cookie(&server, "127.0.22.2", target, password, &admins_device).await;
    assert_eq!(code(r).await, (429, "locked".into()));
    let forged = "sf_device=1.AAAA";
    let r = login_with_cookie(&server, "127.0.22.3", target, password, forged).await;
    assert_eq!(code(r).await, (429, "locked".into()));

    let proof_used = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("auth.device_proof_used"))
            .map(str::to_owned)
            .collect()
    };
    assert!(proof_used(&server.log()).is_empty(), "no proof passed yet");

    // The owner's device that logged in before still gets in, from yet
    // another network, and that a proof let it past the lock is audited
    // (once, naming the account and the address, never the proof).
    let r = login_with_cookie(&server, "127.0.23.1", target, password, &device).await;
    assert_eq!(r.status(), 200, "a known device passes the account guard");
    assert!(server.log_shows("auth.failed").await);
    assert!(server.log_shows("auth.device_proof_used").await);
    let lines = proof_used(&server.log());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(target) && lines[0].contains("127.0.23.1"),
        "{}",
        lines[0]
    );
    let proof = device.split_once('=').map_or(device.as_str(), |(_, v)| v);
    assert!(
        !lines[0].contains(proof),
        "the proof is logged: {}",
        lines[0]
    );
}

/// A team behind one NAT: right passwords and refreshes never spend the
/// address's failure budget, and the budget is still whole afterwards.
#[tokio::test]
async fn successful_logins_and_refreshes_do_not_spend_the_failure_budget() {
    let server = server("");
    let token = admin(&server).await;
    freeze(&server, &token).await;
    let mut refresh = String::new();
    for n in 1..=8 {
        let r = login_from(&server, "127.0.6.1", ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(r.status(), 200, "good login {n}");
        let body: Value = r.json().await.expect("json");
        refresh = body["refresh_token"].as_str().expect("refresh").to_owned();
    }
    for n in 1..=8 {
        let r = client_from("127.0.6.1")
            .post(format!("{}/api/v1/auth/refresh", server.api_url()))
            .json(&json!({ "refresh_token": refresh }))
            .send()
            .await
            .expect("refresh");
        assert_eq!(r.status(), 200, "refresh {n}");
        let body: Value = r.json().await.expect("json");
        refresh = body["refresh_token"].as_str().expect("refresh").to_owned();
    }
    for n in 1..=5 {
        let r = login_from(&server, "127.0.6.1", &format!("x{n}@example.com"), "wrong!").await;
        assert_eq!(code(r).await.0, 401, "failure {n} is within the budget");
    }
    let r = login_from(&server, "127.0.6.1", "x6@example.com", "wrong!").await;
    assert_eq!(code(r).await, (429, "rate_limited".into()));
}

/// Refresh has its own limit per address (300 per 15 minutes by
/// default; 3 here), counted whatever the outcome.
#[tokio::test]
async fn refresh_has_its_own_limit() {
    let server = server("hub_refresh_limit = 3\n");
    let token = admin(&server).await;
    freeze(&server, &token).await;
    for n in 1..=3 {
        let r = client_from("127.0.7.1")
            .post(format!("{}/api/v1/auth/refresh", server.api_url()))
            .json(&json!({ "refresh_token": "nope" }))
            .send()
            .await
            .expect("refresh");
        assert_eq!(code(r).await.0, 401, "refresh {n}");
    }
    let r = client_from("127.0.7.1")
        .post(format!("{}/api/v1/auth/refresh", server.api_url()))
        .json(&json!({ "refresh_token": "nope" }))
        .send()
        .await
        .expect("refresh");
    assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=3;w=900");
    assert_eq!(code(r).await, (429, "rate_limited".into()));
    // Logins from that address are not affected.
    let r = login_from(&server, "127.0.7.1", ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_api_allows_a_hundred_a_minute_per_account_and_invalid_keys_count_against_the_address()
{
    let server = server("");
    let token = admin(&server).await;
    freeze(&server, &token).await; // the account's call 1
    let api = |source: &str, bearer: &str, path: &str| {
        let request = client_from(source)
            .get(format!("{}{path}", server.api_url()))
            .bearer_auth(bearer.to_owned());
        async move { request.send().await.expect("api call") }
    };
    // Two keys of the admin's (calls 2 and 3) and a second admin (call 4),
    // whose own account stays untouched.
    let clock_key = create_key(&server, &token, "shield:manage").await;
    let key = create_key(&server, &token, "sites:read").await;
    let other = second_admin(&server, &token).await;
    // The rest of the hundred, split between the token and a key, from
    // many addresses: all of it lands in the account's one bucket.
    for n in 5..=100 {
        let source = format!("127.0.2.{}", n % 200 + 1);
        let r = if n % 2 == 0 {
            api(&source, &token, "/api/v1/whoami").await
        } else {
            api(&source, &key, "/api/v1/sites").await
        };
        assert_eq!(r.status(), 200, "call {n}");
    }
    // The 101st of the account, from yet another address: keyed by the
    // account.
    let refused = api("127.0.2.250", &token, "/api/v1/whoami").await;
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        "\"default\";q=100;w=60"
    );
    // One call is earned back every 60 s / 100 = 0.6 s, rounded up.
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(code(refused).await, (429, "rate_limited".into()));
    // Every key of the account is refused too: minting keys buys no more
    // requests.
    for bearer in [&key, &clock_key] {
        let r = api("127.0.2.251", bearer, "/api/v1/sites").await;
        assert_eq!(code(r).await, (429, "rate_limited".into()));
    }
    // Another account has its own hundred.
    let r = api("127.0.2.250", &other, "/api/v1/whoami").await;
    assert_eq!(r.status(), 200);

    // Made-up keys: 100 from one address get 401, each a new key; the
    // next is refused whatever key it shows, yet a valid credential from
    // the same address still passes.
    for n in 0..100 {
        let fake = format!("sf_{n:064x}");
        let r = api("127.0.3.1", &fake, "/api/v1/sites").await;
        assert_eq!(r.status(), 401, "fake key {n}");
    }
    let r = api("127.0.3.1", "sf_one_more_made_up_key", "/api/v1/sites").await;
    assert_eq!(code(r).await, (429, "rate_limited".into()));
    let r = api("127.0.3.1", "", "/api/v1/sites").await;
    assert_eq!(
        code(r).await.0,
        429,
        "no credential counts against the address too"
    );
    let r = api("127.0.3.1", &other, "/api/v1/sites").await;
    assert_eq!(
        r.status(),
        200,
        "a valid credential is not held by its address"
    );
    let r = api("127.0.3.1", "", "/healthz").await;
    assert_eq!(r.status(), 200, "health probes are never limited");

    // A minute later the account has its full hundred again, shared by
    // its token and keys, and no more.
    advance_clock(&server, &other, 60).await;
    for n in 1..=100 {
        let (bearer, path) = if n % 2 == 0 {
            (&token, "/api/v1/whoami")
        } else {
            (&key, "/api/v1/sites")
        };
        assert_eq!(
            api("127.0.2.1", bearer, path).await.status(),
            200,
            "call {n}"
        );
    }
    assert_eq!(
        api("127.0.2.1", &clock_key, "/api/v1/sites").await.status(),
        429
    );
}

/// Creates a second admin (one call of `token`'s account) and returns its
/// access token, obtained from 127.0.1.1.
async fn second_admin(server: &Server, token: &str) -> String {
    let (email, password) = ("second@example.com", "another long passphrase");
    let response = http()
        .post(format!("{}/api/v1/users", server.api_url()))
        .bearer_auth(token)
        .json(&json!({"email": email, "password": password, "role": "admin"}))
        .send()
        .await
        .expect("create user");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 201, "{body}");
    let response = login_from(server, "127.0.1.1", email, password).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

/// Creates an API key of the admin's with one permission.
async fn create_key(server: &Server, token: &str, permission: &str) -> String {
    let response = http()
        .post(format!("{}/api/v1/apikeys", server.api_url()))
        .bearer_auth(token)
        .json(&json!({"name": permission.replace(':', "-"), "permissions": [permission]}))
        .send()
        .await
        .expect("create key");
    let (status, created) = status_and_json(response).await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().expect("key").to_owned()
}

/// Stops the shield's real time (debug builds only), so fast limits meet
/// their boundaries exactly however slow this machine is.
async fn freeze(server: &Server, token: &str) {
    let response = http()
        .post(format!("{}/api/v1/shield/test-clock", server.api_url()))
        .bearer_auth(token)
        .json(&json!({ "advance_secs": 0, "freeze": true }))
        .send()
        .await
        .expect("test clock");
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn allowlisted_clients_skip_the_hub_limits() {
    let server = server("allowlist = [\"127.0.4.1/32\"]\n");
    admin(&server).await;
    for n in 1..=8 {
        let r = login_from(&server, "127.0.4.1", &format!("a{n}@example.com"), "wrong!").await;
        assert_eq!(code(r).await.0, 401, "attempt {n}");
    }
    for n in 1..=6 {
        let r = login_from(&server, "127.0.4.2", &format!("b{n}@example.com"), "wrong!").await;
        assert_eq!(
            code(r).await.0,
            if n <= 5 { 401 } else { 429 },
            "attempt {n}"
        );
    }
}

#[tokio::test]
async fn edge_limits_key_a_valid_api_key_and_fake_keys_gain_nothing() {
    let server = server("rate_per_minute = 3\n");
    let token = server.admin_token().await;
    static_site(&server, "site.localhost");
    let key = create_key(&server, &token, "sites:read").await;

    let client = client_from("127.0.5.1");
    let edge = |bearer: String| {
        let client = client.clone();
        let url = server.edge_url("/");
        async move {
            client
                .get(url)
                .header("host", "site.localhost")
                .bearer_auth(bearer)
                .send()
                .await
                .expect("edge request")
                .status()
                .as_u16()
        }
    };
    // Rotating made-up keys: one bucket, the address's.
    let mut statuses = Vec::new();
    for n in 0..4 {
        statuses.push(edge(format!("sf_fake_{n}")).await);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    // The valid key from the same, exhausted address has its own three.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(edge(key.clone()).await);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    // And the key is the key wherever it comes from.
    let elsewhere = client_from("127.0.5.2")
        .get(server.edge_url("/"))
        .header("host", "site.localhost")
        .bearer_auth(&key)
        .send()
        .await
        .expect("edge request");
    assert_eq!(elsewhere.status(), 429);
    // A second key of the same account shares that bucket: minting keys
    // buys nothing.
    let second = create_key(&server, &token, "sites:read").await;
    let other_key = client_from("127.0.5.3")
        .get(server.edge_url("/"))
        .header("host", "site.localhost")
        .bearer_auth(&second)
        .send()
        .await
        .expect("edge request");
    assert_eq!(other_key.status(), 429);
    let plain = client_from("127.0.5.2")
        .get(server.edge_url("/"))
        .header("host", "site.localhost")
        .send()
        .await
        .expect("edge request");
    assert_eq!(plain.status(), 200, "the address itself has its own bucket");
}
