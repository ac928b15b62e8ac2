//! The restart policy: exponential backoff that resets after a healthy run, and a crash-loop
//! breaker that gives up after too many failures in a window. A crash while serving requests
//! (a client's poison request: see `proxy::poison`) restarts after the initial delay and is
//! kept out of both, so no client can put the service into `failed`; a backend that dies
//! with no request in flight still counts.

use crate::config::SupervisorConfig;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start again after this delay.
    Restart(Duration),
    /// Too many failures in the window: stop restarting.
    GiveUp { failures: usize, window: Duration },
}

#[derive(Debug)]
pub(crate) struct RestartPolicy {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    max_failures: usize,
    window: Duration,
    failures: VecDeque<Instant>,
    consecutive: u32,
    /// Requests in flight when the failing launch crashed by itself (see `crashed_serving`).
    serving: usize,
}

impl RestartPolicy {
    pub(crate) fn new(c: &SupervisorConfig) -> RestartPolicy {
        RestartPolicy {
            initial: c.backoff_initial,
            max: c.backoff_max,
            reset_after: c.backoff_reset_after,
            max_failures: c.crash_loop_restarts as usize,
            window: c.crash_loop_window,
            failures: VecDeque::new(),
            consecutive: 0,
            serving: 0,
        }
    }

    /// The launch that is ending crashed by itself with `requests` in flight: the next
    /// `on_failure` restarts after the initial delay without counting it.
    pub(crate) fn crashed_serving(&mut self, requests: usize) {
        self.serving = requests;
    }

    /// Decides what to do after the backend failed at `now`, having been healthy for
    /// `healthy_for` (None when it never became ready).
    pub(crate) fn on_failure(&mut self, now: Instant, healthy_for: Option<Duration>) -> Decision {
        if std::mem::take(&mut self.serving) > 0 {
            return Decision::Restart(self.initial);
        }
        if healthy_for.is_some_and(|h| h >= self.reset_after) {
            self.consecutive = 0;
        }
        self.failures.push_back(now);
        self.failures
            .retain(|&at| now.duration_since(at) <= self.window);
        if self.failures.len() > self.max_failures {
            return Decision::GiveUp {
                failures: self.failures.len(),
                window: self.window,
            };
        }
        let factor = 2u32.saturating_pow(self.consecutive.min(20));
        let delay = self.initial.saturating_mul(factor).min(self.max);
        self.consecutive = self.consecutive.saturating_add(1);
        Decision::Restart(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy(restarts: u32) -> RestartPolicy {
        let mut c = Config::builtin().unwrap().supervisor;
        c.backoff_initial = Duration::from_millis(500);
        c.backoff_max = Duration::from_secs(30);
        c.backoff_reset_after = Duration::from_secs(60);
        c.crash_loop_restarts = restarts;
        c.crash_loop_window = Duration::from_secs(300);
        RestartPolicy::new(&c)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap() {
        let mut p = policy(100);
        let mut delays = Vec::new();
        for _ in 0..9 {
            match p.on_failure(Instant::now(), None) {
                Decision::Restart(d) => delays.push(d),
                other => panic!("unexpected {other:?}"),
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000].map(ms)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_resets_after_a_long_healthy_run() {
        let mut p = policy(100);
        p.on_failure(Instant::now(), None);
        p.on_failure(Instant::now(), Some(Duration::from_secs(5)));
        assert_eq!(
            p.on_failure(Instant::now(), Some(Duration::from_secs(10))),
            Decision::Restart(ms(2000))
        );
        assert_eq!(
            p.on_failure(Instant::now(), Some(Duration::from_secs(61))),
            Decision::Restart(ms(500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_gives_up_within_the_window_only() {
        let mut p = policy(3);
        for _ in 0..3 {
            assert!(matches!(
                p.on_failure(Instant::now(), None),
                Decision::Restart(_)
            ));
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        assert_eq!(
            p.on_failure(Instant::now(), None),
            Decision::GiveUp {
                failures: 4,
                window: Duration::from_secs(300)
            }
        );

        // Crashes while serving requests never trip it, nor lengthen the backoff; a crash
        // with none in flight still counts.
        let mut p = policy(3);
        for _ in 0..20 {
            p.crashed_serving(1);
            assert_eq!(
                p.on_failure(Instant::now(), None),
                Decision::Restart(ms(500))
            );
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        for _ in 0..3 {
            assert!(matches!(
                p.on_failure(Instant::now(), None),
                Decision::Restart(_)
            ));
        }
        assert!(matches!(
            p.on_failure(Instant::now(), None),
            Decision::GiveUp { failures: 4, .. }
        ));

        // Failures spread wider than the window never trip the breaker.
        let mut p = policy(3);
        for _ in 0..10 {
            assert!(matches!(
                p.on_failure(Instant::now(), None),
                Decision::Restart(_)
            ));
            tokio::time::advance(Duration::from_secs(120)).await;
        }
    }
}
