//! The hub's rate limits, counted by the shield (GCRA, with its clock,
//! allowlist and emergency factor):
//!
//! - auth endpoints ([`AUTH_ROUTES`]): the auth policy (default 5 per 15
//!   minutes) per client address, and per account when the request names
//!   one (the `email` of a login);
//! - every API route but the health probes: the API policy (default 100 per minute), counted
//!   against the caller's valid credential (`user:<id>`, `key:<id>`), or
//!   against the client address for public routes and for requests whose
//!   credential is missing or invalid, so made-up keys buy nothing.
//!
//! Refusals are 429 with `Retry-After`, `RateLimit` and `RateLimit-Policy`
//! ([`crate::error::ApiError::RateLimited`]), distinct from the identity
//! lockout's 429 by their code (`rate_limited`, not `locked`).
//!
//! [`auth_limit`] runs before the access check (it needs only the address
//! and the body); [`charge`] is called by [`crate::access`] once it knows
//! whether the caller's credential is valid.

use crate::access::PeerAddr;
use crate::error::ApiError;
use crate::Hub;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use identity::Principal;
use shield::Shield;

/// Routes under the auth policy: each one is a guess at a credential.
pub const AUTH_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/setup"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/session"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/users/me/totp/confirm"),
    ("GET", "/api/v1/auth/oidc/{provider}/callback"),
    ("POST", "/api/v1/auth/oidc/token"),
];

/// Largest body read to find the account a login names (the API's JSON
/// limit is the same).
const BODY_LIMIT: usize = 64 * 1024;

/// Middleware: the auth policy for [`AUTH_ROUTES`]. Runs before the
/// access check, so a refused guess costs no password hash.
pub async fn auth_limit(
    State(_hub): State<Hub>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let method = request.method().as_str();
    if !AUTH_ROUTES.iter().any(|(m, r)| *m == method && *r == route) {
        return next.run(request).await;
    }
    let (Some(shield), Some(peer)) = (
        request.extensions().get::<Shield>().cloned(),
        request.extensions().get::<PeerAddr>().copied(),
    ) else {
        // Limitation: a hub built without the shield (its own unit tests)
        // has no limits; `serve` always adds it.
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::BodyTooLarge.into_response(),
    };
    let account = login_account(&bytes);
    if let Err(limit) = shield.check_hub_auth(peer.0.ip(), account.as_deref()) {
        return ApiError::RateLimited(limit).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The account a login body names: its `email`, trimmed and lower-cased
/// (the identity service's key for lockouts too), at most 254 characters.
fn login_account(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        email: Option<String>,
    }
    let email = serde_json::from_slice::<Named>(body).ok()?.email?;
    let email: String = email.trim().to_lowercase().chars().take(254).collect();
    (!email.is_empty()).then_some(email)
}

/// The API policy, called by the access check: `principal` is the caller
/// when its credential is valid, `None` for public routes and for missing
/// or invalid credentials (then the client address is the key).
pub fn charge(parts: &Parts, principal: Option<&Principal>) -> Result<(), ApiError> {
    // Health probes are never limited: load balancers poll them.
    if matches!(parts.uri.path(), "/healthz" | "/readyz") {
        return Ok(());
    }
    let (Some(shield), Some(peer)) = (
        parts.extensions.get::<Shield>(),
        parts.extensions.get::<PeerAddr>(),
    ) else {
        return Ok(());
    };
    let credential = principal.map(|p| match &p.api_key {
        Some(key) => format!("key:{key}"),
        None => format!("user:{}", p.user_id),
    });
    shield
        .check_hub_api(peer.0.ip(), credential.as_deref())
        .map_err(ApiError::RateLimited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_the_normalised_email_of_the_body() {
        assert_eq!(
            login_account(br#"{"email": " Admin@Example.COM ", "password": "x"}"#).as_deref(),
            Some("admin@example.com")
        );
        assert_eq!(login_account(br#"{"refresh_token": "t"}"#), None);
        assert_eq!(login_account(br#"{"email": "  "}"#), None);
        assert_eq!(login_account(b"not json"), None);
    }

    #[test]
    fn every_auth_route_is_a_declared_route() {
        for (method, route) in AUTH_ROUTES {
            let method: axum::http::Method = method.parse().expect("method");
            assert!(
                crate::access::declared(&method, route).is_some(),
                "{method} {route} is not in ROUTES"
            );
        }
    }
}
