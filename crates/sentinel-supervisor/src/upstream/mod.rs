//! The central tier: OpenAI-compatible endpoints (`[[upstreams]]`) a request may spill to when
//! the local backend cannot serve it in time. `client` sends one request (rustls, a private CA,
//! a client certificate, the upstream's own key, its timeouts), `breaker` decides whether an
//! upstream may be tried, `spill` asks `decision` local or remote for a request at the proxy's
//! three points and `remote` serves the remote answer. The set is built once at start
//! ([`Upstreams::build`]) and shared by every request.

pub(crate) mod breaker;
pub(crate) mod client;
mod decision;
pub(crate) mod metrics;
mod remote;
pub mod spill;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use decision::{SpillMode, SpillPolicy, SpillReason};

/// What `check-config`, `Debug` and the log show in place of an upstream's API key.
pub(crate) const REDACTED: &str = "<redacted>";

/// An upstream's API key: only [`ApiKey::expose`] reads it; `Debug` and serialization (the
/// effective configuration `check-config` prints) show [`REDACTED`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key itself, for the `Authorization` header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// `[spill]`: what every upstream takes unless it sets its own value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpillDefaults {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub total_timeout: Duration,
    pub max_in_flight: usize,
    pub failures_to_open: u32,
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
    #[serde(with = "humantime_serde")]
    pub cool_down_max: Duration,
}

/// One `[[upstreams]]` entry, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Shown in `X-Sentinel-Served-By`, `/status` and the metrics' `upstream` label.
    pub name: String,
    /// The OpenAI base URL (`https://host/v1`); `/chat/completions` is appended.
    pub url: String,
    /// The remote model the local model id maps to; empty: the client's `model` as sent.
    #[serde(default)]
    pub model: String,
    pub api_key: Option<ApiKey>,
    pub api_key_file: Option<PathBuf>,
    /// The environment variable holding the key.
    pub api_key_env: Option<String>,
    /// A PEM file of CA certificates trusted beside the public roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) and its PEM private key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub first_byte_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    pub max_in_flight: Option<usize>,
    pub failures_to_open: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub cool_down: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub cool_down_max: Option<Duration>,
}

/// Why an upstream cannot be set up; each says what to change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("upstream `{name}`: url `{url}` is not an http(s) URL ({reason}); use the OpenAI base URL, e.g. https://llm.example.internal/v1")]
    Url {
        name: String,
        url: String,
        reason: String,
    },
    #[error("upstream `{name}`: plain http to {host} would send prompts unencrypted; use https (plain http is accepted on loopback only)")]
    Plaintext { name: String, host: String },
    #[error(
        "upstream `{name}`: cannot read {what} {path}: {source} (check `{key}` in [[upstreams]])"
    )]
    Read {
        name: String,
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upstream `{name}`: {what} {path} is not valid PEM: {reason} (check `{key}` in [[upstreams]])")]
    Pem {
        name: String,
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("upstream `{name}`: the environment variable {var} (api_key_env) is not set or empty; export it or use api_key_file")]
    KeyEnv { name: String, var: String },
    #[error("upstream `{name}`: set one of api_key, api_key_file, api_key_env, not several")]
    KeySources { name: String },
    #[error("upstream `{name}`: client_cert and client_key go together; set both or neither")]
    HalfIdentity { name: String },
    #[error("upstream `{name}` is named twice in [[upstreams]]; give each a distinct name")]
    Duplicate { name: String },
    #[error("upstream `{name}`: {key} must be {what}")]
    Value {
        name: String,
        key: &'static str,
        what: &'static str,
    },
    #[error("upstream `{name}`: cannot build the HTTPS client: {reason}")]
    Client { name: String, reason: String },
}

/// One upstream's settings with `[spill]`'s defaults applied and its key read.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub name: String,
    /// The base URL without a trailing `/`.
    pub url: String,
    pub model: Option<String>,
    pub key: Option<ApiKey>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    pub max_in_flight: usize,
    pub breaker: breaker::BreakerSettings,
}

/// One endpoint of the central tier: its client, its breaker and its in-flight cap.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub settings: Settings,
    client: reqwest::Client,
    breaker: std::sync::Mutex<breaker::Breaker>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The central tier as configured: every upstream in the order they are tried.
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    list: Vec<Arc<Upstream>>,
    pub metrics: metrics::UpstreamMetrics,
}

