//! `/api/v1/incidents`: list, show, open, contain, lift and resolve
//! incidents, and the hub's side of site isolation (the edge serves a
//! maintenance page, apps stop, deploys are refused). Detection, the
//! timeline and notifications live in the `incident` crate; its handle
//! arrives as a request extension that `serve` adds.

use crate::access::Caller;
use crate::api::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::Hub;
use axum::extract::{Extension, Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use incident::{
    ActionKind, Actor, Incident, IncidentError, IncidentSummary, Incidents, Indicator,
    IndicatorKind, NewIncident, Severity, Status,
};
use serde::Deserialize;
use store::SiteKind;

/// Incidents per page unless the caller asks otherwise.
const DEFAULT_LIMIT: u32 = 100;

/// The incident routes, nested under `/api/v1`.
pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/incidents", get(list).post(open))
        .route("/incidents/{id}", get(show))
        .route("/incidents/{id}/contain", post(contain))
        .route("/incidents/{id}/actions/{action}/lift", post(lift))
        .route("/incidents/{id}/resolve", post(resolve))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, open, show, contain, lift, resolve),
    components(schemas(Incident, IncidentSummary, OpenRequest, ContainRequest, ResolveRequest))
)]
pub struct IncidentDoc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// `open`, `contained` or `resolved`.
    status: Option<String>,
    /// 1 to 1000, default 100.
    limit: Option<u32>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    pub title: String,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: String,
    #[serde(default)]
    pub indicators: Vec<IndicatorRequest>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndicatorRequest {
    /// `ip`, `user`, `site` or `rule`.
    pub kind: String,
    pub value: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainRequest {
    /// `ban_ip`, `disable_user`, `isolate_site` or `rotate_secrets`.
    pub action: String,
    /// An IP, a user's e-mail (or `id:N`) or a domain; without it, every
    /// indicator of the matching kind.
    pub target: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// What was found and done; kept on the timeline.
    pub note: String,
}

#[utoipa::path(get, path = "/api/v1/incidents", tag = "incidents",
    params(("status" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [IncidentSummary]), (status = 400, body = ErrorBody)))]
async fn list(
    _caller: Caller,
    Extension(incidents): Extension<Incidents>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<IncidentSummary>>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let status = params
        .status
        .map(|s| {
            Status::parse(&s)
                .ok_or_else(|| ApiError::invalid("status", "must be open, contained or resolved"))
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    Ok(Json(
        incidents.list(status, limit).await.map_err(from_incident)?,
    ))
}

#[utoipa::path(post, path = "/api/v1/incidents", tag = "incidents", request_body = OpenRequest,
    responses((status = 201, body = Incident), (status = 400, body = ErrorBody)))]
