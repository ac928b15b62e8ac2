//! Kernel CPU caps: a cgroup per launch with a short CFS period, so the kernel itself holds the
//! child to its budget (no userspace wakeups, and the cap survives a crash of the supervisor).
//!
//! cgroup v2: `cpu.max = "<quota> <period>"` in a child of a subtree that has the `cpu`
//! controller enabled in `cgroup.subtree_control`. cgroup v1: `cpu.cfs_quota_us` and
//! `cpu.cfs_period_us` under the `cpu` hierarchy. The group is named
//! `sentinel-supervisor-<pid of the child>` and removed on drop, after moving any process still
//! in it back to the parent group. [`detect`] only looks (stat and access), it never writes.
//!
//! # A delegated subtree (systemd `Delegate=cpu`)
//! Under a service manager that delegates the cgroup, [`detect`] finds this process's own v2
//! cgroup (`0::/path` in `/proc/self/cgroup`) and, when it is writable and offers `cpu` in its
//! `cgroup.controllers`, uses it before any root ([`Layout::Delegated`]). v2 forbids processes
//! in a group whose `cgroup.subtree_control` enables a controller, so the first cap moves the
//! supervisor (and any child of it still there) into the leaf `<own>/supervisor`, writes `+cpu`
//! to `<own>/cgroup.subtree_control`, and puts each backend in `<own>/backend-<pid>` with
//! `cpu.max`; leftovers go back to `<own>/supervisor` on removal. Once moved,
//! `/proc/self/cgroup` names the leaf, whose parent is the subtree again. A subtree shared with
//! processes that are not this supervisor's is left alone (moving them is not ours to do).
//!
//! # The group carries the profile's priority
//! A child that is `SCHED_IDLE` or nice 19 inside its cgroup still competes through the group,
//! and the group competes at its parent's level with the default weight: beside a user's
//! CPU-bound process on the same CPU it takes half of it (its whole quota when that is less).
//! So [`CpuCgroup::set_priority`] gives the group the priority too: `idle` writes
//! `cpu.idle = 1` where the kernel has it (v2 since Linux 5.15; Linux 6.x also shows it on v1),
//! otherwise, and for `background`, the lowest weight (`cpu.weight = 1` on v2,
//! `cpu.shares = 2` on v1). `normal` restores the kernel's defaults (`cpu.idle = 0`,
//! `cpu.weight = 100`, `cpu.shares = 1024`).

use super::priority::Priority;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which cgroup interface is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A writable place where per-launch cgroups can be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSupport {
    pub version: CgroupVersion,
    /// The parent directory of the cgroups we create.
    pub parent: PathBuf,
    pub layout: Layout,
}

/// Where the per-launch groups go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `sentinel-supervisor-<pid>` right under a root of the hierarchy (needs root).
    Root,
    /// `backend-<pid>` in this process's own delegated v2 cgroup, the supervisor in its leaf
    /// [`SUPERVISOR_LEAF`].
    Delegated,
}

/// The leaf of a delegated subtree that holds the supervisor itself.
pub(crate) const SUPERVISOR_LEAF: &str = "supervisor";

impl CgroupSupport {
    /// The name of the group for `key`: a child's pid, or `<own pid>-<n>` for a group made
    /// before its child.
    pub fn group_name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }

    fn prefix(&self) -> &'static str {
        match self.layout {
            Layout::Root => "sentinel-supervisor-",
            Layout::Delegated => "backend-",
        }
    }

    /// Where processes go when their group is removed.
    fn home(&self) -> PathBuf {
        match self.layout {
            Layout::Root => self.parent.clone(),
            Layout::Delegated => self.parent.join(SUPERVISOR_LEAF),
        }
    }
}

/// Why a cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no writable cgroup with the cpu controller (need root, or a delegated cgroup v2 subtree \
         with `cpu` in cgroup.subtree_control; or set governor.method = \"signals\")"
    )]
    Unavailable,
    #[error("could not write {path}: {source} (check permissions, or set governor.method = \"signals\")")]
    Write { path: PathBuf, source: io::Error },
    #[error("could not create cgroup {path}: {source} (check permissions, or set governor.method = \"signals\")")]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "the delegated cgroup {path} also holds process {pid}, which is not this supervisor's: \
         run the supervisor in a cgroup of its own (systemd: a service with Delegate=cpu), or set \
         governor.method = \"signals\""
    )]
    Shared { path: PathBuf, pid: i32 },
}

