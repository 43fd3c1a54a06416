//! Single sign-on routes: start a login at a configured OpenID Connect (or
//! GitHub) provider, take its callback, link the verified email to an
//! existing user and start a session.
//!
//! Two ways to finish:
//! - **browser**: `start` redirects to the provider and sets a short-lived
//!   `sf_oidc_state` cookie binding the login to this browser (login CSRF);
//!   the callback sets the session cookie and redirects to `/`.
//! - **CLI** (`start?format=json&code_challenge=..`, RFC 8252 + PKCE):
//!   the CLI keeps a random verifier and sends its S256 challenge. After
//!   the callback the browser gets a one-time code: redirected to the
//!   CLI's loopback listener (`redirect_uri=http://127.0.0.1:<port>/..`),
//!   or shown on a page for the user to paste into the CLI (no
//!   `redirect_uri`, for a CLI over ssh). `POST /auth/oidc/token` with
//!   code and verifier returns the token pair, once. A phished victim who
//!   finishes an attacker's login sends the code to their own machine (or
//!   sees it with a warning), never to the attacker.
//!
//! Accounts are never created here: an email without a user is refused, as
//! is a disabled user. Each outcome is an audit event `auth.succeeded` or
//! `auth.failed` with `method = "sso"`, the provider and the client IP.
//! All three routes are `Public` in [`crate::access::ROUTES`].

use crate::access::{Client, SESSION_COOKIE};
use crate::api::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::identity_api::TokenPairView;
use crate::Hub;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use identity::oidc::cli::{self as pkce, LoopbackRedirect};
use identity::oidc::{OidcClient, OidcError, OidcProviderConfig, PendingLogins, PENDING_LOGIN_TTL};
use identity::{ClientInfo, Identity};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shield::Shield;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::UserId;
use subtle::ConstantTimeEq;

/// The cookie that binds a browser login to the browser that started it.
/// `SameSite=Lax`: it must come back on the provider's top-level redirect.
pub const STATE_COOKIE: &str = "sf_oidc_state";
const STATE_COOKIE_PATH: &str = "/api/v1/auth/oidc";

/// How long a CLI login's one-time code may be exchanged: long enough to
/// paste it, short enough that a code seen over a shoulder is soon dead.
pub const CLI_CODE_TTL: Duration = Duration::from_secs(120);
/// Codes waiting for their exchange; past it new CLI logins are refused.
const MAX_CLI_CODES: usize = 10_000;

/// The configured providers and the logins in flight. Put on the router as
/// an `Extension<Arc<Sso>>`; without it every provider is unknown.
pub struct Sso {
    clients: HashMap<String, OidcClient>,
    pending: PendingLogins,
    /// How each pending login (by its `state`) finishes.
    modes: Mutex<HashMap<String, (Instant, Mode)>>,
    /// CLI codes issued and not yet exchanged, by their SHA-256.
    codes: Mutex<HashMap<[u8; 32], IssuedCode>>,
}

#[derive(Clone)]
enum Mode {
    Browser,
    Cli(CliLogin),
}

/// What binds a CLI login to the CLI that started it.
#[derive(Clone)]
struct CliLogin {
    /// S256 challenge of the verifier only the CLI holds.
    challenge: String,
    /// The CLI's loopback listener, or `None`: show the code to paste.
    redirect: Option<LoopbackRedirect>,
}

/// A one-time code the callback handed to the browser of a CLI login.
struct IssuedCode {
    /// Unix seconds on the shield's clock (tests can move it).
    issued_at: u64,
    user: UserId,
    provider: String,
    challenge: String,
}

impl Sso {
    /// Discovers every provider. One that fails is logged and left out: a
    /// provider being down must not stop the platform.
    pub async fn discover(configs: Vec<OidcProviderConfig>) -> Sso {
        let mut clients = HashMap::new();
        for config in configs {
            let name = config.name.clone();
            match OidcClient::discover(config).await {
                Ok(client) => {
                    tracing::info!(provider = %name, "single sign-on provider ready");
                    clients.insert(name, client);
                }
                Err(e) => tracing::error!(
                    provider = %name, error = %e,
                    "single sign-on provider left out: discovery failed"
                ),
            }
        }
        Sso {
            clients,
            pending: PendingLogins::new(),
            modes: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
        }
    }

