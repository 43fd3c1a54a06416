//! Who may call which route: the one table of declared permissions, and
//! the middleware that enforces it before any handler runs.
//!
//! Every route of the API is listed in [`ROUTES`] with the access it needs.
//! A route that is missing from the table is refused (fail closed), and a
//! test walks the OpenAPI document to catch it before that. Ownership of
//! the resource a route touches is checked in the handler, once the stored
//! resource is loaded, through [`Hub::authorize`] — which calls the same
//! [`identity::authorize`] function.

use crate::error::ApiError;
use crate::Hub;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use identity::{authorize, ClientInfo, Denied, Permission, Principal, Resource};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;

/// The name of the browser session cookie.
pub const SESSION_COOKIE: &str = "sf_session";
/// The header a cookie-authenticated change must carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No login: health, login itself, the public keys.
    Public,
    /// A person logged in with a password or single sign-on (not an API
    /// key), acting on itself: profile, own sessions, logout.
    SignedIn,
    /// Any valid credential, API keys included (who am I).
    AnyCredential,
    /// A logged-in caller holding the permission.
    Needs(Permission),
}

use Access::{AnyCredential, Needs, Public, SignedIn};
use Permission as P;

/// Every route of the API with the access it needs: the one place a
/// reader checks who may do what.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("POST", "/api/v1/setup", Public),
    ("POST", "/api/v1/auth/login", Public),
    ("POST", "/api/v1/auth/refresh", Public),
    ("POST", "/api/v1/auth/logout", SignedIn),
    ("POST", "/api/v1/auth/session", Public),
    ("DELETE", "/api/v1/auth/session", SignedIn),
    ("GET", "/api/v1/csrf-token", SignedIn),
    ("GET", "/api/v1/.well-known/jwks.json", Public),
    ("GET", "/api/v1/whoami", AnyCredential),
    ("GET", "/api/v1/users", Needs(P::UsersManage)),
    ("POST", "/api/v1/users", Needs(P::UsersManage)),
    ("GET", "/api/v1/users/me", SignedIn),
    ("PATCH", "/api/v1/users/me", SignedIn),
    ("GET", "/api/v1/users/{id}", Needs(P::UsersManage)),
    ("PATCH", "/api/v1/users/{id}", Needs(P::UsersManage)),
    ("DELETE", "/api/v1/users/{id}", Needs(P::UsersManage)),
    (
        "DELETE",
        "/api/v1/users/{id}/sessions",
        Needs(P::UsersManage),
    ),
    ("DELETE", "/api/v1/users/{id}/lock", Needs(P::UsersManage)),
    ("DELETE", "/api/v1/users/{id}/totp", Needs(P::UsersManage)),
    ("POST", "/api/v1/users/me/totp", SignedIn),
    ("DELETE", "/api/v1/users/me/totp", SignedIn),
    ("POST", "/api/v1/users/me/totp/confirm", SignedIn),
    ("GET", "/api/v1/sessions", SignedIn),
    ("DELETE", "/api/v1/sessions/{id}", SignedIn),
    ("GET", "/api/v1/apikeys", Needs(P::ApiKeysManage)),
    ("POST", "/api/v1/apikeys", Needs(P::ApiKeysManage)),
    ("DELETE", "/api/v1/apikeys/{id}", Needs(P::ApiKeysManage)),
    ("POST", "/api/v1/keys/signing/rotate", Needs(P::KeysManage)),
    ("GET", "/api/v1/sites", Needs(P::SitesRead)),
    ("POST", "/api/v1/sites", Needs(P::SitesCreate)),
    ("GET", "/api/v1/sites/{domain}", Needs(P::SitesRead)),
    ("PATCH", "/api/v1/sites/{domain}", Needs(P::SitesUpdate)),
    ("DELETE", "/api/v1/sites/{domain}", Needs(P::SitesDelete)),
    (
        "GET",
        "/api/v1/sites/{domain}/releases",
        Needs(P::ReleasesRead),
    ),
    (
        "POST",
        "/api/v1/sites/{domain}/releases",
        Needs(P::ReleasesDeploy),
    ),
    (
        "POST",
        "/api/v1/sites/{domain}/rollback",
        Needs(P::ReleasesDeploy),
    ),
    (
        "GET",
        "/api/v1/sites/{domain}/status",
        Needs(P::MetricsRead),
    ),
    ("GET", "/api/v1/sites/{domain}/logs", Needs(P::LogsRead)),
    (
        "POST",
        "/api/v1/sites/{domain}/restart",
        Needs(P::AppsRestart),
    ),
    ("GET", "/api/v1/bans", Needs(P::ShieldManage)),
    ("POST", "/api/v1/bans", Needs(P::ShieldManage)),
    ("DELETE", "/api/v1/bans/{ip}", Needs(P::ShieldManage)),
    ("GET", "/api/v1/shield/emergency", Needs(P::ShieldManage)),
    ("PUT", "/api/v1/shield/emergency", Needs(P::ShieldManage)),
    ("GET", "/api/v1/sites/{domain}/shield", Needs(P::SitesRead)),
    (
        "PUT",
        "/api/v1/sites/{domain}/shield",
        Needs(P::SitesUpdate),
    ),
    (
        "DELETE",
        "/api/v1/sites/{domain}/shield",
        Needs(P::SitesUpdate),
    ),
    ("GET", "/api/v1/audit", Needs(P::AuditRead)),
    // Incidents (incident_api.rs).
    ("GET", "/api/v1/incidents", Needs(P::IncidentRead)),
    ("POST", "/api/v1/incidents", Needs(P::IncidentManage)),
    ("GET", "/api/v1/incidents/{id}", Needs(P::IncidentRead)),
    (
        "POST",
        "/api/v1/incidents/{id}/contain",
        Needs(P::IncidentManage),
    ),
    (
        "POST",
        "/api/v1/incidents/{id}/actions/{action}/lift",
        Needs(P::IncidentManage),
    ),
    (
        "POST",
        "/api/v1/incidents/{id}/resolve",
        Needs(P::IncidentManage),
    ),
    // Certificates and HTTPS (certs_api.rs); ownership checked per site.
    ("GET", "/api/v1/certs", Needs(P::SitesRead)),
    ("POST", "/api/v1/certs/{domain}", Needs(P::SitesUpdate)),
    ("PUT", "/api/v1/sites/{domain}/https", Needs(P::SitesUpdate)),
    // Per-site upstream TLS (upstream_tls_api.rs); ownership checked per
    // site.
    (
        "GET",
        "/api/v1/sites/{domain}/upstream-tls",
        Needs(P::SitesRead),
    ),
    (
        "PUT",
        "/api/v1/sites/{domain}/upstream-tls",
        Needs(P::SitesUpdate),
    ),
    (
        "DELETE",
        "/api/v1/sites/{domain}/upstream-tls",
        Needs(P::SitesUpdate),
    ),
    // Single sign-on (oidc_api.rs): the login itself, so no credential.
    ("GET", "/api/v1/auth/oidc/{provider}/start", Public),
    ("GET", "/api/v1/auth/oidc/{provider}/callback", Public),
    // The CLI's code exchange: the one-time code and the PKCE verifier
    // are the credential.
    ("POST", "/api/v1/auth/oidc/token", Public),
    // A site's own sandbox settings (sandbox_api.rs): admins only.
    (
        "GET",
        "/api/v1/sites/{domain}/sandbox",
        Needs(P::SystemConfig),
    ),
    (
        "PUT",
        "/api/v1/sites/{domain}/sandbox",
        Needs(P::SystemConfig),
    ),
    // Privacy (privacy_api.rs): own consents and data, and the admin's
    // export and erasure of a user.
    ("GET", "/api/v1/me/consents", SignedIn),
    ("POST", "/api/v1/me/consents", SignedIn),
    ("GET", "/api/v1/me/export", SignedIn),
    ("GET", "/api/v1/me/activity", SignedIn),
    ("GET", "/api/v1/users/{id}/export", Needs(P::UsersManage)),
    ("POST", "/api/v1/users/{id}/erase", Needs(P::UsersManage)),
    // Secrets (secrets_api.rs, issue 8): values go in, never come out.
    (
        "GET",
        "/api/v1/sites/{domain}/secrets",
        Needs(P::SecretsRead),
    ),
    (
        "PUT",
        "/api/v1/sites/{domain}/secrets/{name}",
        Needs(P::SecretsWrite),
    ),
    (
        "DELETE",
        "/api/v1/sites/{domain}/secrets/{name}",
        Needs(P::SecretsWrite),
    ),
    ("GET", "/api/v1/openapi.json", Public),
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Needs(P::SystemMetrics)),
];

