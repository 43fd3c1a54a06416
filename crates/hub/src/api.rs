//! The REST API under `/api/v1`, plus `/healthz`, `/readyz` and
//! `/metrics`. Each handler parses, calls one hub operation and shapes the
//! answer; rules live in the hub's operations, errors in [`ApiError`].

use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::sites::{BalancerInput, SiteSpec};
use crate::Hub;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use identity::{Permission, Resource};
use serde::{Deserialize, Serialize};
use store::{Release, Site, SiteKind};
use utoipa::OpenApi;

/// JSON bodies larger than this are refused before parsing.
const JSON_LIMIT: usize = 64 * 1024;

/// `Json` whose rejections become our error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

pub fn router(hub: Hub) -> Router {
    let api = Router::new()
        .route("/sites", get(list_sites).post(create_site))
        .route(
            "/sites/{domain}",
            get(show_site).patch(update_site).delete(delete_site),
        )
        .route(
            "/sites/{domain}/releases",
            get(list_releases)
                .post(upload_release)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/sites/{domain}/rollback", post(rollback))
        .route("/sites/{domain}/status", get(site_status))
        .route("/sites/{domain}/logs", get(site_logs))
        .route("/sites/{domain}/restart", post(restart_site))
        .route("/openapi.json", get(openapi))
        .merge(crate::identity_api::routes())
        .merge(crate::shield_api::router())
        .merge(crate::audit_api::routes())
        .merge(crate::oidc_api::routes())
        .merge(crate::sandbox_api::routes())
        .merge(crate::privacy_api::routes())
        .merge(crate::incident_api::routes())
        .merge(crate::secrets_api::routes())
        .merge(crate::certs_api::routes())
        .merge(crate::upstream_tls_api::routes());
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // After every route: each one passes the access table first.
        .route_layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            crate::access::enforce,
        ))
        // Before the access check: the auth endpoints' rate limits.
        .route_layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            crate::rate_api::auth_limit,
        ))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(hub)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "SpinForge API", description = "Control plane of SpinForge"),
    paths(
        list_sites,
        create_site,
        show_site,
        update_site,
        delete_site,
        list_releases,
        upload_release,
        rollback,
        site_status,
        site_logs,
        restart_site,
        openapi_doc,
        healthz,
        readyz,
        metrics
    ),
    components(schemas(ErrorBody, SiteView, ReleaseView, SiteStatusView, LogsView))
)]
struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    Json(document())
}

/// The whole API description, as served at `/api/v1/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::identity_api::IdentityDoc::openapi());
    doc.merge(crate::shield_api::ShieldDoc::openapi());
    doc.merge(crate::audit_api::AuditDoc::openapi());
    doc.merge(crate::incident_api::IncidentDoc::openapi());
    doc.merge(crate::oidc_api::OidcDoc::openapi());
    doc.merge(crate::sandbox_api::SandboxDoc::openapi());
    doc.merge(crate::privacy_api::PrivacyDoc::openapi());
    doc.merge(crate::secrets_api::SecretsDoc::openapi());
    doc.merge(crate::certs_api::CertsDoc::openapi());
    doc.merge(crate::upstream_tls_api::UpstreamTlsDoc::openapi());
    doc
}

/// Documents the document route itself, so the access walk sees it.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops", responses((status = 200)))]
#[allow(dead_code)]
fn openapi_doc() {}

// ---- shapes ----------------------------------------------------------------

