//! Single sign-on: turns a provider's login callback into a verified email.
//!
//! This module owns the relying-party side of the OAuth2 authorization code
//! flow with PKCE (S256), `state` and, for OpenID Connect, `nonce`: provider
//! discovery, the authorize URL, the code exchange, the ID token checks and
//! the email rules (verified, allowed domain). It does not serve HTTP, find
//! or create users, or issue our own tokens: the hub does that with the
//! [`VerifiedIdentity`] it gets back, and links accounts only by its email.
//!
//! # Providers
//!
//! - [`ProviderKind::Oidc`]: any OpenID Connect provider with discovery
//!   (`{issuer}/.well-known/openid-configuration`).
//!   [`OidcProviderConfig::google`] is the preset for
//!   `https://accounts.google.com`. The ID token's signature (asymmetric
//!   algorithms only, keys from the provider's JWKS), `iss`, `aud`, `exp`,
//!   `nonce` and, when present, `at_hash` are checked. A signature our keys
//!   do not verify triggers one fresh discovery and a second check (key
//!   rotation), at most once a minute.
//! - [`ProviderKind::GitHub`]: OAuth2 only. After the code exchange the
//!   user id comes from `GET {api_base}/user` and the email from
//!   `GET {api_base}/user/emails` (the primary address, which must be
//!   verified). [`OidcProviderConfig::github`] is the preset.
//!
//! Every URL must be `https`, except on loopback (for tests and local
//! providers). The HTTP client follows no redirects, times out after 10 s
//! and reads at most 1 MiB of a response.
//!
//! # Flow
//!
//! ```text
//! login:    let (url, pending) = client.begin();
//!           logins.insert(pending)?;           // keyed by its state
//!           redirect the browser to `url`
//! callback: ?code=..&state=..  (or ?error=.. when the user said no)
//!           let pending = logins.take(state)?; // single use, 10 min TTL
//!           let client = the provider named by pending.provider();
//!           let who = client.complete(pending, code).await?;
//!           link by who.email (always verified), then issue our session
//! ```
//!
//! [`OidcError`] says who is at fault and never carries the client secret,
//! the code, a token, the PKCE verifier or the nonce. Each refusal and each
//! success of [`OidcClient::complete`] is an audit event
//! (`oidc.login.refused`, `oidc.login.verified`); the HTTP layer adds the
//! client IP to its own `auth.*` events.

pub mod cli;
mod config;
mod error;
mod generic;
mod github;
mod http;
mod pending;

pub use config::{
    OidcProviderConfig, ProviderKind, GITHUB_API_BASE, GITHUB_AUTH_URL, GITHUB_TOKEN_URL,
    GOOGLE_ISSUER,
};
pub use error::{IdTokenProblem, OidcError};
pub use pending::{PendingLogin, PendingLogins, DEFAULT_MAX_PENDING_LOGINS, PENDING_LOGIN_TTL};

use config::{
    check_email_domain, check_endpoint, config_error, is_loopback, normalise_domains, parse_url,
};
use url::Url;

/// Who logged in, as the provider vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The provider's [`OidcProviderConfig::name`].
    pub provider: String,
    /// The provider's stable id for the user (`sub`, or GitHub's user id).
    pub subject: String,
    /// The email, lower-cased. The provider says it is verified; the only
    /// key by which the hub may link this login to an account.
    pub email: String,
    /// Always `true`: an unverified email is [`OidcError::EmailNotVerified`].
    pub email_verified: bool,
}

/// A configured login provider, ready to start and finish logins.
pub struct OidcClient {
    name: String,
    allowed_email_domains: Vec<String>,
    http: http::ProviderHttp,
    flow: Flow,
}

enum Flow {
    Oidc(Box<generic::GenericProvider>),
    GitHub(Box<github::GitHubProvider>),
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Checks the configuration and, for OpenID Connect, fetches the
    /// provider's discovery document and keys. GitHub needs no network here.
    pub async fn discover(config: OidcProviderConfig) -> Result<OidcClient, OidcError> {
        if config.name.trim().is_empty() {
            return Err(config_error("name", "must not be empty"));
        }
        if config.client_id.trim().is_empty() {
            return Err(config_error("client_id", "must not be empty"));
        }
        let redirect = parse_url("redirect_url", &config.redirect_url)?;
        let needed = match config.kind {
            ProviderKind::Oidc { .. } => ["email"].as_slice(),
            ProviderKind::GitHub { .. } => ["user:email", "user"].as_slice(),
        };
        if !config.scopes.iter().any(|s| needed.contains(&s.as_str())) {
            return Err(config_error(
                "scopes",
                &format!("must contain {} to learn the email", needed.join(" or ")),
            ));
        }
        let allowed_email_domains = normalise_domains(&config.allowed_email_domains)?;
        let http = http::ProviderHttp::new()
            .map_err(|e| OidcError::Upstream(format!("cannot build the HTTP client: {e}")))?;

        let flow = match &config.kind {
            ProviderKind::Oidc { issuer_url } => {
                let issuer = parse_url("issuer_url", issuer_url)?;
                let provider =
                    generic::GenericProvider::discover(&http, &config, issuer, redirect).await?;
                Flow::Oidc(Box::new(provider))
            }
            ProviderKind::GitHub {
                api_base,
                auth_url,
                token_url,
            } => {
                let urls = github::GitHubUrls {
                    api_base: parse_url("api_base", api_base)?,
                    auth: parse_url("auth_url", auth_url)?,
                    token: parse_url("token_url", token_url)?,
                };
                Flow::GitHub(Box::new(github::GitHubProvider::new(
                    &config, urls, redirect,
                )))
            }
        };
        Ok(OidcClient {
            name: config.name,
            allowed_email_domains,
            http,
            flow,
        })
    }

