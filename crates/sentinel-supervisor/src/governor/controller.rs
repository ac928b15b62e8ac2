//! The duty-cycle controller: how long the child may run in each period so that its average CPU
//! matches the budget.
//!
//! Feed-forward: a child with `usable` busy threads that runs a fraction `f` of every period uses
//! about `f * usable` cores, so `f = cpus / usable`. That alone lands close to the budget; a slow
//! integral correction from measured CPU (one step per feedback window, about a second) absorbs
//! what the model misses (signal latency, threads that are not always busy, other load), bounded
//! to `+-max_correction` of the feed-forward so a bad reading can never open the throttle wide.
//! The correction starts below zero (conservative): the first second never exceeds the budget.
//!
//! Pure logic, no clocks: callers feed elapsed wall time and CPU time, tests simulate both.

use std::time::Duration;

/// How busy the whole machine was during a feedback window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Machine {
    /// Other processes left room: a shortfall of the child is the model's error.
    HasRoom,
    /// Every CPU was busy: a shortfall is other processes' doing, not the model's.
    Saturated,
}

/// Tuning of the feedback loop (from the `[governor]` config section).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Feedback {
    /// Wall time over which measured CPU is averaged before one correction step.
    pub window: Duration,
    /// Integral gain: correction change per unit of relative error per window.
    pub gain: f64,
    /// Bound of the correction, as a fraction of the feed-forward (0.3 = +-30 %).
    pub max_correction: f64,
    /// Correction at start (negative = conservative).
    pub initial_correction: f64,
}

/// The smallest run time per period we ever hand out, as a fraction of the period; below this
/// the signal overhead dominates and the child would barely progress.
const MIN_FRACTION: f64 = 0.02;

/// Windows in which the child used less than this share of what it was allowed are not
/// compute-bound (waiting on I/O or on a client): they say nothing about the model and are
/// ignored, so the correction does not wind up while the child idles.
const DEMAND_THRESHOLD: f64 = 0.6;

/// Computes the run time per period for one child.
#[derive(Clone, Debug)]
pub(crate) struct DutyController {
    cpus: f64,
    period: Duration,
    usable: f64,
    feedback: Feedback,
    correction: f64,
    window_wall: Duration,
    window_cpu: Duration,
    /// Run fraction that was in force during the current window (for the demand check).
    window_allowed: f64,
}

impl DutyController {
    /// A controller for a budget of `cpus` cores, a child that can keep `usable` CPUs busy
    /// (`min(threads, allowed cpus)`, at least 1) and a period.
    pub(crate) fn new(cpus: f64, usable: usize, period: Duration, feedback: Feedback) -> Self {
        let max = feedback.max_correction.abs();
        Self {
            cpus: cpus.max(0.0),
            period,
            usable: usable.max(1) as f64,
            feedback,
            correction: feedback.initial_correction.clamp(-max, max),
            window_wall: Duration::ZERO,
            window_cpu: Duration::ZERO,
            window_allowed: 0.0,
        }
    }

    /// The budget in cores.
    pub(crate) fn cpus(&self) -> f64 {
        self.cpus
    }

    /// Changes the budget (adaptive mode) without losing the learned correction.
    pub(crate) fn set_cpus(&mut self, cpus: f64) {
        self.cpus = cpus.max(0.0);
    }

    /// CPUs the child can keep busy, as the controller counts them.
    pub(crate) fn usable(&self) -> f64 {
        self.usable
    }

    /// Changes the number of CPUs the child can keep busy (its thread count changed).
    pub(crate) fn set_usable(&mut self, usable: usize) {
        self.usable = usable.max(1) as f64;
    }

    /// The run fraction from the budget alone.
    pub(crate) fn feed_forward(&self) -> f64 {
        self.cpus / self.usable
    }

    /// The current relative correction, within `+-max_correction`.
    pub(crate) fn correction(&self) -> f64 {
        self.correction
    }

    /// The share of each period the child may run, in `MIN_FRACTION..=1.0`.
    pub(crate) fn fraction(&self) -> f64 {
        if self.unthrottled() {
            return 1.0;
        }
        (self.feed_forward() * (1.0 + self.correction)).clamp(MIN_FRACTION, 1.0)
    }

    /// True when the budget covers every CPU the child can keep busy: it cannot exceed the
    /// budget, so it is never stopped (whatever the correction says).
    pub(crate) fn unthrottled(&self) -> bool {
        self.feed_forward() >= 1.0 - 1e-9
    }

    /// The run time of the next period.
    pub(crate) fn run_time(&self) -> Duration {
        self.period.mul_f64(self.fraction())
    }

    /// The period.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// Feeds one measurement: `cpu` used by the child during `wall` of throttling. Returns the
    /// measured cores when a feedback window closed.
    #[cfg(test)]
    pub(crate) fn observe(&mut self, wall: Duration, cpu: Duration) -> Option<f64> {
        self.observe_on(wall, cpu, Machine::HasRoom)
    }

