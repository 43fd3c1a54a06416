//! The edge's Prometheus metrics. The hub registers them in its registry
//! and serves them on the API socket at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The site's domain, or `-` when no route matched.
    pub site: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: String,
}

#[derive(Clone, Debug)]
pub struct EdgeMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from request received to response headers sent.
    pub latency: Histogram,
    pub upstream_errors: Family<SiteLabel, Counter>,
    pub open_connections: Gauge,
}

impl EdgeMetrics {
    pub fn new(registry: &mut Registry) -> EdgeMetrics {
        let metrics = EdgeMetrics {
            requests: Family::default(),
            // 100 µs to about 3.3 s.
            latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            upstream_errors: Family::default(),
            open_connections: Gauge::default(),
        };
        registry.register(
            "spinforge_edge_requests",
            "Requests served by the edge, by site and status",
            metrics.requests.clone(),
        );
        registry.register(
            "spinforge_edge_request_duration_seconds",
            "Time from request to response headers",
            metrics.latency.clone(),
        );
        registry.register(
            "spinforge_edge_upstream_errors",
            "Proxy requests that failed to reach or hear from the upstream",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "spinforge_edge_open_connections",
            "Client connections currently open",
            metrics.open_connections.clone(),
        );
        metrics
    }
}
