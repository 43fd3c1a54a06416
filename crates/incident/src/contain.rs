//! Containment: the four actions an incident can take and undo. Bans go
//! to the shield and user changes to identity directly; isolating a site
//! and rotating its secrets belong to the hub and the secrets store, so
//! they come in through the small [`SiteControl`] and [`SecretRotator`]
//! traits that `serve` plugs in.

use crate::model::{ActionKind, ActionState};
use crate::IncidentError;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use store::{Store, UserChange, UserId};

/// Isolates sites: the hub implements it.
#[async_trait]
pub trait SiteControl: Send + Sync {
    /// True iff a site with this domain exists.
    async fn exists(&self, domain: &str) -> Result<bool, String>;
    /// Stops the site's apps, makes the edge answer 503 with a maintenance
    /// page and refuses deploys, rollbacks and restarts until lifted.
    async fn isolate(&self, domain: &str, incident: i64) -> Result<(), String>;
    /// Undoes [`SiteControl::isolate`]: the site serves again.
    async fn lift(&self, domain: &str) -> Result<(), String>;
}

/// Rotates a site's secrets; the hub implements it over the secrets
/// store. Each step taken comes back as one line for the incident's
/// timeline, never with a value.
#[async_trait]
pub trait SecretRotator: Send + Sync {
    /// Rotates every secret of the site for `incident` (what that means
    /// is the implementation's to document); returns the steps taken.
    async fn rotate(&self, domain: &str, incident: i64) -> Result<Vec<String>, String>;
    /// Undoes what can be undone of [`SecretRotator::rotate`] for
    /// `incident`; returns the steps taken.
    async fn lift(&self, domain: &str, incident: i64) -> Result<Vec<String>, String>;
}

/// What containment acts through.
#[derive(Clone)]
pub struct Responders {
    pub shield: shield::Shield,
    pub identity: identity::Identity,
    pub store: Arc<dyn Store>,
    pub sites: Arc<dyn SiteControl>,
    /// `None` makes the rotation action answer 503 (a server without a
    /// secret store); `serve` always passes one.
    pub secrets: Option<Arc<dyn SecretRotator>>,
    /// How long a containment ban lasts.
    pub ban_ttl: Duration,
}

impl Responders {
    /// Checks `target` for `kind` and returns it in canonical form,
    /// before anything changes.
    pub(crate) async fn check_target(
        &self,
        kind: ActionKind,
        target: &str,
    ) -> Result<String, IncidentError> {
        let target = target.trim();
        if target.is_empty() || target.len() > 254 || target.chars().any(char::is_control) {
            return Err(IncidentError::invalid(
                "target",
                "must be 1 to 254 characters without control characters",
            ));
        }
        match kind {
            ActionKind::BanIp => {
                let ip: std::net::IpAddr = target.parse().map_err(|_| {
                    IncidentError::invalid("target", format!("`{target}` is not an IP address"))
                })?;
                if self.shield.is_allowlisted(ip) {
                    return Err(IncidentError::invalid(
                        "target",
                        format!("{ip} is on the shield's allowlist and cannot be banned"),
                    ));
                }
                Ok(ip.to_string())
            }
            ActionKind::DisableUser => {
                let user = self.user(target).await?;
                Ok(user.email)
            }
            ActionKind::IsolateSite | ActionKind::RotateSecrets => {
                let domain = target.to_ascii_lowercase();
                match self.sites.exists(&domain).await {
                    Ok(true) => Ok(domain),
                    Ok(false) => Err(IncidentError::invalid(
                        "target",
                        format!("no site `{domain}`"),
                    )),
                    Err(e) => Err(IncidentError::ActionFailed(e)),
                }
            }
        }
    }

