//! The certificate API under `/api/v1`: list certificates, upload one for
//! a site, and set a site's HTTPS mode and HSTS extras. The [`Certs`]
//! handle arrives as a request extension that `serve` adds.
//!
//! Who may call these is declared in [`crate::access::ROUTES`]; the
//! site's ownership is checked on the stored site.

use crate::access::Caller;
use crate::api::ApiJson;
use crate::certs::{CertInfo, Certs};
use crate::error::{ApiError, ErrorBody};
use crate::Hub;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use identity::Permission;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use store::{HttpsMode, SiteTls};

/// The routes, to be nested under `/api/v1`.
pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/certs", get(list_certs))
        .route("/certs/{domain}", post(upload_cert))
        .route("/sites/{domain}/https", put(set_https))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list_certs, upload_cert, set_https),
    components(schemas(CertInfo, UploadRequest, HttpsRequest))
)]
pub struct CertsDoc;

/// The caller's user id, as the audit log's `user` field takes it.
fn user(caller: &Caller) -> String {
    caller.0.user_id.to_string()
}

/// Certificates of the sites the caller may read.
#[utoipa::path(get, path = "/api/v1/certs", tag = "certs",
    responses((status = 200, body = [CertInfo]), (status = 403, body = ErrorBody)))]
async fn list_certs(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(certs): Extension<Arc<Certs>>,
) -> Result<Json<Vec<CertInfo>>, ApiError> {
    // A filter, not a refusal: other customers' certificates are left out
    // without a `permission.denied` event each, which would read as
    // probing to incident detection.
    let sites = hub.store().list_sites().await?;
    let readable = |domain: &str| {
        sites.iter().any(|site| {
            site.domain == domain
                && identity::authorize(
                    &caller.0,
                    Permission::SitesRead,
                    Some(identity::Resource::Site {
                        domain: &site.domain,
                        customer: site.customer,
                    }),
                )
                .is_ok()
        })
    };
    let visible = certs
        .list()
        .await?
        .into_iter()
        .filter(|cert| readable(&cert.domain))
        .collect();
    Ok(Json(visible))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UploadRequest {
    /// PEM: the certificate first, then its intermediates.
    cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    key: String,
}

/// Checks (chain matches key, covers the domain, valid now), stores and
/// serves a certificate; nothing changes when a check fails.
#[utoipa::path(post, path = "/api/v1/certs/{domain}", tag = "certs",
    params(("domain" = String, Path)),
    responses((status = 201, body = CertInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn upload_cert(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(certs): Extension<Arc<Certs>>,
    Path(domain): Path<String>,
    ApiJson(req): ApiJson<UploadRequest>,
) -> Result<(StatusCode, Json<CertInfo>), ApiError> {
    let site = hub
        .site_for(&caller, Permission::SitesUpdate, &domain)
        .await?;
    let info = certs
        .upload(&site.domain, &req.cert, &req.key, &user(&caller))
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HttpsRequest {
    /// `redirect` (default), `both` or `https_only`.
    mode: String,
    #[serde(default)]
    hsts_include_subdomains: bool,
    #[serde(default)]
    hsts_preload: bool,
}

/// Sets how the site answers plain HTTP and which HSTS extras it sends.
#[utoipa::path(put, path = "/api/v1/sites/{domain}/https", tag = "certs",
    params(("domain" = String, Path)),
    responses((status = 200, body = HttpsRequest), (status = 400, body = ErrorBody)))]
async fn set_https(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(certs): Extension<Arc<Certs>>,
    Path(domain): Path<String>,
    ApiJson(req): ApiJson<HttpsRequest>,
) -> Result<Json<HttpsRequest>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::SitesUpdate, &domain)
        .await?;
    let mode = HttpsMode::parse(&req.mode)
        .ok_or_else(|| ApiError::invalid("mode", "must be one of redirect, both, https_only"))?;
    if req.hsts_preload && !req.hsts_include_subdomains {
        return Err(ApiError::invalid(
            "hsts_preload",
            "needs hsts_include_subdomains (browsers' preload lists require it)",
        ));
    }
    certs
        .set_site_https(SiteTls {
            domain: site.domain.clone(),
            mode,
            hsts_include_subdomains: req.hsts_include_subdomains,
            hsts_preload: req.hsts_preload,
        })
        .await?;
    tracing::info!(target: "spinforge::audit", event = "site.https", result = "success",
        site = %site.domain, user = %user(&caller), mode = mode.as_str(),
        hsts_include_subdomains = req.hsts_include_subdomains,
        hsts_preload = req.hsts_preload, "site HTTPS settings changed");
    Ok(Json(req))
}
