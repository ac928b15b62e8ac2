//! "Yield to the user": a budget that shrinks while other processes keep the machine busy and
//! recovers slowly once they stop.
//!
//! Every feedback window the limiter reports what the whole machine ran and what the child ran,
//! both in cores (the machine's busy share times its *online* CPUs), and the cores this process
//! may use (its affinity mask and cgroup quota, see [`crate::host::Host::allowed_cores`]). What
//! the others use is `machine - own`; the room left under the target is
//! `target * capacity - others`. The budget drops to that room at once (the user's work wins
//! immediately), climbs back at most `recover_per_sec` cores per second (no spike when the user
//! pauses for a moment), and never leaves `floor..=base` (the model always makes progress and
//! never exceeds its profile's budget). Pure logic: tests drive it with made-up readings.
//!
//! # Its own window, across rests
//! The duty cycle rests between requests, and its feedback window only counts throttled time.
//! The adaptive budget reads the machine over a [`LoadWindow`] of wall time instead, which keeps
//! running through the rests: with requests shorter than the window (0.3 s answers, 0.2 s
//! apart) a window still closes every second, so the budget drops about a second after the
//! user's load appears. Others' load is `machine - own` over the whole window, rests included,
//! which is what the user ran meanwhile. A window left open across a long rest (more than
//! [`STALE_WINDOWS`] windows) is restarted instead: it would average the user's load over a
//! time long past.

use crate::meter::SystemTimes;
use std::time::{Duration, Instant};

/// A window open this many window lengths is stale: started again rather than closed.
pub(crate) const STALE_WINDOWS: u32 = 3;

/// One reading of the clocks the adaptive budget compares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LoadReading {
    pub at: Instant,
    /// The child's CPU time so far.
    pub own_cpu: Duration,
    /// The machine's busy and total time so far.
    pub system: SystemTimes,
}

/// What one closed window measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LoadSample {
    pub wall: Duration,
    /// Busy share of the whole machine (every online CPU), 0.0..=1.0.
    pub machine_busy: f64,
    /// The child's CPU in cores.
    pub own_cores: f64,
}

/// The adaptive budget's window of wall time, which survives the duty cycle's rests.
#[derive(Clone, Debug)]
pub(crate) struct LoadWindow {
    window: Duration,
    start: Option<LoadReading>,
}

impl LoadWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            start: None,
        }
    }

    /// True when a reading at `now` would close the window or open one (so the caller reads
    /// the clocks only then, about once per window).
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.start
            .map_or(true, |s| now.saturating_duration_since(s.at) >= self.window)
    }

    /// How long until [`Self::due`] (zero when it is).
    pub(crate) fn until_due(&self, now: Instant) -> Duration {
        self.start.map_or(Duration::ZERO, |s| {
            (s.at + self.window).saturating_duration_since(now)
        })
    }

    /// Opens a window at `reading` unless one is open and fresh (call when throttling starts).
    pub(crate) fn begin(&mut self, reading: LoadReading) {
        let stale = self.start.map_or(true, |s| {
            reading.at.saturating_duration_since(s.at) > self.window * STALE_WINDOWS
        });
        if stale {
            self.start = Some(reading);
        }
    }

    /// Feeds a reading: closes the window when it has lasted its length (a stale one is
    /// restarted instead), returning what it measured, and opens the next at `reading`.
    pub(crate) fn observe(&mut self, reading: LoadReading) -> Option<LoadSample> {
        let Some(start) = self.start else {
            self.start = Some(reading);
            return None;
        };
        let wall = reading.at.saturating_duration_since(start.at);
        if wall < self.window {
            return None;
        }
        self.start = Some(reading);
        if wall > self.window * STALE_WINDOWS {
            return None;
        }
        Some(LoadSample {
            wall,
            machine_busy: reading.system.busy_fraction_since(&start.system),
            own_cores: reading.own_cpu.saturating_sub(start.own_cpu).as_secs_f64()
                / wall.as_secs_f64(),
        })
    }
}

/// Settings of the adaptive budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AdaptiveParams {
    /// The profile's budget in cores: the ceiling.
    pub base: f64,
    /// Total CPU to stay under, as a share of the cores this process may use (0.0..=1.0; on a
    /// host without affinity mask or quota, a share of the machine).
    pub target: f64,
    /// The lowest budget, in cores.
    pub floor: f64,
    /// How fast the budget grows back, in cores per second.
    pub recover_per_sec: f64,
}

/// The current adaptive budget.
#[derive(Clone, Debug)]
pub(crate) struct AdaptiveBudget {
    params: AdaptiveParams,
    current: f64,
}

impl AdaptiveBudget {
    pub(crate) fn new(params: AdaptiveParams) -> Self {
        let floor = params.floor.min(params.base).max(0.0);
        let params = AdaptiveParams { floor, ..params };
        Self {
            current: params.base,
            params,
        }
    }

    /// The budget in cores now.
    #[cfg(test)]
    pub(crate) fn current(&self) -> f64 {
        self.current
    }

