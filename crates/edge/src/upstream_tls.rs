//! Per-site TLS towards `https://` upstreams: which client configuration
//! (trusted CAs, client certificate) a proxy site's connections use.
//!
//! The hub pushes each site's configuration here; the proxy asks
//! [`SiteUpstreamTls::choose`] once per request and gets the site's own
//! connection pool, built on first use and kept until the setting
//! changes. Sites without an entry use the proxy's default pool (the
//! serve configuration's `proxy.upstream_*`, or the system's roots).
//! There is no way to turn verification off here.
//!
//! A site's setting replaces the global one for it as a whole (its CA
//! plus the system's roots, its client certificate or none); it does not
//! merge with the global `upstream_ca_file`.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// One site's upstream TLS: its configuration, the version it was made
/// from, and the pool built from it on first use.
pub struct SiteTlsEntry<C> {
    config: Arc<rustls::ClientConfig>,
    /// The hub's version of the setting (its update time); an equal
    /// version keeps the pool.
    version: i64,
    client: OnceLock<C>,
}

impl<C> SiteTlsEntry<C> {
    /// The site's configuration, for connections outside the pool (a
    /// WebSocket upgrade).
    pub fn config(&self) -> &rustls::ClientConfig {
        &self.config
    }

    /// The site's pool, made by `build` from the configuration the first
    /// time it is asked for. Later calls never build again.
    pub fn client(&self, build: impl FnOnce(rustls::ClientConfig) -> C) -> &C {
        self.client
            .get_or_init(|| build(rustls::ClientConfig::clone(&self.config)))
    }
}

type Map<C> = HashMap<Arc<str>, Arc<SiteTlsEntry<C>>>;

/// The shared, swappable map of site → upstream TLS. Cloning shares it.
/// `C` is the proxy's pooled client type.
pub struct SiteUpstreamTls<C> {
    sites: Arc<ArcSwap<Map<C>>>,
}

impl<C> Clone for SiteUpstreamTls<C> {
    fn clone(&self) -> Self {
        SiteUpstreamTls {
            sites: self.sites.clone(),
        }
    }
}

impl<C> Default for SiteUpstreamTls<C> {
    fn default() -> Self {
        SiteUpstreamTls {
            sites: Arc::new(ArcSwap::from_pointee(HashMap::new())),
        }
    }
}

impl<C> std::fmt::Debug for SiteUpstreamTls<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sites = self.sites.load();
        let mut names: Vec<&str> = sites.keys().map(|k| &**k).collect();
        names.sort_unstable();
        f.debug_struct("SiteUpstreamTls")
            .field("sites", &names)
            .finish()
    }
}

impl<C> SiteUpstreamTls<C> {
    /// Gives `site` its own configuration. The same `version` as the
    /// current entry keeps the entry and its pool; another one replaces
    /// both (requests in flight finish on the old pool).
    pub fn set(&self, site: &str, config: rustls::ClientConfig, version: i64) {
        let config = Arc::new(config);
        self.sites.rcu(|old| {
            let mut next = Map::clone(old);
            let keep = next.get(site).is_some_and(|e| e.version == version);
            if !keep {
                let entry = SiteTlsEntry {
                    config: config.clone(),
                    version,
                    client: OnceLock::new(),
                };
                next.insert(Arc::from(site), Arc::new(entry));
            }
            next
        });
    }

    /// Sends `site` back to the default pool.
    pub fn clear(&self, site: &str) {
        self.sites.rcu(|old| {
            let mut next = Map::clone(old);
            next.remove(site);
            next
        });
    }

    /// True iff `site` has its own configuration.
    pub fn has(&self, site: &str) -> bool {
        self.sites.load().contains_key(site)
    }

    /// The site's own entry, or `None` for the default pool. This is the
    /// one place the proxy decides which TLS configuration a route uses.
    pub fn choose(&self, site: &str) -> Option<Arc<SiteTlsEntry<C>>> {
        self.sites.load().get(site).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn config() -> rustls::ClientConfig {
        crate::tls::default_upstream_client_config()
    }

    #[test]
    fn a_pool_is_built_once_per_version_and_only_for_its_site() {
        let sites = SiteUpstreamTls::<usize>::default();
        let builds = AtomicUsize::new(0);
        let build = |_| builds.fetch_add(1, Ordering::SeqCst) + 1;
        sites.set("a.test", config(), 1);

        assert!(sites.choose("b.test").is_none());
        let first = sites.choose("a.test").expect("entry");
        assert_eq!(*first.client(build), 1);
        assert_eq!(*first.client(build), 1);

        // The same version again keeps the pool.
        sites.set("a.test", config(), 1);
        assert_eq!(*sites.choose("a.test").expect("entry").client(build), 1);

        // A new version gets a new one.
        sites.set("a.test", config(), 2);
        assert_eq!(*sites.choose("a.test").expect("entry").client(build), 2);
        assert_eq!(builds.load(Ordering::SeqCst), 2);

        sites.clear("a.test");
        assert!(!sites.has("a.test"));
        assert!(sites.choose("a.test").is_none());
    }
}
