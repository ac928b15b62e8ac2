//! What a duty-cycle limiter publishes while it runs: its readings for the governor's
//! snapshot, and the stopped time it adds to the [`StoppedTime`] it was given.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Live readings published by the limiter thread (for the governor's snapshot, see
/// [`crate::governor::snapshot`]).
#[derive(Debug, Default)]
pub(crate) struct LimiterReadings {
    pub(super) budget: AtomicU64,
    pub(super) fraction: AtomicU64,
    pub(super) throttling: AtomicBool,
    pub(super) finished: AtomicBool,
}

/// A copy of the readings at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LimiterSnapshot {
    /// The budget in force (lower than the profile's in adaptive mode), in cores.
    pub budget: f64,
    /// Share of each period the child runs.
    pub fraction: f64,
    /// True while requests are in flight and the child is being duty-cycled.
    pub throttling: bool,
    /// True once the thread has ended (child gone, stopped, or an error).
    pub finished: bool,
}

pub(super) fn store(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

impl LimiterReadings {
    /// A copy of the readings now.
    pub(crate) fn snapshot(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            budget: load(&self.budget),
            fraction: load(&self.fraction),
            throttling: self.throttling.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }
}

/// How long duty cycles have held their children stopped, SIGSTOP to SIGCONT: a clock the
/// limiters given it advance, and its readers compare two readings of (the liveness watchdog:
/// a backend held stopped is starved, not hung; `/metrics`: the throttled seconds). The
/// supervisor makes one for its backends and hands it to each governor it starts and to the
/// readers; clones share the count.
#[derive(Clone, Debug, Default)]
pub(crate) struct StoppedTime(Arc<AtomicU64>);

impl StoppedTime {
    /// The stopped time counted so far.
    pub(crate) fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    pub(super) fn add(&self, stopped: Duration) {
        self.0
            .fetch_add(stopped.as_nanos() as u64, Ordering::Relaxed);
    }
}
