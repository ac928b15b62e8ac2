//! Liveness beyond `/health`: a backend whose `/health` answers 200 may still never produce a
//! token, or fail every completion. Each request's ticket ([`crate::requests::Ticket`]) records
//! what the proxy sees of it (sent, each byte, the answer's status); the lifecycle runs a
//! [`watchdog`] per launch that reads them and declares the backend hung when
//!
//! - a request has been outstanding with no byte from the backend for
//!   `supervisor.first_token_timeout`, **and** the backend used (almost) no CPU during that time
//!   ([`MIN_CPU_SHARE`] of it): a slow but working backend computes, a hung one does not, and the
//!   governor's own SIGSTOPs (a few ms at a time, always followed by SIGCONT) only slow the
//!   computing down, so they are never taken for a hang; or
//! - `supervisor.liveness_failures` completions in a row were answered with a server error
//!   (5xx other than 503, which is llama-server's "busy").
//!
//! The silence rule, like the lifecycle's `/health` probes, does not count a backend that was
//! *starved* rather than hung ([`held_back`], [`starved`]):
//! at background or idle priority the user's work wins the CPU, and a backend kept waiting on
//! the run queue (or stopped by the governor) for a quarter of the window answers late and
//! computes little, yet is working. A hung backend sleeps or is stopped from outside: it does
//! not wait for a CPU.
//!
//! An exit by SIGKILL that the supervisor did not send is told apart by the OOM-kill counter of
//! the backend's memory cgroup, which the lifecycle reads while the backend serves:
//! [`describe_exit`].

use crate::requests::Requests;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::time::Instant;

/// Below this share of the window in CPU time, a silent backend counts as idle (hung).
pub(crate) const MIN_CPU_SHARE: f64 = 0.01;

/// How long the backend `pid` has been kept from running so far: its threads' wait on the run
/// queue plus the time the governors' duty cycles held it stopped (`stopped`, where they add
/// it). Compare two readings.
pub(crate) fn held_back(pid: i32, stopped: &crate::governor::StoppedTime) -> Duration {
    crate::meter::run_queue_wait(pid).unwrap_or_default() + stopped.total()
}

/// Whether a backend held back for `held` during `window` was starved of CPU (not hung).
pub(crate) fn starved(held: Duration, window: Duration) -> bool {
    held >= window / 4
}

/// Why the watchdog gave up on a backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Stall {
    /// Silent and idle with a request outstanding.
    #[error("llama-server hung: a request got no byte for {:.1} s while it used {} ms of CPU (supervisor.first_token_timeout)", .silent_for.as_secs_f64(), .cpu_used.as_millis())]
    Silent {
        silent_for: Duration,
        cpu_used: Duration,
    },
    /// Completions answered with server errors, so many in a row.
    #[error("llama-server answered {in_a_row} requests in a row with a server error (supervisor.liveness_failures)")]
    Failing { in_a_row: u32 },
}

