//! Prometheus metrics of the HTTP layer: latency per verb, requests by outcome, filter
//! rejections by reason code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub verb: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The server's metrics and their registry.
pub struct Metrics {
    pub registry: Registry,
    pub latency: Family<VerbLabels, Histogram>,
    pub requests: Family<OutcomeLabels, Counter>,
    pub rejections: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vramfit");
        let latency = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        let requests = Family::<OutcomeLabels, Counter>::default();
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "request_duration_seconds",
            "Time to answer an extender call, by verb",
            latency.clone(),
        );
        registry.register(
            "requests",
            "Extender calls by verb and outcome (ok, rejected-all, bad-request, error)",
            requests.clone(),
        );
        registry.register(
            "filter_rejections",
            "Nodes rejected by filter, by reason code",
            rejections.clone(),
        );
        Metrics {
            registry,
            latency,
            requests,
            rejections,
        }
    }
}

impl Metrics {
    /// Counts one call's outcome and latency.
    pub fn observe(&self, verb: &str, outcome: &str, seconds: f64) {
        self.latency
            .get_or_create(&VerbLabels { verb: verb.into() })
            .observe(seconds);
        self.requests
            .get_or_create(&OutcomeLabels {
                verb: verb.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
