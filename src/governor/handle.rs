//! Starting the governor on a child and holding it: picks the method, starts the duty-cycle
//! limiter (with an uncapped cgroup carrying a low priority, see `priority_group`) or creates
//! the capped cgroup, publishes its [`GovernorSnapshot`] for `/status` (see
//! [`super::snapshot`]), and undoes everything on stop or drop.
//!
//! `auto` decides per launch: with the adaptive mode on it uses the duty cycle (the budget
//! moves every second and must follow activity); otherwise a writable cgroup wins (the kernel
//! enforces the cap with a 10 ms period, no userspace wakeups, and the cap outlives a crashed
//! supervisor) and the duty cycle is the fallback. The two are never stacked: each alone holds
//! the budget, and stacking would cut the child to the product of both.

use super::adaptive::AdaptiveParams;
use super::cgroup::{self, CgroupError, CpuCgroup};
use super::duty_cycle::{LimiterParams, SignalLimiter};
use super::pinned::{PinnedPid, PinnedPidError};
use super::settings::{GovernorConfig, GovernorSettings, Method};
use super::snapshot::{GovernorSnapshot, Publisher, SnapshotSender, Source};
use super::Activity;
use crate::units::Cores;

/// Why the governor could not start.
#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("invalid [governor] configuration: {0}")]
    Config(String),
    #[error(transparent)]
    PinnedPid(#[from] PinnedPidError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("could not start a governor thread: {0} (the system may be out of threads)")]
    Thread(std::io::Error),
}

enum Mechanism {
    /// The duty cycle, and the uncapped cgroup that carries the priority where one is writable.
    Signals(SignalLimiter, Option<CpuCgroup>),
    Cgroup(CpuCgroup),
    Off(Option<CpuCgroup>),
}

/// A running governor. [`GovernorHandle::stop`] or drop continues the child, removes the
/// cgroup and publishes a last snapshot in state `stopped`.
pub struct GovernorHandle {
    pid: i32,
    mechanism: Mechanism,
    publisher: Publisher,
    report: SnapshotSender,
    stopped: bool,
}

/// Entry point.
pub struct Governor;

impl Governor {
    /// Starts limiting `child_pid` (and its process group when it leads one), publishing its
    /// snapshot on `report` at once and then once per feedback window.
    pub fn start(
        child_pid: i32,
        config: &GovernorConfig,
        settings: GovernorSettings,
        activity: Activity,
        report: SnapshotSender,
    ) -> Result<GovernorHandle, GovernorError> {
        config.validate().map_err(GovernorError::Config)?;
        config
            .check_profile_period(settings.period)
            .map_err(|m| GovernorError::Config(format!("period {m}")))?;
        let window = config.feedback().window;
        let handle = |mechanism: Mechanism| -> Result<GovernorHandle, GovernorError> {
            let source = match &mechanism {
                Mechanism::Signals(limiter, _) => Source::Signals(limiter.readings()),
                Mechanism::Cgroup(group) => Source::Cgroup(group.version()),
                Mechanism::Off(_) => Source::Off,
            };
            let publisher = Publisher::start(child_pid, window, source, settings, report.clone())
                .map_err(GovernorError::Thread)?;
            Ok(GovernorHandle {
                pid: child_pid,
                mechanism,
                publisher,
                report: report.clone(),
                stopped: false,
            })
        };
        let Some(cpus) = settings
            .cpus
            .map(Cores::get)
            .filter(|_| settings.method != Method::Off)
        else {
            tracing::info!(pid = child_pid, method = "off", "CPU governor off");
            return handle(Mechanism::Off(priority_group(child_pid, settings.priority)));
        };
        let method = match settings.method {
            Method::Auto if settings.adaptive.is_some() => Method::Signals,
            Method::Auto if cgroup::detect().is_some() => Method::Cgroup,
            Method::Auto => Method::Signals,
            other => other,
        };
        if method == Method::Cgroup {
            match start_cgroup(child_pid, config, cpus, settings.priority) {
                Ok(group) => {
                    tracing::info!(
                        pid = child_pid,
                        method = "cgroup",
                        configured = %settings.method,
                        version = ?group.version(),
                        path = %group.path().display(),
                        cpus,
                        priority = %settings.priority,
                        period = ?config.cgroup_period,
                        "CPU governor: kernel cap"
                    );
                    return handle(Mechanism::Cgroup(group));
                }
                Err(err) if settings.method == Method::Auto => {
                    tracing::warn!(error = %err, "cgroup cap failed; using the duty cycle instead");
                }
                Err(err) => return Err(err),
            }
        }
        let target = PinnedPid::open(child_pid)?;
        let params = LimiterParams {
            cpus,
            usable: settings
                .threads
                .map(|t| t.clamp(1, settings.host.allowed_cpus())),
            period: settings.period,
            feedback: config.feedback(),
            adaptive: settings.adaptive.map(|target| AdaptiveParams {
                base: cpus,
                target: target.get(),
                floor: cpus * config.adaptive_floor,
                recover_per_sec: config.adaptive_recover_per_sec,
            }),
            host: settings.host,
        };
        let group = target.is_group();
        let limiter =
            SignalLimiter::start(target, params, &activity).map_err(GovernorError::Thread)?;
        tracing::info!(
            pid = child_pid,
            method = "signals",
            configured = %settings.method,
            process_group = group,
            cpus,
            threads = ?settings.threads,
            period = ?settings.period,
            adaptive = ?settings.adaptive,
            "CPU governor: duty cycle"
        );
        handle(Mechanism::Signals(
            limiter,
            priority_group(child_pid, settings.priority),
        ))
    }
}

