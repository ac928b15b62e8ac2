//! What this host lets this process use: the CPUs online, the CPUs in this process's affinity
//! mask (how many, and the last one, where a one-thread backend is pinned), and the cgroup CPU
//! quota with where it comes from; and the CPU's signature (model and the ISA flags a
//! llama.cpp build depends on), which keys the backend's smoke-test verdicts.
//!
//! This is the one place that asks the kernel how many CPUs there are (and reads the quota
//! from this process's cgroups through [`crate::os::procfs`]). A command detects its
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
            affinity_cpus: affinity.as_ref().map_or(online, std::vec::Vec::len),
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
    pub(crate) fn quota_cores(&self) -> Option<f64> {
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
    pub(crate) fn limit_reason(&self) -> String {
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
    pub(crate) fn describe(&self) -> String {
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

/// The ISA flags a llama.cpp build depends on, as `/proc/cpuinfo` spells them on x86-64: what
/// `GGML_NATIVE` compiles for and what ggml's CPU variants are chosen by.
#[cfg(any(target_os = "linux", test))]
pub(crate) const X86_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512vbmi",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

/// The same for aarch64 (`Features` in `/proc/cpuinfo`).
#[cfg(any(target_os = "linux", test))]
pub(crate) const ARM_FLAGS: &[&str] = &["asimd", "asimddp", "sve", "sve2", "i8mm", "sme"];

/// What a compiled llama-server depends on about this CPU: its model and the ISA flags that
/// matter ([`X86_FLAGS`], [`ARM_FLAGS`]). A verdict on a binary holds for one signature: the
/// cache may be copied to a host with another CPU, where the binary must be tested again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CpuSignature {
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// `model name` on x86, the implementer and part numbers on ARM, the brand string on macOS.
    pub model: String,
    /// The flags of the list for this architecture that the CPU has, in the list's order.
    pub flags: Vec<String>,
}

impl CpuSignature {
    /// This host's signature, read once per process.
    pub(crate) fn detect() -> CpuSignature {
        static SIGNATURE: std::sync::OnceLock<CpuSignature> = std::sync::OnceLock::new();
        SIGNATURE.get_or_init(detect_signature).clone()
    }

    /// The signature from the text of `/proc/cpuinfo` (the first processor's entry: every
    /// core of one machine has the same ISA).
    #[cfg(any(target_os = "linux", test))]
    pub(crate) fn from_cpuinfo(arch: &str, cpuinfo: &str) -> CpuSignature {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let (model, present, wanted) = if arch == "aarch64" {
            let model = match (field("CPU implementer"), field("CPU part")) {
                (Some(i), Some(p)) => format!("implementer {i} part {p}"),
                _ => field("Hardware").unwrap_or_default(),
            };
            (model, field("Features").unwrap_or_default(), ARM_FLAGS)
        } else {
            let model = field("model name").unwrap_or_default();
            (model, field("flags").unwrap_or_default(), X86_FLAGS)
        };
        let present: std::collections::HashSet<&str> = present.split_whitespace().collect();
        CpuSignature {
            arch: arch.to_string(),
            model,
            flags: wanted
                .iter()
                .filter(|f| present.contains(**f))
                .map(std::string::ToString::to_string)
                .collect(),
        }
    }

    /// Whether the CPU has `flag` (as `/proc/cpuinfo` spells it).
    #[cfg(test)]
    pub(crate) fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A short stable key (12 hex digits of a sha256 of the architecture, model and flags):
    /// part of a verdict's file name.
    pub(crate) fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [&self.arch, &self.model].into_iter().chain(&self.flags) {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())[..12].to_string()
    }

    /// One line for humans: `AMD EPYC (x86_64: sse4_2 avx avx2 ...)`.
    pub(crate) fn describe(&self) -> String {
        let model = if self.model.is_empty() {
            "unknown CPU"
        } else {
            &self.model
        };
        format!("{model} ({}: {})", self.arch, self.flags.join(" "))
    }
}

#[cfg(target_os = "linux")]
fn detect_signature() -> CpuSignature {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read /proc/cpuinfo; the CPU signature has no flags");
        String::new()
    });
    CpuSignature::from_cpuinfo(std::env::consts::ARCH, &text)
}

