//! OpenID Connect providers found by discovery (Google, Keycloak, ...).
//!
//! Discovery fetches the provider's metadata and keys once; the ID token of
//! each login is checked against them. A token whose signature our keys do
//! not verify (unknown `kid`, or no `kid` and a failed check) triggers one
//! new discovery and a second check, at most every [`KEY_REFRESH_INTERVAL`],
//! so provider key rotation works without letting forged tokens force a
//! fetch per request.

use super::http::{error_chain, HttpError, ProviderHttp};
use super::pending::LoginSecrets;
use super::{
    check_endpoint, is_loopback, ClaimedIdentity, IdTokenProblem, LoginStart, OidcError,
    OidcProviderConfig,
};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreIdToken, CoreIdTokenClaims,
    CoreIdTokenVerifier, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AccessTokenHash, AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, TokenResponse,
};
use secrecy::ExposeSecret;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use url::Url;

/// The least time between two key refreshes caused by unknown keys.
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Signature algorithms we accept for ID tokens: asymmetric only. HMAC
/// would make the client secret a signing key, and `none` signs nothing.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 7] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

pub(super) struct GenericProvider {
    settings: Settings,
    client: RwLock<Arc<DiscoveredClient>>,
    /// When unknown keys last caused a refresh; `None`: never.
    last_refresh: Mutex<Option<Instant>>,
}

/// What discovery needs, kept for key refreshes.
struct Settings {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect: RedirectUrl,
    scopes: Vec<Scope>,
}

impl GenericProvider {
    pub(super) async fn discover(
        http: &ProviderHttp,
        config: &OidcProviderConfig,
        issuer: Url,
        redirect: Url,
    ) -> Result<GenericProvider, OidcError> {
        // `IssuerUrl` keeps the text as written: discovery compares it with
        // the document's `issuer` byte for byte, so no normalising here.
        let issuer_text = match &config.kind {
            super::ProviderKind::Oidc { issuer_url } => issuer_url.clone(),
            super::ProviderKind::GitHub { .. } => issuer.to_string(),
        };
        let settings = Settings {
            issuer: IssuerUrl::new(issuer_text).map_err(|e| OidcError::Config {
                field: "issuer_url",
                rule: format!("not a URL ({e})"),
            })?,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: ClientSecret::new(config.client_secret.expose_secret().to_owned()),
            redirect: RedirectUrl::from_url(redirect),
            scopes: config
                .scopes
                .iter()
                .filter(|s| s.as_str() != "openid")
                .map(|s| Scope::new(s.clone()))
                .collect(),
        };
        let client = discover_client(http, &settings).await?;
        Ok(GenericProvider {
            settings,
            client: RwLock::new(Arc::new(client)),
            last_refresh: Mutex::new(None),
        })
    }

    pub(super) fn begin(&self) -> LoginStart {
        let client = self.current();
        let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.settings.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .url();
        LoginStart {
            url,
            state,
            nonce: Some(nonce),
            pkce_verifier,
        }
    }

    pub(super) async fn complete(
        &self,
        http: &ProviderHttp,
        secrets: LoginSecrets,
        code: &str,
    ) -> Result<ClaimedIdentity, OidcError> {
        // A login begun by an OAuth2-only flow has no nonce; it cannot be
        // finished here.
        let nonce = secrets.nonce.ok_or(OidcError::UnknownState)?;
        let client = self.current();

        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| OidcError::Discovery("the provider has no token endpoint".to_owned()))?
            .set_pkce_verifier(secrets.pkce_verifier)
            .request_async(http)
            .await
            .map_err(token_error)?;
        let id_token = tokens.id_token().ok_or(OidcError::IdTokenMissing)?;

        let (client, claims) = match verify(&client, id_token, &nonce) {
            // An unknown `kid`, or (for tokens without `kid`) a signature our
            // keys do not verify: maybe the provider rotated its keys.
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey
                | SignatureVerificationError::CryptoError(_),
            )) if self.may_refresh() => {
                let client = self.refresh(http).await?;
                let claims = verify(&client, id_token, &nonce).map_err(id_token_error)?;
                (client, claims)
            }
            other => (client.clone(), other.map_err(id_token_error)?),
        };

        // The access token must be the one the ID token was issued with.
        if let Some(expected) = claims.access_token_hash() {
            let verifier = verifier(&client);
            let alg = id_token
                .signing_alg()
                .map_err(|_| OidcError::IdTokenRejected(IdTokenProblem::Signature))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|_| OidcError::IdTokenRejected(IdTokenProblem::Signature))?;
            let actual = AccessTokenHash::from_token(tokens.access_token(), alg, key)
                .map_err(|_| OidcError::IdTokenRejected(IdTokenProblem::AccessTokenHash))?;
            if actual != *expected {
                return Err(OidcError::IdTokenRejected(IdTokenProblem::AccessTokenHash));
            }
        }

        let email = claims
            .email()
            .map(|e| e.as_str().to_owned())
            .ok_or(OidcError::EmailMissing)?;
        Ok(ClaimedIdentity {
            subject: claims.subject().as_str().to_owned(),
            email,
            // A missing claim is not a yes.
            email_verified: claims.email_verified() == Some(true),
        })
        // Limitation: an email only in the userinfo response (not in the ID
        // token) is not looked up (a userinfo call when the ID token has no
        // email would lift it; Google and most providers put it in the token).
    }

    fn current(&self) -> Arc<DiscoveredClient> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True at most once per [`KEY_REFRESH_INTERVAL`]; claims the slot.
    fn may_refresh(&self) -> bool {
        let mut last = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < KEY_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    async fn refresh(&self, http: &ProviderHttp) -> Result<Arc<DiscoveredClient>, OidcError> {
        let fresh = Arc::new(discover_client(http, &self.settings).await?);
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        tracing::info!(
            issuer = %self.settings.issuer.as_str(),
            "provider keys refreshed after an ID token with an unknown key"
        );
        Ok(fresh)
    }
}