    /// Updates the budget from one window's readings, all in cores: `machine_cores` (what every
    /// process on the machine ran, the child included), `own_cores` (what the child ran) and
    /// `capacity_cores` (what this process may use), over a window of `dt`.
    pub(crate) fn update(
        &mut self,
        machine_cores: f64,
        own_cores: f64,
        capacity_cores: f64,
        dt: Duration,
    ) -> f64 {
        let others = (machine_cores.max(0.0) - own_cores).max(0.0);
        let room = self.params.target.clamp(0.0, 1.0) * capacity_cores.max(0.0) - others;
        let wanted = room.clamp(self.params.floor, self.params.base);
        self.current = if wanted < self.current {
            wanted
        } else {
            (self.current + self.params.recover_per_sec * dt.as_secs_f64()).min(wanted)
        };
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn budget() -> AdaptiveBudget {
        AdaptiveBudget::new(AdaptiveParams {
            base: 1.0,
            target: 0.75,
            floor: 0.2,
            recover_per_sec: 0.1,
        })
    }

    #[test]
    fn keeps_full_budget_on_a_quiet_machine() {
        let mut b = budget();
        // Only the child runs: 1 core of 2.
        assert_eq!(b.update(1.0, 1.0, 2.0, SEC), 1.0);
    }

    #[test]
    fn shrinks_at_once_when_others_load_the_machine() {
        let mut b = budget();
        // Others use 1 core, child 1 core: 2 cores busy; room = 1.5 - 1.0 = 0.5.
        let now = b.update(2.0, 1.0, 2.0, SEC);
        assert!((now - 0.5).abs() < 1e-9);
    }

    #[test]
    fn never_below_floor() {
        let mut b = budget();
        assert_eq!(b.update(2.0, 0.0, 2.0, SEC), 0.2);
    }

    #[test]
    fn recovers_slowly_after_load_stops() {
        let mut b = budget();
        b.update(2.0, 0.0, 2.0, SEC);
        let mut steps = 0;
        while b.update(0.2, 0.2, 2.0, SEC) < 1.0 - 1e-9 {
            steps += 1;
            assert!(steps < 20, "did not recover");
        }
        // 0.2 -> 1.0 at 0.1 core/s takes 8 s.
        assert_eq!(steps, 7);
    }

    /// Issue 14 item 5: requests of 0.3 s with rests of 0.2 s (the limiter looks only while a
    /// request is in flight, every 20 ms period), a 2-CPU machine that the others fill from the
    /// start. The budget reaches its floor within about a second, and recovers slowly once the
    /// others stop.
    #[test]
    fn short_requests_with_rests_still_move_the_budget() {
        const ONLINE: f64 = 2.0;
        let mut b = AdaptiveBudget::new(AdaptiveParams {
            base: 1.0,
            target: 0.6,
            floor: 0.2,
            recover_per_sec: 0.1,
        });
        let mut w = LoadWindow::new(SEC);
        let t0 = Instant::now();
        // Cumulative clocks, in seconds: the child runs its budget while answering; the others
        // take the rest of the machine while loaded, nothing after.
        let (mut own, mut busy, mut total) = (0.0f64, 0.0f64, 0.0f64);
        let step = Duration::from_millis(20);
        let loaded_until = Duration::from_secs(3);
        let mut at_floor = None;
        let mut last = b.current();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(8) {
            let answering = t.as_millis() % 500 < 300;
            let own_cores = if answering { b.current() } else { 0.0 };
            let others = if t < loaded_until {
                ONLINE - own_cores
            } else {
                0.1
            };
            own += own_cores * step.as_secs_f64();
            busy += (own_cores + others) * step.as_secs_f64();
            total += ONLINE * step.as_secs_f64();
            t += step;
            if !answering {
                continue;
            }
            let reading = LoadReading {
                at: t0 + t,
                own_cpu: Duration::from_secs_f64(own),
                system: SystemTimes {
                    busy: (busy * 1e9) as u64,
                    total: (total * 1e9) as u64,
                },
            };
            // The limiter starts throttling at each request and then checks every period.
            if t.as_millis() % 500 == 20 {
                w.begin(reading);
            }
            if w.due(t0 + t) {
                if let Some(s) = w.observe(reading) {
                    let now = b.update(s.machine_busy * ONLINE, s.own_cores, ONLINE, s.wall);
                    if t > loaded_until {
                        // Recovering: at most recover_per_sec per second, never a jump.
                        assert!(now - last <= 0.1 * s.wall.as_secs_f64() + 1e-9);
                    }
                    last = now;
                }
            }
            if at_floor.is_none() && (b.current() - 0.2).abs() < 1e-9 {
                at_floor = Some(t);
            }
        }
        let at_floor = at_floor.expect("the budget never reached its floor");
        assert!(
            at_floor <= Duration::from_millis(1100),
            "floor at {at_floor:?}"
        );
        assert!(b.current() > 0.4, "no recovery: {}", b.current());
        assert!(b.current() < 1.0, "recovered at once: {}", b.current());
    }

    #[test]
    fn a_window_left_open_over_a_long_rest_starts_again() {
        let t0 = Instant::now();
        let reading = |s: u64, busy: u64| LoadReading {
            at: t0 + Duration::from_secs(s),
            own_cpu: Duration::ZERO,
            system: SystemTimes {
                busy: busy * 1_000_000_000,
                total: s * 2_000_000_000,
            },
        };
        let mut w = LoadWindow::new(SEC);
        assert!(w.due(t0));
        w.begin(reading(0, 0));
        assert!(!w.due(t0 + Duration::from_millis(500)));
        // A fresh window is kept by the next begin.
        w.begin(reading(2, 4));
        let s = w.observe(reading(2, 4)).unwrap();
        assert_eq!(s.wall, 2 * SEC);
        assert!((s.machine_busy - 1.0).abs() < 1e-9);
        // Ten seconds of rest: the next begin starts over, nothing is averaged over the rest.
        w.begin(reading(12, 4));
        assert_eq!(w.observe(reading(12, 4)), None);
        let s = w.observe(reading(13, 5)).unwrap();
        assert!((s.machine_busy - 0.5).abs() < 1e-9);
    }

    #[test]
    fn floor_above_base_is_capped() {
        let mut b = AdaptiveBudget::new(AdaptiveParams {
            base: 0.5,
            target: 0.5,
            floor: 0.8,
            recover_per_sec: 0.1,
        });
        assert_eq!(b.update(2.0, 0.0, 2.0, SEC), 0.5);
    }
}
