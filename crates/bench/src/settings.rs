//! The bench's own settings (`bench.toml`): request bounds, timeouts and the targets besides the
//! product's `[slo]`. The shipped file is compiled in; `--settings FILE` merges a file of the same
//! shape over it key by key, checked strictly, with the product's layering rules
//! ([`sentinel_supervisor::config::Layers`]): a typo names its key and file.

use crate::target::BenchTargets;
use sentinel_supervisor::config::{ConfigError, Layers};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The shipped settings, compiled in.
pub const BUILTIN: &str = include_str!("../bench.toml");
/// How the built-in file is named in error messages.
pub const BUILTIN_NAME: &str = "built-in bench.toml";

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read bench settings {path}: {source} (check the path given with --settings)")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The whole file: one `[bench]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    bench: BenchConfig,
}

/// Settings of `bench`. Their defaults are the shipped `bench.toml`'s.
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
    pub targets: BenchTargets,
}

impl BenchConfig {
    /// The shipped settings with `file` (if any) over them.
    pub fn load(file: Option<&Path>) -> Result<BenchConfig, SettingsError> {
        let Some(path) = file else {
            return Ok(Self::from_layers(None)?);
        };
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_layers(Some((path, &text)))?)
    }

    /// The shipped settings with a user layer (its path and text) over them.
    pub fn from_layers(user: Option<(&Path, &str)>) -> Result<BenchConfig, ConfigError> {
        let files: Vec<(&Path, &str)> = user.into_iter().collect();
        let file: File = Layers::parse(BUILTIN_NAME, BUILTIN, &files)?.deserialize()?;
        Ok(file.bench)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_user(text: &str) -> Result<BenchConfig, ConfigError> {
        BenchConfig::from_layers(Some((Path::new("mine.toml"), text)))
    }

    #[test]
    fn shipped_section_spells_out_every_target() {
        let builtin = BenchConfig::from_layers(None).unwrap();
        assert_eq!(builtin.max_tokens, 96);
        assert_eq!(builtin.targets.correctness_min, 0.80);
        // The shipped section spells out every target (no silent defaults); the CPU ones are
        // the product's `[slo]`.
        let shipped: toml::Table = toml::from_str(BUILTIN).unwrap();
        let targets = shipped["bench"]["targets"].as_table().unwrap();
        assert_eq!(targets.len(), 7);
        let slo: toml::Table = toml::from_str(sentinel_supervisor::config::BUILTIN).unwrap();
        assert_eq!(slo["slo"].as_table().unwrap().len(), 3);
    }

    #[test]
    fn user_file_overrides_single_keys() {
        let cfg = with_user("[bench]\nmax_tokens = 32\n[bench.targets]\ncorrectness_min = 0.5\n")
            .unwrap();
        assert_eq!(cfg.max_tokens, 32);
        assert_eq!(cfg.targets.correctness_min, 0.5);
        assert_eq!(cfg.targets.peak_rss_max_gb, 6.0);
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
        // The CPU targets are the product's `[slo]`, not the bench's.
        let msg = with_user("[bench.targets]\nactive_cpu_p99_max_percent = 40.0\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("active_cpu_p99_max_percent"), "{msg}");
    }

    #[test]
    fn a_missing_file_names_the_flag() {
        let err = BenchConfig::load(Some(Path::new("/nonexistent/bench.toml"))).unwrap_err();
        assert!(err.to_string().contains("--settings"), "{err}");
    }
}
