//! `serve`'s settings: defaults, then the TOML file, then `SPINFORGE_*`
//! variables, then flags; the later wins. Unknown keys in the file are an
//! error, so a typo never silently falls back to a default.

use crate::cli::ServeArgs;
use anyhow::{bail, Context};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub tls_listen: Option<String>,
    pub api_listen: Option<String>,
    /// Releases kept per site for rollback.
    pub keep_releases: Option<usize>,
    /// Admit `localhost` and `*.localhost` site domains (default true).
    pub allow_localhost: Option<bool>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub edge: EdgeFileConfig,
    #[serde(default)]
    pub identity: IdentityFileConfig,
    // ---- shield (edge protection) ----
    /// Request limits, rate limits, headers, bans, emergency mode; every
    /// key and default is in `shield::config`.
    #[serde(default)]
    pub shield: shield::ShieldConfig,
}

/// `[identity]`: token lifetimes, lockout and browser sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFileConfig {
    /// Lifetime of an access token (60 to 3600 s; default 900).
    pub access_token_ttl_secs: Option<u64>,
    /// Lifetime of a token session's refresh token (default 7 days).
    pub refresh_token_ttl_secs: Option<u64>,
    /// Failed logins within the window that lock an account (default 5).
    pub lockout_max_failures: Option<u32>,
    pub lockout_window_secs: Option<u64>,
    /// How long a lock lasts (default 900). Locks always end.
    pub lockout_secs: Option<u64>,
    pub browser_idle_timeout_secs: Option<u64>,
    pub browser_absolute_timeout_secs: Option<u64>,
    /// The `iss` of access tokens (default "spinforge").
    pub issuer: Option<String>,
    /// `[[identity.oidc]]`: single sign-on providers.
    #[serde(default)]
    pub oidc: Vec<OidcFileProvider>,
}

// ---- single sign-on providers ([[identity.oidc]]) ----

/// One `[[identity.oidc]]` provider. The client secret comes from exactly
/// one of `client_secret_file`, `client_secret_env` or (discouraged, it
/// leaves the secret in this file) `client_secret`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFileProvider {
    /// Our name for it, in the login URLs; default `google` or `github`
    /// for those kinds, required for `oidc`.
    pub name: Option<String>,
    /// `oidc` (default), `google` or `github`.
    pub kind: Option<String>,
    /// Required for `oidc`; fixed for `google` and `github`.
    pub issuer_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// `https://<public host>/api/v1/auth/oidc/<name>/callback`, exactly
    /// as registered at the provider.
    pub redirect_url: String,
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
}

impl std::fmt::Debug for OidcFileProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the inline secret.
        f.debug_struct("OidcFileProvider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field("client_secret_file", &self.client_secret_file)
            .field("client_secret_env", &self.client_secret_env)
            .field("redirect_url", &self.redirect_url)
            .finish_non_exhaustive()
    }
}

fn oidc_providers(
    file: &[OidcFileProvider],
) -> anyhow::Result<Vec<identity::oidc::OidcProviderConfig>> {
    use identity::oidc::OidcProviderConfig as P;
    let mut out: Vec<P> = Vec::new();
    for (i, p) in file.iter().enumerate() {
        let at = format!("identity.oidc[{i}]");
        let secret = match (
            &p.client_secret_file,
            &p.client_secret_env,
            &p.client_secret,
        ) {
            (Some(path), None, None) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!("{at}.client_secret_file: cannot read {}", path.display())
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, Some(var), None) => std::env::var(var).map_err(|_| {
                anyhow::anyhow!("{at}.client_secret_env: the variable {var} is not set")
            })?,
            (None, None, Some(secret)) => secret.clone(),
            _ => bail!(
                "{at}: set exactly one of client_secret_file, client_secret_env, client_secret"
            ),
        };
        if secret.is_empty() {
            bail!("{at}: the client secret is empty");
        }
        let secret = secrecy::SecretString::from(secret);
        let kind = p.kind.as_deref().unwrap_or("oidc");
        let mut config = match kind {
            "oidc" => {
                let Some(issuer) = &p.issuer_url else {
                    bail!("{at}.issuer_url is required for kind oidc");
                };
                let Some(name) = &p.name else {
                    bail!("{at}.name is required for kind oidc");
                };
                P::oidc(name, issuer, &p.client_id, secret, &p.redirect_url)
            }
            "google" | "github" => {
                if p.issuer_url.is_some() {
                    bail!("{at}.issuer_url is fixed for kind {kind}; remove it");
                }
                let mut c = if kind == "google" {
                    P::google(&p.client_id, secret, &p.redirect_url)
                } else {
                    P::github(&p.client_id, secret, &p.redirect_url)
                };
                if let Some(name) = &p.name {
                    c.name = name.clone();
                }
                c
            }
            other => bail!("{at}.kind must be oidc, google or github, not `{other}`"),
        };
        let name_ok = !config.name.is_empty()
            && config.name.len() <= 32
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && config.name != "poll";
        if !name_ok {
            bail!("{at}.name must be 1 to 32 of a-z, 0-9 and -, and not `poll`");
        }
        if out.iter().any(|o| o.name == config.name) {
            bail!("{at}.name `{}` is used twice", config.name);
        }
        config.allowed_email_domains = p.allowed_email_domains.clone();
        out.push(config);
    }
    Ok(out)
}

