//! Single sign-on end to end: the real `spinforge serve`, configured with a
//! `[[identity.oidc]]` provider, against a real OpenID provider on loopback
//! (PyPI `oidc-provider-mock`, run with the python of [`oidc_support`],
//! which says when the tests skip).
//!
//! The browser is reqwest with no automatic redirects: each redirect is
//! followed by hand, and cookies are carried by hand. The provider's user
//! claims (`email`, `email_verified`) are set with its `PUT /users/{sub}`;
//! its login form takes the `sub`.
//!
//! The configured redirect URL is the public one a reverse proxy would
//! serve (`PUBLIC`); the test plays that proxy and sends the callback's
//! path and query to the server's real API address, which is only known
//! once the server has started.

mod common;
// The identity crate's venv helper, shared rather than copied.
#[path = "../../identity/tests/oidc_python/mod.rs"]
mod oidc_support;

use common::{http, status_and_json, Server, ADMIN_EMAIL};
use reqwest::header;
use reqwest::Url;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PUBLIC: &str = "http://127.0.0.1:9";
const CLIENT_SECRET: &str = "sso-test-secret-4b1d";

/// A running provider on 127.0.0.1; killed when dropped.
struct Provider {
    _child: tokio::process::Child,
    port: u16,
}

impl Provider {
    async fn start(python: &Path) -> Provider {
        let port = common::free_port();
        let child = tokio::process::Command::new(python)
            .args(["-m", "oidc_provider_mock", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start oidc-provider-mock");
        let provider = Provider {
            _child: child,
            port,
        };
        let ready = format!("{}/.well-known/openid-configuration", provider.issuer());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http().get(&ready).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{ready} not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        provider
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn set_user(&self, sub: &str, claims: Value) {
        let status = http()
            .put(format!("{}/users/{sub}", self.issuer()))
            .json(&claims)
            .send()
            .await
            .expect("PUT /users")
            .status();
        assert_eq!(status, 204, "setting claims of {sub}");
    }
}

/// The provider, and the server configured for it with the client secret
/// in a file (as operators should) and `example.com` as the only domain.
async fn setup() -> Option<(Provider, Server)> {
    let python = oidc_support::python()?;
    let provider = Provider::start(&python).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("corp-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).expect("write secret");
    let config = format!(
        "{}\n[[identity.oidc]]\nname = \"corp\"\nkind = \"oidc\"\nissuer_url = \"{}\"\n\
         client_id = \"spinforge\"\nclient_secret_file = {:?}\n\
         redirect_url = \"{PUBLIC}/api/v1/auth/oidc/corp/callback\"\n\
         allowed_email_domains = [\"example.com\"]\n",
        common::LOOPBACK_UPSTREAMS,
        provider.issuer(),
        secret_file.to_str().expect("utf-8"),
    );
    let server = Server::start_with(&config);
    // The secret file is read at start; it may go now.
    drop(dir);
    assert!(
        server.log_shows("single sign-on provider ready").await,
        "provider not discovered:\n{}",
        server.log()
    );
    assert!(
        !server.log().contains(CLIENT_SECRET),
        "client secret in the log"
    );
    Some((provider, server))
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .expect("Location")
        .to_owned()
}

/// `name=value` of the Set-Cookie for `name`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().expect("pair").to_owned();
            (pair, v.to_owned())
        })
}

/// Logs in as `sub` at the provider's form; returns where it sends the
/// browser back to.
async fn approve_at_provider(authorize: &str, sub: &str) -> Url {
    let page = http().get(authorize).send().await.expect("GET authorize");
    assert_eq!(page.status(), 200, "the provider shows its login form");
    assert!(page.text().await.expect("form").contains("name=\"sub\""));
    let answer = http()
        .post(authorize)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("sub={sub}"))
        .send()
        .await
        .expect("POST authorize");
    assert_eq!(answer.status(), 302, "the provider redirects back");
    let back = Url::parse(&location(&answer)).expect("callback URL");
    assert!(
        back.as_str()
            .starts_with(&format!("{PUBLIC}/api/v1/auth/oidc/corp/callback?")),
        "{back}"
    );
    back
}

/// A browser login up to the provider's redirect back: the callback (on
/// the real API address) and the state cookie `start` set.
struct BrowserLogin {
    callback: String,
    state_cookie: String,
}