/// Routes that process personal data for a purpose beyond the necessary:
/// the caller must hold that consent (`/api/v1/me/consents`), or the
/// answer is 451 naming the purpose. Checked after [`ROUTES`].
// Limitation: only hub routes can require a consent; site visitors are
// not platform users (a consent cookie checked by the shield would let a
// site option require one at the edge).
pub const CONSENT_ROUTES: &[(&str, &str, store::Purpose)] =
    &[("GET", "/api/v1/me/activity", store::Purpose::Analytics)];

/// What an admin without a second factor may still reach when one is
/// required: enough to enrol it, see who it is, and leave.
const ENROLMENT_ROUTES: &[&str] = &[
    "/api/v1/users/me/totp",
    "/api/v1/users/me/totp/confirm",
    "/api/v1/whoami",
    "/api/v1/auth/logout",
];

/// Routes that exist only in debug builds (what `cargo test` runs), kept
/// out of the OpenAPI document.
#[cfg(debug_assertions)]
const TEST_ROUTES: &[(&str, &str, Access)] =
    &[("POST", "/api/v1/shield/test-clock", Needs(P::ShieldManage))];
#[cfg(not(debug_assertions))]
const TEST_ROUTES: &[(&str, &str, Access)] = &[];

static TABLE: LazyLock<HashMap<(&'static str, &'static str), Access>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .chain(TEST_ROUTES)
        .map(|(method, path, access)| ((*method, *path), *access))
        .collect()
});

