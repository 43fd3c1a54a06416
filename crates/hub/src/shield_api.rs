//! The shield's API under `/api/v1`: bans, emergency mode and per-site
//! shield policies. The [`shield::Shield`] handle arrives as a request
//! extension that `serve` adds; every change is audited by the shield.
//!
//! Routes here only parse, call one shield operation and shape the
//! answer. Who may call them is declared in [`crate::access::ROUTES`];
//! a site's own policy is its owner's to set, checked on the stored site.

use crate::access::Caller;
use crate::api::ApiJson;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::Hub;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use identity::Permission;
use serde::{Deserialize, Serialize};
use shield::bans::Ban;
use shield::{Shield, ShieldError, SitePolicy};
use std::time::Duration;

/// The routes, to be nested under `/api/v1`.
pub fn router() -> Router<Hub> {
    let router = Router::new()
        .route("/bans", get(list_bans).post(add_ban))
        .route("/bans/{ip}", delete(lift_ban))
        .route("/shield/emergency", get(emergency).put(set_emergency))
        .route(
            "/sites/{domain}/shield",
            get(site_policy)
                .put(set_site_policy)
                .delete(clear_site_policy),
        );
    test_clock(router)
}

/// The one place shield errors become API errors.
fn api_error(e: ShieldError) -> ApiError {
    match e {
        ShieldError::Invalid { field, message } => ApiError::Invalid { field, message },
        ShieldError::NotFound(what) => ApiError::NotFound(what),
        other => ApiError::internal(other),
    }
}

/// Runs a shield change (which writes the state file) off the async
/// threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ShieldError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
        .map_err(api_error)
}

fn actor(caller: &Caller) -> String {
    format!("user:{}", caller.0.user_id)
}

// ---- bans ------------------------------------------------------------------

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_bans,
    add_ban,
    lift_ban,
    emergency,
    set_emergency,
    site_policy,
    set_site_policy,
    clear_site_policy
))]
pub struct ShieldDoc;

#[derive(Serialize)]
struct BansView {
    bans: Vec<Ban>,
}

#[utoipa::path(get, path = "/api/v1/bans", tag = "shield",
    responses((status = 200), (status = 403, body = ErrorBody)))]
async fn list_bans(_: Caller, Extension(shield): Extension<Shield>) -> Json<BansView> {
    Json(BansView {
        bans: shield.bans(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    /// An address (`203.0.113.9`, `2001:db8::1`) or an IPv6 group
    /// (`2001:db8::/64`).
    ip: String,
    /// Default: the configured ban TTL.
    ttl_secs: Option<u64>,
    reason: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/bans", tag = "shield",
    responses((status = 201), (status = 400, body = ErrorBody)))]
async fn add_ban(
    admin: Caller,
    Extension(shield): Extension<Shield>,
    ApiJson(req): ApiJson<BanRequest>,
) -> Result<(StatusCode, Json<Ban>), ApiError> {
    let actor = actor(&admin);
    let ban = blocking(move || {
        let ttl = req.ttl_secs.map(Duration::from_secs);
        shield.ban(&req.ip, ttl, req.reason.as_deref().unwrap_or(""), &actor)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(ban)))
}

#[utoipa::path(delete, path = "/api/v1/bans/{ip}", tag = "shield",
    params(("ip" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn lift_ban(
    admin: Caller,
    Extension(shield): Extension<Shield>,
    Path(ip): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = actor(&admin);
    blocking(move || shield.lift(&ip, &actor)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- emergency mode ----------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmergencyView {
    on: bool,
    /// Rate limits are multiplied by this while emergency mode is on.
    #[serde(default)]
    factor: Option<f64>,
}

#[utoipa::path(get, path = "/api/v1/shield/emergency", tag = "shield",
    responses((status = 200)))]
async fn emergency(_: Caller, Extension(shield): Extension<Shield>) -> Json<EmergencyView> {
    Json(EmergencyView {
        on: shield.emergency(),
        factor: Some(shield.emergency_factor()),
    })
}

#[utoipa::path(put, path = "/api/v1/shield/emergency", tag = "shield",
    responses((status = 200), (status = 400, body = ErrorBody)))]
async fn set_emergency(
    admin: Caller,
    Extension(shield): Extension<Shield>,
    ApiJson(req): ApiJson<EmergencyView>,
) -> Result<Json<EmergencyView>, ApiError> {
    if req.factor.is_some() {
        return Err(ApiError::invalid(
            "factor",
            "is set in the config file (shield.emergency_factor), not per switch",
        ));
    }
    let actor = actor(&admin);
    let worker = shield.clone();
    blocking(move || worker.set_emergency(req.on, &actor)).await?;
    Ok(Json(EmergencyView {
        on: shield.emergency(),
        factor: Some(shield.emergency_factor()),
    }))
}

// ---- site policies -----------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/sites/{domain}/shield", tag = "shield",
    params(("domain" = String, Path)), responses((status = 200), (status = 403, body = ErrorBody)))]
