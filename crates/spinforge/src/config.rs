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
    #[serde(default)]
    pub audit: AuditFileConfig,
    #[serde(default)]
    pub sandbox: SandboxFileConfig,
    #[serde(default)]
    pub supply_chain: SupplyChainFileConfig,
    // ---- incidents ----
    /// Detection thresholds, automatic containment and notifications;
    /// every key and default is in `incident::IncidentConfig`.
    #[serde(default)]
    pub incidents: incident::IncidentConfig,
    // ---- secrets (issue 8) ----
    /// `[secrets]`: where the master key comes from (default: generated
    /// in DATA/secrets/master.key).
    #[serde(default)]
    pub secrets: secrets::SecretsConfig,
    // ---- TLS ----
    #[serde(default)]
    pub acme: AcmeFileConfig,
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
    /// Admins without a TOTP second factor may only enrol one (default
    /// false).
    pub require_totp_for_admins: Option<bool>,
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
    // ---- TLS to upstreams ----
    /// A PEM CA certificate trusted for `https://` upstreams besides the
    /// system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// A PEM client certificate (and its key) the edge shows to `https://`
    /// upstreams that ask for one (mutual TLS).
    pub upstream_client_cert: Option<PathBuf>,
    pub upstream_client_key: Option<PathBuf>,
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

// ---- [sandbox] (spinlet sandbox, issue 4) ---------------------------------

/// `[sandbox]`: how spinlets are isolated. Every limit here is the default
/// for apps whose manifest does not set its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFileConfig {
    /// False runs apps as plain processes of serve (benchmarks, trusted
    /// apps on a host without root). Default true.
    pub enabled: Option<bool>,
    /// True lets apps start although a sandbox layer is missing on this
    /// host (logged at warn, shown in status). Default false.
    pub allow_degraded: Option<bool>,
    pub memory_mb: Option<u32>,
    pub max_processes: Option<u32>,
    pub cpu_percent: Option<u32>,
    pub open_files: Option<u32>,
    /// Size cap of each app's /tmp, in MiB.
    pub tmp_mb: Option<u32>,
    /// Size of each site's persistent /data, in MiB (default 1024).
    pub data_mb: Option<u32>,
    /// Block I/O weight, 10 to 1000, where the kernel offers one.
    pub io_weight: Option<u16>,
    /// First uid (and gid) of the range site uids come from.
    pub uid_base: Option<u32>,
    /// Debug builds only, for tests of the refusal path: layers treated
    /// as missing on this host although it has them.
    pub debug_pretend_missing: Option<Vec<String>>,
}

/// The resolved `[sandbox]` settings.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub enabled: bool,
    pub allow_degraded: bool,
    pub memory_mb: Option<u32>,
    pub max_processes: Option<u32>,
    pub cpu_percent: Option<u32>,
    pub open_files: Option<u32>,
    pub tmp_mb: Option<u32>,
    pub data_mb: Option<u32>,
    pub io_weight: Option<u16>,
    pub uid_base: Option<u32>,
    pub pretend_missing: Vec<String>,
}

fn sandbox_settings(file: SandboxFileConfig) -> anyhow::Result<SandboxSettings> {
    fn within<T: PartialOrd + std::fmt::Display + Copy>(
        key: &str,
        value: Option<T>,
        min: T,
        max: T,
    ) -> anyhow::Result<Option<T>> {
        match value {
            Some(v) if v < min || v > max => {
                bail!("sandbox.{key} must be between {min} and {max}, not {v}")
            }
            other => Ok(other),
        }
    }
    let pretend_missing = file.debug_pretend_missing.unwrap_or_default();
    if !pretend_missing.is_empty() && !cfg!(debug_assertions) {
        bail!("sandbox.debug_pretend_missing is for tests and only read by debug builds");
    }
    Ok(SandboxSettings {
        pretend_missing,
        enabled: file.enabled.unwrap_or(true),
        allow_degraded: file.allow_degraded.unwrap_or(false),
        memory_mb: within("memory_mb", file.memory_mb, 16, 65_536)?,
        max_processes: within("max_processes", file.max_processes, 1, 4096)?,
        cpu_percent: within("cpu_percent", file.cpu_percent, 1, 10_000)?,
        open_files: within("open_files", file.open_files, 16, 1_048_576)?,
        tmp_mb: within("tmp_mb", file.tmp_mb, 1, 65_536)?,
        // ext4 with a journal needs a few MiB of its own.
        data_mb: within("data_mb", file.data_mb, 16, 16 << 20)?,
        io_weight: within("io_weight", file.io_weight, 10, 1000)?,
        // Never uid 0 to 65535: those are the host's own users.
        uid_base: within("uid_base", file.uid_base, 65_536, u32::MAX - 65_536)?,
    })
}

