//! Activity from CPU use, for `limit`: a program limited from outside has no proxy to say when it
//! works, so its own CPU time does.
//!
//! The duty cycle wakes every thread of the target twice per period (a stop and a continue reach
//! them all, sleeping or not): on an idle llama-server that is 1-2 % of a core spent for nothing,
//! 100 times a second. The [`UsageGate`] keeps the limiter throttling while the target works and
//! lets it rest (target continued, no signals) once the target has used almost nothing for
//! [`IDLE_WINDOW`]; while resting, one cheap reading per period notices new work, so an idle
//! program that starts working runs free for at most one period (20 ms at most) before the duty
//! cycle is back.

use super::{Activity, ActivityGuard};
use std::time::{Duration, Instant};

/// How long the target must stay (almost) idle before the limiter rests.
pub(crate) const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// Idle means using less than this share of a core over [`IDLE_WINDOW`] (what the stops and
/// continues themselves cost a many-threaded program stays below it) ...
const IDLE_SHARE: f64 = 0.05;
/// ... and less than this part of the budget, so a program held to a tiny budget still counts
/// as working.
const IDLE_BUDGET_PART: f64 = 0.25;
/// While resting, a poll interval in which the target used this share of a core counts as work.
const WAKE_SHARE: f64 = 0.05;
/// The longest poll interval while resting, whatever the period: new work runs free until the
/// next poll, and 20 ms of a full core in a 100 ms window is as much as the after-idle target
/// (budget + 10 points) allows at half a core. Each poll costs a wake-up (about 0.1 ms of CPU on
/// a VM), so resting costs the limiter about 0.5 % of a core.
const MAX_POLL: Duration = Duration::from_millis(20);

/// Whether the limiter should throttle, from the target's cumulative CPU time.
#[derive(Debug)]
pub(crate) struct UsageGate {
    poll: Duration,
    idle_max: Duration,
    active: bool,
    /// Start of the current observation: (when, the target's CPU time then).
    since: (Instant, Duration),
}

impl UsageGate {
    /// A gate for a budget of `cpus` cores and the limiter's `period` (it polls once per period
    /// while resting, at most [`MAX_POLL`] apart); it starts active (the budget holds from the
    /// first period) with the target's CPU time `cpu` at `now`.
    pub(crate) fn new(cpus: f64, period: Duration, now: Instant, cpu: Duration) -> Self {
        let idle_share = IDLE_SHARE.min(cpus * IDLE_BUDGET_PART);
        Self {
            poll: period.min(MAX_POLL),
            idle_max: IDLE_WINDOW.mul_f64(idle_share),
            active: true,
            since: (now, cpu),
        }
    }

    /// True while the limiter should throttle.
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// How long to wait before the next [`observe`](Self::observe): one poll interval while
    /// resting (to notice work quickly), the idle window while throttling.
    pub(crate) fn next_check(&self) -> Duration {
        if self.active {
            IDLE_WINDOW
        } else {
            self.poll
        }
    }

    /// Takes a reading of the target's cumulative CPU time; returns the new state when it
    /// changed (`Some(true)`: throttle, `Some(false)`: rest).
    pub(crate) fn observe(&mut self, now: Instant, cpu: Duration) -> Option<bool> {
        let (t0, cpu0) = self.since;
        let wall = now.saturating_duration_since(t0);
        let used = cpu.saturating_sub(cpu0);
        if self.active && wall < IDLE_WINDOW {
            return None;
        }
        self.since = (now, cpu);
        let flip = if self.active {
            // Scaled to the window, so a late reading does not make a busy target look idle.
            used < self.idle_max.mul_f64(wall.div_duration_f64(IDLE_WINDOW))
        } else {
            used.as_secs_f64() >= wall.max(self.poll).as_secs_f64() * WAKE_SHARE
        };
        self.active ^= flip;
        flip.then_some(self.active)
    }
}

