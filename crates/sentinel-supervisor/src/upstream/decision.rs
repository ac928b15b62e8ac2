//! The decision alone: whether a request leaves the host, from the profile's `spill` mode, what
//! the local side looks like (serving, slots busy, requests waiting), the request's deadline and
//! the recent local service times. Pure but for the samples' clock, so it is tested on its own;
//! [`super::spill`] asks it at the three points of `proxy::forward`.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// A profile's `spill`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpillMode {
    /// No prompt leaves the host.
    #[default]
    Never,
    /// When the local backend is not serving or failed before answering.
    WhenUnavailable,
    /// Also when the queue would make a request later than its deadline.
    WhenLate,
}

/// Why a request left the host: the `reason` of `sentinel_spills_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpillReason {
    /// The local backend was not serving (starting, restarting, backoff, failed).
    Unavailable,
    /// The queue would have made it later than its deadline.
    Late,
    /// The local attempt failed before its response head.
    LocalFailed,
}

impl SpillReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SpillReason::Unavailable => "unavailable",
            SpillReason::Late => "late",
            SpillReason::LocalFailed => "local_failed",
        }
    }
}

/// The running profile's spill settings (part of the proxy's live settings, so a reload
/// changes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SpillPolicy {
    pub mode: SpillMode,
    pub deadline: Option<Duration>,
}

/// The routes that may spill: completions only (`/tokenize`, `/props` are llama.cpp's own, and
/// another model's embeddings would not match the local ones).
pub(crate) fn route_spills(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// How many recent local requests the service-time estimate averages, and how old one may be.
const SAMPLES: usize = 16;
const SAMPLE_TTL: Duration = Duration::from_secs(60);

/// Service times of recent local requests (admission to the end of the body).
#[derive(Debug, Default)]
pub(crate) struct ServiceTimes {
    samples: std::sync::Mutex<VecDeque<(Instant, Duration)>>,
}

impl ServiceTimes {
    pub(crate) fn record(&self, took: Duration) {
        let mut s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((Instant::now(), took));
    }

    /// The mean of the samples younger than a minute; `None` without any (then nothing is
    /// known to be late, and the next request is served locally and measured).
    pub(crate) fn mean(&self, now: Instant) -> Option<Duration> {
        let s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent: Vec<Duration> = s
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < SAMPLE_TTL)
            .map(|(_, d)| *d)
            .collect();
        (!recent.is_empty()).then(|| recent.iter().sum::<Duration>() / recent.len() as u32)
    }
}

/// When a request that arrives now would finish locally: the rounds of service ahead of it
/// (requests holding a slot and waiting, per slot) plus its own.
pub(crate) fn estimate(mean: Duration, busy: usize, waiting: usize, slots: usize) -> Duration {
    let rounds = (busy + waiting) / slots.max(1);
    mean * (rounds as u32 + 1)
}

/// What the local side looks like when a request arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalView {
    pub(crate) serving: bool,
    pub(crate) busy: usize,
    pub(crate) waiting: usize,
    pub(crate) slots: usize,
}

/// Whether a request goes to the central tier before it tries the local backend.
pub(crate) fn decide(
    policy: SpillPolicy,
    local: LocalView,
    deadline: Option<Duration>,
    mean: Option<Duration>,
) -> Option<SpillReason> {
    match policy.mode {
        SpillMode::Never => None,
        _ if !local.serving => Some(SpillReason::Unavailable),
        SpillMode::WhenUnavailable => None,
        SpillMode::WhenLate => {
            let (deadline, mean) = (deadline?, mean?);
            (estimate(mean, local.busy, local.waiting, local.slots) > deadline)
                .then_some(SpillReason::Late)
        }
    }
}

/// `X-Sentinel-Deadline`: seconds (`2.5`) or a duration (`2500ms`).
pub(crate) fn parse_deadline(value: &str) -> Option<Duration> {
    let value = value.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
        .map(Duration::from_secs_f64)
        .or_else(|| humantime::parse_duration(value).ok())
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn view(serving: bool, busy: usize, waiting: usize) -> LocalView {
        LocalView {
            serving,
            busy,
            waiting,
            slots: 1,
        }
    }

    fn policy(mode: SpillMode) -> SpillPolicy {
        SpillPolicy {
            mode,
            deadline: None,
        }
    }

    #[test]
    fn never_spills_whatever_the_local_side_does() {
        let s = Some(Duration::from_secs(1));
        assert_eq!(
            decide(
                policy(SpillMode::Never),
                view(false, 1, 9),
                s,
                Some(Duration::from_secs(60))
            ),
            None
        );
    }

    #[test]
    fn unavailable_spills_in_both_modes_and_late_only_in_when_late() {
        for mode in [SpillMode::WhenUnavailable, SpillMode::WhenLate] {
            assert_eq!(
                decide(policy(mode), view(false, 0, 0), None, None),
                Some(SpillReason::Unavailable)
            );
        }
        let deadline = Some(Duration::from_millis(2500));
        let mean = Some(Duration::from_secs(1));
        let late = Some(SpillReason::Late);
        // (mode, local side, deadline, mean service time, decision)
        let cases = [
            (
                SpillMode::WhenUnavailable,
                view(true, 1, 5),
                deadline,
                mean,
                None,
            ),
            // Idle: one round (its own) fits in 2.5 s; one busy and one waiting make three rounds.
            (SpillMode::WhenLate, view(true, 0, 0), deadline, mean, None),
            (SpillMode::WhenLate, view(true, 1, 0), deadline, mean, None),
            (SpillMode::WhenLate, view(true, 1, 1), deadline, mean, late),
            // Nothing measured or no deadline: nothing is known to be late.
            (SpillMode::WhenLate, view(true, 1, 9), deadline, None, None),
            (SpillMode::WhenLate, view(true, 1, 9), None, mean, None),
        ];
        for (mode, local, deadline, mean, expected) in cases {
            assert_eq!(
                decide(policy(mode), local, deadline, mean),
                expected,
                "{mode:?} {local:?} deadline {deadline:?} mean {mean:?}"
            );
        }
    }

    #[test]
    fn estimate_counts_rounds_per_slot() {
        let m = Duration::from_secs(2);
        assert_eq!(estimate(m, 0, 0, 2), m);
        assert_eq!(estimate(m, 2, 0, 2), m * 2);
        assert_eq!(estimate(m, 2, 3, 2), m * 3);
    }

    #[test]
    fn deadline_header_takes_seconds_or_durations() {
        assert_eq!(parse_deadline("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(
            parse_deadline(" 2500ms "),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_deadline("3s"), Some(Duration::from_secs(3)));
        for bad in ["0", "-1", "soon", "", "NaN"] {
            assert_eq!(parse_deadline(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn service_times_average_the_recent_samples_only() {
        let t = ServiceTimes::default();
        assert_eq!(t.mean(Instant::now()), None);
        t.record(Duration::from_secs(1));
        t.record(Duration::from_secs(3));
        assert_eq!(t.mean(Instant::now()), Some(Duration::from_secs(2)));
        tokio::time::advance(SAMPLE_TTL).await;
        assert_eq!(t.mean(Instant::now()), None);
        for _ in 0..SAMPLES + 4 {
            t.record(Duration::from_secs(5));
        }
        assert_eq!(t.samples.lock().unwrap().len(), SAMPLES);
    }

    #[test]
    fn only_completions_spill() {
        assert!(route_spills("/v1/chat/completions"));
        assert!(route_spills("/v1/completions"));
        for other in ["/v1/embeddings", "/tokenize", "/detokenize", "/props"] {
            assert!(!route_spills(other), "{other}");
        }
    }
}