#[cfg(test)]
mod sandbox_tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<SandboxSettings> {
        sandbox_settings(toml::from_str::<FileConfig>(text)?.sandbox)
    }

    #[test]
    fn the_sandbox_is_on_and_strict_by_default() {
        let settings = parse("").expect("empty config");
        assert!(settings.enabled);
        assert!(!settings.allow_degraded);
        assert_eq!(settings.memory_mb, None);
    }

    #[test]
    fn out_of_range_sandbox_values_are_refused_naming_the_key() {
        let error = parse("[sandbox]\nmemory_mb = 1\n").expect_err("too small");
        assert!(error.to_string().contains("sandbox.memory_mb"), "{error}");
        let error = parse("[sandbox]\nuid_base = 0\n").expect_err("host uids");
        assert!(error.to_string().contains("sandbox.uid_base"), "{error}");
        assert!(
            parse("[sandbox]\nmemroy_mb = 64\n").is_err(),
            "typo refused"
        );
        let fine = parse("[sandbox]\nallow_degraded = true\ntmp_mb = 8\n").expect("valid");
        assert!(fine.allow_degraded);
        assert_eq!(fine.tmp_mb, Some(8));
    }
}

// ---- end [sandbox] ---------------------------------------------------------

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub tls_listen: SocketAddr,
    /// Set by flag, variable or file: bound at start even with no
    /// certificate yet (the default address waits for the first one).
    pub tls_listen_explicit: bool,
    pub hub: hub::HubConfig,
    pub edge: edge::EdgeConfig,
    pub identity: identity::IdentityConfig,
    pub shield: shield::ShieldConfig,
    pub audit: audit::AuditConfig,
    pub sandbox: SandboxSettings,
    /// Single sign-on providers, discovered when `serve` starts.
    pub oidc: Vec<identity::oidc::OidcProviderConfig>,
    pub incidents: incident::IncidentConfig,
    /// `[secrets]` (issue 8).
    pub secrets: secrets::SecretsConfig,
    pub acme: hub::acme::AcmeConfig,
    /// `proxy.upstream_client_cert`'s chain (PEM), for the expiry watch.
    pub upstream_client_cert_pem: Option<String>,
}

fn addr(value: &str, name: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .with_context(|| format!("{name}: `{value}` is not an address like 0.0.0.0:8080"))
}

/// Reads the config file, or the defaults without one.
fn read_file_config(path: Option<&std::path::Path>) -> anyhow::Result<FileConfig> {
    Ok(match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("config file {} is invalid", path.display()))?
        }
        None => FileConfig::default(),
    })
}

// ---- secrets (issue 8) ----
/// The `[secrets]` section and data directory for host commands (backup,
/// keys rotate-master) that do not run `serve`.
pub fn secrets_config(path: Option<&std::path::Path>) -> anyhow::Result<secrets::SecretsConfig> {
    Ok(read_file_config(path)?.secrets)
}
// ---- end secrets ----

pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = read_file_config(args.config.as_deref())?;

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
    let tls_listen_explicit = args.tls_listen.is_some() || file.tls_listen.is_some();
    let tls_listen = args
        .tls_listen
        .clone()
        .or(file.tls_listen)
        .unwrap_or_else(|| "0.0.0.0:8443".into());

    let sandbox = sandbox_settings(file.sandbox)?;
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
    let (proxy_tls, upstream_client_cert_pem) = upstream_tls(&file.proxy)?;
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
    edge.proxy.upstream_tls = proxy_tls;

    hub.supply_chain = supply_chain_policy(&file.supply_chain, &data_dir)?;
    let identity = identity_config(&file.identity)?;
    let oidc = oidc_providers(&file.identity.oidc)?;
    // ---- shield ----
    file.shield.validate().map_err(anyhow::Error::msg)?;

    let audit = resolve_audit(file.audit)?;
    // ---- incidents ----
    file.incidents.validate().map_err(anyhow::Error::msg)?;
    let acme = resolve_acme(file.acme)?;

    Ok(Settings {
        identity,
        audit,
        data_dir,
        listen: addr(&listen, "listen")?,
        api_listen: addr(&api_listen, "api_listen")?,
        tls_listen: addr(&tls_listen, "tls_listen")?,
        tls_listen_explicit,
        hub,
        edge,
        shield: file.shield,
        sandbox,
        oidc,
        incidents: file.incidents,
        secrets: file.secrets,
        acme,
        upstream_client_cert_pem,
    })
}

