//! Liveness beyond `/health`: a backend whose `/health` answers 200 may still never produce a
//! token, or fail every completion. The proxy reports what it sees of each request it forwards
//! ([`Liveness::begin`], [`Pending::progress`], [`Pending::answered`]); the lifecycle runs a
//! [`watchdog`] per launch that declares the backend hung when
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
//! It also keeps the OOM-kill counter of the backend's memory cgroup, so an exit by SIGKILL
//! that the supervisor did not send can be told apart: [`describe_exit`].

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Below this share of the window in CPU time, a silent backend counts as idle (hung).
pub const MIN_CPU_SHARE: f64 = 0.01;

/// How long the backend `pid` has been kept from running so far: its threads' wait on the run
/// queue plus the time the governors' duty cycles held it stopped (`stopped`, where they add
/// it). Compare two readings.
pub fn held_back(pid: i32, stopped: &crate::governor::StoppedTime) -> Duration {
    crate::meter::run_queue_wait(pid).unwrap_or_default() + stopped.total()
}

/// Whether a backend held back for `held` during `window` was starved of CPU (not hung).
pub fn starved(held: Duration, window: Duration) -> bool {
    held >= window / 4
}

/// What the proxy and the watchdog share.
#[derive(Debug, Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Requests forwarded and not finished: generation and the time of their last byte (or of
    /// sending, before the first).
    outstanding: HashMap<u64, (u64, Instant)>,
    /// Server errors in a row, per generation (reset by any other answer).
    failures: HashMap<u64, u32>,
    /// The backend's memory cgroup OOM-kill counter, as last read, per generation.
    oom: HashMap<u64, crate::meter::OomCounter>,
}

/// One forwarded request, from sending it to the end of its body. Dropping it ends it.
#[derive(Debug)]
pub struct Pending {
    liveness: Arc<Liveness>,
    id: u64,
    generation: u64,
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request is being sent to the backend of `generation`.
    pub fn begin(self: &Arc<Self>, generation: u64) -> Pending {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.outstanding.insert(id, (generation, Instant::now()));
        Pending {
            liveness: Arc::clone(self),
            id,
            generation,
        }
    }

    /// Since when the backend of `generation` has been silent on an outstanding request: the
    /// oldest last-byte time among them (`None` when none is outstanding).
    fn silent_since(&self, generation: u64) -> Option<Instant> {
        self.lock()
            .outstanding
            .values()
            .filter(|(g, _)| *g == generation)
            .map(|(_, t)| *t)
            .min()
    }

    fn failures(&self, generation: u64) -> u32 {
        self.lock().failures.get(&generation).copied().unwrap_or(0)
    }

    /// Forgets a finished launch.
    pub fn forget(&self, generation: u64) -> Option<crate::meter::OomCounter> {
        let mut inner = self.lock();
        inner.outstanding.retain(|_, (g, _)| *g != generation);
        inner.failures.remove(&generation);
        inner.oom.remove(&generation)
    }

    fn note_oom_counter(&self, generation: u64, pid: i32) {
        if let Some(counter) = crate::meter::oom_counter(pid) {
            self.lock().oom.insert(generation, counter);
        }
    }
}

impl Pending {
    /// A byte (the response head or a body frame) came from the backend.
    pub fn progress(&self) {
        if let Some(entry) = self.liveness.lock().outstanding.get_mut(&self.id) {
            entry.1 = Instant::now();
        }
    }

    /// The backend answered with `status`: a server error counts towards the failures in a row,
    /// anything else resets them.
    pub fn answered(&self, status: u16) {
        let mut inner = self.liveness.lock();
        let failures = inner.failures.entry(self.generation).or_insert(0);
        if status >= 500 && status != 503 {
            *failures += 1;
        } else {
            *failures = 0;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.liveness.lock().outstanding.remove(&self.id);
    }
}

/// Why the watchdog gave up on a backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Stall {
    /// Silent and idle with a request outstanding.
    Silent {
        silent_for: Duration,
        cpu_used: Duration,
    },
    /// Completions answered with server errors, so many in a row.
    Failing { in_a_row: u32 },
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::Silent {
                silent_for,
                cpu_used,
            } => write!(
                f,
                "llama-server hung: a request got no byte for {:.1} s while it used {} ms of CPU (supervisor.first_token_timeout)",
                silent_for.as_secs_f64(),
                cpu_used.as_millis()
            ),
            Stall::Failing { in_a_row } => write!(
                f,
                "llama-server answered {in_a_row} requests in a row with a server error (supervisor.liveness_failures)"
            ),
        }
    }
}