// ---- end single sign-on providers ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_upload_bytes: Option<u64>,
    pub max_unpacked_bytes: Option<u64>,
    pub max_files: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// CIDR ranges proxy sites may reach although they are private,
    /// loopback or link-local. Empty by default.
    #[serde(default)]
    pub allow_upstream_cidrs: Vec<IpNet>,
    pub connect_timeout_secs: Option<u64>,
    pub response_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFileConfig {
    /// Peers whose X-Forwarded-For and x-request-id are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub tls_listen: SocketAddr,
    pub hub: hub::HubConfig,
    pub edge: edge::EdgeConfig,
    pub identity: identity::IdentityConfig,
    pub shield: shield::ShieldConfig,
    /// Single sign-on providers, discovered when `serve` starts.
    pub oidc: Vec<identity::oidc::OidcProviderConfig>,
}

fn addr(value: &str, name: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .with_context(|| format!("{name}: `{value}` is not an address like 0.0.0.0:8080"))
}

pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("config file {} is invalid", path.display()))?
        }
        None => FileConfig::default(),
    };

    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./spinforge-data"));
    let listen = args
        .listen
        .clone()
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:8080".into());
    let api_listen = args
        .api_listen
        .clone()
        .or(file.api_listen)
        .unwrap_or_else(|| "127.0.0.1:9080".into());
    let tls_listen = args
        .tls_listen
        .clone()
        .or(file.tls_listen)
        .unwrap_or_else(|| "0.0.0.0:8443".into());

    let mut hub = hub::HubConfig::default();
    if let Some(keep) = file.keep_releases {
        if keep == 0 {
            bail!("keep_releases must be at least 1");
        }
        hub.keep_releases = keep;
    }
    if let Some(allow) = file.allow_localhost {
        hub.allow_localhost = allow;
    }
    if let Some(v) = file.limits.max_upload_bytes {
        hub.max_upload_bytes = v;
    }
    if let Some(v) = file.limits.max_unpacked_bytes {
        hub.bundle.max_unpacked_bytes = v;
    }
    if let Some(v) = file.limits.max_files {
        hub.bundle.max_files = v;
    }
    let policy = edge::UpstreamPolicy {
        allow: file.proxy.allow_upstream_cidrs,
    };
    hub.upstream_policy = policy.clone();

    let mut edge = edge::EdgeConfig {
        trusted_proxies: file.edge.trusted_proxies,
        upstream_policy: policy,
        ..edge::EdgeConfig::default()
    };
    if let Some(secs) = file.edge.header_read_timeout_secs {
        edge.header_read_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = file.edge.idle_timeout_secs {
        edge.idle_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = file.proxy.connect_timeout_secs {
        edge.proxy.connect_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = file.proxy.response_timeout_secs {
        edge.proxy.response_timeout = Duration::from_secs(secs.max(1));
    }

    let identity = identity_config(&file.identity)?;
    let oidc = oidc_providers(&file.identity.oidc)?;
    // ---- shield ----
    file.shield.validate().map_err(anyhow::Error::msg)?;

    Ok(Settings {
        identity,
        data_dir,
        listen: addr(&listen, "listen")?,
        api_listen: addr(&api_listen, "api_listen")?,
        tls_listen: addr(&tls_listen, "tls_listen")?,
        hub,
        edge,
        shield: file.shield,
        oidc,
    })
}

/// Applies `[identity]` to the defaults, refusing values outside sane
/// ranges with the key's name.
fn identity_config(file: &IdentityFileConfig) -> anyhow::Result<identity::IdentityConfig> {
    let mut config = identity::IdentityConfig::default();
    let secs = |value: Option<u64>, key: &str, range: std::ops::RangeInclusive<u64>| match value {
        Some(v) if !range.contains(&v) => bail!(
            "identity.{key} must be between {} and {} seconds",
            range.start(),
            range.end()
        ),
        other => Ok(other.map(Duration::from_secs)),
    };
    const DAY: u64 = 86_400;
    if let Some(d) = secs(
        file.access_token_ttl_secs,
        "access_token_ttl_secs",
        60..=3600,
    )? {
        config.access_ttl = d;
    }
    if let Some(d) = secs(
        file.refresh_token_ttl_secs,
        "refresh_token_ttl_secs",
        300..=90 * DAY,
    )? {
        config.refresh_ttl = d;
    }
    if let Some(d) = secs(file.lockout_window_secs, "lockout_window_secs", 10..=DAY)? {
        config.lockout.window = d;
    }
    if let Some(d) = secs(file.lockout_secs, "lockout_secs", 10..=DAY)? {
        config.lockout.lock_for = d;
    }
    if let Some(d) = secs(
        file.browser_idle_timeout_secs,
        "browser_idle_timeout_secs",
        60..=DAY,
    )? {
        config.browser_idle = d;
    }
    let absolute = file.browser_absolute_timeout_secs;
    if let Some(d) = secs(absolute, "browser_absolute_timeout_secs", 300..=30 * DAY)? {
        config.browser_absolute = d;
    }
    if let Some(max) = file.lockout_max_failures {
        if !(1..=100).contains(&max) {
            bail!("identity.lockout_max_failures must be between 1 and 100");
        }
        config.lockout.max_failures = max;
    }
    if let Some(issuer) = &file.issuer {
        if issuer.is_empty() || issuer.len() > 200 {
            bail!("identity.issuer must be 1 to 200 characters");
        }
        config.issuer = issuer.clone();
    }
    Ok(config)
}