/// Watches the backend `pid` of `generation`, through what `requests` (the proxy's registry)
/// heard back from it, until it stalls; never returns otherwise (run it in a `select!` beside
/// the child's exit and the probes).
pub(crate) async fn watchdog(
    requests: Requests,
    stopped: crate::governor::StoppedTime,
    pid: i32,
    generation: u64,
    timeout: Duration,
    max_failures: u32,
) -> Stall {
    let tick = (timeout / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let min_cpu = timeout.mul_f64(MIN_CPU_SHARE);
    // CPU and held-back readings over the last window, oldest first.
    let mut samples: std::collections::VecDeque<(Instant, Duration, Duration)> = Default::default();
    loop {
        tokio::time::sleep(tick).await;
        let failures = requests.failures(generation);
        if failures >= max_failures {
            return Stall::Failing { in_a_row: failures };
        }
        let now = Instant::now();
        let Some(cpu) = crate::meter::process_cpu(pid) else {
            continue;
        };
        let held = held_back(pid, &stopped);
        samples.push_back((now, cpu, held));
        while samples.len() > 1 && now.duration_since(samples[1].0) >= timeout {
            samples.pop_front();
        }
        let Some(since) = requests.silent_since(generation) else {
            continue;
        };
        let silent_for = now.duration_since(since);
        let (first_at, first_cpu, first_held) = samples[0];
        let window = now.duration_since(first_at);
        if silent_for >= timeout && window >= timeout {
            let cpu_used = cpu.saturating_sub(first_cpu);
            let starved = starved(held.saturating_sub(first_held), window);
            if cpu_used < min_cpu && !starved {
                tracing::warn!(
                    pid,
                    generation,
                    ?silent_for,
                    ?cpu_used,
                    "backend silent and idle with a request outstanding"
                );
                return Stall::Silent {
                    silent_for,
                    cpu_used,
                };
            }
        }
    }
}

/// How a launch's exit reads in `/status` `last_exit`: a SIGKILL the supervisor did not send
/// says whether the memory cgroup's OOM killer struck (its counter rose since `before`), or
/// else that it was possibly out of memory.
pub(crate) fn describe_exit(
    status: ExitStatus,
    before: Option<&crate::meter::OomCounter>,
) -> String {
    if status.signal() != Some(libc::SIGKILL) {
        return format!("llama-server exited ({status})");
    }
    let oom_kills = before.and_then(|b| crate::meter::read_oom_kills(&b.file).map(|now| (b, now)));
    if let Some((before, now)) = oom_kills.filter(|(before, now)| *now > before.kills) {
        return format!(
            "llama-server was killed by the kernel's OOM killer (out of memory: {} oom_kill {} -> {now}); lower cache_ram_mib or ctx_size, or give it more memory",
            before.file.display(),
            before.kills
        );
    }
    "llama-server was killed by SIGKILL, not sent by the supervisor (possibly out of memory: see `dmesg` or the memory cgroup's events)".to_string()
}

/// Whether an exit is a crash of the process's own making: a fault signal (SIGSEGV, SIGBUS,
/// SIGABRT from a failed assertion or an uncaught exception, SIGFPE, SIGILL, SIGSYS, SIGTRAP).
/// A SIGKILL or SIGTERM came from outside (an operator, the OOM killer, the supervisor), an
/// exit status from the program's own decision.
pub(crate) fn crashed(status: ExitStatus) -> bool {
    matches!(
        status.signal(),
        Some(
            libc::SIGSEGV
                | libc::SIGBUS
                | libc::SIGABRT
                | libc::SIGFPE
                | libc::SIGILL
                | libc::SIGSYS
                | libc::SIGTRAP
        )
    )
}

/// `reason`, followed by the backend's last error line when it printed one before a failed
/// start, so `/status`, the backoff state and the proxy's 503 say *why* (`error: unknown
/// argument: --bogus`).
pub(crate) fn with_last_line(reason: String, last_lines: &[String]) -> String {
    match last_lines.iter().rev().find(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("error") || l.contains("fail")
    }) {
        Some(line) => format!("{reason}: {}", line.trim()),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::Ticket;
    use std::sync::Arc;

    /// The registry a proxy would report to, which the watchdog reads.
    struct Proxy {
        requests: Requests,
        activity: crate::governor::Activity,
        slots: Arc<tokio::sync::Semaphore>,
    }

    impl Proxy {
        fn new() -> Proxy {
            Proxy {
                requests: Requests::default(),
                activity: crate::governor::Activity::new(),
                slots: Arc::new(tokio::sync::Semaphore::new(64)),
            }
        }

        /// A request sent to the backend of `generation`.
        fn sent(&self, generation: u64) -> Ticket {
            let slot = Arc::clone(&self.slots).try_acquire_owned().unwrap();
            let mut ticket = self.requests.issue(slot, self.activity.begin());
            ticket.bind(generation);
            ticket.sent();
            ticket
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outstanding_request_of_an_idle_process_is_a_stall() {
        // This test process is the "backend": it uses almost no CPU while the clock is paused.
        let p = Proxy::new();
        let requests = p.requests.clone();
        let pid = std::process::id() as i32;
        let timeout = Duration::from_secs(10);
        let pending = p.sent(1);
        let dog = watchdog(requests.clone(), Default::default(), pid, 1, timeout, 3);
        let stall = tokio::time::timeout(Duration::from_secs(30), dog)
            .await
            .expect("a stall within the timeout and a tick");
        let Stall::Silent { silent_for, .. } = stall else {
            panic!("{stall:?}");
        };
        assert!(silent_for >= timeout, "{silent_for:?}");
        drop(pending);
        assert_eq!(requests.silent_since(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_and_other_generations_keep_it_alive() {
        let p = Proxy::new();
        let requests = p.requests.clone();
        let pid = std::process::id() as i32;
        let timeout = Duration::from_secs(10);
        let pending = p.sent(1);
        // A request to another launch does not count for this one.
        let _other = p.sent(2);
        let dog = watchdog(requests.clone(), Default::default(), pid, 1, timeout, 3);
        tokio::pin!(dog);
        for _ in 0..10 {
            tokio::select! {
                stall = &mut dog => panic!("stalled despite progress: {stall:?}"),
                _ = tokio::time::sleep(Duration::from_secs(5)) => pending.progress(),
            }
        }
        drop(pending);
        tokio::select! {
            stall = &mut dog => panic!("stalled with nothing outstanding: {stall:?}"),
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_in_a_row_are_a_stall_and_a_success_resets_them() {
        let p = Proxy::new();
        let requests = p.requests.clone();
        let pid = std::process::id() as i32;
        for status in [500, 500, 200, 503, 500, 502] {
            p.sent(7).answered(status);
        }
        assert_eq!(requests.failures(7), 2);
        p.sent(7).answered(500);
        let stall = watchdog(
            requests.clone(),
            Default::default(),
            pid,
            7,
            Duration::from_secs(5),
            3,
        )
        .await;
        assert_eq!(stall, Stall::Failing { in_a_row: 3 });
        assert!(stall.to_string().contains("liveness_failures"));
        requests.forget(7);
        assert_eq!(requests.failures(7), 0);
    }

    #[test]
    fn the_last_error_line_says_why() {
        let lines = vec![
            "error: unknown argument: --bogus".to_string(),
            "usage: ...".to_string(),
        ];
        assert_eq!(
            with_last_line("llama-server exited (exit status: 1)".into(), &lines),
            "llama-server exited (exit status: 1): error: unknown argument: --bogus"
        );
        assert_eq!(with_last_line("stopped".into(), &lines[1..]), "stopped");
    }

    #[test]
    fn a_sigkill_we_did_not_send_says_possibly_out_of_memory() {
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        let text = describe_exit(killed, None);
        assert!(
            text.contains("killed by SIGKILL") && text.contains("out of memory"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.oom_control");
        std::fs::write(&file, "oom_kill_disable 0\noom_kill 1\n").unwrap();
        let before = crate::meter::OomCounter {
            file: file.clone(),
            kills: 0,
        };
        let text = describe_exit(killed, Some(&before));
        assert!(
            text.contains("OOM killer") && text.contains("oom_kill 0 -> 1"),
            "{text}"
        );
        let exited = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            describe_exit(exited, Some(&before)),
            "llama-server exited (exit status: 1)"
        );
    }
}
