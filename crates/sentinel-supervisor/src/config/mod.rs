//! The configuration: the TOML schema, the built-in defaults (`config.toml`, compiled in), the
//! user's overrides, and validation with errors that name the key and the file.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod layers;
mod validate;

pub use layers::Layers;

use crate::governor::priority::Priority;
use crate::units::{Cores, Share};

/// The shipped defaults, compiled in so the binary works from any directory.
pub const BUILTIN: &str = include_str!("../../config.toml");
/// How the built-in file is named in error messages.
pub(crate) const BUILTIN_NAME: &str = "built-in config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (check the path given with --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: invalid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
    #[error(
        "unknown profile `{name}` (known profiles: {known}); pick one of those or add \
         [profiles.{name}] to your config file"
    )]
    UnknownProfile { name: String, known: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub default_profile: String,
    #[serde(default, with = "empty_path")]
    pub model: Option<PathBuf>,
    #[serde(default)]
    pub model_alias: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub api_keys: Vec<String>,
    pub backend: BackendConfig,
    pub supervisor: SupervisorConfig,
    pub proxy: ProxyConfig,
    pub governor: crate::governor::GovernorConfig,
    /// `[setup]`: the build's CPU cap and jobs (its priority is always idle).
    pub setup: crate::backend::runner::BuildLimits,
    /// Battery, presence and heat (`crate::situation`).
    pub situation: crate::situation::SituationConfig,
    /// `[slo]`: the system CPU thresholds `/metrics` counts windows against.
    pub slo: crate::metrics::slo::Slo,
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// The central tier: OpenAI-compatible endpoints a profile with `spill` may send requests
    /// to (`crate::upstream`).
    #[serde(default)]
    pub upstreams: Vec<crate::upstream::UpstreamConfig>,
    /// What every `[[upstreams]]` entry takes unless it sets its own value.
    pub spill: crate::upstream::SpillDefaults,
    /// Fleet labels (`site`, `group`, ...), exported as `sentinel_host_info{...} 1`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where `/metrics` is also written for node_exporter's textfile collector.
    pub metrics: crate::metrics::textfile::TextfileConfig,
    /// Which file the user's overrides came from (not a TOML key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    #[serde(default, with = "empty_path")]
    pub bin: Option<PathBuf>,
    #[serde(default, with = "empty_path")]
    pub cache_dir: Option<PathBuf>,
    pub ctx_size: u32,
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Prefix files put in the backend's prompt cache after each start (`supervisor::warmup`).
    #[serde(default)]
    pub warm_prefixes: Vec<PathBuf>,
    /// llama-server `--cache-ram`, MiB (a profile may override it).
    pub cache_ram_mib: u32,
    /// The backend's memory target, checked against the estimate at start.
    pub memory_limit: crate::units::ByteSize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub ready_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    pub liveness_failures: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_reset_after: Duration,
    pub crash_loop_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub crash_loop_window: Duration,
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Backend output lines forwarded to the log at once before the rate applies.
    pub backend_log_burst: u32,
    /// Backend output lines forwarded to the log per second after the burst.
    pub backend_log_lines_per_sec: f64,
    /// What to do once the crash-loop breaker trips.
    pub on_crash_loop: OnCrashLoop,
    /// With `on_crash_loop = "retry"`: how long to wait between tries while failed.
    #[serde(with = "humantime_serde")]
    pub failed_retry_interval: Duration,
    /// How often the model and config files are checked for a change while failed.
    #[serde(with = "humantime_serde")]
    pub file_poll_interval: Duration,
    /// How long requests in flight may take to finish on shutdown or on an old backend after
    /// a reload, before they are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How a reload that needs a new backend replaces the running one.
    pub reload_strategy: ReloadStrategy,
    /// How long a backend with a request outstanding may stay silent and idle (see
    /// [`crate::supervisor::liveness`]).
    #[serde(with = "humantime_serde")]
    pub first_token_timeout: Duration,
}

/// `supervisor.on_crash_loop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCrashLoop {
    /// Stay up, report `failed`, and try again every `failed_retry_interval` and as soon as
    /// the model or config file changes.
    Retry,
    /// Exit non-zero, so the service manager's restart policy takes over.
    Exit,
}