async fn browser_login(server: &Server, sub: &str) -> BrowserLogin {
    let start = http()
        .get(format!("{}/api/v1/auth/oidc/corp/start", server.api_url()))
        .send()
        .await
        .expect("start");
    assert_eq!(start.status(), 302);
    let (state_cookie, full) = set_cookie(&start, "sf_oidc_state").expect("state cookie");
    assert!(
        full.contains("HttpOnly") && full.contains("SameSite=Lax"),
        "{full}"
    );
    let authorize = location(&start);
    let url = Url::parse(&authorize).expect("authorize URL");
    assert!(authorize.starts_with(&http_issuer(&url)));
    assert_eq!(
        format!("sf_oidc_state={}", query(&url)["state"]),
        state_cookie
    );
    assert!(!authorize.contains(CLIENT_SECRET));
    let back = approve_at_provider(&authorize, sub).await;
    BrowserLogin {
        callback: format!(
            "{}{}?{}",
            server.api_url(),
            back.path(),
            back.query().unwrap_or("")
        ),
        state_cookie,
    }
}

fn http_issuer(url: &Url) -> String {
    format!("http://127.0.0.1:{}", url.port().expect("port"))
}

async fn finish(login: &BrowserLogin) -> reqwest::Response {
    http()
        .get(&login.callback)
        .header(header::COOKIE, &login.state_cookie)
        .send()
        .await
        .expect("callback")
}

