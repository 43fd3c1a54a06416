//! The identity routes of the API: setup, login (tokens and browser
//! sessions), refresh, logout, users, sessions, API keys, signing keys and
//! the JWKS. Access for each is declared in [`crate::access::ROUTES`];
//! ownership is checked here through [`Hub::authorize`].

use crate::access::{same_origin, session_cookie, Caller, Client, SESSION_COOKIE};
use crate::api::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::Hub;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use identity::{AuthMethod, NewApiKey, Permission, Resource, SecondFactor, UserSpec};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use store::{ApiKeyRecord, Role, Session, User, UserChange, UserId};
use subtle::ConstantTimeEq;

pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/setup", post(setup))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/session", post(browser_login).delete(browser_logout))
        .route("/csrf-token", get(csrf_token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/whoami", get(whoami))
        .route("/users", get(list_users).post(create_user))
        .route("/users/me", get(show_me).patch(update_me))
        .route(
            "/users/{id}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/users/{id}/sessions", delete(revoke_user_sessions))
        .route("/users/{id}/lock", delete(unlock_user))
        .route("/users/{id}/totp", delete(remove_user_totp))
        .route("/users/me/totp", post(totp_begin).delete(totp_remove))
        .route("/users/me/totp/confirm", post(totp_confirm))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", delete(revoke_session))
        .route("/apikeys", get(list_api_keys).post(create_api_key))
        .route("/apikeys/{id}", delete(revoke_api_key))
        .route("/keys/signing/rotate", post(rotate_signing_key))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        setup,
        login,
        refresh,
        logout,
        browser_login,
        browser_logout,
        csrf_token,
        jwks,
        whoami,
        list_users,
        create_user,
        show_me,
        update_me,
        show_user,
        update_user,
        delete_user,
        revoke_user_sessions,
        unlock_user,
        remove_user_totp,
        totp_begin,
        totp_confirm,
        totp_remove,
        list_sessions,
        revoke_session,
        list_api_keys,
        create_api_key,
        revoke_api_key,
        rotate_signing_key
    ),
    components(schemas(
        TokenPairView,
        UserView,
        SessionView,
        ApiKeyView,
        ApiKeyCreatedView,
        WhoamiView,
        BrowserSessionView
    ))
)]
pub struct IdentityDoc;

