//! The supervisor's contract with its clients: the shape of `/status` ([`StatusReport`]) and
//! `/health` ([`HealthReport`]), and the line it prints once it listens. The server builds
//! them, the bench and the integration tests read them, all through these types.

use crate::governor::GovernorSnapshot;
use crate::profile::Resolved;
use crate::supervisor::state::{State, StateName};
use serde::{Deserialize, Serialize};

/// What `sentinel-supervisor run` prints on stdout once it listens, followed by its URL
/// (`http://127.0.0.1:PORT`).
pub const LISTENING_PREFIX: &str = "sentinel-supervisor listening on ";

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The lifecycle state as `state`, with its details beside it (`attempt`, `failed_probes`,
    /// `delay_ms` and `reason`, or `reason` and `last_lines`).
    #[serde(flatten)]
    pub state: State,
    /// The profile's name.
    pub profile: String,
    /// Every value of the profile as resolved for this host.
    pub resolved_profile: Resolved,
    /// The model file.
    pub model: String,
    /// The model's id in `/v1/models`.
    pub model_id: String,
    /// The running backend (`null` while none runs).
    pub backend: Option<BackendReport>,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// How the previous launch ended (`null` until one has failed).
    pub last_exit: Option<String>,
    /// The governor of the running backend (`null` while none runs).
    pub governor: Option<GovernorSnapshot>,
    /// Requests holding an admission slot now (the requests' registry, the number the drain
    /// waits for).
    pub in_flight: usize,
    /// What the governor counts as work now: the requests in flight plus model loads and
    /// warm-ups.
    #[serde(default)]
    pub busy: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Seconds since the supervisor started, rounded.
    pub uptime_s: f64,
    /// How many configurations have been applied: 1 at start, +1 for each successful reload
    /// (SIGHUP or `POST /admin/reload`).
    pub config_generation: u64,
    /// Tokens of the answered requests since the supervisor started (the `/metrics` counters).
    #[serde(default)]
    pub tokens: TokenTotals,
    /// Power, presence, heat and the budget in force with its reason (`null` with
    /// `situation.enabled = false`).
    #[serde(default)]
    pub situation: Option<crate::situation::SituationReport>,
    /// Which llama-server build and run-time flags are in use, and why (`backend::ladder`).
    #[serde(default)]
    pub backend_rung: Option<BackendRung>,
    /// The central tier: each `[[upstreams]]` entry's breaker and load (empty without any).
    #[serde(default)]
    pub upstreams: Vec<UpstreamReport>,
}

/// The backend in use in `/status`: the ladder's rung (or the user's `backend.bin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRung {
    /// `native`, `native --no-repack`, `portable`, ..., or `backend.bin`.
    pub rung: String,
    pub program: String,
    /// The flags the rung adds to llama-server's command line.
    pub args: Vec<String>,
    pub why: String,
}

/// One upstream of the central tier in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamReport {
    pub name: String,
    pub url: String,
    /// `closed` (requests go there), `open` (cooling down), `half_open` (one probe in flight).
    pub breaker: crate::upstream::breaker::BreakerState,
    /// Failed tries in a row.
    pub consecutive_failures: u32,
    /// While open: seconds until a probe may go.
    pub retry_in_s: Option<f64>,
    pub in_flight: usize,
    pub max_in_flight: usize,
}

/// Token totals in `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTotals {
    /// Prompt tokens, cached ones included.
    pub prompt: u64,
    /// Prompt tokens llama-server reused from its cache (a warm prefix shows up here).
    pub cached: u64,
    pub generated: u64,
}

/// The running backend in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub pid: i32,
    pub port: u16,
    /// The launch number: a fresh backend has a higher one than the one it replaced.
    pub generation: u64,
    /// llama-server's `--threads` and `--threads-batch`.
    pub threads: usize,
    pub threads_batch: usize,
    pub restarts: u32,
    /// The backend process's resident memory now (`null` where it cannot be read).
    pub rss_bytes: Option<u64>,
}

/// Whether the supervisor serves requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Unavailable,
}

/// `GET /health`: 200 with `ok` while serving, 503 with `unavailable` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: Health,
    pub state: StateName,
    pub profile: String,
    pub restarts: u32,
    /// Why the backend failed, in state `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StatusReport {
    /// The `/health` view of this status.
    pub fn health(&self) -> HealthReport {
        HealthReport {
            status: if self.state.serving() {
                Health::Ok
            } else {
                Health::Unavailable
            },
            state: self.state.name(),
            profile: self.profile.clone(),
            restarts: self.restarts,
            reason: match &self.state {
                State::Failed { reason, .. } => Some(reason.clone()),
                _ => None,
            },
        }
    }
}

