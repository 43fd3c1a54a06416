//! End-to-end OIDC login against a real OpenID provider on loopback.
//!
//! The provider is PyPI's `oidc-provider-mock` (a real authlib-based
//! provider: discovery, JWKS, RS256 ID tokens, code grant). The browser is
//! reqwest: it opens the authorize URL and posts the provider's login form
//! (`sub`), as a person would. The user's claims (`email`,
//! `email_verified`) are set through the provider's `PUT /users/{sub}`.
//!
//! Some attacks need a hostile network: [`Interceptor`] is a loopback proxy
//! in front of the provider that records token requests and can answer one
//! with a token response captured from another login (an ID token for
//! another client, or a replayed one).
//!
//! The provider runs as `PYTHON -m oidc_provider_mock` with the python of
//! [`oidc_python`] (which says when the tests skip).

mod oidc_python;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use identity::oidc::{
    IdTokenProblem, OidcClient, OidcError, OidcProviderConfig, PendingLogins, VerifiedIdentity,
};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::Url;

const CLIENT_SECRET: &str = "test-client-secret-7f3a9c";
const REDIRECT: &str = "http://127.0.0.1:9/api/v1/auth/oidc/corp/callback";

// ---------------------------------------------------------------- provider

/// A running provider on 127.0.0.1; killed when dropped.
struct Provider {
    child: tokio::process::Child,
    port: u16,
}

impl Provider {
    async fn start(python: &Path) -> Provider {
        Provider::start_on(python, free_port()).await
    }

