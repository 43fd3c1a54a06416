//! The hub: the control plane. It owns the REST API and the deploy
//! pipeline (bundle → release → route), and pushes route changes to the
//! edge. It never serves site traffic itself.
#![forbid(unsafe_code)]

pub mod access;
pub mod acme;
pub mod api;
pub mod apps;
pub mod audit_api;
pub mod bundle;
pub mod certs;
pub mod certs_api;
mod deploy;
pub mod domain;
pub mod error;
pub mod identity_api;
pub mod incident_api;
mod layout;
pub mod oidc_api;
pub mod privacy_api;
pub mod rate_api;
pub mod sandbox_api;
pub mod secrets_api;
pub mod upstream_tls_api;
// Incident containment's rotation of a site's secrets (branch rotator).
pub mod secret_rotation;
pub mod shield_api;
pub mod sites;

pub use api::router;
pub use layout::Layout;

use edge::{Route, RouteTable, Routes, Target, Upstream, UpstreamPolicy};
use identity::Identity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use store::{RouteRecord, SiteKind, Store};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Releases kept per site for rollback, the active one included.
    pub keep_releases: usize,
    pub bundle: bundle::BundleLimits,
    /// Largest compressed upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Admit `localhost` and `*.localhost` as site domains.
    pub allow_localhost: bool,
    /// Where proxy sites may point.
    pub upstream_policy: UpstreamPolicy,
    /// Refuse bundles whose lockfiles pin vulnerable versions (issue #11);
    /// `None`: no scan at deploy.
    pub supply_chain: Option<harden::scan::DeployPolicy>,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            keep_releases: 5,
            bundle: bundle::BundleLimits::default(),
            max_upload_bytes: 512 * 1024 * 1024,
            allow_localhost: true,
            upstream_policy: UpstreamPolicy::default(),
            supply_chain: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeployLabels {
    result: &'static str,
}

/// Shared state of the control plane; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    store: Arc<dyn Store>,
    identity: Identity,
    routes: Routes,
    layout: Layout,
    config: HubConfig,
    supervisor: spinlet::Supervisor,
    registry: Arc<Registry>,
    deploys: Family<DeployLabels, Counter>,
    /// One lock per site, held while its releases or route change, so a
    /// rollback can never race a prune of the release it activates.
    site_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The one-time token that may create the first admin, while no user
    /// exists.
    setup_token: Mutex<Option<String>>,
    /// Held while a user's role, state or existence changes.
    user_changes: tokio::sync::Mutex<()>,
    /// Sites an incident isolated, with the incident's id (see
    /// incident_api.rs).
    isolated: Mutex<HashMap<String, i64>>,
    /// The HTTPS listener's certificates, once `serve` attaches them: a
    /// deleted site's certificate must go with it.
    tls: Mutex<Option<edge::tls::Tls>>,
    /// The edge's per-site upstream TLS, once `serve` attaches it: a
    /// deleted site's client certificate must go with it.
    upstream_tls: Mutex<Option<edge::proxy::SiteTls>>,
    /// Held from a non-admin's domain claim check to its insert, so two
    /// creates of overlapping names cannot both pass (see sites.rs).
    claims: tokio::sync::Mutex<()>,
}

impl Hub {
    /// Prepares the hub: clears what an interrupted deploy left behind,
    /// tells the supervisor what each process site runs, and loads every
    /// route into the edge's table.
    pub async fn start(
        store: Arc<dyn Store>,
        identity: Identity,
        routes: Routes,
        layout: Layout,
        config: HubConfig,
        supervisor: spinlet::Supervisor,
        mut registry: Registry,
    ) -> Result<Hub, error::ApiError> {
        let deploys = Family::<DeployLabels, Counter>::default();
        registry.register("spinforge_deploys", "Deploys by result", deploys.clone());
        layout.prepare().map_err(error::ApiError::internal)?;
        let known = store.all_release_ids().await?;
        layout.sweep(&known).map_err(error::ApiError::internal)?;

        let hub = Hub {
            inner: Arc::new(HubInner {
                store,
                identity,
                routes,
                layout,
                config,
                supervisor,
                registry: Arc::new(registry),
                deploys,
                site_locks: Mutex::new(HashMap::new()),
                setup_token: Mutex::new(None),
                user_changes: tokio::sync::Mutex::new(()),
                isolated: Mutex::new(HashMap::new()),
                tls: Mutex::new(None),
                upstream_tls: Mutex::new(None),
                claims: tokio::sync::Mutex::new(()),
            }),
        };
        let sites = hub.inner.store.list_sites().await?;
        hub.register_apps(&sites).await;
        hub.reload_routes().await?;
        Ok(hub)
    }

