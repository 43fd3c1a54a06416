//! Notifications: each incident change goes to every webhook and e-mail
//! recipient whose minimum severity it reaches. Webhooks are signed
//! (HMAC-SHA256 over `TIMESTAMP.BODY`, see [`signature`]) and retried
//! with doubling back-off; e-mail goes over SMTP with lettre and rustls.
//! Deliveries run in the background and land on the incident's
//! timeline; a secret never reaches a log, an error or the timeline.

use crate::config::{EmailConfig, IncidentConfig, WebhookConfig};
use crate::db::{self, Line};
use crate::model::{IncidentSummary, Severity};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use sqlx::SqlitePool;
use std::time::Duration;

/// The header carrying the Unix time (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-spinforge-timestamp";
/// The header carrying `v1=HEX`.
pub const SIGNATURE_HEADER: &str = "x-spinforge-signature";

/// Longest wait between two webhook tries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Tries per e-mail.
const EMAIL_ATTEMPTS: u32 = 3;

/// `v1=` and the hex HMAC-SHA256 under `secret` of `TIMESTAMP.BODY`.
/// Receivers recompute it, compare in constant time and refuse stale
/// timestamps.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

/// What a notification says.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// `incident.open`, `incident.escalate`, `incident.contain`,
    /// `incident.resolve`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339.
    pub time: String,
    /// One line for a human.
    pub summary: String,
    pub incident: IncidentSummary,
}

#[derive(Clone)]
pub(crate) struct Notifier {
    pool: SqlitePool,
    webhooks: Vec<WebhookConfig>,
    email: Option<EmailConfig>,
    http: reqwest::Client,
}

impl Notifier {
    pub(crate) fn new(pool: SqlitePool, config: &IncidentConfig) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Notifier {
            pool,
            webhooks: config.webhooks.clone(),
            email: config.email.clone(),
            http,
        }
    }

    /// Sends `notice` in the background to everyone it concerns.
    pub(crate) fn send(&self, notice: Notice) {
        let severity = notice.incident.severity;
        for hook in &self.webhooks {
            if hook.min_severity.reached_by(severity) {
                let (this, hook, notice) = (self.clone(), hook.clone(), notice.clone());
                tokio::spawn(async move { this.deliver_webhook(&hook, &notice).await });
            }
        }
        if let Some(email) = &self.email {
            let to: Vec<String> = email
                .recipients
                .iter()
                .filter(|r| r.min_severity.reached_by(severity))
                .map(|r| r.address.clone())
                .collect();
            if !to.is_empty() {
                let (this, email) = (self.clone(), email.clone());
                tokio::spawn(async move { this.deliver_email(&email, &to, &notice).await });
            }
        }
    }

    async fn deliver_webhook(&self, hook: &WebhookConfig, notice: &Notice) {
        let id = notice.incident.id;
        // The URL may carry a token in its path or query: only its host
        // is ever logged.
        let host = reqwest::Url::parse(&hook.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let body = match serde_json::to_vec(notice) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(incident = id, error = %e, "notification not encoded");
                return;
            }
        };
        let mut wait = Duration::from_millis(hook.backoff_ms);
        let mut problem = String::new();
        for attempt in 1..=hook.attempts {
            let timestamp = crate::model::now();
            let signed = signature(hook.secret.expose().as_bytes(), timestamp, &body);
            let sent = self
                .http
                .post(&hook.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signed)
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => {
                    self.note(
                        id,
                        &format!("webhook to {host} delivered ({})", notice.kind),
                    )
                    .await;
                    return;
                }
                Ok(r) => {
                    problem = format!("answered {}", r.status().as_u16());
                    r.status().is_server_error() || r.status().as_u16() == 429
                }
                // Without the URL: reqwest puts it in its errors.
                Err(e) => {
                    problem = if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "could not connect".into()
                    };
                    true
                }
            };
            tracing::debug!(incident = id, host = %host, attempt, problem = %problem,
                "webhook delivery failed");
            if !retry || attempt == hook.attempts {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
        tracing::warn!(incident = id, host = %host, problem = %problem,
            "incident webhook not delivered");
        self.note(
            id,
            &format!("webhook to {host} failed: {problem} ({})", notice.kind),
        )
        .await;
    }

    async fn deliver_email(&self, config: &EmailConfig, to: &[String], notice: &Notice) {
        let id = notice.incident.id;
        let result = async {
            let message = compose(config, to, notice)?;
            let mailer = transport(config)?;
            let mut wait = Duration::from_secs(1);
            let mut last = String::new();
            for attempt in 1..=EMAIL_ATTEMPTS {
                match mailer.send(message.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        last = smtp_problem(&e);
                        tracing::debug!(incident = id, attempt, problem = %last,
                            "e-mail delivery failed");
                    }
                }
                if attempt < EMAIL_ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
            Err(last)
        }
        .await;
        match result {
            Ok(()) => {
                self.note(
                    id,
                    &format!("e-mail sent to {} recipient(s) ({})", to.len(), notice.kind),
                )
                .await
            }
            Err(problem) => {
                tracing::warn!(incident = id, problem = %problem, "incident e-mail not sent");
                self.note(id, &format!("e-mail failed: {problem} ({})", notice.kind))
                    .await;
            }
        }
    }

    async fn note(&self, id: i64, summary: &str) {
        let written = async {
            let mut tx = db::begin(&self.pool).await?;
            let line = Line {
                kind: "notify",
                actor: "system",
                summary,
                event: None,
            };
            db::add_timeline(&mut tx, id, line).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(incident = id, error = %e, "notification not noted on the timeline");
        }
    }
}

