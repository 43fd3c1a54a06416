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
    pub sandbox: SandboxFileConfig,
}

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
    /// Block I/O weight, 10 to 1000, where the kernel offers one.
    pub io_weight: Option<u16>,
    /// First uid (and gid) of the range site uids come from.
    pub uid_base: Option<u32>,
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
    pub io_weight: Option<u16>,
    pub uid_base: Option<u32>,
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
    Ok(SandboxSettings {
        enabled: file.enabled.unwrap_or(true),
        allow_degraded: file.allow_degraded.unwrap_or(false),
        memory_mb: within("memory_mb", file.memory_mb, 16, 65_536)?,
        max_processes: within("max_processes", file.max_processes, 1, 4096)?,
        cpu_percent: within("cpu_percent", file.cpu_percent, 1, 10_000)?,
        open_files: within("open_files", file.open_files, 16, 1_048_576)?,
        tmp_mb: within("tmp_mb", file.tmp_mb, 1, 65_536)?,
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
    pub hub: hub::HubConfig,
    pub edge: edge::EdgeConfig,
    pub sandbox: SandboxSettings,
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

    Ok(Settings {
        data_dir,
        listen: addr(&listen, "listen")?,
        api_listen: addr(&api_listen, "api_listen")?,
        tls_listen: addr(&tls_listen, "tls_listen")?,
        hub,
        edge,
        sandbox,
    })
}