    /// The provider's [`OidcProviderConfig::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a login: the URL to send the browser to, and the secrets the
    /// callback needs. Store the [`PendingLogin`] (see [`PendingLogins`])
    /// under its `state`; nothing else may see it.
    pub fn begin(&self) -> (Url, PendingLogin) {
        let start = match &self.flow {
            Flow::Oidc(p) => p.begin(),
            Flow::GitHub(p) => p.begin(),
        };
        let pending = PendingLogin::new(
            self.name.clone(),
            start.state,
            start.nonce,
            start.pkce_verifier,
        );
        (start.url, pending)
    }

    /// Finishes a login with the `code` from the callback: exchanges it
    /// (with the PKCE verifier), checks the ID token or asks GitHub's API,
    /// and applies the email rules. `pending` must come from
    /// [`PendingLogins::take`] with the callback's `state`.
    pub async fn complete(
        &self,
        pending: PendingLogin,
        code: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        let result = self.complete_inner(pending, code).await;
        match &result {
            Ok(who) => tracing::info!(
                target: "spinforge::audit",
                event = "oidc.login.verified",
                provider = %self.name,
                subject = %who.subject,
                email = %who.email,
                "single sign-on login verified"
            ),
            Err(e) => tracing::warn!(
                target: "spinforge::audit",
                event = "oidc.login.refused",
                provider = %self.name,
                reason = e.code(),
                error = %e,
                "single sign-on login refused"
            ),
        }
        result
    }

    async fn complete_inner(
        &self,
        pending: PendingLogin,
        code: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        if pending.provider() != self.name {
            return Err(OidcError::ProviderMismatch {
                started_with: pending.provider().to_owned(),
                completed_with: self.name.clone(),
            });
        }
        // The store already drops expired logins; this also covers callers
        // that keep pending logins somewhere else.
        if pending.is_expired(std::time::Instant::now(), PENDING_LOGIN_TTL) {
            return Err(OidcError::UnknownState);
        }
        if code.is_empty() || code.len() > MAX_CODE_LEN {
            return Err(OidcError::CodeRejected(
                "empty or oversized code".to_owned(),
            ));
        }

        let secrets = pending.into_secrets();
        let claimed = match &self.flow {
            Flow::Oidc(p) => p.complete(&self.http, secrets, code).await?,
            Flow::GitHub(p) => p.complete(&self.http, secrets, code).await?,
        };

        if !claimed.email_verified {
            return Err(OidcError::EmailNotVerified);
        }
        let email = claimed.email.trim().to_lowercase();
        check_email_domain(&email, &self.allowed_email_domains)?;
        Ok(VerifiedIdentity {
            provider: self.name.clone(),
            subject: claimed.subject,
            email,
            email_verified: true,
        })
    }
}

/// Codes longer than this are refused before they reach the provider.
const MAX_CODE_LEN: usize = 2048;

/// What a provider flow hands back to [`OidcClient`] before the email rules.
struct ClaimedIdentity {
    subject: String,
    email: String,
    email_verified: bool,
}

/// What a provider flow produces when a login starts.
struct LoginStart {
    url: Url,
    state: openidconnect::CsrfToken,
    nonce: Option<openidconnect::Nonce>,
    pkce_verifier: openidconnect::PkceCodeVerifier,
}

#[cfg(test)]
mod tests {
    use super::*;

    use secrecy::SecretString;

    #[tokio::test]
    async fn scopes_without_email_are_a_config_error() {
        let mut config =
            OidcProviderConfig::github("c", SecretString::from("s"), "https://a.example/cb");
        config.scopes = vec!["read:user".to_owned()];
        assert!(matches!(
            OidcClient::discover(config).await,
            Err(OidcError::Config {
                field: "scopes",
                ..
            })
        ));

        // Checked before any network: this issuer does not exist.
        let mut config = OidcProviderConfig::oidc(
            "corp",
            "https://idp.invalid",
            "c",
            SecretString::from("s"),
            "https://a.example/cb",
        );
        config.scopes = vec!["openid".to_owned(), "profile".to_owned()];
        assert!(matches!(
            OidcClient::discover(config).await,
            Err(OidcError::Config {
                field: "scopes",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn github_preset_needs_no_network_and_builds_a_pkce_authorize_url() {
        let config = OidcProviderConfig::github(
            "my-client",
            SecretString::from("shh"),
            "https://spinforge.example/api/v1/auth/oidc/github/callback",
        );
        let client = OidcClient::discover(config).await.expect("github client");
        let (url, pending) = client.begin();

        assert_eq!(url.host_str(), Some("github.com"));
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], "my-client");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], pending.state());
        assert_eq!(q["scope"], "read:user user:email");
        assert!(!url.as_str().contains("shh"));
        assert_eq!(pending.provider(), "github");
    }

    #[tokio::test]
    async fn empty_client_id_and_plain_http_redirects_are_refused() {
        let mut config =
            OidcProviderConfig::github("", SecretString::from("s"), "https://a.example/cb");
        assert!(matches!(
            OidcClient::discover(config.clone()).await,
            Err(OidcError::Config {
                field: "client_id",
                ..
            })
        ));
        config.client_id = "c".to_owned();
        config.redirect_url = "http://a.example/cb".to_owned();
        assert!(matches!(
            OidcClient::discover(config).await,
            Err(OidcError::Config {
                field: "redirect_url",
                ..
            })
        ));
    }
}