async fn site_policy(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(shield): Extension<Shield>,
    Path(domain): Path<String>,
) -> Result<Json<SitePolicy>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::SitesRead, &domain)
        .await?;
    Ok(Json(shield.site_policy(&site.domain).unwrap_or_default()))
}

#[utoipa::path(put, path = "/api/v1/sites/{domain}/shield", tag = "shield",
    params(("domain" = String, Path)), responses((status = 200), (status = 400, body = ErrorBody)))]
async fn set_site_policy(
    State(hub): State<Hub>,
    admin: Caller,
    Extension(shield): Extension<Shield>,
    Path(domain): Path<String>,
    ApiJson(policy): ApiJson<SitePolicy>,
) -> Result<Json<SitePolicy>, ApiError> {
    let site = hub
        .site_for(&admin, Permission::SitesUpdate, &domain)
        .await?;
    let actor = actor(&admin);
    let stored = policy.clone();
    blocking(move || shield.set_site_policy(&site.domain, Some(stored), &actor)).await?;
    Ok(Json(policy))
}

#[utoipa::path(delete, path = "/api/v1/sites/{domain}/shield", tag = "shield",
    params(("domain" = String, Path)), responses((status = 204), (status = 403, body = ErrorBody)))]
async fn clear_site_policy(
    State(hub): State<Hub>,
    admin: Caller,
    Extension(shield): Extension<Shield>,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    let site = hub
        .site_for(&admin, Permission::SitesUpdate, &domain)
        .await?;
    let actor = actor(&admin);
    blocking(move || shield.set_site_policy(&site.domain, None, &actor)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- test clock (debug builds only) --------------------------------------------

/// TEST ONLY. Debug builds (what `cargo test` runs) get
/// `POST /api/v1/shield/test-clock {"advance_secs": N}`, which moves the
/// shield's clock forward so black-box tests can cross rate windows and
/// ban TTLs without sleeping. Release builds do not have the route at all.
#[cfg(debug_assertions)]
fn test_clock(router: Router<Hub>) -> Router<Hub> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Advance {
        advance_secs: u64,
        /// Stop real time first, for boundaries of fast limits.
        #[serde(default)]
        freeze: bool,
    }

    async fn advance(
        admin: Caller,
        Extension(shield): Extension<Shield>,
        ApiJson(req): ApiJson<Advance>,
    ) -> StatusCode {
        tracing::warn!(
            target: "spinforge::audit", event = "shield.test_clock",
            actor = %actor(&admin), advance_secs = req.advance_secs,
            "TEST ONLY: shield clock advanced"
        );
        if req.freeze {
            shield.clock().freeze();
        }
        shield
            .clock()
            .advance(Duration::from_secs(req.advance_secs));
        StatusCode::NO_CONTENT
    }

    router.route("/shield/test-clock", axum::routing::post(advance))
}

#[cfg(not(debug_assertions))]
fn test_clock(router: Router<Hub>) -> Router<Hub> {
    router
}
