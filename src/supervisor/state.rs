//! The backend's lifecycle states and the status the supervisor publishes on a `watch`
//! channel for the proxy, `/health` and `/status` (whose shape is [`crate::status`]).

use serde::{Deserialize, Serialize};

/// Where the backend is in its lifecycle. Only the lifecycle task changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A [`State`] without its details: the `state` of `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Starting,
    Ready,
    Unhealthy,
    Backoff,
    Failed,
    Stopping,
    Stopped,
}

impl StateName {
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Starting => "starting",
            StateName::Ready => "ready",
            StateName::Unhealthy => "unhealthy",
            StateName::Backoff => "backoff",
            StateName::Failed => "failed",
            StateName::Stopping => "stopping",
            StateName::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    /// The state's name, as in `/health`.
    pub fn name(&self) -> StateName {
        match self {
            State::Starting { .. } => StateName::Starting,
            State::Ready => StateName::Ready,
            State::Unhealthy { .. } => StateName::Unhealthy,
            State::Backoff { .. } => StateName::Backoff,
            State::Failed { .. } => StateName::Failed,
            State::Stopping => StateName::Stopping,
            State::Stopped => StateName::Stopped,
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

/// The running backend, as the proxy needs to reach it (`/status` shows part of it, see
/// [`crate::status::BackendReport`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    pub pid: i32,
    pub port: u16,
    pub base_url: String,
    pub api_key: String,
    /// Distinguishes launches, so a retry can tell a fresh backend from the one that failed.
    pub generation: u64,
}

/// What the lifecycle task publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    pub backend: Option<BackendInfo>,
    pub restarts: u32,
    /// How the previous launch ended (`None` until one has failed).
    pub last_exit: Option<String>,
}

impl Status {
    pub fn initial() -> Status {
        Status {
            state: State::Starting { attempt: 0 },
            backend: None,
            restarts: 0,
            last_exit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_serialised_tags() {
        let states = [
            State::Starting { attempt: 2 },
            State::Ready,
            State::Unhealthy { failed_probes: 1 },
            State::Backoff {
                delay_ms: 100,
                reason: "exited".into(),
            },
            State::Failed {
                reason: "crash loop".into(),
                last_lines: vec!["error".into()],
            },
            State::Stopping,
            State::Stopped,
        ];
        for state in states {
            let json = serde_json::to_value(&state).unwrap();
            assert_eq!(json["state"], state.name().as_str(), "{json}");
            assert_eq!(serde_json::to_value(state.name()).unwrap(), json["state"]);
            assert_eq!(serde_json::from_value::<State>(json).unwrap(), state);
        }
    }
}
