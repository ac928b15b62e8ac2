//! The fleet's readings at each scrape: `sentinel_host_info{site,group,...,version} 1` from
//! the configuration's `labels`, and each upstream's breaker state from `/status`.

use crate::status::UpstreamReport;
use crate::upstream::breaker::BreakerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

#[derive(Debug)]
pub(crate) struct Fleet {
    pub host_labels: Vec<(String, String)>,
    pub upstreams: Vec<UpstreamReport>,
}

impl Collector for Fleet {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        {
            let mut labels = self.host_labels.clone();
            labels.push(("version".into(), env!("CARGO_PKG_VERSION").into()));
            let mut family = enc.encode_descriptor(
                "sentinel_host_info",
                "This host's fleet labels (`labels` in the configuration) and the supervisor's version; always 1.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        if self.upstreams.is_empty() {
            return Ok(());
        }
        let mut family = enc.encode_descriptor(
            "sentinel_upstream_breaker_state",
            "Each upstream's breaker: 1 for its current state (closed, open, half_open), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for up in &self.upstreams {
            for state in BreakerState::ALL {
                let labels = [("upstream", up.name.as_str()), ("state", state.as_str())];
                ConstGauge::new(i64::from(state == up.breaker))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
