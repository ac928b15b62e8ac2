//! The backend's lifecycle states and the status the supervisor publishes on a `watch`
//! channel for the proxy, `/health` and `/status`.

use serde::Serialize;

/// Where the backend is in its lifecycle. Only the lifecycle task changes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Launched, loading the model; not serving yet.
    Starting {
        attempt: u32,
    },
    /// Serving.
    Ready,
    /// Serving, but the last liveness probes failed.
    Unhealthy {
        failed_probes: u32,
    },
    /// Waiting before the next launch.
    Backoff {
        delay_ms: u64,
        reason: String,
    },
    /// Crash loop: no more restarts.
    Failed {
        reason: String,
        last_lines: Vec<String>,
    },
    /// Shutting down.
    Stopping,
    Stopped,
}

impl State {
    /// The state's name, as in `/health`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting { .. } => "starting",
            State::Ready => "ready",
            State::Unhealthy { .. } => "unhealthy",
            State::Backoff { .. } => "backoff",
            State::Failed { .. } => "failed",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }

    /// Whether requests can be forwarded now.
    pub fn serving(&self) -> bool {
        matches!(self, State::Ready | State::Unhealthy { .. })
    }

    /// Whether requests should wait for a (re)start instead of failing now.
    pub fn will_serve(&self) -> bool {
        matches!(
            self,
            State::Starting { .. } | State::Backoff { .. } | State::Ready | State::Unhealthy { .. }
        )
    }
}

/// The running backend, as far as clients of the supervisor need to know.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendInfo {
    pub pid: i32,
    pub port: u16,
    #[serde(skip)]
    pub base_url: String,
    #[serde(skip)]
    pub api_key: crate::backend::launch::BackendKey,
    /// Distinguishes launches, so a retry can tell a fresh backend from the one that failed.
    pub generation: u64,
}

/// What the supervisor publishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub state: State,
    pub backend: Option<BackendInfo>,
    pub restarts: u32,
}

impl Status {
    pub fn initial() -> Status {
        Status {
            state: State::Starting { attempt: 0 },
            backend: None,
            restarts: 0,
        }
    }
}