    async fn start_on(python: &Path, port: u16) -> Provider {
        let child = tokio::process::Command::new(python)
            .args(["-m", "oidc_provider_mock", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start oidc-provider-mock");
        let provider = Provider { child, port };
        wait_ready(&format!(
            "{}/.well-known/openid-configuration",
            provider.issuer()
        ))
        .await;
        provider
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("stop the provider");
    }

    /// Sets the claims the provider will put in the user's ID token.
    async fn set_user(&self, sub: &str, claims: serde_json::Value) {
        let status = reqwest::Client::new()
            .put(format!("{}/users/{sub}", self.issuer()))
            .json(&claims)
            .send()
            .await
            .expect("PUT /users")
            .status();
        assert_eq!(status, 204, "setting claims of {sub}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----------------------------------------------------------------- browser

/// What the provider redirected the browser back to us with.
struct Callback {
    code: String,
    state: String,
}

/// Opens `authorize` and logs in as `sub` on the provider's form.
async fn log_in_at_provider(authorize: &Url, sub: &str) -> Callback {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let page = browser
        .get(authorize.clone())
        .send()
        .await
        .expect("GET authorize");
    assert_eq!(page.status(), 200, "the provider shows its login form");
    assert!(page.text().await.expect("form").contains("name=\"sub\""));

    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sub", sub)
        .finish();
    let answer = browser
        .post(authorize.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("POST authorize");
    assert_eq!(answer.status(), 302, "the provider redirects back");
    let location = answer
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .expect("Location");
    let back = Url::parse(location).expect("callback URL");
    assert!(back.as_str().starts_with(REDIRECT), "{back}");
    let q = query(&back);
    Callback {
        code: q.get("code").expect("code").clone(),
        state: q.get("state").expect("state").clone(),
    }
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn with_query_param(url: &Url, name: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

// ------------------------------------------------------------------- login

fn config(issuer: &str, client_id: &str) -> OidcProviderConfig {
    OidcProviderConfig::oidc(
        "corp",
        issuer,
        client_id,
        SecretString::from(CLIENT_SECRET),
        REDIRECT,
    )
}

/// Runs a whole login of `sub` and returns the outcome and the code used.
async fn login(
    client: &OidcClient,
    logins: &PendingLogins,
    sub: &str,
) -> (Result<VerifiedIdentity, OidcError>, String) {
    let (url, pending) = client.begin();
    logins.insert(pending).expect("room for the login");
    let back = log_in_at_provider(&url, sub).await;
    let pending = logins.take(&back.state).expect("our state comes back");
    (client.complete(pending, &back.code).await, back.code)
}

/// Refusals must not carry the client secret or the code.
fn assert_secret_free(err: &OidcError, code: &str) {
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(CLIENT_SECRET), "secret in {shown}");
        assert!(!shown.contains(code), "code in {shown}");
    }
}

macro_rules! provider_or_skip {
    () => {
        match oidc_python::python() {
            Some(python) => (Provider::start(&python).await, python),
            None => return,
        }
    };
}

#[tokio::test]
async fn login_with_a_verified_email_returns_that_email() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "alice-1",
            serde_json::json!({"email": "Alice@Example.com", "email_verified": true}),
        )
        .await;
    let client = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    let (url, pending) = client.begin();
    let q = query(&url);
    assert!(url.as_str().starts_with(&provider.issuer()));
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "spinforge");
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid email");
    assert_eq!(q["state"], pending.state());
    assert!(q["nonce"].len() >= 22 && q["code_challenge"].len() == 43);
    assert!(!url.as_str().contains(CLIENT_SECRET));

    logins.insert(pending).expect("room");
    let back = log_in_at_provider(&url, "alice-1").await;
    let pending = logins.take(&back.state).expect("state");
    let who = client.complete(pending, &back.code).await.expect("login");
    assert_eq!(
        who,
        VerifiedIdentity {
            provider: "corp".to_owned(),
            subject: "alice-1".to_owned(),
            email: "alice@example.com".to_owned(),
            email_verified: true,
        }
    );
}

#[tokio::test]
async fn a_tampered_or_unknown_state_is_refused_and_consumes_nothing() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "bob",
            serde_json::json!({"email": "bob@example.com", "email_verified": true}),
        )
        .await;
    let client = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    let (url, pending) = client.begin();
    logins.insert(pending).expect("room");
    let back = log_in_at_provider(&url, "bob").await;

    // An attacker's callback: the real code with a state of their making,
    // or with the victim's state changed in one character.
    let mut flipped = back.state.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    for forged in ["attacker-state", flipped.as_str(), ""] {
        assert!(matches!(logins.take(forged), Err(OidcError::UnknownState)));
    }

    // The real state still works once.
    let pending = logins.take(&back.state).expect("untouched by refusals");
    let who = client.complete(pending, &back.code).await.expect("login");
    assert_eq!(who.email, "bob@example.com");
}

#[tokio::test]
async fn a_replayed_state_or_code_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "carol",
            serde_json::json!({"email": "carol@example.com", "email_verified": true}),
        )
        .await;
    let client = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    let (url, pending) = client.begin();
    logins.insert(pending).expect("room");
    let back = log_in_at_provider(&url, "carol").await;
    let pending = logins.take(&back.state).expect("state");
    client.complete(pending, &back.code).await.expect("login");

    // The same callback again: the state is spent.
    assert!(matches!(
        logins.take(&back.state),
        Err(OidcError::UnknownState)
    ));

    // The spent code under a fresh login: the provider refuses it.
    let (_, fresh) = client.begin();
    let err = client
        .complete(fresh, &back.code)
        .await
        .expect_err("a used code");
    assert!(
        matches!(&err, OidcError::CodeRejected(c) if c == "invalid_grant"),
        "{err:?}"
    );
    assert_secret_free(&err, &back.code);
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "dave",
            serde_json::json!({"email": "dave@example.com", "email_verified": true}),
        )
        .await;
    let client = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    // The browser's authorize request carries a nonce other than the one
    // this login stored (an attacker injecting their own login).
    let (url, pending) = client.begin();
    logins.insert(pending).expect("room");
    let forged = with_query_param(&url, "nonce", "attacker-chosen-nonce-0123456789");
    let back = log_in_at_provider(&forged, "dave").await;
    let pending = logins.take(&back.state).expect("state");
    let err = client
        .complete(pending, &back.code)
        .await
        .expect_err("wrong nonce");
    assert!(
        matches!(err, OidcError::IdTokenRejected(IdTokenProblem::Nonce)),
        "{err:?}"
    );
    assert_secret_free(&err, &back.code);
}

