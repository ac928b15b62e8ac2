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
use super::duty_cycle::{LimiterParams, SignalLimiter, StoppedTime};
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

/// What a prepared governor will run, chosen before the child exists.
enum Plan {
    Off(Option<CpuCgroup>),
    Cgroup(CpuCgroup),
    Signals(f64, Option<CpuCgroup>),
}

/// A governor set up before its child is started: the method is chosen and its cgroup (the cap,
/// or only the priority) made, so the child can be born inside it
/// ([`Prepared::enter_on_exec`]) and nothing it starts escapes; [`Prepared::start`] then
/// governs the child.
pub struct Prepared {
    config: GovernorConfig,
    settings: GovernorSettings,
    plan: Plan,
}

impl Governor {
    /// Starts limiting `child_pid` (and its process group when it leads one), publishing its
    /// snapshot on `report` at once and then once per feedback window, and adding the time the
    /// duty cycle holds it stopped to `stopped`. What the child started before this call stays
    /// outside its cgroup: a child that starts others is spawned with [`Governor::prepare`]
    /// instead.
    pub fn start(
        child_pid: i32,
        config: &GovernorConfig,
        settings: GovernorSettings,
        activity: Activity,
        stopped: StoppedTime,
        report: SnapshotSender,
    ) -> Result<GovernorHandle, GovernorError> {
        Self::prepare_keyed(config, settings, &child_pid.to_string())?
            .start(child_pid, activity, stopped, report)
    }

