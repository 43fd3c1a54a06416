//! The hub's side of an incident's "rotate a site's secrets" (issue 9):
//! the [`incident::SecretRotator`] that `serve` plugs into containment.
//!
//! The platform cannot change a credential at the third party that issued
//! it. Rotating here therefore means: seal every stored version of the
//! site's secrets again under fresh data keys, withhold each secret from
//! app starts until someone sets a new value (`secrets list` shows it as
//! rotation required), and stop the site's running app, whose environment
//! still holds the old values, so that it starts again without them.
//! Lifting hands back the values nobody replaced and restarts the app; the
//! fresh data keys stay. Each step is a timeline line and an audit event.

use crate::Hub;
use secrets::Secrets;
use store::{Site, SiteKind};

/// Rotates a site's secrets for incident containment.
pub struct HubSecretRotator {
    pub hub: Hub,
    pub secrets: Secrets,
}

#[async_trait::async_trait]
impl incident::SecretRotator for HubSecretRotator {
    async fn rotate(&self, domain: &str, incident: i64) -> Result<Vec<String>, String> {
        let site = self.hub.site(domain).await.map_err(|e| e.to_string())?;
        let _guard = self.hub.site_lock(&site.domain).await;

        let rotation = self
            .secrets
            .rotate_site(site.id.0, incident)
            .await
            .map_err(|e| e.to_string())?;
        let names = rotation.withheld.join(",");
        tracing::warn!(target: "spinforge::audit", event = "secret.rotate",
            site = %site.domain, incident, names = %names, count = rotation.withheld.len(),
            resealed = rotation.resealed, "site secrets rotated by incident containment");
        let mut steps = vec![format!(
            "sealed {} stored versions of {} secrets again under fresh data keys",
            rotation.resealed,
            rotation.withheld.len()
        )];
        if rotation.withheld.is_empty() {
            steps.push("the site has no secrets to withhold".into());
        } else {
            steps.push(format!(
                "withheld from app starts until a new value is set: {}",
                rotation.withheld.join(", ")
            ));
        }
        steps.push(self.restart(&site, incident, "secret.rotate").await);
        Ok(steps)
    }

    async fn lift(&self, domain: &str, incident: i64) -> Result<Vec<String>, String> {
        let site = self.hub.site(domain).await.map_err(|e| e.to_string())?;
        let _guard = self.hub.site_lock(&site.domain).await;

        let released = self
            .secrets
            .release_site(site.id.0, incident)
            .await
            .map_err(|e| e.to_string())?;
        let still = self
            .secrets
            .withheld(site.id.0)
            .await
            .map_err(|e| e.to_string())?;
        let back: Vec<&str> = released
            .iter()
            .filter(|n| !still.contains(n))
            .map(String::as_str)
            .collect();
        tracing::warn!(target: "spinforge::audit", event = "secret.rotation_lift",
            site = %site.domain, incident, names = %back.join(","),
            still_withheld = %still.join(","), "withheld site secrets handed back");
        let mut steps = vec![if back.is_empty() {
            "no withheld secret to hand back (new values were set)".to_owned()
        } else {
            format!("handed back to app starts: {}", back.join(", "))
        }];
        if !still.is_empty() {
            steps.push(format!(
                "still withheld by another incident: {}",
                still.join(", ")
            ));
        }
        steps.push(self.restart(&site, incident, "secret.rotation_lift").await);
        Ok(steps)
    }
}

impl HubSecretRotator {
    /// Stops every running instance of the site's app, the ones draining
    /// after a deploy too, and registers its release again: the next
    /// start reads the secrets as they are now. Returns the step's line.
    async fn restart(&self, site: &Site, incident: i64, cause: &str) -> String {
        if site.kind != SiteKind::Process {
            return "no app to restart (not a process site)".into();
        }
        if let Some(by) = self.hub.isolated_by(&site.domain) {
            return format!(
                "app not restarted: the site is isolated by incident {by}, its app starts \
                 with the current secrets when the isolation is lifted"
            );
        }
        let supervisor = self.hub.supervisor();
        let was_known = supervisor.suspend(&site.domain).await;
        self.hub.register_apps(std::slice::from_ref(site)).await;
        tracing::warn!(target: "spinforge::audit", event = "site.restart", site = %site.domain,
            incident, cause, "app stopped so that it starts with the current secrets");
        if was_known {
            "stopped the site's app; it starts again with the current secrets".into()
        } else {
            "no app was running".into()
        }
    }
}