/// The access a route declares, if it declares one. HEAD is GET.
pub fn declared(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    TABLE.get(&(method, path)).copied()
}

/// The TCP peer of an API connection, put on each request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The authenticated caller, placed on the request by [`enforce`].
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<Hub> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Hub) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Where the request came from, for throttling and audit events.
#[derive(Debug, Clone)]
pub struct Client(pub ClientInfo);

impl FromRequestParts<Hub> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Hub) -> Result<Client, ApiError> {
        Ok(Client(client_info(parts)))
    }
}

fn client_info(parts: &Parts) -> ClientInfo {
    // Limitation: the API's client address is its TCP peer; behind a proxy
    // it would need the shield's trusted-proxy resolver.
    let ip = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    ClientInfo::new(ip, user_agent).with_device(named_cookie(
        &parts.headers,
        identity::lockout::DEVICE_COOKIE,
    ))
}

/// The value of the cookie `name`, if the request carries one.
pub fn named_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The value of the session cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    named_cookie(headers, SESSION_COOKIE)
}

/// The middleware: looks the route up in [`ROUTES`], authenticates the
/// caller, checks CSRF for cookie changes and the declared permission,
/// and hands the [`Caller`] to the handler.
pub async fn enforce(
    State(hub): State<Hub>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    match check(&hub, matched.as_ref().map(MatchedPath::as_str), &mut parts).await {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(e) => e.into_response(),
    }
}