/// macOS has no `/proc/cpuinfo`: the brand string (`machdep.cpu.brand_string`, read by
/// `sysinfo`), the flags from the standard library's run-time detection.
#[cfg(not(target_os = "linux"))]
fn detect_signature() -> CpuSignature {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};
    let system =
        System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::everything()));
    CpuSignature {
        arch: std::env::consts::ARCH.to_string(),
        model: system
            .cpus()
            .first()
            .map(|cpu| cpu.brand().trim().to_string())
            .unwrap_or_default(),
        flags: detected_flags(),
    }
}

#[cfg(all(not(target_os = "linux"), target_arch = "x86_64"))]
fn detected_flags() -> Vec<String> {
    use std::arch::is_x86_feature_detected;
    present(&[
        ("sse4_2", is_x86_feature_detected!("sse4.2")),
        ("avx", is_x86_feature_detected!("avx")),
        ("avx2", is_x86_feature_detected!("avx2")),
        ("fma", is_x86_feature_detected!("fma")),
        ("f16c", is_x86_feature_detected!("f16c")),
        ("bmi2", is_x86_feature_detected!("bmi2")),
        ("avx512f", is_x86_feature_detected!("avx512f")),
        ("avx512bw", is_x86_feature_detected!("avx512bw")),
        ("avx512vl", is_x86_feature_detected!("avx512vl")),
        ("avx512_vnni", is_x86_feature_detected!("avx512vnni")),
        ("avx512vbmi", is_x86_feature_detected!("avx512vbmi")),
    ])
}

#[cfg(all(not(target_os = "linux"), target_arch = "aarch64"))]
fn detected_flags() -> Vec<String> {
    use std::arch::is_aarch64_feature_detected;
    present(&[
        ("asimd", is_aarch64_feature_detected!("neon")),
        ("asimddp", is_aarch64_feature_detected!("dotprod")),
        ("sve", is_aarch64_feature_detected!("sve")),
        ("sve2", is_aarch64_feature_detected!("sve2")),
        ("i8mm", is_aarch64_feature_detected!("i8mm")),
    ])
}

#[cfg(all(
    not(target_os = "linux"),
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
fn detected_flags() -> Vec<String> {
    Vec::new()
}

/// The names `detected` marks as present, in its order.
#[cfg(all(
    not(target_os = "linux"),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn present(detected: &[(&str, bool)]) -> Vec<String> {
    detected
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// CPUs the machine has online, asked of the kernel by [`Host::detect`] (the one place: every
/// other reader takes [`Host::online_cpus`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn online_cpus() -> usize {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    }
}

/// CPUs the machine has online (macOS: the standard library answers with the kernel's
/// `hw.activecpu`, the online count, having no affinity masks or cgroup quotas to apply).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
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
    let root = std::path::Path::new("/sys/fs/cgroup");
    crate::os::procfs::own_cgroups()?.iter().find_map(|cgroup| {
        if cgroup.is_unified() {
            let dir = root.join(cgroup.relative());
            let cores = parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)?;
            Some(CpuQuota {
                cores,
                source: QuotaSource::CgroupV2,
            })
        } else if cgroup.has_controller("cpu") {
            let dir = root.join("cpu").join(cgroup.relative());
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()
            };
            let (q, p) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
            (q > 0 && p > 0).then(|| CpuQuota {
                cores: q as f64 / p as f64,
                source: QuotaSource::CgroupV1,
            })
        } else {
            None
        }
    })
}

#[cfg(not(target_os = "linux"))]
fn cgroup_quota() -> Option<CpuQuota> {
    None
}

/// Parses cgroup v2 `cpu.max` (`"max 100000"` or `"50000 100000"`) into cores.
#[cfg(any(target_os = "linux", test))]
pub(crate) fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

#[cfg(test)]
mod tests;
