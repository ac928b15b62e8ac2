//! Choosing the method and starting it: [`Governor::prepare`] picks it and makes its cgroup
//! before the child exists, [`Prepared::start`] governs the child (see the parent module for
//! how `auto` picks).

use super::{source_of, GovernorError, GovernorHandle, Mechanism};
use crate::governor::adaptive::AdaptiveParams;
use crate::governor::cgroup::{self, CgroupError, CpuCgroup};
use crate::governor::duty_cycle::{LimiterParams, SignalLimiter, StoppedTime};
use crate::governor::pinned::PinnedPid;
use crate::governor::settings::{GovernorConfig, GovernorSettings, Method};
use crate::governor::snapshot::{Publisher, SnapshotSender};
use crate::governor::{Activity, Priority};
use crate::units::Cores;

/// Entry point.
pub(crate) struct Governor;

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
pub(crate) struct Prepared {
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
    pub(crate) fn start(
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
    pub(crate) fn prepare(
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
    pub(crate) fn enter_on_exec(
        &self,
        cmd: &mut std::process::Command,
    ) -> Result<(), GovernorError> {
        match &self.plan {
            Plan::Cgroup(group) | Plan::Off(Some(group)) | Plan::Signals(_, Some(group)) => {
                Ok(group.enter_on_exec(cmd)?)
            }
            Plan::Off(None) | Plan::Signals(_, None) => Ok(()),
        }
    }

    /// Governs `child_pid` (moved into the cgroup if it is not born there), as
    /// [`Governor::start`] does.
    pub(crate) fn start(
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
                let limiter = start_duty_cycle(
                    child_pid,
                    &config,
                    settings,
                    cpus,
                    &activity,
                    stopped.clone(),
                )?;
                Mechanism::Signals(limiter, group)
            }
        };
        let window = config.feedback().window;
        let publisher = Publisher::start(
            child_pid,
            window,
            source_of(&mechanism),
            settings,
            report.clone(),
        )
        .map_err(GovernorError::Thread)?;
        Ok(GovernorHandle {
            pid: child_pid,
            mechanism,
            publisher,
            report,
            stopped: false,
            config,
            settings,
            activity,
            held: stopped,
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
    priority: Priority,
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
fn priority_group(key: &str, priority: Priority) -> Option<CpuCgroup> {
    // macOS has no cgroups and no autogroups: the priority (Darwin background) holds as set.
    if priority == Priority::Normal || cfg!(not(target_os = "linux")) {
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
