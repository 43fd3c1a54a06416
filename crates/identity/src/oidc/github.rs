//! GitHub login: OAuth2 with PKCE, then who the user is from GitHub's API.
//!
//! GitHub has no ID token. After the code exchange, `GET {api_base}/user`
//! gives the stable numeric user id and `GET {api_base}/user/emails` the
//! addresses; only the primary one counts, and only if GitHub says it is
//! verified. The API base is configurable so tests can use a loopback fake.

use super::generic::token_error;
use super::http::{ProviderHttp, MAX_BODY};
use super::pending::LoginSecrets;
use super::{ClaimedIdentity, LoginStart, OidcError, OidcProviderConfig};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

type GitHubOAuth =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

pub(super) struct GitHubUrls {
    pub(super) api_base: Url,
    pub(super) auth: Url,
    pub(super) token: Url,
}

pub(super) struct GitHubProvider {
    oauth: GitHubOAuth,
    api_base: Url,
    scopes: Vec<Scope>,
}

#[derive(Deserialize)]
struct GitHubUser {
    id: u64,
}

#[derive(Deserialize)]
struct GitHubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

impl GitHubProvider {
    pub(super) fn new(
        config: &OidcProviderConfig,
        urls: GitHubUrls,
        redirect: Url,
    ) -> GitHubProvider {
        let oauth = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_uri(AuthUrl::from_url(urls.auth))
            .set_token_uri(TokenUrl::from_url(urls.token))
            .set_redirect_uri(RedirectUrl::from_url(redirect))
            // GitHub documents the secret as a form parameter.
            .set_auth_type(AuthType::RequestBody);
        // `join` below must keep the base's path (GitHub Enterprise serves
        // the API under /api/v3).
        let mut api_base = urls.api_base;
        if !api_base.path().ends_with('/') {
            let path = format!("{}/", api_base.path());
            api_base.set_path(&path);
        }
        GitHubProvider {
            oauth,
            api_base,
            scopes: config
                .scopes
                .iter()
                .map(|s| Scope::new(s.clone()))
                .collect(),
        }
    }

    pub(super) fn begin(&self) -> LoginStart {
        let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = self
            .oauth
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .url();
        LoginStart {
            url,
            state,
            nonce: None,
            pkce_verifier,
        }
    }

    pub(super) async fn complete(
        &self,
        http: &ProviderHttp,
        secrets: LoginSecrets,
        code: &str,
    ) -> Result<ClaimedIdentity, OidcError> {
        let tokens = self
            .oauth
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(secrets.pkce_verifier)
            .request_async(http)
            .await
            .map_err(token_error)?;
        let token = tokens.access_token().secret();

        let user: GitHubUser = self.api_get(http, "user", token).await?;
        let emails: Vec<GitHubEmail> = self.api_get(http, "user/emails", token).await?;
        let primary = emails
            .into_iter()
            .find(|e| e.primary)
            .ok_or(OidcError::EmailMissing)?;
        Ok(ClaimedIdentity {
            subject: user.id.to_string(),
            email: primary.email,
            email_verified: primary.verified,
        })
    }

    /// GETs `path` under the API base with the user's token.
    async fn api_get<T: DeserializeOwned>(
        &self,
        http: &ProviderHttp,
        path: &str,
        token: &str,
    ) -> Result<T, OidcError> {
        let url = self
            .api_base
            .join(path)
            .map_err(|e| OidcError::Upstream(format!("GitHub API URL for {path}: {e}")))?;
        let request = ::http::Request::get(url.as_str())
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("authorization", format!("Bearer {token}"))
            .body(Vec::new())
            .map_err(|e| OidcError::Upstream(format!("GitHub API request for {path}: {e}")))?;

        let response = http
            .send(request)
            .await
            .map_err(|e| OidcError::Upstream(e.to_string()))?;
        if !response.status().is_success() {
            return Err(OidcError::Upstream(format!(
                "GitHub API /{path} answered {}",
                response.status()
            )));
        }
        debug_assert!(response.body().len() <= MAX_BODY);
        serde_json::from_slice(response.body()).map_err(|e| {
            // Only where it broke: serde's message can quote the value.
            OidcError::Upstream(format!(
                "GitHub API /{path} sent an unexpected body (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }
}
