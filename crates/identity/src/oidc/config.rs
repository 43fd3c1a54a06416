//! How a login provider is configured, and the rules its URLs and email
//! domains must follow. Checked once, when [`super::OidcClient`] is built.

use super::OidcError;
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

pub(super) fn config_error(field: &'static str, rule: &str) -> OidcError {
    OidcError::Config {
        field,
        rule: rule.to_owned(),
    }
}

/// Parses a provider URL and applies [`check_endpoint`].
pub(super) fn parse_url(field: &'static str, raw: &str) -> Result<Url, OidcError> {
    let url = Url::parse(raw).map_err(|e| config_error(field, &format!("not a URL ({e})")))?;
    check_endpoint(field, &url)?;
    Ok(url)
}

/// True if and only if the URL's host is a loopback address or `localhost`.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Fails closed on URLs that would leak codes or tokens: only `https`, or
/// plain `http` to a loopback host; no credentials and no fragment.
pub(super) fn check_endpoint(field: &'static str, url: &Url) -> Result<(), OidcError> {
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

pub(super) fn normalise_domains(domains: &[String]) -> Result<Vec<String>, OidcError> {
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
pub(super) fn check_email_domain(email: &str, allowed: &[String]) -> Result<(), OidcError> {
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
}