fn start_cgroup(
    pid: i32,
    config: &GovernorConfig,
    cpus: f64,
    priority: super::Priority,
) -> Result<CpuCgroup, GovernorError> {
    let support = cgroup::detect().ok_or(CgroupError::Unavailable)?;
    Ok(CpuCgroup::create(
        &support,
        pid,
        cpus,
        config.cgroup_period,
        priority,
    )?)
}

/// Without the kernel cap, an idle or background child still gets a cgroup of its own that
/// carries its priority (`cpu.idle` or the lowest weight, no cap) where one is writable: left in
/// the supervisor's session autogroup or service cgroup, its `SCHED_IDLE` or nice 19 counts
/// only against the supervisor's own threads, and that group competes with the user's other
/// sessions at normal weight (measured: a user's CPU-bound process in another session kept 44 %
/// of the CPU it shared with the model, 100 % with the group). `None` for a normal priority, or
/// where no cgroup is writable (a warning says so, once per launch).
fn priority_group(pid: i32, priority: super::Priority) -> Option<CpuCgroup> {
    // macOS has no cgroups and no autogroups: the priority (Darwin background) holds as set.
    if priority == super::Priority::Normal || cfg!(not(target_os = "linux")) {
        return None;
    }
    let Some(support) = cgroup::detect() else {
        tracing::warn!(
            pid,
            %priority,
            "no writable cgroup: the backend's priority holds only within the supervisor's own \
             session or service group (run as root, or under the shipped systemd unit with \
             Delegate=cpu, for it to hold against every other process)"
        );
        return None;
    };
    match CpuCgroup::for_priority(&support, pid, priority) {
        Ok(group) => {
            tracing::info!(pid, %priority, path = %group.path().display(), "backend's priority carried by its cgroup (no cap)");
            Some(group)
        }
        Err(err) => {
            tracing::warn!(pid, %priority, error = %err, "could not give the backend a cgroup for its priority; it holds only within the supervisor's own group");
            None
        }
    }
}

impl GovernorHandle {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True when the duty-cycle thread has ended by itself (the child is gone).
    pub fn is_finished(&self) -> bool {
        match &self.mechanism {
            Mechanism::Signals(l, _) => l.snapshot().finished,
            _ => false,
        }
    }