    /// Lets site deletion remove the site's certificate from the HTTPS
    /// listener too.
    pub fn attach_tls(&self, tls: edge::tls::Tls) {
        *self
            .inner
            .tls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tls);
    }

    /// Lets site deletion remove the site's upstream TLS from the edge.
    pub fn attach_upstream_tls(&self, sites: edge::proxy::SiteTls) {
        *self
            .inner
            .upstream_tls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sites);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Rebuilds the edge's whole route table from the store.
    pub async fn reload_routes(&self) -> Result<usize, error::ApiError> {
        let mut table = RouteTable::default();
        for record in self.inner.store.list_routes().await? {
            match self.edge_route(&record) {
                Some(route) => table.insert(&record.domain, route),
                None => tracing::warn!(site = %record.domain, "stored route is unusable; skipped"),
            }
        }
        let count = table.len();
        self.inner.routes.replace(table);
        Ok(count)
    }

    /// Creates a fresh one-time setup token if no user exists yet, and
    /// returns it so the caller can print it once.
    pub async fn issue_setup_token(&self) -> Result<Option<String>, error::ApiError> {
        if self.inner.store.count_users().await? > 0 {
            return Ok(None);
        }
        let token = format!("sfs_{}", uuid::Uuid::new_v4().simple());
        *self.lock_setup() = Some(token.clone());
        Ok(Some(token))
    }

    pub(crate) async fn lock_user_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.user_changes.lock().await
    }

    pub(crate) fn lock_setup(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner
            .setup_token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn edge_route(&self, record: &RouteRecord) -> Option<Route> {
        if self.isolated_by(&record.domain).is_some() {
            return Some(Route {
                site: record.domain.as_str().into(),
                target: Target::Maintenance,
            });
        }
        let target = match record.kind {
            SiteKind::Static => {
                let dir = self
                    .inner
                    .layout
                    .release_dir(record.site_id, record.release_id.as_ref()?);
                // Resolved once here, so the edge need not on every request.
                let root = match std::fs::canonicalize(&dir) {
                    Ok(root) => root,
                    Err(e) => {
                        tracing::warn!(site = %record.domain, error = %e, "release folder missing");
                        return None;
                    }
                };
                Target::Static {
                    root,
                    spa: record.spa,
                }
            }
            SiteKind::Proxy => Target::Proxy {
                upstream: Upstream::parse(record.upstream.as_deref()?).ok()?,
            },
            SiteKind::Process => {
                record.release_id.as_ref()?;
                Target::App
            }
            SiteKind::Balancer => {
                let config = record.balancer.as_ref()?;
                let upstreams: Option<Vec<Upstream>> = config
                    .upstreams
                    .iter()
                    .map(|u| Upstream::parse(u).ok())
                    .collect();
                let strategy = match config.strategy {
                    store::Strategy::RoundRobin => edge::balancer::Strategy::RoundRobin,
                    store::Strategy::LeastConn => edge::balancer::Strategy::LeastConn,
                };
                let check = edge::balancer::HealthCheck {
                    path: config.health_path.clone(),
                    interval: std::time::Duration::from_secs(config.health_interval_secs),
                    timeout: std::time::Duration::from_secs(2),
                };
                let policy = Arc::new(self.inner.config.upstream_policy.clone());
                let pool = edge::balancer::Pool::start(
                    &record.domain,
                    upstreams?,
                    strategy,
                    check,
                    policy,
                );
                Target::Balancer { pool }
            }
        };
        Some(Route {
            site: record.domain.as_str().into(),
            target,
        })
    }

    async fn site_lock(&self, domain: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .inner
                .site_locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(domain.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Pushes the store's current route for one domain to the edge.
    async fn sync_edge(&self, domain: &str) -> Result<(), error::ApiError> {
        // One row, not the whole table: a deploy must not cost more with
        // every site there is.
        let record = self.inner.store.route(domain).await?;
        let route = record.as_ref().and_then(|r| self.edge_route(r));
        self.inner.routes.update(|table| match &route {
            Some(route) => table.insert(domain, route.clone()),
            None => table.remove(domain),
        });
        Ok(())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
