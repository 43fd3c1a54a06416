//! The shield's two error types: [`Refusal`], why a request was stopped
//! (always the client's doing), and [`ShieldError`], why an operator's
//! change to bans, emergency mode or a site policy did not happen.

use crate::rate::RateLimited;
use http::StatusCode;

/// Why a request was refused. Every variant is the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("client is banned")]
    Banned,
    /// Ambiguous or malformed message framing (request smuggling shapes).
    #[error("bad request framing: {0}")]
    BadFraming(&'static str),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request URI too long")]
    UriTooLong,
    #[error("rate limit exceeded")]
    RateLimited(RateLimited),
    /// The web-application firewall blocked it (block mode, threshold
    /// reached); the audit event says why.
    #[error("blocked by the web-application firewall")]
    WafBlocked,
}

impl Refusal {
    /// The status the edge answers with; the one place refusals meet the
    /// wire.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Banned | Refusal::WafBlocked => StatusCode::FORBIDDEN,
            Refusal::BadFraming(_) => StatusCode::BAD_REQUEST,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// True iff the connection should be closed after the response: the
    /// framing cannot be trusted, so neither can the next request on it.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Refusal::BadFraming(_) | Refusal::BodyTooLarge)
    }
}

/// Why a change to the shield's state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShieldError {
    /// The caller: a value breaks a rule; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The caller: nothing matches (no such ban).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Our side: the state file could not be written.
    #[error("cannot save the shield state: {0}")]
    Persist(String),
}
