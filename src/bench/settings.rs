//! The `[bench]` section of the configuration: request bounds, timeouts and the targets.
//!
//! Read from the built-in `config.toml`, then from the user's `--config` file when given (its
//! keys override the built-in ones, table by table).

use super::target::Targets;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped configuration, compiled in.
const BUILTIN_CONFIG: &str = include_str!("../../config.toml");

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

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {error} (check --config / SENTINEL_CONFIG)")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message} (fix the syntax at the position shown)")]
    Syntax { origin: String, message: String },
    #[error("{origin}: [bench] {message} (see the [bench] section of the shipped config.toml)")]
    Invalid { origin: String, message: String },
}

/// The `[bench]` settings: built-in defaults overridden by `user_file`.
pub fn load(user_file: Option<&Path>) -> Result<BenchConfig, SettingsError> {
    let mut table = bench_table(BUILTIN_CONFIG, "built-in config.toml")?;
    let mut origin = "built-in config.toml".to_string();
    if let Some(path) = user_file {
        let text = std::fs::read_to_string(path).map_err(|error| SettingsError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        origin = path.display().to_string();
        merge(&mut table, bench_table(&text, &origin)?);
    }
    BenchConfig::deserialize(toml::Value::Table(table)).map_err(|e| SettingsError::Invalid {
        origin,
        message: e.to_string().trim().to_string(),
    })
}

fn bench_table(text: &str, origin: &str) -> Result<toml::Table, SettingsError> {
    let mut doc: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| SettingsError::Syntax {
                origin: origin.to_string(),
                message: e.to_string().trim().to_string(),
            })?;
    match doc.remove("bench") {
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => Err(SettingsError::Invalid {
            origin: origin.to_string(),
            message: "must be a table".into(),
        }),
        None => Ok(toml::Table::new()),
    }
}

/// Overlays `over` on `base`: tables merge key by key, other values replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_default() {
        assert_eq!(load(None).unwrap(), BenchConfig::default());
        // And the shipped section spells out every target (no silent defaults).
        let table = bench_table(BUILTIN_CONFIG, "x").unwrap();
        let targets = table["targets"].as_table().unwrap();
        assert_eq!(targets.len(), 7);
    }

    #[test]
    fn user_file_overrides_single_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[governor]\nwhatever = 1\n[bench]\nmax_tokens = 32\n[bench.targets]\ncorrectness_min = 0.5\n",
        )
        .unwrap();
        let cfg = load(Some(&path)).unwrap();
        assert_eq!(cfg.max_tokens, 32);
        assert_eq!(cfg.targets.correctness_min, 0.5);
        assert_eq!(cfg.targets.active_cpu_p99_max_percent, 50.0);
        assert_eq!(cfg.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[bench.targets]\ncorectness_min = 0.5\n").unwrap();
        let msg = load(Some(&path)).unwrap_err().to_string();
        assert!(
            msg.contains("corectness_min") && msg.contains("c.toml"),
            "{msg}"
        );

        std::fs::write(&path, "[bench]\nready_timeout = \"soon\"\n").unwrap();
        let msg = load(Some(&path)).unwrap_err().to_string();
        assert!(msg.contains("[bench]"), "{msg}");

        std::fs::write(&path, "[bench\n").unwrap();
        assert!(load(Some(&path))
            .unwrap_err()
            .to_string()
            .contains("not valid TOML"));
        assert!(load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
