//! OpenBao / Vault transit as the master key: data keys are wrapped and
//! unwrapped by the key service, so the master key never enters
//! SpinForge. Token or AppRole login, with the token renewed at half its
//! lifetime (AppRole logs in again when renewal fails).
//!
//! The row a data key belongs to is bound by wrapping `H(aad) ‖ key`
//! (16 bytes of SHA-256 of the row's associated data): a wrapped key
//! copied to another row unwraps to the wrong prefix and is refused.
//! Spoken over HTTP with the workspace's reqwest rather than vaultrs (see
//! docs/ARCHITECTURE.md): the five calls used are small JSON requests.

use crate::crypto::{KeyBytes, KEY_LEN};
use crate::SecretsError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Bytes of the row binding in front of a wrapped data key.
const BINDING_LEN: usize = 16;

/// `[secrets.vault]`: where the key service is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// e.g. `https://bao.internal:8200` (http only on loopback).
    pub address: String,
    /// Mount path of the transit engine (default `transit`).
    #[serde(default = "default_mount")]
    pub transit_mount: String,
    /// Name of the transit key (default `spinforge`; created if missing).
    #[serde(default = "default_key")]
    pub key: String,
    /// An environment variable holding a token.
    pub token_env: Option<String>,
    /// AppRole login: the role id ...
    pub approle_role_id: Option<String>,
    /// ... and an environment variable holding the secret id.
    pub approle_secret_id_env: Option<String>,
    /// Mount path of the AppRole auth method (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// Per-request timeout in seconds (default 5).
    pub timeout_secs: Option<u64>,
}

fn default_mount() -> String {
    "transit".into()
}

fn default_key() -> String {
    "spinforge".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

enum Auth {
    Token,
    AppRole {
        role_id: String,
        secret_id: SecretString,
    },
}

pub struct Transit {
    http: reqwest::Client,
    base: String,
    mount: String,
    key: String,
    auth: Auth,
    token: RwLock<SecretString>,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("address", &self.base)
            .field("key", &self.kek_id())
            .finish_non_exhaustive()
    }
}

fn unreachable(base: &str, e: impl std::fmt::Display) -> SecretsError {
    SecretsError::KeyService(format!("{base}: {e}"))
}

