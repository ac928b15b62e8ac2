//! Starting the governor on a child and holding it: picks the method, starts the duty-cycle
//! limiter or creates the cgroup, reports `/status`, and undoes everything on stop or drop.
//!
//! `auto` decides per launch: with the adaptive mode on it uses the duty cycle (the budget
//! moves every second and must follow activity); otherwise a writable cgroup wins (the kernel
//! enforces the cap with a 10 ms period, no userspace wakeups, and the cap outlives a crashed
//! supervisor) and the duty cycle is the fallback. The two are never stacked: each alone holds
//! the budget, and stacking would cut the child to the product of both.

use super::adaptive::AdaptiveParams;
use super::cgroup::{self, CgroupError, CgroupVersion, CpuCgroup};
use super::priority::Priority;
use super::settings::{GovernorConfig, GovernorSettings, Method};
use super::signals::{LimiterParams, SignalLimiter};
use super::target::{Target, TargetError};
use super::Activity;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why the governor could not start.
#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("invalid CPU budget {cpus} (use a number of cores above 0, e.g. 0.5)")]
    InvalidBudget { cpus: f64 },
    #[error(
        "invalid adaptive target {target} (use a share of the machine between 0 and 1, e.g. 0.6)"
    )]
    InvalidAdaptive { target: f64 },
    #[error("invalid [governor] configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("could not start the duty-cycle thread: {0} (the system may be out of threads)")]
    Thread(std::io::Error),
}

/// What the governor is doing, for `/status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GovernorStatus {
    /// `signals`, `cgroup` or `off`.
    pub method: Method,
    /// The cgroup interface when `method` is `cgroup`.
    pub cgroup: Option<CgroupVersion>,
    /// The budget in force, in cores (`null` = unlimited).
    pub budget_cpus: Option<f64>,
    /// Share of each period the child may run (duty cycle; `null` under a kernel cap).
    pub duty: Option<f64>,
    /// `throttling`, `resting` (nothing in flight), `capped` (kernel cap), `off` or `stopped`.
    pub state: &'static str,
    /// The child's measured CPU in cores over the last window.
    pub measured_cpus: Option<f64>,
    pub priority: Priority,
}

enum Mechanism {
    Signals(SignalLimiter),
    Cgroup(CpuCgroup),
    Off,
}

/// A running governor. [`GovernorHandle::stop`] or drop continues the child and removes the
/// cgroup.
pub struct GovernorHandle {
    pid: i32,
    settings: GovernorSettings,
    mechanism: Mechanism,
    stopped: bool,
    /// Last (time, child CPU) reading, for the measured CPU under a cgroup cap.
    last_reading: Mutex<Option<(Instant, Duration)>>,
}

/// Entry point.
pub struct Governor;

impl Governor {
    /// Starts limiting `child_pid` (and its process group when it leads one).
    pub fn start(
        child_pid: i32,
        config: &GovernorConfig,
        settings: GovernorSettings,
        activity: Activity,
    ) -> Result<GovernorHandle, GovernorError> {
        config.validate().map_err(GovernorError::Config)?;
        if let Some(cpus) = settings.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(GovernorError::InvalidBudget { cpus });
            }
        }
        if let Some(target) = settings.adaptive {
            if !(target > 0.0 && target <= 1.0) {
                return Err(GovernorError::InvalidAdaptive { target });
            }
        }
        let handle = |mechanism| GovernorHandle {
            pid: child_pid,
            settings,
            mechanism,
            stopped: false,
            last_reading: Mutex::new(None),
        };
        let Some(cpus) = settings.cpus.filter(|_| config.method != Method::Off) else {
            tracing::info!(pid = child_pid, method = "off", "CPU governor off");
            return Ok(handle(Mechanism::Off));
        };
        let method = match config.method {
            Method::Auto if settings.adaptive.is_some() => Method::Signals,
            Method::Auto if cgroup::detect().is_some() => Method::Cgroup,
            Method::Auto => Method::Signals,
            other => other,
        };
        if method == Method::Cgroup {
            match start_cgroup(child_pid, config, cpus) {
                Ok(group) => {
                    tracing::info!(
                        pid = child_pid,
                        method = "cgroup",
                        configured = %config.method,
                        version = ?group.version(),
                        path = %group.path().display(),
                        cpus,
                        period = ?config.cgroup_period,
                        "CPU governor: kernel cap"
                    );
                    return Ok(handle(Mechanism::Cgroup(group)));
                }
                Err(err) if config.method == Method::Auto => {
                    tracing::warn!(error = %err, "cgroup cap failed; using the duty cycle instead");
                }
                Err(err) => return Err(err),
            }
        }
        let target = Target::open(child_pid)?;
        let params = LimiterParams {
            cpus,
            usable: settings
                .threads
                .map(|t| t.clamp(1, settings.host.allowed_cpus())),
            period: config.period,
            feedback: config.feedback(),
            adaptive: settings.adaptive.map(|target| AdaptiveParams {
                base: cpus,
                target,
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
            configured = %config.method,
            process_group = group,
            cpus,
            threads = ?settings.threads,
            period = ?config.period,
            adaptive = ?settings.adaptive,
            "CPU governor: duty cycle"
        );
        Ok(handle(Mechanism::Signals(limiter)))
    }
}

