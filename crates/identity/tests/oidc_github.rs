//! GitHub login end to end against a loopback FAKE of github.com.
//!
//! FAKE: github.com cannot be reached from here and ships no server, so
//! [`FakeGitHub`] stands in for its three parts that SpinForge uses: the
//! authorize page (it approves at once for the configured user), the token
//! endpoint (it checks the client secret, single-use codes, the redirect URI
//! and PKCE S256 as GitHub does, and answers errors with 200 and an `error`
//! field like GitHub), and the REST API's `/user` and `/user/emails`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Json;
use base64::Engine;
use identity::oidc::{OidcClient, OidcError, OidcProviderConfig, PendingLogins, ProviderKind};
use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use url::Url;

const CLIENT_ID: &str = "Iv1.spinforge";
const CLIENT_SECRET: &str = "github-secret-0b9e";
const REDIRECT: &str = "http://127.0.0.1:9/api/v1/auth/oidc/github/callback";
const USER_ID: u64 = 583231;

struct FakeGitHub {
    addr: std::net::SocketAddr,
    state: Arc<Fake>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Fake {
    /// What `/user/emails` answers (`None`: a 500).
    emails: Mutex<Option<serde_json::Value>>,
    /// Issued codes: code → (redirect_uri, code_challenge).
    codes: Mutex<HashMap<String, (String, String)>>,
    tokens: Mutex<Vec<String>>,
    /// The `scope` of the last authorize request.
    last_scope: Mutex<String>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGitHub {
    async fn start(emails: serde_json::Value) -> FakeGitHub {
        let state = Arc::new(Fake::default());
        *lock(&state.emails) = Some(emails);
        let app = axum::Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(access_token))
            .route("/user", get(user))
            .route("/user/emails", get(user_emails))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        FakeGitHub { addr, state, task }
    }

    fn config(&self) -> OidcProviderConfig {
        let base = format!("http://{}", self.addr);
        let mut config =
            OidcProviderConfig::github(CLIENT_ID, SecretString::from(CLIENT_SECRET), REDIRECT);
        config.kind = ProviderKind::GitHub {
            api_base: base.clone(),
            auth_url: format!("{base}/login/oauth/authorize"),
            token_url: format!("{base}/login/oauth/access_token"),
        };
        config
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("fake lock")
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
}

async fn authorize(State(fake): State<Arc<Fake>>, Query(q): Query<AuthorizeQuery>) -> Response {
    if q.client_id != CLIENT_ID || q.code_challenge_method != "S256" {
        return (StatusCode::BAD_REQUEST, "bad authorize request").into_response();
    }
    let code = format!("code-{}", lock(&fake.codes).len() + 1);
    lock(&fake.codes).insert(code.clone(), (q.redirect_uri.clone(), q.code_challenge));
    *lock(&fake.last_scope) = q.scope;
    let mut back = Url::parse(&q.redirect_uri).expect("redirect_uri");
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q.state);
    Redirect::to(back.as_str()).into_response()
}

fn github_error(error: &str) -> Response {
    Json(serde_json::json!({
        "error": error,
        "error_description": "see the fake",
        "error_uri": "https://docs.github.com/apps"
    }))
    .into_response()
}

async fn access_token(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| f.get(name).cloned().unwrap_or_default();
    assert_eq!(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "GitHub answers form-encoded unless asked for JSON"
    );
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return github_error("incorrect_client_credentials");
    }
    let Some((redirect, challenge)) = lock(&fake.codes).remove(&field("code")) else {
        return github_error("bad_verification_code");
    };
    if redirect != field("redirect_uri") {
        return github_error("redirect_uri_mismatch");
    }
    let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(field("code_verifier")));
    if derived != challenge {
        return github_error("bad_verification_code");
    }
    let token = format!("gho_fake{}", lock(&fake.tokens).len() + 1);
    lock(&fake.tokens).push(token.clone());
    Json(serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "scope": "read:user,user:email"
    }))
    .into_response()
}

fn authorised(fake: &Fake, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    presented.is_some_and(|t| lock(&fake.tokens).iter().any(|k| k == t))
        && headers.contains_key(header::USER_AGENT)
}

