//! A site's own sandbox settings under `/api/v1/sites/{domain}/sandbox`:
//! outbound internet (off by default) and a custom seccomp profile
//! (Docker's JSON format). A PUT replaces all of them. Admin only (the
//! `system:config` permission, declared in [`crate::access::ROUTES`]): a
//! developer could otherwise loosen what the platform promises about
//! every app. Changes are audited and restart the site's app, so they
//! are in force when the answer arrives.

use crate::access::Caller;
use crate::api::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::Hub;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use identity::Permission;
use serde::{Deserialize, Serialize};
use spinlet::sandbox::SeccompProfile;
use spinlet::SiteSandbox;

pub fn routes() -> Router<Hub> {
    Router::new().route(
        "/sites/{domain}/sandbox",
        get(site_sandbox).put(set_site_sandbox),
    )
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(site_sandbox, set_site_sandbox))]
pub struct SandboxDoc;

/// A site's sandbox settings.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SandboxView {
    /// The app may connect out to the internet (never to the host,
    /// loopback, link-local or metadata addresses, or other apps).
    #[serde(default)]
    outbound_internet: bool,
    /// A seccomp profile in Docker's format, added on top of the built-in
    /// allowlist (it can only deny more); `null` for none.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    seccomp_profile: Option<serde_json::Value>,
    /// Private IPv4 ranges (inside 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16 or 100.64.0.0/10) the app may reach although
    /// outbound internet refuses the LAN; needs `outbound_internet`.
    #[serde(default)]
    outbound_allow: Vec<String>,
}

/// The allowlist as the audit event records it.
fn settings_allow(view: &SandboxView) -> Vec<&str> {
    view.outbound_allow.iter().map(String::as_str).collect()
}

fn unavailable() -> ApiError {
    ApiError::Unavailable("apps on this server run without the sandbox".into())
}

#[utoipa::path(get, path = "/api/v1/sites/{domain}/sandbox", tag = "sandbox",
    params(("domain" = String, Path)),
    responses((status = 200, body = SandboxView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn site_sandbox(
    State(hub): State<Hub>,
    admin: Caller,
    Path(domain): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    let site = hub
        .site_for(&admin, Permission::SystemConfig, &domain)
        .await?;
    let supervisor = hub.supervisor().clone();
    let settings = tokio::task::spawn_blocking(move || supervisor.site_sandbox(&site.domain))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(unavailable)?;
    Ok(Json(SandboxView {
        outbound_internet: settings.outbound_internet,
        seccomp_profile: settings.seccomp_profile,
        outbound_allow: settings
            .outbound_allow
            .iter()
            .map(ToString::to_string)
            .collect(),
    }))
}

#[utoipa::path(put, path = "/api/v1/sites/{domain}/sandbox", tag = "sandbox",
    params(("domain" = String, Path)), request_body = SandboxView,
    responses((status = 200, body = SandboxView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_site_sandbox(
    State(hub): State<Hub>,
    admin: Caller,
    Path(domain): Path<String>,
    ApiJson(view): ApiJson<SandboxView>,
) -> Result<Json<SandboxView>, ApiError> {
    let site = hub
        .site_for(&admin, Permission::SystemConfig, &domain)
        .await?;
    if let Some(profile) = &view.seccomp_profile {
        if let Err(e) = SeccompProfile::parse(profile) {
            tracing::warn!(target: "spinforge::audit", event = "sandbox.profile_refused",
                user = %admin.0.user_id, site = %site.domain, field = %e.field,
                "seccomp profile refused");
            return Err(ApiError::Invalid {
                field: "seccomp_profile",
                message: format!("{}: {}", e.field, e.message),
            });
        }
    }
    let mut outbound_allow = Vec::new();
    for (i, text) in view.outbound_allow.iter().enumerate() {
        let net = text
            .parse::<ipnet::Ipv4Net>()
            .map_err(|_| ApiError::Invalid {
                field: "outbound_allow",
                message: format!(
                    "outbound_allow[{i}]: `{text}` is not an IPv4 network such as 10.1.2.0/24"
                ),
            })?;
        outbound_allow.push(net);
    }
    let settings = SiteSandbox {
        outbound_internet: view.outbound_internet,
        seccomp_profile: view.seccomp_profile.clone(),
        outbound_allow,
    };
    if let Err((field, message)) = spinlet::sandbox::check_outbound_allow(&settings) {
        tracing::warn!(target: "spinforge::audit", event = "sandbox.outbound_allow_refused",
            user = %admin.0.user_id, site = %site.domain, field = %field,
            "outbound LAN allowlist refused");
        return Err(ApiError::Invalid {
            field: "outbound_allow",
            message: format!("{field}: {message}"),
        });
    }
    let supervisor = hub.supervisor().clone();
    let domain = site.domain.clone();
    tokio::task::spawn_blocking(move || supervisor.set_site_sandbox(&domain, &settings))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::Unsupported => unavailable(),
            _ => ApiError::internal(e),
        })?;
    tracing::info!(target: "spinforge::audit", event = "sandbox.settings_changed",
        user = %admin.0.user_id, site = %site.domain,
        outbound_internet = view.outbound_internet, seccomp_profile = view.seccomp_profile.is_some(),
        outbound_allow = ?settings_allow(&view), "site sandbox settings changed");
    // In force from the next start: stop the running app now (a site
    // without a running app has nothing to restart).
    let _ = hub.supervisor().restart(&site.domain).await;
    Ok(Json(view))
}
