//! What an audit event is: a typed record of one security-relevant act,
//! and the rules that keep secrets and full client addresses out of it.
//! This module builds and cleans events; it does not store them.

use serde::Serialize;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Longest event type accepted, in bytes.
const MAX_TYPE_LEN: usize = 64;
/// Longest free-text field (user agent, resource, ids), in bytes.
const MAX_TEXT_LEN: usize = 512;
/// Longest string value kept inside the metadata, in bytes.
const MAX_META_VALUE_LEN: usize = 1024;
/// Most metadata entries kept per event.
const MAX_META_ENTRIES: usize = 32;

/// How the act ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    /// Parses `success`, `failure` or `denied`.
    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "denied" => Some(Outcome::Denied),
            _ => None,
        }
    }

    /// The outcome an event type implies when the event names none:
    /// `*.failed` is a failure, `*.denied`, `*.rejected` and `*.block` are
    /// refusals, and anything else succeeded.
    pub fn implied_by(kind: &str) -> Outcome {
        let last = kind.rsplit('.').next().unwrap_or(kind);
        if last.ends_with("failed") || last.ends_with("failure") {
            Outcome::Failure
        } else if ["denied", "rejected", "block", "blocked", "locked"]
            .iter()
            .any(|word| last.ends_with(word))
        {
            Outcome::Denied
        } else {
            Outcome::Success
        }
    }
}

/// Who acted. All parts are optional: a failed login has no user yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub user_id: Option<i64>,
    pub role: Option<String>,
    /// The API key's id, never the key.
    pub api_key_id: Option<String>,
}

/// One security-relevant act. Build it with [`AuditEvent::new`] and the
/// chained setters; the log fills the time if the caller does not.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    /// Dotted event type, e.g. `auth.failed` or `site.deploy`.
    pub kind: String,
    pub actor: Actor,
    /// Anonymised by the log's configuration when stored.
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// What was acted on, e.g. `site:shop.example.com`.
    pub resource: Option<String>,
    /// The verb, e.g. `deploy`; defaults to the type's last part.
    pub action: Option<String>,
    pub result: Outcome,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
    /// The customer (tenant) the event is about, for scoped reads.
    pub customer: Option<String>,
    /// Structured details. Keys that look like secrets are redacted.
    pub metadata: Map<String, Value>,
}

impl AuditEvent {
    /// A new event of type `kind`, happening now, with the outcome its
    /// type implies (see [`Outcome::implied_by`]).
    pub fn new(kind: impl Into<String>) -> AuditEvent {
        let kind = kind.into();
        AuditEvent {
            time_us: now_us(),
            result: Outcome::implied_by(&kind),
            kind,
            actor: Actor::default(),
            client_ip: None,
            user_agent: None,
            resource: None,
            action: None,
            request_id: None,
            session_id: None,
            customer: None,
            metadata: Map::new(),
        }
    }

    pub fn result(mut self, result: Outcome) -> Self {
        self.result = result;
        self
    }

    pub fn user(mut self, id: i64) -> Self {
        self.actor.user_id = Some(id);
        self
    }

    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.actor.role = Some(role.into());
        self
    }

    pub fn api_key(mut self, key_id: impl Into<String>) -> Self {
        self.actor.api_key_id = Some(key_id.into());
        self
    }

    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    pub fn customer(mut self, customer: impl Into<String>) -> Self {
        self.customer = Some(customer.into());
        self
    }

    /// Adds a metadata entry. A key that looks like a secret keeps only
    /// the word `[redacted]` (see [`is_secret_key`]).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// True iff the type is one of the critical ones in `critical`, by
    /// exact name or by a prefix ending in `.`.
    pub fn is_in(&self, types: &[String]) -> bool {
        types.iter().any(|t| type_matches(t, &self.kind))
    }

    /// Makes the event safe to store: a valid type, bounded text, no
    /// secret values, the client IP anonymised as `ip_mode` says, and the
    /// action defaulted from the type.
    pub(crate) fn sanitise(mut self, ip_mode: IpMode) -> AuditEvent {
        if !valid_type(&self.kind) {
            let original = truncate(&self.kind, MAX_TYPE_LEN).to_owned();
            self.metadata.insert("invalid_type".into(), original.into());
            self.kind = "audit.invalid_type".into();
        }
        self.client_ip = self.client_ip.map(|ip| ip_mode.apply(ip));
        for field in [
            &mut self.actor.role,
            &mut self.actor.api_key_id,
            &mut self.user_agent,
            &mut self.resource,
            &mut self.action,
            &mut self.request_id,
            &mut self.session_id,
            &mut self.customer,
        ] {
            if let Some(text) = field.as_mut() {
                text.truncate(floor_char_boundary(text, MAX_TEXT_LEN));
            }
        }
        if self.action.is_none() {
            self.action = self.kind.rsplit('.').next().map(str::to_owned);
        }
        let metadata = std::mem::take(&mut self.metadata);
        self.metadata = metadata
            .into_iter()
            .take(MAX_META_ENTRIES)
            .map(|(key, value)| {
                let value = if is_secret_key(&key) {
                    Value::String("[redacted]".into())
                } else {
                    bound_value(value)
                };
                (key, value)
            })
            .collect();
        self
    }
}

