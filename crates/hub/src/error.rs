//! The hub's one error type, and the one place it becomes the API's JSON:
//! `{"error": {"code", "message", "field"}}`. Handlers return `ApiError`
//! and never build error bodies themselves.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The client sent a value that breaks a rule; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The client sent an unusable bundle.
    #[error("bundle: {0}")]
    BadBundle(String),
    /// The client sent more bytes than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The client sent a request body (not a bundle) over the JSON limit.
    #[error("request body is too large")]
    BodyTooLarge,
    /// The client is not logged in, or its token is dead.
    #[error("authentication required")]
    Unauthorized,
    /// The client is logged in but may not do this.
    #[error("permission denied")]
    Forbidden,
    /// The client asked for more than it holds (a wider API key, its own
    /// role); the message says what.
    #[error("{0}")]
    Escalation(String),
    /// The client made a cookie-authenticated change without a valid CSRF
    /// token or from a foreign origin.
    #[error("{0}")]
    Csrf(&'static str),
    /// The client may not take this value of `field` (a domain it may not
    /// claim, say); the message names the rule.
    #[error("{field}: {message}")]
    Denied {
        field: &'static str,
        message: String,
    },
    /// The client's password was right but the second factor is missing
    /// (`second_factor_required`) or wrong (`second_factor_failed`).
    #[error("{message}")]
    SecondFactor {
        code: &'static str,
        message: &'static str,
    },
    /// The client failed to log in too often; it may retry after the delay.
    #[error("too many failed logins; try again later")]
    Locked { retry_after: u64 },
    /// The client went past a rate limit; it may retry after the delay.
    /// Answered with `Retry-After` and the IETF `RateLimit` headers.
    #[error("too many requests; slow down and retry after the delay")]
    RateLimited(shield::RateLimited),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The client's app did not start or become healthy; the old release
    /// keeps serving. Carries the app's last log lines.
    #[error("the new release did not become healthy: {message}")]
    AppFailed {
        message: String,
        log_tail: Vec<String>,
    },
    /// The client used a method the route does not have.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The client asked for something that collides with existing state.
    #[error("{message}")]
    Conflict {
        field: &'static str,
        message: String,
    },
    /// The client proved who it is (single sign-on) but may not log in;
    /// the message says why.
    #[error("{0}")]
    Refused(String),
    /// A service we depend on (a login provider) failed or is busy.
    #[error("{0}")]
    Unavailable(String),
    // ---- supply chain (issue #11) ----
    /// The client's bundle pins dependency versions with known advisories
    /// at or above the deploy policy's severity; the message lists them.
    #[error("{0}")]
    Vulnerable(String),
    /// The client has not given the consent purpose the route needs.
    #[error("this needs your consent to `{0}` processing: POST /api/v1/me/consents")]
    ConsentRequired(&'static str),
    /// Our side. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field,
            message: message.into(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(detail.to_string())
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        match self {
            ApiError::Invalid { field, .. } => (StatusCode::BAD_REQUEST, "invalid", Some(field)),
            ApiError::BadBundle(_) => (StatusCode::BAD_REQUEST, "bad_bundle", Some("bundle")),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", Some("bundle")),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", Some("body")),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden | ApiError::Escalation(_) | ApiError::Refused(_) => {
                (StatusCode::FORBIDDEN, "forbidden", None)
            }
            ApiError::Denied { field, .. } => (StatusCode::FORBIDDEN, "forbidden", Some(field)),
            ApiError::Csrf(_) => (StatusCode::FORBIDDEN, "csrf_failed", None),
            ApiError::SecondFactor { code, .. } => (StatusCode::UNAUTHORIZED, code, Some("totp")),
            ApiError::Locked { .. } => (StatusCode::TOO_MANY_REQUESTS, "locked", None),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::AppFailed { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "app_failed",
                Some("release"),
            ),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::Conflict { field, .. } => (StatusCode::CONFLICT, "conflict", Some(field)),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::Vulnerable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "vulnerable_dependencies",
                Some("bundle"),
            ),
            ApiError::ConsentRequired(_) => (
                StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
                "consent_required",
                Some("purpose"),
            ),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid`, `bad_bundle`, `too_large`,
    /// `unauthorized`, `second_factor_required`, `second_factor_failed`,
    /// `forbidden`, `csrf_failed`, `totp_enrolment_required`, `locked`, `rate_limited`,
    /// `not_found`, `conflict`, `app_failed`, `vulnerable_dependencies`,
    /// `consent_required`, `internal`.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// For `app_failed`: the app's last log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed on our side");
        }
        let message = self.to_string();
        let retry_after = match &self {
            ApiError::Locked { retry_after } => Some(*retry_after),
            _ => None,
        };
        let rate_headers = match &self {
            ApiError::RateLimited(limit) => Some(limit.headers()),
            _ => None,
        };
        let log_tail = match self {
            ApiError::AppFailed { log_tail, .. } => Some(log_tail),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                field,
                log_tail,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        for (name, value) in rate_headers.into_iter().flatten() {
            response.headers_mut().insert(name, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<identity::IdentityError> for ApiError {
    fn from(e: identity::IdentityError) -> ApiError {
        use identity::IdentityError as E;
        match e {
            E::BadCredentials | E::BadToken => ApiError::Unauthorized,
            E::Invalid { field, rule } => ApiError::Invalid {
                field,
                message: rule,
            },
            E::EmailTaken => ApiError::Conflict {
                field: "email",
                message: "email is already registered".into(),
            },
            E::Locked { retry_after } => ApiError::Locked { retry_after },
            E::Escalation(message) => ApiError::Escalation(message),
            E::NotFound(what) => ApiError::NotFound(what),
            E::SecondFactorRequired => ApiError::SecondFactor {
                code: "second_factor_required",
                message: "this account needs a TOTP code (totp) or a recovery code (recovery_code)",
            },
            E::SecondFactorFailed => ApiError::SecondFactor {
                code: "second_factor_failed",
                message: "invalid or already used second-factor code",
            },
            other => ApiError::internal(other),
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> ApiError {
        match e {
            store::StoreError::NotFound => ApiError::NotFound("resource"),
            store::StoreError::Conflict("domain") => ApiError::Conflict {
                field: "domain",
                message: "domain is already taken".into(),
            },
            other => ApiError::internal(other),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
        use axum::extract::rejection::JsonRejection as R;
        match rejection {
            R::BytesRejection(inner) => inner.into(),
            other => ApiError::invalid("body", other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::invalid("body", rejection.body_text())
        }
    }
}