/// A status as a running supervisor reports it, for tests.
#[cfg(test)]
pub(crate) fn example() -> StatusReport {
    use crate::governor::{GovernorState, Method, Priority};
    StatusReport {
        state: State::Unhealthy { failed_probes: 1 },
        profile: "balanced".into(),
        resolved_profile: Resolved {
            name: "balanced".into(),
            description: "half a core".into(),
            threads: 1,
            threads_batch: 2,
            cpus: Some(crate::units::Cores::new(0.5).unwrap()),
            cpus_on_battery: Some(0.5),
            cpus_when_idle: crate::units::Cores::new(1.0).ok(),
            priority: Priority::Background,
            slots: 1,
            ctx_size: 4096,
            cache_ram_mib: 256,
            embeddings: false,
            adaptive: None,
            max_tokens: 1024,
            extra_args: vec!["--no-mmap".into()],
            method: Method::Signals,
            period: std::time::Duration::from_millis(2),
            pin_cpu: Some(1),
            grammar: false,
            notes: vec!["threads from the budget".into()],
        },
        model: "/models/m.gguf".into(),
        model_id: "m".into(),
        backend_rung: Some(BackendRung {
            rung: "native --no-repack".into(),
            program: "/c/llama.cpp/x/build/bin/llama-server".into(),
            args: vec!["--no-repack".into()],
            why: "native: failed: SIGILL".into(),
        }),
        backend: Some(BackendReport {
            pid: 1234,
            port: 40000,
            generation: 2,
            threads: 1,
            threads_batch: 2,
            restarts: 1,
            rss_bytes: Some(380 << 20),
        }),
        restarts: 1,
        last_exit: Some("llama-server exited (signal: 9 (SIGKILL))".into()),
        governor: Some(GovernorSnapshot {
            method: Method::Signals,
            cgroup: None,
            budget_cpus: Some(0.5),
            duty: Some(0.48),
            state: GovernorState::Throttling,
            measured_cpus: Some(0.51),
            priority: Priority::Background,
        }),
        in_flight: 1,
        busy: 1,
        queued: 0,
        uptime_s: 12.0,
        upstreams: vec![UpstreamReport {
            name: "central".into(),
            url: "https://llm.example.internal/v1".into(),
            breaker: crate::upstream::breaker::BreakerState::Open,
            consecutive_failures: 3,
            retry_in_s: Some(4.5),
            in_flight: 0,
            max_in_flight: 8,
        }],
        config_generation: 2,
        tokens: TokenTotals {
            prompt: 2200,
            cached: 1100,
            generated: 8,
        },
        situation: Some(crate::situation::SituationReport {
            power: crate::situation::PowerSource::Battery,
            presence: crate::situation::Presence::Idle,
            presence_source: crate::situation::PresenceSource::Interrupts,
            idle_for_s: Some(240.0),
            thermal: crate::situation::Thermal::Normal,
            thermal_detail: None,
            budget_cpus: Some(0.5),
            paused: false,
            state: crate::situation::State::OnBattery,
            reason: "on battery".into(),
            since_s: 31.0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_with_the_state_at_the_top() {
        let report = example();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["state"], "unhealthy");
        assert_eq!(json["failed_probes"], 1);
        assert_eq!(json["backend"]["threads_batch"], 2);
        assert_eq!(json["governor"]["state"], "throttling");
        assert_eq!(json["resolved_profile"]["priority"], "background");
        assert_eq!(json["situation"]["power"], "battery");
        assert_eq!(json["situation"]["state"], "on_battery");
        assert_eq!(json["situation"]["presence_source"], "interrupts");
        assert_eq!(json["backend_rung"]["rung"], "native --no-repack");
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);

        let failed = StatusReport {
            state: State::Failed {
                reason: "crash loop".into(),
                last_lines: vec!["error: bad model".into()],
                next_retry_at: None,
                next_retry_in_s: None,
            },
            backend: None,
            governor: None,
            ..example()
        };
        let text = serde_json::to_string(&failed).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&text).unwrap(), failed);
    }

    #[test]
    fn health_says_ok_only_while_serving_and_why_it_failed() {
        let serving = example().health();
        assert_eq!(serving.status, Health::Ok);
        assert_eq!(serving.state, StateName::Unhealthy);
        let json = serde_json::to_value(&serving).unwrap();
        assert!(json.get("reason").is_none(), "{json}");

        let failed = StatusReport {
            state: State::Failed {
                reason: "crash loop".into(),
                last_lines: vec![],
                next_retry_at: None,
                next_retry_in_s: None,
            },
            ..example()
        }
        .health();
        assert_eq!(failed.status, Health::Unavailable);
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["status"], "unavailable");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["reason"], "crash loop");
        assert_eq!(
            serde_json::from_value::<HealthReport>(json).unwrap(),
            failed
        );
    }
}
