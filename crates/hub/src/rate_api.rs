//! The hub's rate limits, counted by the shield (GCRA, with its clock,
//! allowlist and emergency factor):
//!
//! - auth endpoints ([`AUTH_ROUTES`]): a failure budget per client address
//!   (the auth policy, default 5 *failures* per 15 minutes). Each attempt
//!   is charged before it runs and given back when it succeeded, so a
//!   team behind one NAT that types its passwords right is never refused.
//!   Accounts are guarded by the identity lockout (keyed by account and
//!   source network), not here, so naming someone's e-mail costs them
//!   nothing;
//! - `POST /auth/refresh`: its own, roomier limit per address
//!   (`hub_refresh_limit`, default 300 per 15 minutes), every attempt
//!   counted;
//! - every API route but the health probes: the API policy (default 100
//!   per minute), counted against the account of the caller's valid
//!   credential (`user:<id>`, whether it shows a token or any of its API
//!   keys, as the edge counts them), so minting more keys buys no more
//!   requests; or against the client address for public routes and for
//!   requests whose credential is missing or invalid, so made-up keys buy
//!   nothing.
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

/// The refresh route: its own limit, not the failure budget.
const REFRESH_ROUTE: &str = "/api/v1/auth/refresh";
/// Largest error body read to tell "password right, second factor
/// missing" from a failure (error bodies are small JSON).
const ERROR_BODY_LIMIT: usize = 16 * 1024;

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
    let ip = peer.0.ip();
    if route == REFRESH_ROUTE {
        if let Err(limit) = shield.check_hub_refresh(ip) {
            return ApiError::RateLimited(limit).into_response();
        }
        return next.run(request).await;
    }
    let receipt = match shield.charge_hub_auth(ip) {
        Ok(receipt) => receipt,
        Err(limit) => return ApiError::RateLimited(limit).into_response(),
    };
    let response = next.run(request).await;
    let (succeeded, response) = succeeded(response).await;
    if succeeded {
        shield.hub_auth_succeeded(receipt);
    }
    response
}

/// Whether an auth attempt succeeded: a 2xx, a redirect that carries no
/// `error` (single sign-on), or the 401 that asks for the second factor
/// after a right password (its follow-up is charged on its own).
async fn succeeded(response: Response) -> (bool, Response) {
    let status = response.status();
    if status.is_success() {
        return (true, response);
    }
    if status.is_redirection() {
        let to_error = response
            .headers()
            .get(axum::http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .is_some_and(|l| l.contains("?error=") || l.contains("&error="));
        return (!to_error, response);
    }
    if status != axum::http::StatusCode::UNAUTHORIZED {
        return (false, response);
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_LIMIT).await else {
        let failed = Response::from_parts(parts, Body::empty());
        return (false, failed);
    };
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    let ok = code.as_deref() == Some("second_factor_required");
    (ok, Response::from_parts(parts, Body::from(bytes)))
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
    // One bucket per account: a token and every API key of the user
    // share it.
    let credential = principal.map(|p| format!("user:{}", p.user_id.0));
    shield
        .check_hub_api(peer.0.ip(), credential.as_deref())
        .map_err(ApiError::RateLimited)
}

#[cfg(test)]
mod tests {
    use super::*;

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