#[tokio::test]
async fn an_unverified_or_unstated_email_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "erin",
            serde_json::json!({"email": "erin@example.com", "email_verified": false}),
        )
        .await;
    provider
        .set_user("frank", serde_json::json!({"email": "frank@example.com"}))
        .await;
    provider
        .set_user("nomail", serde_json::json!({"name": "No Mail"}))
        .await;
    let client = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    for sub in ["erin", "frank"] {
        let (result, code) = login(&client, &logins, sub).await;
        let err = result.expect_err("unverified email");
        assert!(matches!(err, OidcError::EmailNotVerified), "{sub}: {err:?}");
        assert_secret_free(&err, &code);
    }
    let (result, _) = login(&client, &logins, "nomail").await;
    assert!(matches!(result, Err(OidcError::EmailMissing)), "{result:?}");
}

#[tokio::test]
async fn an_email_outside_the_allowed_domains_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "mallory",
            serde_json::json!({"email": "mallory@example.com.evil.test", "email_verified": true}),
        )
        .await;
    provider
        .set_user(
            "grace",
            serde_json::json!({"email": "grace@EXAMPLE.com", "email_verified": true}),
        )
        .await;
    let mut cfg = config(&provider.issuer(), "spinforge");
    cfg.allowed_email_domains = vec!["example.com".to_owned()];
    let client = OidcClient::discover(cfg).await.expect("discovery");
    let logins = PendingLogins::new();

    let (result, _) = login(&client, &logins, "mallory").await;
    match result {
        Err(OidcError::EmailDomainNotAllowed { domain }) => {
            assert_eq!(domain, "example.com.evil.test")
        }
        other => panic!("let in: {other:?}"),
    }
    let (result, _) = login(&client, &logins, "grace").await;
    assert_eq!(result.expect("allowed domain").email, "grace@example.com");
}

#[tokio::test]
async fn a_code_issued_to_another_client_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "heidi",
            serde_json::json!({"email": "heidi@example.com", "email_verified": true}),
        )
        .await;
    let ours = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let theirs = OidcClient::discover(config(&provider.issuer(), "other-app"))
        .await
        .expect("discovery");

    let (url, _) = theirs.begin();
    let back = log_in_at_provider(&url, "heidi").await;
    let (_, pending) = ours.begin();
    let err = ours
        .complete(pending, &back.code)
        .await
        .expect_err("another client's code");
    assert!(matches!(err, OidcError::CodeRejected(_)), "{err:?}");
    assert_secret_free(&err, &back.code);
}

