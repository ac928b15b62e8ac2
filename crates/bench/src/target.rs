//! The success criteria (the product's `[slo]` and `[bench.targets]` of `bench.toml`) and their
//! pass/fail evaluation.

use sentinel_supervisor::metrics::slo::Slo;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Targets a profile must meet to be "invisible enough and correct enough": the product's
/// `[slo]` on system CPU and the bench's own (`[bench.targets]` of `bench.toml`). Flattened in
/// `report.json`, one object with every target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Targets {
    #[serde(flatten)]
    pub slo: Slo,
    #[serde(flatten)]
    pub bench: BenchTargets,
}

/// The targets that only the bench judges. The defaults are `bench.toml`'s `[bench.targets]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchTargets {
    /// Peak resident memory of the backend process tree, in GB (10^9 bytes).
    pub peak_rss_max_gb: f64,
    /// 95th percentile of request latency.
    #[serde(with = "humantime_serde")]
    pub latency_p95_max: Duration,
    /// Latency p99 / p50 must stay strictly below this.
    pub latency_p99_over_p50_below: f64,
    /// Mean task score, 0..=1.
    pub correctness_min: f64,
    /// `bench --foreground`: the work unit's p50 beside the model over alone.
    pub foreground_work_p50_ratio_max: f64,
    /// `bench --foreground`: the work unit's p99 beside the model over alone.
    pub foreground_work_p99_ratio_max: f64,
    /// `bench --foreground`: how much later than alone (p99) a 1 ms sleep may wake.
    #[serde(with = "humantime_serde")]
    pub foreground_wake_p99_over_alone_max: Duration,
}

/// The figures of one run that the targets judge.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    pub idle_cpu_mean: Option<f64>,
    pub active_cpu_mean: f64,
    pub active_cpu_p99: f64,
    pub peak_rss_bytes: Option<u64>,
    pub latency_p95: Duration,
    pub latency_p99_over_p50: Option<f64>,
    pub correctness: f64,
}

/// One target's outcome. A figure that could not be measured fails its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Stable key, e.g. `active_cpu_p99`.
    pub name: &'static str,
    /// Human-readable criterion, e.g. `<= 50.0 %`.
    pub criterion: String,
    /// The measured figure (`null` when unknown).
    pub value: Option<f64>,
    /// The measured figure formatted with its unit.
    pub shown: String,
    pub pass: bool,
}

impl Targets {
    /// The shipped targets: the built-in `[slo]` and `bench.toml`.
    #[cfg(test)]
    pub(crate) fn shipped() -> Targets {
        Targets {
            slo: sentinel_supervisor::config::Config::builtin().unwrap().slo,
            bench: crate::settings::BenchConfig::from_layers(None)
                .unwrap()
                .targets,
        }
    }

    /// Judges `m` against every target, in a fixed order.
    pub fn evaluate(&self, m: &Measured) -> Vec<Check> {
        let at_most = |name, value: Option<f64>, limit: f64, unit: &str, digits: usize| Check {
            name,
            criterion: format!("<= {limit:.digits$}{unit}"),
            value,
            shown: value.map_or("n/a".into(), |v| format!("{v:.digits$}{unit}")),
            pass: value.is_some_and(|v| v <= limit),
        };
        let gb = m.peak_rss_bytes.map(|b| b as f64 / 1e9);
        let ratio = m.latency_p99_over_p50;
        vec![
            at_most(
                "idle_cpu_mean",
                m.idle_cpu_mean,
                self.slo.idle_cpu_max_percent,
                " %",
                1,
            ),
            at_most(
                "active_cpu_mean",
                Some(m.active_cpu_mean),
                self.slo.active_cpu_mean_max_percent,
                " %",
                1,
            ),
            at_most(
                "active_cpu_p99",
                Some(m.active_cpu_p99),
                self.slo.active_cpu_p99_max_percent,
                " %",
                1,
            ),
            at_most("peak_rss", gb, self.bench.peak_rss_max_gb, " GB", 2),
            at_most(
                "latency_p95",
                Some(m.latency_p95.as_secs_f64()),
                self.bench.latency_p95_max.as_secs_f64(),
                " s",
                2,
            ),
            Check {
                name: "latency_p99_over_p50",
                criterion: format!("< {:.2}", self.bench.latency_p99_over_p50_below),
                value: ratio,
                shown: ratio.map_or("n/a".into(), |r| format!("{r:.2}")),
                pass: ratio.is_some_and(|r| r < self.bench.latency_p99_over_p50_below),
            },
            Check {
                name: "correctness",
                criterion: format!(">= {:.2}", self.bench.correctness_min),
                value: Some(m.correctness),
                shown: format!("{:.2}", m.correctness),
                pass: m.correctness >= self.bench.correctness_min,
            },
        ]
    }
}

