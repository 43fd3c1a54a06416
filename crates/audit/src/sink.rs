//! Copies of stored events for outside eyes: JSON lines on stdout, RFC
//! 5424 syslog over UDP, TCP or a Unix socket, and a signed webhook.
//! Critical types also go to a separate critical sink. Sinks see only
//! committed rows, each sink has its own task and queue, and a slow or
//! dead sink loses copies (counted, logged) rather than slowing the log.

use crate::chain::Row;
use crate::config::{AuditConfig, SinkConfig, SyslogTarget, WebhookSink};
use crate::query::EventView;
use aws_lc_rs::hmac;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Events each sink may have waiting before copies are dropped.
const SINK_QUEUE: usize = 16_384;
/// Webhook deliveries tried per event, with doubling pauses between.
const WEBHOOK_TRIES: u32 = 4;

/// The running sinks.
pub(crate) struct Sinks {
    all: Vec<Output>,
    critical: Vec<Output>,
    critical_types: Vec<String>,
}

struct Output {
    name: &'static str,
    tx: mpsc::Sender<Arc<EventView>>,
    dropped: Arc<AtomicU64>,
}

impl Sinks {
    /// Starts a task per configured output; `None` when there are none.
    pub(crate) fn start(config: &AuditConfig) -> Option<Sinks> {
        if config.sink.is_empty() && config.critical_sink.is_empty() {
            return None;
        }
        Some(Sinks {
            all: outputs(&config.sink),
            critical: outputs(&config.critical_sink),
            critical_types: config.critical_types.clone(),
        })
    }

    pub(crate) fn forward(&self, rows: Vec<Row>) {
        for row in rows {
            let critical = self
                .critical_types
                .iter()
                .any(|t| crate::type_matches(t, &row.kind));
            let view = Arc::new(EventView::from(row));
            let targets = self.all.iter().chain(if critical {
                self.critical.iter()
            } else {
                [].iter()
            });
            for output in targets {
                if output.tx.try_send(view.clone()).is_err() {
                    let n = output.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(
                            sink = output.name,
                            dropped = n,
                            "audit sink is behind; copies dropped (the log itself keeps them)"
                        );
                    }
                }
            }
        }
    }
}

