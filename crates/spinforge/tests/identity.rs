//! Identity and access through the real binary: roles and ownership,
//! token attacks, refresh reuse, API keys, CSRF, lockout and user
//! enumeration. Every refusal is asserted with its status.

mod common;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const PASSWORD: &str = "a long enough passphrase";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One API call with an optional bearer token and JSON body.
async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http().request(method, format!("{}{path}", server.api_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_json(request.send().await.expect("api call")).await
}

async fn login(server: &Server, email: &str, password: &str) -> (u16, Value) {
    let body = json!({ "email": email, "password": password });
    call(server, Method::POST, "/api/v1/auth/login", None, Some(body)).await
}

/// Creates a user through the API as `admin` and logs it in.
async fn user(
    server: &Server,
    admin: &str,
    email: &str,
    role: &str,
    customer: &str,
) -> (i64, Value) {
    let body = json!({ "email": email, "password": PASSWORD, "role": role, "customer": customer });
    let (status, created) = call(
        server,
        Method::POST,
        "/api/v1/users",
        Some(admin),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, pair) = login(server, email, PASSWORD).await;
    assert_eq!(status, 200, "{pair}");
    (created["id"].as_i64().expect("id"), pair)
}

fn access(pair: &Value) -> &str {
    pair["access_token"].as_str().expect("access token")
}

async fn whoami(server: &Server, token: &str) -> u16 {
    call(server, Method::GET, "/api/v1/whoami", Some(token), None)
        .await
        .0
}

// ---- the bearer scheme -------------------------------------------------------

#[tokio::test]
async fn the_bearer_scheme_name_is_case_insensitive() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let url = format!("{}/api/v1/whoami", server.api_url());
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = http()
            .get(&url)
            .header("authorization", format!("{scheme} {admin}"))
            .send()
            .await
            .expect("whoami");
        assert_eq!(response.status().as_u16(), 200, "scheme {scheme}");
    }
    // Another scheme, or no separator, is not a bearer credential.
    for value in [format!("Basic {admin}"), format!("Bearer{admin}")] {
        let response = http()
            .get(&url)
            .header("authorization", value)
            .send()
            .await
            .expect("whoami");
        assert_eq!(response.status().as_u16(), 401);
    }
}

// ---- roles and ownership ---------------------------------------------------