/// True iff `filter` selects `kind`: equal, or `filter` ends with `.` and
/// `kind` starts with it.
pub fn type_matches(filter: &str, kind: &str) -> bool {
    if filter.ends_with('.') {
        kind.starts_with(filter)
    } else {
        kind == filter
    }
}

/// True iff `kind` is lower-case dotted words: `auth.failed`,
/// `waf.block`, `privacy.export`.
pub fn valid_type(kind: &str) -> bool {
    kind.len() <= MAX_TYPE_LEN
        && kind.contains('.')
        && kind.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// True iff a metadata key names something that must never be stored:
/// passwords, tokens, secrets, keys (ids of keys excepted), cookies,
/// authorisation headers, one-time codes.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_id") || key.ends_with("key_id") {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "cookie",
        "credential",
        "private",
        "api_key",
        "apikey",
        "otp",
        "session_key",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// How much of a client IP is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpMode {
    /// The whole address.
    Full,
    /// IPv4 to its /24, IPv6 to its /48 (the default).
    #[default]
    Truncated,
}

impl IpMode {
    pub fn apply(self, ip: IpAddr) -> IpAddr {
        match self {
            IpMode::Full => ip,
            IpMode::Truncated => anonymise_ip(ip),
        }
    }
}

/// Zeroes the host part: IPv4 keeps its /24, IPv6 its /48. An IPv4
/// address mapped into IPv6 is treated as the IPv4 address it is.
pub fn anonymise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => anonymise_ip(IpAddr::V4(v4)),
            None => {
                let mut octets = v6.octets();
                octets[6..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

pub(crate) fn now_us() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1000) as i64
}

fn bound_value(value: Value) -> Value {
    match value {
        Value::String(mut text) if text.len() > MAX_META_VALUE_LEN => {
            text.truncate(floor_char_boundary(&text, MAX_META_VALUE_LEN));
            text.push('…');
            Value::String(text)
        }
        // Nested values are kept as their bounded JSON text: the log
        // stores summaries, not documents.
        Value::Array(_) | Value::Object(_) => {
            let text = value.to_string();
            if text.len() > MAX_META_VALUE_LEN {
                bound_value(Value::String(text))
            } else {
                value
            }
        }
        other => other,
    }
}

fn truncate(text: &str, max: usize) -> &str {
    &text[..floor_char_boundary(text, max)]
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keeps_its_slash_24() {
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(anonymise_ip(ip).to_string(), "203.0.113.0");
    }

    #[test]
    fn ipv6_keeps_its_slash_48() {
        let ip: IpAddr = "2001:db8:abcd:1234:5678::1".parse().unwrap();
        assert_eq!(anonymise_ip(ip).to_string(), "2001:db8:abcd::");
    }

    #[test]
    fn mapped_ipv4_is_truncated_as_ipv4() {
        let ip: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(anonymise_ip(ip).to_string(), "198.51.100.0");
    }

    #[test]
    fn secret_looking_metadata_is_redacted_but_key_ids_are_kept() {
        let event = AuditEvent::new("apikey.create")
            .meta("password", "hunter2")
            .meta("refresh_token", "abc")
            .meta("api_key_id", "k_12")
            .meta("site", "a.example")
            .sanitise(IpMode::Full);
        assert_eq!(event.metadata["password"], "[redacted]");
        assert_eq!(event.metadata["refresh_token"], "[redacted]");
        assert_eq!(event.metadata["api_key_id"], "k_12");
        assert_eq!(event.metadata["site"], "a.example");
    }

    #[test]
    fn outcome_follows_the_type_unless_given() {
        assert_eq!(AuditEvent::new("auth.failed").result, Outcome::Failure);
        assert_eq!(AuditEvent::new("access.denied").result, Outcome::Denied);
        assert_eq!(AuditEvent::new("waf.block").result, Outcome::Denied);
        assert_eq!(AuditEvent::new("site.deploy").result, Outcome::Success);
    }

    #[test]
    fn an_invalid_type_is_stored_under_a_marker_type() {
        let event = AuditEvent::new("Bad Type!").sanitise(IpMode::Full);
        assert_eq!(event.kind, "audit.invalid_type");
        assert_eq!(event.metadata["invalid_type"], "Bad Type!");
    }

    #[test]
    fn action_defaults_to_the_last_part_of_the_type() {
        let event = AuditEvent::new("site.rollback").sanitise(IpMode::Full);
        assert_eq!(event.action.as_deref(), Some("rollback"));
    }

    #[test]
    fn prefix_filters_end_with_a_dot() {
        assert!(type_matches("auth.", "auth.failed"));
        assert!(!type_matches("auth", "auth.failed"));
        assert!(type_matches("auth.failed", "auth.failed"));
        assert!(!type_matches("auth.fail", "auth.failed"));
    }
}