/// Watches the backend `pid` of `generation` until it stalls; never returns otherwise (run it
/// in a `select!` beside the child's exit and the probes).
pub async fn watchdog(
    liveness: Arc<Liveness>,
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
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(tick).await;
        if ticks % 10 == 0 {
            liveness.note_oom_counter(generation, pid);
        }
        ticks += 1;
        let failures = liveness.failures(generation);
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
        let Some(since) = liveness.silent_since(generation) else {
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
pub fn describe_exit(status: ExitStatus, before: Option<&crate::meter::OomCounter>) -> String {
    if status.signal() != Some(libc::SIGKILL) {
        return format!("llama-server exited ({status})");
    }
    if let Some(before) = before {
        if let Some(now) = crate::meter::read_oom_kills(&before.file) {
            if now > before.kills {
                return format!(
                    "llama-server was killed by the kernel's OOM killer (out of memory: {} oom_kill {} -> {now}); lower cache_ram_mib or ctx_size, or give it more memory",
                    before.file.display(),
                    before.kills
                );
            }
        }
    }
    "llama-server was killed by SIGKILL, not sent by the supervisor (possibly out of memory: see `dmesg` or the memory cgroup's events)".to_string()
}

/// Whether an exit is a crash of the process's own making: a fault signal (SIGSEGV, SIGBUS,
/// SIGABRT from a failed assertion or an uncaught exception, SIGFPE, SIGILL, SIGSYS, SIGTRAP).
/// A SIGKILL or SIGTERM came from outside (an operator, the OOM killer, the supervisor), an
/// exit status from the program's own decision.
pub fn crashed(status: ExitStatus) -> bool {
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
pub fn with_last_line(reason: String, last_lines: &[String]) -> String {
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

    #[tokio::test(start_paused = true)]
    async fn an_outstanding_request_of_an_idle_process_is_a_stall() {
        // This test process is the "backend": it uses almost no CPU while the clock is paused.
        let liveness = Liveness::new();
        let pid = std::process::id() as i32;
        let timeout = Duration::from_secs(10);
        let pending = liveness.begin(1);
        let dog = watchdog(
            Arc::clone(&liveness),
            Default::default(),
            pid,
            1,
            timeout,
            3,
        );
        let stall = tokio::time::timeout(Duration::from_secs(30), dog)
            .await
            .expect("a stall within the timeout and a tick");
        let Stall::Silent { silent_for, .. } = stall else {
            panic!("{stall:?}");
        };
        assert!(silent_for >= timeout, "{silent_for:?}");
        drop(pending);
        assert_eq!(liveness.silent_since(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_and_other_generations_keep_it_alive() {
        let liveness = Liveness::new();
        let pid = std::process::id() as i32;
        let timeout = Duration::from_secs(10);
        let pending = liveness.begin(1);
        // A request to another launch does not count for this one.
        let _other = liveness.begin(2);
        let dog = watchdog(
            Arc::clone(&liveness),
            Default::default(),
            pid,
            1,
            timeout,
            3,
        );
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
        let liveness = Liveness::new();
        let pid = std::process::id() as i32;
        for status in [500, 500, 200, 503, 500, 502] {
            liveness.begin(7).answered(status);
        }
        assert_eq!(liveness.failures(7), 2);
        liveness.begin(7).answered(500);
        let stall = watchdog(
            Arc::clone(&liveness),
            Default::default(),
            pid,
            7,
            Duration::from_secs(5),
            3,
        )
        .await;
        assert_eq!(stall, Stall::Failing { in_a_row: 3 });
        assert!(stall.to_string().contains("liveness_failures"));
        liveness.forget(7);
        assert_eq!(liveness.failures(7), 0);
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