async fn create_user(server: &Server, admin: &str, email: &str) {
    let r = http()
        .post(format!("{}/api/v1/users", server.api_url()))
        .bearer_auth(admin)
        .json(&json!({ "email": email, "password": "sso users need one too 81", "role": "developer", "customer": "acme" }))
        .send()
        .await
        .expect("create user");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

async fn refused(r: reqwest::Response, status: u16, needle: &str) {
    let (got, body) = status_and_json(r).await;
    assert_eq!(got, status, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[tokio::test]
async fn browser_login_links_only_known_verified_allowed_emails() {
    let Some((provider, server)) = setup().await else {
        return;
    };
    let admin = server.admin_token().await;
    create_user(&server, &admin, "dev@other.test").await;
    create_user(&server, &admin, "gone@example.com").await;

    // A known, verified email: session cookie, redirect to `/`, whoami.
    provider
        .set_user(
            "alice",
            json!({ "email": "Admin@Example.com", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "alice").await;
    let done = finish(&login).await;
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), "/");
    let (session, full) = set_cookie(&done, "sf_session").expect("session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(full.contains(flag), "{full} lacks {flag}");
    }
    let (cleared, _) = set_cookie(&done, "sf_oidc_state").expect("state cookie cleared");
    assert_eq!(cleared, "sf_oidc_state=");
    let (status, me) = status_and_json(
        http()
            .get(format!("{}/api/v1/whoami", server.api_url()))
            .header(header::COOKIE, &session)
            .send()
            .await
            .expect("whoami"),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);
    assert_eq!(me["method"], "cookie");
    assert!(server.log_shows("auth.succeeded").await);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("auth.succeeded") && l.contains("sso"))
        .expect("sso success audit line");
    assert!(
        line.contains("corp") && line.contains("127.0.0.1"),
        "{line}"
    );

    // The same callback again: its state is spent.
    refused(finish(&login).await, 400, "already used").await;

    // An email no account has.
    provider
        .set_user(
            "bob",
            json!({ "email": "nobody@example.com", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "bob").await;
    let (got, body) = status_and_json(finish(&login).await).await;
    assert_eq!(got, 403, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("no account has the email"), "{message:?}");
    assert!(
        !body.to_string().contains("nobody"),
        "address echoed: {body}"
    );

    // An email the provider does not vouch for.
    provider
        .set_user(
            "mallory",
            json!({ "email": ADMIN_EMAIL, "email_verified": false }),
        )
        .await;
    let login = browser_login(&server, "mallory").await;
    refused(finish(&login).await, 403, "not verified").await;

    // An existing account, but outside the allowed domains.
    provider
        .set_user(
            "dev",
            json!({ "email": "dev@other.test", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "dev").await;
    refused(
        finish(&login).await,
        403,
        "domain other.test is not allowed",
    )
    .await;

    // A disabled account.
    let users: Value = http()
        .get(format!("{}/api/v1/users", server.api_url()))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    let gone = users
        .as_array()
        .expect("list")
        .iter()
        .find(|u| u["email"] == "gone@example.com")
        .expect("gone@example.com")["id"]
        .clone();
    let r = http()
        .patch(format!("{}/api/v1/users/{gone}", server.api_url()))
        .bearer_auth(&admin)
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .expect("disable");
    assert_eq!(r.status(), 200);
    provider
        .set_user(
            "gone",
            json!({ "email": "gone@example.com", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "gone").await;
    refused(finish(&login).await, 403, "disabled").await;

    // A callback brought to a browser that did not start the login
    // (login CSRF): refused, and the state is spent all the same.
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "alice").await;
    let foreign = http().get(&login.callback).send().await.expect("callback");
    refused(foreign, 403, "browser that started it").await;
    refused(finish(&login).await, 400, "already used").await;

    // Log lines come through a pipe a moment after each response: wait
    // (bounded) until the last one can have arrived, then count.
    let sso_failures = |log: &str| {
        log.lines()
            .filter(|l| l.contains("auth.failed") && l.contains("sso"))
            .count()
    };
    for _ in 0..50 {
        if sso_failures(&server.log()) >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log();
    assert_eq!(sso_failures(&log), 7, "one auth.failed per refusal:\n{log}");
    assert!(!log.contains(CLIENT_SECRET));
}

/// A PKCE pair as a CLI makes it: a verifier it keeps, and the base64url
/// SHA-256 challenge it sends (RFC 7636, S256).
fn pkce(seed: &str) -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let verifier = format!("{seed}-{}", "v".repeat(43));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// `start?format=json` with these query parameters.
async fn cli_start(server: &Server, params: &[(&str, &str)]) -> (u16, Value) {
    let mut url = Url::parse(&format!(
        "{}/api/v1/auth/oidc/corp/start?format=json",
        server.api_url()
    ))
    .expect("url");
    url.query_pairs_mut().extend_pairs(params);
    status_and_json(http().get(url).send().await.expect("start")).await
}

/// The provider's redirect back, sent to the server's real API address.
fn on_api(server: &Server, back: &Url) -> String {
    format!(
        "{}{}?{}",
        server.api_url(),
        back.path(),
        back.query().unwrap_or("")
    )
}

async fn exchange(server: &Server, code: &str, verifier: &str) -> (u16, Value) {
    status_and_json(
        http()
            .post(format!("{}/api/v1/auth/oidc/token", server.api_url()))
            .json(&json!({ "code": code, "code_verifier": verifier }))
            .send()
            .await
            .expect("token"),
    )
    .await
}

/// The code in the `Location` of a callback that sends the browser to a
/// CLI's loopback listener `to`.
fn code_sent_to(r: &reqwest::Response, to: &str) -> String {
    assert_eq!(r.status(), 303);
    let location = Url::parse(&location(r)).expect("Location");
    assert!(location.as_str().starts_with(to), "{location} is not {to}");
    query(&location).remove("code").expect("code")
}

fn audit_lines(server: &Server, needle: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("auth.failed") && l.contains("sso") && l.contains(needle))
        .count()
}

/// The attacker run that found the hole: the attacker starts a CLI login,
/// sends the link to a victim who signs in at the provider, and then tries
/// to collect the victim's tokens. There is nothing left to collect.
#[tokio::test]
async fn phished_cli_login_gives_the_attacker_no_tokens() {
    let Some((provider, server)) = setup().await else {
        return;
    };
    server.admin_token().await;
    provider
        .set_user(
            "victim",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;

    // The old unbound start is refused outright.
    let (status, body) = cli_start(&server, &[]).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("code_challenge")),
        "{body}"
    );

    // Loopback mode: the code goes to the victim's own 127.0.0.1, where
    // the attacker is not; a redirect anywhere else is refused at start.
    let (verifier, challenge) = pkce("attacker");
    for evil in [
        "http://attacker.example:8080/cb",
        "http://localhost:8080/cb",
        "https://127.0.0.1:8080/cb",
    ] {
        let (status, body) = cli_start(
            &server,
            &[("code_challenge", &challenge), ("redirect_uri", evil)],
        )
        .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some("redirect_uri")),
            "{evil}: {body}"
        );
    }
    let victim_loopback = "http://127.0.0.1:1/callback";
    let (status, start) = cli_start(
        &server,
        &[
            ("code_challenge", &challenge),
            ("redirect_uri", victim_loopback),
        ],
    )
    .await;
    assert_eq!(status, 200, "{start}");
    assert!(
        start.get("login_id").is_none() && start.get("poll_url").is_none(),
        "no secret handle on the login: {start}"
    );
    let back = approve_at_provider(start["authorize_url"].as_str().expect("url"), "victim").await;
    let r = http()
        .get(on_api(&server, &back))
        .send()
        .await
        .expect("callback");
    let victims_code = code_sent_to(&r, &format!("{victim_loopback}?code="));
    assert!(victims_code.len() >= 43);

    // The attacker's options: the poll of old is gone, and the exchange
    // wants the code only the victim's browser saw.
    let r = http()
        .get(format!(
            "{}/api/v1/auth/oidc/poll/{}",
            server.api_url(),
            "A".repeat(43)
        ))
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), 404);
    let (status, body) = exchange(&server, &"A".repeat(43), &verifier).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("code")),
        "{body}"
    );
    assert!(body.get("access_token").is_none());
    assert!(server.log_shows("unknown_code").await);
    assert_eq!(audit_lines(&server, "unknown_code"), 1, "{}", server.log());

    // Paste mode: the victim sees the code with a warning, and the
    // attacker still holds nothing that buys tokens.
    let (status, start) = cli_start(&server, &[("code_challenge", &challenge)]).await;
    assert_eq!(status, 200, "{start}");
    let back = approve_at_provider(start["authorize_url"].as_str().expect("url"), "victim").await;
    let page = http()
        .get(on_api(&server, &back))
        .send()
        .await
        .expect("callback");
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let page = page.text().await.expect("page");
    assert!(page.contains("never give this code to anyone"), "{page}");
    assert!(page.contains("<code id=\"code\">"), "{page}");
    let (status, _) = exchange(&server, &"B".repeat(43), &verifier).await;
    assert_eq!(status, 400);
    assert_eq!(audit_lines(&server, "unknown_code"), 2);
    assert!(!server.log().contains(&victims_code), "a code in the log");
}