async fn discover_client(
    http: &ProviderHttp,
    settings: &Settings,
) -> Result<DiscoveredClient, OidcError> {
    let metadata = CoreProviderMetadata::discover_async(settings.issuer.clone(), http)
        .await
        .map_err(|e| OidcError::Discovery(error_chain(&e)))?;

    let token_endpoint = metadata
        .token_endpoint()
        .ok_or_else(|| OidcError::Discovery("the provider has no token endpoint".to_owned()))?;
    let issuer_on_loopback = is_loopback(settings.issuer.url());
    for (field, url) in [
        (
            "authorization_endpoint",
            metadata.authorization_endpoint().url(),
        ),
        ("token_endpoint", token_endpoint.url()),
        ("jwks_uri", metadata.jwks_uri().url()),
    ] {
        check_discovered(field, url, issuer_on_loopback)?;
    }

    // Send the secret the way the provider says it takes it; the spec's
    // default is HTTP Basic.
    let auth_type = match metadata.token_endpoint_auth_methods_supported() {
        Some(methods)
            if !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && methods.contains(&CoreClientAuthMethod::ClientSecretPost) =>
        {
            AuthType::RequestBody
        }
        _ => AuthType::BasicAuth,
    };

    Ok(CoreClient::from_provider_metadata(
        metadata,
        settings.client_id.clone(),
        Some(settings.client_secret.clone()),
    )
    .set_redirect_uri(settings.redirect.clone())
    .set_auth_type(auth_type))
}

/// A discovered endpoint must pass [`check_endpoint`], and a provider that
/// is not itself on loopback may not point us at loopback (SSRF into our
/// own services).
fn check_discovered(
    field: &'static str,
    url: &Url,
    issuer_on_loopback: bool,
) -> Result<(), OidcError> {
    let refused = |rule: &str| OidcError::Discovery(format!("the provider's {field} {rule}"));
    match check_endpoint(field, url) {
        Err(OidcError::Config { rule, .. }) => Err(refused(&rule)),
        Err(other) => Err(other),
        Ok(()) if is_loopback(url) && !issuer_on_loopback => {
            Err(refused("points at loopback while the issuer is not"))
        }
        Ok(()) => Ok(()),
    }
}

fn verifier(client: &DiscoveredClient) -> CoreIdTokenVerifier<'_> {
    client.id_token_verifier().set_allowed_algs(ALLOWED_ALGS)
}

fn verify(
    client: &DiscoveredClient,
    id_token: &CoreIdToken,
    nonce: &Nonce,
) -> Result<CoreIdTokenClaims, ClaimsVerificationError> {
    id_token.claims(&verifier(client), nonce).cloned()
}

fn id_token_error(e: ClaimsVerificationError) -> OidcError {
    let problem = match e {
        ClaimsVerificationError::SignatureVerification(_) => IdTokenProblem::Signature,
        ClaimsVerificationError::InvalidIssuer(_) => IdTokenProblem::Issuer,
        ClaimsVerificationError::InvalidAudience(_) => IdTokenProblem::Audience,
        ClaimsVerificationError::InvalidNonce(_) => IdTokenProblem::Nonce,
        ClaimsVerificationError::Expired(_) => IdTokenProblem::Expired,
        _ => IdTokenProblem::Malformed,
    };
    OidcError::IdTokenRejected(problem)
}

/// Maps a token endpoint failure without its response body (which may hold
/// tokens) and without the provider's free-text description.
pub(super) fn token_error<T>(e: RequestTokenError<HttpError, StandardErrorResponse<T>>) -> OidcError
where
    T: openidconnect::ErrorResponseType + std::fmt::Display,
{
    match e {
        RequestTokenError::ServerResponse(r) => OidcError::CodeRejected(r.error().to_string()),
        RequestTokenError::Request(e) => OidcError::Upstream(e.to_string()),
        // GitHub answers a bad code with 200 and an error object.
        RequestTokenError::Parse(e, body) => {
            match serde_json::from_slice::<StandardErrorResponse<T>>(&body) {
                Ok(r) => OidcError::CodeRejected(r.error().to_string()),
                Err(_) => OidcError::Upstream(format!(
                    "the token response does not have the expected shape (at `{}`)",
                    e.path()
                )),
            }
        }
        RequestTokenError::Other(e) => OidcError::Upstream(format!("token endpoint: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("URL")
    }

    #[test]
    fn a_remote_issuer_may_not_point_us_at_loopback_or_plain_http() {
        let ok = check_discovered("jwks_uri", &url("https://idp.example/jwks"), false);
        assert!(ok.is_ok());
        for bad in [
            "http://127.0.0.1:9080/api/v1/users",
            "https://localhost/jwks",
            "http://idp.example/jwks",
        ] {
            match check_discovered("jwks_uri", &url(bad), false) {
                Err(OidcError::Discovery(msg)) => assert!(msg.contains("jwks_uri"), "{msg}"),
                other => panic!("{bad} allowed: {other:?}"),
            }
        }
        // A provider on loopback (tests, a local IdP) may use loopback.
        assert!(check_discovered("jwks_uri", &url("http://127.0.0.1:9400/jwks"), true).is_ok());
    }
}
