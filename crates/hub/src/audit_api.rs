//! `GET /api/v1/audit`: the audit log, filtered and paged, newest first.
//! This module turns query parameters into an [`audit::AuditQuery`] and
//! decides which customer's events a caller may see; the log itself
//! lives in the `audit` crate.

use crate::access::Caller;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::Hub;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query};
use axum::routing::get;
use axum::{Json, Router};
use identity::Principal;
use serde::Deserialize;

/// Events per page unless the caller asks otherwise.
const DEFAULT_LIMIT: u32 = 100;

/// The audit routes, nested under `/api/v1`. The log's reader arrives as
/// a request extension that `serve` adds.
pub fn routes() -> Router<Hub> {
    Router::new().route("/audit", get(list))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list))]
pub struct AuditDoc;

/// The query string. Unknown parameters are refused, so a misspelt
/// filter never silently widens the answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// An event type (`auth.failed`) or a prefix (`auth.` or `auth`).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The acting user's id.
    user: Option<String>,
    /// `success`, `failure` or `denied`.
    result: Option<String>,
    /// Exact resource, e.g. `site:shop.example.com`.
    resource: Option<String>,
    /// RFC 3339, or an age like `24h`.
    since: Option<String>,
    until: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Events newer than this sequence number, oldest first (follow).
    after: Option<String>,
    /// 1 to 1000, default 100.
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    responses((status = 200), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    Caller(who): Caller,
    Extension(reader): Extension<audit::AuditReader>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<audit::Page>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let mut query = to_query(params)?;
    query.customer = customer_scope(&who);
    let page = reader.query(&query).await.map_err(from_audit)?;
    Ok(Json(page))
}

/// The customer whose events the caller is limited to; `None` means all
/// (admins). Anyone else sees only events tagged with their own customer.
// Limitation: site events (deploy, rollback, delete, restart) carry their
// site's customer; identity and shield events do not yet, so developers
// do not see those (tagging them at their source would).
fn customer_scope(who: &Principal) -> Option<String> {
    if who.role == store::Role::Admin {
        return None;
    }
    Some(match who.customer {
        Some(customer) => customer.to_string(),
        // No customer: a value no event carries, so nothing is shown.
        None => "-".to_owned(),
    })
}

fn to_query(params: Params) -> Result<audit::AuditQuery, ApiError> {
    let now = now_us();
    let seq = |value: Option<String>, field: &'static str| {
        value
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| ApiError::invalid(field, "must be a sequence number"))
            })
            .transpose()
    };
    let time = |value: Option<String>, field: &'static str| {
        value
            .map(|v| audit::parse_time(&v, field, now).map_err(from_audit))
            .transpose()
    };
    Ok(audit::AuditQuery {
        kind: params
            .kind
            .map(|k| audit::TypeFilter::parse(&k).map_err(from_audit))
            .transpose()?,
        actor_user: params
            .user
            .map(|u| {
                u.parse::<i64>()
                    .map_err(|_| ApiError::invalid("user", "must be a user id (a whole number)"))
            })
            .transpose()?,
        result: params
            .result
            .map(|r| {
                audit::Outcome::parse(&r).ok_or_else(|| {
                    ApiError::invalid("result", "must be success, failure or denied")
                })
            })
            .transpose()?,
        resource: params.resource,
        since_us: time(params.since, "since")?,
        until_us: time(params.until, "until")?,
        before: seq(params.cursor, "cursor")?,
        after: seq(params.after, "after")?,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT),
        customer: None,
    })
}

/// The one place audit errors become API errors.
fn from_audit(e: audit::AuditError) -> ApiError {
    match e {
        audit::AuditError::Invalid { field, message } => ApiError::invalid(field, message),
        other => ApiError::internal(other),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
