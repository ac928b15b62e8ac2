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
    /// Crash loop: no restarts with backoff any more; with `supervisor.on_crash_loop =
    /// "retry"`, one try at `next_retry_at` (and at once when the model or config file
    /// changes).
    Failed {
        reason: String,
        last_lines: Vec<String>,
        /// When the next try is (RFC 3339, UTC); `None` when none is planned.
        #[serde(default)]
        next_retry_at: Option<String>,
        /// Seconds until then, as of the moment `/status` answered.
        #[serde(default)]
        next_retry_in_s: Option<u64>,
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
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn name(&self) -> StateName {
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

    /// Seconds a client should wait before trying again while the backend does not serve
    /// (`Retry-After`): the time to the next try when failed, a few seconds otherwise.
    pub(crate) fn retry_after_s(&self) -> u64 {
        match self {
            State::Failed {
                next_retry_in_s: Some(s),
                ..
            } => (*s).clamp(1, 3600),
            State::Failed { .. } => 60,
            _ => 5,
        }
    }

    /// Recomputes `next_retry_in_s` of a failed state from `next_retry_at` as of `now`.
    pub(crate) fn refresh_retry_in(&mut self, now: std::time::SystemTime) {
        if let State::Failed {
            next_retry_at: Some(at),
            next_retry_in_s,
            ..
        } = self
        {
            if let Ok(at) = humantime::parse_rfc3339(at) {
                *next_retry_in_s = Some(
                    at.duration_since(now)
                        .map(|d| d.as_secs_f64().ceil() as u64)
                        .unwrap_or(0),
                );
            }
        }
    }

    /// Whether requests should wait for a (re)start instead of failing now.
    pub(crate) fn will_serve(&self) -> bool {
        matches!(
            self,
            State::Starting { .. } | State::Backoff { .. } | State::Ready | State::Unhealthy { .. }
        )
    }
}

/// The running backend, as the proxy needs to reach it (`/status` shows part of it, see
/// [`crate::status::BackendReport`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BackendInfo {
    pub pid: i32,
    pub port: u16,
    pub base_url: String,
    pub api_key: crate::backend::launch::BackendKey,
    /// Distinguishes launches, so a retry can tell a fresh backend from the one that failed.
    pub generation: u64,
}

/// What the lifecycle task publishes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Status {
    pub state: State,
    pub backend: Option<BackendInfo>,
    pub restarts: u32,
    /// How the previous launch ended (`None` until one has failed).
    pub last_exit: Option<String>,
    /// The rung of the backend ladder climbed to at run time, after a CPU fault (`None`: the
    /// one setup chose, which the proxy's live settings name; a reload resets it).
    pub climbed: Option<crate::status::BackendRung>,
}

impl Status {
    pub(crate) fn initial() -> Status {
        Status {
            state: State::Starting { attempt: 0 },
            backend: None,
            restarts: 0,
            last_exit: None,
            climbed: None,
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
                next_retry_at: Some("2030-01-01T00:00:00Z".into()),
                next_retry_in_s: Some(300),
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

    #[test]
    fn retry_in_counts_down_to_the_planned_try() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
        let mut state = State::Failed {
            reason: "crash loop".into(),
            last_lines: vec![],
            next_retry_at: Some(humantime::format_rfc3339_seconds(at).to_string()),
            next_retry_in_s: None,
        };
        state.refresh_retry_in(at - std::time::Duration::from_secs(90));
        assert!(matches!(
            state,
            State::Failed {
                next_retry_in_s: Some(90),
                ..
            }
        ));
        assert_eq!(state.retry_after_s(), 90);
        state.refresh_retry_in(at + std::time::Duration::from_secs(5));
        assert!(matches!(
            state,
            State::Failed {
                next_retry_in_s: Some(0),
                ..
            }
        ));
        assert_eq!(state.retry_after_s(), 1);
        assert_eq!(State::Starting { attempt: 1 }.retry_after_s(), 5);
    }
}
