//! Profiles resolved against this host: concrete thread counts, CPU budget, priority and slots,
//! never asking for more CPUs than this process may use (affinity mask, cgroup quota).

use crate::cli::ConfigArgs;
use crate::config::{Config, ProfileConfig};
use crate::governor::priority::Priority;
use crate::governor::threads_for_budget;
use serde::Serialize;
use std::process::ExitCode;

/// What this host lets this process use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Host {
    /// CPUs the machine has online.
    pub online_cpus: usize,
    /// CPUs in this process's affinity mask.
    pub affinity_cpus: usize,
    /// The cgroup CPU quota in cores, when one is set.
    pub quota_cpus: Option<f64>,
}

impl Host {
    /// Reads the affinity mask and cgroup quota of this process.
    pub fn detect() -> Host {
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Host {
            online_cpus: online_cpus().unwrap_or(online),
            affinity_cpus: affinity_cpus().unwrap_or(online),
            quota_cpus: cgroup_quota_cpus(),
        }
    }

    /// Whole CPUs this process may keep busy at once.
    pub fn allowed_cpus(&self) -> usize {
        let by_quota = self
            .quota_cpus
            .map(|q| q.ceil().max(1.0) as usize)
            .unwrap_or(usize::MAX);
        self.affinity_cpus.min(by_quota).max(1)
    }

    /// The CPU budget this process can actually get, in cores.
    pub fn allowed_cores(&self) -> f64 {
        let cpus = self.affinity_cpus as f64;
        self.quota_cpus.map_or(cpus, |q| q.min(cpus))
    }

    /// Why `allowed_cpus` is what it is, for messages.
    pub fn limit_reason(&self) -> String {
        match self.quota_cpus {
            Some(q) if q.ceil() < self.affinity_cpus as f64 => {
                format!(
                    "this host allows {} CPUs (cgroup quota {q:.2} cores)",
                    self.allowed_cpus()
                )
            }
            _ if self.affinity_cpus < self.online_cpus => format!(
                "this host allows {} CPUs (affinity mask, {} online)",
                self.affinity_cpus, self.online_cpus
            ),
            _ => format!("this host allows {} CPUs", self.allowed_cpus()),
        }
    }
}

/// A profile with every value decided for this host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub name: String,
    pub description: String,
    pub threads: usize,
    pub threads_batch: usize,
    /// CPU budget in cores; `None` = unlimited.
    pub cpus: Option<f64>,
    pub priority: Priority,
    pub slots: usize,
    pub ctx_size: u32,
    pub embeddings: bool,
    pub adaptive: Option<f64>,
    /// Cap on generated tokens per request (`max_tokens`, else `proxy.max_tokens`).
    pub max_tokens: u32,
    pub extra_args: Vec<String>,
    /// One line per value that was derived or adjusted, saying why.
    pub notes: Vec<String>,
}

/// Resolves a named profile of `config` against `host`.
pub fn resolve(
    config: &Config,
    name: &str,
    host: &Host,
) -> Result<Resolved, crate::config::ConfigError> {
    let p = config.profile(name)?;
    let defaults = (config.backend.ctx_size, config.proxy.max_tokens);
    Ok(resolve_one(name, p, defaults, host))
}

/// `defaults`: `backend.ctx_size` and `proxy.max_tokens`, for a profile without its own.
fn resolve_one(name: &str, p: &ProfileConfig, defaults: (u32, u32), host: &Host) -> Resolved {
    let (default_ctx, default_max_tokens) = defaults;
    let allowed = host.allowed_cpus();
    let mut notes = Vec::new();

    let cpus = match p.cpus {
        Some(c) if c > host.allowed_cores() => {
            notes.push(format!(
                "cpus {c} -> {:.2}, {}",
                host.allowed_cores(),
                host.limit_reason()
            ));
            Some(host.allowed_cores())
        }
        other => other,
    };

    let mut pick = |key: &str, explicit: Option<usize>, fallback: usize, why: &str| -> usize {
        match explicit {
            Some(t) if t > allowed => {
                notes.push(format!("{key} {t} -> {allowed}, {}", host.limit_reason()));
                allowed
            }
            Some(t) => t,
            None => {
                notes.push(format!("{key} {fallback}, {why}"));
                fallback
            }
        }
    };
    let budget_threads = threads_for_budget(cpus, allowed);
    let why = match cpus {
        Some(c) => format!("follows the budget of {c:.2} cores"),
        None => format!("no budget: {}", host.limit_reason()),
    };
    let threads = pick("threads", p.threads, budget_threads, &why);
    let threads_batch = pick("threads_batch", p.threads_batch, threads, "same as threads");

    Resolved {
        name: name.to_string(),
        description: p.description.clone(),
        threads,
        threads_batch,
        cpus,
        priority: p.priority,
        slots: p.slots.unwrap_or(1),
        ctx_size: p.ctx_size.unwrap_or(default_ctx),
        embeddings: p.embeddings,
        adaptive: p.adaptive,
        max_tokens: p.max_tokens.unwrap_or(default_max_tokens),
        extra_args: p.extra_args.clone(),
        notes,
    }
}

