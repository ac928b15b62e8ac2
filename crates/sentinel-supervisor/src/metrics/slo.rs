//! `[slo]`: the invisibility SLO's thresholds, the shares of the machine that system CPU should
//! stay under while the model is idle and while it serves. `/metrics` counts every 100 ms window
//! against them (the buckets of `sentinel_slo_system_cpu_window_ratio`, see [`super::sampler`])
//! and the alert rules in `deploy/` compare against the same buckets; `sentinel-bench` judges
//! its measured runs against them as well, so a live alert and a benchmark verdict use one
//! definition.

use serde::{Deserialize, Serialize};

/// The SLO thresholds, in percent of the whole machine. The defaults are the shipped
/// config.toml's `[slo]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Mean system CPU while idle.
    pub idle_cpu_max_percent: f64,
    /// Mean system CPU while serving requests.
    pub active_cpu_mean_max_percent: f64,
    /// 99th percentile of system CPU while serving requests.
    pub active_cpu_p99_max_percent: f64,
}

impl Slo {
    /// Each threshold with its key under `[slo]`.
    pub(crate) fn thresholds(&self) -> [(&'static str, f64); 3] {
        [
            ("idle_cpu_max_percent", self.idle_cpu_max_percent),
            (
                "active_cpu_mean_max_percent",
                self.active_cpu_mean_max_percent,
            ),
            (
                "active_cpu_p99_max_percent",
                self.active_cpu_p99_max_percent,
            ),
        ]
    }

    /// The first threshold that is not a share of the machine (above 0, at most 100 %), as
    /// its key and why.
    pub(crate) fn invalid(&self) -> Option<(&'static str, String)> {
        self.thresholds().into_iter().find_map(|(key, percent)| {
            (!(percent > 0.0 && percent <= 100.0)).then(|| {
                (
                    key,
                    format!("{percent} is not a share of the machine (use 0 < percent <= 100)"),
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shares_of_the_machine_are_valid() {
        let slo = crate::config::Config::builtin().unwrap().slo;
        assert_eq!(slo.invalid(), None);
        for bad in [0.0, -1.0, 100.5, f64::NAN] {
            let slo = Slo {
                active_cpu_mean_max_percent: bad,
                ..slo.clone()
            };
            let (key, why) = slo.invalid().unwrap();
            assert_eq!(key, "active_cpu_mean_max_percent");
            assert!(why.contains("0 < percent <= 100"), "{why}");
        }
    }
}
