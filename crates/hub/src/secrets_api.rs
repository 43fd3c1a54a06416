//! A site's secrets in the API (issue 8): set, list and remove, under
//! `/api/v1/sites/{domain}/secrets`. No response ever carries a value:
//! a set answers with the name and version only. The secret store
//! arrives as a request extension that `serve` adds.
//!
//! Also the adapter that hands a site's secrets to the spinlet
//! supervisor at each start, with a `secret.read` audit event.

use crate::access::Caller;
use crate::api::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::Hub;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use identity::Permission;
use secrets::{SecretMeta, Secrets, SecretsError};
use serde::{Deserialize, Serialize};
use spinlet::{SecretEnv, SecretEnvFuture};
use std::sync::Arc;
use store::Store;

/// The routes, to be nested under `/api/v1`.
pub fn routes() -> Router<Hub> {
    Router::new()
        .route("/sites/{domain}/secrets", get(list_secrets))
        .route(
            "/sites/{domain}/secrets/{name}",
            put(set_secret).delete(remove_secret),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list_secrets, set_secret, remove_secret))]
pub struct SecretsDoc;

/// The one place secret-store errors become API errors. Messages name
/// rows and keys, never values.
pub(crate) fn api_error(e: SecretsError) -> ApiError {
    match e {
        SecretsError::Invalid { field, message } => ApiError::Invalid { field, message },
        SecretsError::NotFound => ApiError::NotFound("secret"),
        SecretsError::UnknownMasterKey { .. }
        | SecretsError::KeyService(_)
        | SecretsError::KeyServiceRefused(_) => ApiError::Unavailable(e.to_string()),
        other => ApiError::internal(other),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct SecretView {
    name: String,
    version: i64,
    /// The user who set this version, if any.
    created_by: Option<i64>,
    /// Unix seconds.
    created_at: i64,
    /// Id of the master key that wraps this version's data key.
    master_key: String,
    /// True iff an incident rotated this secret: apps start without it
    /// until a new value is set or the incident lifts its action.
    rotation_required: bool,
    /// The (earliest) incident that requires the rotation.
    rotation_incident: Option<i64>,
}

impl From<SecretMeta> for SecretView {
    fn from(m: SecretMeta) -> SecretView {
        SecretView {
            name: m.name,
            version: m.version,
            created_by: m.created_by,
            created_at: m.created_at,
            master_key: m.master_key,
            rotation_required: m.rotation_incident.is_some(),
            rotation_incident: m.rotation_incident,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct SecretList {
    secrets: Vec<SecretView>,
}

#[utoipa::path(get, path = "/api/v1/sites/{domain}/secrets", tag = "secrets",
    params(("domain" = String, Path)),
    responses((status = 200, body = SecretList), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_secrets(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(secrets): Extension<Secrets>,
    Path(domain): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::SecretsRead, &domain)
        .await?;
    let list = secrets.list(site.id.0).await.map_err(api_error)?;
    Ok(Json(SecretList {
        secrets: list.into_iter().map(SecretView::from).collect(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetSecret {
    /// The value; never returned by any route.
    #[schema(value_type = String)]
    value: secrecy::SecretString,
}

#[utoipa::path(put, path = "/api/v1/sites/{domain}/secrets/{name}", tag = "secrets",
    params(("domain" = String, Path), ("name" = String, Path)),
    request_body = SetSecret,
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_secret(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(secrets): Extension<Secrets>,
    Path((domain, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetSecret>,
) -> Result<Json<SecretView>, ApiError> {
    let site = hub
        .site_for(&caller, Permission::SecretsWrite, &domain)
        .await?;
    let who = caller.0.user_id;
    let customer = site.customer.map(|c| c.to_string()).unwrap_or_default();
    let meta = match secrets
        .set(site.id.0, &name, &body.value, Some(who.0))
        .await
    {
        Ok(meta) => meta,
        Err(e) => {
            // A refused name (or any failure) is recorded with its rule;
            // the messages name rows and keys, never values.
            let result = match e {
                SecretsError::Invalid { .. } => "denied",
                _ => "failure",
            };
            tracing::info!(target: "spinforge::audit", event = "secret.write", user = %who,
                site = %site.domain, customer = %customer, result, reason = %e);
            return Err(api_error(e));
        }
    };
    tracing::info!(target: "spinforge::audit", event = "secret.write", user = %who,
        site = %site.domain, customer = %customer, name = %meta.name, version = meta.version,
        kek_id = %meta.master_key);
    Ok(Json(meta.into()))
}

#[utoipa::path(delete, path = "/api/v1/sites/{domain}/secrets/{name}", tag = "secrets",
    params(("domain" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_secret(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(secrets): Extension<Secrets>,
    Path((domain, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let site = hub
        .site_for(&caller, Permission::SecretsWrite, &domain)
        .await?;
    secrets.remove(site.id.0, &name).await.map_err(api_error)?;
    tracing::info!(target: "spinforge::audit", event = "secret.delete",
        user = %caller.0.user_id, site = %site.domain, name = %name,
        customer = %site.customer.map(|c| c.to_string()).unwrap_or_default());
    Ok(StatusCode::NO_CONTENT)
}

/// Hands each spinlet start its site's secrets.
pub struct StoreSecretEnv {
    pub store: Arc<dyn Store>,
    pub secrets: Secrets,
}

impl SecretEnv for StoreSecretEnv {
    fn load<'a>(&'a self, site: &'a str) -> SecretEnvFuture<'a> {
        Box::pin(async move {
            let record = self
                .store
                .site_by_domain(site)
                .await
                .map_err(|e| format!("cannot look the site up: {e}"))?
                .ok_or_else(|| "the site no longer exists".to_owned())?;
            match self.secrets.site_env(record.id.0).await {
                Ok(env) => {
                    let withheld = self
                        .secrets
                        .withheld(record.id.0)
                        .await
                        .map_err(|e| format!("cannot read which secrets are withheld: {e}"))?;
                    if !env.is_empty() || !withheld.is_empty() {
                        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
                        tracing::info!(target: "spinforge::audit", event = "secret.read",
                            site = %site, count = env.len(), names = %names.join(","),
                            withheld = %withheld.join(","),
                            "secrets handed to a spinlet start");
                    }
                    Ok(env)
                }
                Err(e) => {
                    tracing::warn!(target: "spinforge::audit", event = "secret.read_failed",
                        site = %site, error = %e, "spinlet not started: secrets unreadable");
                    Err(e.to_string())
                }
            }
        })
    }
}