impl Resolved {
    /// One human line: `balanced: threads 1, threads_batch 1, cpus 1.0, priority background...`.
    pub fn summary(&self) -> String {
        let cpus = self
            .cpus
            .map_or("unlimited".to_string(), |c| format!("{c:.2} cores"));
        format!(
            "{}: threads {}, threads_batch {}, cpus {}, priority {:?}, slots {}, ctx {}{}",
            self.name,
            self.threads,
            self.threads_batch,
            cpus,
            self.priority,
            self.slots,
            self.ctx_size,
            self.adaptive
                .map_or(String::new(), |a| format!(", adaptive {:.0} %", a * 100.0)),
        )
        .to_lowercase()
    }
}

/// `sentinel-supervisor profiles`.
pub fn print_profiles(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let host = Host::detect();
    println!(
        "host: {} online CPUs, {} in affinity mask, cgroup quota {}",
        host.online_cpus,
        host.affinity_cpus,
        host.quota_cpus
            .map_or("none".to_string(), |q| format!("{q:.2} cores"))
    );
    for name in config.profiles.keys() {
        let r = resolve(&config, name, &host)?;
        let default = if *name == config.default_profile {
            " (default)"
        } else {
            ""
        };
        println!("\n{}{default}", r.summary());
        if !r.description.is_empty() {
            println!("  {}", r.description);
        }
        for note in &r.notes {
            println!("  {name}: {note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(target_os = "linux")]
fn affinity_cpus() -> Option<usize> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .filter(|&n| n > 0)
}

#[cfg(not(target_os = "linux"))]
fn affinity_cpus() -> Option<usize> {
    None
}

fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n > 0).then_some(n as usize)
}

/// The CPU quota of this process's cgroup (v2 `cpu.max`, or v1 `cfs_quota_us/cfs_period_us`).
#[cfg(target_os = "linux")]
fn cgroup_quota_cpus() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).ok();
            if let Some(q) = max.as_deref().and_then(parse_cpu_max) {
                return Some(q);
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
                    return Some(q as f64 / p as f64);
                }
            }
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn cgroup_quota_cpus() -> Option<f64> {
    None
}

/// Parses cgroup v2 `cpu.max` (`"max 100000"` or `"50000 100000"`).
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

    fn host(affinity: usize, quota: Option<f64>) -> Host {
        Host {
            online_cpus: 8,
            affinity_cpus: affinity,
            quota_cpus: quota,
        }
    }

    #[test]
    fn shipped_profiles_resolve_on_a_two_cpu_host() {
        let config = Config::builtin().unwrap();
        let h = host(2, None);
        let inv = resolve(&config, "invisible", &h).unwrap();
        assert_eq!((inv.threads, inv.threads_batch), (1, 1));
        assert_eq!(inv.priority, Priority::Idle);
        assert_eq!(inv.cpus, Some(0.5));
        let bal = resolve(&config, "balanced", &h).unwrap();
        assert_eq!((bal.threads, bal.threads_batch), (1, 1));
        assert_eq!(bal.cpus, Some(1.0));
        let fast = resolve(&config, "fast", &h).unwrap();
        assert_eq!((fast.threads, fast.threads_batch), (2, 2));
        assert_eq!(fast.cpus, None);
        assert_eq!(fast.slots, 2);
        assert_eq!(
            fast.max_tokens, 1024,
            "proxy.max_tokens is every profile's default"
        );
    }

    #[test]
    fn max_tokens_per_profile_overrides_the_proxy_default() {
        let config = Config::from_layers(Some((
            std::path::Path::new("user.toml"),
            "[proxy]\nmax_tokens = 300\n[profiles.fast]\nmax_tokens = 50\n",
        )))
        .unwrap();
        let h = host(2, None);
        assert_eq!(resolve(&config, "fast", &h).unwrap().max_tokens, 50);
        assert_eq!(resolve(&config, "balanced", &h).unwrap().max_tokens, 300);
        let err = Config::from_layers(Some((
            std::path::Path::new("user.toml"),
            "[profiles.fast]\nmax_tokens = 0\n",
        )))
        .unwrap_err();
        assert!(
            err.to_string().contains("profiles.fast.max_tokens"),
            "{err}"
        );
    }

    #[test]
    fn explicit_threads_are_capped_with_a_reason() {
        let p = ProfileConfig {
            threads: Some(3),
            ..Default::default()
        };
        let r = resolve_one("balanced", &p, (4096, 1024), &host(2, None));
        assert_eq!(r.threads, 2);
        assert_eq!(r.threads_batch, 2);
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("threads 3 -> 2, this host allows 2 CPUs")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn cgroup_quota_limits_threads_and_budget() {
        let p = ProfileConfig {
            cpus: Some(4.0),
            ..Default::default()
        };
        let r = resolve_one("fast", &p, (4096, 1024), &host(8, Some(1.5)));
        assert_eq!(r.cpus, Some(1.5));
        assert_eq!(r.threads, 2);
        assert!(r.notes[0].contains("cgroup quota 1.50"), "{:?}", r.notes);
    }

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn host_detection_is_sane() {
        let h = Host::detect();
        assert!(h.allowed_cpus() >= 1);
        assert!(h.affinity_cpus <= h.online_cpus.max(h.affinity_cpus));
    }
}
