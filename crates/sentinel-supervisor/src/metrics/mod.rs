//! `GET /metrics`: the supervisor's Prometheus metrics, in the Prometheus text exposition format
//! (0.0.4) written by the official `prometheus-client` crate, so `promtool check metrics` reads
//! it as Prometheus does.
//!
//! Two kinds of metrics live here:
//! - **events**, counted as they happen into the long-lived [`Metrics`] registry: restarts by
//!   reason (from the lifecycle, [`Metrics::backend_restarted`]), requests, durations,
//!   time to first token, tokens and rejections (from the HTTP layer, [`http`]), and the
//!   invisibility SLO's 100 ms windows (from [`sampler`]);
//! - **readings**, taken at each scrape from their one owner ([`live`]): the lifecycle state and
//!   admission counts from the [`StatusReport`], the governor's snapshot, the duty cycle's
//!   stopped time, the backend's and the supervisor's CPU clocks and memory from
//!   [`crate::meter`], and llama-server's own `/metrics` re-exported by [`llamacpp`].
//!
//! Names follow Prometheus conventions: every name starts with `sentinel_`, counters end in
//! `_total`, base units are in the name (`_seconds`, `_bytes`, `_cores`, `_ratio`).

pub(crate) mod fleet;
pub(crate) mod http;
mod live;
pub(crate) mod llamacpp;
pub(crate) mod sampler;
pub mod slo;
pub(crate) mod textfile;
pub mod tokens;

use crate::status::StatusReport;
use crate::supervisor::state::BackendInfo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use slo::Slo;
use std::time::Duration;

pub(crate) use tokens::Tokens;

/// The `Content-Type` of a scrape.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long a scrape waits for llama-server's own `/metrics`.
const LLAMACPP_TIMEOUT: Duration = Duration::from_millis(500);

/// Upper bounds of the request duration buckets, in seconds (a CPU model answers in
/// milliseconds for a token and in minutes for a long answer).
const DURATION_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Upper bounds of the time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0];

/// Why the lifecycle restarted the backend: the `reason` of `sentinel_backend_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RestartReason {
    /// It exited by itself with an exit code.
    ExitCode,
    /// A signal killed it (`kill -9`, the OOM killer, a crash).
    Signal,
    /// It stopped answering its liveness probes.
    Hang,
    /// It did not become ready within `supervisor.startup_timeout`.
    StartTimeout,
    /// It could not be started at all.
    SpawnFailure,
}