    /// Names of the providers that are ready.
    pub fn providers(&self) -> Vec<&str> {
        self.clients.keys().map(String::as_str).collect()
    }

    fn client(&self, name: &str) -> Result<&OidcClient, ApiError> {
        self.clients.get(name).ok_or(ApiError::NotFound("provider"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn code_key(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// Now in Unix seconds on the shield's clock (which debug builds let tests
/// move), or the system's when the hub runs without a shield.
fn unix_now(shield: Option<&Shield>) -> u64 {
    match shield {
        Some(shield) => shield.clock().unix_now(),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/auth/oidc/token", post(token))
        .route("/auth/oidc/{provider}/start", get(start))
        .route("/auth/oidc/{provider}/callback", get(callback))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(start, callback, token),
    components(schemas(SsoStartView, SsoTokenRequest))
)]
pub struct OidcDoc;

#[derive(Serialize, utoipa::ToSchema)]
pub struct SsoStartView {
    /// Open this in a browser to log in at the provider.
    pub authorize_url: String,
    /// Seconds the login stays open at the provider.
    pub expires_in: u64,
}

/// `POST /auth/oidc/token`: the code the browser brought back and the
/// verifier whose challenge started the login.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoTokenRequest {
    pub code: String,
    pub code_verifier: String,
}

type SsoExt = Option<Extension<Arc<Sso>>>;

fn sso(ext: SsoExt) -> Result<Arc<Sso>, ApiError> {
    ext.map(|Extension(s)| s)
        .ok_or(ApiError::NotFound("provider"))
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid("query", e.body_text()))
}

// ---- start -----------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/auth/oidc/{provider}/start", tag = "auth",
    params(("provider" = String, Path, description = "configured provider name"),
           ("format" = Option<String>, Query, description = "`json` for the CLI flow")),
    responses((status = 302, description = "to the provider's login"),
              (status = 200, body = SsoStartView), (status = 404, body = ErrorBody)))]
async fn start(
    Path(provider): Path<String>,
    ext: SsoExt,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let sso = sso(ext)?;
    let q = query(q)?;
    let cli = match q.get("format").map(String::as_str) {
        None => None,
        Some("json") => Some(cli_login(&q)?),
        Some(_) => return Err(ApiError::invalid("format", "must be `json` or absent")),
    };
    if cli.is_none() {
        for field in ["code_challenge", "code_challenge_method", "redirect_uri"] {
            if q.contains_key(field) {
                return Err(ApiError::invalid(
                    field,
                    "only for a CLI login (format=json)",
                ));
            }
        }
    }
    let client = sso.client(&provider)?;
    let (url, pending) = client.begin();
    let state = pending.state().to_owned();
    sso.pending.insert(pending).map_err(oidc_error)?;

    let now = Instant::now();
    let mut modes = lock(&sso.modes);
    modes.retain(|_, (at, _)| now.duration_since(*at) < PENDING_LOGIN_TTL);
    let Some(cli) = cli else {
        modes.insert(state.clone(), (now, Mode::Browser));
        drop(modes);
        let cookie = HeaderValue::from_str(&format!(
            "{STATE_COOKIE}={state}; HttpOnly; Secure; SameSite=Lax; Path={STATE_COOKIE_PATH}; Max-Age={}",
            PENDING_LOGIN_TTL.as_secs()
        ))
        .map_err(ApiError::internal)?;
        let location = HeaderValue::from_str(url.as_str()).map_err(ApiError::internal)?;
        return Ok((
            StatusCode::FOUND,
            [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
        )
            .into_response());
    };
    modes.insert(state, (now, Mode::Cli(cli)));
    drop(modes);
    Ok(Json(SsoStartView {
        authorize_url: url.to_string(),
        expires_in: PENDING_LOGIN_TTL.as_secs(),
    })
    .into_response())
}

/// The binding of a CLI login from `start`'s query: a challenge is
/// required (S256 only), a redirect is optional and loopback only.
fn cli_login(q: &HashMap<String, String>) -> Result<CliLogin, ApiError> {
    if let Some(method) = q.get("code_challenge_method") {
        if method != "S256" {
            return Err(ApiError::invalid(
                "code_challenge_method",
                "must be S256 or absent",
            ));
        }
    }
    let challenge = q.get("code_challenge").map(String::as_str).unwrap_or("");
    if !pkce::is_valid_challenge(challenge) {
        return Err(ApiError::invalid(
            "code_challenge",
            "required for a CLI login: base64url (43 characters) of the SHA-256 of a verifier the CLI keeps",
        ));
    }
    let redirect = match q.get("redirect_uri") {
        None => None,
        Some(raw) => Some(
            LoopbackRedirect::parse(raw).map_err(|rule| ApiError::invalid("redirect_uri", rule))?,
        ),
    };
    Ok(CliLogin {
        challenge: challenge.to_owned(),
        redirect,
    })
}

// ---- callback --------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/auth/oidc/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "configured provider name"),
           ("state" = String, Query, description = "from the provider's redirect"),
           ("code" = Option<String>, Query, description = "from the provider's redirect"),
           ("error" = Option<String>, Query, description = "when the provider ended the login")),
    responses((status = 303, description = "browser login done: session cookie set, to `/`; \
                 or CLI login with a loopback redirect: to it with `code` (or `error`)"),
              (status = 200, description = "CLI login without a redirect: a page showing the code to paste"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(clippy::too_many_arguments)]
async fn callback(
    State(hub): State<Hub>,
    Path(provider): Path<String>,
    Client(client): Client,
    headers: HeaderMap,
    ext: SsoExt,
    shield: Option<Extension<Shield>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let sso = sso(ext)?;
    let q = query(q)?;
    let refuse = |reason: &str, e: ApiError| {
        audit_failed(&provider, &client, reason);
        e
    };
    let oidc = sso.client(&provider)?;
    let Some(state) = q.get("state").filter(|s| !s.is_empty()) else {
        return Err(refuse(
            "missing_state",
            ApiError::invalid("state", "the provider's callback must carry a state"),
        ));
    };
    // Taken before anything else: a state works once, whatever follows.
    let pending = sso
        .pending
        .take(state)
        .map_err(|e| refuse(e.code(), oidc_error(e)))?;
    let mode = lock(&sso.modes).remove(state).map(|(_, m)| m);
    let Some(mode) = mode else {
        return Err(refuse(
            "oidc_unknown_state",
            oidc_error(OidcError::UnknownState),
        ));
    };

    let now = unix_now(shield.as_deref());
    let outcome = finish(
        &hub, &sso, oidc, pending, &q, &mode, &headers, state, &client, now,
    )
    .await;
    match (outcome, mode) {
        (Ok(done), _) => Ok(done),
        (
            Err((reason, _)),
            Mode::Cli(CliLogin {
                redirect: Some(to), ..
            }),
        ) => {
            // The CLI waits on its listener: tell it, so it stops at once.
            // Only the error code goes into the URL: a message may carry
            // what the provider said about the person (their address),
            // and a URL lands in browser history and logs.
            audit_failed(&provider, &client, reason);
            let location = HeaderValue::from_str(&to.with_query(&[("error", reason)]))
                .map_err(ApiError::internal)?;
            Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
        }
        (Err((reason, e)), _) => {
            audit_failed(&provider, &client, reason);
            Err(e)
        }
    }
}

type Refusal = (&'static str, ApiError);

#[allow(clippy::too_many_arguments)]
async fn finish(
    hub: &Hub,
    sso: &Sso,
    oidc: &OidcClient,
    pending: identity::oidc::PendingLogin,
    q: &HashMap<String, String>,
    mode: &Mode,
    headers: &HeaderMap,
    state: &str,
    client: &ClientInfo,
    now: u64,
) -> Result<Response, Refusal> {
    if let Mode::Browser = mode {
        let bound =
            state_cookie(headers).is_some_and(|c| bool::from(c.as_bytes().ct_eq(state.as_bytes())));
        if !bound {
            return Err((
                "browser_mismatch",
                ApiError::Csrf("a single sign-on login must finish in the browser that started it"),
            ));
        }
    }
    if let Some(error) = q.get("error") {
        let e = OidcError::from_callback_error(error);
        return Err((e.code(), oidc_error(e)));
    }
    let code = q.get("code").map(String::as_str).unwrap_or("");
    if code.is_empty() {
        return Err((
            "missing_code",
            ApiError::invalid("code", "the provider's callback must carry a code"),
        ));
    }
    let who = oidc
        .complete(pending, code)
        .await
        .map_err(|e| (e.code(), oidc_error(e)))?;
    let user = hub
        .store()
        .user_by_email(&who.email)
        .await
        .map_err(|e| ("store", ApiError::from(e)))?;
    let Some(user) = user else {
        return Err((
            "unknown_email",
            // The address is not echoed: answers end up in URLs, browser
            // history and proxy logs.
            ApiError::Refused(
                "no account has the email the provider returned; an admin must create the user before it can log in with single sign-on"
                    .to_owned(),
            ),
        ));
    };
    if user.disabled {
        return Err((
            "user_disabled",
            ApiError::Refused("this account is disabled".to_owned()),
        ));
    }
    // Limitation: a user with TOTP enabled is not asked for a code after
    // single sign-on (the TOTP login step would have to accept SSO logins).
    let result = match mode {
        Mode::Browser => {
            let login = hub
                .identity()
                .start_browser_session(&user, client)
                .await
                .map_err(|e| ("session", ApiError::from(e)))?;
            let max_age = hub.identity().config().browser_absolute.as_secs();
            let mut out = HeaderMap::new();
            let session = format!(
                "{SESSION_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}",
                login.cookie
            );
            let clear = format!(
                "{STATE_COOKIE}=; HttpOnly; Secure; SameSite=Lax; Path={STATE_COOKIE_PATH}; Max-Age=0"
            );
            for cookie in [session, clear] {
                out.append(
                    header::SET_COOKIE,
                    HeaderValue::from_str(&cookie)
                        .map_err(|e| ("cookie", ApiError::internal(e)))?,
                );
            }
            out.insert(header::LOCATION, HeaderValue::from_static("/"));
            (StatusCode::SEE_OTHER, out).into_response()
        }
        Mode::Cli(cli) => {
            // No session yet: the CLI makes it with the code and its
            // verifier, so whoever only finished the browser part (a
            // phished victim, or someone who saw the link) gets nothing.
            let code = Identity::new_secret_token();
            let mut codes = lock(&sso.codes);
            codes.retain(|_, c| now.saturating_sub(c.issued_at) < CLI_CODE_TTL.as_secs());
            if codes.len() >= MAX_CLI_CODES {
                return Err((
                    "too_many_codes",
                    ApiError::Unavailable("too many logins in flight; try again later".into()),
                ));
            }
            codes.insert(
                code_key(&code),
                IssuedCode {
                    issued_at: now,
                    user: user.id,
                    provider: oidc.name().to_owned(),
                    challenge: cli.challenge.clone(),
                },
            );
            drop(codes);
            tracing::info!(
                target: "spinforge::audit", event = "auth.sso_code_issued", method = "sso",
                provider = %oidc.name(), subject = ?who.email, user = %user.id,
                client_ip = %client.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                "single sign-on: one-time code for the CLI"
            );
            return match &cli.redirect {
                Some(to) => {
                    let location = HeaderValue::from_str(&to.with_query(&[("code", &code)]))
                        .map_err(|e| ("redirect", ApiError::internal(e)))?;
                    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
                }
                None => Ok(code_page(&code)),
            };
        }
    };
    tracing::info!(
        target: "spinforge::audit", event = "auth.succeeded", method = "sso",
        provider = %oidc.name(), subject = ?who.email, user = %user.id,
        client_ip = %client.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "single sign-on login"
    );
    Ok(result)
}

fn state_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == STATE_COOKIE)
        .map(|(_, value)| value)
}

fn audit_failed(provider: &str, client: &ClientInfo, reason: &str) {
    tracing::info!(
        target: "spinforge::audit", event = "auth.failed", method = "sso",
        provider = ?provider, reason = ?reason,
        client_ip = %client.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "single sign-on login refused"
    );
}

/// The API's answer for a refused login: the user's fault is a 400 or 403
/// with the reason; the provider's is a 503 without its details.
fn oidc_error(e: OidcError) -> ApiError {
    match e {
        OidcError::UnknownState => ApiError::invalid("state", e.to_string()),
        OidcError::CodeRejected(_) => ApiError::invalid("code", e.to_string()),
        OidcError::TooManyPendingLogins => ApiError::Unavailable(e.to_string()),
        OidcError::Config { .. } | OidcError::Discovery(_) | OidcError::Upstream(_) => {
            tracing::warn!(error = %e, "single sign-on provider failed");
            ApiError::Unavailable("the login provider failed; try again later".to_owned())
        }
        other => ApiError::Refused(other.to_string()),
    }
}

// ---- the CLI's code ----------------------------------------------------------

/// The page that shows a CLI login's code for pasting. It warns, because
/// this is the one step a phisher needs the victim to do for them.
fn code_page(code: &str) -> Response {
    // The code is base64url: nothing in it needs HTML escaping.
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <title>SpinForge login code</title></head><body>\
         <h1>Your one-time login code</h1>\
         <p><code id=\"code\">{code}</code></p>\
         <p>Paste it into the <code>spinforge login --sso</code> command that \
         <strong>you</strong> started on your own machine. It works for {} \
         seconds, once.</p>\
         <p><strong>Warning: never give this code to anyone</strong>, and do \
         not paste it into a chat, a web page or an e-mail. Whoever holds it \
         together with the login they started gets your account. If you did \
         not just start a login yourself, close this page.</p>\
         </body></html>",
        CLI_CODE_TTL.as_secs()
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page,
    )
        .into_response()
}

