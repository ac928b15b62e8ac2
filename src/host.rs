//! What this host lets this process use: the CPUs online, the CPUs in this process's affinity
//! mask (how many, and the last one, where a one-thread backend is pinned), and the cgroup CPU
//! quota with where it comes from.
//!
//! This is the one place that asks the kernel how many CPUs there are. A command detects its
//! [`Host`] once ([`Host::detect`]) and hands it to whatever needs it (profile resolution, the
//! governor, the bench); tests build fixed hosts from the plain fields. Two units meet here and
//! are kept apart: a share of the *machine* (what system-wide CPU counters give, 0.0..=1.0 of
//! every online CPU) and *cores this process may use* (affinity and quota).

use serde::Serialize;

/// What this host lets this process use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Host {
    /// CPUs the machine has online: the denominator of every "share of the machine" figure.
    pub online_cpus: usize,
    /// CPUs in this process's affinity mask.
    pub affinity_cpus: usize,
    /// The highest-numbered CPU in this process's affinity mask: where a profile with
    /// `pin = true` and one thread runs its backend. `None` where affinity cannot be read or
    /// set (macOS).
    pub last_allowed_cpu: Option<usize>,
    /// The cgroup CPU quota, when one is set.
    pub quota: Option<CpuQuota>,
}

/// A CPU bandwidth quota from the cgroup this process runs in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuQuota {
    /// The quota in cores (quota / period).
    pub cores: f64,
    /// Which interface set it.
    pub source: QuotaSource,
}

/// Where a [`CpuQuota`] was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaSource {
    /// cgroup v2 `cpu.max`.
    CgroupV2,
    /// cgroup v1 `cpu.cfs_quota_us / cpu.cfs_period_us`.
    CgroupV1,
}

impl QuotaSource {
    fn describe(self) -> &'static str {
        match self {
            QuotaSource::CgroupV2 => "cgroup v2 cpu.max",
            QuotaSource::CgroupV1 => "cgroup v1 cfs quota",
        }
    }
}

impl Host {
    /// Reads the online CPUs, the affinity mask and the cgroup quota of this process. Call it
    /// once per command and pass the result down.
    pub fn detect() -> Host {
        let online = online_cpus();
        let affinity = affinity_cpus();
        let host = Host {
            online_cpus: online,
            affinity_cpus: affinity.as_ref().map_or(online, |cpus| cpus.len()),
            last_allowed_cpu: affinity.and_then(|cpus| cpus.last().copied()),
            quota: cgroup_quota(),
        };
        tracing::debug!(
            online = host.online_cpus,
            affinity = host.affinity_cpus,
            last_allowed_cpu = ?host.last_allowed_cpu,
            quota = ?host.quota,
            "host detected"
        );
        host
    }

    /// A host with no affinity restriction and no quota: `cpus` CPUs (0..cpus), all usable.
    pub fn unrestricted(cpus: usize) -> Host {
        Host {
            online_cpus: cpus.max(1),
            affinity_cpus: cpus.max(1),
            last_allowed_cpu: Some(cpus.max(1) - 1),
            quota: None,
        }
    }

    /// The quota in cores, when one is set.
    pub fn quota_cores(&self) -> Option<f64> {
        self.quota.map(|q| q.cores)
    }

    /// Whole CPUs this process may keep busy at once.
    pub fn allowed_cpus(&self) -> usize {
        let by_quota = self
            .quota_cores()
            .map(|q| q.ceil().max(1.0) as usize)
            .unwrap_or(usize::MAX);
        self.affinity_cpus.min(by_quota).max(1)
    }

    /// The CPU this process can actually get, in cores (the quota may be fractional).
    pub fn allowed_cores(&self) -> f64 {
        let cpus = self.affinity_cpus.max(1) as f64;
        self.quota_cores().map_or(cpus, |q| q.min(cpus))
    }

    /// Converts a share of the whole machine (a system-wide busy fraction, 0.0..=1.0 of every
    /// online CPU) to cores.
    pub fn machine_share_to_cores(&self, share: f64) -> f64 {
        share.clamp(0.0, 1.0) * self.online_cpus.max(1) as f64
    }

    /// Why `allowed_cpus` is what it is, for messages.
    pub fn limit_reason(&self) -> String {
        match self.quota {
            Some(q) if q.cores.ceil() < self.affinity_cpus as f64 => {
                format!(
                    "this host allows {} CPUs (cgroup quota {:.2} cores, {})",
                    self.allowed_cpus(),
                    q.cores,
                    q.source.describe()
                )
            }
            _ if self.affinity_cpus < self.online_cpus => format!(
                "this host allows {} CPUs (affinity mask, {} online)",
                self.affinity_cpus, self.online_cpus
            ),
            _ => format!("this host allows {} CPUs", self.allowed_cpus()),
        }
    }

    /// One line for humans: `4 online CPUs, 2 in affinity mask, cgroup quota none`.
    pub fn describe(&self) -> String {
        format!(
            "{} online CPUs, {} in affinity mask, cgroup quota {}",
            self.online_cpus,
            self.affinity_cpus,
            self.quota.map_or("none".to_string(), |q| format!(
                "{:.2} cores ({})",
                q.cores,
                q.source.describe()
            ))
        )
    }
}