// ---- TLS to upstreams ([proxy] upstream_*) ----------------------------------

/// The TLS configuration for `https://` upstreams from `[proxy]`, if it
/// sets any, and the client certificate's chain, if it has one.
type ProxyTls = (Option<std::sync::Arc<rustls::ClientConfig>>, Option<String>);

fn upstream_tls(file: &ProxyConfig) -> anyhow::Result<ProxyTls> {
    let read = |path: &PathBuf, key: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("proxy.{key}: cannot read {}", path.display()))
    };
    let ca = match &file.upstream_ca_file {
        Some(path) => Some(read(path, "upstream_ca_file")?),
        None => None,
    };
    let client = match (&file.upstream_client_cert, &file.upstream_client_key) {
        (Some(cert), Some(key)) => Some((
            read(cert, "upstream_client_cert")?,
            read(key, "upstream_client_key")?,
        )),
        (None, None) => None,
        _ => bail!("proxy.upstream_client_cert and proxy.upstream_client_key go together"),
    };
    if ca.is_none() && client.is_none() {
        return Ok((None, None));
    }
    let config = edge::tls::upstream_client_config(
        ca.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
    )
    .map_err(|e| match (&ca, e) {
        (Some(_), edge::tls::TlsError::NoCertificate) => {
            anyhow::anyhow!("proxy.upstream_ca_file: no PEM certificate in it")
        }
        (_, e) => anyhow::anyhow!("proxy.upstream_client_cert/key: {e}"),
    })?;
    let chain = client.map(|(chain, _key)| chain);
    Ok((Some(std::sync::Arc::new(config)), chain))
}

// ---- [acme] ------------------------------------------------------------------

/// `[acme]`: automatic certificates. Off by default, so nothing calls a
/// public CA until the operator turns it on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFileConfig {
    pub enabled: Option<bool>,
    /// The directory URL (default: Let's Encrypt production).
    pub directory: Option<String>,
    /// Contact URIs, e.g. `["mailto:ops@example.com"]`.
    pub contact: Option<Vec<String>>,
    /// A PEM CA certificate to trust for the directory (a test CA).
    pub ca_bundle: Option<PathBuf>,
    /// `http-01` (default) or `tls-alpn-01`.
    pub challenge: Option<hub::acme::Challenge>,
    /// Renew this long before expiry (default 30 days).
    pub renew_before_secs: Option<u64>,
    /// How often every site is checked (default 3600).
    pub check_interval_secs: Option<u64>,
    /// First retry delay after a failure, doubling (default 60).
    pub backoff_initial_secs: Option<u64>,
    /// Longest retry delay (default 1 day).
    pub backoff_max_secs: Option<u64>,
    /// Failures in a row before `cert.renew_failed` is audited (default 3).
    pub alert_after_failures: Option<u32>,
}

fn resolve_acme(file: AcmeFileConfig) -> anyhow::Result<hub::acme::AcmeConfig> {
    let mut config = hub::acme::AcmeConfig::default();
    if let Some(enabled) = file.enabled {
        config.enabled = enabled;
    }
    if let Some(directory) = file.directory {
        if !directory.starts_with("https://") {
            bail!("acme.directory must be an https:// URL");
        }
        config.directory = directory;
    }
    if let Some(contact) = file.contact {
        config.contact = contact;
    }
    if let Some(path) = file.ca_bundle {
        if !path.is_file() {
            bail!("acme.ca_bundle: {} is not a file", path.display());
        }
        config.ca_bundle = Some(path);
    }
    if let Some(challenge) = file.challenge {
        config.challenge = challenge;
    }
    let secs = |v: Option<u64>, key: &str| -> anyhow::Result<Option<Duration>> {
        match v {
            Some(0) => bail!("acme.{key} must be at least 1"),
            other => Ok(other.map(Duration::from_secs)),
        }
    };
    if let Some(d) = secs(file.renew_before_secs, "renew_before_secs")? {
        config.renew_before = d;
    }
    if let Some(d) = secs(file.check_interval_secs, "check_interval_secs")? {
        config.check_interval = d;
    }
    if let Some(d) = secs(file.backoff_initial_secs, "backoff_initial_secs")? {
        config.backoff_initial = d;
    }
    if let Some(d) = secs(file.backoff_max_secs, "backoff_max_secs")? {
        config.backoff_max = d;
    }
    if let Some(n) = file.alert_after_failures {
        config.alert_after_failures = n.max(1);
    }
    Ok(config)
}