async fn check(hub: &Hub, route: Option<&str>, parts: &mut Parts) -> Result<(), ApiError> {
    let Some(route) = route else {
        return Err(ApiError::NotFound("route"));
    };
    let Some(access) = declared(&parts.method, route) else {
        // Fail closed: a handler nobody declared never runs.
        tracing::error!(method = %parts.method, route, "route has no declared access; refused");
        return Err(ApiError::MethodNotAllowed);
    };
    if access == Public {
        // Rate limits (rate_api.rs): public routes count per address.
        return crate::rate_api::charge(parts, None);
    }

    let principal = match authenticate(hub, parts).await {
        Ok(principal) => principal,
        Err(e) => {
            // A missing or invalid credential counts against the address.
            crate::rate_api::charge(parts, None)?;
            return Err(e);
        }
    };
    if let Some(scope) = audit::http::current() {
        scope.set_caller(audit::http::ScopeCaller {
            user_id: principal.user_id.0,
            role: principal.role.as_str().to_owned(),
            api_key_id: principal.api_key.clone(),
            customer: principal.customer.map(|c| c.to_string()),
        });
    }
    crate::rate_api::charge(parts, Some(&principal))?;
    if principal.role == store::Role::Admin
        && !principal.second_factor
        && principal.method != identity::AuthMethod::ApiKey
        && hub.identity().config().require_totp_for_admins
        && !ENROLMENT_ROUTES.contains(&route)
    {
        return Err(ApiError::SecondFactor {
            code: "totp_enrolment_required",
            message: "admins need a second factor: POST /api/v1/users/me/totp first",
        });
    }
    if access == SignedIn && principal.method == identity::AuthMethod::ApiKey {
        // Keys are for automation: sessions and profiles belong to people.
        audit_refused_key(&principal, parts.uri.path());
        return Err(ApiError::Forbidden);
    }
    if let Needs(permission) = access {
        if let Err(denied) = authorize(&principal, permission, None) {
            audit_denied(&principal, permission, &denied, parts.uri.path());
            return Err(ApiError::Forbidden);
        }
    }
    check_consent(hub, &parts.method, route, &principal).await?;
    parts.extensions.insert(Caller(principal));
    Ok(())
}

/// Refuses a consent-bound route (see [`CONSENT_ROUTES`]) to a caller
/// who has not given, or has withdrawn, its purpose.
async fn check_consent(
    hub: &Hub,
    method: &Method,
    route: &str,
    principal: &Principal,
) -> Result<(), ApiError> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let Some((_, _, purpose)) = CONSENT_ROUTES
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
    else {
        return Ok(());
    };
    if crate::privacy_api::has_consent(hub, principal.user_id, *purpose).await? {
        return Ok(());
    }
    tracing::info!(
        target: "spinforge::audit", event = "privacy.consent_missing", user = %principal.user_id,
        purpose = purpose.as_str(), path = route, "refused: consent not given"
    );
    Err(ApiError::ConsentRequired(purpose.as_str()))
}

/// Finds the caller from a bearer credential, or else a session cookie.
/// A cookie may only change state with its CSRF token, from our origin.
async fn authenticate(hub: &Hub, parts: &Parts) -> Result<Principal, ApiError> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(shield::bearer_credential);
    if let Some(bearer) = bearer {
        return hub
            .identity()
            .authenticate(bearer.trim())
            .await
            .map_err(|e| rejected_credential(e, parts));
    }
    let Some(cookie) = session_cookie(&parts.headers) else {
        return Err(ApiError::Unauthorized);
    };
    let principal = hub
        .identity()
        .authenticate_cookie(cookie)
        .await
        .map_err(|e| rejected_credential(e, parts))?;
    if !parts.method.is_safe() {
        check_csrf(hub, parts, cookie, &principal)?;
    }
    Ok(principal)
}

fn rejected_credential(e: identity::IdentityError, parts: &Parts) -> ApiError {
    if matches!(e, identity::IdentityError::BadToken) {
        let client = client_info(parts);
        // An empty `client_ip` is dropped by the audit log; an address is
        // anonymised there as configured.
        let client_ip = client.ip.map(|ip| ip.to_string()).unwrap_or_default();
        tracing::info!(
            target: "spinforge::audit", event = "auth.token_rejected",
            path = %parts.uri.path(), client_ip = %client_ip,
            "request with an invalid credential refused"
        );
    }
    e.into()
}

fn check_csrf(
    hub: &Hub,
    parts: &Parts,
    cookie: &str,
    principal: &Principal,
) -> Result<(), ApiError> {
    let refuse = |why: &'static str| {
        tracing::info!(
            target: "spinforge::audit", event = "csrf.refused", user = %principal.user_id,
            path = %parts.uri.path(), reason = why, "cookie request refused"
        );
        Err(ApiError::Csrf(why))
    };
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let same_origin = match (origin, host) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                == Some(host)
        }
        _ => false,
    };
    if !same_origin {
        return refuse("a cookie request that changes state must come from this origin");
    }
    let token = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !hub.identity().csrf_matches(cookie, token) {
        return refuse("missing or wrong X-CSRF-Token header (GET /api/v1/csrf-token)");
    }
    Ok(())
}