#[derive(Serialize, utoipa::ToSchema)]
pub struct SiteView {
    pub domain: String,
    /// `static`, `proxy`, `process` or `balancer`.
    #[serde(rename = "type")]
    pub kind: String,
    pub upstream: Option<String>,
    /// For balancer sites: upstreams, strategy and health check.
    #[schema(value_type = Option<Object>)]
    pub balancer: Option<store::BalancerConfig>,
    pub spa: bool,
    pub active_release: Option<String>,
    /// The creating user's id; absent for sites the server made itself.
    pub owner: Option<i64>,
    /// The owning customer's id; absent for platform sites.
    pub customer: Option<i64>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<Site> for SiteView {
    fn from(site: Site) -> SiteView {
        SiteView {
            domain: site.domain,
            kind: site.kind.as_str().to_owned(),
            upstream: site.upstream,
            balancer: site.balancer,
            spa: site.spa,
            active_release: site.active_release.map(|r| r.0),
            owner: site.owner.map(|o| o.0),
            customer: site.customer.map(|c| c.0),
            created_at: rfc3339(site.created_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReleaseView {
    pub id: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub file_count: i64,
    pub created_by: Option<i64>,
    pub created_at: String,
    pub active: bool,
}

pub(crate) fn release_view(release: Release, active: Option<&str>) -> ReleaseView {
    ReleaseView {
        active: active == Some(release.id.0.as_str()),
        id: release.id.0,
        sha256: release.sha256,
        size_bytes: release.size_bytes,
        file_count: release.file_count,
        created_by: release.created_by.map(|c| c.0),
        created_at: rfc3339(release.created_at),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSiteRequest {
    pub domain: String,
    /// `static` (default), `proxy`, `process` or `balancer`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// For proxy sites.
    pub upstream: Option<String>,
    /// For balancer sites: upstream URLs (1 to 32).
    pub upstreams: Option<Vec<String>>,
    /// For balancer sites: `round_robin` (default) or `least_conn`.
    pub strategy: Option<String>,
    /// For balancer sites: probed on each upstream; absent probes by
    /// connecting.
    pub health_path: Option<String>,
    /// For balancer sites: seconds between probes (1 to 300, default 5).
    pub health_interval_secs: Option<u64>,
    #[serde(default)]
    pub spa: bool,
    /// The owning customer's name (admins only; others create sites for
    /// their own customer).
    pub customer: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSiteRequest {
    pub upstream: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub strategy: Option<String>,
    pub health_path: Option<String>,
    pub health_interval_secs: Option<u64>,
    pub spa: Option<bool>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to activate; default: the one before the active one.
    pub release: Option<String>,
}

/// A site's customer as site audit events carry it, for the scoped reads
/// of `GET /api/v1/audit`; empty (no tag) for platform sites.
fn customer_tag(customer: Option<store::CustomerId>) -> String {
    customer.map(|c| c.to_string()).unwrap_or_default()
}

pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn parse_kind(kind: Option<&str>) -> Result<SiteKind, ApiError> {
    match kind.unwrap_or("static") {
        "static" => Ok(SiteKind::Static),
        "proxy" => Ok(SiteKind::Proxy),
        "process" => Ok(SiteKind::Process),
        "balancer" => Ok(SiteKind::Balancer),
        _ => Err(ApiError::invalid(
            "type",
            "must be one of static, proxy, process, balancer",
        )),
    }
}

// ---- sites -----------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/sites", tag = "sites",
    responses((status = 200, body = [SiteView]), (status = 401, body = ErrorBody)))]
async fn list_sites(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<Vec<SiteView>>, ApiError> {
    // Only the sites the caller may read: the same decision as every
    // other site route, made per site.
    let sites = hub.store().list_sites().await?;
    let visible = sites.into_iter().filter(|site| {
        identity::authorize(
            &caller.0,
            Permission::SitesRead,
            Some(Resource::Site {
                domain: &site.domain,
                customer: site.customer,
            }),
        )
        .is_ok()
    });
    Ok(Json(visible.map(SiteView::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/sites", request_body = CreateSiteRequest, tag = "sites",
    responses((status = 201, body = SiteView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_site(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSiteRequest>,
) -> Result<(StatusCode, Json<SiteView>), ApiError> {
    let kind = parse_kind(req.kind.as_deref())?;
    // The owner comes from the caller, never from the body, unless an
    // admin names a customer.
    let customer = match req.customer.as_deref() {
        None => caller.0.customer,
        Some(name) if caller.0.role == store::Role::Admin => {
            Some(hub.identity().customer_named(name).await?)
        }
        Some(_) => {
            return Err(ApiError::Escalation(
                "customer: only admins create sites for a named customer".into(),
            ))
        }
    };
    let domain = hub.check_domain(&req.domain)?;
    hub.authorize(
        &caller,
        Permission::SitesCreate,
        Resource::Site {
            domain: &domain,
            customer,
        },
    )?;
    let balancer = BalancerInput {
        upstreams: req.upstreams,
        strategy: req.strategy,
        health_path: req.health_path,
        health_interval_secs: req.health_interval_secs,
    };
    let spec = SiteSpec {
        domain: req.domain,
        kind,
        upstream: req.upstream,
        balancer: Some(balancer),
        spa: req.spa,
    };
    let site = hub.create_claimed_site(&caller.0, customer, spec).await?;
    Ok((StatusCode::CREATED, Json(site.into())))
}

#[utoipa::path(get, path = "/api/v1/sites/{domain}", tag = "sites",
    params(("domain" = String, Path)),
    responses((status = 200, body = SiteView), (status = 404, body = ErrorBody)))]
async fn show_site(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<Json<SiteView>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::SitesRead, &domain)
        .await?;
    Ok(Json(site.into()))
}

#[utoipa::path(patch, path = "/api/v1/sites/{domain}", request_body = UpdateSiteRequest,
    tag = "sites", params(("domain" = String, Path)),
    responses((status = 200, body = SiteView), (status = 400, body = ErrorBody)))]
async fn update_site(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
    ApiJson(req): ApiJson<UpdateSiteRequest>,
) -> Result<Json<SiteView>, ApiError> {
    hub.site_for(&caller, Permission::SitesUpdate, &domain)
        .await?;
    Ok(Json(
        hub.update_site(
            &domain,
            req.upstream,
            BalancerInput {
                upstreams: req.upstreams,
                strategy: req.strategy,
                health_path: req.health_path,
                health_interval_secs: req.health_interval_secs,
            },
            req.spa,
        )
        .await?
        .into(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/sites/{domain}", tag = "sites",
    params(("domain" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_site(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    hub.site_for(&caller, Permission::SitesDelete, &domain)
        .await?;
    let who = &caller.0;
    let worker = hub.clone();
    let site = tokio::spawn(async move { worker.delete_site(&domain).await })
        .await
        .map_err(ApiError::internal)??;
    tracing::info!(target: "spinforge::audit", event = "site.delete", user = %who.user_id,
        site = %site.domain, customer = %customer_tag(site.customer));
    Ok(StatusCode::NO_CONTENT)
}

// ---- releases --------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/sites/{domain}/releases", tag = "releases",
    params(("domain" = String, Path)),
    responses((status = 200, body = [ReleaseView]), (status = 404, body = ErrorBody)))]
async fn list_releases(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<Json<Vec<ReleaseView>>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::ReleasesRead, &domain)
        .await?;
    let active = site.active_release.as_ref().map(|r| r.0.as_str());
    let releases = hub.store().list_releases(site.id).await?;
    Ok(Json(
        releases
            .into_iter()
            .map(|r| release_view(r, active))
            .collect(),
    ))
}

/// Uploads a gzip-compressed tar of the site's files and activates it.
#[utoipa::path(post, path = "/api/v1/sites/{domain}/releases", tag = "releases",
    params(("domain" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses((status = 201, body = ReleaseView), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn upload_release(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    let customer = hub
        .site_for(&caller, Permission::ReleasesDeploy, &domain)
        .await?
        .customer;
    let who = caller.0;
    // The deploy runs in its own task: a client that hangs up must not
    // cancel it between its steps (between the commit and the route push,
    // say). The audit line is written there too, whatever the client does.
    let worker = hub.clone();
    let release = tokio::spawn(async move {
        let release = worker.deploy(&domain, Some(who.user_id), body).await;
        // The spawned task is outside the request's audit scope, so the
        // caller's role and key are named here.
        // Limitation: other events the deploy writes from this task get no
        // scope fill (carrying the scope into the task would lift this).
        let (result, reason) = match &release {
            Ok(_) => ("success", String::new()),
            Err(e) => ("failure", e.to_string()),
        };
        tracing::info!(target: "spinforge::audit", event = "site.deploy", user = %who.user_id,
            role = who.role.as_str(), api_key = who.api_key.as_deref().unwrap_or(""),
            site = %domain, result, reason = %reason, customer = %customer_tag(customer));
        release
    })
    .await
    .map_err(ApiError::internal)??;
    let id = release.id.0.clone();
    Ok((StatusCode::CREATED, Json(release_view(release, Some(&id)))))
}

#[utoipa::path(post, path = "/api/v1/sites/{domain}/rollback", request_body = RollbackRequest,
    tag = "releases", params(("domain" = String, Path)),
    responses((status = 200, body = SiteView), (status = 400, body = ErrorBody)))]
async fn rollback(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<SiteView>, ApiError> {
    hub.site_for(&caller, Permission::ReleasesDeploy, &domain)
        .await?;
    let who = &caller.0;
    let body = body?;
    // The body is optional: empty means "the release before the active one".
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let req: RollbackRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid("body", format!("invalid JSON: {e}")))?;
        req.release
    };
    let worker = hub.clone();
    let site = tokio::spawn(async move { worker.rollback(&domain, to).await })
        .await
        .map_err(ApiError::internal)??;
    tracing::info!(target: "spinforge::audit", event = "site.rollback", user = %who.user_id,
        site = %site.domain, customer = %customer_tag(site.customer));
    Ok(Json(site.into()))
}

// ---- apps ------------------------------------------------------------------

#[derive(Serialize, utoipa::ToSchema)]
pub struct SiteStatusView {
    pub site: SiteView,
    /// For process sites: state (stopped, starting, running, draining,
    /// failed), pid, port, uptime, last request, counts, memory and CPU.
    #[schema(value_type = Option<Object>)]
    pub spinlet: Option<spinlet::SpinletStatus>,
}

#[utoipa::path(get, path = "/api/v1/sites/{domain}/status", tag = "apps",
    params(("domain" = String, Path)),
    responses((status = 200, body = SiteStatusView), (status = 404, body = ErrorBody)))]
async fn site_status(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<Json<SiteStatusView>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::MetricsRead, &domain)
        .await?;
    let spinlet = match site.kind {
        SiteKind::Process => hub.supervisor().status(&site.domain),
        _ => None,
    };
    Ok(Json(SiteStatusView {
        site: site.into(),
        spinlet,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// At most this many lines, newest last (default 200, at most 5000).
    pub lines: Option<usize>,
    /// Only lines from this long ago (`30s`, `10m`, `2h`, `1d`) or since an
    /// RFC 3339 time.
    pub since: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LogsView {
    pub lines: Vec<String>,
}

/// Parses `30s`, `10m`, `2h`, `1d` or an RFC 3339 time.
fn parse_since(value: &str) -> Result<time::OffsetDateTime, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "since",
            "must look like 30s, 10m, 2h, 1d or an RFC 3339 time",
        )
    };
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(value, rfc3339) {
        return Ok(at);
    }
    let unit = value.chars().last().ok_or_else(invalid)?;
    let number = &value[..value.len() - unit.len_utf8()];
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(invalid()),
    };
    let seconds = number.checked_mul(unit_seconds).ok_or_else(invalid)?;
    if !(0..=366 * 86400).contains(&seconds) {
        return Err(invalid());
    }
    Ok(time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
}

#[utoipa::path(get, path = "/api/v1/sites/{domain}/logs", tag = "apps",
    params(("domain" = String, Path), LogsQuery),
    responses((status = 200, body = LogsView), (status = 400, body = ErrorBody)))]
async fn site_logs(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogsView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let site = hub.site_for(&caller, Permission::LogsRead, &domain).await?;
    if site.kind != SiteKind::Process {
        return Err(ApiError::invalid(
            "domain",
            "only process sites have app logs",
        ));
    }
    let limit = query.lines.unwrap_or(200);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::invalid("lines", "must be between 1 and 5000"));
    }
    let since = query.since.as_deref().map(parse_since).transpose()?;
    let Some(log) = hub.supervisor().log(&site.domain) else {
        return Ok(Json(LogsView { lines: Vec::new() }));
    };
    log.flush().await;
    let lines = tokio::task::spawn_blocking(move || match since {
        Some(since) => log.since(since, usize::MAX).map(|mut lines| {
            let skip = lines.len().saturating_sub(limit);
            lines.drain(..skip);
            lines
        }),
        None => log.tail(limit),
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(LogsView { lines }))
}

/// Stops the app; it starts again on the next request. Clears a failed
/// state.
#[utoipa::path(post, path = "/api/v1/sites/{domain}/restart", tag = "apps",
    params(("domain" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody)))]
async fn restart_site(
    State(hub): State<Hub>,
    caller: Caller,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    let site = hub
        .site_for(&caller, Permission::AppsRestart, &domain)
        .await?;
    let who = &caller.0;
    hub.refuse_if_isolated(&site.domain)?;
    if site.kind != SiteKind::Process {
        return Err(ApiError::invalid(
            "domain",
            "only process sites can be restarted",
        ));
    }
    hub.supervisor()
        .restart(&site.domain)
        .await
        .map_err(|e| ApiError::invalid("domain", e.to_string()))?;
    tracing::info!(target: "spinforge::audit", event = "site.restart", user = %who.user_id,
        site = %site.domain, customer = %customer_tag(site.customer));
    Ok(StatusCode::NO_CONTENT)
}

// ---- operations ------------------------------------------------------------

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready iff the store answers.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200), (status = 503)))]
async fn readyz(State(hub): State<Hub>) -> (StatusCode, &'static str) {
    match hub.store().count_users().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "store not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn metrics(State(hub): State<Hub>) -> Result<impl IntoResponse, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, hub.registry())
        .map_err(ApiError::internal)?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_refuses_junk_without_panicking() {
        let ten_minutes_ago = parse_since("10m").expect("10m");
        let gap = time::OffsetDateTime::now_utc() - ten_minutes_ago;
        assert!(gap >= time::Duration::minutes(10) && gap < time::Duration::minutes(11));
        assert!(parse_since("2026-12-04T10:00:00Z").is_ok());
        for junk in [
            "",
            "m",
            "10",
            "1é",
            "é",
            "10x",
            "-5m",
            "99999999999999999d",
            "400d",
        ] {
            assert!(parse_since(junk).is_err(), "{junk:?}");
        }
    }
}