impl Transit {
    /// Logs in, checks the token, creates the transit key if missing, and
    /// starts renewing the token.
    pub async fn connect(config: &VaultConfig) -> Result<Arc<Transit>, SecretsError> {
        let base = config.address.trim_end_matches('/').to_owned();
        let url = url_host_is_loopback(&base)?;
        if !base.starts_with("https://") && !url {
            return Err(SecretsError::MasterKey(format!(
                "secrets.vault.address {base} must be https (http only on loopback)"
            )));
        }
        let env = |name: &str| {
            std::env::var(name).map(SecretString::from).map_err(|_| {
                SecretsError::MasterKey(format!("secrets.vault names {name}, which is not set"))
            })
        };
        let (auth, token) = match (&config.token_env, &config.approle_role_id) {
            (Some(name), None) => (Auth::Token, env(name)?),
            (None, Some(role_id)) => {
                let name = config.approle_secret_id_env.as_deref().ok_or_else(|| {
                    SecretsError::MasterKey(
                        "secrets.vault.approle_secret_id_env is required with approle_role_id"
                            .into(),
                    )
                })?;
                let auth = Auth::AppRole {
                    role_id: role_id.clone(),
                    secret_id: env(name)?,
                };
                (auth, SecretString::from(String::new()))
            }
            _ => {
                return Err(SecretsError::MasterKey(
                    "secrets.vault needs exactly one of token_env or approle_role_id".into(),
                ))
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.unwrap_or(5).max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SecretsError::MasterKey(format!("HTTP client: {e}")))?;
        let transit = Arc::new(Transit {
            http,
            base,
            mount: config.transit_mount.trim_matches('/').to_owned(),
            key: config.key.clone(),
            auth,
            token: RwLock::new(token),
        });
        let approle_mount = config.approle_mount.trim_matches('/').to_owned();
        if matches!(transit.auth, Auth::AppRole { .. }) {
            transit.login(&approle_mount).await?;
        }
        let ttl = transit.lookup_ttl().await?;
        transit.ensure_key().await?;
        spawn_renewal(Arc::downgrade(&transit), approle_mount, ttl);
        Ok(transit)
    }

    /// The id rows record: `transit:MOUNT/KEY`.
    pub fn kek_id(&self) -> String {
        format!("transit:{}/{}", self.mount, self.key)
    }

    pub fn address(&self) -> &str {
        &self.base
    }

    pub async fn wrap(&self, aad: &[u8], key: &KeyBytes) -> Result<Vec<u8>, SecretsError> {
        let mut plain = Zeroizing::new(binding(aad).to_vec());
        plain.extend_from_slice(key.expose());
        let encoded = Zeroizing::new(B64.encode(&plain[..]));
        let path = format!("{}/encrypt/{}", self.mount, self.key);
        let data = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "plaintext": *encoded })),
            )
            .await?;
        let ciphertext = data["data"]["ciphertext"].as_str().ok_or_else(|| {
            SecretsError::KeyService("encrypt answered without ciphertext".into())
        })?;
        Ok(ciphertext.as_bytes().to_vec())
    }

    /// `Ok(None)`: the service answered but the blob is not for this row.
    pub async fn unwrap(
        &self,
        aad: &[u8],
        wrapped: &[u8],
    ) -> Result<Option<KeyBytes>, SecretsError> {
        let Ok(ciphertext) = std::str::from_utf8(wrapped) else {
            return Ok(None);
        };
        let path = format!("{}/decrypt/{}", self.mount, self.key);
        let data = match self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await
        {
            Ok(data) => data,
            Err(SecretsError::KeyServiceRefused(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(encoded) = data["data"]["plaintext"].as_str() else {
            return Ok(None);
        };
        let Ok(plain) = B64.decode(encoded).map(Zeroizing::new) else {
            return Ok(None);
        };
        if plain.len() != BINDING_LEN + KEY_LEN
            || !bool::from(plain[..BINDING_LEN].ct_eq(&binding(aad)))
        {
            return Ok(None);
        }
        Ok(KeyBytes::from_slice(&plain[BINDING_LEN..]))
    }

    /// Adds a new version of the transit key; new wraps use it.
    pub async fn rotate(&self) -> Result<(), SecretsError> {
        let path = format!("{}/keys/{}/rotate", self.mount, self.key);
        self.call(reqwest::Method::POST, &path, None).await?;
        Ok(())
    }

    /// Re-wraps a blob under the newest key version, inside the service.
    pub async fn rewrap(&self, wrapped: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let ciphertext = std::str::from_utf8(wrapped)
            .map_err(|_| SecretsError::KeyService("a stored wrapped key is not text".into()))?;
        let path = format!("{}/rewrap/{}", self.mount, self.key);
        let data = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await?;
        let ciphertext = data["data"]["ciphertext"]
            .as_str()
            .ok_or_else(|| SecretsError::KeyService("rewrap answered without ciphertext".into()))?;
        Ok(ciphertext.as_bytes().to_vec())
    }

    async fn ensure_key(&self) -> Result<(), SecretsError> {
        let path = format!("{}/keys/{}", self.mount, self.key);
        match self.call(reqwest::Method::GET, &path, None).await {
            Ok(_) => Ok(()),
            Err(SecretsError::KeyServiceRefused(_)) => {
                self.call(
                    reqwest::Method::POST,
                    &path,
                    Some(json!({ "type": "aes256-gcm96" })),
                )
                .await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn login(&self, mount: &str) -> Result<Duration, SecretsError> {
        let Auth::AppRole { role_id, secret_id } = &self.auth else {
            return Ok(Duration::ZERO);
        };
        let body = json!({ "role_id": role_id, "secret_id": secret_id.expose_secret() });
        let url = format!("{}/v1/auth/{mount}/login", self.base);
        let response = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let status = response.status();
        let data: Value = response.json().await.unwrap_or(Value::Null);
        let token = data["auth"]["client_token"]
            .as_str()
            .filter(|_| status.is_success());
        let Some(token) = token else {
            return Err(SecretsError::MasterKey(format!(
                "AppRole login at {} refused ({status})",
                self.base
            )));
        };
        *self.token.write().unwrap_or_else(|p| p.into_inner()) =
            SecretString::from(token.to_owned());
        Ok(Duration::from_secs(
            data["auth"]["lease_duration"].as_u64().unwrap_or(0),
        ))
    }

    async fn lookup_ttl(&self) -> Result<Duration, SecretsError> {
        let data = self
            .call(reqwest::Method::GET, "auth/token/lookup-self", None)
            .await
            .map_err(|e| match e {
                SecretsError::KeyServiceRefused(m) => {
                    SecretsError::MasterKey(format!("the key service refused the token: {m}"))
                }
                other => other,
            })?;
        Ok(Duration::from_secs(
            data["data"]["ttl"].as_u64().unwrap_or(0),
        ))
    }

    /// Renews the token; returns its new lifetime.
    async fn renew(&self) -> Result<Duration, SecretsError> {
        let data = self
            .call(
                reqwest::Method::POST,
                "auth/token/renew-self",
                Some(json!({})),
            )
            .await?;
        Ok(Duration::from_secs(
            data["auth"]["lease_duration"].as_u64().unwrap_or(0),
        ))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SecretsError> {
        let token = self
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .expose_secret()
            .to_owned();
        let token = Zeroizing::new(token);
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .header("X-Vault-Token", token.as_str());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(unreachable(&self.base, format!("answered {status}")));
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // Error texts from the service name paths, never our values.
            let detail = value["errors"]
                .as_array()
                .and_then(|e| e.first())
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(SecretsError::KeyServiceRefused(format!(
                "{path}: {status} {detail}"
            )));
        }
        Ok(value)
    }
}

fn binding(aad: &[u8]) -> [u8; BINDING_LEN] {
    let digest = Sha256::digest(aad);
    let mut out = [0u8; BINDING_LEN];
    out.copy_from_slice(&digest[..BINDING_LEN]);
    out
}

fn url_host_is_loopback(base: &str) -> Result<bool, SecretsError> {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| {
            SecretsError::MasterKey(format!(
                "secrets.vault.address {base} is not an http(s) URL"
            ))
        })?;
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    Ok(host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

/// Renews the token at half its lifetime until the service is dropped.
/// A token without a lifetime (root) needs no renewal.
fn spawn_renewal(transit: Weak<Transit>, approle_mount: String, ttl: Duration) {
    if ttl.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut ttl = ttl;
        loop {
            tokio::time::sleep((ttl / 2).max(Duration::from_secs(1))).await;
            let Some(transit) = transit.upgrade() else {
                return;
            };
            match transit.renew().await {
                Ok(next) if !next.is_zero() => ttl = next,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "key service token renewal failed");
                    if matches!(transit.auth, Auth::AppRole { .. }) {
                        match transit.login(&approle_mount).await {
                            Ok(next) if !next.is_zero() => ttl = next,
                            Ok(_) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "key service login failed");
                                ttl = Duration::from_secs(10);
                            }
                        }
                    } else {
                        ttl = Duration::from_secs(10);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_use_plain_http() {
        assert!(url_host_is_loopback("http://127.0.0.1:8200").expect("url"));
        assert!(url_host_is_loopback("http://localhost:8200").expect("url"));
        assert!(!url_host_is_loopback("http://10.0.0.5:8200").expect("url"));
        assert!(url_host_is_loopback("ftp://x").is_err());
    }
}