const V2_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
const V1_ROOTS: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"];

/// Finds a writable cgroup hierarchy with CPU bandwidth control, without side effects: this
/// process's own delegated v2 cgroup first, then a root.
pub fn detect() -> Option<CgroupSupport> {
    let own = crate::os::procfs::own_cgroups().unwrap_or_default();
    detect_in(
        &V2_ROOTS.map(PathBuf::from),
        &V1_ROOTS.map(PathBuf::from),
        crate::os::procfs::unified_path(&own),
    )
}

/// The delegated subtree `own` (relative to a v2 root) when it can take the cap: writable, with
/// `cpu` among its controllers. A path ending in [`SUPERVISOR_LEAF`] is the leaf an earlier cap
/// moved this process into: its parent is the subtree.
fn delegated(v2_roots: &[PathBuf], own: &Path) -> Option<CgroupSupport> {
    let own = match own.file_name() {
        Some(leaf) if leaf == SUPERVISOR_LEAF => own.parent()?,
        _ => own,
    };
    v2_roots.iter().map(|root| root.join(own)).find_map(|dir| {
        let ok = lists_cpu(&dir.join("cgroup.controllers"))
            && writable(&dir)
            && writable(&dir.join("cgroup.subtree_control"))
            && writable(&dir.join("cgroup.procs"));
        ok.then_some(CgroupSupport {
            version: CgroupVersion::V2,
            parent: dir,
            layout: Layout::Delegated,
        })
    })
}

fn detect_in(
    v2_roots: &[PathBuf],
    v1_roots: &[PathBuf],
    own: Option<&Path>,
) -> Option<CgroupSupport> {
    let at_root = |version, parent: &PathBuf| CgroupSupport {
        version,
        parent: parent.clone(),
        layout: Layout::Root,
    };
    own.and_then(|own| delegated(v2_roots, own))
        .or_else(|| {
            v2_roots
                .iter()
                .find(|root| lists_cpu(&root.join("cgroup.subtree_control")) && writable(root))
                .map(|root| at_root(CgroupVersion::V2, root))
        })
        .or_else(|| {
            v1_roots
                .iter()
                .find(|root| root.join("cpu.cfs_quota_us").exists() && writable(root))
                .map(|root| at_root(CgroupVersion::V1, root))
        })
}

/// Makes a delegated subtree ready for backend groups (idempotent): the supervisor, and any
/// child of it still in `<own>`, into `<own>/supervisor`, then `+cpu` in
/// `<own>/cgroup.subtree_control`. Refuses a subtree that holds anyone else's processes.
fn enter_delegated(support: &CgroupSupport) -> Result<(), CgroupError> {
    let own = &support.parent;
    let me = std::process::id() as i32;
    let procs = std::fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<i32> = procs
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Some(&pid) = pids
        .iter()
        .find(|&&pid| pid != me && parent_of(pid) != Some(me))
    {
        // A pid that exited meanwhile has no parent to read: not a stranger.
        if crate::os::procfs::stat(pid).is_some() {
            return Err(CgroupError::Shared {
                path: own.clone(),
                pid,
            });
        }
    }
    let leaf = support.home();
    create_dir(&leaf)?;
    let leaf_procs = leaf.join("cgroup.procs");
    for pid in pids {
        // Ours first (the list comes from the kernel: this process is in it unless moved); one
        // that exited meanwhile fails with ESRCH: nothing to move.
        if let Err(source) = std::fs::write(&leaf_procs, pid.to_string()) {
            if source.raw_os_error() != Some(libc::ESRCH) {
                return Err(CgroupError::Write {
                    path: leaf_procs,
                    source,
                });
            }
        }
    }
    let control = own.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control)
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu" || w == "+cpu"));
    if !enabled {
        write(&control, "+cpu")?;
        tracing::info!(path = %own.display(), "cpu controller enabled in the delegated cgroup");
    }
    Ok(())
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    crate::os::procfs::stat(pid).map(|s| s.ppid)
}

