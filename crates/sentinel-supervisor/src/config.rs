//! The configuration: the TOML schema, the built-in defaults (`config.toml`, compiled in), the
//! user's overrides, and validation with errors that name the key and the file.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::governor::priority::Priority;
use crate::units::{Cores, Share};

/// The shipped defaults, compiled in so the binary works from any directory.
pub const BUILTIN: &str = include_str!("../config.toml");
/// How the built-in file is named in error messages.
pub const BUILTIN_NAME: &str = "built-in config.toml";

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
    #[serde(
        default,
        deserialize_with = "empty_path_is_none",
        serialize_with = "none_is_empty_path"
    )]
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
    /// `bench` settings, checked with the rest of the file (a typo fails `run` too).
    pub bench: crate::bench::settings::BenchConfig,
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
    #[serde(
        default,
        deserialize_with = "empty_path_is_none",
        serialize_with = "none_is_empty_path"
    )]
    pub bin: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "empty_path_is_none",
        serialize_with = "none_is_empty_path"
    )]
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
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    #[serde(default)]
    pub description: String,
    /// The budget in cores (above 0); `None` = unlimited.
    pub cpus: Option<Cores>,
    /// The budget on battery; 0 pauses (omit: the `invisible` profile's budget, at most `cpus`).
    pub cpus_on_battery: Option<crate::units::CoresOrPause>,
    /// The budget while the user is idle (omit: `cpus` x 2, at most the allowed CPUs).
    pub cpus_when_idle: Option<Cores>,
    pub threads: Option<usize>,
    pub threads_batch: Option<usize>,
    #[serde(default)]
    pub priority: Priority,
    pub slots: Option<usize>,
    pub ctx_size: Option<u32>,
    /// Prompt cache, MiB (overrides `backend.cache_ram_mib`).
    pub cache_ram_mib: Option<u32>,
    #[serde(default)]
    pub embeddings: bool,
    /// Adaptive mode: keep total system CPU under this share of the machine.
    pub adaptive: Option<Share>,
    /// Cap on generated tokens per request (omit: `proxy.max_tokens`).
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// How the budget is enforced for this profile (omit: `governor.method`).
    pub method: Option<crate::governor::Method>,
    /// The signal duty-cycle period for this profile (omit: `governor.period`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub period: Option<Duration>,
    /// Pin the backend to the last CPU of this process's affinity mask when it runs one
    /// thread (`threads` and `threads_batch` both 1).
    #[serde(default)]
    pub pin: bool,
    /// Whether requests may carry a GBNF `grammar` (JSON schemas are always measured and let
    /// through within `proxy.grammar`). Default false.
    #[serde(default)]
    pub grammar: bool,
    /// When a request may go to the central tier (`[[upstreams]]`); default `never`: no
    /// prompt leaves the host.
    #[serde(default)]
    pub spill: crate::upstream::SpillMode,
    /// With `spill = "when_late"`: the latency a request should meet; one the queue would make
    /// later than this goes to the central tier (a client's `X-Sentinel-Deadline` wins).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Duration>,
}

fn empty_path_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
}