/// CPUs the machine has online, read once: glibc answers `sysconf(_SC_NPROCESSORS_ONLN)` by
/// reading a sysfs file, which the samplers would otherwise do on every reading. Prefer a
/// [`Host`] passed down; this is for the meter's own arithmetic (system-wide CPU counters are
/// shares of every online CPU, whatever this process's affinity).
pub fn online_cpus() -> usize {
    static ONLINE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ONLINE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n > 0 {
            n as usize
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    })
}

/// The CPUs in this process's affinity mask, in ascending order (`None` when it cannot be read
/// or is empty).
#[cfg(target_os = "linux")]
fn affinity_cpus() -> Option<Vec<usize>> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .collect::<Vec<_>>()
        })
        .filter(|cpus| !cpus.is_empty())
}

#[cfg(not(target_os = "linux"))]
fn affinity_cpus() -> Option<Vec<usize>> {
    None
}

/// The CPU quota of this process's cgroup (v2 `cpu.max`, or v1 `cfs_quota_us/cfs_period_us`).
#[cfg(target_os = "linux")]
fn cgroup_quota() -> Option<CpuQuota> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).ok();
            if let Some(cores) = max.as_deref().and_then(parse_cpu_max) {
                return Some(CpuQuota {
                    cores,
                    source: QuotaSource::CgroupV2,
                });
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            let dir = format!("/sys/fs/cgroup/cpu{path}");
            let read = |f: &str| {
                std::fs::read_to_string(format!("{dir}/{f}"))
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()
            };
            if let (Some(q), Some(p)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                if q > 0 && p > 0 {
                    return Some(CpuQuota {
                        cores: q as f64 / p as f64,
                        source: QuotaSource::CgroupV1,
                    });
                }
            }
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn cgroup_quota() -> Option<CpuQuota> {
    None
}

/// Parses cgroup v2 `cpu.max` (`"max 100000"` or `"50000 100000"`) into cores.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(cores: f64) -> Option<CpuQuota> {
        Some(CpuQuota {
            cores,
            source: QuotaSource::CgroupV2,
        })
    }

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn affinity_and_quota_bound_what_this_process_may_use() {
        let pinned = Host {
            online_cpus: 8,
            affinity_cpus: 2,
            last_allowed_cpu: Some(1),
            quota: None,
        };
        assert_eq!(pinned.allowed_cpus(), 2);
        assert_eq!(pinned.allowed_cores(), 2.0);
        assert!(pinned.limit_reason().contains("affinity mask, 8 online"));
        let capped = Host {
            online_cpus: 8,
            affinity_cpus: 8,
            last_allowed_cpu: Some(7),
            quota: quota(1.5),
        };
        assert_eq!(capped.allowed_cpus(), 2);
        assert_eq!(capped.allowed_cores(), 1.5);
        assert!(capped
            .limit_reason()
            .contains("cgroup quota 1.50 cores, cgroup v2 cpu.max"));
        // A quota above the affinity mask does not raise it.
        let both = Host {
            online_cpus: 8,
            affinity_cpus: 2,
            last_allowed_cpu: Some(1),
            quota: quota(4.0),
        };
        assert_eq!((both.allowed_cpus(), both.allowed_cores()), (2, 2.0));
    }

    #[test]
    fn a_machine_share_is_cores_of_every_online_cpu() {
        let pinned = Host {
            online_cpus: 8,
            affinity_cpus: 2,
            last_allowed_cpu: Some(1),
            quota: None,
        };
        assert_eq!(pinned.machine_share_to_cores(0.25), 2.0);
        assert_eq!(pinned.machine_share_to_cores(1.5), 8.0);
        assert_eq!(Host::unrestricted(2).machine_share_to_cores(0.5), 1.0);
    }

    #[test]
    fn detection_agrees_with_the_kernel() {
        let h = Host::detect();
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
        assert_eq!(h.online_cpus, online);
        assert!((1..=online).contains(&h.affinity_cpus), "{h:?}");
        // The standard library reads the same mask and quota (it rounds the quota up).
        let std_view = std::thread::available_parallelism().unwrap().get();
        assert_eq!(h.allowed_cpus(), std_view, "{h:?}");
    }

    /// The CPUs of a kernel CPU list such as `0-3,6,8-9`.
    #[cfg(target_os = "linux")]
    fn cpu_list(list: &str) -> std::collections::BTreeSet<usize> {
        list.trim()
            .split(',')
            .filter(|r| !r.is_empty())
            .flat_map(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn host_detection_agrees_with_the_kernels_lists() {
        assert_eq!(cpu_list("0-3,6,8-9").len(), 7);
        let h = Host::detect();
        // Second sources: the online list in sysfs and this process's allowed list in /proc
        // (sched_getaffinity reports the allowed CPUs that are online).
        let online = cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = cpu_list(
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap(),
        );
        assert_eq!(h.online_cpus, online.len());
        assert_eq!(h.affinity_cpus, allowed.intersection(&online).count());
        assert_eq!(
            h.last_allowed_cpu,
            allowed.intersection(&online).last().copied()
        );
        assert!(h.affinity_cpus <= h.online_cpus);
        assert!((1..=h.affinity_cpus).contains(&h.allowed_cpus()));
        assert!(h.allowed_cores() <= h.affinity_cpus as f64);
    }
}
