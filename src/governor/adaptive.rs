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

use std::time::Duration;

/// Settings of the adaptive budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveParams {
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
pub struct AdaptiveBudget {
    params: AdaptiveParams,
    current: f64,
}

impl AdaptiveBudget {
    pub fn new(params: AdaptiveParams) -> Self {
        let floor = params.floor.min(params.base).max(0.0);
        let params = AdaptiveParams { floor, ..params };
        Self {
            current: params.base,
            params,
        }
    }

    /// The budget in cores now.
    pub fn current(&self) -> f64 {
        self.current
    }

    /// Updates the budget from one window's readings, all in cores: `machine_cores` (what every
    /// process on the machine ran, the child included), `own_cores` (what the child ran) and
    /// `capacity_cores` (what this process may use), over a window of `dt`.
    pub fn update(
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