#[tokio::test]
async fn a_developer_cannot_reach_another_customers_resources() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (_, a) = user(&server, &admin, "dev-a@acme.test", "developer", "acme").await;
    let (b_id, b) = user(&server, &admin, "dev-b@globex.test", "developer", "globex").await;
    let (a, b) = (access(&a).to_owned(), access(&b).to_owned());

    let site = json!({ "domain": "b.example.com" });
    let (status, _) = call(&server, Method::POST, "/api/v1/sites", Some(&b), Some(site)).await;
    assert_eq!(status, 201);
    let key_body = json!({ "name": "b-ci", "permissions": ["sites:read"] });
    let (status, b_key) = call(
        &server,
        Method::POST,
        "/api/v1/apikeys",
        Some(&b),
        Some(key_body),
    )
    .await;
    assert_eq!(status, 201);
    let b_key_id = b_key["id"].as_str().expect("id").to_owned();
    let (_, b_sessions) = call(&server, Method::GET, "/api/v1/sessions", Some(&b), None).await;
    let b_session = b_sessions[0]["id"].as_str().expect("session id").to_owned();

    // (method, path, body, expected status): ids in paths, queries, bodies.
    let s = "/api/v1/sites/b.example.com";
    let cases: Vec<(Method, String, Option<Value>, u16)> = vec![
        (Method::GET, s.into(), None, 403),
        (Method::PATCH, s.into(), Some(json!({ "spa": true })), 403),
        (Method::DELETE, s.into(), None, 403),
        (Method::GET, format!("{s}/releases"), None, 403),
        (Method::POST, format!("{s}/rollback"), None, 403),
        (Method::GET, format!("{s}/status"), None, 403),
        (Method::GET, format!("{s}/logs?lines=5&since=1h"), None, 403),
        (Method::POST, format!("{s}/restart"), None, 403),
        (
            Method::DELETE,
            format!("/api/v1/apikeys/{b_key_id}"),
            None,
            403,
        ),
        (Method::GET, format!("/api/v1/users/{b_id}"), None, 403),
        (
            Method::PATCH,
            format!("/api/v1/users/{b_id}"),
            Some(json!({ "disabled": true })),
            403,
        ),
        (Method::DELETE, format!("/api/v1/users/{b_id}"), None, 403),
        (
            Method::DELETE,
            format!("/api/v1/users/{b_id}/sessions"),
            None,
            403,
        ),
        (
            Method::DELETE,
            format!("/api/v1/sessions/{b_session}"),
            None,
            404,
        ),
        (
            Method::POST,
            "/api/v1/apikeys".into(),
            Some(json!({ "name": "x", "permissions": ["sites:read"], "sites": ["b.example.com"] })),
            403,
        ),
        (
            Method::POST,
            "/api/v1/sites".into(),
            Some(json!({ "domain": "new.example.com", "customer": "globex" })),
            403,
        ),
    ];
    for (method, path, body, expected) in cases {
        let label = format!("{method} {path}");
        let (status, answer) = call(&server, method, &path, Some(&a), body).await;
        assert_eq!(status, expected, "{label}: {answer}");
    }
    let upload = http()
        .post(format!("{}{s}/releases", server.api_url()))
        .bearer_auth(&a)
        .body(vec![0u8; 64])
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), 403, "upload to another customer's site");

    // Lists show only one's own.
    let (_, sites) = call(&server, Method::GET, "/api/v1/sites", Some(&a), None).await;
    assert_eq!(sites, json!([]));
    let (_, keys) = call(&server, Method::GET, "/api/v1/apikeys", Some(&a), None).await;
    assert_eq!(keys, json!([]));

    // Nothing of B's changed: the site, the key and the session all work.
    let (status, site) = call(&server, Method::GET, s, Some(&b), None).await;
    assert_eq!((status, site["spa"].clone()), (200, json!(false)));
    let b_api_key = b_key["key"].as_str().expect("key");
    assert_eq!(whoami(&server, b_api_key).await, 200);
    assert_eq!(whoami(&server, &b).await, 200);
    // Each refusal is an audit event.
    assert!(server.log_shows("permission.denied").await);
}

#[tokio::test]
async fn no_one_can_raise_their_own_rights() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (dev_id, dev) = user(&server, &admin, "dev@acme.test", "developer", "acme").await;
    let (_, viewer) = user(&server, &admin, "view@acme.test", "viewer", "acme").await;
    let (dev, viewer) = (access(&dev).to_owned(), access(&viewer).to_owned());
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/sites",
        Some(&dev),
        Some(json!({ "domain": "a.example.com" })),
    )
    .await;
    assert_eq!(status, 201);

    let me = "/api/v1/users/me";
    for body in [json!({ "role": "admin" }), json!({ "customer": "globex" })] {
        let (status, answer) = call(&server, Method::PATCH, me, Some(&dev), Some(body)).await;
        assert_eq!(status, 403, "{answer}");
    }
    let own = format!("/api/v1/users/{dev_id}");
    let (status, _) = call(
        &server,
        Method::PATCH,
        &own,
        Some(&dev),
        Some(json!({ "role": "admin" })),
    )
    .await;
    assert_eq!(status, 403);
    let wide = json!({ "name": "x", "permissions": ["sites:read", "users:manage"] });
    let (status, answer) = call(
        &server,
        Method::POST,
        "/api/v1/apikeys",
        Some(&dev),
        Some(wide),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .expect("message")
        .contains("users:manage"));

    // A viewer reads its customer's site but writes nothing at all.
    let s = "/api/v1/sites/a.example.com";
    assert_eq!(
        call(&server, Method::GET, s, Some(&viewer), None).await.0,
        200
    );
    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/v1/sites".into(),
            Some(json!({ "domain": "v.example.com" })),
        ),
        (Method::PATCH, s.into(), Some(json!({ "spa": true }))),
        (Method::DELETE, s.into(), None),
        (Method::POST, format!("{s}/rollback"), None),
        (Method::POST, format!("{s}/restart"), None),
        (Method::GET, format!("{s}/logs"), None),
        (
            Method::POST,
            "/api/v1/apikeys".into(),
            Some(json!({ "name": "v", "permissions": ["sites:read"] })),
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({ "email": "x@y.io", "password": PASSWORD, "role": "admin" })),
        ),
        (Method::POST, "/api/v1/keys/signing/rotate".into(), None),
    ];
    for (method, path, body) in writes {
        let label = format!("{method} {path}");
        let (status, answer) = call(&server, method, &path, Some(&viewer), body).await;
        assert_eq!(status, 403, "{label}: {answer}");
    }
    let (_, site) = call(&server, Method::GET, s, Some(&dev), None).await;
    assert_eq!(
        site["spa"], false,
        "nothing the viewer tried changed the site"
    );
}