async fn open(
    Caller(who): Caller,
    Extension(incidents): Extension<Incidents>,
    ApiJson(req): ApiJson<OpenRequest>,
) -> Result<(StatusCode, Json<Incident>), ApiError> {
    let severity = Severity::parse(&req.severity)
        .ok_or_else(|| ApiError::invalid("severity", "must be low, medium, high or critical"))?;
    let indicators = req
        .indicators
        .into_iter()
        .map(|i| {
            IndicatorKind::parse(&i.kind)
                .map(|kind| Indicator::new(kind, i.value))
                .ok_or_else(|| {
                    ApiError::invalid("indicators", "kind must be ip, user, site or rule")
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let new = NewIncident {
        title: req.title,
        severity,
        indicators,
    };
    let incident = incidents
        .open(new, Actor::User(who.user_id.0))
        .await
        .map_err(from_incident)?;
    Ok((StatusCode::CREATED, Json(incident)))
}

#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "incidents",
    params(("id" = i64, Path)),
    responses((status = 200, body = Incident), (status = 404, body = ErrorBody)))]
async fn show(
    _caller: Caller,
    Extension(incidents): Extension<Incidents>,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    let id = parse_id(&id, "id")?;
    Ok(Json(incidents.get(id).await.map_err(from_incident)?))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/contain", tag = "incidents",
    params(("id" = i64, Path)), request_body = ContainRequest,
    responses((status = 200, body = Incident), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn contain(
    Caller(who): Caller,
    Extension(incidents): Extension<Incidents>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ContainRequest>,
) -> Result<Json<Incident>, ApiError> {
    let id = parse_id(&id, "id")?;
    let kind = ActionKind::parse(&req.action).ok_or_else(|| {
        ApiError::invalid(
            "action",
            "must be ban_ip, disable_user, isolate_site or rotate_secrets",
        )
    })?;
    let incident = incidents
        .contain(id, kind, req.target.as_deref(), Actor::User(who.user_id.0))
        .await
        .map_err(from_incident)?;
    Ok(Json(incident))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/actions/{action}/lift", tag = "incidents",
    params(("id" = i64, Path), ("action" = i64, Path)),
    responses((status = 200, body = Incident), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn lift(
    Caller(who): Caller,
    Extension(incidents): Extension<Incidents>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Incident>, ApiError> {
    let id = parse_id(&id, "id")?;
    let action = parse_id(&action, "action")?;
    let incident = incidents
        .lift(id, action, Actor::User(who.user_id.0))
        .await
        .map_err(from_incident)?;
    Ok(Json(incident))
}

#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", tag = "incidents",
    params(("id" = i64, Path)), request_body = ResolveRequest,
    responses((status = 200, body = Incident), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resolve(
    Caller(who): Caller,
    Extension(incidents): Extension<Incidents>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Json<Incident>, ApiError> {
    let id = parse_id(&id, "id")?;
    let incident = incidents
        .resolve(id, &req.note, Actor::User(who.user_id.0))
        .await
        .map_err(from_incident)?;
    Ok(Json(incident))
}

fn parse_id(text: &str, field: &'static str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid(field, "must be a positive whole number"))
}

/// The one place incident errors become API errors.
fn from_incident(e: IncidentError) -> ApiError {
    match e {
        IncidentError::Invalid { field, message } => ApiError::Invalid { field, message },
        IncidentError::NotFound(what) => ApiError::NotFound(what),
        IncidentError::Conflict(message) => ApiError::Conflict {
            field: "status",
            message,
        },
        IncidentError::Unavailable(message) => ApiError::Unavailable(message),
        other => ApiError::internal(other),
    }
}

// ---- site isolation -----------------------------------------------------

impl Hub {
    /// The incident that isolated `domain`, if one did.
    pub fn isolated_by(&self, domain: &str) -> Option<i64> {
        self.inner
            .isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .copied()
    }

    /// Refuses a change to an isolated site's code (deploy, rollback,
    /// restart) with 409.
    pub(crate) fn refuse_if_isolated(&self, domain: &str) -> Result<(), ApiError> {
        match self.isolated_by(domain) {
            Some(incident) => Err(ApiError::Conflict {
                field: "site",
                message: format!(
                    "site {domain} is isolated by incident {incident}; lift the isolation first"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Isolates a site: the edge answers 503 with a maintenance page, its
    /// apps stop (logs and data stay), and deploys are refused.
    pub async fn isolate_site(&self, domain: &str, incident: i64) -> Result<(), ApiError> {
        let site = self.site(domain).await?;
        let _guard = self.site_lock(&site.domain).await;
        self.inner
            .isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.domain.clone(), incident);
        self.sync_edge(&site.domain).await?;
        if site.kind == SiteKind::Process {
            self.inner.supervisor.suspend(&site.domain).await;
        }
        tracing::info!(site = %site.domain, incident, "site isolated");
        Ok(())
    }

    /// Lifts an isolation: apps are registered again (and started if
    /// always on) and the site's route serves again.
    pub async fn lift_isolation(&self, domain: &str) -> Result<(), ApiError> {
        let site = self.site(domain).await?;
        let _guard = self.site_lock(&site.domain).await;
        self.inner
            .isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&site.domain);
        self.register_apps(std::slice::from_ref(&site)).await;
        self.sync_edge(&site.domain).await?;
        tracing::info!(site = %site.domain, "site isolation lifted");
        Ok(())
    }
}

/// The hub as the incident crate's [`incident::SiteControl`].
pub struct HubSites(pub Hub);

#[async_trait::async_trait]
impl incident::SiteControl for HubSites {
    async fn exists(&self, domain: &str) -> Result<bool, String> {
        match self.0.site(domain).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound(_) | ApiError::Invalid { .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn isolate(&self, domain: &str, incident: i64) -> Result<(), String> {
        self.0
            .isolate_site(domain, incident)
            .await
            .map_err(|e| e.to_string())
    }

    async fn lift(&self, domain: &str) -> Result<(), String> {
        self.0
            .lift_isolation(domain)
            .await
            .map_err(|e| e.to_string())
    }
}
