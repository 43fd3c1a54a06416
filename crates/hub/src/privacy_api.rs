//! Privacy (GDPR) routes: a user's consents and their history, the export
//! of everything stored about a user, and erasure. Which routes need a
//! consent is declared in [`crate::access::CONSENT_ROUTES`] and enforced
//! there; this module owns the records and the data a user may take away
//! or have removed.

use crate::access::{Caller, Client};
use crate::api::{release_view, ApiJson, ReleaseView, SiteView};
use crate::error::{ApiError, ErrorBody};
use crate::identity_api::{
    api_key_view, parse_user_id, session_view, user_or_404, user_view, ApiKeyView, SessionView,
    UserView,
};
use crate::Hub;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use store::{ConsentRecord, Purpose, User, UserId};

/// Most audit events one export carries.
const EXPORT_MAX_EVENTS: usize = 100_000;

pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/me/consents", get(my_consents).post(give_consent))
        .route("/me/export", get(export_me))
        .route("/me/activity", get(my_activity))
        .route("/users/{id}/export", get(export_user))
        .route("/users/{id}/erase", post(erase_user))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        my_consents,
        give_consent,
        export_me,
        my_activity,
        export_user,
        erase_user
    ),
    components(schemas(ConsentView, ConsentsView, ConsentRequest, ErasureRequest, ErasureView))
)]
pub struct PrivacyDoc;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConsentView {
    /// `necessary`, `functional`, `analytics` or `marketing`.
    pub purpose: String,
    pub granted: bool,
    /// RFC 3339.
    pub time: String,
    /// The client's address, anonymised (IPv4 /24, IPv6 /48).
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ConsentsView {
    /// Each purpose and whether it is granted now (never given: false;
    /// `necessary` is always true).
    pub current: BTreeMap<String, bool>,
    /// Every give and withdraw, oldest first.
    pub history: Vec<ConsentView>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    pub purpose: String,
    /// True gives the consent, false withdraws it.
    pub granted: bool,
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// Also delete the sites the user owns (with releases and files).
    #[serde(default)]
    pub with_sites: bool,
    /// Must be true when `with_sites` is.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErasureView {
    pub user_id: i64,
    pub sites_deleted: Vec<String>,
    /// Sites the user owned that stay, now without an owner.
    pub sites_kept: Vec<String>,
    pub consents: u64,
    pub sessions: u64,
    pub api_keys: u64,
    /// Audit subject keys destroyed (their events are pseudonymous now).
    pub audit_keys: u64,
    /// True iff the write-ahead log was emptied afterwards.
    pub wal_truncated: bool,
}

fn consent_view(record: ConsentRecord) -> ConsentView {
    ConsentView {
        purpose: record.purpose.as_str().to_owned(),
        granted: record.granted,
        time: crate::api::rfc3339(record.time),
        client_ip: record.client_ip,
        user_agent: record.user_agent,
    }
}

/// True iff `user` holds `purpose` now. `necessary` needs no consent.
pub(crate) async fn has_consent(
    hub: &Hub,
    user: UserId,
    purpose: Purpose,
) -> Result<bool, ApiError> {
    if purpose == Purpose::Necessary {
        return Ok(true);
    }
    Ok(hub
        .store()
        .current_consent(user, purpose)
        .await?
        .is_some_and(|c| c.granted))
}

#[utoipa::path(get, path = "/api/v1/me/consents", tag = "privacy",
    responses((status = 200, body = ConsentsView), (status = 401, body = ErrorBody)))]
