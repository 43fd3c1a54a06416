//! Single sign-on routes: start a login at a configured OpenID Connect (or
//! GitHub) provider, take its callback, link the verified email to an
//! existing user and start a session.
//!
//! Two ways to finish:
//! - **browser**: `start` redirects to the provider and sets a short-lived
//!   `sf_oidc_state` cookie binding the login to this browser (login CSRF);
//!   the callback sets the session cookie and redirects to `/`.
//! - **CLI** (`start?format=json`): `start` answers with the authorize URL
//!   and a secret login id; the user opens the URL in any browser, and the
//!   CLI polls `poll/{login_id}` until it gets a token pair, once.
//!
//! Accounts are never created here: an email without a user is refused, as
//! is a disabled user. Each outcome is an audit event `auth.succeeded` or
//! `auth.failed` with `method = "sso"`, the provider and the client IP.
//! All three routes are `Public` in [`crate::access::ROUTES`].

use crate::access::{Client, SESSION_COOKIE};
use crate::error::{ApiError, ErrorBody};
use crate::identity_api::TokenPairView;
use crate::Hub;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use identity::oidc::{OidcClient, OidcError, OidcProviderConfig, PendingLogins, PENDING_LOGIN_TTL};
use identity::{ClientInfo, Identity, TokenPair};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// The cookie that binds a browser login to the browser that started it.
/// `SameSite=Lax`: it must come back on the provider's top-level redirect.
pub const STATE_COOKIE: &str = "sf_oidc_state";
const STATE_COOKIE_PATH: &str = "/api/v1/auth/oidc";

/// The configured providers and the logins in flight. Put on the router as
/// an `Extension<Arc<Sso>>`; without it every provider is unknown.
pub struct Sso {
    clients: HashMap<String, OidcClient>,
    pending: PendingLogins,
    /// How each pending login (by its `state`) finishes.
    modes: Mutex<HashMap<String, (Instant, Mode)>>,
    /// CLI logins by the SHA-256 of their login id.
    cli: Mutex<HashMap<[u8; 32], (Instant, CliState)>>,
}

#[derive(Clone)]
enum Mode {
    Browser,
    Cli { key: [u8; 32] },
}

enum CliState {
    Waiting,
    Done(TokenPair),
    Refused(String),
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
            cli: Mutex::new(HashMap::new()),
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

fn login_key(login_id: &str) -> [u8; 32] {
    Sha256::digest(login_id.as_bytes()).into()
}

pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/auth/oidc/poll/{login_id}", get(poll))
        .route("/auth/oidc/{provider}/start", get(start))
        .route("/auth/oidc/{provider}/callback", get(callback))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(start, callback, poll),
    components(schemas(SsoStartView, SsoDoneView))
)]
pub struct OidcDoc;

#[derive(Serialize, utoipa::ToSchema)]
pub struct SsoStartView {
    /// Open this in a browser to log in at the provider.
    pub authorize_url: String,
    /// Secret: whoever holds it receives the tokens. Poll with it.
    pub login_id: String,
    pub poll_url: String,
    /// Seconds the login stays open.
    pub expires_in: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SsoDoneView {
    pub status: String,
    pub message: String,
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
        None => false,
        Some("json") => true,
        Some(_) => return Err(ApiError::invalid("format", "must be `json` or absent")),
    };
    let client = sso.client(&provider)?;
    let (url, pending) = client.begin();
    let state = pending.state().to_owned();
    sso.pending.insert(pending).map_err(oidc_error)?;

    let now = Instant::now();
    let mut modes = lock(&sso.modes);
    modes.retain(|_, (at, _)| now.duration_since(*at) < PENDING_LOGIN_TTL);
    if !cli {
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
    }
    let login_id = Identity::new_secret_token();
    let key = login_key(&login_id);
    modes.insert(state, (now, Mode::Cli { key }));
    drop(modes);
    let mut waiting = lock(&sso.cli);
    waiting.retain(|_, (at, _)| now.duration_since(*at) < PENDING_LOGIN_TTL);
    waiting.insert(key, (now, CliState::Waiting));
    drop(waiting);
    Ok(Json(SsoStartView {
        authorize_url: url.to_string(),
        poll_url: format!("/api/v1/auth/oidc/poll/{login_id}"),
        login_id,
        expires_in: PENDING_LOGIN_TTL.as_secs(),
    })
    .into_response())
}

// ---- callback --------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/auth/oidc/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "configured provider name"),
           ("state" = String, Query, description = "from the provider's redirect"),
           ("code" = Option<String>, Query, description = "from the provider's redirect"),
           ("error" = Option<String>, Query, description = "when the provider ended the login")),
    responses((status = 303, description = "browser login done: session cookie set, to `/`"),
              (status = 200, body = SsoDoneView, description = "CLI login done"),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn callback(
    State(hub): State<Hub>,
    Path(provider): Path<String>,
    Client(client): Client,
    headers: HeaderMap,
    ext: SsoExt,
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

    let outcome = finish(
        &hub, &sso, oidc, pending, &q, &mode, &headers, state, &client,
    )
    .await;
    match (outcome, mode) {
        (Ok(done), _) => Ok(done),
        (Err((reason, e)), Mode::Cli { key }) => {
            audit_failed(&provider, &client, reason);
            if let Some(slot) = lock(&sso.cli).get_mut(&key) {
                slot.1 = CliState::Refused(e.to_string());
            }
            Err(e)
        }
        (Err((reason, e)), Mode::Browser) => {
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
            ApiError::Refused(format!(
                "no account has the email {}; an admin must create the user before it can log in with single sign-on",
                who.email
            )),
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
        Mode::Cli { key } => {
            let pair = hub
                .identity()
                .start_token_session(&user, client)
                .await
                .map_err(|e| ("session", ApiError::from(e)))?;
            if let Some(slot) = lock(&sso.cli).get_mut(key) {
                slot.1 = CliState::Done(pair);
            } else {
                return Err(("cli_login_expired", oidc_error(OidcError::UnknownState)));
            }
            Json(SsoDoneView {
                status: "ok".to_owned(),
                message: "logged in; return to the command line".to_owned(),
            })
            .into_response()
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

// ---- poll ------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/auth/oidc/poll/{login_id}", tag = "auth",
    params(("login_id" = String, Path, description = "from `start?format=json`")),
    responses((status = 200, body = TokenPairView, description = "once"),
              (status = 202, body = SsoDoneView, description = "not finished yet"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn poll(Path(login_id): Path<String>, ext: SsoExt) -> Result<Response, ApiError> {
    let sso = sso(ext)?;
    let key = login_key(&login_id);
    let mut waiting = lock(&sso.cli);
    let now = Instant::now();
    waiting.retain(|_, (at, _)| now.duration_since(*at) < PENDING_LOGIN_TTL);
    match waiting.get(&key) {
        None => Err(ApiError::NotFound("login")),
        Some((_, CliState::Waiting)) => Ok((
            StatusCode::ACCEPTED,
            Json(SsoDoneView {
                status: "pending".to_owned(),
                message: "the login has not finished in the browser yet".to_owned(),
            }),
        )
            .into_response()),
        Some(_) => match waiting.remove(&key) {
            Some((_, CliState::Done(pair))) => Ok(Json(TokenPairView::from(pair)).into_response()),
            Some((_, CliState::Refused(message))) => Err(ApiError::Refused(message)),
            _ => Err(ApiError::NotFound("login")),
        },
    }
}