/// The other way round, so the effective configuration prints as it can be written.
fn none_is_empty_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => p.serialize(s),
        None => s.serialize_str(""),
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
    pub fn load_with(explicit: Option<&Path>, drop_in: &[PathBuf]) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => default_user_path().filter(|p| p.is_file()),
        };
        let mut files: Vec<PathBuf> = path.into_iter().collect();
        files.extend(drop_in_files(drop_in)?);
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
    pub fn from_files(layers: &[(&Path, &str)]) -> Result<Config, ConfigError> {
        let mut merged = parse_table(BUILTIN, BUILTIN_NAME)?;
        let mut tables = Vec::with_capacity(layers.len());
        for (path, text) in layers {
            let table = parse_table(text, &path.display().to_string())?;
            deep_merge(&mut merged, table.clone());
            tables.push((*path, table));
        }
        let file_of = |key: &str| -> String {
            if key.is_empty() {
                if let Some((path, _)) = tables.last() {
                    return path.display().to_string();
                }
            }
            tables
                .iter()
                .rev()
                .find(|(_, table)| has_key(table, key))
                .map(|(path, _)| path.display().to_string())
                .unwrap_or_else(|| BUILTIN_NAME.to_string())
        };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|err| {
                let key = err.path().to_string();
                let key = if key == "." { String::new() } else { key };
                ConfigError::Key {
                    file: file_of(&key),
                    key: if key.is_empty() {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message: err.into_inner().to_string(),
                }
            })?;
        config.validate(&file_of)?;
        config.source = tables.first().map(|(p, _)| p.to_path_buf());
        Ok(config)
    }

    fn validate(&self, file_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| ConfigError::Key {
            file: file_of(&key),
            key,
            message,
        };
        if !self.profiles.contains_key(&self.default_profile) {
            return Err(bad(
                "default_profile".into(),
                format!(
                    "no profile named `{}` (known: {})",
                    self.default_profile,
                    self.profile_names()
                ),
            ));
        }
        if self.backend.ctx_size < 64 {
            return Err(bad(
                "backend.ctx_size".into(),
                format!(
                    "{} is too small; use at least 64 tokens",
                    self.backend.ctx_size
                ),
            ));
        }
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(bad(
                "api_keys".into(),
                "an API key is empty; remove it or give it a value".into(),
            ));
        }
        let s = &self.supervisor;
        for (key, d) in [
            ("supervisor.startup_timeout", s.startup_timeout),
            ("supervisor.ready_poll_interval", s.ready_poll_interval),
            ("supervisor.probe_interval", s.probe_interval),
            ("supervisor.probe_timeout", s.probe_timeout),
            ("supervisor.backoff_initial", s.backoff_initial),
            ("supervisor.failed_retry_interval", s.failed_retry_interval),
            ("supervisor.file_poll_interval", s.file_poll_interval),
            ("supervisor.first_token_timeout", s.first_token_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key.into(), "must be longer than zero".into()));
            }
        }
        if s.backoff_max < s.backoff_initial {
            return Err(bad(
                "supervisor.backoff_max".into(),
                "must be at least supervisor.backoff_initial".into(),
            ));
        }
        if s.backend_log_burst == 0 {
            return Err(bad(
                "supervisor.backend_log_burst".into(),
                "must be at least 1".into(),
            ));
        }
        if !(s.backend_log_lines_per_sec.is_finite() && s.backend_log_lines_per_sec > 0.0) {
            return Err(bad(
                "supervisor.backend_log_lines_per_sec".into(),
                format!(
                    "{} is not a rate; use a number of lines per second above 0",
                    s.backend_log_lines_per_sec
                ),
            ));
        }
        if s.liveness_failures == 0 {
            return Err(bad(
                "supervisor.liveness_failures".into(),
                "must be at least 1".into(),
            ));
        }
        if let Err(message) = self.governor.validate() {
            return Err(bad("governor".into(), message));
        }
        if self.proxy.max_body_bytes == 0 {
            return Err(bad(
                "proxy.max_body_bytes".into(),
                "must be more than 0".into(),
            ));
        }
        let p = &self.proxy;
        for (key, d) in [
            ("proxy.header_read_timeout", p.header_read_timeout),
            ("proxy.body_read_timeout", p.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key.into(), "must be longer than zero".into()));
            }
        }
        for (key, n, min) in [
            ("proxy.max_tokens", p.max_tokens as usize, 1),
            ("proxy.max_header_bytes", p.max_header_bytes, 1024),
            ("proxy.max_headers", p.max_headers, 8),
            ("proxy.max_connections", p.max_connections, 1),
        ] {
            if n < min {
                return Err(bad(
                    key.into(),
                    format!("{n} is too small; use at least {min}"),
                ));
            }
        }
        for (label, value) in &self.labels {
            let valid = label
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            if !valid || label.is_empty() || label.starts_with("__") || label == "version" {
                return Err(bad(
                    format!("labels.{label}"),
                    "is not a usable Prometheus label name; use letters, digits and `_`, not starting with a digit or `__`, and not `version` (the supervisor adds it)".into(),
                ));
            }
            if value.is_empty() {
                return Err(bad(
                    format!("labels.{label}"),
                    "is empty; give it a value or remove it".into(),
                ));
            }
        }
        if let Err(e) = crate::upstream::Upstreams::build(
            &self.upstreams,
            &self.spill,
            crate::upstream::metrics::UpstreamMetrics::default(),
        ) {
            return Err(bad("upstreams".into(), e.to_string()));
        }
        if self.metrics.textfile_interval.is_zero() {
            return Err(bad(
                "metrics.textfile_interval".into(),
                "must be longer than zero".into(),
            ));
        }
        for (name, p) in &self.profiles {
            let key = |k: &str| format!("profiles.{name}.{k}");
            for (k, v) in [
                ("threads", p.threads),
                ("threads_batch", p.threads_batch),
                ("slots", p.slots),
                ("max_tokens", p.max_tokens.map(|n| n as usize)),
            ] {
                if v == Some(0) {
                    return Err(bad(key(k), "must be at least 1".into()));
                }
            }
            if let Some(ctx) = p.ctx_size {
                if ctx < 64 {
                    return Err(bad(
                        key("ctx_size"),
                        format!("{ctx} is too small; use at least 64 tokens"),
                    ));
                }
            }
            if let Some(period) = p.period {
                if let Err(message) = self.governor.check_profile_period(period) {
                    return Err(bad(key("period"), message));
                }
            }
        }
        Ok(())
    }

    pub fn profile_names(&self) -> String {
        self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The named profile's table, or a clear error listing the known ones.
    pub fn profile(&self, name: &str) -> Result<&ProfileConfig, ConfigError> {
        self.profiles
            .get(name)
            .ok_or_else(|| ConfigError::UnknownProfile {
                name: name.to_string(),
                known: self.profile_names(),
            })
    }

    /// Where setup keeps builds and models.
    pub fn cache_dir(&self) -> PathBuf {
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
pub fn drop_in_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/etc/sentinel-supervisor/conf.d")];
    if let Some(d) = dirs::config_dir() {
        dirs.push(d.join("sentinel-supervisor").join("conf.d"));
    }
    dirs
}

/// The `*.toml` files of each existing directory in `dirs`, in name order per directory.
pub fn drop_in_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
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
pub fn default_user_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("sentinel-supervisor").join("config.toml"))
}

