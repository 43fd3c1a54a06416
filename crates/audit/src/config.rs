//! The log's settings, resolved. Parsing the `[audit]` section of the
//! config file is the binary's job; this is what it produces.

use crate::event::IpMode;
use std::path::PathBuf;
use std::time::Duration;

/// How the audit log writes, checkpoints and forwards events.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Where the chain key, the signing key and the last checkpoint live;
    /// `None` means `DATA/audit`.
    pub key_dir: Option<PathBuf>,
    /// Fsync every committed batch (SQLite `synchronous = FULL`). Off,
    /// a killed process loses nothing, a power loss the last batches.
    pub fsync: bool,
    /// Most events written in one transaction. Under load a batch takes
    /// whatever has queued, up to this; the larger it is, the more rows
    /// share each index page a commit writes (see docs/BENCHMARKS.md).
    pub batch_max: usize,
    /// SQLite page cache of the writer's connection, in MiB (readers
    /// keep at most 32 each). The writer touches one leaf page per
    /// distinct user, resource and customer in a batch; when those do not
    /// fit, every insert reads a page back and spills dirty ones
    /// mid-transaction (see docs/BENCHMARKS.md, audit section).
    pub cache_mib: u32,
    /// How long the writer waits for more events before committing a
    /// batch that is not full. Zero commits at once (group commit still
    /// batches whatever queued up meanwhile).
    pub batch_delay: Duration,
    /// Events queued in memory before new ones are refused.
    pub queue_capacity: usize,
    /// A checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ...or after this long, whichever comes first (and at shutdown).
    pub checkpoint_interval: Duration,
    /// How long [`crate::record`] waits for its event to be committed.
    pub record_timeout: Duration,
    /// How long the writer waits between tries after a failed write.
    pub retry_interval: Duration,
    pub ip_mode: IpMode,
    /// How e-mail addresses in the metadata are kept.
    pub email_mode: EmailMode,
    /// What events that name no known person keep of the client.
    pub unattributed: Unattributed,
    pub edge: EdgeOverflow,
    /// Where every stored event is forwarded.
    pub sink: SinkConfig,
    /// Where critical events are forwarded as well.
    pub critical_sink: SinkConfig,
    /// Types that are critical: exact names, or prefixes ending in `.`.
    pub critical_types: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            key_dir: None,
            fsync: true,
            batch_max: 8192,
            cache_mib: 128,
            batch_delay: Duration::ZERO,
            queue_capacity: 65_536,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            record_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
            ip_mode: IpMode::Truncated,
            email_mode: EmailMode::Full,
            unattributed: Unattributed::Anonymise,
            edge: EdgeOverflow::default(),
            sink: SinkConfig::default(),
            critical_sink: SinkConfig::default(),
            critical_types: [
                "auth.failed",
                "auth.locked",
                "permission.denied",
                "access.denied",
                "privacy.export",
                "privacy.erase",
                "config.change",
                "security.alert",
                "waf.block",
                "audit.lost",
                "audit.degraded",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// How much of an e-mail address in an event's metadata is kept. Either
/// way the value is encrypted under its subject's key (see
/// [`crate::pii`]); masking also keeps the address out of the sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmailMode {
    /// The whole address (the default: erasure can still remove it).
    #[default]
    Full,
    /// `a***@example.com`.
    Masked,
}

/// What an event keeps of its client when it names no known person (no
/// acting user, no address): nobody's erasure can reach its fields, so
/// by default they are cut to what identifies nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unattributed {
    /// The client IP cut to its /24 (IPv4) or /48 (IPv6) even when
    /// `ip_mode` keeps full addresses, and the user agent cut to its
    /// first product token (`curl/8.5.0`). The default.
    #[default]
    Anonymise,
    /// The client IP as `ip_mode` says and the whole user agent, in
    /// clear and for good (for forensics that outweigh erasure).
    Keep,
}

/// What happens to edge-only events (WAF, rate limits) when the queue is
/// flooded. Other events are never sampled: when they cannot be queued
/// the log is marked unwritable and the API refuses requests.
#[derive(Debug, Clone)]
pub struct EdgeOverflow {
    /// Keep one in `sample_one_in` edge events while the queue is more
    /// than `high_water` full; `None` treats them like any other event.
    pub sample_one_in: Option<u64>,
    /// Fraction of the queue (0..1) above which sampling starts; it ends,
    /// and is recorded as ended, once the queue is below half of that.
    pub high_water: f64,
    /// Types that count as edge-only: exact names or prefixes ending `.`.
    pub types: Vec<String>,
}

impl Default for EdgeOverflow {
    fn default() -> EdgeOverflow {
        EdgeOverflow {
            sample_one_in: Some(100),
            high_water: 0.5,
            types: ["waf.", "ratelimit.", "limit.", "shield."]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// A set of outputs for stored events.
#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// One JSON object per line on standard output.
    pub stdout: bool,
    pub syslog: Option<SyslogTarget>,
    pub webhook: Option<WebhookSink>,
}

impl SinkConfig {
    pub fn is_empty(&self) -> bool {
        !self.stdout && self.syslog.is_none() && self.webhook.is_none()
    }
}

/// Where RFC 5424 messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Udp(String),
    /// Octet-counted frames (RFC 6587).
    Tcp(String),
    /// A Unix datagram socket such as `/dev/log`.
    Unix(PathBuf),
}

impl SyslogTarget {
    /// Parses `udp://HOST:PORT`, `tcp://HOST:PORT` or `unix:///PATH`.
    pub fn parse(text: &str) -> Result<SyslogTarget, String> {
        if let Some(addr) = text.strip_prefix("udp://") {
            Ok(SyslogTarget::Udp(addr.to_owned()))
        } else if let Some(addr) = text.strip_prefix("tcp://") {
            Ok(SyslogTarget::Tcp(addr.to_owned()))
        } else if let Some(path) = text.strip_prefix("unix://") {
            Ok(SyslogTarget::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "`{text}` is not udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH"
            ))
        }
    }
}

/// A URL that gets each event as a signed JSON POST.
#[derive(Clone)]
pub struct WebhookSink {
    pub url: String,
    /// The HMAC-SHA256 key of the `x-spinforge-signature` header.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .finish()
    }
}