/// Follows `pid`'s CPU time and holds an activity mark on `activity` while it works (see
/// [`UsageGate`]), starting with `first`, taken by the caller so that the budget holds from the
/// first period; returns when the target is gone.
pub(crate) async fn follow(
    pid: i32,
    cpus: f64,
    period: Duration,
    activity: Activity,
    first: ActivityGuard,
) {
    let Some(cpu) = crate::meter::process_cpu(pid) else {
        return;
    };
    let mut gate = UsageGate::new(cpus, period, Instant::now(), cpu);
    let mut mark: Option<ActivityGuard> = Some(first);
    loop {
        tokio::time::sleep(gate.next_check()).await;
        let Some(cpu) = crate::meter::process_cpu(pid) else {
            return;
        };
        match gate.observe(Instant::now(), cpu) {
            Some(true) => {
                tracing::debug!(pid, "target working: throttling");
                mark = Some(activity.begin());
            }
            Some(false) => {
                tracing::debug!(pid, "target idle: resting (no stops)");
                mark = None;
            }
            None => {}
        }
        debug_assert_eq!(mark.is_some(), gate.active());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A gate for half a core whose target stayed idle for the first window: resting, and the
    /// instant it started to.
    fn resting(period: Duration) -> (UsageGate, Instant) {
        let t0 = Instant::now();
        let mut g = UsageGate::new(0.5, period, t0, ms(0));
        assert_eq!(g.observe(t0 + IDLE_WINDOW, ms(0)), Some(false));
        (g, t0 + IDLE_WINDOW)
    }

    #[test]
    fn busy_target_stays_throttled() {
        let t0 = Instant::now();
        let mut g = UsageGate::new(0.5, P, t0, ms(0));
        assert!(g.active());
        assert_eq!(g.next_check(), IDLE_WINDOW);
        // Half a core, as the duty cycle allows: never idle.
        for k in 1..=5u64 {
            assert_eq!(g.observe(t0 + IDLE_WINDOW * k as u32, ms(500 * k)), None);
        }
        assert!(g.active());
    }

    #[test]
    fn no_decision_before_a_full_window() {
        let t0 = Instant::now();
        let mut g = UsageGate::new(0.5, P, t0, ms(0));
        assert_eq!(g.observe(t0 + ms(300), ms(0)), None);
        assert!(g.active());
        assert_eq!(g.observe(t0 + IDLE_WINDOW, ms(0)), Some(false));
    }

    #[test]
    fn idle_target_rests_despite_the_cost_of_stops() {
        let t0 = Instant::now();
        let mut g = UsageGate::new(0.5, P, t0, ms(0));
        // 2 % of a core: what waking seven sleeping threads 100 times a second costs.
        assert_eq!(g.observe(t0 + IDLE_WINDOW, ms(20)), Some(false));
        assert!(!g.active());
        assert_eq!(g.next_check(), P);
    }

    #[test]
    fn resting_target_wakes_on_work_not_on_crumbs() {
        let (mut g, t) = resting(P);
        // A health probe's worth (0.3 ms in a period): still resting.
        assert_eq!(g.observe(t + P, Duration::from_micros(300)), None);
        // A full period of work: throttle at once.
        assert_eq!(g.observe(t + P * 2, ms(20)), Some(true));
        assert!(g.active());
        assert_eq!(g.next_check(), IDLE_WINDOW);
    }

    #[test]
    fn a_late_reading_while_resting_is_judged_over_its_real_span() {
        let (mut g, t) = resting(P);
        // 2 ms over a second (a stalled reading): 0.2 % of a core, not work.
        assert_eq!(g.observe(t + IDLE_WINDOW, ms(2)), None);
    }

    #[test]
    fn long_periods_still_poll_every_20_ms_while_resting() {
        let (g, _) = resting(ms(50));
        assert_eq!(g.next_check(), MAX_POLL);
    }

    #[test]
    fn tiny_budgets_still_count_as_work() {
        let t0 = Instant::now();
        // 0.05 cores fully used is 50 ms per second: above a quarter of the budget.
        let mut g = UsageGate::new(0.05, P, t0, ms(0));
        assert_eq!(g.observe(t0 + IDLE_WINDOW, ms(50)), None);
        assert!(g.active());
        assert_eq!(g.observe(t0 + IDLE_WINDOW * 2, ms(55)), Some(false));
    }
}