// ---- tokens ----------------------------------------------------------------

/// The active signing key, read from the store and opened with the
/// master key as an attacker who stole both would; used to forge tokens
/// that differ from a real one in exactly one claim.
async fn signing_key(server: &Server) -> (String, Vec<u8>, Vec<u8>) {
    let store = store::SqliteStore::open(&server.data_dir)
        .await
        .expect("store");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let keys = store::IdentityStore::signing_keys(&store, now)
        .await
        .expect("keys");
    store.close().await;
    let key = keys.into_iter().find(|k| k.active).expect("active key");
    let secrets = secrets::Secrets::open(&server.data_dir, &secrets::SecretsConfig::default())
        .await
        .expect("secrets");
    let id = secrets::KeyId::new(secrets::KeyKind::SigningKey, &key.kid);
    let private = secrets
        .open_key(&id, &key.private_key)
        .await
        .expect("open the signing key");
    secrets.close().await;
    (key.kid, private.to_vec(), key.public_key)
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&B64.decode(payload).expect("base64")).expect("json")
}

fn sign(kid: &str, private_key: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(private_key)).expect("sign")
}

#[tokio::test]
async fn forged_and_misused_tokens_are_refused() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (dev_id, dev) = user(&server, &admin, "dev@acme.test", "developer", "acme").await;
    let real = access(&dev).to_owned();
    let (kid, private_key, public_key) = signing_key(&server).await;
    let claims = claims_of(&real);
    let now = claims["iat"].as_i64().expect("iat");

    // The forging harness is right: an honest re-signing is accepted.
    assert_eq!(
        whoami(&server, &sign(&kid, &private_key, &claims)).await,
        200
    );

    let with = |field: &str, value: Value| {
        let mut c = claims.clone();
        c[field] = value;
        sign(&kid, &private_key, &c)
    };
    let header = |h: Value| B64.encode(h.to_string());
    let payload = B64.encode(claims.to_string());
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.typ = Some("at+jwt".into());
    hs256.kid = Some(kid.clone());
    let other_key =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .expect("key");
    let parts: Vec<&str> = real.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!("1");

    let attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{payload}.",
                header(json!({ "alg": "none", "typ": "at+jwt", "kid": kid }))
            ),
        ),
        (
            "HS256 keyed with the public key",
            jsonwebtoken::encode(
                &hs256,
                &claims,
                &EncodingKey::from_secret(&public_key).expect("hmac key"),
            )
            .expect("hs256"),
        ),
        (
            "unknown kid",
            sign("k-not-ours", other_key.as_ref(), &claims),
        ),
        (
            "a known kid with another key's signature",
            sign(&kid, other_key.as_ref(), &claims),
        ),
        (
            "forged payload (sub = the admin) under the real signature",
            format!(
                "{}.{}.{}",
                parts[0],
                B64.encode(forged_claims.to_string()),
                parts[2]
            ),
        ),
        ("expired", with("exp", json!(now - 10))),
        ("nbf in the future", with("nbf", json!(now + 600))),
        ("string nbf", with("nbf", json!(now.to_string()))),
        ("iat in the future", with("iat", json!(now + 600))),
        ("wrong aud", with("aud", json!("someone-else"))),
        ("wrong iss", with("iss", json!("https://evil.example"))),
        ("unknown session", with("sid", json!("not-a-session"))),
        (
            "refresh token used as access token",
            dev["refresh_token"].as_str().expect("r").into(),
        ),
        ("garbage", "x".repeat(5000)),
    ];
    for (name, token) in attacks {
        assert_eq!(whoami(&server, &token).await, 401, "{name}");
    }

    // An access token is no refresh token.
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": real })),
    )
    .await;
    assert_eq!(status, 401);

    // Disabling and deleting end access at once.
    assert_eq!(whoami(&server, &real).await, 200);
    let path = format!("/api/v1/users/{dev_id}");
    let (status, _) = call(
        &server,
        Method::PATCH,
        &path,
        Some(&admin),
        Some(json!({ "disabled": true })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(whoami(&server, &real).await, 401, "disabled user");
    assert_eq!(login(&server, "dev@acme.test", PASSWORD).await.0, 401);
    let (status, _) = call(
        &server,
        Method::PATCH,
        &path,
        Some(&admin),
        Some(json!({ "disabled": false })),
    )
    .await;
    assert_eq!(status, 200);
    let (_, again) = login(&server, "dev@acme.test", PASSWORD).await;
    let again = access(&again).to_owned();
    assert_eq!(whoami(&server, &again).await, 200);
    assert_eq!(
        call(&server, Method::DELETE, &path, Some(&admin), None)
            .await
            .0,
        204
    );
    assert_eq!(whoami(&server, &again).await, 401, "deleted user");
    assert!(server.log_shows("auth.token_rejected").await);
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_session_serially_and_in_a_race() {
    let server = Server::start();
    let admin = server.admin_token().await;
    user(&server, &admin, "dev@acme.test", "developer", "acme").await;
    let refresh = |token: String| {
        let server = &server;
        async move {
            call(
                server,
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": token })),
            )
            .await
        }
    };
    let token_of = |pair: &Value| pair["refresh_token"].as_str().expect("r").to_owned();

    // Serial: the second use of a spent token ends the session.
    let (_, first) = login(&server, "dev@acme.test", PASSWORD).await;
    let (status, second) = refresh(token_of(&first)).await;
    assert_eq!(status, 200);
    assert_eq!(whoami(&server, access(&second)).await, 200);
    assert_eq!(refresh(token_of(&first)).await.0, 401);
    assert_eq!(whoami(&server, access(&second)).await, 401);
    assert_eq!(refresh(token_of(&second)).await.0, 401);

    // Parallel: one winner, and the race itself counts as reuse.
    for _ in 0..3 {
        let (_, pair) = login(&server, "dev@acme.test", PASSWORD).await;
        let token = token_of(&pair);
        let (x, y) = tokio::join!(refresh(token.clone()), refresh(token));
        let mut statuses = [x.0, y.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401]);
        let winner = if x.0 == 200 { x.1 } else { y.1 };
        assert_eq!(whoami(&server, access(&winner)).await, 401);
    }
    assert!(server.log_shows("auth.refresh_reuse").await);
}

// ---- API keys, sessions, signing keys ----------------------------------------

#[tokio::test]
async fn api_keys_sessions_and_key_rotation_work_from_the_cli() {
    let server = Server::start();
    server.create_admin_and_login();
    let out = server.cli(
        &[
            "users",
            "create",
            "--email",
            "dev@acme.test",
            "--role",
            "developer",
            "--customer",
            "acme",
            "--password-stdin",
        ],
        Some(PASSWORD),
    );
    assert_ok(&out);
    let out = server.cli(&["whoami", "--json"], None);
    assert_ok(&out);
    let me: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(me["user"]["role"], "admin");

    let out = server.cli(
        &[
            "apikeys",
            "create",
            "--name",
            "ci",
            "--permission",
            "sites:read",
            "--permission",
            "sites:create",
            "--json",
        ],
        None,
    );
    assert_ok(&out);
    let key: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let secret = key["key"].as_str().expect("key").to_owned();
    assert!(secret.starts_with("sf_"));
    let out = server.cli(&["apikeys", "list", "--json"], None);
    let listed = stdout(&out);
    assert!(listed.contains(key["id"].as_str().expect("id")));
    assert!(
        !listed.contains(&secret),
        "a key is shown once, never listed"
    );

    // The key works through SPINFORGE_TOKEN, within its scope only.
    let with_key = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("SPINFORGE_API", server.api_url())
            .env("SPINFORGE_TOKEN", &secret)
            .env("HOME", server.root.path())
            .env("XDG_CONFIG_HOME", server.root.path().join("cfg-none"))
            .output()
            .expect("run")
    };
    assert_ok(&with_key(&["sites", "list"]));
    let out = with_key(&["users", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));

    assert_ok(&server.cli(
        &["apikeys", "revoke", key["id"].as_str().expect("id")],
        None,
    ));
    assert_eq!(whoami(&server, &secret).await, 401);

    // Rotating the signing key keeps tokens signed by the old one valid.
    let (_, pair) = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let token = access(&pair).to_owned();
    let out = server.cli(&["keys", "rotate-signing"], None);
    assert_ok(&out);
    assert_eq!(whoami(&server, &token).await, 200);
    let (_, jwks) = call(
        &server,
        Method::GET,
        "/api/v1/.well-known/jwks.json",
        None,
        None,
    )
    .await;
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .all(|k| k["alg"] == "EdDSA" && k["kty"] == "OKP"));

    // Sessions: listed, one revoked by its owner, all revoked by an admin.
    let out = server.cli(&["sessions", "list", "--json"], None);
    assert_ok(&out);
    let sessions: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(sessions.as_array().expect("list").len() >= 2);
    let (_, dev) = login(&server, "dev@acme.test", PASSWORD).await;
    let dev_token = access(&dev).to_owned();
    let (_, dev_sessions) = call(
        &server,
        Method::GET,
        "/api/v1/sessions",
        Some(&dev_token),
        None,
    )
    .await;
    assert_eq!(dev_sessions[0]["current"], true);
    let dev_id = claims_of(&dev_token)["sub"]
        .as_str()
        .expect("sub")
        .to_owned();
    assert_ok(&server.cli(&["users", "revoke-sessions", &dev_id], None));
    assert_eq!(whoami(&server, &dev_token).await, 401);
}