fn audit_refused_key(principal: &Principal, path: &str) {
    tracing::info!(
        target: "spinforge::audit", event = "permission.denied", user = %principal.user_id,
        api_key = principal.api_key.as_deref().unwrap_or(""), path,
        reason = "API keys cannot use session and profile routes", "permission denied"
    );
}

/// True iff the request's `Origin` names the host it was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                == Some(host)
        }
        _ => false,
    }
}

fn audit_denied(principal: &Principal, permission: Permission, denied: &Denied, path: &str) {
    tracing::info!(
        target: "spinforge::audit", event = "permission.denied", user = %principal.user_id,
        role = principal.role.as_str(), api_key = principal.api_key.as_deref().unwrap_or(""),
        permission = permission.name(), reason = %denied, path, "permission denied"
    );
}

/// The stable name of a resource in audit events: the site's domain,
/// `customer:<id>` (`customer:-` for platform-owned things), or
/// `user:<id>` for what one user owns.
fn resource_label(resource: Resource<'_>) -> String {
    match resource {
        Resource::Site { domain, .. } => domain.to_owned(),
        Resource::Customer(Some(customer)) => format!("customer:{customer}"),
        Resource::Customer(None) => "customer:-".to_owned(),
        Resource::OwnedBy(user) => format!("user:{user}"),
    }
}

impl Hub {
    /// Checks `permission` on a loaded resource through
    /// [`identity::authorize`]; a refusal is audited and becomes 403.
    pub fn authorize(
        &self,
        caller: &Caller,
        permission: Permission,
        resource: Resource<'_>,
    ) -> Result<(), ApiError> {
        authorize(&caller.0, permission, Some(resource)).map_err(|denied| {
            audit_denied(&caller.0, permission, &denied, &resource_label(resource));
            ApiError::Forbidden
        })
    }

    /// Loads a site and checks `permission` on it for the caller.
    pub async fn site_for(
        &self,
        caller: &Caller,
        permission: Permission,
        domain: &str,
    ) -> Result<store::Site, ApiError> {
        let site = self.site(domain).await?;
        self.authorize(
            caller,
            permission,
            Resource::Site {
                domain: &site.domain,
                customer: site.customer,
            },
        )?;
        // The request acts on this site: its events belong to the site's
        // tenant, also when a platform admin is the caller.
        if let (Some(scope), Some(customer)) = (audit::http::current(), site.customer) {
            scope.set_resource_customer(customer.to_string());
        }
        Ok(site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the OpenAPI document has declared access, and
    /// every declared route is documented: a new route cannot slip in
    /// without a permission.
    #[test]
    fn every_documented_route_declares_its_access_and_back() {
        let doc = crate::api::document();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            let operations = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            for (method, present) in operations {
                if !present {
                    continue;
                }
                let method: Method = method.parse().expect("method");
                assert!(
                    declared(&method, path).is_some(),
                    "{method} {path} is documented but declares no access in ROUTES"
                );
                documented.push((method.to_string(), path.clone()));
            }
        }
        for (method, path, _) in ROUTES {
            assert!(
                documented.contains(&(method.to_string(), path.to_string())),
                "{method} {path} is in ROUTES but not in the OpenAPI document"
            );
        }
        assert_eq!(documented.len(), ROUTES.len());
    }

    #[test]
    fn head_is_checked_as_get_and_unknown_pairs_are_undeclared() {
        assert_eq!(declared(&Method::HEAD, "/healthz"), Some(Public));
        assert_eq!(declared(&Method::PUT, "/api/v1/sites"), None);
        assert_eq!(
            declared(&Method::DELETE, "/api/v1/sites/{domain}"),
            Some(Needs(P::SitesDelete))
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; sf_session=sfc_abc; other=1"
                .parse()
                .expect("header"),
        );
        assert_eq!(session_cookie(&headers), Some("sfc_abc"));
        headers.insert(header::COOKIE, "sf_sessionx=1".parse().expect("header"));
        assert_eq!(session_cookie(&headers), None);
    }
}