    /// Feeds one measurement (`cpu` used by the child during `wall` of throttling), telling how
    /// busy the machine was during the window: when it was [`Machine::Saturated`] a shortfall
    /// is other processes' doing, not the model's, and the correction is not raised (no
    /// wind-up that would overshoot once they stop). Returns the measured cores when a feedback
    /// window closed.
    pub(crate) fn observe_on(
        &mut self,
        wall: Duration,
        cpu: Duration,
        machine: Machine,
    ) -> Option<f64> {
        self.window_allowed += self.fraction() * wall.as_secs_f64();
        self.window_wall += wall;
        self.window_cpu += cpu;
        if self.window_wall < self.feedback.window || self.window_wall.is_zero() {
            return None;
        }
        let wall_s = self.window_wall.as_secs_f64();
        let measured = self.window_cpu.as_secs_f64() / wall_s;
        let allowed_cores = self.window_allowed / wall_s * self.usable;
        let compute_bound = measured >= DEMAND_THRESHOLD * allowed_cores.min(self.cpus);
        if self.cpus > 0.0 && compute_bound {
            let error = (self.cpus - measured) / self.cpus;
            let error = match machine {
                Machine::Saturated => error.min(0.0),
                Machine::HasRoom => error,
            };
            let max = self.feedback.max_correction.abs();
            self.correction = (self.correction + self.feedback.gain * error).clamp(-max, max);
        }
        self.reset_window();
        Some(measured)
    }

    /// Throttled wall time gathered in the current (partial) window.
    pub(crate) fn window_wall(&self) -> Duration {
        self.window_wall
    }

    /// Forgets a partial window (call when throttling pauses, so rest time is not averaged in).
    pub(crate) fn reset_window(&mut self) {
        self.window_wall = Duration::ZERO;
        self.window_cpu = Duration::ZERO;
        self.window_allowed = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(20);

    fn controller(cpus: f64, usable: usize) -> DutyController {
        DutyController::new(cpus, usable, PERIOD, shipped_feedback())
    }

    /// The feedback tuning of the shipped config.toml.
    fn shipped_feedback() -> Feedback {
        crate::config::Config::builtin()
            .unwrap()
            .governor
            .feedback()
    }

    /// A simulated child: `threads` busy threads, each run slot costs `overrun` extra run time
    /// (signal latency), returns CPU used over one window.
    fn simulate_window(c: &mut DutyController, threads: f64, overrun: Duration) -> Option<f64> {
        let periods = 50;
        let mut out = None;
        for _ in 0..periods {
            let run = (c.run_time() + overrun).min(PERIOD);
            let cpu = run.mul_f64(threads);
            out = c.observe(PERIOD, cpu).or(out);
        }
        out
    }

    #[test]
    fn feed_forward_divides_budget_by_usable_cpus() {
        let c = controller(0.5, 2);
        assert!((c.feed_forward() - 0.25).abs() < 1e-9);
        let c = controller(1.0, 1);
        assert!(c.unthrottled());
        let c = controller(3.0, 2);
        assert_eq!(c.fraction(), 1.0);
        assert_eq!(controller(0.5, 0).feed_forward(), 0.5);
    }

    #[test]
    fn starts_conservative() {
        let c = controller(0.5, 1);
        assert!(c.fraction() < 0.5);
        assert!(c.run_time() < Duration::from_millis(10));
        assert!(c.run_time() >= Duration::from_millis(8));
    }

    #[test]
    fn correction_stays_within_bounds() {
        let mut c = controller(0.5, 2);
        // A child that uses nothing extra but reads far above the budget (e.g. a miscount).
        for _ in 0..50 {
            c.observe(Duration::from_secs(1), Duration::from_secs(2));
        }
        assert!((c.correction() + 0.3).abs() < 1e-9);
        assert!((c.fraction() - 0.25 * 0.7).abs() < 1e-9);
        // And far below while compute-bound: a child with more threads than assumed halves.
        let mut c = controller(0.5, 1);
        for _ in 0..50 {
            let allowed = c.fraction();
            c.observe(
                Duration::from_secs(1),
                Duration::from_secs_f64(allowed * 0.7),
            );
        }
        assert!((c.correction() - 0.3).abs() < 1e-9);
    }

    #[test]
    fn converges_despite_signal_latency() {
        let mut c = controller(0.5, 2);
        let overrun = Duration::from_micros(700);
        let mut last = 0.0;
        for _ in 0..20 {
            if let Some(m) = simulate_window(&mut c, 2.0, overrun) {
                last = m;
            }
        }
        assert!((last - 0.5).abs() < 0.01, "measured {last}");
        assert!(c.correction() < 0.0);
    }

    #[test]
    fn idle_windows_do_not_wind_up() {
        let mut c = controller(0.5, 1);
        let before = c.correction();
        for _ in 0..10 {
            c.observe(Duration::from_secs(1), Duration::from_millis(20));
        }
        assert_eq!(c.correction(), before);
    }

    #[test]
    fn saturated_machine_does_not_raise_the_correction() {
        let mut c = controller(0.5, 1);
        let before = c.correction();
        for _ in 0..10 {
            c.observe_on(
                Duration::from_secs(1),
                Duration::from_millis(400),
                Machine::Saturated,
            );
        }
        assert_eq!(c.correction(), before);
        c.observe_on(
            Duration::from_secs(1),
            Duration::from_millis(700),
            Machine::Saturated,
        );
        assert!(c.correction() < before);
    }

    #[test]
    fn no_window_no_step() {
        let mut c = controller(0.5, 1);
        assert_eq!(c.observe(Duration::from_millis(500), Duration::ZERO), None);
        c.reset_window();
        assert_eq!(
            c.observe(Duration::from_millis(600), Duration::from_millis(300)),
            None
        );
        assert!(c
            .observe(Duration::from_millis(400), Duration::from_millis(200))
            .is_some());
    }

    #[test]
    fn tiny_budget_clamps_to_minimum_run_time() {
        let c = controller(0.001, 2);
        assert_eq!(c.fraction(), MIN_FRACTION);
        let mut c = controller(0.5, 1);
        c.set_cpus(0.2);
        assert!((c.feed_forward() - 0.2).abs() < 1e-9);
    }
}