// ---- shapes ----------------------------------------------------------------

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPairView {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

impl From<identity::TokenPair> for TokenPairView {
    fn from(pair: identity::TokenPair) -> TokenPairView {
        TokenPairView {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: pair.token_type.to_owned(),
            expires_in: pair.expires_in,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub role: String,
    /// The customer's name; absent for platform admins.
    pub customer: Option<String>,
    pub name: Option<String>,
    pub disabled: bool,
    pub totp_enabled: bool,
    pub created_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: String,
    /// `token` (CLI, scripts) or `browser`.
    pub kind: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// True for the session making this request.
    pub current: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub user_id: i64,
    pub permissions: Vec<String>,
    pub sites: Option<Vec<String>>,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    pub revoked: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyCreatedView {
    /// The key itself. It is shown this once and stored only as a hash.
    pub key: String,
    #[serde(flatten)]
    pub details: ApiKeyView,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WhoamiView {
    pub user: UserView,
    pub permissions: Vec<String>,
    /// `bearer`, `cookie` or `api_key`.
    pub method: String,
    pub api_key: Option<String>,
    pub sites: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BrowserSessionView {
    /// Send it back in the `X-CSRF-Token` header with every change.
    pub csrf_token: String,
    pub expires_at: String,
}

/// No `Debug`: the password must never reach a log line.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// The current TOTP code, for accounts with a second factor.
    pub totp: Option<String>,
    /// A recovery code instead of a TOTP code; each works once.
    pub recovery_code: Option<String>,
}

impl LoginRequest {
    fn second_factor(&self) -> Option<SecondFactor> {
        match (&self.totp, &self.recovery_code) {
            (Some(code), _) => Some(SecondFactor::Totp(code.clone())),
            (None, Some(code)) => Some(SecondFactor::RecoveryCode(code.clone())),
            (None, None) => None,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCodeRequest {
    /// A current 6-digit code from the authenticator app.
    pub code: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    pub token: String,
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    pub password: String,
    /// `admin`, `developer` or `viewer`.
    pub role: String,
    /// The customer's name, created on first use; required unless admin.
    pub customer: Option<String>,
    pub name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub email: Option<String>,
    pub password: Option<String>,
    pub role: Option<String>,
    pub customer: Option<String>,
    pub name: Option<String>,
    pub disabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    pub email: Option<String>,
    pub password: Option<String>,
    /// Required to change the email or the password.
    pub current_password: Option<String>,
    pub name: Option<String>,
    /// Never changeable here; present only to refuse it clearly.
    pub role: Option<serde_json::Value>,
    /// Never changeable here; present only to refuse it clearly.
    pub customer: Option<serde_json::Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// Permission names, a subset of the caller's.
    pub permissions: Vec<String>,
    /// Limit the key to these sites.
    pub sites: Option<Vec<String>>,
    /// Default 90.
    pub expires_in_days: Option<u64>,
}

// ---- helpers ---------------------------------------------------------------

fn rfc3339(unix: i64) -> String {
    crate::api::rfc3339(unix)
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::from_name(role)
        .ok_or_else(|| ApiError::invalid("role", "must be one of admin, developer, viewer"))
}

pub(crate) fn parse_user_id(id: &str) -> Result<UserId, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(UserId)
        .ok_or_else(|| ApiError::invalid("id", "must be a positive user id"))
}

pub(crate) async fn user_view(hub: &Hub, user: User) -> Result<UserView, ApiError> {
    let customer = match user.customer {
        Some(id) => hub.store().customer_by_id(id).await?.map(|c| c.name),
        None => None,
    };
    Ok(UserView {
        id: user.id.0,
        email: user.email,
        role: user.role.as_str().to_owned(),
        customer,
        name: user.display_name,
        disabled: user.disabled,
        totp_enabled: user.totp_secret.is_some(),
        created_at: rfc3339(user.created_at),
    })
}

pub(crate) fn session_view(session: Session, current: Option<&str>) -> SessionView {
    SessionView {
        current: current == Some(session.id.as_str()),
        id: session.id,
        kind: session.kind.as_str().to_owned(),
        created_at: rfc3339(session.created_at),
        last_seen_at: rfc3339(session.last_seen_at),
        expires_at: rfc3339(session.expires_at),
        client_ip: session.client_ip,
        user_agent: session.user_agent,
    }
}

pub(crate) fn api_key_view(key: ApiKeyRecord) -> ApiKeyView {
    ApiKeyView {
        id: key.id,
        name: key.name,
        user_id: key.user_id.0,
        permissions: key.permissions,
        sites: key.sites,
        created_at: rfc3339(key.created_at),
        expires_at: rfc3339(key.expires_at),
        last_used_at: key.last_used_at.map(rfc3339),
        revoked: key.revoked_at.is_some(),
    }
}

pub(crate) async fn user_or_404(hub: &Hub, id: UserId) -> Result<User, ApiError> {
    hub.store()
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound("user"))
}

/// Refuses a change that would leave no enabled admin: the platform would
/// have nobody left to manage it.
async fn keep_an_admin(hub: &Hub, target: &User, stays_admin: bool) -> Result<(), ApiError> {
    if target.role != Role::Admin || stays_admin {
        return Ok(());
    }
    let others = hub
        .store()
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.id != target.id && u.role == Role::Admin && !u.disabled)
        .count();
    if others == 0 {
        return Err(ApiError::Conflict {
            field: "role",
            message: "this is the last enabled admin".into(),
        });
    }
    Ok(())
}

/// An identity change about the user `target`: the resource names them
/// by id (a pseudonym once they are erased), and with `details` the
/// event also keeps the address and name they were given, which the
/// audit log seals under the target's own key, not the actor's.
fn audit_user_change(event: &'static str, actor: &Caller, target: &User, details: bool) {
    let (email, name) = if details {
        (Some(target.email.as_str()), target.display_name.as_deref())
    } else {
        (None, None)
    };
    tracing::info!(
        target: "spinforge::audit", event, user = %actor.0.user_id,
        api_key = actor.0.api_key.as_deref().unwrap_or(""), target = %target.id,
        resource = %format!("user:{}", target.id), target_user = target.id.0,
        target_email = email, target_name = name,
        "identity change"
    );
}

fn audit_change(event: &'static str, actor: &Caller, target: impl std::fmt::Display) {
    tracing::info!(
        target: "spinforge::audit", event, user = %actor.0.user_id,
        api_key = actor.0.api_key.as_deref().unwrap_or(""), target = %target,
        "identity change"
    );
}

// ---- login -----------------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/setup", request_body = SetupRequest, tag = "auth",
    responses((status = 201, body = TokenPairView), (status = 403, body = ErrorBody),
        (status = 409, description = "an account already exists", body = ErrorBody)))]
async fn setup(
    State(hub): State<Hub>,
    Client(client): Client,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<(StatusCode, Json<TokenPairView>), ApiError> {
    // The token is taken under the lock, so two requests racing with it
    // cannot both create an admin; it is put back if creation fails.
    let taken = {
        let mut slot = hub.lock_setup();
        let matches = slot
            .as_deref()
            .is_some_and(|token| bool::from(token.as_bytes().ct_eq(req.token.as_bytes())));
        if matches {
            slot.take()
        } else {
            None
        }
    };
    let Some(token) = taken else {
        tracing::info!(target: "spinforge::audit", event = "setup.denied", "bad setup token");
        return Err(ApiError::Forbidden);
    };
    if hub.store().count_users().await? > 0 {
        // The caller holds the token, so telling it why is no leak; the
        // token is spent either way.
        return Err(ApiError::Conflict {
            field: "token",
            message: "setup is already done: an account exists; log in instead".into(),
        });
    }
    let spec = UserSpec {
        email: req.email.clone(),
        password: req.password.clone(),
        role: Role::Admin,
        customer: None,
        display_name: None,
    };
    let created = hub.identity().create_user(spec).await;
    if created.is_err() {
        *hub.lock_setup() = Some(token);
    }
    let user = created?;
    let pair = hub.identity().start_token_session(&user, &client).await?;
    tracing::info!(target: "spinforge::audit", event = "user.created", user = %user.id,
        "first admin created with the setup token");
    Ok((StatusCode::CREATED, Json(pair.into())))
}

#[utoipa::path(post, path = "/api/v1/auth/login", request_body = LoginRequest, tag = "auth",
    responses((status = 200, body = TokenPairView,
                 description = "also sets the `sf_device` cookie (device proof)"),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(
    State(hub): State<Hub>,
    Client(client): Client,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let factor = req.second_factor();
    let (user, pair) = hub
        .identity()
        .login(&req.email, req.password, factor.as_ref(), &client)
        .await?;
    let device = device_cookie_header(&hub, &user.email)?;
    Ok((
        [(header::SET_COOKIE, device)],
        Json(TokenPairView::from(pair)),
    )
        .into_response())
}

/// The `sf_device` cookie after a successful password login: the device
/// proof that lets this device log in while the account is guarded
/// against a distributed guessing attack (see `identity::lockout`).
// Limitation: the CLI does not keep this cookie, so its password login is
// refused while the account is guarded (store it with the CLI's login to
// lift).
fn device_cookie_header(hub: &Hub, email: &str) -> Result<HeaderValue, ApiError> {
    use identity::lockout::{DEVICE_COOKIE, DEVICE_PROOF_TTL};
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/api/v1/auth; Max-Age={}",
        hub.identity().issue_device_proof(email),
        DEVICE_PROOF_TTL.as_secs()
    ))
    .map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", request_body = RefreshRequest, tag = "auth",
    responses((status = 200, body = TokenPairView), (status = 401, body = ErrorBody)))]
async fn refresh(
    State(hub): State<Hub>,
    Client(client): Client,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPairView>, ApiError> {
    Ok(Json(
        hub.identity()
            .refresh(&req.refresh_token, &client)
            .await?
            .into(),
    ))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn logout(State(hub): State<Hub>, caller: Caller) -> Result<StatusCode, ApiError> {
    hub.identity().logout(&caller.0).await?;
    audit_change("auth.logout", &caller, caller.0.user_id);
    Ok(StatusCode::NO_CONTENT)
}

fn session_cookie_header(value: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"
    ))
    .map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/api/v1/auth/session", request_body = LoginRequest, tag = "auth",
    responses((status = 201, body = BrowserSessionView), (status = 401, body = ErrorBody)))]
async fn browser_login(
    State(hub): State<Hub>,
    Client(client): Client,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    // Login CSRF: a foreign page must not log the browser into an
    // account of the attacker's choosing.
    if headers.contains_key(header::ORIGIN) && !same_origin(&headers) {
        return Err(ApiError::Csrf("a browser login must come from this origin"));
    }
    let factor = req.second_factor();
    let (user, login) = hub
        .identity()
        .login_browser(&req.email, req.password, factor.as_ref(), &client)
        .await?;
    let max_age = hub.identity().config().browser_absolute.as_secs();
    let cookie = session_cookie_header(&login.cookie, max_age)?;
    let device = device_cookie_header(&hub, &user.email)?;
    let body = BrowserSessionView {
        csrf_token: login.csrf_token,
        expires_at: rfc3339(login.session.expires_at),
    };
    // Appended, not inserted: an array of header pairs would keep only
    // the last `Set-Cookie`.
    let mut cookies = HeaderMap::new();
    cookies.append(header::SET_COOKIE, cookie);
    cookies.append(header::SET_COOKIE, device);
    Ok((StatusCode::CREATED, cookies, Json(body)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/auth/session", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn browser_logout(State(hub): State<Hub>, caller: Caller) -> Result<Response, ApiError> {
    hub.identity().logout(&caller.0).await?;
    let expired = session_cookie_header("", 0)?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, expired)]).into_response())
}

