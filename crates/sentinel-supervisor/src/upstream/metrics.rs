//! The central tier's event metrics, registered in the supervisor's one registry
//! ([`crate::metrics::Metrics`]): spills by reason and upstream, failed tries, and each
//! upstream's request duration and time to first token. The breakers' states are readings,
//! taken at each scrape from `/status` (`crate::metrics::fleet`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Upper bounds of the upstream duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds of the upstream time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpillLabels {
    reason: &'static str,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// Cheap to clone: every clone counts into the same families.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamMetrics {
    spills: Family<SpillLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<UpstreamLabel, Histogram, Buckets>,
    ttft: Family<UpstreamLabel, Histogram, Buckets>,
}

impl Default for UpstreamMetrics {
    fn default() -> UpstreamMetrics {
        UpstreamMetrics {
            spills: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(Buckets(&DURATION_BUCKETS)),
            ttft: Family::new_with_constructor(Buckets(&TTFT_BUCKETS)),
        }
    }
}

impl UpstreamMetrics {
    /// The families, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> UpstreamMetrics {
        let m = UpstreamMetrics::default();
        registry.register(
            "sentinel_spills",
            "Requests served by an upstream of the central tier, by why they left the host (unavailable, late, local_failed) and upstream",
            m.spills.clone(),
        );
        registry.register(
            "sentinel_upstream_failures",
            "Tries at an upstream that failed before its answer (connect, tls, timeout, rate_limited, server_error, other), by upstream",
            m.failures.clone(),
        );
        for (name, help, family) in [
            (
                "sentinel_upstream_request_duration_seconds",
                "Time from sending a request to an upstream to the end of its answer, by upstream",
                &m.duration,
            ),
            (
                "sentinel_upstream_time_to_first_token_seconds",
                "Time from sending a streamed request to an upstream to its first body bytes, by upstream",
                &m.ttft,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        m
    }

    pub(crate) fn spilled(&self, reason: super::SpillReason, upstream: &str) {
        self.spills
            .get_or_create(&SpillLabels {
                reason: reason.as_str(),
                upstream: upstream.to_string(),
            })
            .inc();
    }

    pub(crate) fn failed(&self, upstream: &str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                upstream: upstream.to_string(),
                reason,
            })
            .inc();
    }

    pub(crate) fn first_token(&self, upstream: &str, after: Duration) {
        observe(&self.ttft, upstream, after);
    }

    pub(crate) fn finished(&self, upstream: &str, after: Duration) {
        observe(&self.duration, upstream, after);
    }
}

/// One observation of `upstream` in a per-upstream histogram.
fn observe(family: &Family<UpstreamLabel, Histogram, Buckets>, upstream: &str, after: Duration) {
    family
        .get_or_create(&UpstreamLabel {
            upstream: upstream.to_string(),
        })
        .observe(after.as_secs_f64());
}
