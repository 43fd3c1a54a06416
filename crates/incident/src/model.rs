//! The incident's vocabulary: severities, states, indicators, timeline
//! entries and containment actions, as stored and as the API shows them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How bad an incident is, after the mapping: CRITICAL for a data
/// breach or system compromise, HIGH for an intrusion attempt or an
/// exploited weakness, MEDIUM for a policy violation or suspicious
/// activity, LOW for everything else. Ordered: `Low < Critical`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Reads a severity in any case; `None` for anything else.
    pub fn parse(text: &str) -> Option<Severity> {
        match text.to_ascii_lowercase().as_str() {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().to_ascii_uppercase())
    }
}

/// Where an incident stands. Open until something contains it; resolved
/// is final (a new detection opens a new incident).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Contained,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Contained => "contained",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "open" => Some(Status::Open),
            "contained" => Some(Status::Contained),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// What an indicator points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IndicatorKind {
    /// A client IP (or an IPv6 group as the shield keys it).
    Ip,
    /// A user, by e-mail address (what a failed login names).
    User,
    /// A site, by domain.
    Site,
    /// A WAF or detection rule id.
    Rule,
}

impl IndicatorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorKind::Ip => "ip",
            IndicatorKind::User => "user",
            IndicatorKind::Site => "site",
            IndicatorKind::Rule => "rule",
        }
    }

    pub fn parse(text: &str) -> Option<IndicatorKind> {
        match text {
            "ip" => Some(IndicatorKind::Ip),
            "user" => Some(IndicatorKind::User),
            "site" => Some(IndicatorKind::Site),
            "rule" => Some(IndicatorKind::Rule),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Indicator {
    pub kind: IndicatorKind,
    pub value: String,
}

impl Indicator {
    pub fn new(kind: IndicatorKind, value: impl Into<String>) -> Indicator {
        Indicator {
            kind,
            value: value.into(),
        }
    }
}

/// A containment action an incident can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Ban a client IP at the edge (target: the IP).
    BanIp,
    /// Disable a user and revoke all its sessions and API keys (target:
    /// the user's e-mail address).
    DisableUser,
    /// Stop a site's apps, serve a 503 maintenance page and refuse its
    /// deploys (target: the domain).
    IsolateSite,
    /// Rotate a site's secrets (target: the domain).
    RotateSecrets,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [
        ActionKind::BanIp,
        ActionKind::DisableUser,
        ActionKind::IsolateSite,
        ActionKind::RotateSecrets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::BanIp => "ban_ip",
            ActionKind::DisableUser => "disable_user",
            ActionKind::IsolateSite => "isolate_site",
            ActionKind::RotateSecrets => "rotate_secrets",
        }
    }

    /// Reads an action name; `-` may stand for `_` (`ban-ip`).
    pub fn parse(text: &str) -> Option<ActionKind> {
        let text = text.replace('-', "_");
        ActionKind::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The indicator kind whose values this action takes as targets.
    pub fn target_kind(self) -> IndicatorKind {
        match self {
            ActionKind::BanIp => IndicatorKind::Ip,
            ActionKind::DisableUser => IndicatorKind::User,
            ActionKind::IsolateSite | ActionKind::RotateSecrets => IndicatorKind::Site,
        }
    }
}

/// Whether an action still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    /// In force.
    Active,
    /// Undone by a lift (or by resolving the incident).
    Lifted,
    /// Done once with nothing to undo (no action of this version ends
    /// so; kept so stored rows stay readable).
    Done,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Active => "active",
            ActionState::Lifted => "lifted",
            ActionState::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<ActionState> {
        match text {
            "active" => Some(ActionState::Active),
            "lifted" => Some(ActionState::Lifted),
            "done" => Some(ActionState::Done),
            _ => None,
        }
    }
}

/// A containment action taken for an incident.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Action {
    pub id: i64,
    pub kind: ActionKind,
    pub target: String,
    pub state: ActionState,
    /// Who took it: `policy` or `user:ID`.
    pub actor: String,
    /// RFC 3339.
    pub applied_at: String,
    pub lifted_at: Option<String>,
}

/// One line of an incident's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// RFC 3339.
    pub time: String,
    /// `detection`, `open`, `contain`, `lift`, `resolve`, `notify`, `note`.
    pub kind: String,
    /// `system`, `policy` or `user:ID`.
    pub actor: String,
    pub summary: String,
    /// The audit event type that caused a detection, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// An incident with everything the API shows about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: i64,
    pub title: String,
    /// The detection rule that opened it, or `manual`.
    pub rule: String,
    pub severity: Severity,
    pub status: Status,
    /// RFC 3339.
    pub opened_at: String,
    pub updated_at: String,
    pub resolved_at: Option<String>,
    pub indicators: Vec<Indicator>,
    pub actions: Vec<Action>,
    pub timeline: Vec<TimelineEntry>,
}

/// An incident as a list shows it: without its timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncidentSummary {
    pub id: i64,
    pub title: String,
    pub rule: String,
    pub severity: Severity,
    pub status: Status,
    pub opened_at: String,
    pub updated_at: String,
    pub indicators: Vec<Indicator>,
}

/// Formats Unix seconds as RFC 3339 (UTC).
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_from_low_to_critical() {
        assert!(Severity::Low < Severity::Medium);
        assert!(Severity::High < Severity::Critical);
        assert_eq!(Severity::parse("HIGH"), Some(Severity::High));
        assert_eq!(Severity::parse("severe"), None);
    }

    #[test]
    fn action_names_accept_dashes() {
        assert_eq!(ActionKind::parse("ban-ip"), Some(ActionKind::BanIp));
        assert_eq!(
            ActionKind::parse("isolate_site"),
            Some(ActionKind::IsolateSite)
        );
        assert_eq!(ActionKind::parse("nuke"), None);
    }
}