/// The cache when `backend.cache_dir` is empty: `$CACHE_DIRECTORY` (set by systemd's
/// `CacheDirectory=`; the first of its `:`-separated paths), else
/// `$XDG_CACHE_HOME/sentinel-supervisor` (or `~/.cache/sentinel-supervisor`).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(std::env::var_os("CACHE_DIRECTORY"))
}

fn cache_dir_from(systemd: Option<std::ffi::OsString>) -> PathBuf {
    if let Some(first) = systemd
        .as_deref()
        .and_then(|v| std::env::split_paths(v).next())
    {
        if !first.as_os_str().is_empty() {
            return first;
        }
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("sentinel-supervisor")
}

fn parse_table(text: &str, file: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })
}

/// Overlays `top` onto `base`: tables merge key by key, anything else is replaced.
fn deep_merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => deep_merge(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Whether a dotted key path (`profiles.balanced.cpus`) is present in `table`.
fn has_key(table: &toml::Table, dotted: &str) -> bool {
    let mut current = table;
    let parts: Vec<&str> = dotted.split('.').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        match current.get(*part) {
            Some(toml::Value::Table(t)) if i + 1 < parts.len() => current = t,
            Some(_) => return true,
            None => return false,
        }
    }
    !parts.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Result<Config, ConfigError> {
        Config::from_layers(Some((Path::new("/etc/my.toml"), text)))
    }

    #[test]
    fn builtin_parses_with_three_profiles() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.default_profile, "balanced");
        for p in ["invisible", "balanced", "fast"] {
            assert!(c.profiles.contains_key(p), "missing profile {p}");
        }
        assert_eq!(c.supervisor.backoff_initial, Duration::from_millis(500));
        assert_eq!(c.proxy.max_body_bytes, 8 * 1024 * 1024);
        assert!(c.model.is_none());
        assert!(c.backend.bin.is_none());
    }

    #[test]
    fn user_file_overrides_keys_and_adds_profiles() {
        let c = user(
            "listen = \"127.0.0.1:9000\"\n[profiles.balanced]\ncpus = 0.75\n[profiles.mine]\nthreads = 2\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.profiles["balanced"].cpus.map(Cores::get), Some(0.75));
        // Keys not overridden keep their defaults.
        assert_eq!(c.profiles["balanced"].slots, Some(1));
        assert_eq!(c.profiles["mine"].threads, Some(2));
        assert_eq!(c.source.as_deref(), Some(Path::new("/etc/my.toml")));
    }

    #[test]
    fn unknown_key_names_key_and_user_file() {
        let err = user("[profiles.balanced]\nthreds = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/my.toml"), "{err}");
        assert!(err.contains("profiles.balanced"), "{err}");
        assert!(err.contains("threds"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let err = user("modle = \"/x.gguf\"\n").unwrap_err().to_string();
        assert!(err.contains("modle"), "{err}");
        assert!(err.contains("/etc/my.toml"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = user("[profiles.fast]\nslots = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("profiles.fast.slots"), "{err}");
        assert!(err.contains("/etc/my.toml"), "{err}");
    }

    #[test]
    fn impossible_values_are_errors() {
        let cases = [
            (
                "[profiles.balanced]\ncpus = 0.0\n",
                "profiles.balanced.cpus",
            ),
            (
                "[profiles.balanced]\ncpus = -1.0\n",
                "profiles.balanced.cpus",
            ),
            (
                "[profiles.balanced]\nthreads = 0\n",
                "profiles.balanced.threads",
            ),
            ("[profiles.fast]\nslots = 0\n", "profiles.fast.slots"),
            (
                "[profiles.fast]\nadaptive = 1.5\n",
                "profiles.fast.adaptive",
            ),
            (
                "[supervisor]\nbackoff_max = \"100ms\"\n",
                "supervisor.backoff_max",
            ),
            (
                "[supervisor]\nliveness_failures = 0\n",
                "supervisor.liveness_failures",
            ),
            ("default_profile = \"nope\"\n", "default_profile"),
            ("[backend]\nctx_size = 8\n", "backend.ctx_size"),
            (
                "[backend]\nmemory_limit = \"lots\"\n",
                "backend.memory_limit",
            ),
            (
                "[supervisor]\nfirst_token_timeout = \"0s\"\n",
                "supervisor.first_token_timeout",
            ),
        ];
        for (text, key) in cases {
            let err = user(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} -> {err}");
            assert!(err.contains("/etc/my.toml"), "{text:?} -> {err}");
        }
    }

    #[test]
    fn a_cpu_budget_not_above_zero_says_how_to_write_one() {
        for (text, shown) in [
            (
                "[profiles.balanced]\ncpus = 0\n",
                "CPU budget 0 is out of range",
            ),
            (
                "[profiles.balanced]\ncpus = -1.5\n",
                "CPU budget -1.5 is out of range",
            ),
            (
                "[profiles.balanced]\ncpus = nan\n",
                "CPU budget NaN is out of range",
            ),
        ] {
            let err = user(text).unwrap_err().to_string();
            assert!(
                err.starts_with("/etc/my.toml: key `profiles.balanced.cpus`: "),
                "{text:?} -> {err}"
            );
            assert!(err.contains(shown), "{text:?} -> {err}");
            assert!(err.contains("number of cores above 0"), "{text:?} -> {err}");
        }
    }

    #[test]
    fn situation_budgets_and_keys_are_checked() {
        let err = user("[profiles.balanced]\ncpus_on_battery = -1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/my.toml: key `profiles.balanced.cpus_on_battery`: "),
            "{err}"
        );
        assert!(
            err.contains("at least 0") && err.contains("0 pauses"),
            "{err}"
        );
        let err = user("[profiles.balanced]\ncpus_when_idle = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("profiles.balanced.cpus_when_idle"), "{err}");
        let err = user("[situation]\nidle_afer = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `idle_afer`"), "{err}");
        let ok = user("[profiles.balanced]\ncpus_on_battery = 0\n").unwrap();
        let paused = ok.profiles["balanced"].cpus_on_battery.unwrap();
        assert_eq!(paused.cores(), None);
    }

    #[test]
    fn an_adaptive_share_outside_zero_to_one_says_the_range() {
        for (text, shown) in [
            (
                "[profiles.fast]\nadaptive = 1.5\n",
                "share 1.5 is out of range",
            ),
            ("[profiles.fast]\nadaptive = 0\n", "share 0 is out of range"),
        ] {
            let err = user(text).unwrap_err().to_string();
            assert!(
                err.starts_with("/etc/my.toml: key `profiles.fast.adaptive`: "),
                "{text:?} -> {err}"
            );
            assert!(err.contains(shown), "{text:?} -> {err}");
            assert!(err.contains("above 0 and at most 1"), "{text:?} -> {err}");
        }
    }

    #[test]
    fn a_profiles_method_and_period_are_checked_like_the_governors() {
        let c =
            user("[profiles.fast]\nmethod = \"signals\"\nperiod = \"2ms\"\npin = true\n").unwrap();
        let fast = &c.profiles["fast"];
        assert_eq!(fast.method, Some(crate::governor::Method::Signals));
        assert_eq!(fast.period, Some(Duration::from_millis(2)));
        assert!(fast.pin);
        assert_eq!(c.profiles["balanced"].period, None);
        for (text, shown) in [
            (
                "[profiles.fast]\nperiod = \"0ms\"\n",
                "out of range; use 1ms to 1s",
            ),
            (
                "[profiles.fast]\nperiod = \"2s\"\n",
                "out of range; use 1ms to 1s",
            ),
            (
                "[profiles.fast]\nperiod = \"500ms\"\n",
                "longer than a fifth of governor.feedback_window",
            ),
            ("[profiles.fast]\nperiod = \"soon\"\n", "invalid"),
            (
                "[profiles.fast]\nmethod = \"fast\"\n",
                "unknown variant `fast`",
            ),
            ("[profiles.fast]\npin = \"yes\"\n", "invalid type"),
        ] {
            let err = user(text).unwrap_err().to_string();
            let key = text.split('\n').nth(1).unwrap().split(' ').next().unwrap();
            assert!(
                err.starts_with(&format!("/etc/my.toml: key `profiles.fast.{key}`: ")),
                "{text:?} -> {err}"
            );
            assert!(err.contains(shown), "{text:?} -> {err}");
        }
    }

    #[test]
    fn bad_duration_and_syntax_are_reported() {
        let err = user("[supervisor]\nstop_grace = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("supervisor.stop_grace"), "{err}");
        let err = user("[profiles.fast\n").unwrap_err().to_string();
        assert!(err.contains("invalid TOML"), "{err}");
        assert!(err.contains("/etc/my.toml"), "{err}");
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let c = Config::builtin().unwrap();
        let err = c.profile("turbo").unwrap_err().to_string();
        assert!(err.contains("turbo"), "{err}");
        assert!(err.contains("balanced"), "{err}");
    }

    #[test]
    fn missing_file_says_what_to_check() {
        let err = Config::load(Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
        assert!(err.contains("--config"), "{err}");
    }

    #[test]
    fn drop_ins_merge_in_name_order_after_the_main_file_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "listen = \"127.0.0.1:9000\"\n[profiles.balanced]\ncpus = 0.5\n",
        )
        .unwrap();
        let etc = dir.path().join("etc");
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&xdg).unwrap();
        std::fs::write(
            etc.join("20-site.toml"),
            "[profiles.balanced]\ncpus = 0.75\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("10-labels.toml"),
            "labels = { site = \"par1\", group = \"soc\" }\n[profiles.balanced]\ncpus = 0.25\n",
        )
        .unwrap();
        std::fs::write(etc.join("README"), "not toml").unwrap();
        std::fs::write(xdg.join("50-me.toml"), "[profiles.balanced]\nslots = 2\n").unwrap();
        let dirs = [etc.clone(), xdg.clone(), dir.path().join("missing")];
        let c = Config::load_with(Some(&main), &dirs).unwrap();
        assert_eq!(c.listen.port(), 9000);
        // 10-labels then 20-site: the later file wins.
        assert_eq!(c.profiles["balanced"].cpus.map(Cores::get), Some(0.75));
        assert_eq!(c.profiles["balanced"].slots, Some(2));
        assert_eq!(c.labels["site"], "par1");
        assert_eq!(c.source.as_deref(), Some(main.as_path()));
        // A bad key in a drop-in names that file, not the main one.
        std::fs::write(
            xdg.join("60-bad.toml"),
            "[profiles.balanced]\nslots = \"two\"\n",
        )
        .unwrap();
        let err = Config::load_with(Some(&main), &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: key `profiles.balanced.slots`",
                xdg.join("60-bad.toml").display()
            )),
            "{err}"
        );
        std::fs::write(xdg.join("60-bad.toml"), "[profiles.balanced\n").unwrap();
        let err = Config::load_with(Some(&main), &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("60-bad.toml") && err.contains("invalid TOML"),
            "{err}"
        );
    }

    #[test]
    fn labels_must_be_prometheus_label_names() {
        assert!(user("labels = { site = \"a\", group_2 = \"b\" }\n").is_ok());
        for bad in [
            "\"2x\" = \"a\"",
            "\"a-b\" = \"a\"",
            "__x = \"a\"",
            "version = \"1\"",
            "site = \"\"",
        ] {
            let err = user(&format!("labels = {{ {bad} }}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("/etc/my.toml: key `labels."),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn spill_and_upstreams_parse_and_a_bad_upstream_names_the_file() {
        let c = user("[[upstreams]]\nname = \"central\"\nurl = \"https://llm.example/v1\"\nmodel = \"big\"\n[profiles.invisible]\nspill = \"when_late\"\ndeadline = \"2.5s\"\n").unwrap();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(
            c.profiles["invisible"].spill,
            crate::upstream::SpillMode::WhenLate
        );
        assert_eq!(
            c.profiles["invisible"].deadline,
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            c.profiles["balanced"].spill,
            crate::upstream::SpillMode::Never
        );
        let err = user("[[upstreams]]\nname = \"central\"\nurl = \"http://10.0.0.1/v1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/my.toml: key `upstreams`: upstream `central`"),
            "{err}"
        );
        let err = user("[profiles.fast]\nspill = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("profiles.fast.spill"), "{err}");
    }

    #[test]
    fn key_lookup() {
        let t: toml::Table = "a = 1\n[b]\nc = 2\n".parse().unwrap();
        assert!(has_key(&t, "a"));
        assert!(has_key(&t, "b.c"));
        assert!(!has_key(&t, "b.d"));
        assert!(!has_key(&t, "z"));
    }

    #[test]
    fn systemd_cache_directory_comes_before_the_xdg_cache() {
        let xdg = cache_dir_from(None);
        assert!(xdg.ends_with("sentinel-supervisor"), "{}", xdg.display());
        let unit = std::ffi::OsString::from("/var/cache/sentinel-supervisor:/var/cache/other");
        assert_eq!(
            cache_dir_from(Some(unit)),
            PathBuf::from("/var/cache/sentinel-supervisor")
        );
        assert_eq!(cache_dir_from(Some("".into())), xdg);
    }
}
