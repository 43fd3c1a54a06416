//! Detection: turns audit events into detections, each with a rule name,
//! a severity after the mapping and the indicators it saw. Single
//! events that are bad on their own (a lockout, a reused refresh token)
//! detect at once; others (failed logins, WAF blocks, denials) only when
//! one source repeats them within the window. This module keeps no
//! incidents; the engine groups detections into them.

use crate::config::DetectionConfig;
use crate::model::{Indicator, IndicatorKind, Severity};
use audit::AuditEvent;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Sources counted at once per rule; past this the oldest is forgotten,
/// so a flood of spoofed sources cannot grow memory without bound.
const MAX_SOURCES: usize = 50_000;

/// What one or more audit events amount to.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Short rule name: `brute_force`, `waf_burst`, ...
    pub rule: &'static str,
    pub severity: Severity,
    pub title: String,
    pub indicators: Vec<Indicator>,
    /// The audit event type that completed the detection.
    pub event: String,
}

impl Detection {
    /// The key that groups detections into one incident while it is not
    /// resolved: the first IP, else the first user, else the first site,
    /// else the rule. Different rules about the same source meet in one
    /// incident, which then carries the highest severity seen.
    pub fn group_key(&self) -> String {
        for kind in [IndicatorKind::Ip, IndicatorKind::User, IndicatorKind::Site] {
            if let Some(i) = self.indicators.iter().find(|i| i.kind == kind) {
                return format!("{}:{}", kind.as_str(), i.value);
            }
        }
        format!("rule:{}", self.rule)
    }
}

/// Counts events per source within a sliding window.
struct Counter {
    limit: u32,
    window: Duration,
    seen: HashMap<String, VecDeque<Instant>>,
}

impl Counter {
    fn new(limit: u32, window: Duration) -> Counter {
        Counter {
            limit,
            window,
            seen: HashMap::new(),
        }
    }

    /// Counts one event of `source`; true iff it makes exactly `limit`
    /// within the window (so a burst detects once, not on every event).
    fn hit(&mut self, source: &str, now: Instant) -> bool {
        if self.seen.len() >= MAX_SOURCES && !self.seen.contains_key(source) {
            let window = self.window;
            self.seen
                .retain(|_, times| times.back().is_some_and(|t| now - *t < window));
            if self.seen.len() >= MAX_SOURCES {
                return false;
            }
        }
        let times = self.seen.entry(source.to_owned()).or_default();
        while times.front().is_some_and(|t| now - *t >= self.window) {
            times.pop_front();
        }
        times.push_back(now);
        times.len() == self.limit as usize
    }
}

/// The detection rules with their counting state.
pub struct Detector {
    failed_logins: Counter,
    waf_blocks: Counter,
    denials: Counter,
}

impl Detector {
    pub fn new(config: &DetectionConfig) -> Detector {
        let window = config.window();
        Detector {
            failed_logins: Counter::new(config.failed_logins_per_ip, window),
            waf_blocks: Counter::new(config.waf_blocks_per_ip, window),
            denials: Counter::new(config.denials_per_user, window),
        }
    }

    /// Looks at one audit event; `Some` when it completes a detection.
    pub fn observe(&mut self, event: &AuditEvent) -> Option<Detection> {
        self.observe_at(event, Instant::now())
    }

    fn observe_at(&mut self, event: &AuditEvent, now: Instant) -> Option<Detection> {
        let ip = event_ip(event);
        let subject = meta_str(event, "subject").filter(|s| s.contains('@'));
        let mut indicators = Vec::new();
        if let Some(ip) = &ip {
            indicators.push(Indicator::new(IndicatorKind::Ip, ip.clone()));
        }
        if let Some(user) = &subject {
            indicators.push(Indicator::new(IndicatorKind::User, user.clone()));
        }
        if let Some(site) = meta_str(event, "site") {
            indicators.push(Indicator::new(IndicatorKind::Site, site));
        }
        let found = |rule, severity, title: String, indicators| Detection {
            rule,
            severity,
            title,
            indicators,
            event: event.kind.clone(),
        };

        match event.kind.as_str() {
            // HIGH: an intrusion attempt.
            "auth.locked" => Some(found(
                "brute_force",
                Severity::High,
                format!(
                    "Brute-force login: account {} locked",
                    subject.as_deref().unwrap_or("(unknown)")
                ),
                indicators,
            )),
            "auth.failed" => {
                let ip = ip?;
                self.failed_logins.hit(&ip, now).then(|| {
                    found(
                        "brute_force",
                        Severity::High,
                        format!("Brute-force login: repeated failures from {ip}"),
                        indicators,
                    )
                })
            }
            "auth.refresh_reuse" => Some(found(
                "token_reuse",
                Severity::High,
                "A used refresh token was presented again (stolen token?)".into(),
                with_user_id(indicators, event),
            )),
            "waf.block" => {
                let ip = ip?;
                if let Some(rule) = meta_str(event, "rule").or_else(|| meta_str(event, "rules")) {
                    indicators.push(Indicator::new(IndicatorKind::Rule, rule));
                }
                self.waf_blocks.hit(&ip, now).then(|| {
                    found(
                        "waf_burst",
                        Severity::High,
                        format!("Burst of WAF blocks from {ip}"),
                        indicators,
                    )
                })
            }
            "spinlet.sandbox_refused" => Some(found(
                "sandbox_refused",
                Severity::High,
                "An app tried something its sandbox refuses".into(),
                indicators,
            )),
            // CRITICAL: the platform itself may be compromised.
            "security.alert" => Some(found(
                "security_alert",
                Severity::Critical,
                format!(
                    "Security alert: {}",
                    meta_str(event, "problem")
                        .or_else(|| meta_str(event, "message"))
                        .unwrap_or_else(|| "see the audit log".into())
                ),
                indicators,
            )),
            // MEDIUM: suspicious activity or a policy violation.
            "shield.ban" => {
                // Bans this crate takes are its own doing, not a finding.
                let actor = meta_str(event, "actor").unwrap_or_default();
                if actor.starts_with("incident") {
                    return None;
                }
                let ip = ip.or_else(|| meta_str(event, "client_ip"))?;
                if indicators.is_empty() {
                    indicators.push(Indicator::new(IndicatorKind::Ip, ip.clone()));
                }
                Some(found(
                    "ban",
                    Severity::Medium,
                    format!(
                        "Client {ip} banned ({})",
                        meta_str(event, "reason").unwrap_or_else(|| "no reason".into())
                    ),
                    indicators,
                ))
            }
            "shield.abuse" => Some(found(
                "abuse",
                Severity::Medium,
                format!(
                    "Sustained abuse ({})",
                    meta_str(event, "finding").unwrap_or_default()
                ),
                indicators,
            )),
            "permission.denied" => {
                let user = event.actor.user_id?;
                self.denials.hit(&user.to_string(), now).then(|| {
                    found(
                        "permission_probe",
                        Severity::Medium,
                        format!("User {user} denied again and again"),
                        with_user_id(indicators, event),
                    )
                })
            }
            "spinlet.failed" => Some(found(
                "crash_loop",
                Severity::Medium,
                "An app keeps crashing".into(),
                indicators,
            )),
            "backup.restore" | "system.restore" => Some(found(
                "restore",
                Severity::Medium,
                "The platform was restored from a backup".into(),
                indicators,
            )),
            _ => None,
        }
    }
}