impl RestartReason {
    pub(crate) const ALL: [RestartReason; 5] = [
        RestartReason::ExitCode,
        RestartReason::Signal,
        RestartReason::Hang,
        RestartReason::StartTimeout,
        RestartReason::SpawnFailure,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RestartReason::ExitCode => "exit_code",
            RestartReason::Signal => "signal",
            RestartReason::Hang => "hang",
            RestartReason::StartTimeout => "start_timeout",
            RestartReason::SpawnFailure => "spawn_failure",
        }
    }

    /// How a process that ended by itself ended: killed by a signal, or with an exit code.
    pub(crate) fn exited(status: std::process::ExitStatus) -> RestartReason {
        use std::os::unix::process::ExitStatusExt;
        if status.signal().is_some() {
            RestartReason::Signal
        } else {
            RestartReason::ExitCode
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// One histogram per route, each with the fixed buckets its constructor gives.
type RouteHistograms = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// The supervisor's metrics: the registry of event counters, shared by the lifecycle, the HTTP
/// layer and the SLO sampler, and what a scrape needs to read the rest.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    restarts: Family<ReasonLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    duration: RouteHistograms,
    ttft: RouteHistograms,
    rejections: Family<ReasonLabel, Counter>,
    prompt_tokens: Counter,
    cached_tokens: Counter,
    generated_tokens: Counter,
    poisoned: Counter,
    poison_refusals: Counter,
    slo: sampler::Windows,
    /// For llama-server's own `/metrics`.
    client: reqwest::Client,
    /// The central tier's counters and histograms (`crate::upstream`).
    pub upstream: crate::upstream::metrics::UpstreamMetrics,
    /// `labels` of the configuration, for `sentinel_host_info`.
    host_labels: Vec<(String, String)>,
    /// The host's online CPUs ([`crate::host::Host::online_cpus`]): `sentinel_system_cpus`, and
    /// the denominator of the machine's CPU counters.
    online_cpus: usize,
    /// Where the governors add the time they hold the backend stopped
    /// (`sentinel_governor_throttled_seconds_total`).
    throttled: crate::governor::StoppedTime,
}

impl Metrics {
    /// The registry, with the SLO bands taken from `[slo]` (the idle, active-mean and active-p99
    /// limits on system CPU).
    pub(crate) fn new(
        slo: &Slo,
        online_cpus: usize,
        throttled: crate::governor::StoppedTime,
    ) -> Metrics {
        let mut registry = Registry::default();
        let restarts = register_restarts(&mut registry);
        let requests = registered(
            &mut registry,
            "sentinel_requests",
            "HTTP requests answered, by route and status code",
            Family::default(),
        );
        let duration = registered(
            &mut registry,
            "sentinel_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by route",
            RouteHistograms::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
        );
        let ttft = registered(
            &mut registry,
            "sentinel_time_to_first_token_seconds",
            "Time from a streamed completion's arrival to its first generated token, by route",
            RouteHistograms::new_with_constructor(|| Histogram::new(TTFT_BUCKETS)),
        );
        let rejections = registered(
            &mut registry,
            "sentinel_rejections",
            "Requests the proxy answered with an error itself, by error code (queue_full, queue_timeout, invalid_api_key, request_too_large, backend_unavailable, ...)",
            Family::default(),
        );
        let [prompt_tokens, cached_tokens, generated_tokens] = register_tokens(&mut registry);
        let [poisoned, poison_refusals] = register_poison(&mut registry);
        Metrics {
            restarts,
            requests,
            duration,
            ttft,
            rejections,
            prompt_tokens,
            cached_tokens,
            generated_tokens,
            poisoned,
            poison_refusals,
            slo: sampler::Windows::register(&mut registry, slo),
            upstream: crate::upstream::metrics::UpstreamMetrics::register(&mut registry),
            client: reqwest::Client::builder()
                .timeout(LLAMACPP_TIMEOUT)
                .build()
                .expect("a reqwest client with only a timeout always builds"),
            registry,
            host_labels: Vec::new(),
            online_cpus,
            throttled,
        }
    }

    /// Counts a request remembered as poison.
    pub(crate) fn request_poisoned(&self) {
        self.poisoned.inc();
    }

    /// Counts a request refused as identical to a poison request.
    pub(crate) fn poison_refused(&self) {
        self.poison_refusals.inc();
    }

    /// The fleet labels (`labels = {site = ..., group = ...}`) `sentinel_host_info` carries.
    pub(crate) fn with_host_labels(
        mut self,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Metrics {
        self.host_labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self
    }

    /// Counts one restart of the backend (the lifecycle calls it when it decides to restart).
    pub(crate) fn backend_restarted(&self, reason: RestartReason) {
        self.restarts
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Restarts counted so far for `reason`.
    #[cfg(test)]
    pub(crate) fn restarts(&self, reason: RestartReason) -> u64 {
        self.restarts
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Token totals since start, as `/metrics` counts them (`/status` reads them here).
    pub(crate) fn tokens(&self) -> crate::status::TokenTotals {
        crate::status::TokenTotals {
            prompt: self.prompt_tokens.get(),
            cached: self.cached_tokens.get(),
            generated: self.generated_tokens.get(),
        }
    }

    fn count_tokens(&self, tokens: Tokens) {
        self.prompt_tokens.inc_by(tokens.prompt);
        self.cached_tokens.inc_by(tokens.cached);
        self.generated_tokens.inc_by(tokens.generated);
    }

    /// One scrape: the event counters, the readings now (from `report` and `backend`, the
    /// lifecycle's running backend), and llama-server's own metrics when it answers in time.
    pub(crate) async fn render(
        &self,
        report: &StatusReport,
        backend: Option<&BackendInfo>,
    ) -> String {
        let llamacpp = match backend {
            Some(b) => Some(llamacpp::scrape(&self.client, b).await),
            None => None,
        };
        let live = live::Live::read(
            report,
            llamacpp.as_ref().map(Result::is_ok),
            self.online_cpus,
            self.throttled.total(),
        );
        let mut out = String::with_capacity(16 * 1024);
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(live));
        scrape.register_collector(Box::new(fleet::Fleet {
            host_labels: self.host_labels.clone(),
            upstreams: report.upstreams.clone(),
        }));
        match llamacpp {
            Some(Ok(families)) => scrape.register_collector(Box::new(families)),
            Some(Err(e)) => tracing::debug!(error = %e, "llama-server metrics not included"),
            None => {}
        }
        for registry in [&self.registry, &scrape] {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
                .expect("writing to a String cannot fail");
        }
        out
    }
}

/// Registers `metric` under `name` and returns the handle the counting side keeps.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Restarts by reason, every reason present from the start (at 0).
fn register_restarts(registry: &mut Registry) -> Family<ReasonLabel, Counter> {
    let restarts = registered(
        registry,
        "sentinel_backend_restarts",
        "Backend restarts, by why the previous launch ended (exit_code, signal, hang, start_timeout, spawn_failure)",
        Family::<ReasonLabel, Counter>::default(),
    );
    for reason in RestartReason::ALL {
        drop(restarts.get_or_create(&ReasonLabel {
            reason: reason.as_str(),
        }));
    }
    restarts
}

/// Prompt, cached and generated tokens.
fn register_tokens(registry: &mut Registry) -> [Counter; 3] {
    [
        (
            "sentinel_prompt_tokens",
            "Prompt tokens of answered requests, cached ones included",
        ),
        (
            "sentinel_prompt_cached_tokens",
            "Prompt tokens llama-server reused from its cache instead of evaluating",
        ),
        ("sentinel_generated_tokens", "Tokens generated by the model"),
    ]
    .map(|(name, help)| registered(registry, name, help, Counter::default()))
}

/// Requests remembered as poison, and the identical ones refused for it.
fn register_poison(registry: &mut Registry) -> [Counter; 2] {
    [
        (
            "sentinel_poisoned_requests",
            "Requests a backend died while serving (alone, or at a second death), not sent again and remembered for proxy.poison_ttl",
        ),
        (
            "sentinel_poison_refusals",
            "Requests refused with 400 before the backend because an identical one made a backend die",
        ),
    ]
    .map(|(name, help)| registered(registry, name, help, Counter::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::state::State;
    use std::os::unix::process::ExitStatusExt;

    fn slo() -> Slo {
        crate::config::Config::builtin().unwrap().slo
    }

    /// A report of a supervisor in `state` with nothing running.
    pub(crate) fn report(state: State) -> StatusReport {
        let config = crate::config::Config::builtin().unwrap();
        let host = crate::host::Host::unrestricted(2);
        let profile = crate::profile::resolve(&config, "balanced", &host).unwrap();
        StatusReport {
            state,
            profile: profile.name.clone(),
            resolved_profile: profile,
            model: "/m.gguf".into(),
            model_id: "m".into(),
            config_generation: 1,
            backend: None,
            restarts: 0,
            last_exit: None,
            governor: None,
            in_flight: 2,
            busy: 2,
            queued: 1,
            uptime_s: 3.0,
            tokens: Default::default(),
            backend_rung: None,
            situation: None,
            upstreams: Vec::new(),
        }
    }

    /// The value of the sample `line_start` (name and labels as written) in `text`.
    pub(crate) fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn exit_statuses_classify_by_signal_or_code() {
        // Raw wait statuses: a signal in the low bits, an exit code in the second byte.
        assert_eq!(
            RestartReason::exited(std::process::ExitStatus::from_raw(9)),
            RestartReason::Signal
        );
        assert_eq!(
            RestartReason::exited(std::process::ExitStatus::from_raw(1 << 8)),
            RestartReason::ExitCode
        );
        assert_eq!(
            RestartReason::exited(std::process::ExitStatus::from_raw(0)),
            RestartReason::ExitCode
        );
    }

    #[tokio::test]
    async fn a_scrape_shows_events_and_readings() {
        let online = crate::host::Host::detect().online_cpus;
        let m = Metrics::new(&slo(), online, Default::default());
        m.backend_restarted(RestartReason::Signal);
        m.backend_restarted(RestartReason::Signal);
        m.backend_restarted(RestartReason::Hang);
        m.count_tokens(Tokens {
            prompt: 25,
            cached: 20,
            generated: 3,
        });
        let text = m.render(&report(State::Ready), None).await;
        let restarts = |reason: &str| {
            sample(
                &text,
                &format!("sentinel_backend_restarts_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(restarts("signal"), Some(2.0), "{text}");
        assert_eq!(restarts("hang"), Some(1.0));
        // Every reason is there from the start, so a rate can be taken before the first one.
        assert_eq!(restarts("start_timeout"), Some(0.0));
        assert_eq!(m.restarts(RestartReason::Signal), 2);
        assert_eq!(sample(&text, "sentinel_prompt_tokens_total"), Some(25.0));
        assert_eq!(
            sample(&text, "sentinel_prompt_cached_tokens_total"),
            Some(20.0)
        );
        assert_eq!(sample(&text, "sentinel_generated_tokens_total"), Some(3.0));
        assert_eq!(
            sample(&text, "sentinel_backend_state{state=\"ready\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "sentinel_backend_state{state=\"starting\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "sentinel_requests_in_flight"), Some(2.0));
        assert_eq!(sample(&text, "sentinel_requests_queued"), Some(1.0));
        assert!(sample(&text, "sentinel_supervisor_resident_memory_bytes").unwrap() > 0.0);
        assert!(sample(&text, "sentinel_system_cpu_busy_seconds_total").unwrap() > 0.0);
        assert_eq!(sample(&text, "sentinel_system_cpus"), Some(online as f64));
        // No backend, no governor: their samples are left out rather than reported as 0.
        assert!(!text.contains("sentinel_backend_cpu_seconds"), "{text}");
        assert!(!text.contains("sentinel_governor_budget_cores"));
        assert!(!text.contains("sentinel_llamacpp_scrape_success"));
        assert!(text.contains("# TYPE sentinel_backend_restarts_total counter"));
        assert!(text.contains("# TYPE sentinel_slo_system_cpu_window_ratio histogram"));
    }
}