async fn my_consents(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<ConsentsView>, ApiError> {
    Ok(Json(consents_of(&hub, caller.0.user_id).await?))
}

async fn consents_of(hub: &Hub, user: UserId) -> Result<ConsentsView, ApiError> {
    let history = hub.store().consent_history(user).await?;
    let mut current: BTreeMap<String, bool> = Purpose::ALL
        .iter()
        .map(|p| (p.as_str().to_owned(), *p == Purpose::Necessary))
        .collect();
    for record in &history {
        if record.purpose != Purpose::Necessary {
            current.insert(record.purpose.as_str().to_owned(), record.granted);
        }
    }
    Ok(ConsentsView {
        current,
        history: history.into_iter().map(consent_view).collect(),
    })
}

#[utoipa::path(post, path = "/api/v1/me/consents", tag = "privacy", request_body = ConsentRequest,
    responses((status = 201, body = ConsentView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn give_consent(
    State(hub): State<Hub>,
    caller: Caller,
    Client(client): Client,
    ApiJson(req): ApiJson<ConsentRequest>,
) -> Result<(StatusCode, Json<ConsentView>), ApiError> {
    let purpose = Purpose::parse(&req.purpose).ok_or_else(|| {
        ApiError::invalid(
            "purpose",
            "must be one of necessary, functional, analytics, marketing",
        )
    })?;
    if purpose == Purpose::Necessary && !req.granted {
        return Err(ApiError::invalid(
            "granted",
            "necessary processing cannot be withdrawn; erasure ends it",
        ));
    }
    let record = hub
        .store()
        .record_consent(ConsentRecord {
            id: 0,
            user_id: caller.0.user_id,
            purpose,
            granted: req.granted,
            time: now_secs(),
            client_ip: client.ip.map(|ip| audit::anonymise_ip(ip).to_string()),
            user_agent: client.user_agent.clone(),
        })
        .await?;
    tracing::info!(
        target: "spinforge::audit", event = "privacy.consent", user = %caller.0.user_id,
        purpose = purpose.as_str(), granted = req.granted,
        client_ip = %client.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "consent recorded"
    );
    Ok((StatusCode::CREATED, Json(consent_view(record))))
}

/// Counts of the caller's own audit events by type: processing of their
/// activity that needs the `analytics` consent (declared in
/// [`crate::access::CONSENT_ROUTES`]).
#[utoipa::path(get, path = "/api/v1/me/activity", tag = "privacy",
    responses((status = 200), (status = 401, body = ErrorBody),
        (status = 451, description = "the analytics consent is missing", body = ErrorBody)))]
async fn my_activity(
    caller: Caller,
    axum::extract::Extension(reader): axum::extract::Extension<audit::AuditReader>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let events = own_events(&reader, caller.0.user_id, None, 10_000).await?;
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for event in &events {
        *by_type.entry(event.kind.clone()).or_default() += 1;
    }
    Ok(Json(serde_json::json!({
        "events": events.len(),
        "by_type": by_type,
        "first": events.last().map(|e| e.time.clone()),
        "last": events.first().map(|e| e.time.clone()),
    })))
}

/// The user's audit events, newest first, at most `max`. With `email`
/// (an export), only the user's own personal fields are opened: another
/// person named in them (someone the user administered) reads
/// `[withheld]`.
async fn own_events(
    reader: &audit::AuditReader,
    user: UserId,
    email: Option<&str>,
    max: usize,
) -> Result<Vec<audit::EventView>, ApiError> {
    let mut out = Vec::new();
    let mut query = audit::AuditQuery {
        actor_user: Some(user.0),
        limit: 1000,
        ..audit::AuditQuery::default()
    };
    loop {
        let page = match email {
            Some(email) => reader.query_as_subject(&query, user.0, email).await,
            None => reader.query(&query).await,
        }
        .map_err(ApiError::internal)?;
        out.extend(page.events);
        match page.next_cursor {
            Some(cursor) if out.len() < max => query.before = cursor.parse().ok(),
            _ => break,
        }
    }
    // Limitation: an export stops at EXPORT_MAX_EVENTS audit events (a
    // streamed export would lift it); `audit_events_truncated` says so.
    out.truncate(max);
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/me/export", tag = "privacy",
    responses((status = 200, description = "`{format, sha256, data}`: sha256 is over `data` \
        exactly as sent (compact JSON)"), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn export_me(
    State(hub): State<Hub>,
    caller: Caller,
    reader: axum::extract::Extension<audit::AuditReader>,
) -> Result<Response, ApiError> {
    let user = user_or_404(&hub, caller.0.user_id).await?;
    export(&hub, &caller, &reader, user).await
}

#[utoipa::path(get, path = "/api/v1/users/{id}/export", tag = "privacy",
    params(("id" = i64, Path)),
    responses((status = 200, description = "as GET /api/v1/me/export"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn export_user(
    State(hub): State<Hub>,
    caller: Caller,
    reader: axum::extract::Extension<audit::AuditReader>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = user_or_404(&hub, parse_user_id(&id)?).await?;
    export(&hub, &caller, &reader, user).await
}

/// Everything stored about one user.
#[derive(Serialize)]
struct ExportData {
    exported_at: String,
    profile: UserView,
    sites: Vec<SiteView>,
    releases: Vec<ExportRelease>,
    consents: ConsentsView,
    sessions: Vec<SessionView>,
    api_keys: Vec<ApiKeyView>,
    audit_events: Vec<audit::EventView>,
    audit_events_truncated: bool,
}

#[derive(Serialize)]
struct ExportRelease {
    site: String,
    #[serde(flatten)]
    release: ReleaseView,
}

async fn export(
    hub: &Hub,
    caller: &Caller,
    reader: &audit::AuditReader,
    user: User,
) -> Result<Response, ApiError> {
    let id = user.id;
    let mut sites = Vec::new();
    let mut releases = Vec::new();
    for site in hub.store().list_sites().await? {
        let owned = site.owner == Some(id);
        let active = site.active_release.as_ref().map(|r| r.0.clone());
        for release in hub.store().list_releases(site.id).await? {
            if owned || release.created_by == Some(id) {
                releases.push(ExportRelease {
                    site: site.domain.clone(),
                    release: release_view(release, active.as_deref()),
                });
            }
        }
        if owned {
            sites.push(SiteView::from(site));
        }
    }
    let mut audit_events = own_events(reader, id, Some(&user.email), EXPORT_MAX_EVENTS + 1).await?;
    let audit_events_truncated = audit_events.len() > EXPORT_MAX_EVENTS;
    audit_events.truncate(EXPORT_MAX_EVENTS);
    let data = ExportData {
        exported_at: crate::api::rfc3339(now_secs()),
        consents: consents_of(hub, id).await?,
        sessions: hub
            .identity()
            .sessions(id)
            .await?
            .into_iter()
            .map(|s| session_view(s, caller.0.session.as_deref()))
            .collect(),
        api_keys: hub
            .store()
            .list_api_keys(Some(id))
            .await?
            .into_iter()
            .map(api_key_view)
            .collect(),
        profile: user_view(hub, user).await?,
        sites,
        releases,
        audit_events,
        audit_events_truncated,
    };
    // Through a JSON value, so the text is what any reader gets back by
    // parsing `data` and writing it compactly again: that is what the
    // checksum is over.
    let data = serde_json::to_value(&data)
        .map_err(ApiError::internal)?
        .to_string();
    let sha256 = hex::encode(Sha256::digest(data.as_bytes()));

    // Fail closed: an export nobody can account for is not handed out.
    let event = audit::AuditEvent::new("privacy.export")
        .user(caller.0.user_id.0)
        .resource(format!("user:{}", id.0))
        .meta("subject_user", id.0)
        .meta("sha256", sha256.clone())
        .meta("bytes", data.len() as u64);
    audit::record(event)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the export cannot be audited: {e}")))?;

    let body = format!(r#"{{"format":"spinforge-export/v1","sha256":"{sha256}","data":{data}}}"#);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[utoipa::path(post, path = "/api/v1/users/{id}/erase", tag = "privacy",
    params(("id" = i64, Path)), request_body = ErasureRequest,
    responses((status = 200, body = ErasureView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn erase_user(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ErasureRequest>,
) -> Result<Json<ErasureView>, ApiError> {
    let id = parse_user_id(&id)?;
    if req.with_sites && !req.confirm {
        return Err(ApiError::invalid(
            "confirm",
            "deleting the user's sites needs confirm: true",
        ));
    }
    if id == caller.0.user_id {
        return Err(ApiError::invalid("id", "an admin cannot erase itself"));
    }
    let user = user_or_404(&hub, id).await?;
    // Fail closed: the erasure must be recorded, and its key destruction
    // needs the running log's keys.
    let auditor = audit::installed()
        .filter(|a| a.writable())
        .ok_or_else(|| ApiError::Unavailable("the audit log cannot be written".into()))?;

    let owned: Vec<store::Site> = hub
        .store()
        .list_sites()
        .await?
        .into_iter()
        .filter(|s| s.owner == Some(id))
        .collect();
    let subjects = auditor.pii().subjects_of(id.0, &user.email);
    let erased = hub
        .store()
        .erase_user(store::Erasure {
            user: id,
            sites: if req.with_sites {
                owned.iter().map(|s| s.id).collect()
            } else {
                Vec::new()
            },
            audit_key_subjects: subjects.clone(),
        })
        .await
        .map_err(|e| match e {
            store::StoreError::NotFound => ApiError::NotFound("user"),
            other => other.into(),
        })?;
    auditor.pii().forget(&subjects);
    for site in &erased.sites {
        hub.site_deleted(site).await;
    }
    let wal_truncated = truncate_wal(&hub).await;

    let deleted: Vec<String> = erased.sites.iter().map(|s| s.domain.clone()).collect();
    let kept: Vec<String> = owned
        .iter()
        .map(|s| s.domain.clone())
        .filter(|d| !deleted.contains(d))
        .collect();
    // The event names the erased user by id only: a pseudonym now.
    let event = audit::AuditEvent::new("privacy.erase")
        .user(caller.0.user_id.0)
        .resource(format!("user:{}", id.0))
        .meta("subject_user", id.0)
        .meta("sites_deleted", deleted.len() as u64)
        .meta("audit_keys", erased.audit_keys);
    if let Err(e) = audit::record(event).await {
        // The erasure is committed and cannot be undone; the alarm is
        // what is left to do.
        tracing::error!(target: "spinforge::alarm", alarm = "audit", error = %e,
            user = id.0, "an erasure could not be audited");
    }
    tracing::info!(user = id.0, sites = deleted.len(), "user erased");
    Ok(Json(ErasureView {
        user_id: id.0,
        sites_deleted: deleted,
        sites_kept: kept,
        consents: erased.consents,
        sessions: erased.sessions,
        api_keys: erased.api_keys,
        audit_keys: erased.audit_keys,
        wal_truncated,
    }))
}

/// Empties the write-ahead log, so no old page image of the erased rows
/// stays in it; retried briefly while readers finish.
async fn truncate_wal(hub: &Hub) -> bool {
    for _ in 0..20 {
        match hub.store().truncate_wal().await {
            Ok(true) => return true,
            Ok(false) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => {
                tracing::warn!(error = %e, "write-ahead log not truncated after erasure");
                return false;
            }
        }
    }
    tracing::warn!("write-ahead log busy; not truncated after erasure");
    false
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