impl Upstreams {
    /// Builds every upstream of `config` (reads key files and certificates now, so a mistake
    /// stops the start with a message that names the upstream and the key).
    pub(crate) fn build(
        config: &[UpstreamConfig],
        defaults: &SpillDefaults,
        metrics: metrics::UpstreamMetrics,
    ) -> Result<Upstreams, UpstreamError> {
        let mut list: Vec<Arc<Upstream>> = Vec::new();
        for c in config {
            if list.iter().any(|u| u.settings.name == c.name) {
                return Err(UpstreamError::Duplicate {
                    name: c.name.clone(),
                });
            }
            let settings = settings(c, defaults)?;
            let client = client::build(c, &settings)?;
            list.push(Arc::new(Upstream {
                breaker: std::sync::Mutex::new(breaker::Breaker::new(settings.breaker)),
                in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
                settings,
                client,
            }));
        }
        Ok(Upstreams { list, metrics })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter()
    }

    /// Each upstream's state now, for `/status` and `/metrics`.
    pub(crate) fn report(&self) -> Vec<crate::status::UpstreamReport> {
        let now = tokio::time::Instant::now();
        self.list
            .iter()
            .map(|u| {
                let b = u.breaker();
                crate::status::UpstreamReport {
                    name: u.settings.name.clone(),
                    url: u.settings.url.clone(),
                    breaker: b.state_name(),
                    consecutive_failures: b.consecutive_failures(),
                    retry_in_s: b.retry_in(now).map(|d| d.as_secs_f64()),
                    in_flight: u.settings.max_in_flight - u.in_flight.available_permits(),
                    max_in_flight: u.settings.max_in_flight,
                }
            })
            .collect()
    }
}

