//! Incident response: detections from audit events open and grow
//! incidents (timeline, indicators, severity, status), containment
//! actions are taken by policy or on command and can be lifted, and every
//! change is notified by signed webhook and e-mail. Who may call these is
//! the hub's business; this crate trusts its caller's `actor`.
#![forbid(unsafe_code)]

mod config;
mod contain;
mod db;
mod detect;
mod model;
mod notify;

pub use config::{
    DetectionConfig, EmailConfig, IncidentConfig, PolicyConfig, Recipient, Secret, Threshold,
    WebhookConfig,
};
pub use contain::{Responders, SecretRotator, SiteControl};
pub use detect::{Detection, Detector};
pub use model::{
    Action, ActionKind, ActionState, Incident, IncidentSummary, Indicator, IndicatorKind, Severity,
    Status, TimelineEntry,
};
pub use notify::{signature, Notice, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use db::Line;
use model::{now, rfc3339};
use notify::Notifier;
use sqlx::SqlitePool;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What can go wrong with incidents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IncidentError {
    /// The client sent a value that breaks a rule; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The client named an incident or action that does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The client asked for something the incident's state forbids.
    #[error("{0}")]
    Conflict(String),
    /// The operator's setup: the action has nothing to act through.
    #[error("{0}")]
    Unavailable(String),
    /// Our side or a component: the action failed midway.
    #[error("containment failed: {0}")]
    ActionFailed(String),
    /// Our side: a stored row holds a value this version cannot read.
    #[error("stored incident data is unreadable: {0}")]
    Corrupt(String),
    /// Our side: the database failed.
    #[error("incident storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl IncidentError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> IncidentError {
        IncidentError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Who did something to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// Detection.
    System,
    /// The automatic containment policy.
    Policy,
    /// A user through the API or CLI.
    User(i64),
}

impl Actor {
    fn label(self) -> String {
        match self {
            Actor::System => "system".into(),
            Actor::Policy => "policy".into(),
            Actor::User(id) => format!("user:{id}"),
        }
    }

    fn user_id(self) -> Option<i64> {
        match self {
            Actor::User(id) => Some(id),
            _ => None,
        }
    }
}

/// An incident opened by hand.
#[derive(Debug, Clone)]
pub struct NewIncident {
    pub title: String,
    pub severity: Severity,
    pub indicators: Vec<Indicator>,
}

/// Incidents of this process; cheap to clone.
#[derive(Clone)]
pub struct Incidents {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    config: IncidentConfig,
    responders: Responders,
    notifier: Notifier,
    detector: Mutex<Detector>,
    /// Held across each change, so two detections about one source
    /// cannot both open an incident.
    changes: tokio::sync::Mutex<()>,
}

/// Longest title and note accepted.
const MAX_TEXT: usize = 1000;

impl Incidents {
    /// Opens the incident tables of the store in `data_dir` (migrated
    /// already) and re-applies site isolations that were in force when
    /// the process stopped; bans persist in the shield by themselves.
    pub async fn start(
        data_dir: &Path,
        config: IncidentConfig,
        responders: Responders,
    ) -> Result<Incidents, IncidentError> {
        config
            .validate()
            .map_err(|m| IncidentError::invalid("incidents", m))?;
        let pool = db::open(data_dir).await?;
        for (_, incident, domain) in db::active_actions(&pool, ActionKind::IsolateSite).await? {
            if let Err(e) = responders.sites.isolate(&domain, incident).await {
                tracing::error!(site = %domain, incident, error = %e,
                    "site isolation not restored");
            }
        }
        Ok(Incidents {
            inner: Arc::new(Inner {
                notifier: Notifier::new(pool.clone(), &config),
                detector: Mutex::new(Detector::new(&config.detection)),
                pool,
                config,
                responders,
                changes: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Feeds every event of `events` to detection until the sender goes.
    pub fn watch(
        &self,
        mut events: tokio::sync::broadcast::Receiver<audit::AuditEvent>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(event) => this.observe(&event).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "incident detection fell behind the audit log");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Runs detection over one audit event and records what it finds.
    pub async fn observe(&self, event: &audit::AuditEvent) {
        if !self.inner.config.enabled || event.kind.starts_with("incident.") {
            return;
        }
        let found = self
            .inner
            .detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(event);
        if let Some(detection) = found {
            if let Err(e) = self.record(detection).await {
                tracing::error!(error = %e, "detection not recorded");
            }
        }
    }

    /// Records a detection: a new incident, or a new line (and perhaps a
    /// higher severity) on the unresolved one about the same source. Then
    /// notifies and applies the policy. Returns the incident's id.
    pub async fn record(&self, d: Detection) -> Result<i64, IncidentError> {
        let group = d.group_key();
        let guard = self.inner.changes.lock().await;
        let mut tx = db::begin(&self.inner.pool).await?;
        let (id, change) = match db::open_in_group(&mut tx, &group).await? {
            Some((id, severity)) => {
                db::add_indicators(&mut tx, id, &d.indicators).await?;
                let line = Line {
                    kind: "detection",
                    actor: "system",
                    summary: &d.title,
                    event: Some(&d.event),
                };
                db::add_timeline(&mut tx, id, line).await?;
                if d.severity > severity {
                    db::set_severity(&mut tx, id, d.severity).await?;
                    let summary = format!("severity raised from {severity} to {}", d.severity);
                    let line = Line {
                        kind: "escalate",
                        actor: "system",
                        summary: &summary,
                        event: None,
                    };
                    db::add_timeline(&mut tx, id, line).await?;
                    (id, Some("incident.escalate"))
                } else {
                    (id, None)
                }
            }
            None => {
                let id = db::insert_incident(&mut tx, &d.title, d.rule, d.severity, Some(&group))
                    .await?;
                db::add_indicators(&mut tx, id, &d.indicators).await?;
                let line = Line {
                    kind: "open",
                    actor: "system",
                    summary: &d.title,
                    event: Some(&d.event),
                };
                db::add_timeline(&mut tx, id, line).await?;
                (id, Some("incident.open"))
            }
        };
        tx.commit().await?;
        drop(guard);

        if let Some(kind) = change {
            if kind == "incident.open" {
                tracing::warn!(target: "spinforge::audit", event = "incident.open",
                    incident = id, severity = d.severity.as_str(), rule = d.rule,
                    actor = "system", "{}", d.title);
            } else {
                tracing::warn!(target: "spinforge::audit", event = "incident.escalate",
                    incident = id, severity = d.severity.as_str(), rule = d.rule,
                    "incident severity raised");
            }
            self.notify(id, kind, &d.title).await;
            self.apply_policy(id, d.rule, d.severity).await;
        }
        Ok(id)
    }

    /// Opens an incident by hand.
    pub async fn open(&self, new: NewIncident, actor: Actor) -> Result<Incident, IncidentError> {
        let title = check_text(&new.title, "title", 200)?;
        if new.indicators.len() > 100 {
            return Err(IncidentError::invalid("indicators", "at most 100"));
        }
        for i in &new.indicators {
            if i.value.trim().is_empty()
                || i.value.len() > 254
                || i.value.chars().any(char::is_control)
            {
                return Err(IncidentError::invalid(
                    "indicators",
                    "each value must be 1 to 254 characters without control characters",
                ));
            }
        }
        let _guard = self.inner.changes.lock().await;
        let mut tx = db::begin(&self.inner.pool).await?;
        let id = db::insert_incident(&mut tx, &title, "manual", new.severity, None).await?;
        db::add_indicators(&mut tx, id, &new.indicators).await?;
        let label = actor.label();
        let line = Line {
            kind: "open",
            actor: &label,
            summary: &title,
            event: None,
        };
        db::add_timeline(&mut tx, id, line).await?;
        tx.commit().await?;
        tracing::warn!(target: "spinforge::audit", event = "incident.open", incident = id,
            severity = new.severity.as_str(), rule = "manual", user = actor.user_id(),
            "{title}");
        self.notify(id, "incident.open", &title).await;
        self.get(id).await
    }

    pub async fn get(&self, id: i64) -> Result<Incident, IncidentError> {
        db::load(&self.inner.pool, id)
            .await?
            .ok_or(IncidentError::NotFound("incident"))
    }

    /// Newest first; `limit` 1 to 1000.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: u32,
    ) -> Result<Vec<IncidentSummary>, IncidentError> {
        if !(1..=1000).contains(&limit) {
            return Err(IncidentError::invalid("limit", "must be 1 to 1000"));
        }
        db::list(&self.inner.pool, status, limit).await
    }

    /// Takes `kind` against `target`, or, without one, against every
    /// indicator of the matching kind. Everything is checked before
    /// anything is done; a target already held by this incident is
    /// skipped.
    pub async fn contain(
        &self,
        id: i64,
        kind: ActionKind,
        target: Option<&str>,
        actor: Actor,
    ) -> Result<Incident, IncidentError> {
        let incident = self.get(id).await?;
        if incident.status == Status::Resolved {
            return Err(IncidentError::Conflict(format!(
                "incident {id} is resolved; open a new one"
            )));
        }
        let wanted: Vec<String> = match target {
            Some(t) => vec![t.to_owned()],
            None => incident
                .indicators
                .iter()
                .filter(|i| i.kind == kind.target_kind())
                .map(|i| i.value.clone())
                .collect(),
        };
        if wanted.is_empty() {
            return Err(IncidentError::invalid(
                "target",
                format!(
                    "incident {id} has no {} indicator; name a target",
                    kind.target_kind().as_str()
                ),
            ));
        }
        let responders = &self.inner.responders;
        let mut targets = Vec::with_capacity(wanted.len());
        for t in &wanted {
            targets.push(responders.check_target(kind, t).await?);
        }

        let _guard = self.inner.changes.lock().await;
        let label = actor.label();
        let mut taken = 0;
        for target in targets {
            let held = incident
                .actions
                .iter()
                .any(|a| a.kind == kind && a.target == target && a.state == ActionState::Active);
            if held {
                continue;
            }
            let (state, steps) = responders.apply(kind, &target, id).await?;
            let mut tx = db::begin(&self.inner.pool).await?;
            db::insert_action(&mut tx, id, kind, &target, state, &label).await?;
            let summary = format!("{} {target}", kind.as_str());
            let line = Line {
                kind: "contain",
                actor: &label,
                summary: &summary,
                event: None,
            };
            db::add_timeline(&mut tx, id, line).await?;
            add_steps(&mut tx, id, "contain", &label, &summary, &steps).await?;
            db::set_status(&mut tx, id, Status::Contained).await?;
            tx.commit().await?;
            taken += 1;
            tracing::warn!(target: "spinforge::audit", event = "incident.contain",
                incident = id, action = kind.as_str(), target = %target,
                actor = %label, user = actor.user_id(), "containment action taken");
        }
        drop(_guard);
        if taken > 0 {
            self.notify(id, "incident.contain", &format!("{} taken", kind.as_str()))
                .await;
        }
        self.get(id).await
    }

    /// Undoes one active action of incident `id`.
    pub async fn lift(
        &self,
        id: i64,
        action: i64,
        actor: Actor,
    ) -> Result<Incident, IncidentError> {
        let incident = self.get(id).await?;
        let taken = incident
            .actions
            .iter()
            .find(|a| a.id == action)
            .ok_or(IncidentError::NotFound("action"))?;
        if taken.state != ActionState::Active {
            return Err(IncidentError::Conflict(format!(
                "action {action} is {}, not active",
                taken.state.as_str()
            )));
        }
        let _guard = self.inner.changes.lock().await;
        let steps = self
            .inner
            .responders
            .lift(taken.kind, &taken.target, id)
            .await?;
        let label = actor.label();
        let mut tx = db::begin(&self.inner.pool).await?;
        db::mark_lifted(&mut tx, action).await?;
        let summary = format!("lifted {} {}", taken.kind.as_str(), taken.target);
        let line = Line {
            kind: "lift",
            actor: &label,
            summary: &summary,
            event: None,
        };
        db::add_timeline(&mut tx, id, line).await?;
        add_steps(&mut tx, id, "lift", &label, &summary, &steps).await?;
        let still_active = incident
            .actions
            .iter()
            .any(|a| a.id != action && a.state == ActionState::Active);
        if incident.status == Status::Contained && !still_active {
            db::set_status(&mut tx, id, Status::Open).await?;
        }
        tx.commit().await?;
        tracing::warn!(target: "spinforge::audit", event = "incident.lift", incident = id,
            action = taken.kind.as_str(), target = %taken.target, actor = %label,
            user = actor.user_id(), "containment lifted");
        self.get(id).await
    }

    /// Resolves incident `id` with a note. Actions in force stay in force
    /// (bans expire by themselves); lift them first to undo them.
    pub async fn resolve(
        &self,
        id: i64,
        note: &str,
        actor: Actor,
    ) -> Result<Incident, IncidentError> {
        let note = check_text(note, "note", MAX_TEXT)?;
        let _guard = self.inner.changes.lock().await;
        match db::status_of(&self.inner.pool, id).await? {
            None => return Err(IncidentError::NotFound("incident")),
            Some(Status::Resolved) => {
                return Err(IncidentError::Conflict(format!(
                    "incident {id} is resolved already"
                )))
            }
            Some(_) => {}
        }
        let label = actor.label();
        let mut tx = db::begin(&self.inner.pool).await?;
        db::set_status(&mut tx, id, Status::Resolved).await?;
        let line = Line {
            kind: "resolve",
            actor: &label,
            summary: &note,
            event: None,
        };
        db::add_timeline(&mut tx, id, line).await?;
        tx.commit().await?;
        drop(_guard);
        tracing::warn!(target: "spinforge::audit", event = "incident.resolve", incident = id,
            actor = %label, user = actor.user_id(), "incident resolved");
        self.notify(id, "incident.resolve", &note).await;
        self.get(id).await
    }

    /// The automatic containment of the policy for a new or escalated
    /// incident. Failures are logged and noted; detection goes on.
    async fn apply_policy(&self, id: i64, rule: &str, severity: Severity) {
        let policy = &self.inner.config.policy;
        let mut actions = Vec::new();
        if policy.ban_ips_at.reached_by(severity) {
            actions.push(ActionKind::BanIp);
        }
        // Only where the user is the one acting: a brute-force victim is
        // never disabled, or an attacker could lock anyone out.
        if policy.disable_users_at.reached_by(severity)
            && matches!(rule, "token_reuse" | "permission_probe")
        {
            actions.push(ActionKind::DisableUser);
        }
        if policy.isolate_sites_at.reached_by(severity) {
            actions.push(ActionKind::IsolateSite);
        }
        for kind in actions {
            match self.contain(id, kind, None, Actor::Policy).await {
                Ok(_) => {}
                // No indicator of that kind: nothing to do.
                Err(IncidentError::Invalid {
                    field: "target", ..
                }) => {}
                Err(e) => {
                    tracing::error!(incident = id, action = kind.as_str(), error = %e,
                        "automatic containment failed");
                }
            }
        }
    }

    async fn notify(&self, id: i64, kind: &'static str, what: &str) {
        let incident = match db::list_one(&self.inner.pool, id).await {
            Ok(Some(incident)) => incident,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(incident = id, error = %e, "incident not notified");
                return;
            }
        };
        let summary = match kind {
            "incident.open" => format!(
                "{} incident opened, {}: {what}",
                incident.severity,
                notify::verb(incident.severity)
            ),
            "incident.escalate" => format!("incident escalated to {}", incident.severity),
            "incident.contain" => format!("incident contained: {what}"),
            _ => format!("incident resolved: {what}"),
        };
        self.inner.notifier.send(Notice {
            kind,
            time: rfc3339(now()),
            summary,
            incident,
        });
    }
}

/// One timeline line per step of an action, after the action's own line
/// (`action: step`).
async fn add_steps(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    kind: &str,
    actor: &str,
    action: &str,
    steps: &[String],
) -> Result<(), IncidentError> {
    for step in steps {
        let summary = format!("{action}: {step}");
        let line = Line {
            kind,
            actor,
            summary: &summary,
            event: None,
        };
        db::add_timeline(tx, id, line).await?;
    }
    Ok(())
}

fn check_text(text: &str, field: &'static str, max: usize) -> Result<String, IncidentError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > max {
        return Err(IncidentError::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(IncidentError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}