// ---- browser sessions and CSRF ---------------------------------------------------

#[tokio::test]
async fn cookie_changes_need_the_csrf_token_and_our_origin() {
    let server = Server::start();
    server.admin_token().await;
    let jar_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let api = server.api_url();
    let response = jar_client
        .post(format!("{api}/api/v1/auth/session"))
        .json(&json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 201);
    let cookie_header = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie_header.contains(attribute), "{cookie_header}");
    }
    let cookie = cookie_header.split(';').next().expect("pair").to_owned();
    let body: Value = response.json().await.expect("json");
    let csrf = body["csrf_token"].as_str().expect("csrf").to_owned();
    let origin = format!("http://{}", server.api);

    let post = |origin: Option<&str>, token: Option<&str>| {
        let mut request = jar_client
            .post(format!("{api}/api/v1/sites"))
            .header("cookie", &cookie)
            .json(&json!({ "domain": "c.example.com" }));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.send()
    };
    let refused = [
        ("no token", post(Some(&origin), None).await),
        ("wrong token", post(Some(&origin), Some("00ff")).await),
        (
            "foreign origin",
            post(Some("https://evil.example"), Some(&csrf)).await,
        ),
        ("no origin", post(None, Some(&csrf)).await),
    ];
    for (case, response) in refused {
        let (status, body) = status_and_json(response.expect("send")).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (403, json!("csrf_failed")),
            "{case}"
        );
    }
    // Reads need no token; the token endpoint gives the same one back.
    let (status, token) = status_and_json(
        jar_client
            .get(format!("{api}/api/v1/csrf-token"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("csrf"),
    )
    .await;
    assert_eq!(
        (status, token["csrf_token"].as_str()),
        (200, Some(csrf.as_str()))
    );
    let ok = post(Some(&origin), Some(&csrf)).await.expect("send");
    assert_eq!(ok.status(), 201);
    assert!(server.log_shows("csrf.refused").await);
}

// ---- brute force and enumeration -------------------------------------------------

#[tokio::test]
async fn five_failures_lock_an_account_for_known_and_unknown_emails() {
    let server = Server::start();
    server.admin_token().await;
    for email in [ADMIN_EMAIL, "nobody@example.com"] {
        for attempt in 1..=5 {
            let (status, body) = login(&server, email, "wrong password here").await;
            assert_eq!(status, 401, "{email} attempt {attempt}: {body}");
        }
        let response = http()
            .post(format!("{}/api/v1/auth/login", server.api_url()))
            .json(&json!({ "email": email, "password": ADMIN_PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), 429, "{email}");
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("header")
            .parse()
            .expect("seconds");
        assert!((14 * 60..=15 * 60).contains(&retry), "{retry}");
    }
    for event in ["auth.failed", "auth.locked", "client_ip=127.0.0.1"] {
        assert!(server.log_shows(event).await, "{event} missing");
    }
    // The lock is durable: a restart does not lift it.
    let server = server.restart();
    assert_eq!(login(&server, ADMIN_EMAIL, ADMIN_PASSWORD).await.0, 429);
}

#[tokio::test]
async fn login_answers_the_same_in_body_and_time_for_unknown_emails() {
    let server = Server::start();
    let admin = server.admin_token().await;
    const N: usize = 8;
    for i in 0..N {
        let body = json!({
            "email": format!("known{i}@acme.test"), "password": PASSWORD,
            "role": "viewer", "customer": "acme",
        });
        assert_eq!(
            call(
                &server,
                Method::POST,
                "/api/v1/users",
                Some(&admin),
                Some(body)
            )
            .await
            .0,
            201
        );
    }
    // Each attempt from its own loopback address and against its own
    // account, so no throttle delay skews one side.
    let attempt = |email: String, source: u8| {
        let url = format!("{}/api/v1/auth/login", server.api_url());
        async move {
            let client = reqwest::Client::builder()
                .local_address(IpAddr::from([127, 0, 0, source]))
                .build()
                .expect("client");
            let started = Instant::now();
            let response = client
                .post(url)
                .json(&json!({ "email": email, "password": "not the password!" }))
                .send()
                .await
                .expect("login");
            let elapsed = started.elapsed();
            let (status, body) = status_and_json(response).await;
            (status, body, elapsed)
        }
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..N {
        let (s1, b1, t1) = attempt(format!("known{i}@acme.test"), 20 + i as u8).await;
        let (s2, b2, t2) = attempt(format!("ghost{i}@acme.test"), 60 + i as u8).await;
        assert_eq!((s1, &b1), (s2, &b2), "same status and body");
        assert_eq!(s1, 401);
        known.push(t1);
        unknown.push(t2);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[N / 2], unknown[N / 2]);
    let gap = k.abs_diff(u);
    println!("login median: known email {k:?}, unknown email {u:?}, gap {gap:?}");
    // Generous: Argon2id dominates both; a missing decoy would show a gap
    // of the whole hash time.
    assert!(
        gap < Duration::from_millis(40).max(k.min(u) / 2),
        "known {k:?} vs unknown {u:?}"
    );
}

#[tokio::test]
async fn a_burst_of_parallel_guesses_gets_no_more_checks_than_the_limit() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (id, _) = user(&server, &admin, "target@acme.test", "viewer", "acme").await;
    // 29 wrong guesses and the right one, all at once.
    let mut attempts = Vec::new();
    for i in 0..30 {
        let password = if i == 17 {
            PASSWORD.to_owned()
        } else {
            format!("wrong guess {i:02}!!")
        };
        let server = &server;
        attempts.push(async move { login(server, "target@acme.test", &password).await.0 });
    }
    let statuses = futures_util::future::join_all(attempts).await;
    let checked = statuses.iter().filter(|s| **s != 429).count();
    assert!(
        checked <= 5,
        "{checked} attempts were checked: {statuses:?}"
    );
    // Locked now, whatever the burst held; an admin can lift it.
    assert_eq!(login(&server, "target@acme.test", PASSWORD).await.0, 429);
    let path = format!("/api/v1/users/{id}/lock");
    assert_eq!(
        call(&server, Method::DELETE, &path, Some(&admin), None)
            .await
            .0,
        204
    );
    assert_eq!(login(&server, "target@acme.test", PASSWORD).await.0, 200);
}

#[tokio::test]
async fn api_keys_stay_inside_their_lane() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (_, dev) = user(&server, &admin, "dev@acme.test", "developer", "acme").await;
    let dev = access(&dev).to_owned();
    let body = json!({ "domain": "a.example.com" });
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/api/v1/sites",
            Some(&dev),
            Some(body)
        )
        .await
        .0,
        201
    );
    let create = |body: Value| {
        let server = &server;
        let dev = dev.clone();
        async move {
            call(
                server,
                Method::POST,
                "/api/v1/apikeys",
                Some(&dev),
                Some(body),
            )
            .await
        }
    };
    let (status, key) = create(json!({
        "name": "ci", "permissions": ["sites:read", "apikeys:manage"], "expires_in_days": 1,
    }))
    .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().expect("key").to_owned();

    // A key mints no keys, and touches no session or profile route.
    let child = json!({ "name": "child", "permissions": ["sites:read"], "expires_in_days": 365 });
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/apikeys",
        Some(&key),
        Some(child),
    )
    .await;
    assert_eq!(status, 403);
    for (method, path, body) in [
        (Method::GET, "/api/v1/sessions", None),
        (
            Method::PATCH,
            "/api/v1/users/me",
            Some(json!({ "name": "renamed" })),
        ),
        (Method::POST, "/api/v1/auth/logout", None),
    ] {
        let label = format!("{method} {path}");
        assert_eq!(
            call(&server, method, path, Some(&key), body).await.0,
            403,
            "{label}"
        );
    }
    assert_eq!(whoami(&server, &key).await, 200);

    // Site-limited keys hold only per-site permissions, under the site's
    // normalised name.
    let (status, _) = create(json!({
        "name": "x", "permissions": ["sites:read", "apikeys:manage"], "sites": ["a.example.com"],
    }))
    .await;
    assert_eq!(status, 400);
    let (status, limited) =
        create(json!({ "name": "y", "permissions": ["sites:read"], "sites": ["A.Example.com"] }))
            .await;
    assert_eq!(status, 201);
    assert_eq!(limited["sites"], json!(["a.example.com"]));
    let limited = limited["key"].as_str().expect("key");
    let (status, _) = call(
        &server,
        Method::GET,
        "/api/v1/sites/a.example.com",
        Some(limited),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_last_enabled_admin_cannot_be_removed_even_by_two_admins_at_once() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (second_id, second) = user(&server, &admin, "second@ops.test", "admin", "ops").await;
    let second = access(&second).to_owned();
    let first_id = claims_of(&admin)["sub"]
        .as_str()
        .expect("sub")
        .parse::<i64>()
        .expect("id");
    let (second_path, first_path) = (
        format!("/api/v1/users/{second_id}"),
        format!("/api/v1/users/{first_id}"),
    );
    let demote_second = call(
        &server,
        Method::PATCH,
        &second_path,
        Some(&admin),
        Some(json!({ "role": "developer" })),
    );
    let disable_first = call(
        &server,
        Method::PATCH,
        &first_path,
        Some(&second),
        Some(json!({ "disabled": true })),
    );
    let (a, b) = tokio::join!(demote_second, disable_first);
    // Both pass the checks of who may ask and one meets the guard (409);
    // or one lands first and the other's sender is no longer allowed to
    // ask: the first admin disabled (401), `second` no longer an admin
    // (403).
    let outcome = [a.0, b.0];
    assert!(
        matches!(outcome, [200, 409] | [409, 200] | [401, 200] | [200, 403]),
        "{a:?} {b:?}"
    );
    // Either way an enabled admin is left: `second`, unless it was demoted.
    let (status, me) = call(&server, Method::GET, &second_path, Some(&second), None).await;
    let (status_first, first) = call(&server, Method::GET, &first_path, Some(&admin), None).await;
    let second_admin = status == 200 && me["role"] == "admin" && me["disabled"] == false;
    let first_admin = status_first == 200 && first["role"] == "admin" && first["disabled"] == false;
    assert!(second_admin ^ first_admin, "{me:?} {first:?}");
}

