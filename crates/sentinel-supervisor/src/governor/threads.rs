//! Following a program the limiter knows nothing about (`limit` on any command): how many of
//! its threads compute, so the duty cycle sizes each period's run time for them and not for
//! every thread it has ([`ComputingThreads`]), and a guard that sizes for all of them again as
//! soon as it runs clearly above its budget ([`FollowThreads`]). The supervisor's own child is
//! not concerned: its thread count is known.

use super::controller::DutyController;
use crate::host::Host;
use std::time::{Duration, Instant};

/// How often (in periods) the thread count of an unknown program is read again.
pub(super) const THREAD_CHECK_PERIODS: u64 = 5;

/// CPUs a child with an unknown thread count can keep busy: its threads, at most the CPUs
/// this process may use.
pub(super) fn thread_cap(pid: i32, host: &Host) -> usize {
    crate::meter::thread_count(pid)
        .unwrap_or(usize::MAX)
        .min(host.allowed_cpus())
}

/// How far above its budget an unknown program may run over a few periods before the limiter
/// sizes the run time for all its threads again (the count of computing threads was too low).
const OVERSHOOT: f64 = 1.25;

/// What the limiter follows of a program it knows nothing about: its threads (at most the
/// CPUs), which of them compute, and its CPU clock at the last check.
pub(super) struct FollowThreads {
    pub(super) cap: usize,
    pub(super) computing: ComputingThreads,
    last: Option<(Instant, Duration)>,
}

impl FollowThreads {
    pub(super) fn start(pid: i32, host: &Host) -> Self {
        Self {
            cap: thread_cap(pid, host),
            computing: ComputingThreads::start(pid),
            last: crate::meter::process_cpu(pid).map(|cpu| (Instant::now(), cpu)),
        }
    }

    /// Reads the thread count and the CPU clock; returns the CPUs to size the run time for when
    /// that must change: all threads when there are more of them, or when the program ran
    /// above its budget since the last check (a thread counted as idle started computing);
    /// at most the thread count when there are fewer.
    pub(super) fn check(
        &mut self,
        pid: i32,
        now: Instant,
        ctl: &DutyController,
        host: &Host,
    ) -> Option<usize> {
        let threads = thread_cap(pid, host);
        let cpu = crate::meter::process_cpu(pid);
        let elapsed = self
            .last
            .map(|(then, _)| now.saturating_duration_since(then));
        // Judged over at least a period (an activity change can end a nap after a moment).
        let mut over = false;
        if !elapsed.is_some_and(|e| e < ctl.period()) {
            if let (Some((_, before)), Some(cpu), Some(elapsed)) = (self.last, cpu, elapsed) {
                over = overshoots(cpu.saturating_sub(before), elapsed, ctl.cpus());
            }
            self.last = cpu.map(|cpu| (now, cpu));
        }
        let usable = ctl.usable() as usize;
        let raise = threads > self.cap || (over && usable < threads);
        if threads == self.cap && !raise {
            return None;
        }
        if raise && over {
            tracing::debug!(
                pid,
                threads,
                sized_for = usable,
                "above budget: sizing for every thread again"
            );
        }
        self.cap = threads;
        self.computing = ComputingThreads::start(pid);
        Some(if raise { threads } else { threads.min(usable) })
    }
}

/// Whether `used` CPU over `elapsed` is clearly above a budget of `cpus` cores.
fn overshoots(used: Duration, elapsed: Duration, cpus: f64) -> bool {
    !elapsed.is_zero() && used.as_secs_f64() > elapsed.as_secs_f64() * cpus * OVERSHOOT
}

/// Which threads of a program compute (see [`count_computing`]). llama-server, for one, has
/// seven threads and computes on one or two; sizing the run time for all of them would hold it
/// to a fraction of its budget.
pub(super) struct ComputingThreads {
    last: Option<Vec<(i32, Duration)>>,
}

impl ComputingThreads {
    pub(super) fn start(pid: i32) -> Self {
        Self {
            last: crate::meter::thread_run_times(pid),
        }
    }

    /// Counts the threads that computed since the last call, `allowed` being the run time each
    /// was allowed ([`count_computing`]; `None` when per-thread times are not available), and
    /// starts the next interval.
    pub(super) fn count(&mut self, pid: i32, allowed: Duration) -> Option<usize> {
        let before = std::mem::replace(&mut self.last, crate::meter::thread_run_times(pid));
        Some(count_computing(&before?, self.last.as_ref()?, allowed))
    }
}

/// Threads of `now` whose run time grew since `before` by at least half of `allowed`, or by at
/// least half of what the busiest thread ran (a thread born in between counts from zero). The
/// second rule keeps computing threads counted when other processes leave them less than their
/// allowed time, and unevenly: counted as idle, they would flap between sizings.
fn count_computing(
    before: &[(i32, Duration)],
    now: &[(i32, Duration)],
    allowed: Duration,
) -> usize {
    let ran: Vec<Duration> = now
        .iter()
        .map(|(tid, run)| {
            let was = before
                .iter()
                .find(|(t, _)| t == tid)
                .map_or(Duration::ZERO, |(_, r)| *r);
            run.saturating_sub(was)
        })
        .collect();
    let busiest = ran.iter().copied().max().unwrap_or_default();
    let half = allowed.min(busiest) / 2;
    if half.is_zero() {
        return 0;
    }
    ran.iter().filter(|r| **r >= half).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overshoot_is_a_quarter_above_the_budget() {
        let ms = Duration::from_millis;
        assert!(!overshoots(ms(50), ms(100), 0.5));
        assert!(!overshoots(ms(62), ms(100), 0.5));
        assert!(overshoots(ms(63), ms(100), 0.5));
        assert!(overshoots(ms(200), ms(100), 1.0));
        assert!(!overshoots(ms(200), Duration::ZERO, 1.0));
    }

    #[test]
    fn computing_threads_are_those_that_used_their_run_time() {
        let ms = Duration::from_millis;
        let before = [(1, ms(1000)), (2, ms(5)), (3, ms(0))];
        // Allowed 250 ms each: thread 1 ran 260 ms (computing), 2 ran 2 ms (an HTTP thread),
        // 3 ran 130 ms (computing), 4 was born and ran 200 ms (computing).
        let now = [(1, ms(1260)), (2, ms(7)), (3, ms(130)), (4, ms(200))];
        assert_eq!(count_computing(&before, &now, ms(250)), 3);
        // Allowed 500 ms: the machine was busy, none got it all; those that ran at least half
        // of what the busiest did compute all the same.
        assert_eq!(count_computing(&before, &now, ms(500)), 3);
        let uneven = [(1, ms(1200)), (2, ms(7)), (3, ms(110)), (4, ms(20))];
        assert_eq!(count_computing(&before, &uneven, ms(500)), 2);
        assert_eq!(count_computing(&before, &now, Duration::ZERO), 0);
        assert_eq!(count_computing(&before, &before, ms(500)), 0);
    }
}
