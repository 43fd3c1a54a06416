//! Site operations of the hub: create, change, delete and roll back. Each
//! writes the store first, then pushes the resulting route to the edge.

use crate::error::ApiError;
use crate::{apps, domain, layout, now, Hub};
use edge::Upstream;
use identity::Principal;
use store::{
    BalancerConfig, CustomerId, NewSite, ReleaseId, Role, Site, SiteChange, SiteKind, Strategy,
    UserId,
};

/// A request to create a site, checked by [`Hub::create_site`].
pub struct SiteSpec {
    pub domain: String,
    pub kind: SiteKind,
    pub upstream: Option<String>,
    pub balancer: Option<BalancerInput>,
    pub spa: bool,
}

/// Balancer settings as a client sends them; on update, absent fields keep
/// their stored value.
#[derive(Debug, Default)]
pub struct BalancerInput {
    pub upstreams: Option<Vec<String>>,
    /// `round_robin` (default) or `least_conn`.
    pub strategy: Option<String>,
    pub health_path: Option<String>,
    pub health_interval_secs: Option<u64>,
}

impl BalancerInput {
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_none()
            && self.strategy.is_none()
            && self.health_path.is_none()
            && self.health_interval_secs.is_none()
    }
}

/// Most upstreams one balancer may have.
const MAX_UPSTREAMS: usize = 32;

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

    /// Merges `input` over `base` and checks the result: 1 to 32 distinct
    /// upstreams, each allowed by the upstream policy; a known strategy; a
    /// health path starting with `/`; an interval of 1 to 300 s.
    async fn check_balancer(
        &self,
        base: Option<&BalancerConfig>,
        input: BalancerInput,
    ) -> Result<BalancerConfig, ApiError> {
        let upstreams = match (input.upstreams, base) {
            (Some(list), _) => list,
            (None, Some(base)) => base.upstreams.clone(),
            (None, None) => {
                return Err(ApiError::invalid(
                    "upstreams",
                    "is required for a balancer site",
                ))
            }
        };
        if upstreams.is_empty() || upstreams.len() > MAX_UPSTREAMS {
            return Err(ApiError::invalid(
                "upstreams",
                format!("must list 1 to {MAX_UPSTREAMS} upstream URLs"),
            ));
        }
        let mut checked = Vec::with_capacity(upstreams.len());
        for url in upstreams {
            let url = self.check_upstream(&url).await.map_err(|e| match e {
                ApiError::Invalid { message, .. } => ApiError::invalid("upstreams", message),
                other => other,
            })?;
            if checked.contains(&url) {
                return Err(ApiError::invalid(
                    "upstreams",
                    format!("{url} is listed twice"),
                ));
            }
            checked.push(url);
        }
        let strategy = match input.strategy.as_deref() {
            None => base.map_or(Strategy::RoundRobin, |b| b.strategy),
            Some("round_robin") => Strategy::RoundRobin,
            Some("least_conn") => Strategy::LeastConn,
            Some(_) => {
                return Err(ApiError::invalid(
                    "strategy",
                    "must be round_robin or least_conn",
                ))
            }
        };
        let health_path = match input.health_path {
            Some(path) if path.is_empty() => None,
            Some(path) => {
                let ok = path.starts_with('/')
                    && path.len() <= 1024
                    && !path.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    return Err(ApiError::invalid(
                        "health_path",
                        "must start with / and hold no spaces or control characters",
                    ));
                }
                Some(path)
            }
            None => base.and_then(|b| b.health_path.clone()),
        };
        let health_interval_secs = input
            .health_interval_secs
            .or(base.map(|b| b.health_interval_secs))
            .unwrap_or(5);
        if !(1..=300).contains(&health_interval_secs) {
            return Err(ApiError::invalid(
                "health_interval_secs",
                "must be between 1 and 300",
            ));
        }
        Ok(BalancerConfig {
            upstreams: checked,
            strategy,
            health_path,
            health_interval_secs,
        })
    }

    pub async fn site(&self, domain: &str) -> Result<Site, ApiError> {
        let domain = self.check_domain(domain)?;
        self.inner
            .store
            .site_by_domain(&domain)
            .await?
            .ok_or(ApiError::NotFound("site"))
    }

    /// Creates a site owned by `customer` (`None`: a platform site that only
    /// admins reach), created by `owner`.
    pub async fn create_site(
        &self,
        owner: Option<UserId>,
        customer: Option<CustomerId>,
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
            (SiteKind::Static | SiteKind::Process | SiteKind::Balancer, Some(_)) => {
                return Err(ApiError::invalid("upstream", "is only for proxy sites"))
            }
            (SiteKind::Static | SiteKind::Process | SiteKind::Balancer, None) => None,
        };
        let balancer = match (spec.kind, spec.balancer) {
            (SiteKind::Balancer, Some(input)) => Some(self.check_balancer(None, input).await?),
            (SiteKind::Balancer, None) => {
                return Err(ApiError::invalid(
                    "upstreams",
                    "is required for a balancer site",
                ))
            }
            (_, Some(input)) if !input.is_empty() => {
                return Err(ApiError::invalid(
                    "upstreams",
                    "are only for balancer sites",
                ))
            }
            _ => None,
        };

        let _guard = self.site_lock(&domain).await;
        let site = self
            .inner
            .store
            .create_site(NewSite {
                domain: domain.clone(),
                kind: spec.kind,
                owner,
                customer,
                upstream,
                balancer,
                spa: spec.spa,
                created_at: now(),
            })
            .await?;
        // A new site starts with no upstream TLS of its own, whatever an
        // earlier site of the same name left in the edge.
        self.forget_upstream_tls(&domain);
        self.sync_edge(&domain).await?;
        tracing::info!(site = %domain, kind = site.kind.as_str(), "site created");
        Ok(site)
    }

    /// Creates a site for an API caller: [`Hub::create_site`] after the
    /// domain claim rules. Admins may take any valid name; anyone else no
    /// wildcard, not bare `localhost`, and no name that equals, sits
    /// under, sits above or covers a site held by another customer or
    /// the platform. A refusal is an audit event.
    pub async fn create_claimed_site(
        &self,
        caller: &Principal,
        customer: Option<CustomerId>,
        spec: SiteSpec,
    ) -> Result<Site, ApiError> {
        let domain = self.check_domain(&spec.domain)?;
        // One claim at a time: the check reads every site, and a parallel
        // create of an overlapping name must see this one.
        // Limitation: the lock is this process's; hubs sharing one
        // PostgreSQL store could race (a store-side advisory lock around
        // check and insert would lift it).
        let _claims = self.inner.claims.lock().await;
        if caller.role != Role::Admin {
            let sites = self.inner.store.list_sites().await?;
            let foreign = sites
                .iter()
                .filter(|site| site.customer.is_none() || site.customer != customer)
                .map(|site| site.domain.as_str());
            if let Err(refused) = domain::claim(&domain, foreign) {
                tracing::info!(
                    target: "spinforge::audit", event = "domain.claim_denied",
                    result = "denied", user = %caller.user_id, role = caller.role.as_str(),
                    customer = %customer.map(|c| c.to_string()).unwrap_or_default(),
                    site = %domain, rule = refused.rule(), "domain claim refused"
                );
                let message = refused.to_string();
                return Err(match refused {
                    domain::ClaimError::OtherCustomer => ApiError::Conflict {
                        field: "domain",
                        message: format!("domain: {message}"),
                    },
                    _ => ApiError::Denied {
                        field: "domain",
                        message,
                    },
                });
            }
        }
        let site = self
            .create_site(Some(caller.user_id), customer, spec)
            .await?;
        tracing::info!(
            target: "spinforge::audit", event = "site.create", user = %caller.user_id,
            role = caller.role.as_str(),
            customer = %customer.map(|c| c.to_string()).unwrap_or_default(),
            site = %site.domain, wildcard = site.domain.starts_with("*."), "site created"
        );
        Ok(site)
    }

    pub async fn update_site(
        &self,
        domain: &str,
        upstream: Option<String>,
        balancer: BalancerInput,
        spa: Option<bool>,
    ) -> Result<Site, ApiError> {
        let site = self.site(domain).await?;
        let balancer = match (site.kind, balancer.is_empty()) {
            (_, true) => None,
            (SiteKind::Balancer, false) => Some(
                self.check_balancer(site.balancer.as_ref(), balancer)
                    .await?,
            ),
            (_, false) => {
                return Err(ApiError::invalid(
                    "upstreams",
                    "are only for balancer sites",
                ))
            }
        };
        let upstream = match (site.kind, upstream) {
            (SiteKind::Proxy, Some(url)) => Some(self.check_upstream(&url).await?),
            (SiteKind::Static | SiteKind::Process | SiteKind::Balancer, Some(_)) => {
                return Err(ApiError::invalid("upstream", "is only for proxy sites"))
            }
            (_, None) => None,
        };
        let _guard = self.site_lock(&site.domain).await;
        let site = self
            .inner
            .store
            .update_site(
                &site.domain,
                SiteChange {
                    upstream,
                    balancer,
                    spa,
                },
            )
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
        self.site_deleted(&site).await;
        Ok(site)
    }

    /// Drops the edge's upstream TLS entry for `domain`, if any.
    fn forget_upstream_tls(&self, domain: &str) {
        let upstream_tls = self
            .inner
            .upstream_tls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(sites) = upstream_tls {
            sites.clear(domain);
        }
    }

    /// What follows a site's rows leaving the store: the edge stops
    /// serving it, its spinlet stops, and its files go.
    pub(crate) async fn site_deleted(&self, site: &Site) {
        let domain = &site.domain;
        self.inner.routes.update(|table| table.remove(domain));
        // Its certificate and key go too: a later site of the same name
        // may belong to another customer.
        if let Err(e) = self.inner.store.delete_site_tls(domain).await {
            tracing::warn!(site = %domain, error = %e, "site certificate not removed");
        }
        let tls = self
            .inner
            .tls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(tls) = tls {
            tls.forget_site(domain);
        }
        // Likewise its upstream client certificate.
        if let Err(e) = self.inner.store.clear_upstream_tls(domain).await {
            tracing::warn!(site = %domain, error = %e, "site upstream TLS not removed");
        }
        self.forget_upstream_tls(domain);
        if site.kind == SiteKind::Process {
            self.inner.supervisor.remove(domain).await;
        }
        let dir = self.inner.layout.site_dir(site.id);
        let removed = tokio::task::spawn_blocking(move || layout::remove_any(&dir)).await;
        if let Some(e) = match removed {
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
            Ok(Ok(())) => None,
        } {
            // The rows are gone, so the start-up sweep removes the folder.
            tracing::warn!(site = %domain, error = %e, "site folder not removed");
        }
        tracing::info!(site = %domain, "site deleted");
    }

    /// Makes an earlier release active again: the one named, or else the
    /// newest release older than the active one.
    pub async fn rollback(&self, domain: &str, to: Option<String>) -> Result<Site, ApiError> {
        let site = self.site(domain).await?;
        self.refuse_if_isolated(&site.domain)?;
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