#[tokio::test]
async fn a_pending_login_from_another_provider_is_refused() {
    let (provider, _) = provider_or_skip!();
    let corp = OidcClient::discover(config(&provider.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let mut other = config(&provider.issuer(), "spinforge");
    other.name = "partner".to_owned();
    let partner = OidcClient::discover(other).await.expect("discovery");

    let (_, pending) = partner.begin();
    let err = corp
        .complete(pending, "some-code")
        .await
        .expect_err("mix-up");
    assert!(
        matches!(&err, OidcError::ProviderMismatch { started_with, completed_with }
            if started_with == "partner" && completed_with == "corp"),
        "{err:?}"
    );
}

#[tokio::test]
async fn new_provider_keys_are_fetched_when_a_token_uses_one() {
    let (provider, python) = provider_or_skip!();
    let port = provider.port;
    let issuer = provider.issuer();
    let client = OidcClient::discover(config(&issuer, "spinforge"))
        .await
        .expect("discovery");

    // The provider restarts with a new signing key (new `kid`).
    provider.stop().await;
    let provider = Provider::start_on(&python, port).await;
    provider
        .set_user(
            "ivan",
            serde_json::json!({"email": "ivan@example.com", "email_verified": true}),
        )
        .await;

    let logins = PendingLogins::new();
    let (result, _) = login(&client, &logins, "ivan").await;
    assert_eq!(
        result.expect("login after rotation").email,
        "ivan@example.com"
    );
}

// ------------------------------------------------------------- interceptor

/// A loopback proxy in front of the provider, playing the network attacker.
/// It keeps the `Host` header, so the provider names the proxy as issuer
/// and every endpoint goes through it.
struct Interceptor {
    addr: std::net::SocketAddr,
    state: Arc<InterceptorState>,
    task: tokio::task::JoinHandle<()>,
}

struct InterceptorState {
    upstream: String,
    keep_host: bool,
    http: reqwest::Client,
    /// Bodies of token requests seen (form-encoded).
    token_requests: Mutex<Vec<String>>,
    /// Bodies of token responses the provider sent.
    token_responses: Mutex<Vec<Bytes>>,
    /// When set, the next token request gets this instead of the provider.
    substitute: Mutex<Option<Bytes>>,
}

impl Interceptor {
    async fn start(provider: &Provider, keep_host: bool) -> Interceptor {
        let state = Arc::new(InterceptorState {
            upstream: provider.issuer(),
            keep_host,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            token_requests: Mutex::new(Vec::new()),
            token_responses: Mutex::new(Vec::new()),
            substitute: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(intercept)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Interceptor { addr, state, task }
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn last_token_response(&self) -> Bytes {
        lock(&self.state.token_responses)
            .last()
            .cloned()
            .expect("a token response was seen")
    }

    fn substitute_next_token_response(&self, body: Bytes) {
        *lock(&self.state.substitute) = Some(body);
    }
}

impl Drop for Interceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("interceptor lock")
}

async fn intercept(State(st): State<Arc<InterceptorState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .expect("request body");
    let is_token = parts.method == Method::POST && parts.uri.path() == "/oauth2/token";
    if is_token {
        lock(&st.token_requests).push(String::from_utf8_lossy(&body).into_owned());
        if let Some(forged) = lock(&st.substitute).take() {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                forged,
            )
                .into_response();
        }
    }

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = st
        .http
        .request(parts.method.clone(), format!("{}{path}", st.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name == header::HOST && !st.keep_host {
            continue;
        }
        upstream = upstream.header(name, value);
    }
    let answer = upstream.send().await.expect("provider answers");
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let location = answer.headers().get(header::LOCATION).cloned();
    let bytes = answer.bytes().await.expect("provider body");
    if is_token {
        lock(&st.token_responses).push(bytes.clone());
    }

    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if let Some(l) = location {
        out.headers_mut().insert(header::LOCATION, l);
    }
    out
}

#[tokio::test]
async fn the_token_request_carries_the_pkce_verifier_of_the_challenge() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "judy",
            serde_json::json!({"email": "judy@example.com", "email_verified": true}),
        )
        .await;
    let net = Interceptor::start(&provider, true).await;
    let client = OidcClient::discover(config(&net.issuer(), "spinforge"))
        .await
        .expect("discovery through the proxy");
    let logins = PendingLogins::new();

    let (url, pending) = client.begin();
    let challenge = query(&url)["code_challenge"].clone();
    logins.insert(pending).expect("room");
    let back = log_in_at_provider(&url, "judy").await;
    let pending = logins.take(&back.state).expect("state");
    client.complete(pending, &back.code).await.expect("login");

    let sent = lock(&net.state.token_requests)
        .last()
        .cloned()
        .expect("one");
    let form: HashMap<String, String> = url::form_urlencoded::parse(sent.as_bytes())
        .into_owned()
        .collect();
    let verifier = &form["code_verifier"];
    let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    assert_eq!(derived, challenge, "S256(verifier) is the challenge");
    assert_eq!(form["code"], back.code);
    assert_eq!(form["grant_type"], "authorization_code");
    // The secret goes in the Authorization header, not the form.
    assert!(!sent.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn an_id_token_minted_for_another_client_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "ken",
            serde_json::json!({"email": "ken@example.com", "email_verified": true}),
        )
        .await;
    let net = Interceptor::start(&provider, true).await;
    let ours = OidcClient::discover(config(&net.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let theirs = OidcClient::discover(config(&net.issuer(), "other-app"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    // A genuine login at another client of the same provider yields a
    // validly signed ID token with aud = other-app ...
    let (result, _) = login(&theirs, &logins, "ken").await;
    result.expect("their login works");
    let foreign = net.last_token_response();

    // ... which the attacker hands to our client as its token response.
    net.substitute_next_token_response(foreign);
    let (result, code) = login(&ours, &logins, "ken").await;
    let err = result.expect_err("foreign audience");
    assert!(
        matches!(err, OidcError::IdTokenRejected(IdTokenProblem::Audience)),
        "{err:?}"
    );
    assert_secret_free(&err, &code);
}

#[tokio::test]
async fn a_replayed_id_token_is_refused_by_its_nonce() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "leo",
            serde_json::json!({"email": "leo@example.com", "email_verified": true}),
        )
        .await;
    let net = Interceptor::start(&provider, true).await;
    let client = OidcClient::discover(config(&net.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    let (result, _) = login(&client, &logins, "leo").await;
    result.expect("first login");
    let old = net.last_token_response();

    net.substitute_next_token_response(old);
    let (result, _) = login(&client, &logins, "leo").await;
    let err = result.expect_err("replayed ID token");
    assert!(
        matches!(err, OidcError::IdTokenRejected(IdTokenProblem::Nonce)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let (provider, _) = provider_or_skip!();
    // Without the Host header the provider describes itself at its own
    // address, not the one we asked.
    let net = Interceptor::start(&provider, false).await;
    let err = OidcClient::discover(config(&net.issuer(), "spinforge"))
        .await
        .expect_err("issuer mismatch");
    assert!(matches!(err, OidcError::Discovery(_)), "{err:?}");
    assert!(err.to_string().contains("issuer"), "{err}");
}

/// Turns the three parts of a JWS into a forged token.
type Forgery = dyn Fn(&[&str]) -> String;

/// Rewrites the ID token in a captured token response.
fn with_id_token(response: &Bytes, rewrite: impl Fn(&[&str]) -> String) -> Bytes {
    let mut json: serde_json::Value = serde_json::from_slice(response).expect("token JSON");
    let token = json["id_token"].as_str().expect("id_token").to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS");
    json["id_token"] = serde_json::Value::String(rewrite(&parts));
    Bytes::from(serde_json::to_vec(&json).expect("JSON"))
}

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn unb64(part: &str) -> serde_json::Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

#[tokio::test]
async fn a_forged_or_unsigned_id_token_is_refused() {
    let (provider, _) = provider_or_skip!();
    provider
        .set_user(
            "mike",
            serde_json::json!({"email": "mike@example.com", "email_verified": true}),
        )
        .await;
    let net = Interceptor::start(&provider, true).await;
    let client = OidcClient::discover(config(&net.issuer(), "spinforge"))
        .await
        .expect("discovery");
    let logins = PendingLogins::new();

    // Capture the token response of a real login, but keep the nonce of
    // the next login in the forged tokens, so only the signature is wrong.
    let (url, pending) = client.begin();
    let nonce = query(&url)["nonce"].clone();
    logins.insert(pending).expect("room");
    let back = log_in_at_provider(&url, "mike").await;
    let pending = logins.take(&back.state).expect("state");
    client.complete(pending, &back.code).await.expect("login");
    let genuine = net.last_token_response();

    let forgeries: [(&str, Box<Forgery>); 2] = [
        (
            "payload changed, signature kept",
            Box::new(|p: &[&str]| {
                let mut claims = unb64(p[1]);
                claims["email"] = "admin@example.com".into();
                format!("{}.{}.{}", p[0], b64(&claims), p[2])
            }),
        ),
        (
            "alg none",
            Box::new(|p: &[&str]| {
                let header = serde_json::json!({"alg": "none", "typ": "JWT"});
                format!("{}.{}.", b64(&header), p[1])
            }),
        ),
    ];
    for (what, forge) in forgeries {
        let (url, pending) = client.begin();
        let next_nonce = query(&url)["nonce"].clone();
        // Re-point the captured token at this login's nonce.
        let forged = with_id_token(&genuine, |p| {
            let mut claims = unb64(p[1]);
            assert_eq!(claims["nonce"], nonce.as_str());
            claims["nonce"] = next_nonce.clone().into();
            let moved = format!("{}.{}.{}", p[0], b64(&claims), p[2]);
            forge(&moved.split('.').collect::<Vec<_>>())
        });
        net.substitute_next_token_response(forged);
        logins.insert(pending).expect("room");
        let back = log_in_at_provider(&url, "mike").await;
        let pending = logins.take(&back.state).expect("state");
        let err = client.complete(pending, &back.code).await.expect_err(what);
        assert!(
            matches!(err, OidcError::IdTokenRejected(IdTokenProblem::Signature)),
            "{what}: {err:?}"
        );
    }
}