fn compose(config: &EmailConfig, to: &[String], notice: &Notice) -> Result<Message, String> {
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|_| "the sender address is invalid".to_owned())?;
    let incident = &notice.incident;
    let mut builder = Message::builder().from(from).subject(format!(
        "[SpinForge] {} incident #{}: {}",
        incident.severity, incident.id, notice.summary
    ));
    for address in to {
        let mailbox: Mailbox = address
            .parse()
            .map_err(|_| format!("recipient {address} is invalid"))?;
        builder = builder.to(mailbox);
    }
    let indicators: Vec<String> = incident
        .indicators
        .iter()
        .map(|i| format!("  {}: {}", i.kind.as_str(), i.value))
        .collect();
    let body = format!(
        "{}\n\nIncident #{}: {}\nSeverity: {}\nStatus: {}\nRule: {}\nOpened: {}\n\
         Indicators:\n{}\n\nSee it with: spinforge incidents show {}\n",
        notice.summary,
        incident.id,
        incident.title,
        incident.severity,
        incident.status.as_str(),
        incident.rule,
        incident.opened_at,
        indicators.join("\n"),
        incident.id,
    );
    builder
        .body(body)
        .map_err(|e| format!("message not built: {e}"))
}

fn transport(config: &EmailConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    type Smtp = AsyncSmtpTransport<Tokio1Executor>;
    let host = config.smtp_host.as_str();
    let builder = match config.tls.as_str() {
        "none" => Smtp::builder_dangerous(host),
        "tls" => Smtp::relay(host).map_err(|e| smtp_problem(&e))?,
        _ => Smtp::starttls_relay(host).map_err(|e| smtp_problem(&e))?,
    };
    let mut builder = builder
        .port(config.smtp_port)
        .timeout(Some(Duration::from_secs(15)));
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

/// An SMTP error in words, without anything the server echoed back (it
/// may repeat our credentials).
fn smtp_problem(e: &lettre::transport::smtp::Error) -> String {
    if e.is_timeout() {
        "the SMTP server timed out".into()
    } else if e.is_permanent() {
        format!(
            "the SMTP server refused it permanently ({})",
            e.status().map_or(0, u16::from)
        )
    } else if e.is_transient() {
        "the SMTP server refused it for now".into()
    } else if e.is_tls() {
        "TLS with the SMTP server failed".into()
    } else {
        "could not talk to the SMTP server".into()
    }
}

/// The severity's rank, for the notice line.
pub(crate) fn verb(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "needs attention now",
        Severity::Medium => "needs a look",
        Severity::Low => "for the record",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"key", b'1700000000.{"a":1}', sha256).hexdigest()
        assert_eq!(
            signature(b"key", 1_700_000_000, br#"{"a":1}"#),
            "v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
        assert_ne!(
            signature(b"key", 1_700_000_001, br#"{"a":1}"#),
            signature(b"key", 1_700_000_000, br#"{"a":1}"#),
            "the timestamp is covered"
        );
    }
}
