//! Site operations of the hub: create, change, delete and roll back. Each
//! writes the store first, then pushes the resulting route to the edge.

use crate::error::ApiError;
use crate::{apps, domain, layout, now, Hub};
use edge::Upstream;
use store::{NewSite, ReleaseId, Site, SiteChange, SiteKind, UserId};

/// A validated request to create a site.
pub struct SiteSpec {
    pub domain: String,
    pub kind: SiteKind,
    pub upstream: Option<String>,
    pub spa: bool,
}

impl Hub {
    /// Normalises a domain from a path or body, or says which rule it broke.
    pub fn check_domain(&self, input: &str) -> Result<String, ApiError> {
        domain::validate(input, self.inner.config.allow_localhost)
            .map_err(|e| ApiError::invalid("domain", e.to_string()))
    }

    /// Parses an upstream URL and checks it against the upstream policy.
    async fn check_upstream(&self, url: &str) -> Result<String, ApiError> {
        let invalid = |e: edge::UpstreamError| ApiError::invalid("upstream", e.to_string());
        let upstream = Upstream::parse(url).map_err(invalid)?;
        self.inner
            .config
            .upstream_policy
            .check(&upstream)
            .await
            .map_err(invalid)?;
        Ok(url.to_owned())
    }

    pub async fn site(&self, domain: &str) -> Result<Site, ApiError> {
        let domain = self.check_domain(domain)?;
        self.inner
            .store
            .site_by_domain(&domain)
            .await?
            .ok_or(ApiError::NotFound("site"))
    }

    pub async fn create_site(
        &self,
        owner: Option<UserId>,
        spec: SiteSpec,
    ) -> Result<Site, ApiError> {
        let domain = self.check_domain(&spec.domain)?;
        let upstream = match (spec.kind, spec.upstream) {
            (SiteKind::Proxy, Some(url)) => Some(self.check_upstream(&url).await?),
            (SiteKind::Proxy, None) => {
                return Err(ApiError::invalid(
                    "upstream",
                    "is required for a proxy site",
                ))
            }
            (SiteKind::Static | SiteKind::Process, Some(_)) => {
                return Err(ApiError::invalid("upstream", "is only for proxy sites"))
            }
            (SiteKind::Static | SiteKind::Process, None) => None,
        };

        let _guard = self.site_lock(&domain).await;
        let site = self
            .inner
            .store
            .create_site(NewSite {
                domain: domain.clone(),
                kind: spec.kind,
                owner,
                upstream,
                spa: spec.spa,
                created_at: now(),
            })
            .await?;
        self.sync_edge(&domain).await?;
        tracing::info!(site = %domain, kind = site.kind.as_str(), "site created");
        Ok(site)
    }

    pub async fn update_site(
        &self,
        domain: &str,
        upstream: Option<String>,
        spa: Option<bool>,
    ) -> Result<Site, ApiError> {
        let site = self.site(domain).await?;
        let upstream = match (site.kind, upstream) {
            (SiteKind::Proxy, Some(url)) => Some(self.check_upstream(&url).await?),
            (SiteKind::Static | SiteKind::Process, Some(_)) => {
                return Err(ApiError::invalid("upstream", "is only for proxy sites"))
            }
            (_, None) => None,
        };
        let _guard = self.site_lock(&site.domain).await;
        let site = self
            .inner
            .store
            .update_site(&site.domain, SiteChange { upstream, spa })
            .await?;
        self.sync_edge(&site.domain).await?;
        tracing::info!(site = %site.domain, "site updated");
        Ok(site)
    }

    /// Deletes a site, its releases and its route. The edge stops serving
    /// it before its files go.
    pub async fn delete_site(&self, domain: &str) -> Result<Site, ApiError> {
        let domain = self.check_domain(domain)?;
        let _guard = self.site_lock(&domain).await;
        let site = self
            .inner
            .store
            .delete_site(&domain)
            .await
            .map_err(|e| match e {
                store::StoreError::NotFound => ApiError::NotFound("site"),
                other => other.into(),
            })?;
        self.inner.routes.update(|table| table.remove(&domain));
        if site.kind == SiteKind::Process {
            self.inner.supervisor.remove(&domain).await;
        }
        let dir = self.inner.layout.site_dir(site.id);
        if let Err(e) = tokio::task::spawn_blocking(move || layout::remove_any(&dir)).await {
            // The rows are gone, so the start-up sweep removes the folder.
            tracing::warn!(site = %domain, error = %e, "site folder not removed");
        }
        tracing::info!(site = %domain, "site deleted");
        Ok(site)
    }

    /// Makes an earlier release active again: the one named, or else the
    /// newest release older than the active one.
    pub async fn rollback(&self, domain: &str, to: Option<String>) -> Result<Site, ApiError> {
        let site = self.site(domain).await?;
        let _guard = self.site_lock(&site.domain).await;
        let releases = self.inner.store.list_releases(site.id).await?;
        let target = match to {
            Some(id) => releases
                .iter()
                .find(|r| r.id.0 == id)
                .map(|r| r.id.clone())
                .ok_or_else(|| ApiError::invalid("release", "no such release for this site"))?,
            None => {
                let active = site.active_release.as_ref();
                let older: Option<&ReleaseId> = match active {
                    Some(active) => releases.iter().map(|r| &r.id).find(|id| *id < active),
                    None => None,
                };
                older.cloned().ok_or_else(|| {
                    ApiError::invalid("release", "there is no earlier release to roll back to")
                })?
            }
        };
        // An app release must start and be healthy before it takes over,
        // exactly as on deploy; a failure leaves the current one serving.
        let candidate = match site.kind {
            SiteKind::Process => {
                let dir = self.inner.layout.release_dir(site.id, &target);
                let spec = apps::load_spec(&target, dir).await?;
                let prepared = self.inner.supervisor.prepare(&site.domain, spec).await;
                Some(prepared.map_err(apps::start_failed)?)
            }
            _ => None,
        };
        let site = match self.inner.store.activate_release(site.id, &target).await {
            Ok(site) => site,
            Err(e) => {
                if let Some(candidate) = candidate {
                    self.inner.supervisor.discard(candidate).await;
                }
                return Err(e.into());
            }
        };
        if let Some(candidate) = candidate {
            self.inner.supervisor.promote(candidate);
        }
        self.sync_edge(&site.domain).await?;
        tracing::info!(site = %site.domain, release = %target, "rolled back");
        Ok(site)
    }
}