#[utoipa::path(post, path = "/api/v1/auth/oidc/token", tag = "auth",
    request_body = SsoTokenRequest,
    responses((status = 200, body = TokenPairView, description = "once per code"),
              (status = 400, body = ErrorBody, description = "unknown, used or expired code, \
                 or a verifier that does not match the login's challenge"),
              (status = 403, body = ErrorBody)))]
async fn token(
    State(hub): State<Hub>,
    Client(client): Client,
    ext: SsoExt,
    shield: Option<Extension<Shield>>,
    ApiJson(req): ApiJson<SsoTokenRequest>,
) -> Result<Json<TokenPairView>, ApiError> {
    let sso = sso(ext)?;
    let refuse = |provider: &str, reason: &str, e: ApiError| {
        audit_failed(provider, &client, reason);
        e
    };
    if req.code.is_empty() || req.code.len() > 128 {
        return Err(refuse(
            "",
            "bad_code",
            ApiError::invalid(
                "code",
                "must be the 1 to 128 character code the browser showed",
            ),
        ));
    }
    if !pkce::is_valid_verifier(&req.code_verifier) {
        return Err(refuse(
            "",
            "bad_verifier",
            ApiError::invalid(
                "code_verifier",
                "must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
            ),
        ));
    }

    // Taken before it is checked: a code is tried once, right or wrong.
    let now = unix_now(shield.as_deref());
    let issued = lock(&sso.codes).remove(&code_key(&req.code));
    let Some(issued) = issued else {
        return Err(refuse(
            "",
            "unknown_code",
            ApiError::invalid("code", "unknown or already used"),
        ));
    };
    let provider = issued.provider.as_str();
    if now.saturating_sub(issued.issued_at) >= CLI_CODE_TTL.as_secs() {
        return Err(refuse(
            provider,
            "expired_code",
            ApiError::invalid("code", "expired; start the login again"),
        ));
    }
    let challenge = pkce::pkce_challenge(&req.code_verifier);
    if !bool::from(challenge.as_bytes().ct_eq(issued.challenge.as_bytes())) {
        return Err(refuse(
            provider,
            "verifier_mismatch",
            ApiError::invalid(
                "code_verifier",
                "does not match the challenge the login was started with",
            ),
        ));
    }

    let user = hub.store().user_by_id(issued.user).await?;
    let Some(user) = user.filter(|u| !u.disabled) else {
        return Err(refuse(
            provider,
            "user_disabled",
            ApiError::Refused("this account is disabled or gone".to_owned()),
        ));
    };
    let pair = hub.identity().start_token_session(&user, &client).await?;
    tracing::info!(
        target: "spinforge::audit", event = "auth.succeeded", method = "sso",
        provider = %provider, user = %user.id,
        client_ip = %client.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "single sign-on login (CLI)"
    );
    Ok(Json(TokenPairView::from(pair)))
}