// ---- end [acme] ----------------------------------------------------------------

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
    if let Some(required) = file.require_totp_for_admins {
        config.require_totp_for_admins = required;
    }
    if let Some(issuer) = &file.issuer {
        if issuer.is_empty() || issuer.len() > 200 {
            bail!("identity.issuer must be 1 to 200 characters");
        }
        config.issuer = issuer.clone();
    }
    Ok(config)
}
// ---- [audit] ---------------------------------------------------------------

/// The `[audit]` section. Every key is optional; see docs/CONFIGURATION.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileConfig {
    /// Folder of the chain key, signing key and last checkpoint
    /// (default DATA/audit).
    pub key_dir: Option<PathBuf>,
    /// Fsync each committed batch (default true).
    pub fsync: Option<bool>,
    pub batch_max: Option<usize>,
    pub batch_delay_ms: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub checkpoint_every: Option<u64>,
    pub checkpoint_interval_secs: Option<u64>,
    pub record_timeout_ms: Option<u64>,
    /// `truncated` (IPv4 /24, IPv6 /48; the default) or `full`.
    pub client_ip: Option<String>,
    /// `full` (the default) or `masked` (`a***@example.com`): addresses
    /// in audit metadata. Either way they are encrypted per subject.
    pub email: Option<String>,
    /// `anonymise` (the default) or `keep`: the client IP and user agent
    /// of events that name no known person (audit2, issue #9).
    pub unattributed: Option<String>,
    /// Under flood keep one in N edge-only events; 0 never samples.
    pub edge_sample_one_in: Option<u64>,
    pub edge_types: Option<Vec<String>>,
    pub critical_types: Option<Vec<String>>,
    #[serde(default)]
    pub sink: AuditSinkFile,
    #[serde(default)]
    pub critical_sink: AuditSinkFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSinkFile {
    pub stdout: Option<bool>,
    /// `udp://HOST:PORT`, `tcp://HOST:PORT` or `unix:///PATH`.
    pub syslog: Option<String>,
    pub webhook_url: Option<String>,
    /// A file holding the webhook's signing secret (never the secret
    /// itself in the config).
    pub webhook_secret_file: Option<PathBuf>,
}

fn resolve_audit(file: AuditFileConfig) -> anyhow::Result<audit::AuditConfig> {
    let mut config = audit::AuditConfig {
        key_dir: file.key_dir,
        ..audit::AuditConfig::default()
    };
    if let Some(fsync) = file.fsync {
        config.fsync = fsync;
    }
    if let Some(n) = file.batch_max {
        if n == 0 {
            bail!("audit.batch_max must be at least 1");
        }
        config.batch_max = n;
    }
    if let Some(ms) = file.batch_delay_ms {
        config.batch_delay = Duration::from_millis(ms.min(1000));
    }
    if let Some(n) = file.queue_capacity {
        if n < 16 {
            bail!("audit.queue_capacity must be at least 16");
        }
        config.queue_capacity = n;
    }
    if let Some(n) = file.checkpoint_every {
        config.checkpoint_every = n.max(1);
    }
    if let Some(secs) = file.checkpoint_interval_secs {
        config.checkpoint_interval = Duration::from_secs(secs.max(1));
    }
    if let Some(ms) = file.record_timeout_ms {
        config.record_timeout = Duration::from_millis(ms.max(10));
    }
    config.ip_mode = match file.client_ip.as_deref() {
        None | Some("truncated") => audit::IpMode::Truncated,
        Some("full") => audit::IpMode::Full,
        Some(other) => bail!("audit.client_ip: `{other}` is not `truncated` or `full`"),
    };
    // ---- privacy (issue #9): e-mail addresses in audit metadata ----
    config.email_mode = match file.email.as_deref() {
        None | Some("full") => audit::EmailMode::Full,
        Some("masked") => audit::EmailMode::Masked,
        Some(other) => bail!("audit.email: `{other}` is not `full` or `masked`"),
    };
    // ---- erasure (issue #9, audit2): events that name nobody ----
    config.unattributed = match file.unattributed.as_deref() {
        None | Some("anonymise") => audit::Unattributed::Anonymise,
        Some("keep") => audit::Unattributed::Keep,
        Some(other) => bail!("audit.unattributed: `{other}` is not `anonymise` or `keep`"),
    };
    if let Some(n) = file.edge_sample_one_in {
        config.edge.sample_one_in = (n > 0).then_some(n);
    }
    for (types, name) in [
        (&file.edge_types, "audit.edge_types"),
        (&file.critical_types, "audit.critical_types"),
    ] {
        for t in types.iter().flatten() {
            let stem = t.strip_suffix('.').map(|s| format!("{s}.x"));
            if !audit::valid_type(stem.as_deref().unwrap_or(t)) {
                bail!("{name}: `{t}` is not an event type (auth.failed) or prefix (auth.)");
            }
        }
    }
    if let Some(types) = file.edge_types {
        config.edge.types = types;
    }
    if let Some(types) = file.critical_types {
        config.critical_types = types;
    }
    config.sink = resolve_sink(file.sink, "audit.sink")?;
    config.critical_sink = resolve_sink(file.critical_sink, "audit.critical_sink")?;
    Ok(config)
}

