//! The route table: which domain is served how. The hub builds it from
//! the store and pushes changes; the request path only ever reads a
//! snapshot, so a swap is atomic and never blocks a request.

use crate::host;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// How one domain is served.
#[derive(Debug, Clone)]
pub enum Target {
    /// Files from a release folder.
    Static { root: PathBuf, spa: bool },
    /// Requests forwarded to an approved upstream.
    Proxy { upstream: Upstream },
    /// Requests forwarded to the site's app process, woken on demand.
    App,
    /// Requests spread over a pool of upstreams.
    Balancer { pool: Arc<crate::balancer::Pool> },
    /// The site is taken offline (an incident isolated it): every request
    /// gets 503 and a maintenance page; nothing behind it is reached.
    Maintenance,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// The site's domain as stored, used as the metrics and log label.
    pub site: Arc<str>,
    pub target: Target,
}

/// An immutable snapshot of all routes.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    exact: HashMap<String, Arc<Route>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    pub fn insert(&mut self, domain: &str, route: Route) {
        let route = Arc::new(route);
        match domain.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_owned(), route),
            None => self.exact.insert(domain.to_owned(), route),
        };
    }

    pub fn remove(&mut self, domain: &str) {
        match domain.strip_prefix("*.") {
            Some(suffix) => self.wildcard.remove(suffix),
            None => self.exact.remove(domain),
        };
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True iff `host` is itself a site's domain; a name that only a
    /// wildcard site covers is not. On-demand certificate orders use it,
    /// so random names under a wildcard never create orders.
    pub fn is_exact(&self, host: &str) -> bool {
        self.exact.contains_key(host)
    }

    /// Finds the route for an already normalised host: an exact name wins,
    /// then the most specific wildcard. `*.example.com` matches any name
    /// under `example.com` but not `example.com` itself.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(host) {
            return Some(route);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        host::parent_suffixes(host).find_map(|suffix| self.wildcard.get(suffix))
    }
}

/// The shared, swappable handle to the current [`RouteTable`].
#[derive(Debug, Clone, Default)]
pub struct Routes {
    current: Arc<ArcSwap<RouteTable>>,
}

impl Routes {
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// Replaces the whole table at once.
    pub fn replace(&self, table: RouteTable) {
        self.current.store(Arc::new(table));
    }

    /// Copies the table with one change applied and swaps it in. Writers
    /// are the hub's deploy steps, which are rare next to reads.
    pub fn update(&self, change: impl Fn(&mut RouteTable)) {
        self.current.rcu(|old| {
            let mut next = RouteTable::clone(old);
            change(&mut next);
            next
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Route {
        Route {
            site: name.into(),
            target: Target::Static {
                root: name.into(),
                spa: false,
            },
        }
    }

    fn site_of(table: &RouteTable, host: &str) -> Option<String> {
        table.lookup(host).map(|r| r.site.to_string())
    }

    #[test]
    fn exact_names_win_over_wildcards() {
        let mut table = RouteTable::default();
        table.insert("*.example.com", route("wild"));
        table.insert("api.example.com", route("api"));
        assert_eq!(site_of(&table, "api.example.com").as_deref(), Some("api"));
        assert_eq!(site_of(&table, "www.example.com").as_deref(), Some("wild"));
        assert_eq!(site_of(&table, "a.b.example.com").as_deref(), Some("wild"));
        assert_eq!(site_of(&table, "example.com"), None);
        assert_eq!(site_of(&table, "example.org"), None);
    }

    #[test]
    fn the_most_specific_wildcard_wins() {
        let mut table = RouteTable::default();
        table.insert("*.example.com", route("outer"));
        table.insert("*.b.example.com", route("inner"));
        assert_eq!(site_of(&table, "a.b.example.com").as_deref(), Some("inner"));
        assert_eq!(site_of(&table, "c.example.com").as_deref(), Some("outer"));
    }

    #[test]
    fn an_update_is_seen_by_new_snapshots_only() {
        let routes = Routes::default();
        let before = routes.snapshot();
        routes.update(|t| t.insert("a.test", route("a")));
        assert!(before.lookup("a.test").is_none());
        assert!(routes.snapshot().lookup("a.test").is_some());
        routes.update(|t| t.remove("a.test"));
        assert!(routes.snapshot().lookup("a.test").is_none());
    }
}
