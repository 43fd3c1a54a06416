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

mod generic;
mod github;
mod http;
mod pending;

pub use pending::{PendingLogin, PendingLogins, DEFAULT_MAX_PENDING_LOGINS, PENDING_LOGIN_TTL};

use secrecy::SecretString;
use url::{Host, Url};

/// The issuer of Google's OpenID Connect provider.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// Where GitHub sends the browser to approve a login.
pub const GITHUB_AUTH_URL: &str = "https://github.com/login/oauth/authorize";
/// Where GitHub exchanges a code for an access token.
pub const GITHUB_TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
/// GitHub's REST API, for `/user` and `/user/emails`.
pub const GITHUB_API_BASE: &str = "https://api.github.com";

/// How to talk to one login provider.
#[derive(Debug, Clone)]
pub struct OidcProviderConfig {
    /// Our name for the provider (`google`, `github`, `corp`): it is in the
    /// [`PendingLogin`] and in the [`VerifiedIdentity`].
    pub name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Our callback URL, exactly as registered at the provider.
    pub redirect_url: String,
    /// When not empty, only emails whose domain (after the last `@`) is one
    /// of these, compared without case, may log in. Subdomains do not match.
    pub allowed_email_domains: Vec<String>,
    /// Scopes to request. For OpenID Connect, `openid` is always sent as
    /// well; without `email` the provider will not say who the user is.
    pub scopes: Vec<String>,
}

/// The protocol a provider speaks, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenID Connect with discovery under `issuer_url`.
    Oidc { issuer_url: String },
    /// GitHub's OAuth2 apps: no ID token; the email comes from its API.
    GitHub {
        api_base: String,
        auth_url: String,
        token_url: String,
    },
}

impl OidcProviderConfig {
    /// A generic OpenID Connect provider, requesting `openid email`.
    pub fn oidc(
        name: &str,
        issuer_url: &str,
        client_id: &str,
        client_secret: SecretString,
        redirect_url: &str,
    ) -> OidcProviderConfig {
        OidcProviderConfig {
            name: name.to_owned(),
            kind: ProviderKind::Oidc {
                issuer_url: issuer_url.to_owned(),
            },
            client_id: client_id.to_owned(),
            client_secret,
            redirect_url: redirect_url.to_owned(),
            allowed_email_domains: Vec::new(),
            scopes: vec!["openid".to_owned(), "email".to_owned()],
        }
    }

    /// Google, named `google`.
    pub fn google(
        client_id: &str,
        client_secret: SecretString,
        redirect_url: &str,
    ) -> OidcProviderConfig {
        OidcProviderConfig::oidc(
            "google",
            GOOGLE_ISSUER,
            client_id,
            client_secret,
            redirect_url,
        )
    }

    /// GitHub, named `github`, requesting `read:user user:email`.
    pub fn github(
        client_id: &str,
        client_secret: SecretString,
        redirect_url: &str,
    ) -> OidcProviderConfig {
        OidcProviderConfig {
            name: "github".to_owned(),
            kind: ProviderKind::GitHub {
                api_base: GITHUB_API_BASE.to_owned(),
                auth_url: GITHUB_AUTH_URL.to_owned(),
                token_url: GITHUB_TOKEN_URL.to_owned(),
            },
            client_id: client_id.to_owned(),
            client_secret,
            redirect_url: redirect_url.to_owned(),
            allowed_email_domains: Vec::new(),
            scopes: vec!["read:user".to_owned(), "user:email".to_owned()],
        }
    }
}

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

fn config_error(field: &'static str, rule: &str) -> OidcError {
    OidcError::Config {
        field,
        rule: rule.to_owned(),
    }
}

/// Parses a provider URL and applies [`check_endpoint`].
fn parse_url(field: &'static str, raw: &str) -> Result<Url, OidcError> {
    let url = Url::parse(raw).map_err(|e| config_error(field, &format!("not a URL ({e})")))?;
    check_endpoint(field, &url)?;
    Ok(url)
}

/// True if and only if the URL's host is a loopback address or `localhost`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Fails closed on URLs that would leak codes or tokens: only `https`, or
/// plain `http` to a loopback host; no credentials and no fragment.
fn check_endpoint(field: &'static str, url: &Url) -> Result<(), OidcError> {
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if is_loopback(url) => {}
        _ => {
            return Err(config_error(
                field,
                "must be an https URL (plain http only on loopback)",
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(field, "must not contain credentials"));
    }
    if url.fragment().is_some() {
        return Err(config_error(field, "must not contain a fragment"));
    }
    Ok(())
}

fn normalise_domains(domains: &[String]) -> Result<Vec<String>, OidcError> {
    domains
        .iter()
        .map(|d| {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            let valid = !d.is_empty()
                && d.contains('.')
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if valid {
                Ok(d)
            } else {
                Err(config_error(
                    "allowed_email_domains",
                    "each entry must be a domain name like example.com",
                ))
            }
        })
        .collect()
}

/// `email` is already lower-cased; `allowed` is normalised.
fn check_email_domain(email: &str, allowed: &[String]) -> Result<(), OidcError> {
    let domain = match email.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => domain,
        _ => return Err(OidcError::EmailMissing),
    };
    if allowed.is_empty() || allowed.iter().any(|a| a == domain) {
        Ok(())
    } else {
        Err(OidcError::EmailDomainNotAllowed {
            domain: domain.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<(), OidcError> {
        parse_url("issuer_url", s).map(|_| ())
    }

    #[test]
    fn endpoints_must_be_https_unless_loopback() {
        assert!(url("https://accounts.google.com").is_ok());
        assert!(url("http://127.0.0.1:9400").is_ok());
        assert!(url("http://[::1]:9400/x").is_ok());
        assert!(url("http://localhost:9400").is_ok());
        for bad in [
            "http://accounts.google.com",
            "http://10.0.0.1",
            "ftp://example.com",
            "https://user:pw@example.com",
            "https://example.com/#frag",
            "not a url",
        ] {
            match url(bad) {
                Err(OidcError::Config { field, .. }) => assert_eq!(field, "issuer_url", "{bad}"),
                other => panic!("{bad} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn email_domain_rule_matches_whole_domain_without_case() {
        let allowed = normalise_domains(&["Example.COM".to_owned(), "@corp.io".to_owned()])
            .expect("valid domains");
        assert_eq!(allowed, ["example.com", "corp.io"]);
        assert!(check_email_domain("a@example.com", &allowed).is_ok());
        assert!(check_email_domain("b@corp.io", &allowed).is_ok());
        for (email, domain) in [
            ("a@sub.example.com", "sub.example.com"),
            ("a@example.com.evil.io", "example.com.evil.io"),
            ("a@evil-example.com", "evil-example.com"),
        ] {
            match check_email_domain(email, &allowed) {
                Err(OidcError::EmailDomainNotAllowed { domain: d }) => assert_eq!(d, domain),
                other => panic!("{email} was let in: {other:?}"),
            }
        }
        assert!(check_email_domain("anyone@anywhere.org", &[]).is_ok());
        assert!(matches!(
            check_email_domain("no-at-sign", &[]),
            Err(OidcError::EmailMissing)
        ));
    }

    #[test]
    fn bad_allowed_domains_are_a_config_error() {
        for bad in ["", "localhost", "exa mple.com", "*.example.com"] {
            assert!(
                matches!(
                    normalise_domains(&[bad.to_owned()]),
                    Err(OidcError::Config {
                        field: "allowed_email_domains",
                        ..
                    })
                ),
                "{bad:?} accepted"
            );
        }
    }

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