async fn user(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    if !authorised(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(serde_json::json!({"id": USER_ID, "login": "octo"})).into_response()
}

async fn user_emails(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    if !authorised(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match lock(&fake.emails).clone() {
        Some(list) => Json(list).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The browser: opens the authorize URL and follows nothing.
async fn approve(url: &Url) -> (String, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let answer = browser.get(url.clone()).send().await.expect("authorize");
    assert_eq!(answer.status(), 303, "approved and sent back");
    let location = answer
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .expect("Location");
    let back = Url::parse(location).expect("callback");
    let q: HashMap<_, _> = back.query_pairs().into_owned().collect();
    (q["code"].clone(), q["state"].clone())
}

async fn login(
    client: &OidcClient,
    logins: &PendingLogins,
) -> (Result<identity::oidc::VerifiedIdentity, OidcError>, String) {
    let (url, pending) = client.begin();
    logins.insert(pending).expect("room");
    let (code, state) = approve(&url).await;
    let pending = logins.take(&state).expect("our state");
    (client.complete(pending, &code).await, code)
}

fn email(address: &str, primary: bool, verified: bool) -> serde_json::Value {
    serde_json::json!({
        "email": address, "primary": primary, "verified": verified, "visibility": null
    })
}

#[tokio::test]
async fn github_login_returns_the_verified_primary_email_and_user_id() {
    let github = FakeGitHub::start(serde_json::json!([
        email("octo@users.noreply.github.com", false, true),
        email("Octo@Example.com", true, true),
    ]))
    .await;
    let client = OidcClient::discover(github.config()).await.expect("client");
    let logins = PendingLogins::new();

    let (who, _) = login(&client, &logins).await;
    let who = who.expect("login");
    assert_eq!(who.provider, "github");
    assert_eq!(who.subject, USER_ID.to_string());
    assert_eq!(who.email, "octo@example.com");
    assert!(who.email_verified);
    assert_eq!(*lock(&github.state.last_scope), "read:user user:email");
}

#[tokio::test]
async fn an_unverified_primary_email_is_refused_even_with_a_verified_other() {
    let github = FakeGitHub::start(serde_json::json!([
        email("octo@example.com", true, false),
        email("backup@example.com", false, true),
    ]))
    .await;
    let client = OidcClient::discover(github.config()).await.expect("client");
    let (result, code) = login(&client, &PendingLogins::new()).await;
    let err = result.expect_err("unverified primary");
    assert!(matches!(err, OidcError::EmailNotVerified), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(&code));
}

#[tokio::test]
async fn no_primary_email_is_refused() {
    let github = FakeGitHub::start(serde_json::json!([email("a@example.com", false, true)])).await;
    let client = OidcClient::discover(github.config()).await.expect("client");
    let (result, _) = login(&client, &PendingLogins::new()).await;
    assert!(matches!(result, Err(OidcError::EmailMissing)), "{result:?}");
}

#[tokio::test]
async fn a_github_email_outside_the_allowed_domains_is_refused() {
    let github = FakeGitHub::start(serde_json::json!([email("octo@gmail.com", true, true)])).await;
    let mut config = github.config();
    config.allowed_email_domains = vec!["example.com".to_owned()];
    let client = OidcClient::discover(config).await.expect("client");
    let (result, _) = login(&client, &PendingLogins::new()).await;
    match result {
        Err(OidcError::EmailDomainNotAllowed { domain }) => assert_eq!(domain, "gmail.com"),
        other => panic!("let in: {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_client_secret_or_a_reused_code_is_refused_without_leaking_them() {
    let github =
        FakeGitHub::start(serde_json::json!([email("octo@example.com", true, true)])).await;
    let mut config = github.config();
    config.client_secret = SecretString::from("not-the-secret");
    let wrong = OidcClient::discover(config).await.expect("client");
    let (result, code) = login(&wrong, &PendingLogins::new()).await;
    let err = result.expect_err("wrong secret");
    assert!(
        matches!(&err, OidcError::CodeRejected(c) if c == "incorrect_client_credentials"),
        "{err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-secret") && !shown.contains(&code));

    let client = OidcClient::discover(github.config()).await.expect("client");
    let logins = PendingLogins::new();
    let (result, code) = login(&client, &logins).await;
    result.expect("first use");
    let (_, fresh) = client.begin();
    let err = client
        .complete(fresh, &code)
        .await
        .expect_err("reused code");
    assert!(
        matches!(&err, OidcError::CodeRejected(c) if c == "bad_verification_code"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_pkce_verifier_from_another_login_is_refused() {
    let github =
        FakeGitHub::start(serde_json::json!([email("octo@example.com", true, true)])).await;
    let client = OidcClient::discover(github.config()).await.expect("client");

    // The victim's code arrives with the attacker's pending login (and so
    // the attacker's PKCE verifier).
    let (victim_url, _victim) = client.begin();
    let (code, _) = approve(&victim_url).await;
    let (_, attacker) = client.begin();
    let err = client
        .complete(attacker, &code)
        .await
        .expect_err("PKCE mismatch");
    assert!(
        matches!(&err, OidcError::CodeRejected(c) if c == "bad_verification_code"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_failing_github_api_is_an_upstream_error() {
    let github =
        FakeGitHub::start(serde_json::json!([email("octo@example.com", true, true)])).await;
    *lock(&github.state.emails) = None;
    let client = OidcClient::discover(github.config()).await.expect("client");
    let (result, _) = login(&client, &PendingLogins::new()).await;
    match result {
        Err(OidcError::Upstream(msg)) => assert!(msg.contains("500"), "{msg}"),
        other => panic!("{other:?}"),
    }
}
