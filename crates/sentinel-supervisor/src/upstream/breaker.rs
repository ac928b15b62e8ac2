//! Each upstream's circuit breaker: `Closed` counts failures in a row (connect errors,
//! timeouts, 429, 5xx); at `failures_to_open` (or at once when the upstream sent
//! `Retry-After`) it goes `Open` for a cool-down, which doubles up to `cool_down_max` each time a
//! probe fails; after the cool-down one real request probes it (`HalfOpen`, no other request
//! goes there meanwhile), and the probe's outcome closes it or opens it again. A plain state
//! machine on `tokio::time::Instant`, so its tests run on paused time.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub failures_to_open: u32,
    pub cool_down: Duration,
    pub cool_down_max: Duration,
}

/// The breaker's state as `/status` and `/metrics` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub(crate) const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Counting failures in a row (`Breaker::failures`).
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen,
}

/// What [`Breaker::try_acquire`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The breaker is closed.
    Normal,
    /// The one request that probes an upstream after its cool-down.
    Probe,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: State,
    /// The cool-down the next opening uses (doubles while probes fail).
    cool_down: Duration,
    /// Failures in a row, kept across open and half-open for `/status`.
    failures: u32,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            state: State::Closed,
            cool_down: settings.cool_down,
            failures: 0,
        }
    }

    /// Whether a request may go to this upstream now; an open breaker whose cool-down has
    /// passed lets exactly one through as its probe.
    pub(crate) fn try_acquire(&mut self, now: Instant) -> Option<Pass> {
        match self.state {
            State::Closed => Some(Pass::Normal),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Some(Pass::Probe)
            }
            State::Open { .. } | State::HalfOpen => None,
        }
    }

    /// The upstream answered (any status but 429 and 5xx).
    pub(crate) fn success(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
        self.cool_down = self.settings.cool_down;
    }

    /// The upstream failed; `retry_after` is its own `Retry-After`, which opens the breaker at
    /// once for at least that long (capped at `cool_down_max`).
    pub(crate) fn failure(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let open_for = match self.state {
            State::Closed => {
                if self.failures < self.settings.failures_to_open && retry_after.is_none() {
                    return;
                }
                self.cool_down
            }
            State::HalfOpen | State::Open { .. } => {
                self.cool_down = (self.cool_down * 2).min(self.settings.cool_down_max);
                self.cool_down
            }
        };
        let open_for = retry_after
            .map_or(open_for, |r| r.max(open_for))
            .min(self.settings.cool_down_max);
        self.state = State::Open {
            until: now + open_for,
        };
    }

    /// A request that passed ended without telling anything about the upstream (the client
    /// went away first): a probe's place goes to the next request.
    pub(crate) fn release(&mut self, now: Instant) {
        if self.state == State::HalfOpen {
            self.state = State::Open { until: now };
        }
    }

    pub(crate) fn state_name(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// How long until an open breaker lets a probe through (`None` unless open).
    pub(crate) fn retry_in(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open { until } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures_to_open: 3,
            cool_down: Duration::from_secs(5),
            cool_down_max: Duration::from_secs(30),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_a_success_resets_the_count() {
        let mut b = breaker();
        let now = Instant::now();
        b.failure(now, None);
        b.failure(now, None);
        b.success();
        b.failure(now, None);
        b.failure(now, None);
        assert_eq!(b.try_acquire(now), Some(Pass::Normal));
        b.failure(now, None);
        assert_eq!(b.state_name(), BreakerState::Open);
        assert_eq!(b.try_acquire(Instant::now()), None);
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_after_the_cool_down_closes_or_reopens_with_backoff() {
        let mut b = breaker();
        for _ in 0..3 {
            b.failure(Instant::now(), None);
        }
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(b.try_acquire(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.try_acquire(Instant::now()), Some(Pass::Probe));
        // Only one probe at a time.
        assert_eq!(b.try_acquire(Instant::now()), None);
        assert_eq!(b.state_name(), BreakerState::HalfOpen);
        // The probe fails: open again for twice as long.
        b.failure(Instant::now(), None);
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.try_acquire(Instant::now()), Some(Pass::Probe));
        b.failure(Instant::now(), None);
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(b.try_acquire(Instant::now()), Some(Pass::Probe));
        b.failure(Instant::now(), None);
        // Capped at cool_down_max.
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.try_acquire(Instant::now()), Some(Pass::Probe));
        b.success();
        assert_eq!(b.state_name(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        // The next opening starts from cool_down again.
        for _ in 0..3 {
            b.failure(Instant::now(), None);
        }
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_opens_at_once_for_at_least_that_long_capped() {
        let mut b = breaker();
        b.failure(Instant::now(), Some(Duration::from_secs(12)));
        assert_eq!(b.state_name(), BreakerState::Open);
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(12)));
        let mut b = breaker();
        b.failure(Instant::now(), Some(Duration::from_secs(1)));
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(5)));
        let mut b = breaker();
        b.failure(Instant::now(), Some(Duration::from_secs(3600)));
        assert_eq!(b.retry_in(Instant::now()), Some(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_abandoned_by_its_client_leaves_the_place_to_the_next_request() {
        let mut b = breaker();
        for _ in 0..3 {
            b.failure(Instant::now(), None);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.try_acquire(Instant::now()), Some(Pass::Probe));
        b.release(Instant::now());
        assert_eq!(b.try_acquire(Instant::now()), Some(Pass::Probe));
        // Releasing a closed breaker changes nothing.
        b.success();
        b.release(Instant::now());
        assert_eq!(b.state_name(), BreakerState::Closed);
    }
}
