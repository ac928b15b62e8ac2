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

mod prepare;

pub(crate) use prepare::{Governor, Prepared};

use super::cgroup::{CgroupError, CpuCgroup};
use super::duty_cycle::{SignalLimiter, StoppedTime};
use super::pinned::PinnedPidError;
use super::settings::{GovernorConfig, GovernorSettings, Method};
use super::snapshot::{GovernorSnapshot, Publisher, SnapshotSender, Source};
use super::Activity;
use crate::units::Cores;

/// Why the governor could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GovernorError {
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
/// cgroup and publishes a last snapshot in state `stopped`. While it runs it takes new
/// settings ([`GovernorHandle::retune`]) and a new place to report
/// ([`GovernorHandle::report_to`]) without letting go of the child.
pub(crate) struct GovernorHandle {
    pid: i32,
    mechanism: Mechanism,
    publisher: Publisher,
    report: SnapshotSender,
    stopped: bool,
    /// What it was started with: a retune compares against them and a rebuild reuses them.
    config: GovernorConfig,
    settings: GovernorSettings,
    activity: Activity,
    /// Where the duty cycle adds the time it holds the child stopped (kept across a rebuild).
    held: StoppedTime,
}

/// What the snapshot thread reads of `mechanism`.
fn source_of(mechanism: &Mechanism) -> Source {
    match mechanism {
        Mechanism::Signals(limiter, _) => Source::Signals(limiter.readings()),
        Mechanism::Cgroup(group) => Source::Cgroup(group.version()),
        Mechanism::Off(_) => Source::Off,
    }
}

impl GovernorHandle {
    /// The child's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// True when the duty-cycle thread has ended by itself (the child is gone).
    pub(crate) fn is_finished(&self) -> bool {
        matches!(&self.mechanism, Mechanism::Signals(l, _) if l.snapshot().finished)
    }

    /// The cgroup the child was moved into (its cap, or only its priority), if any.
    pub(crate) fn cgroup(&self) -> Option<std::path::PathBuf> {
        match &self.mechanism {
            Mechanism::Cgroup(group) => Some(group),
            Mechanism::Signals(_, group) | Mechanism::Off(group) => group.as_ref(),
        }
        .map(|group| group.path().to_path_buf())
    }

    /// The last snapshot the governor published (`None` once the lifecycle has cleared it).
    pub(crate) fn snapshot(&self) -> Option<GovernorSnapshot> {
        self.report.borrow().clone()
    }

    /// Puts `settings` (budget, priority, threads, method, period) and `config` in force on
    /// the same child: a kernel cap that stays a kernel cap is rewritten in place (the child
    /// is never let go); any other change rebuilds the mechanism, this being the one place
    /// a governor is stopped and started again. A changed priority is set on the child's
    /// threads too. On error the governor is stopped (the child runs unthrottled).
    pub(crate) fn retune(
        &mut self,
        config: &GovernorConfig,
        settings: GovernorSettings,
    ) -> Result<(), GovernorError> {
        let old_priority = self.settings.priority;
        let retuned = match self.retune_in_place(config, settings) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.stop();
                Governor::start(
                    self.pid,
                    config,
                    settings,
                    self.activity.clone(),
                    self.held.clone(),
                    self.report.clone(),
                )
                .map(|rebuilt| *self = rebuilt)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = retuned {
            self.stop();
            return Err(e);
        }
        let (pid, priority) = (self.pid, settings.priority);
        if priority != old_priority {
            match super::priority::apply_to_process_threads(pid, priority) {
                Ok(()) => tracing::info!(pid, %priority, "backend priority changed"),
                Err(e) => {
                    tracing::warn!(pid, %priority, error = %e, "cannot change the running backend's priority (raising it needs privileges); the next backend starts with it");
                }
            }
        }
        Ok(())
    }

    /// Rewrites a kernel cap in place when the new settings keep one; `false` when the
    /// mechanism must be rebuilt (a duty cycle, a method or an adaptive mode that changes).
    fn retune_in_place(
        &mut self,
        config: &GovernorConfig,
        settings: GovernorSettings,
    ) -> Result<bool, GovernorError> {
        let Mechanism::Cgroup(group) = &mut self.mechanism else {
            return Ok(false);
        };
        let keeps_cap = match settings.method {
            Method::Cgroup => true,
            Method::Auto => settings.adaptive.is_none(),
            Method::Signals | Method::Off => false,
        };
        let Some(cpus) = settings.cpus.map(Cores::get).filter(|_| keeps_cap) else {
            return Ok(false);
        };
        config.validate().map_err(GovernorError::Config)?;
        group.set_budget(cpus, config.cgroup_period)?;
        if settings.priority != self.settings.priority {
            group.set_priority(settings.priority)?;
        }
        tracing::info!(pid = self.pid, cpus, priority = %settings.priority, period = ?config.cgroup_period, "CPU governor: kernel cap changed in place");
        self.config = config.clone();
        self.settings = settings;
        self.restart_publisher()?;
        Ok(true)
    }

    /// Whether it publishes on `report`.
    pub(crate) fn reports_to(&self, report: &SnapshotSender) -> bool {
        self.report.same_channel(report)
    }

    /// Publishes on `report` from now on (the old place gets no last snapshot); the
    /// mechanism goes on untouched. Blue-green moves `/status` to the new backend this way.
    pub(crate) fn report_to(&mut self, report: SnapshotSender) -> Result<(), GovernorError> {
        self.report = report;
        self.restart_publisher()
    }

    /// A new snapshot thread for the current settings and place to report.
    fn restart_publisher(&mut self) -> Result<(), GovernorError> {
        self.publisher.detach();
        self.publisher = Publisher::start(
            self.pid,
            self.config.feedback().window,
            source_of(&self.mechanism),
            self.settings,
            self.report.clone(),
        )
        .map_err(GovernorError::Thread)?;
        Ok(())
    }

    /// Continues the child, removes the cgroup and publishes a last snapshot in state
    /// `stopped`. Idempotent.
    pub(crate) fn stop(&mut self) {
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
            group.remove_or_warn();
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
mod tests;