/// Whether this process may write `path` (access(2): permissions only, nothing is opened).
fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The CFS quota for `cpus` cores over `period`, both in microseconds, respecting the kernel's
/// 1 ms minimum quota (the period grows instead when the budget is tiny).
pub(crate) fn quota_for(cpus: f64, period: Duration) -> (u64, u64) {
    let mut period_us = (period.as_micros() as u64).clamp(1_000, 1_000_000);
    let mut quota_us = (cpus * period_us as f64).round() as u64;
    if quota_us < 1_000 {
        period_us = ((1_000.0 / cpus.max(0.001)).round() as u64).min(1_000_000);
        quota_us = 1_000;
    }
    (quota_us, period_us)
}

/// A per-launch cgroup holding the child; removed on drop.
#[derive(Debug)]
pub struct CpuCgroup {
    path: PathBuf,
    support: CgroupSupport,
    removed: bool,
}

impl CpuCgroup {
    /// Creates `sentinel-supervisor-<pid>` with a `cpus` cap and the scheduling weight of
    /// `priority`, and moves `pid` into it.
    pub fn create(
        support: &CgroupSupport,
        pid: i32,
        cpus: f64,
        period: Duration,
        priority: Priority,
    ) -> Result<Self, CgroupError> {
        let group = Self::prepare(support, &pid.to_string(), Some((cpus, period)), priority)?;
        group.adopt(pid)?;
        Ok(group)
    }

    /// Creates `sentinel-supervisor-<key>` with `budget` (cores per period; `None` = no cap)
    /// and the weight of `priority`, empty: a child enters it with [`CpuCgroup::adopt`], or
    /// before its first instruction with [`CpuCgroup::enter_on_exec`]. `key` starts with the
    /// pid whose death makes the group stale (see [`sweep_stale`]).
    pub(crate) fn prepare(
        support: &CgroupSupport,
        key: &str,
        budget: Option<(f64, Duration)>,
        priority: Priority,
    ) -> Result<Self, CgroupError> {
        if support.layout == Layout::Delegated {
            enter_delegated(support)?;
        }
        sweep_stale(support);
        let path = support.parent.join(support.group_name(key));
        create_dir(&path)?;
        let mut group = Self {
            path,
            support: support.clone(),
            removed: false,
        };
        match budget {
            Some((cpus, period)) => group.set_budget(cpus, period)?,
            None => group.lift_budget()?,
        }
        group.set_priority(priority)?;
        Ok(group)
    }