/// The event's client IP, from its typed field or its metadata.
fn event_ip(event: &AuditEvent) -> Option<String> {
    event
        .client_ip
        .map(|ip| ip.to_string())
        .or_else(|| meta_str(event, "client_ip"))
        .filter(|ip| !ip.is_empty())
}

fn meta_str(event: &AuditEvent, key: &str) -> Option<String> {
    match event.metadata.get(key)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Adds the acting user's id as a user indicator when no e-mail is known.
fn with_user_id(mut indicators: Vec<Indicator>, event: &AuditEvent) -> Vec<Indicator> {
    if !indicators.iter().any(|i| i.kind == IndicatorKind::User) {
        if let Some(id) = event.actor.user_id {
            indicators.push(Indicator::new(IndicatorKind::User, format!("id:{id}")));
        }
    }
    indicators
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn detector(limit: u32) -> Detector {
        Detector::new(&DetectionConfig {
            failed_logins_per_ip: limit,
            waf_blocks_per_ip: limit,
            denials_per_user: limit,
            window_secs: 60,
        })
    }

    fn failed_login(ip: &str) -> AuditEvent {
        let mut e = AuditEvent::new("auth.failed");
        e.client_ip = Some(ip.parse().unwrap());
        e.metadata.insert("subject".into(), "a@example.com".into());
        e
    }

    #[test]
    fn lockout_is_high_with_ip_and_user() {
        let mut e = failed_login("192.0.2.7");
        e.kind = "auth.locked".into();
        let d = detector(3).observe(&e).unwrap();
        assert_eq!(d.rule, "brute_force");
        assert_eq!(d.severity, Severity::High);
        assert_eq!(d.group_key(), "ip:192.0.2.7");
        assert!(d
            .indicators
            .contains(&Indicator::new(IndicatorKind::User, "a@example.com")));
    }

    #[test]
    fn failures_detect_once_at_the_limit_within_the_window() {
        let mut d = detector(3);
        let t0 = Instant::now();
        let e = failed_login("192.0.2.8");
        assert!(d.observe_at(&e, t0).is_none());
        assert!(d.observe_at(&e, t0).is_none());
        assert!(d.observe_at(&e, t0).is_some());
        assert!(d.observe_at(&e, t0).is_none(), "a burst detects once");
        // Outside the window the count starts again.
        let later = t0 + Duration::from_secs(61);
        assert!(d.observe_at(&e, later).is_none());
    }

    #[test]
    fn failures_from_other_ips_do_not_add_up() {
        let mut d = detector(2);
        assert!(d.observe(&failed_login("192.0.2.1")).is_none());
        assert!(d.observe(&failed_login("192.0.2.2")).is_none());
    }

    #[test]
    fn own_containment_bans_are_not_findings() {
        let mut e = AuditEvent::new("shield.ban");
        e.client_ip = Some("192.0.2.9".parse().unwrap());
        e.metadata.insert("actor".into(), "incident:4".into());
        assert!(detector(1).observe(&e).is_none());
        e.metadata.insert("actor".into(), "shield".into());
        let d = detector(1).observe(&e).unwrap();
        assert_eq!(d.severity, Severity::Medium);
    }

    #[test]
    fn unrelated_events_detect_nothing() {
        assert!(detector(1)
            .observe(&AuditEvent::new("site.deploy"))
            .is_none());
    }
}