/// `supervisor.reload_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadStrategy {
    /// Start the new backend beside the old one, switch once it is ready, drain the old one:
    /// no request waits, but both models are in memory for a while.
    BlueGreen,
    /// Drain and stop the old backend first, then start the new one: one model in memory;
    /// requests wait in the queue (up to `proxy.queue_timeout`) while it loads.
    StopStart,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    pub max_body_bytes: u64,
    pub queue_len: usize,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Cap on generated tokens per request for profiles without their own `max_tokens`.
    pub max_tokens: u32,
    /// From when a connection waits for a request until its head is complete (also the idle
    /// keep-alive limit: hyper starts this clock when it waits for the next request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// From the request head until the whole body has arrived.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), bytes; more gets 431.
    pub max_header_bytes: usize,
    /// Most headers in one request; more gets 431.
    pub max_headers: usize,
    /// Most open client connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Request fields let through beyond the allow-lists of `proxy::validate`.
    #[serde(default)]
    pub extra_fields: Vec<String>,
    /// How long a request that a backend died serving is refused (`proxy::poison`).
    #[serde(with = "humantime_serde")]
    pub poison_ttl: Duration,
    /// Bounds on a request's `grammar` and JSON schemas (`proxy::grammar`).
    pub grammar: crate::proxy::grammar::Limits,
}

/// One `[profiles.NAME]` table, as written (see `profile` for the resolved values).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    pub description: String,
    /// The budget in cores (above 0); `None` = unlimited.
    pub cpus: Option<Cores>,
    /// The budget on battery; 0 pauses (omit: the `invisible` profile's budget, at most `cpus`).
    pub cpus_on_battery: Option<crate::units::CoresOrPause>,
    /// The budget while the user is idle (omit: `cpus` x 2, at most the allowed CPUs).
    pub cpus_when_idle: Option<Cores>,
    pub threads: Option<usize>,
    pub threads_batch: Option<usize>,
    pub priority: Priority,
    pub slots: Option<usize>,
    pub ctx_size: Option<u32>,
    /// Prompt cache, MiB (overrides `backend.cache_ram_mib`).
    pub cache_ram_mib: Option<u32>,
    pub embeddings: bool,
    /// Adaptive mode: keep total system CPU under this share of the machine.
    pub adaptive: Option<Share>,
    /// Cap on generated tokens per request (omit: `proxy.max_tokens`).
    pub max_tokens: Option<u32>,
    pub extra_args: Vec<String>,
    /// How the budget is enforced for this profile (omit: `governor.method`).
    pub method: Option<crate::governor::Method>,
    /// The signal duty-cycle period for this profile (omit: `governor.period`).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub period: Option<Duration>,
    /// Pin the backend to the last CPU of this process's affinity mask when it runs one
    /// thread (`threads` and `threads_batch` both 1).
    pub pin: bool,
    /// Whether requests may carry a GBNF `grammar` (JSON schemas are always measured and let
    /// through within `proxy.grammar`). Default false.
    pub grammar: bool,
    /// When a request may go to the central tier (`[[upstreams]]`); default `never`: no
    /// prompt leaves the host.
    pub spill: crate::upstream::SpillMode,
    /// With `spill = "when_late"`: the latency a request should meet; one the queue would make
    /// later than this goes to the central tier (a client's `X-Sentinel-Deadline` wins).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
}

/// An optional path written as a string, empty for none (`with = "empty_path"`).
pub(crate) mod empty_path {
    use serde::{Deserialize, Serialize};
    use std::path::PathBuf;

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PathBuf>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
    }

    /// The other way round, so the effective configuration prints as it can be written.
    pub(crate) fn serialize<S: serde::Serializer>(
        p: &Option<PathBuf>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => p.serialize(s),
            None => s.serialize_str(""),
        }
    }
}

impl Config {
    /// The built-in defaults alone.
    pub fn builtin() -> Result<Config, ConfigError> {
        Self::from_layers(None)
    }

