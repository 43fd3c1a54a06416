//! How API routes learn who is calling. A route declares what it needs by
//! taking [`Admin`] as an argument; the check happens here, once.

use crate::error::ApiError;
use crate::Hub;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use identity::Principal;
use store::Role;

/// An authenticated caller with the admin role.
// Limitation: the platform core has only admins; the identity issue
// replaces this with per-route permissions and ownership checks.
pub struct Admin(pub Principal);

impl FromRequestParts<Hub> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Admin, ApiError> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let principal = match hub.identity().authenticate(bearer.trim()).await {
            Ok(principal) => principal,
            Err(e) => {
                tracing::info!(
                    target: "spinforge::audit", event = "auth.token_rejected",
                    path = %parts.uri.path(), "request with an invalid token refused"
                );
                return Err(e.into());
            }
        };
        if principal.role != Role::Admin {
            tracing::info!(
                target: "spinforge::audit", event = "access.denied",
                user = %principal.user_id, path = %parts.uri.path(), "permission denied"
            );
            return Err(ApiError::Forbidden);
        }
        Ok(Admin(principal))
    }
}