fn start_cgroup(pid: i32, config: &GovernorConfig, cpus: f64) -> Result<CpuCgroup, GovernorError> {
    let support = cgroup::detect().ok_or(CgroupError::Unavailable)?;
    Ok(CpuCgroup::create(
        &support,
        pid,
        cpus,
        config.cgroup_period,
    )?)
}

impl GovernorHandle {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True when the duty-cycle thread has ended by itself (the child is gone).
    pub fn is_finished(&self) -> bool {
        match &self.mechanism {
            Mechanism::Signals(l) => l.snapshot().finished,
            _ => false,
        }
    }

    /// What the governor is doing now.
    pub fn status(&self) -> GovernorStatus {
        let mut status = GovernorStatus {
            method: Method::Off,
            cgroup: None,
            budget_cpus: self.settings.cpus,
            duty: None,
            state: "off",
            measured_cpus: None,
            priority: self.settings.priority,
        };
        match &self.mechanism {
            Mechanism::Off => {}
            Mechanism::Signals(limiter) => {
                let snap = limiter.snapshot();
                status.method = Method::Signals;
                status.budget_cpus = Some(snap.budget);
                status.duty = Some(snap.fraction);
                status.measured_cpus = snap.measured;
                status.state = match (snap.finished, snap.throttling) {
                    (true, _) => "stopped",
                    (false, true) => "throttling",
                    (false, false) => "resting",
                };
            }
            Mechanism::Cgroup(group) => {
                status.method = Method::Cgroup;
                status.cgroup = Some(group.version());
                status.state = "capped";
                status.measured_cpus = self.measure_since_last_call();
            }
        }
        if self.stopped {
            status.state = "stopped";
        }
        status
    }

    fn measure_since_last_call(&self) -> Option<f64> {
        let now = (Instant::now(), crate::meter::process_cpu(self.pid)?);
        let mut last = self.last_reading.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.replace(now)?;
        let wall = now.0.duration_since(previous.0).as_secs_f64();
        (wall > 0.0).then(|| now.1.saturating_sub(previous.1).as_secs_f64() / wall)
    }

    /// Continues the child and removes the cgroup. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match &mut self.mechanism {
            Mechanism::Signals(limiter) => limiter.stop(),
            Mechanism::Cgroup(group) => {
                if let Err(err) = group.remove() {
                    tracing::warn!(
                        path = %group.path().display(),
                        error = %err,
                        "could not remove the cgroup; rmdir it once its processes exit"
                    );
                }
            }
            Mechanism::Off => {}
        }
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
            .field("status", &self.status())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn settings(cpus: Option<f64>) -> GovernorSettings {
        GovernorSettings {
            cpus,
            threads: Some(1),
            priority: Priority::Background,
            adaptive: None,
            host: crate::host::Host::detect(),
        }
    }

    #[test]
    fn rejects_bad_budgets_before_touching_the_child() {
        let cfg = GovernorConfig::default();
        for cpus in [0.0, -1.0, f64::NAN] {
            let err =
                Governor::start(1234, &cfg, settings(Some(cpus)), Activity::new()).unwrap_err();
            assert!(matches!(err, GovernorError::InvalidBudget { .. }), "{err}");
        }
        let mut s = settings(Some(0.5));
        s.adaptive = Some(1.5);
        let err = Governor::start(1234, &cfg, s, Activity::new()).unwrap_err();
        assert!(err.to_string().contains("adaptive"), "{err}");
    }

    #[test]
    fn unlimited_is_off_and_signals_reports_resting() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let cfg = GovernorConfig::default();
        let off = Governor::start(pid, &cfg, settings(None), Activity::new()).unwrap();
        assert_eq!(off.status().method, Method::Off);
        assert_eq!(off.status().state, "off");
        let cfg = GovernorConfig {
            method: Method::Signals,
            ..GovernorConfig::default()
        };
        let mut handle = Governor::start(pid, &cfg, settings(Some(0.5)), Activity::new()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let status = handle.status();
        assert_eq!(status.method, Method::Signals);
        assert_eq!(status.state, "resting");
        assert_eq!(status.budget_cpus, Some(0.5));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["method"], "signals");
        assert_eq!(json["priority"], "background");
        handle.stop();
        handle.stop();
        assert_eq!(handle.status().state, "stopped");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn missing_child_is_a_clear_error() {
        let cfg = GovernorConfig {
            method: Method::Signals,
            ..GovernorConfig::default()
        };
        let err =
            Governor::start(i32::MAX - 1, &cfg, settings(Some(0.5)), Activity::new()).unwrap_err();
        assert!(err.to_string().contains("no process"), "{err}");
    }
}