impl Targets {
    /// Judges a profile's foreground figures (see `foreground::compare`): the work unit's p50
    /// and p99 ratios against alone and the wake-up lateness p99 over alone, in milliseconds.
    pub fn evaluate_foreground(
        &self,
        work_p50_ratio: Option<f64>,
        work_p99_ratio: Option<f64>,
        wake_p99_over_alone_ms: Option<f64>,
    ) -> Vec<Check> {
        let at_most = |name, value: Option<f64>, limit: f64, prefix: &str, unit: &str, digits| {
            Check {
                name,
                criterion: format!("<= {prefix}{limit:.digits$}{unit}"),
                value,
                shown: value.map_or("n/a".into(), |v| format!("{prefix}{v:.digits$}{unit}")),
                // A hair of rounding slack: 4.08 / 4.0 is 1.0200000000000002.
                pass: value.is_some_and(|v| v <= limit + 1e-9),
            }
        };
        let wake_limit = self.bench.foreground_wake_p99_over_alone_max.as_secs_f64() * 1e3;
        vec![
            at_most(
                "foreground_work_p50_ratio",
                work_p50_ratio,
                self.bench.foreground_work_p50_ratio_max,
                "",
                " x alone",
                2,
            ),
            at_most(
                "foreground_work_p99_ratio",
                work_p99_ratio,
                self.bench.foreground_work_p99_ratio_max,
                "",
                " x alone",
                2,
            ),
            at_most(
                "foreground_wake_p99_over_alone",
                wake_p99_over_alone_ms,
                wake_limit,
                "alone + ",
                " ms",
                2,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Measured {
        Measured {
            idle_cpu_mean: Some(0.5),
            active_cpu_mean: 20.0,
            active_cpu_p99: 50.0,
            peak_rss_bytes: Some(1_000_000_000),
            latency_p95: Duration::from_millis(2500),
            latency_p99_over_p50: Some(1.5),
            correctness: 0.8,
        }
    }

    #[test]
    fn boundaries_pass_and_each_miss_fails_alone() {
        let t = Targets::shipped();
        let checks = t.evaluate(&good());
        assert_eq!(checks.len(), 7);
        assert!(checks.iter().all(|c| c.pass), "{checks:?}");
        assert_eq!(checks[2].criterion, "<= 50.0 %");
        assert_eq!(checks[3].shown, "1.00 GB");

        let misses: Vec<(&str, Measured)> = vec![
            (
                "idle_cpu_mean",
                Measured {
                    idle_cpu_mean: Some(2.1),
                    ..good()
                },
            ),
            (
                "idle_cpu_mean",
                Measured {
                    idle_cpu_mean: None,
                    ..good()
                },
            ),
            (
                "active_cpu_mean",
                Measured {
                    active_cpu_mean: 35.5,
                    ..good()
                },
            ),
            (
                "active_cpu_p99",
                Measured {
                    active_cpu_p99: 50.1,
                    ..good()
                },
            ),
            (
                "peak_rss",
                Measured {
                    peak_rss_bytes: Some(6_000_000_001),
                    ..good()
                },
            ),
            (
                "latency_p95",
                Measured {
                    latency_p95: Duration::from_millis(2501),
                    ..good()
                },
            ),
            (
                "latency_p99_over_p50",
                Measured {
                    latency_p99_over_p50: Some(2.0),
                    ..good()
                },
            ),
            (
                "correctness",
                Measured {
                    correctness: 0.79,
                    ..good()
                },
            ),
        ];
        for (name, m) in misses {
            let failed: Vec<&str> = t
                .evaluate(&m)
                .iter()
                .filter(|c| !c.pass)
                .map(|c| c.name)
                .collect();
            assert_eq!(failed, vec![name]);
        }
    }
}