impl Upstream {
    fn breaker(&self) -> std::sync::MutexGuard<'_, breaker::Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Applies `[spill]`'s defaults to one entry and reads its key.
fn settings(c: &UpstreamConfig, d: &SpillDefaults) -> Result<Settings, UpstreamError> {
    let name = c.name.clone();
    if name.trim().is_empty() || name == "local" {
        return Err(UpstreamError::Value {
            name,
            key: "name",
            what: "a non-empty name other than `local`",
        });
    }
    let url = c.url.trim_end_matches('/').to_string();
    let bad_url = |reason: String| UpstreamError::Url {
        name: name.clone(),
        url: c.url.clone(),
        reason,
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| bad_url(e.to_string()))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => return Err(UpstreamError::Plaintext { name, host }),
        other => return Err(bad_url(format!("scheme `{other}`"))),
    }
    let max_in_flight = c.max_in_flight.unwrap_or(d.max_in_flight);
    let failures_to_open = c.failures_to_open.unwrap_or(d.failures_to_open);
    let cool_down = c.cool_down.unwrap_or(d.cool_down);
    let cool_down_max = c.cool_down_max.unwrap_or(d.cool_down_max);
    for (ok, key, what) in [
        (max_in_flight >= 1, "max_in_flight", "at least 1"),
        (failures_to_open >= 1, "failures_to_open", "at least 1"),
        (!cool_down.is_zero(), "cool_down", "longer than zero"),
        (
            cool_down_max >= cool_down,
            "cool_down_max",
            "at least cool_down",
        ),
    ] {
        if !ok {
            return Err(UpstreamError::Value {
                name: name.clone(),
                key,
                what,
            });
        }
    }
    Ok(Settings {
        key: read_key(c)?,
        model: (!c.model.trim().is_empty()).then(|| c.model.trim().to_string()),
        connect_timeout: c.connect_timeout.unwrap_or(d.connect_timeout),
        first_byte_timeout: c.first_byte_timeout.unwrap_or(d.first_byte_timeout),
        total_timeout: c.total_timeout.unwrap_or(d.total_timeout),
        max_in_flight,
        breaker: breaker::BreakerSettings {
            failures_to_open,
            cool_down,
            cool_down_max,
        },
        name,
        url,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The key from `api_key`, `api_key_file` (first line, trimmed) or `api_key_env`; none is fine
/// (an upstream on a trusted network may need none).
fn read_key(c: &UpstreamConfig) -> Result<Option<ApiKey>, UpstreamError> {
    let name = c.name.clone();
    match (&c.api_key, &c.api_key_file, &c.api_key_env) {
        (None, None, None) => Ok(None),
        (Some(k), None, None) => Ok(Some(k.clone())),
        (None, Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|source| UpstreamError::Read {
                name,
                what: "the API key file",
                key: "api_key_file",
                path: path.clone(),
                source,
            })?;
            let key = text.lines().next().unwrap_or_default().trim().to_string();
            Ok((!key.is_empty()).then_some(ApiKey(key)))
        }
        (None, None, Some(var)) => match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Ok(Some(ApiKey(k.trim().to_string()))),
            _ => Err(UpstreamError::KeyEnv {
                name,
                var: var.clone(),
            }),
        },
        _ => Err(UpstreamError::KeySources { name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SpillDefaults {
        crate::config::Config::builtin().unwrap().spill
    }

    fn entry(toml_text: &str) -> UpstreamConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn key_is_redacted_in_debug_and_serialization() {
        let c = entry("name = \"c\"\nurl = \"https://x/v1\"\napi_key = \"sk-very-secret\"\n");
        assert!(!format!("{c:?}").contains("sk-very-secret"));
        let printed = toml::to_string(&c).unwrap();
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert!(printed.contains(REDACTED), "{printed}");
        let s = settings(&c, &defaults()).unwrap();
        assert!(!format!("{s:?}").contains("sk-very-secret"));
        assert_eq!(s.key.unwrap().expose(), "sk-very-secret");
    }

    #[test]
    fn defaults_apply_and_entries_override() {
        let s = settings(
            &entry("name = \"c\"\nurl = \"https://x/v1/\"\nmax_in_flight = 2\n"),
            &defaults(),
        )
        .unwrap();
        assert_eq!(s.url, "https://x/v1");
        assert_eq!(s.max_in_flight, 2);
        assert_eq!(s.connect_timeout, defaults().connect_timeout);
        assert_eq!(s.model, None);
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:9/v1",
            "http://localhost/v1",
            "http://[::1]:8/v1",
        ] {
            let c = entry(&format!("name = \"c\"\nurl = \"{ok}\"\n"));
            assert!(settings(&c, &defaults()).is_ok(), "{ok}");
        }
        let c = entry("name = \"c\"\nurl = \"http://10.1.2.3/v1\"\n");
        let err = settings(&c, &defaults()).unwrap_err().to_string();
        assert!(err.contains("use https"), "{err}");
        let c = entry("name = \"c\"\nurl = \"ftp://x\"\n");
        assert!(settings(&c, &defaults()).is_err());
    }

    #[test]
    fn key_from_file_and_env_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, "sk-from-file\n").unwrap();
        let c = entry(&format!(
            "name = \"c\"\nurl = \"https://x\"\napi_key_file = \"{}\"\n",
            file.display()
        ));
        assert_eq!(read_key(&c).unwrap().unwrap().expose(), "sk-from-file");
        let c = entry(
            "name = \"c\"\nurl = \"https://x\"\napi_key_env = \"SENTINEL_TEST_SURELY_UNSET\"\n",
        );
        let err = read_key(&c).unwrap_err().to_string();
        assert!(err.contains("SENTINEL_TEST_SURELY_UNSET"), "{err}");
        let c = entry("name = \"c\"\nurl = \"https://x\"\napi_key = \"a\"\napi_key_env = \"B\"\n");
        assert!(read_key(&c)
            .unwrap_err()
            .to_string()
            .contains("not several"));
        let c = entry("name = \"c\"\nurl = \"https://x\"\napi_key_file = \"/nonexistent/k\"\n");
        let err = read_key(&c).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/k") && err.contains("api_key_file"),
            "{err}"
        );
    }

    #[test]
    fn names_are_distinct_and_not_local() {
        let m = metrics::UpstreamMetrics::default();
        let twice = [
            entry("name = \"c\"\nurl = \"https://x\"\n"),
            entry("name = \"c\"\nurl = \"https://y\"\n"),
        ];
        let err = Upstreams::build(&twice, &defaults(), m.clone()).unwrap_err();
        assert!(err.to_string().contains("named twice"), "{err}");
        let local = [entry("name = \"local\"\nurl = \"https://x\"\n")];
        assert!(Upstreams::build(&local, &defaults(), m).is_err());
    }
}