#[utoipa::path(get, path = "/api/v1/csrf-token", tag = "auth",
    responses((status = 200, body = BrowserSessionView), (status = 400, body = ErrorBody)))]
async fn csrf_token(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cookie = session_cookie(&headers).filter(|_| caller.0.method == AuthMethod::Cookie);
    let Some(cookie) = cookie else {
        return Err(ApiError::invalid(
            "cookie",
            "CSRF tokens belong to browser sessions; bearer requests need none",
        ));
    };
    Ok(Json(
        serde_json::json!({ "csrf_token": hub.identity().csrf_token(cookie) }),
    ))
}

#[utoipa::path(get, path = "/api/v1/.well-known/jwks.json", tag = "auth",
    responses((status = 200)))]
async fn jwks(State(hub): State<Hub>) -> Json<serde_json::Value> {
    Json(hub.identity().jwks())
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoamiView), (status = 401, body = ErrorBody)))]
async fn whoami(State(hub): State<Hub>, caller: Caller) -> Result<Json<WhoamiView>, ApiError> {
    let user = user_or_404(&hub, caller.0.user_id).await?;
    let method = match caller.0.method {
        AuthMethod::Bearer => "bearer",
        AuthMethod::Cookie => "cookie",
        AuthMethod::ApiKey => "api_key",
    };
    Ok(Json(WhoamiView {
        user: user_view(&hub, user).await?,
        permissions: caller
            .0
            .permissions
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        method: method.to_owned(),
        api_key: caller.0.api_key.clone(),
        sites: caller.0.sites.clone(),
    }))
}