#[tokio::test]
async fn cli_code_is_bound_to_the_verifier_single_use_and_expires() {
    let Some((provider, server)) = setup().await else {
        return;
    };
    let admin = server.admin_token().await;
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;
    let to = "http://127.0.0.1:2/cb";
    let login = |challenge: String| {
        let server = &server;
        async move {
            let (status, start) = cli_start(
                server,
                &[("code_challenge", &challenge), ("redirect_uri", to)],
            )
            .await;
            assert_eq!(status, 200, "{start}");
            let back =
                approve_at_provider(start["authorize_url"].as_str().expect("url"), "alice").await;
            let r = http()
                .get(on_api(server, &back))
                .send()
                .await
                .expect("callback");
            code_sent_to(&r, &format!("{to}?code="))
        }
    };
    let (verifier, challenge) = pkce("cli");
    let (other_verifier, _) = pkce("someone-else");

    // The right verifier: a working token pair, once.
    let code = login(challenge.clone()).await;
    let (status, pair) = exchange(&server, &code, &verifier).await;
    assert_eq!(status, 200, "{pair}");
    let (status, me) = status_and_json(
        http()
            .get(format!("{}/api/v1/whoami", server.api_url()))
            .bearer_auth(pair["access_token"].as_str().expect("access"))
            .send()
            .await
            .expect("whoami"),
    )
    .await;
    assert_eq!(
        (status, me["user"]["email"].as_str()),
        (200, Some(ADMIN_EMAIL))
    );
    let (status, body) = exchange(&server, &code, &verifier).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("already used"));

    // A wrong verifier is refused and spends the code.
    let code = login(challenge.clone()).await;
    let (status, body) = exchange(&server, &code, &other_verifier).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("code_verifier")),
        "{body}"
    );
    let (status, _) = exchange(&server, &code, &verifier).await;
    assert_eq!(status, 400);

    // A code past its two minutes is dead (the shield's test clock moves).
    let code = login(challenge.clone()).await;
    let r = http()
        .post(format!("{}/api/v1/shield/test-clock", server.api_url()))
        .bearer_auth(&admin)
        .json(&json!({ "advance_secs": 121 }))
        .send()
        .await
        .expect("test clock");
    assert_eq!(r.status(), 204);
    let (status, body) = exchange(&server, &code, &verifier).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("expired"));

    // Bad input: clear errors naming the field.
    let (status, body) = exchange(&server, &code, "short").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("code_verifier"))
    );
    let (status, body) = cli_start(
        &server,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "plain"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("code_challenge_method"))
    );
    let r = http()
        .get(format!(
            "{}/api/v1/auth/oidc/corp/start?code_challenge={challenge}",
            server.api_url()
        ))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 400);

    // Each refusal is audited with its reason; the session began once.
    for reason in [
        "unknown_code",
        "verifier_mismatch",
        "expired_code",
        "bad_verifier",
    ] {
        assert!(
            audit_lines(&server, reason) >= 1,
            "{reason}:\n{}",
            server.log()
        );
    }
    let successes = server
        .log()
        .lines()
        .filter(|l| l.contains("auth.succeeded") && l.contains("sso"))
        .count();
    assert_eq!(successes, 1);

    // A refused login goes back to the CLI's listener as an error.
    provider
        .set_user(
            "bob",
            json!({ "email": "nobody@example.com", "email_verified": true }),
        )
        .await;
    let (_, start) = cli_start(
        &server,
        &[("code_challenge", &challenge), ("redirect_uri", to)],
    )
    .await;
    let back = approve_at_provider(start["authorize_url"].as_str().expect("url"), "bob").await;
    let r = http()
        .get(on_api(&server, &back))
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 303);
    let back = Url::parse(&location(&r)).expect("Location");
    let q = query(&back);
    assert_eq!(q.get("error").map(String::as_str), Some("unknown_email"));
    assert!(!q.contains_key("code"));
    // The code only: the address stays out of the URL.
    assert_eq!(q.len(), 1, "{back}");
    assert!(!back.as_str().contains("nobody"), "{back}");

    // An unknown provider and a bad format are clear errors.
    let r = http()
        .get(format!("{}/api/v1/auth/oidc/nope/start", server.api_url()))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 404);
    let (status, body) = status_and_json(
        http()
            .get(format!(
                "{}/api/v1/auth/oidc/corp/start?format=xml",
                server.api_url()
            ))
            .send()
            .await
            .expect("start"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("format"))
    );
}

