//! The `[bench]` section of the configuration: request bounds, timeouts and the targets.
//!
//! The section comes from [`crate::config::Config`] (built-in `config.toml` with the user's file
//! merged over it, key by key); this module gives it its typed, strictly checked shape.

use super::target::Targets;
use crate::config::{Config, ConfigError, BUILTIN_NAME};
use serde::Deserialize;
use std::time::Duration;

/// Settings of `bench`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    pub targets: Targets,
}

impl Default for BenchConfig {
    /// The values shipped in config.toml (a test keeps the two equal).
    fn default() -> Self {
        BenchConfig {
            max_tokens: 96,
            ready_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(120),
            sample_interval: Duration::from_millis(100),
            targets: Targets::default(),
        }
    }
}

/// Why the `[bench]` settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{origin}: [bench] {message} (see the [bench] section of the shipped config.toml)")]
    Invalid { origin: String, message: String },
}

/// The typed `[bench]` section of a loaded configuration.
pub fn from_config(config: &Config) -> Result<BenchConfig, SettingsError> {
    let origin = config
        .source
        .as_ref()
        .map_or(BUILTIN_NAME.to_string(), |p| p.display().to_string());
    BenchConfig::deserialize(toml::Value::Table(config.bench.clone())).map_err(|e| {
        SettingsError::Invalid {
            origin,
            message: e.to_string().trim().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn with_user(text: &str) -> Result<BenchConfig, SettingsError> {
        let config = Config::from_layers(Some((Path::new("mine.toml"), text)))?;
        from_config(&config)
    }

    #[test]
    fn shipped_config_equals_default() {
        let builtin = Config::builtin().unwrap();
        assert_eq!(from_config(&builtin).unwrap(), BenchConfig::default());
        // The shipped section spells out every target (no silent defaults).
        let targets = builtin.bench["targets"].as_table().unwrap();
        assert_eq!(targets.len(), 7);
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
        let config = Config::from_layers(Some((
            Path::new("mine.toml"),
            "[bench.targets]\ncorectness_min = 0.5\n",
        )))
        .unwrap();
        let mut config = config;
        config.source = Some("mine.toml".into());
        let msg = from_config(&config).unwrap_err().to_string();
        assert!(
            msg.contains("corectness_min") && msg.contains("mine.toml"),
            "{msg}"
        );

        let msg = with_user("[bench]\nready_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("[bench]") && msg.contains("ready_timeout"),
            "{msg}"
        );
    }
}