    /// Chooses the method and makes its cgroup, before the child exists.
    pub fn prepare(
        config: &GovernorConfig,
        settings: GovernorSettings,
    ) -> Result<Prepared, GovernorError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::prepare_keyed(config, settings, &format!("{}-{n}", std::process::id()))
    }

    fn prepare_keyed(
        config: &GovernorConfig,
        settings: GovernorSettings,
        key: &str,
    ) -> Result<Prepared, GovernorError> {
        config.validate().map_err(GovernorError::Config)?;
        config
            .check_profile_period(settings.period)
            .map_err(|m| GovernorError::Config(format!("period {m}")))?;
        let prepared = |plan| Prepared {
            config: config.clone(),
            settings,
            plan,
        };
        let Some(cpus) = settings
            .cpus
            .map(Cores::get)
            .filter(|_| settings.method != Method::Off)
        else {
            return Ok(prepared(Plan::Off(priority_group(key, settings.priority))));
        };
        let method = match settings.method {
            Method::Auto if settings.adaptive.is_some() => Method::Signals,
            Method::Auto if cgroup::detect().is_some() => Method::Cgroup,
            Method::Auto => Method::Signals,
            other => other,
        };
        if method == Method::Cgroup {
            match capped_group(key, config, cpus, settings.priority) {
                Ok(group) => return Ok(prepared(Plan::Cgroup(group))),
                Err(err) if settings.method == Method::Auto => {
                    tracing::warn!(error = %err, "cgroup cap failed; using the duty cycle instead");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(prepared(Plan::Signals(
            cpus,
            priority_group(key, settings.priority),
        )))
    }
}

impl Prepared {
    /// Makes the process `cmd` starts enter the governor's cgroup before its first
    /// instruction, where the governor has one.
    pub fn enter_on_exec(&self, cmd: &mut std::process::Command) -> Result<(), GovernorError> {
        match &self.plan {
            Plan::Cgroup(group) | Plan::Off(Some(group)) | Plan::Signals(_, Some(group)) => {
                Ok(group.enter_on_exec(cmd)?)
            }
            Plan::Off(None) | Plan::Signals(_, None) => Ok(()),
        }
    }

    /// Governs `child_pid` (moved into the cgroup if it is not born there), as
    /// [`Governor::start`] does.
    pub fn start(
        self,
        child_pid: i32,
        activity: Activity,
        stopped: StoppedTime,
        report: SnapshotSender,
    ) -> Result<GovernorHandle, GovernorError> {
        let Prepared {
            config,
            settings,
            plan,
        } = self;
        let mechanism = match plan {
            Plan::Off(group) => {
                let group = group.and_then(|g| adopt_for_priority(g, child_pid, settings));
                tracing::info!(pid = child_pid, method = "off", "CPU governor off");
                Mechanism::Off(group)
            }
            Plan::Cgroup(group) => {
                group.adopt(child_pid)?;
                tracing::info!(
                    pid = child_pid,
                    method = "cgroup",
                    configured = %settings.method,
                    version = ?group.version(),
                    path = %group.path().display(),
                    cpus = ?settings.cpus.map(Cores::get),
                    priority = %settings.priority,
                    period = ?config.cgroup_period,
                    "CPU governor: kernel cap"
                );
                Mechanism::Cgroup(group)
            }
            Plan::Signals(cpus, group) => {
                let group = group.and_then(|g| adopt_for_priority(g, child_pid, settings));
                let limiter =
                    start_duty_cycle(child_pid, &config, settings, cpus, &activity, stopped)?;
                Mechanism::Signals(limiter, group)
            }
        };
        let source = match &mechanism {
            Mechanism::Signals(limiter, _) => Source::Signals(limiter.readings()),
            Mechanism::Cgroup(group) => Source::Cgroup(group.version()),
            Mechanism::Off(_) => Source::Off,
        };
        let window = config.feedback().window;
        let publisher = Publisher::start(child_pid, window, source, settings, report.clone())
            .map_err(GovernorError::Thread)?;
        Ok(GovernorHandle {
            pid: child_pid,
            mechanism,
            publisher,
            report,
            stopped: false,
        })
    }
}

/// The duty cycle on `child_pid` (its process group when it leads one).
fn start_duty_cycle(
    child_pid: i32,
    config: &GovernorConfig,
    settings: GovernorSettings,
    cpus: f64,
    activity: &Activity,
    stopped: StoppedTime,
) -> Result<SignalLimiter, GovernorError> {
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
        stopped,
    };
    let group = target.is_group();
    let limiter = SignalLimiter::start(target, params, activity).map_err(GovernorError::Thread)?;
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
    Ok(limiter)
}

/// The priority group with `child_pid` in it; `None` (with a warning: the priority then holds
/// only within the supervisor's own group) if it cannot be moved there.
fn adopt_for_priority(
    group: CpuCgroup,
    child_pid: i32,
    settings: GovernorSettings,
) -> Option<CpuCgroup> {
    match group.adopt(child_pid) {
        Ok(()) => {
            tracing::info!(pid = child_pid, priority = %settings.priority, path = %group.path().display(), "backend's priority carried by its cgroup (no cap)");
            Some(group)
        }
        Err(err) => {
            tracing::warn!(pid = child_pid, priority = %settings.priority, error = %err, "could not move the backend into its priority cgroup; its priority holds only within the supervisor's own group");
            None
        }
    }
}

fn capped_group(
    key: &str,
    config: &GovernorConfig,
    cpus: f64,
    priority: super::Priority,
) -> Result<CpuCgroup, GovernorError> {
    let support = cgroup::detect().ok_or(CgroupError::Unavailable)?;
    Ok(CpuCgroup::prepare(
        &support,
        key,
        Some((cpus, config.cgroup_period)),
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
fn priority_group(key: &str, priority: super::Priority) -> Option<CpuCgroup> {
    // macOS has no cgroups and no autogroups: the priority (Darwin background) holds as set.
    if priority == super::Priority::Normal || cfg!(not(target_os = "linux")) {
        return None;
    }
    let Some(support) = cgroup::detect() else {
        tracing::warn!(
            %priority,
            "no writable cgroup: the backend's priority holds only within the supervisor's own \
             session or service group (run as root, or under the shipped systemd unit with \
             Delegate=cpu, for it to hold against every other process)"
        );
        return None;
    };
    match CpuCgroup::prepare(&support, key, None, priority) {
        Ok(group) => Some(group),
        Err(err) => {
            tracing::warn!(%priority, error = %err, "could not give the backend a cgroup for its priority; it holds only within the supervisor's own group");
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
        let off = Governor::start(
            pid,
            &cfg,
            settings(None),
            Activity::new(),
            Default::default(),
            report(),
        )
        .unwrap();
        let snap = off.snapshot().unwrap();
        assert_eq!(snap.method, Method::Off);
        assert_eq!(snap.state, GovernorState::Off);
        // The shipped `governor.method` is `auto`: the settings' method (a profile's) wins.
        assert_eq!(cfg.method, Method::Auto);
        let tx = report();
        let rx = tx.subscribe();
        let mut handle = Governor::start(
            pid,
            &cfg,
            settings(Some(0.5)),
            Activity::new(),
            Default::default(),
            tx,
        )
        .unwrap();
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
            Default::default(),
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
        let err = Governor::start(
            i32::MAX - 1,
            &shipped(),
            bad,
            Activity::new(),
            Default::default(),
            report(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("period 2s is out of range"),
            "{err}"
        );
    }
}