    /// Takes the action; the state it leaves (active, or done for an
    /// action with nothing to undo) and the steps worth a timeline line
    /// of their own.
    pub(crate) async fn apply(
        &self,
        kind: ActionKind,
        target: &str,
        incident: i64,
    ) -> Result<(ActionState, Vec<String>), IncidentError> {
        let mut steps = Vec::new();
        match kind {
            ActionKind::BanIp => {
                self.shield
                    .ban(
                        target,
                        Some(self.ban_ttl),
                        &format!("incident {incident}"),
                        &format!("incident:{incident}"),
                    )
                    .map_err(shield_error)?;
            }
            ActionKind::DisableUser => {
                let user = self.user(target).await?;
                self.set_disabled(user.id, true).await?;
                let identity = &self.identity;
                identity
                    .revoke_all_sessions(user.id)
                    .await
                    .map_err(|e| IncidentError::ActionFailed(e.to_string()))?;
                identity
                    .revoke_all_api_keys(user.id)
                    .await
                    .map_err(|e| IncidentError::ActionFailed(e.to_string()))?;
            }
            ActionKind::IsolateSite => {
                self.sites
                    .isolate(target, incident)
                    .await
                    .map_err(IncidentError::ActionFailed)?;
            }
            // Active: what it withholds is handed back by a lift.
            ActionKind::RotateSecrets => {
                steps = self
                    .rotator()?
                    .rotate(target, incident)
                    .await
                    .map_err(IncidentError::ActionFailed)?;
            }
        }
        Ok((ActionState::Active, steps))
    }

    /// Undoes an active action; the steps worth a timeline line of their
    /// own. A ban that already expired is fine: the goal (no ban) holds.
    pub(crate) async fn lift(
        &self,
        kind: ActionKind,
        target: &str,
        incident: i64,
    ) -> Result<Vec<String>, IncidentError> {
        match kind {
            ActionKind::BanIp => match self.shield.lift(target, &format!("incident:{incident}")) {
                Ok(()) | Err(shield::ShieldError::NotFound(_)) => Ok(Vec::new()),
                Err(e) => Err(shield_error(e)),
            },
            ActionKind::DisableUser => {
                // Revoked sessions and API keys stay revoked: the user
                // logs in again and makes new keys.
                let user = self.user(target).await?;
                self.set_disabled(user.id, false).await?;
                Ok(Vec::new())
            }
            ActionKind::IsolateSite => {
                self.sites
                    .lift(target)
                    .await
                    .map_err(IncidentError::ActionFailed)?;
                Ok(Vec::new())
            }
            ActionKind::RotateSecrets => self
                .rotator()?
                .lift(target, incident)
                .await
                .map_err(IncidentError::ActionFailed),
        }
    }

    fn rotator(&self) -> Result<&Arc<dyn SecretRotator>, IncidentError> {
        self.secrets.as_ref().ok_or_else(|| {
            IncidentError::Unavailable(
                "secret rotation is not available: no secrets store is connected".into(),
            )
        })
    }

    /// Finds a user by e-mail address or `id:N`.
    async fn user(&self, target: &str) -> Result<store::User, IncidentError> {
        let found = match target.strip_prefix("id:") {
            Some(id) => {
                let id: i64 = id.parse().map_err(|_| {
                    IncidentError::invalid("target", "a user is an e-mail address or id:N")
                })?;
                self.store.user_by_id(UserId(id)).await
            }
            None => {
                let email = identity::normalize_email(target).map_err(|_| {
                    IncidentError::invalid("target", "a user is an e-mail address or id:N")
                })?;
                self.store.user_by_email(&email).await
            }
        };
        found
            .map_err(|e| IncidentError::ActionFailed(e.to_string()))?
            .ok_or_else(|| IncidentError::invalid("target", format!("no user `{target}`")))
    }

    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<(), IncidentError> {
        let change = UserChange {
            disabled: Some(disabled),
            ..UserChange::default()
        };
        self.identity
            .update_user(id, None, None, change)
            .await
            .map(|_| ())
            .map_err(|e| IncidentError::ActionFailed(e.to_string()))
    }
}

fn shield_error(e: shield::ShieldError) -> IncidentError {
    match e {
        shield::ShieldError::Invalid { message, .. } => IncidentError::invalid("target", message),
        other => IncidentError::ActionFailed(other.to_string()),
    }
}