fn outputs(config: &SinkConfig) -> Vec<Output> {
    let mut out = Vec::new();
    if config.stdout {
        out.push(spawn("stdout", |mut rx| async move {
            let mut stdout = tokio::io::stdout();
            while let Some(event) = rx.recv().await {
                let mut line = serde_json::to_vec(&*event).unwrap_or_default();
                line.push(b'\n');
                if stdout.write_all(&line).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
        }));
    }
    if let Some(target) = config.syslog.clone() {
        out.push(spawn("syslog", move |rx| syslog(target, rx)));
    }
    if let Some(hook) = config.webhook.clone() {
        out.push(spawn("webhook", move |rx| webhook(hook, rx)));
    }
    out
}

fn spawn<F, Fut>(name: &'static str, run: F) -> Output
where
    F: FnOnce(mpsc::Receiver<Arc<EventView>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(SINK_QUEUE);
    tokio::spawn(run(rx));
    Output {
        name,
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    }
}

/// Formats one event as an RFC 5424 message: facility authpriv (10),
/// severity warning for refusals and failures, notice otherwise.
pub fn rfc5424(event: &EventView, hostname: &str, pid: u32) -> String {
    let severity = if event.result == "success" { 5 } else { 4 };
    let pri = 10 * 8 + severity;
    let msgid: String = event
        .kind
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let body = serde_json::to_string(event).unwrap_or_default();
    format!(
        "<{pri}>1 {time} {host} spinforge {pid} {msgid} [audit@32473 seq=\"{seq}\" result=\"{result}\"] {body}",
        time = event.time,
        host = if hostname.is_empty() { "-" } else { hostname },
        seq = event.seq,
        result = sd_escape(&event.result),
    )
}

/// Escapes `"`, `\` and `]` in a structured-data value (RFC 5424 6.3.3).
fn sd_escape(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' | ']' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

async fn syslog(target: SyslogTarget, mut rx: mpsc::Receiver<Arc<EventView>>) {
    let host = hostname();
    let pid = std::process::id();
    let mut tcp: Option<tokio::net::TcpStream> = None;
    while let Some(event) = rx.recv().await {
        let message = rfc5424(&event, &host, pid);
        let sent = match &target {
            SyslogTarget::Udp(addr) => match tokio::net::UdpSocket::bind(bind_any(addr)).await {
                Ok(socket) => socket.send_to(message.as_bytes(), addr).await.map(|_| ()),
                Err(e) => Err(e),
            },
            SyslogTarget::Tcp(addr) => {
                // Octet counting (RFC 6587): LEN SP MSG.
                let frame = format!("{} {message}", message.len());
                let mut result = Err(std::io::Error::other("not connected"));
                for _ in 0..2 {
                    if tcp.is_none() {
                        tcp = tokio::net::TcpStream::connect(addr).await.ok();
                    }
                    if let Some(stream) = tcp.as_mut() {
                        result = stream.write_all(frame.as_bytes()).await;
                        if result.is_ok() {
                            break;
                        }
                        tcp = None;
                    }
                }
                result
            }
            SyslogTarget::Unix(path) => match tokio::net::UnixDatagram::unbound() {
                Ok(socket) => socket.send_to(message.as_bytes(), path).await.map(|_| ()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, seq = event.seq, "audit syslog sink failed");
        }
    }
}

fn bind_any(addr: &str) -> &'static str {
    if addr.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
}

/// The value of the `x-spinforge-signature` header: `t=UNIX,v1=HEX`,
/// where HEX is HMAC-SHA256 over `UNIX.BODY` with the webhook's secret.
pub fn webhook_signature(secret: &[u8], unix: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(unix.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={unix},v1={}", hex::encode(ctx.sign().as_ref()))
}

async fn webhook(hook: WebhookSink, mut rx: mpsc::Receiver<Arc<EventView>>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "audit webhook sink cannot start");
            return;
        }
    };
    while let Some(event) = rx.recv().await {
        let body = serde_json::to_vec(&*event).unwrap_or_default();
        let mut pause = Duration::from_millis(500);
        for attempt in 1..=WEBHOOK_TRIES {
            let unix = crate::event::now_us() / 1_000_000;
            let sent = client
                .post(&hook.url)
                .header("content-type", "application/json")
                .header(
                    "x-spinforge-signature",
                    webhook_signature(&hook.secret, unix, &body),
                )
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => break,
                outcome => {
                    let why = match outcome {
                        Ok(response) => format!("HTTP {}", response.status().as_u16()),
                        Err(e) => e.to_string(),
                    };
                    if attempt == WEBHOOK_TRIES {
                        tracing::warn!(seq = event.seq, error = %why,
                            "audit webhook gave up on an event");
                    } else {
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn syslog_lines_follow_rfc_5424() {
        let event = EventView {
            seq: 12,
            time: "2026-01-31T12:00:00.5Z".into(),
            kind: "auth.failed".into(),
            actor: crate::query::ActorView {
                user_id: None,
                role: None,
                api_key_id: None,
            },
            client_ip: Some("127.0.0.0".into()),
            user_agent: None,
            resource: None,
            action: Some("failed".into()),
            result: "failure".into(),
            request_id: None,
            session_id: None,
            customer: None,
            metadata: serde_json::json!({}),
            mac: "00".into(),
        };
        let line = rfc5424(&event, "host1", 42);
        assert!(
            line.starts_with(
                "<84>1 2026-01-31T12:00:00.5Z host1 spinforge 42 auth.failed \
                 [audit@32473 seq=\"12\" result=\"failure\"] {"
            ),
            "{line}"
        );
    }

    #[test]
    fn webhook_signatures_depend_on_secret_time_and_body() {
        let a = webhook_signature(b"s", 100, b"{}");
        assert!(a.starts_with("t=100,v1="));
        assert_ne!(a, webhook_signature(b"t", 100, b"{}"));
        assert_ne!(a, webhook_signature(b"s", 101, b"{}"));
        assert_ne!(a, webhook_signature(b"s", 100, b"{ }"));
    }
}
