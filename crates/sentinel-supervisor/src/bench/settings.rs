//! The `[bench]` section of the configuration: request bounds, timeouts and the targets.
//!
//! It is a field of [`crate::config::Config`] (built-in `config.toml` with the user's file merged
//! over it, key by key), so it is checked, strictly, whenever the configuration loads: a typo in
//! `[bench]` is reported with its file and key by `run` as well as by `bench`.

use super::target::Targets;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Settings of `bench`. Their defaults are the shipped config.toml's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Upper bound on generated tokens per task.
    pub max_tokens: u32,
    /// How long a started supervisor may take to report ready.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// How long one task's request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often system CPU is sampled.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// `bench --foreground`: how long the probes run alone, before any supervisor starts.
    #[serde(with = "humantime_serde")]
    pub foreground_alone: Duration,
    pub targets: Targets,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, BUILTIN};
    use std::path::Path;

    fn with_user(text: &str) -> Result<BenchConfig, ConfigError> {
        Ok(Config::from_layers(Some((Path::new("mine.toml"), text)))?.bench)
    }

    #[test]
    fn shipped_section_spells_out_every_target() {
        let builtin = Config::builtin().unwrap();
        assert_eq!(builtin.bench.max_tokens, 96);
        assert_eq!(builtin.bench.targets.correctness_min, 0.80);
        // The shipped section spells out every target (no silent defaults).
        let shipped: toml::Table = toml::from_str(BUILTIN).unwrap();
        let targets = shipped["bench"]["targets"].as_table().unwrap();
        assert_eq!(targets.len(), 10);
    }

    #[test]
    fn user_file_overrides_single_keys() {
        let cfg = with_user("[bench]\nmax_tokens = 32\n[bench.targets]\ncorrectness_min = 0.5\n")
            .unwrap();
        assert_eq!(cfg.max_tokens, 32);
        assert_eq!(cfg.targets.correctness_min, 0.5);
        assert_eq!(cfg.targets.active_cpu_p99_max_percent, 50.0);
        assert_eq!(cfg.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn bad_sections_say_what_is_wrong() {
        let msg = with_user("[bench.targets]\ncorectness_min = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("corectness_min") && msg.contains("mine.toml"),
            "{msg}"
        );

        let msg = with_user("[bench]\nready_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bench.ready_timeout") && msg.contains("mine.toml"),
            "{msg}"
        );
    }
}