/// The current code for a base32 secret, as an authenticator app shows it.
fn totp_code(secret: &str, offset_steps: i64) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .expect("base32");
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        None,
        String::new(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    totp.generate((now + offset_steps * 30) as u64)
}

/// Starts a second-factor enrolment for the token's user; the answer
/// holds the new `secret` and its `otpauth_url`.
async fn start_totp(server: &Server, token: &str) -> Value {
    let (status, enrol) = call(
        server,
        Method::POST,
        "/api/v1/users/me/totp",
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrol}");
    enrol
}

#[tokio::test]
async fn a_second_factor_is_required_once_enrolled_and_each_code_works_once() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (_, pair) = user(&server, &admin, "dev@acme.test", "developer", "acme").await;
    let token = access(&pair).to_owned();
    let enrol = start_totp(&server, &token).await;
    let secret = enrol["secret"].as_str().expect("secret").to_owned();
    assert!(enrol["otpauth_url"]
        .as_str()
        .expect("url")
        .starts_with("otpauth://totp/"));
    let confirm = |code: String| {
        let server = &server;
        let token = token.clone();
        async move {
            let body = json!({ "code": code });
            call(
                server,
                Method::POST,
                "/api/v1/users/me/totp/confirm",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    assert_eq!(
        confirm("000000".into()).await.0,
        401,
        "a wrong first code confirms nothing"
    );
    let (status, confirmed) = confirm(totp_code(&secret, 0)).await;
    assert_eq!(status, 200, "{confirmed}");
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    let with = |extra: Value| {
        let mut body = json!({ "email": "dev@acme.test", "password": PASSWORD });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let server = &server;
        async move { call(server, Method::POST, "/api/v1/auth/login", None, Some(body)).await }
    };
    let (status, body) = with(json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("second_factor_required"))
    );
    let (status, body) = with(json!({ "totp": "123456" })).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("second_factor_failed"))
    );
    // The code that confirmed enrolment is spent; the next step's works once.
    let next = totp_code(&secret, 1);
    assert_eq!(with(json!({ "totp": next })).await.0, 200);
    assert_eq!(
        with(json!({ "totp": next })).await.0,
        401,
        "a replayed code"
    );
    // A recovery code works once, typed loosely.
    let loose = recovery[0].to_uppercase().replace('-', " ");
    assert_eq!(with(json!({ "recovery_code": loose })).await.0, 200);
    assert_eq!(with(json!({ "recovery_code": recovery[0] })).await.0, 401);
    assert!(server.log_shows("auth.totp_enrolled").await);
}