    /// Loads the defaults and, over them, the user's file (the one given, else the usual
    /// location when it exists), then the drop-in files of [`drop_in_dirs`] in name order.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(explicit, &drop_in_dirs())
    }

    /// [`Config::load`] with the drop-in directories given.
    pub(crate) fn load_with(
        explicit: Option<&Path>,
        drop_in: &[PathBuf],
    ) -> Result<Config, ConfigError> {
        let path = explicit
            .map(Path::to_path_buf)
            .or_else(|| default_user_path().filter(|p| p.is_file()));
        let files: Vec<PathBuf> = path.into_iter().chain(drop_in_files(drop_in)?).collect();
        let mut layers = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            layers.push((path, text));
        }
        let layers: Vec<(&Path, &str)> = layers
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_str()))
            .collect();
        Self::from_files(&layers)
    }

    /// Parses the built-in defaults with an optional user layer on top.
    pub fn from_layers(user: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
        Self::from_files(&user.into_iter().collect::<Vec<_>>())
    }

    /// Parses the built-in defaults with `layers` merged over them in order (the main file,
    /// then the drop-ins); an error names the last file that set the key.
    pub(crate) fn from_files(layers: &[(&Path, &str)]) -> Result<Config, ConfigError> {
        let layers = Layers::parse(BUILTIN_NAME, BUILTIN, layers)?;
        let mut config: Config = layers.deserialize()?;
        config.validate(&|key| layers.file_of(key))?;
        config.source = layers.first_path().map(Path::to_path_buf);
        Ok(config)
    }

    pub(crate) fn profile_names(&self) -> String {
        self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The named profile's table, or a clear error listing the known ones.
    pub(crate) fn profile(&self, name: &str) -> Result<&ProfileConfig, ConfigError> {
        self.profiles
            .get(name)
            .ok_or_else(|| ConfigError::UnknownProfile {
                name: name.to_string(),
                known: self.profile_names(),
            })
    }

    /// Where setup keeps builds and models.
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.backend
            .cache_dir
            .clone()
            .unwrap_or_else(default_cache_dir)
    }

    /// API keys from the config and the `SENTINEL_API_KEY` variable.
    pub fn effective_api_keys(&self) -> Vec<String> {
        let mut keys = self.api_keys.clone();
        if let Ok(k) = std::env::var("SENTINEL_API_KEY") {
            if !k.trim().is_empty() {
                keys.push(k.trim().to_string());
            }
        }
        keys
    }
}

/// The drop-in directories, merged after the main file in this order, each file in name
/// order: `/etc/sentinel-supervisor/conf.d/` (what a fleet's MDM or Ansible drops), then
/// `$XDG_CONFIG_HOME/sentinel-supervisor/conf.d/`.
pub(crate) fn drop_in_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/etc/sentinel-supervisor/conf.d")];
    if let Some(d) = dirs::config_dir() {
        dirs.push(d.join("sentinel-supervisor").join("conf.d"));
    }
    dirs
}

/// The `*.toml` files of each existing directory in `dirs`, in name order per directory.
pub(crate) fn drop_in_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConfigError::Read {
                    path: dir.clone(),
                    source,
                })
            }
        };
        let mut here: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        here.sort();
        files.extend(here);
    }
    Ok(files)
}

/// `$XDG_CONFIG_HOME/sentinel-supervisor/config.toml`.
pub(crate) fn default_user_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("sentinel-supervisor").join("config.toml"))
}

/// The cache when `backend.cache_dir` is empty: `$CACHE_DIRECTORY` (set by systemd's
/// `CacheDirectory=`; the first of its `:`-separated paths), else
/// `$XDG_CACHE_HOME/sentinel-supervisor` (or `~/.cache/sentinel-supervisor`).
pub(crate) fn default_cache_dir() -> PathBuf {
    cache_dir_from(std::env::var_os("CACHE_DIRECTORY"))
}

fn cache_dir_from(systemd: Option<std::ffi::OsString>) -> PathBuf {
    systemd
        .as_deref()
        .and_then(|v| std::env::split_paths(v).next())
        .filter(|first| !first.as_os_str().is_empty())
        .unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("sentinel-supervisor")
        })
}

#[cfg(test)]
mod tests;