    /// Moves `pid` (all its threads) into the group. What it started before stays where it
    /// is: a child that may start others enters with [`CpuCgroup::enter_on_exec`] instead.
    pub(crate) fn adopt(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())?;
        tracing::debug!(path = %self.path.display(), pid, "process moved into its cgroup");
        Ok(())
    }

    /// Makes the process `cmd` starts enter the group between its fork and its exec, so
    /// everything it ever starts (cmake's ninja, ninja's compilers) is born inside: moved after
    /// the spawn, a child that forks at once leaves its first children behind.
    pub(crate) fn enter_on_exec(&self, cmd: &mut std::process::Command) -> Result<(), CgroupError> {
        use std::os::unix::process::CommandExt;
        let path = self.path.join("cgroup.procs");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CgroupError::Write { path, source })?;
        // SAFETY: the hook makes one write(2) on a descriptor it owns (opened close-on-exec
        // above, alive as long as the command): async-signal-safe. "0" is the writing process.
        unsafe {
            cmd.pre_exec(move || match nix::unistd::write(&procs, b"0") {
                Ok(1) => Ok(()),
                Ok(_) => Err(io::Error::other("short write to cgroup.procs")),
                Err(errno) => Err(io::Error::from(errno)),
            });
        }
        Ok(())
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interface in use.
    pub(crate) fn version(&self) -> CgroupVersion {
        self.support.version
    }

    /// Sets the cap to `cpus` cores per `period`.
    pub(crate) fn set_budget(&mut self, cpus: f64, period: Duration) -> Result<(), CgroupError> {
        let (quota, period_us) = quota_for(cpus, period);
        match self.support.version {
            CgroupVersion::V2 => write(&self.path.join("cpu.max"), &format!("{quota} {period_us}")),
            CgroupVersion::V1 => {
                // The quota must fit the period at every step: lift the quota first.
                write(&self.path.join("cpu.cfs_quota_us"), "-1")?;
                write(&self.path.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&self.path.join("cpu.cfs_quota_us"), &quota.to_string())
            }
        }
    }

    /// No cap (a group left from an earlier launch may hold one).
    fn lift_budget(&mut self) -> Result<(), CgroupError> {
        match self.support.version {
            CgroupVersion::V2 => write(&self.path.join("cpu.max"), "max"),
            CgroupVersion::V1 => write(&self.path.join("cpu.cfs_quota_us"), "-1"),
        }
    }

    /// Gives the group the scheduling weight of `priority` (see the module docs), so the group
    /// competes with the user's processes as its child does.
    pub(crate) fn set_priority(&mut self, priority: Priority) -> Result<(), CgroupError> {
        let idle_file = self.path.join("cpu.idle");
        let has_idle = idle_file.exists();
        let idle = priority == Priority::Idle && has_idle;
        // The kernel refuses a weight while the group is idle: leave idle first.
        if has_idle && !idle {
            write(&idle_file, "0")?;
        }
        if idle {
            write(&idle_file, "1")?;
        } else {
            let (file, value) = weight_for(self.support.version, priority);
            write(&self.path.join(file), value)?;
        }
        Ok(())
    }

    /// [`CpuCgroup::remove`], with a warning when it fails.
    pub(crate) fn remove_or_warn(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!(
                path = %self.path.display(),
                error = %err,
                "could not remove the cgroup; remove it with rmdir once its processes exit"
            );
        }
    }

    /// Moves every process back to the parent group and deletes the cgroup. Idempotent.
    pub(crate) fn remove(&mut self) -> io::Result<()> {
        if self.removed {
            return Ok(());
        }
        let procs = self.path.join("cgroup.procs");
        let parent_procs = self.support.home().join("cgroup.procs");
        for _ in 0..3 {
            let leftovers = std::fs::read_to_string(&procs).unwrap_or_default();
            if leftovers.trim().is_empty() {
                break;
            }
            for pid in leftovers.split_whitespace() {
                // A pid that exited meanwhile fails with ESRCH: nothing to move.
                let _ = std::fs::write(&parent_procs, pid);
            }
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        self.remove_or_warn();
    }
}

/// The weight file and value for `priority` where `cpu.idle` is not used: the lowest weight
/// for `background` (and `idle` on kernels without `cpu.idle`), the default for `normal`.
fn weight_for(version: CgroupVersion, priority: Priority) -> (&'static str, &'static str) {
    let low = priority != Priority::Normal;
    match version {
        CgroupVersion::V2 => ("cpu.weight", if low { "1" } else { "100" }),
        CgroupVersion::V1 => ("cpu.shares", if low { "2" } else { "1024" }),
    }
}

/// Removes empty `sentinel-supervisor-<pid>[-<n>]` (`backend-<pid>[-<n>]` in a delegated
/// subtree) groups whose process is gone: what a supervisor killed with SIGKILL (no chance to run its drop)
/// leaves behind.
pub(crate) fn sweep_stale(support: &CgroupSupport) {
    let Ok(entries) = std::fs::read_dir(&support.parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(support.prefix()))
            .and_then(|key| key.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = crate::os::process::exists(pid);
        let empty = std::fs::read_to_string(entry.path().join("cgroup.procs"))
            .is_ok_and(|p| p.trim().is_empty());
        if !alive && empty && std::fs::remove_dir(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed a stale cgroup");
        }
    }
}

/// Creates the group directory `path` (one left from an earlier launch will do).
fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether the controller list in `file` (`cgroup.controllers`, `cgroup.subtree_control`)
/// names `cpu`.
fn lists_cpu(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
