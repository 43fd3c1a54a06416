//! `[incidents]`: detection thresholds, the automatic containment policy,
//! and who is notified at which severity. Every key has a default, and
//! unknown keys are refused so a typo never silently changes policy.

use crate::model::Severity;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A secret from the config file. It prints as `[redacted]` and is never
/// serialised, so it cannot reach a log or a response by accident.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A severity threshold in the config: a severity, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Threshold(pub Option<Severity>);

impl Threshold {
    /// True iff `severity` is at or above the threshold.
    pub fn reached_by(self, severity: Severity) -> bool {
        self.0.is_some_and(|min| severity >= min)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Threshold, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(Threshold(None));
        }
        Severity::parse(&text)
            .map(|s| Threshold(Some(s)))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not off, low, medium, high or critical"
                ))
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Detection from audit events (default true). Incidents opened by
    /// hand and their actions work either way.
    pub enabled: bool,
    pub detection: DetectionConfig,
    pub policy: PolicyConfig,
    pub webhooks: Vec<WebhookConfig>,
    pub email: Option<EmailConfig>,
}

impl Default for IncidentConfig {
    fn default() -> IncidentConfig {
        IncidentConfig {
            enabled: true,
            detection: DetectionConfig::default(),
            policy: PolicyConfig::default(),
            webhooks: Vec::new(),
            email: None,
        }
    }
}

/// How many events within the window make a detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Failed logins from one client IP (default 10).
    pub failed_logins_per_ip: u32,
    /// WAF blocks of one client IP (default 20).
    pub waf_blocks_per_ip: u32,
    /// Permission denials of one user (default 20).
    pub denials_per_user: u32,
    /// The counting window (default 300 s).
    pub window_secs: u64,
}

impl Default for DetectionConfig {
    fn default() -> DetectionConfig {
        DetectionConfig {
            failed_logins_per_ip: 10,
            waf_blocks_per_ip: 20,
            denials_per_user: 20,
            window_secs: 300,
        }
    }
}

impl DetectionConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

/// Automatic containment: each action is taken on every incident whose
/// severity reaches its threshold. All are `off` by default, so nothing
/// is banned or disabled until the operator decides so.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub ban_ips_at: Threshold,
    pub disable_users_at: Threshold,
    pub isolate_sites_at: Threshold,
    /// How long a containment ban lasts (default 24 h).
    pub ban_ttl_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        PolicyConfig {
            ban_ips_at: Threshold(None),
            disable_users_at: Threshold(None),
            isolate_sites_at: Threshold(None),
            ban_ttl_secs: 24 * 3600,
        }
    }
}

/// A signed webhook. Each delivery carries `X-SpinForge-Timestamp` and
/// `X-SpinForge-Signature: v1=HEX`, the HMAC-SHA256 under `secret` of
/// `TIMESTAMP.BODY`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Secret,
    /// The lowest severity sent here (default low: everything).
    #[serde(default = "lowest")]
    pub min_severity: Threshold,
    /// Tries per notification (default 5), with doubling back-off.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the first retry (default 1000 ms).
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

/// SMTP delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub smtp_host: String,
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (plain;
    /// only for a relay on this host).
    #[serde(default = "default_tls")]
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub address: String,
    #[serde(default = "lowest")]
    pub min_severity: Threshold,
}

fn lowest() -> Threshold {
    Threshold(Some(Severity::Low))
}

fn default_attempts() -> u32 {
    5
}

fn default_backoff() -> u64 {
    1000
}

fn default_smtp_port() -> u16 {
    587
}

fn default_tls() -> String {
    "starttls".into()
}

impl IncidentConfig {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.detection;
        for (value, key) in [
            (d.failed_logins_per_ip, "failed_logins_per_ip"),
            (d.waf_blocks_per_ip, "waf_blocks_per_ip"),
            (d.denials_per_user, "denials_per_user"),
        ] {
            if value == 0 {
                return Err(format!("incidents.detection.{key} must be at least 1"));
            }
        }
        if d.window_secs == 0 || d.window_secs > 24 * 3600 {
            return Err("incidents.detection.window_secs must be 1 to 86400".into());
        }
        let ttl = self.policy.ban_ttl_secs;
        if ttl == 0 || ttl > 366 * 24 * 3600 {
            return Err("incidents.policy.ban_ttl_secs must be 1 s to 366 days".into());
        }
        for hook in &self.webhooks {
            let url = reqwest::Url::parse(&hook.url)
                .map_err(|e| format!("incidents.webhooks.url `{}`: {e}", hook.url))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("incidents.webhooks.url must be http or https".into());
            }
            if hook.secret.expose().len() < 16 {
                return Err("incidents.webhooks.secret must be at least 16 characters".into());
            }
            if hook.attempts == 0 || hook.attempts > 20 {
                return Err("incidents.webhooks.attempts must be 1 to 20".into());
            }
            if hook.backoff_ms > 60_000 {
                return Err("incidents.webhooks.backoff_ms must be at most 60000".into());
            }
        }
        if let Some(email) = &self.email {
            if !matches!(email.tls.as_str(), "starttls" | "tls" | "none") {
                return Err("incidents.email.tls must be starttls, tls or none".into());
            }
            if email.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(format!(
                    "incidents.email.from `{}` is not an e-mail address",
                    email.from
                ));
            }
            for r in &email.recipients {
                if r.address.parse::<lettre::Address>().is_err() {
                    return Err(format!(
                        "incidents.email.recipients.address `{}` is not an e-mail address",
                        r.address
                    ));
                }
            }
            if email.username.is_some() != email.password.is_some() {
                return Err("incidents.email: username and password go together".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let hook: WebhookConfig =
            toml_like(r#"{"url":"http://127.0.0.1:1/","secret":"0123456789abcdefXYZ"}"#);
        let printed = format!("{hook:?}");
        assert!(!printed.contains("0123456789abcdefXYZ"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn thresholds_read_off_and_severities() {
        let off: Threshold = serde_json::from_str(r#""off""#).unwrap();
        assert!(!off.reached_by(Severity::Critical));
        let high: Threshold = serde_json::from_str(r#""high""#).unwrap();
        assert!(high.reached_by(Severity::High));
        assert!(!high.reached_by(Severity::Medium));
        assert!(serde_json::from_str::<Threshold>(r#""loud""#).is_err());
    }

    #[test]
    fn short_webhook_secret_is_refused_by_name() {
        let mut config = IncidentConfig::default();
        config.webhooks.push(toml_like(
            r#"{"url":"http://127.0.0.1:1/","secret":"short"}"#,
        ));
        let err = config.validate().unwrap_err();
        assert!(err.contains("incidents.webhooks.secret"), "{err}");
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