fn resolve_sink(file: AuditSinkFile, name: &str) -> anyhow::Result<audit::SinkConfig> {
    let syslog = file
        .syslog
        .map(|s| audit::SyslogTarget::parse(&s))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{name}.syslog: {e}"))?;
    let webhook = match (file.webhook_url, file.webhook_secret_file) {
        (None, None) => None,
        (Some(url), Some(path)) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                bail!("{name}.webhook_url: `{url}` is not an http(s) URL");
            }
            let secret = std::fs::read(&path).with_context(|| {
                format!("{name}.webhook_secret_file: cannot read {}", path.display())
            })?;
            let secret = secret.trim_ascii().to_vec();
            if secret.len() < 16 {
                bail!("{name}.webhook_secret_file: the secret must be at least 16 bytes");
            }
            Some(audit::WebhookSink { url, secret })
        }
        _ => bail!("{name}: webhook_url and webhook_secret_file go together"),
    };
    Ok(audit::SinkConfig {
        stdout: file.stdout.unwrap_or(false),
        syslog,
        webhook,
    })
}

// ---- [supply_chain] (issue #11) --------------------------------------------

/// `[supply_chain]`: refuse deploys whose lockfiles pin versions with
/// known advisories (from `spinforge vulndb import`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplyChainFileConfig {
    /// Every site (default false).
    pub refuse_vulnerable: Option<bool>,
    /// Only these sites, when not every site.
    #[serde(default)]
    pub refuse_vulnerable_sites: Vec<String>,
    /// `low`, `medium`, `high` (default) or `critical`.
    pub min_severity: Option<String>,
}

fn supply_chain_policy(
    file: &SupplyChainFileConfig,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<harden::scan::DeployPolicy>> {
    let global = file.refuse_vulnerable.unwrap_or(false);
    if !global && file.refuse_vulnerable_sites.is_empty() {
        if file.min_severity.is_some() {
            bail!("supply_chain.min_severity needs refuse_vulnerable or refuse_vulnerable_sites");
        }
        return Ok(None);
    }
    for site in &file.refuse_vulnerable_sites {
        if site.is_empty() || site.len() > 253 || site.contains(char::is_whitespace) {
            bail!("supply_chain.refuse_vulnerable_sites: `{site}` is not a domain");
        }
    }
    let threshold = file
        .min_severity
        .as_deref()
        .map(|s| crate::harden_cli::severity(s, "supply_chain.min_severity"))
        .transpose()?;
    Ok(Some(harden::scan::DeployPolicy {
        global,
        sites: file.refuse_vulnerable_sites.clone(),
        threshold,
        data_dir: data_dir.to_path_buf(),
    }))
}

#[cfg(test)]
mod supply_chain_tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Option<harden::scan::DeployPolicy>> {
        let file = toml::from_str::<FileConfig>(text)?;
        supply_chain_policy(&file.supply_chain, std::path::Path::new("d"))
    }

    #[test]
    fn the_policy_is_off_by_default_and_per_site_or_global() {
        assert!(parse("").expect("empty").is_none());
        let policy = parse("[supply_chain]\nrefuse_vulnerable_sites = [\"a.example\"]\n")
            .expect("valid")
            .expect("on");
        assert!(policy.applies_to("a.example") && !policy.applies_to("b.example"));
        let policy =
            parse("[supply_chain]\nrefuse_vulnerable = true\nmin_severity = \"critical\"\n")
                .expect("valid")
                .expect("on");
        assert!(policy.applies_to("b.example"));
        assert_eq!(policy.threshold(), harden::vulndb::Severity::Critical);
    }

    #[test]
    fn bad_policy_values_are_refused_naming_the_key() {
        let error = parse("[supply_chain]\nrefuse_vulnerable = true\nmin_severity = \"dire\"\n")
            .expect_err("bad severity");
        assert!(
            error.to_string().contains("supply_chain.min_severity"),
            "{error}"
        );
        assert!(
            parse("[supply_chain]\nrefuse_vulnerabel = true\n").is_err(),
            "typo refused"
        );
    }
}

// ---- end [supply_chain] ----------------------------------------------------