    /// The cgroup the child was moved into (its cap, or only its priority), if any.
    pub fn cgroup(&self) -> Option<std::path::PathBuf> {
        match &self.mechanism {
            Mechanism::Cgroup(group) => Some(group),
            Mechanism::Signals(_, group) | Mechanism::Off(group) => group.as_ref(),
        }
        .map(|group| group.path().to_path_buf())
    }

    /// The last snapshot the governor published (`None` once the lifecycle has cleared it).
    pub fn snapshot(&self) -> Option<GovernorSnapshot> {
        self.report.borrow().clone()
    }

    /// Continues the child, removes the cgroup and publishes a last snapshot in state
    /// `stopped`. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = match &mut self.mechanism {
            Mechanism::Signals(limiter, group) => {
                limiter.stop();
                group.as_mut()
            }
            Mechanism::Cgroup(group) => Some(group),
            Mechanism::Off(group) => group.as_mut(),
        };
        if let Some(group) = group {
            if let Err(err) = group.remove() {
                tracing::warn!(
                    path = %group.path().display(),
                    error = %err,
                    "could not remove the cgroup; rmdir it once its processes exit"
                );
            }
        }
        self.publisher.stop();
        tracing::debug!(pid = self.pid, "CPU governor stopped");
    }
}

impl Drop for GovernorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for GovernorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorHandle")
            .field("pid", &self.pid)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::snapshot::GovernorState;
    use crate::governor::Priority;
    use std::os::unix::process::CommandExt;
    use std::time::Duration;

    fn report() -> SnapshotSender {
        tokio::sync::watch::channel(None).0
    }

    fn shipped() -> GovernorConfig {
        crate::config::Config::builtin().unwrap().governor
    }

    fn settings(cpus: Option<f64>) -> GovernorSettings {
        GovernorSettings {
            cpus: cpus.map(|c| Cores::new(c).unwrap()),
            threads: Some(1),
            priority: Priority::Background,
            adaptive: None,
            host: crate::host::Host::detect(),
            method: Method::Signals,
            period: Duration::from_millis(20),
        }
    }

    #[test]
    fn unlimited_is_off_and_signals_reports_resting() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let cfg = shipped();
        let off = Governor::start(pid, &cfg, settings(None), Activity::new(), report()).unwrap();
        let snap = off.snapshot().unwrap();
        assert_eq!(snap.method, Method::Off);
        assert_eq!(snap.state, GovernorState::Off);
        // The shipped `governor.method` is `auto`: the settings' method (a profile's) wins.
        assert_eq!(cfg.method, Method::Auto);
        let tx = report();
        let rx = tx.subscribe();
        let mut handle =
            Governor::start(pid, &cfg, settings(Some(0.5)), Activity::new(), tx).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let status = rx.borrow().clone().unwrap();
        assert_eq!(status.method, Method::Signals);
        assert_eq!(status.state, GovernorState::Resting);
        assert_eq!(status.budget_cpus, Some(0.5));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["method"], "signals");
        assert_eq!(json["priority"], "background");
        handle.stop();
        handle.stop();
        assert_eq!(rx.borrow().as_ref().unwrap().state, GovernorState::Stopped);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn missing_child_is_a_clear_error() {
        let cfg = shipped();
        let err = Governor::start(
            i32::MAX - 1,
            &cfg,
            settings(Some(0.5)),
            Activity::new(),
            report(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no process"), "{err}");
    }

    #[test]
    fn a_period_out_of_range_is_refused_before_anything_is_touched() {
        let bad = GovernorSettings {
            period: Duration::from_secs(2),
            ..settings(Some(0.5))
        };
        let err =
            Governor::start(i32::MAX - 1, &shipped(), bad, Activity::new(), report()).unwrap_err();
        assert!(
            err.to_string().contains("period 2s is out of range"),
            "{err}"
        );
    }
}