/// `spinforge login --sso` with its environment in a fresh home.
fn cli_login(server: &Server, home: &Path, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(common::BIN)
        .args(["login", "--sso", "corp"])
        .args(extra)
        .env("SPINFORGE_API", server.api_url())
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("HOME", home)
        .env_remove("SPINFORGE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spinforge login --sso")
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the CLI answers in time")
        .expect("read")
        .expect("a line")
}

fn assert_stored_login(server: &Server, home: &Path) {
    let whoami = std::process::Command::new(common::BIN)
        .args(["whoami"])
        .env("SPINFORGE_API", server.api_url())
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("HOME", home)
        .env_remove("SPINFORGE_TOKEN")
        .output()
        .expect("spinforge whoami");
    common::assert_ok(&whoami);
    assert!(common::stdout(&whoami).contains(ADMIN_EMAIL));
}

#[tokio::test]
async fn cli_login_with_sso_takes_the_code_on_its_loopback_listener() {
    use tokio::io::AsyncBufReadExt;
    let Some((provider, server)) = setup().await else {
        return;
    };
    server.admin_token().await;
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cli = cli_login(&server, home.path(), &[]);
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let link = next_line(&mut lines).await;
    let back = approve_at_provider(&link, "alice").await;

    // The browser follows the hub's redirect to the CLI's listener.
    let r = http()
        .get(on_api(&server, &back))
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 303);
    let to = location(&r);
    assert!(to.starts_with("http://127.0.0.1:"), "{to}");
    let page = http().get(&to).send().await.expect("the CLI's listener");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("page").contains("Logged in"));

    assert_eq!(
        next_line(&mut lines).await,
        format!("logged in to {} as {ADMIN_EMAIL}", server.api_url())
    );
    assert!(cli.wait().await.expect("wait").success());
    assert_stored_login(&server, home.path());
}

#[tokio::test]
async fn cli_login_with_paste_code_reads_the_code_the_browser_shows() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Some((provider, server)) = setup().await else {
        return;
    };
    server.admin_token().await;
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cli = cli_login(&server, home.path(), &["--paste-code"]);
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let link = next_line(&mut lines).await;
    let back = approve_at_provider(&link, "alice").await;
    let page = http()
        .get(on_api(&server, &back))
        .send()
        .await
        .expect("callback");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("page");
    let code = page
        .split("<code id=\"code\">")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .expect("the code on the page");

    let mut stdin = cli.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{code}\n").as_bytes())
        .await
        .expect("paste");
    assert_eq!(
        next_line(&mut lines).await,
        format!("logged in to {} as {ADMIN_EMAIL}", server.api_url())
    );
    assert!(cli.wait().await.expect("wait").success());
    assert_stored_login(&server, home.path());
}
