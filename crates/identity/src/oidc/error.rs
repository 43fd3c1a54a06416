//! Why a login failed, and whose fault it is.

/// Why an ID token was refused. Says what failed, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdTokenProblem {
    /// Bad signature, a disallowed algorithm, or no key to check it with.
    Signature,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` is not our client id (a token minted for another client).
    Audience,
    /// `nonce` is missing or not the one of this login (a replayed token).
    Nonce,
    /// `exp` is in the past.
    Expired,
    /// `at_hash` does not match the access token it came with.
    AccessTokenHash,
    /// Anything else that makes it unusable (malformed, bad subject).
    Malformed,
}

impl std::fmt::Display for IdTokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdTokenProblem::Signature => "signature does not verify",
            IdTokenProblem::Issuer => "wrong issuer",
            IdTokenProblem::Audience => "issued for another client",
            IdTokenProblem::Nonce => "nonce does not match this login",
            IdTokenProblem::Expired => "expired",
            IdTokenProblem::AccessTokenHash => "at_hash does not match the access token",
            IdTokenProblem::Malformed => "malformed",
        })
    }
}

/// Why a login failed, and whose fault it is. Messages never contain the
/// client secret, the code, tokens, the PKCE verifier or the nonce.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The operator: the provider configuration breaks a rule.
    #[error("provider configuration: {field}: {rule}")]
    Config { field: &'static str, rule: String },
    /// The provider (or the network to it): discovery or its keys failed.
    #[error("provider discovery failed: {0}")]
    Discovery(String),
    /// The provider could not be reached or answered outside the protocol.
    #[error("provider unreachable or broken: {0}")]
    Upstream(String),
    /// The client: no login is waiting for this `state` (never started,
    /// tampered with, expired after 10 minutes, or already used).
    #[error("unknown, expired or already used login state")]
    UnknownState,
    /// The caller: the pending login belongs to another provider.
    #[error("the login was started with provider {started_with}, not {completed_with}")]
    ProviderMismatch {
        started_with: String,
        completed_with: String,
    },
    /// Our side: too many logins are waiting; try again shortly.
    #[error("too many logins in progress")]
    TooManyPendingLogins,
    /// The client or the provider: the code is empty or oversized, or the
    /// token endpoint refused it (wrong, expired, used, for another client,
    /// or a bad PKCE verifier). Carries the OAuth2 error code.
    #[error("authorization code refused: {0}")]
    CodeRejected(String),
    /// The user or the provider: the callback carried `error=...` instead
    /// of a code (the user said no, or the provider failed). See
    /// [`OidcError::from_callback_error`].
    #[error("the provider ended the login: {0}")]
    ProviderDenied(String),
    /// The provider sent no ID token although `openid` was requested.
    #[error("the provider sent no ID token")]
    IdTokenMissing,
    /// The provider, or an attacker in between: the ID token is not valid
    /// for this login.
    #[error("ID token refused: {0}")]
    IdTokenRejected(IdTokenProblem),
    /// The user: the provider did not tell us any email.
    #[error("the provider gave no email address")]
    EmailMissing,
    /// The user: the provider does not vouch for the email, so it cannot be
    /// linked to an account.
    #[error("the email address is not verified at the provider")]
    EmailNotVerified,
    /// The user: the email's domain is not one the operator allows.
    #[error("email domain {domain} is not allowed")]
    EmailDomainNotAllowed { domain: String },
}

impl OidcError {
    /// The error for a callback with `error=...` (RFC 6749 §4.1.2.1). Keeps
    /// only a short OAuth2 error code (`[a-z_]`, at most 64 characters): the
    /// rest of the callback is the attacker's to choose. The pending login
    /// should still be taken (and so spent) by its `state`.
    pub fn from_callback_error(error: &str) -> OidcError {
        let safe = !error.is_empty()
            && error.len() <= 64
            && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        OidcError::ProviderDenied(if safe { error } else { "unknown_error" }.to_owned())
    }

    /// A short, stable code for the API's error JSON and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::Config { .. } => "oidc_config",
            OidcError::Discovery(_) => "oidc_discovery",
            OidcError::Upstream(_) => "oidc_upstream",
            OidcError::UnknownState => "oidc_unknown_state",
            OidcError::ProviderMismatch { .. } => "oidc_provider_mismatch",
            OidcError::TooManyPendingLogins => "oidc_busy",
            OidcError::CodeRejected(_) => "oidc_code_rejected",
            OidcError::ProviderDenied(_) => "oidc_provider_denied",
            OidcError::IdTokenMissing => "oidc_id_token_missing",
            OidcError::IdTokenRejected(_) => "oidc_id_token_rejected",
            OidcError::EmailMissing => "oidc_email_missing",
            OidcError::EmailNotVerified => "oidc_email_not_verified",
            OidcError::EmailDomainNotAllowed { .. } => "oidc_email_domain_not_allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_errors_keep_only_a_safe_oauth2_code() {
        for (raw, kept) in [
            ("access_denied", "access_denied"),
            ("server_error", "server_error"),
            ("<script>alert(1)</script>", "unknown_error"),
            ("Access Denied", "unknown_error"),
            ("", "unknown_error"),
        ] {
            match OidcError::from_callback_error(raw) {
                OidcError::ProviderDenied(code) => assert_eq!(code, kept, "{raw}"),
                other => panic!("{other:?}"),
            }
        }
        let long = "a".repeat(65);
        assert!(
            matches!(OidcError::from_callback_error(&long), OidcError::ProviderDenied(c) if c == "unknown_error")
        );
    }
}