// ---- users -----------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = [UserView]), (status = 403, body = ErrorBody)))]
async fn list_users(State(hub): State<Hub>, _: Caller) -> Result<Json<Vec<UserView>>, ApiError> {
    let mut views = Vec::new();
    for user in hub.store().list_users().await? {
        views.push(user_view(&hub, user).await?);
    }
    Ok(Json(views))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUserRequest, tag = "users",
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn create_user(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let role = parse_role(&req.role)?;
    let user = hub
        .identity()
        .create_user(UserSpec {
            email: req.email,
            password: req.password,
            role,
            customer: req.customer,
            display_name: req.name,
        })
        .await?;
    audit_user_change("user.created", &caller, &user, true);
    Ok((StatusCode::CREATED, Json(user_view(&hub, user).await?)))
}

#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
async fn show_me(State(hub): State<Hub>, caller: Caller) -> Result<Json<UserView>, ApiError> {
    let user = user_or_404(&hub, caller.0.user_id).await?;
    Ok(Json(user_view(&hub, user).await?))
}

#[utoipa::path(patch, path = "/api/v1/users/me", request_body = UpdateMeRequest, tag = "users",
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn update_me(
    State(hub): State<Hub>,
    caller: Caller,
    Client(client): Client,
    ApiJson(req): ApiJson<UpdateMeRequest>,
) -> Result<Json<UserView>, ApiError> {
    if req.role.is_some() || req.customer.is_some() {
        tracing::info!(
            target: "spinforge::audit", event = "permission.denied", user = %caller.0.user_id,
            reason = "tried to change own role or customer", path = "/api/v1/users/me",
            "permission denied"
        );
        return Err(ApiError::Escalation(
            "role and customer: users cannot change their own; ask an admin".into(),
        ));
    }
    let user = user_or_404(&hub, caller.0.user_id).await?;
    if req.email.is_some() || req.password.is_some() {
        // The same throttle, lockout and audit as a login: a stolen token
        // must not become a password oracle.
        let current = req.current_password.unwrap_or_default();
        match hub
            .identity()
            .confirm_password(&user, current, &client)
            .await
        {
            Ok(()) => {}
            Err(identity::IdentityError::BadCredentials) => {
                return Err(ApiError::invalid(
                    "current_password",
                    "is required and must match to change the email or password",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let change = UserChange {
        display_name: req.name.map(Some),
        ..UserChange::default()
    };
    let user = hub
        .identity()
        .update_user(user.id, req.email.as_deref(), req.password, change)
        .await?;
    audit_user_change("user.updated", &caller, &user, true);
    Ok(Json(user_view(&hub, user).await?))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn show_user(
    State(hub): State<Hub>,
    _: Caller,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = user_or_404(&hub, parse_user_id(&id)?).await?;
    Ok(Json(user_view(&hub, user).await?))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", request_body = UpdateUserRequest,
    tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn update_user(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    // One change of users at a time, so two admins cannot demote each
    // other past the last-admin check.
    let _serial = hub.lock_user_changes().await;
    let target = user_or_404(&hub, parse_user_id(&id)?).await?;
    let role = req.role.as_deref().map(parse_role).transpose()?;
    let customer = match req.customer.as_deref() {
        Some("") => Some(None),
        Some(name) => Some(Some(hub.identity().customer_named(name).await?)),
        None => None,
    };
    let new_role = role.unwrap_or(target.role);
    let new_customer = customer.unwrap_or(target.customer);
    if new_role != Role::Admin && new_customer.is_none() {
        return Err(ApiError::invalid(
            "customer",
            "is required for developers and viewers",
        ));
    }
    let stays_admin = new_role == Role::Admin && !req.disabled.unwrap_or(target.disabled);
    keep_an_admin(&hub, &target, stays_admin).await?;
    let change = UserChange {
        role,
        customer,
        display_name: req.name.map(Some),
        disabled: req.disabled,
        ..UserChange::default()
    };
    let user = hub
        .identity()
        .update_user(target.id, req.email.as_deref(), req.password, change)
        .await?;
    audit_user_change("user.updated", &caller, &user, true);
    Ok(Json(user_view(&hub, user).await?))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_user(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _serial = hub.lock_user_changes().await;
    let target = user_or_404(&hub, parse_user_id(&id)?).await?;
    keep_an_admin(&hub, &target, false).await?;
    hub.store().delete_user(target.id).await?;
    audit_user_change("user.deleted", &caller, &target, false);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/users/{id}/sessions", tag = "users",
    params(("id" = i64, Path)),
    responses((status = 200), (status = 404, body = ErrorBody)))]
async fn revoke_user_sessions(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = user_or_404(&hub, parse_user_id(&id)?).await?;
    let revoked = hub.identity().revoke_all_sessions(target.id).await?;
    audit_user_change("session.revoked_all", &caller, &target, false);
    Ok(Json(serde_json::json!({ "revoked": revoked })))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}/lock", tag = "users",
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn unlock_user(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let target = user_or_404(&hub, parse_user_id(&id)?).await?;
    hub.identity().unlock(&target.email).await?;
    audit_user_change("auth.unlocked", &caller, &target, false);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/users/{id}/totp", tag = "users",
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove_user_totp(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let target = user_or_404(&hub, parse_user_id(&id)?).await?;
    hub.identity().totp_remove(&target).await?;
    audit_user_change("auth.totp_reset", &caller, &target, false);
    Ok(StatusCode::NO_CONTENT)
}

// ---- second factor ---------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/users/me/totp", tag = "users",
    responses((status = 200), (status = 401, body = ErrorBody)))]
async fn totp_begin(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user_or_404(&hub, caller.0.user_id).await?;
    let enrolment = hub.identity().totp_begin(&user).await?;
    Ok(Json(serde_json::json!({
        "secret": enrolment.secret_base32,
        "otpauth_url": enrolment.otpauth_url,
    })))
}

#[utoipa::path(post, path = "/api/v1/users/me/totp/confirm", request_body = TotpCodeRequest,
    tag = "users", responses((status = 200), (status = 400, body = ErrorBody)))]
async fn totp_confirm(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(req): ApiJson<TotpCodeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user_or_404(&hub, caller.0.user_id).await?;
    let codes = hub.identity().totp_confirm(&user, &req.code).await?;
    Ok(Json(serde_json::json!({ "recovery_codes": codes })))
}

#[utoipa::path(delete, path = "/api/v1/users/me/totp", request_body = TotpCodeRequest,
    tag = "users", responses((status = 204), (status = 401, body = ErrorBody)))]
async fn totp_remove(
    State(hub): State<Hub>,
    caller: Caller,
    Client(client): Client,
    ApiJson(req): ApiJson<TotpCodeRequest>,
) -> Result<StatusCode, ApiError> {
    // Removing the factor needs a current code, so a stolen session alone
    // cannot strip it.
    let user = user_or_404(&hub, caller.0.user_id).await?;
    let factor = SecondFactor::Totp(req.code);
    hub.identity()
        .check_second_factor(&user, Some(&factor), &client)
        .await?;
    hub.identity().totp_remove(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- sessions --------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    responses((status = 200, body = [SessionView]), (status = 401, body = ErrorBody)))]
async fn list_sessions(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sessions = hub.identity().sessions(caller.0.user_id).await?;
    let current = caller.0.session.as_deref();
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| session_view(s, current))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_session(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Only one's own: another user's session id is "not found".
    hub.identity().revoke_session(caller.0.user_id, &id).await?;
    audit_change("session.revoked", &caller, &id);
    Ok(StatusCode::NO_CONTENT)
}

// ---- API keys --------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/apikeys", tag = "apikeys",
    responses((status = 200, body = [ApiKeyView]), (status = 403, body = ErrorBody)))]
async fn list_api_keys(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    // Admins see every key; everyone else their own.
    let owner = (caller.0.role != Role::Admin).then_some(caller.0.user_id);
    let keys = hub.identity().api_keys(owner).await?;
    Ok(Json(keys.into_iter().map(api_key_view).collect()))
}

#[utoipa::path(post, path = "/api/v1/apikeys", request_body = CreateApiKeyRequest,
    tag = "apikeys",
    responses((status = 201, body = ApiKeyCreatedView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn create_api_key(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(mut req): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<ApiKeyCreatedView>), ApiError> {
    let days = req.expires_in_days.unwrap_or(90);
    // Each named site must exist and be the caller's to use.
    if let Some(sites) = &req.sites {
        if sites.is_empty() || sites.len() > 100 {
            return Err(ApiError::invalid("sites", "must name 1 to 100 sites"));
        }
        let permission = req
            .permissions
            .iter()
            .find_map(|p| Permission::from_name(p))
            .unwrap_or(Permission::SitesRead);
        let mut checked = Vec::with_capacity(sites.len());
        for domain in sites {
            checked.push(hub.site_for(&caller, permission, domain).await?.domain);
        }
        req.sites = Some(checked);
    }
    let grant = hub
        .identity()
        .create_api_key(
            &caller.0,
            NewApiKey {
                name: req.name,
                permissions: req.permissions,
                sites: req.sites,
                ttl: Duration::from_secs(days.saturating_mul(86_400)),
            },
        )
        .await
        .inspect_err(|e| {
            tracing::info!(target: "spinforge::audit", event = "apikey.created",
                user = %caller.0.user_id, result = "denied", reason = %e,
                "API key creation refused");
        })?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreatedView {
            key: grant.key,
            details: api_key_view(grant.record),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/apikeys/{id}", tag = "apikeys",
    params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_api_key(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let key = hub
        .identity()
        .api_key(&id)
        .await?
        .ok_or(ApiError::NotFound("api key"))?;
    hub.authorize(
        &caller,
        Permission::ApiKeysManage,
        Resource::OwnedBy(key.user_id),
    )?;
    hub.identity().revoke_api_key(&key.id).await?;
    audit_change("apikey.revoked", &caller, &key.id);
    Ok(StatusCode::NO_CONTENT)
}

// ---- signing keys ----------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/keys/signing/rotate", tag = "keys",
    responses((status = 200), (status = 403, body = ErrorBody)))]
async fn rotate_signing_key(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kid = hub.identity().rotate_signing_key().await?;
    audit_change("keys.rotate_signing", &caller, &kid);
    Ok(Json(serde_json::json!({ "kid": kid })))
}
