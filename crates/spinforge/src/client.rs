//! The API client behind every client command: bearer token from
//! `SPINFORGE_TOKEN` or the stored login, one transparent refresh when the
//! access token has expired, and the API's error JSON turned into a
//! readable message.

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

/// What `spinforge login` stores. Mode 0600, in a 0700 folder.
#[derive(Serialize, Deserialize)]
pub struct StoredLogin {
    pub api: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
}

pub fn login_path() -> anyhow::Result<PathBuf> {
    let base = dirs::config_dir().ok_or_else(|| anyhow!("no config directory (set HOME)"))?;
    Ok(base.join("spinforge").join("login.json"))
}

pub fn save_login(login: &StoredLogin) -> anyhow::Result<()> {
    let path = login_path()?;
    let dir = path.parent().ok_or_else(|| anyhow!("bad config path"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(login)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub fn load_login() -> Option<StoredLogin> {
    let text = std::fs::read(login_path().ok()?).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn forget_login() -> anyhow::Result<()> {
    match std::fs::remove_file(login_path()?) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

pub struct Client {
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// Set when the token came from the stored login, so it can refresh.
    stored: Option<StoredLogin>,
}

impl Client {
    pub fn new(api: &str) -> anyhow::Result<Client> {
        let base = api.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .user_agent(concat!("spinforge-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (token, stored) = match std::env::var("SPINFORGE_TOKEN") {
            Ok(token) if !token.is_empty() => (Some(token), None),
            _ => match load_login().filter(|l| l.api == base) {
                Some(login) => (Some(login.access_token.clone()), Some(login)),
                None => (None, None),
            },
        };
        Ok(Client {
            base,
            http,
            token,
            stored,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request built by `build`, refreshing the stored login once
    /// if the API says the token is no longer valid.
    pub async fn send(
        &mut self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let response = build(self).send().await.map_err(|e| self.unreachable(e))?;
        if response.status() == StatusCode::UNAUTHORIZED && self.refresh().await? {
            return build(self).send().await.map_err(|e| self.unreachable(e));
        }
        Ok(response)
    }

    /// Sends, then turns an error status into an error with the API's
    /// message, and a success into parsed JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = self.send(build).await?;
        let response = check(response).await?;
        Ok(response.json().await?)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the API at {}: {e} (is `spinforge serve` running?)",
            self.base
        )
    }

    async fn refresh(&mut self) -> anyhow::Result<bool> {
        let Some(stored) = self.stored.as_mut() else {
            return Ok(false);
        };
        let response = self
            .http
            .post(format!("{}/api/v1/auth/refresh", self.base))
            .json(&serde_json::json!({ "refresh_token": stored.refresh_token }))
            .send()
            .await?;
        if !response.status().is_success() {
            return Ok(false);
        }
        let pair: TokenPair = response.json().await?;
        stored.access_token = pair.access_token;
        stored.refresh_token = pair.refresh_token;
        self.token = Some(stored.access_token.clone());
        save_login(stored)?;
        Ok(true)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    /// The app's last log lines, for a release that did not start.
    #[serde(default)]
    log_tail: Vec<String>,
}

/// Passes a success through; turns an error status into a readable error.
pub async fn check(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) if body.error.code == "unauthorized" => {
            bail!(
                "{} (HTTP {}): run `spinforge login` first",
                body.error.message,
                status.as_u16()
            )
        }
        Ok(body) if !body.error.log_tail.is_empty() => bail!(
            "{} (HTTP {})\nlast lines of the app's log:\n  {}",
            body.error.message,
            status.as_u16(),
            body.error.log_tail.join("\n  ")
        ),
        Ok(body) => bail!("{} (HTTP {})", body.error.message, status.as_u16()),
        Err(_) => bail!("the API answered HTTP {}", status.as_u16()),
    }
}