/// Wrong second-factor codes with the right password count like wrong
/// passwords: the second factor guards a leaked password, so guessing it
/// must lock too.
#[tokio::test]
async fn wrong_second_factor_codes_lock_like_wrong_passwords() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (_, pair) = user(&server, &admin, "otp@acme.test", "developer", "acme").await;
    let token = access(&pair).to_owned();
    let enrol = start_totp(&server, &token).await;
    let secret = enrol["secret"].as_str().expect("secret").to_owned();
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/users/me/totp/confirm",
        Some(&token),
        Some(json!({ "code": totp_code(&secret, 0) })),
    )
    .await;
    assert_eq!(status, 200);

    // Each guess from its own address of one /24, so the shield's budget
    // per address never answers first: what refuses is the identity
    // lockout of that network.
    let login = |code: String, source: u8| {
        let url = format!("{}/api/v1/auth/login", server.api_url());
        async move {
            let client = reqwest::Client::builder()
                .local_address(IpAddr::from([127, 0, 0, source]))
                .build()
                .expect("client");
            let response = client
                .post(url)
                .json(&json!({ "email": "otp@acme.test", "password": PASSWORD, "totp": code }))
                .send()
                .await
                .expect("login");
            status_and_json(response).await
        }
    };
    for source in 60..65 {
        let (status, body) = login("000000".into(), source).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (401, json!("second_factor_failed")),
            "guess from 127.0.0.{source}"
        );
    }
    // The right password and the right code from the same network are now
    // refused by the lock.
    let (status, body) = login(totp_code(&secret, 1), 65).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (429, json!("locked")),
        "{body}"
    );
    assert!(server.log_shows("auth.locked").await);
}
