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

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn host_info_carries_the_labels_and_each_breaker_one_state() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("site".to_string(), "par1".to_string()),
            ("group".to_string(), "soc".to_string()),
        ]
        .into();
        let targets = crate::config::Config::builtin().unwrap().slo;
        let m =
            crate::metrics::Metrics::new(&targets, 2, Default::default()).with_host_labels(&labels);
        let mut report = crate::status::example();
        report.backend = None;
        let text = m.render(&report, None).await;
        let info = text
            .lines()
            .find(|l| l.starts_with("sentinel_host_info{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            info.contains("group=\"soc\"") && info.contains("site=\"par1\""),
            "{info}"
        );
        assert!(
            info.contains("version=\"") && info.ends_with(" 1"),
            "{info}"
        );
        let sample = |s: &str| crate::metrics::tests::sample(&text, s);
        assert_eq!(
            sample("sentinel_upstream_breaker_state{upstream=\"central\",state=\"open\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample("sentinel_upstream_breaker_state{upstream=\"central\",state=\"closed\"}"),
            Some(0.0)
        );
        if let Ok(out) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(text.as_bytes())?;
                child.wait_with_output()
            })
        {
            let said = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "promtool: {said}");
        }
    }
}
