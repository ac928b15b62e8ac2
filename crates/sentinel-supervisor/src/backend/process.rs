//! The llama-server child process: spawned in its own process group with a death signal (and,
//! when the profile pins it, on one CPU), its output forwarded to the log (target `backend`) and
//! kept as a short tail for error reports, signalled as a group, stopped gracefully, and never
//! left behind.

use super::launch::LaunchSpec;
use super::output::{self, Limiter};
use crate::os::process::{signal_group, spawn_in_group_async};
use nix::sys::signal::Signal;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

pub(crate) use super::output::LogTail;

/// A running llama-server.
pub(crate) struct BackendProcess {
    child: tokio::process::Child,
    pid: i32,
    exited: Option<ExitStatus>,
    pub logs: LogTail,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl BackendProcess {
    /// Spawns the child in its own process group with `PR_SET_PDEATHSIG(SIGKILL)` on Linux, so
    /// it dies with the supervisor even on SIGKILL ([`crate::os::process`] spawns it from the
    /// thread that death signal follows). Call it from within the runtime.
    pub(crate) async fn spawn(spec: &LaunchSpec) -> std::io::Result<BackendProcess> {
        Self::spawn_with(spec, |_| Ok(())).await
    }

    /// [`BackendProcess::spawn`], with `confine` applied to the command last (its `pre_exec`
    /// hooks run after the profile's priority and pin): how setup holds the smoke test to its
    /// limits ([`super::runner::Runner::confine`]).
    pub(crate) async fn spawn_with(
        spec: &LaunchSpec,
        confine: impl FnOnce(&mut std::process::Command) -> std::io::Result<()>,
    ) -> std::io::Result<BackendProcess> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        for key in &spec.env_remove {
            cmd.env_remove(key);
        }
        let priority = spec.priority;
        let pin_cpu = spec.pin_cpu;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (setpriority, sched_setscheduler, sched_setaffinity) on stack values.
        unsafe {
            cmd.pre_exec(move || {
                // A refused priority change must not stop the model from starting.
                let _ = crate::governor::priority::apply_to_current_process(priority);
                if let Some(cpu) = pin_cpu {
                    // Nor a refused pin: it is checked and reported after the spawn.
                    let _ = affinity::pin_current_process(cpu);
                }
                Ok(())
            });
        }
        confine(cmd.as_std_mut())?;
        let mut child = spawn_in_group_async(cmd, Signal::SIGKILL).await?;
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        if let Some(cpu) = pin_cpu {
            // The spawn returns once exec succeeded, so pre_exec has run.
            match affinity::pinned_to(pid) {
                Some(got) if got == cpu => tracing::info!(pid, cpu, "backend pinned to one CPU"),
                other => tracing::warn!(
                    pid,
                    cpu,
                    affinity = ?other,
                    "could not pin the backend to its CPU; it runs wherever the scheduler puts it \
                     (check that the CPU is in this process's affinity mask and cpuset)"
                ),
            }
        }
        let logs = LogTail::default();
        let limiter = Limiter::new(spec.output);
        let mut forwarders = Vec::new();
        if let Some(out) = child.stdout.take() {
            let (logs, limiter) = (logs.clone(), limiter.clone());
            forwarders.push(tokio::spawn(output::forward(
                out, pid, "stdout", logs, limiter,
            )));
        }
        if let Some(err) = child.stderr.take() {
            let (logs, limiter) = (logs.clone(), limiter.clone());
            forwarders.push(tokio::spawn(output::forward(
                err, pid, "stderr", logs, limiter,
            )));
        }
        tracing::info!(pid, program = %spec.program.display(), port = spec.port, "backend started");
        Ok(BackendProcess {
            child,
            pid,
            exited: None,
            logs,
            forwarders,
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to the whole process group, continued first ([`signal_group`]).
    pub(crate) fn signal_group(&self, signal: Signal) {
        if self.exited.is_some() || self.pid <= 0 {
            return;
        }
        if let Err(e) = signal_group(self.pid, signal) {
            tracing::debug!(pid = self.pid, ?signal, error = %e, "signal to backend group failed");
        }
    }

    /// Waits for the child to exit (cancel-safe).
    pub(crate) async fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let status = match self.child.wait().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "waiting for the backend failed");
                std::os::unix::process::ExitStatusExt::from_raw(-1)
            }
        };
        self.exited = Some(status);
        status
    }

    /// Has it exited already? Reaps it if so.
    pub(crate) fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
            }
        }
        self.exited
    }

    /// Graceful stop: SIGCONT + SIGTERM to the group, wait up to `grace`, then SIGKILL the
    /// group and reap. Leftover group members are killed too.
    pub(crate) async fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_exited() {
            self.kill_leftovers();
            self.drain_output().await;
            return s;
        }
        self.signal_group(Signal::SIGTERM);
        let status = if let Ok(s) = tokio::time::timeout(grace, self.wait()).await {
            s
        } else {
            tracing::warn!(
                pid = self.pid,
                ?grace,
                "backend ignored SIGTERM; killing it"
            );
            self.signal_group(Signal::SIGKILL);
            self.wait().await
        };
        self.kill_leftovers();
        self.drain_output().await;
        status
    }

    /// Lets the log forwarders read what the child wrote before it died (its last error
    /// lines matter most), within a short deadline.
    async fn drain_output(&mut self) {
        for f in self.forwarders.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(500), f).await;
        }
    }

    /// Kills whatever is left in the group after the leader is gone (grandchildren).
    fn kill_leftovers(&self) {
        if self.pid > 0 {
            // The group is usually empty by now (ESRCH): nothing to report.
            let _ = signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        // Never leave a child behind, even on an early return or a panic.
        if self.try_exited().is_none() {
            tracing::warn!(pid = self.pid, "backend dropped while running; killing it");
            self.signal_group(Signal::SIGKILL);
            let _ = self.child.start_kill();
        }
        self.kill_leftovers();
    }
}

/// Pinning the child to one CPU. Linux sets the affinity of the forked process before exec, so
/// every thread the program creates inherits it. macOS has no CPU affinity (profiles resolve
/// `pin_cpu` to `None` there), so nothing is pinned.
pub mod affinity {
    #[cfg(target_os = "linux")]
    pub fn pin_current_process(cpu: usize) -> nix::Result<()> {
        use nix::sched::{sched_setaffinity, CpuSet};
        // Async-signal-safe: a stack bit set and one system call, no allocation.
        let mut set = CpuSet::new();
        set.set(cpu)?;
        sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    }

    /// The one CPU `pid` may run on, `None` when it may run on several (or is gone).
    #[cfg(target_os = "linux")]
    pub(crate) fn pinned_to(pid: i32) -> Option<usize> {
        use nix::sched::{sched_getaffinity, CpuSet};
        let set = sched_getaffinity(nix::unistd::Pid::from_raw(pid)).ok()?;
        let mut cpus = (0..CpuSet::count()).filter(|&i| set.is_set(i).unwrap_or(false));
        match (cpus.next(), cpus.next()) {
            (Some(cpu), None) => Some(cpu),
            _ => None,
        }
    }

    /// macOS has no CPU affinity to set (the same signature as on Linux).
    #[cfg(target_os = "macos")]
    pub fn pin_current_process(_cpu: usize) -> nix::Result<()> {
        Err(nix::errno::Errno::ENOTSUP)
    }

    #[cfg(target_os = "macos")]
    pub fn pinned_to(_pid: i32) -> Option<usize> {
        None
    }
}
