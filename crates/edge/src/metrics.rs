//! The edge's Prometheus metrics. The hub registers them in its registry
//! and serves them on the API socket at `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock};

/// A site's domain as a label value. It shares the route's string, so
/// counting a request copies no text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SiteName(pub Arc<str>);

impl SiteName {
    /// The label of requests no route matched: `-`.
    pub fn none() -> SiteName {
        static NONE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));
        SiteName(NONE.clone())
    }
}

impl EncodeLabelValue for SiteName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The site's domain, or `-` when no route matched.
    pub site: SiteName,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: SiteName,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_labels_encode_as_the_plain_domain() {
        let mut registry = Registry::default();
        let metrics = EdgeMetrics::new(&mut registry);
        let site = |name: &str| SiteName(Arc::from(name));
        for (label, status) in [(site("a.example"), 200), (SiteName::none(), 404)] {
            let labels = RequestLabels {
                site: label,
                status,
            };
            metrics.requests.get_or_create(&labels).inc();
        }
        // A label made from another Arc with the same text is the same
        // series.
        let again = metrics
            .requests
            .get_or_create(&RequestLabels {
                site: site("a.example"),
                status: 200,
            })
            .get();
        assert_eq!(again, 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"spinforge_edge_requests_total{site="a.example",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"spinforge_edge_requests_total{site="-",status="404"} 1"#),
            "{text}"
        );
    }
}
