//! Profiles resolved against this host: concrete thread counts, CPU budget, priority and slots,
//! never asking for more CPUs than this process may use (affinity mask, cgroup quota).

use crate::config::{Config, ProfileConfig};
use crate::governor::priority::Priority;
use crate::governor::threads_for_budget;
use crate::host::Host;
use crate::units::{Cores, Share};
use serde::Serialize;
use std::process::ExitCode;

/// A profile with every value decided for this host.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Resolved {
    pub name: String,
    pub description: String,
    pub threads: usize,
    pub threads_batch: usize,
    /// CPU budget in cores; `None` = unlimited.
    pub cpus: Option<Cores>,
    pub priority: Priority,
    pub slots: usize,
    pub ctx_size: u32,
    /// llama-server `--cache-ram`, MiB.
    pub cache_ram_mib: u32,
    pub embeddings: bool,
    pub adaptive: Option<Share>,
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
    let defaults = Defaults {
        ctx_size: config.backend.ctx_size,
        max_tokens: config.proxy.max_tokens,
        cache_ram_mib: config.backend.cache_ram_mib,
    };
    Ok(resolve_one(name, p, defaults, host))
}

/// What a profile without its own value takes: `backend.ctx_size`, `proxy.max_tokens`,
/// `backend.cache_ram_mib`.
#[derive(Debug, Clone, Copy)]
struct Defaults {
    ctx_size: u32,
    max_tokens: u32,
    cache_ram_mib: u32,
}

fn resolve_one(name: &str, p: &ProfileConfig, defaults: Defaults, host: &Host) -> Resolved {
    let Defaults {
        ctx_size: default_ctx,
        max_tokens: default_max_tokens,
        cache_ram_mib: default_cache_ram,
    } = defaults;
    let allowed = host.allowed_cpus();
    let mut notes = Vec::new();

    let cpus = match p.cpus {
        Some(c) if c.get() > host.allowed_cores() => {
            notes.push(format!(
                "cpus {c} -> {:.2}, {}",
                host.allowed_cores(),
                host.limit_reason()
            ));
            // The host's figure is above 0 (at least one CPU, a quota above 0).
            Some(Cores::new(host.allowed_cores()).unwrap_or(c))
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
    let budget_threads = threads_for_budget(cpus.map(Cores::get), allowed);
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
        cache_ram_mib: p.cache_ram_mib.unwrap_or(default_cache_ram),
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
            "{}: threads {}, threads_batch {}, cpus {}, priority {:?}, slots {}, ctx {}, cache_ram {} mib{}",
            self.name,
            self.threads,
            self.threads_batch,
            cpus,
            self.priority,
            self.slots,
            self.ctx_size,
            self.cache_ram_mib,
            self.adaptive.map_or(String::new(), |a| format!(
                ", adaptive {:.0} %",
                a.get() * 100.0
            )),
        )
        .to_lowercase()
    }
}

/// `sentinel-supervisor profiles`: every profile of `config` resolved against this host.
pub fn print_profiles(config: &Config) -> anyhow::Result<ExitCode> {
    let host = Host::detect();
    println!("host: {}", host.describe());
    for name in config.profiles.keys() {
        let r = resolve(config, name, &host)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CpuQuota, QuotaSource};

    const DEFAULTS: Defaults = Defaults {
        ctx_size: 4096,
        max_tokens: 1024,
        cache_ram_mib: 256,
    };

    fn host(affinity: usize, quota: Option<f64>) -> Host {
        Host {
            online_cpus: 8,
            affinity_cpus: affinity,
            quota: quota.map(|cores| CpuQuota {
                cores,
                source: QuotaSource::CgroupV2,
            }),
        }
    }

    #[test]
    fn shipped_profiles_resolve_on_a_two_cpu_host() {
        let config = Config::builtin().unwrap();
        let h = host(2, None);
        let inv = resolve(&config, "invisible", &h).unwrap();
        assert_eq!((inv.threads, inv.threads_batch), (1, 1));
        assert_eq!(inv.priority, Priority::Idle);
        assert_eq!(inv.cpus.map(Cores::get), Some(0.5));
        let bal = resolve(&config, "balanced", &h).unwrap();
        assert_eq!((bal.threads, bal.threads_batch), (1, 1));
        assert_eq!(bal.cpus.map(Cores::get), Some(1.0));
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
        let r = resolve_one("balanced", &p, DEFAULTS, &host(2, None));
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
            cpus: Some(Cores::new(4.0).unwrap()),
            ..Default::default()
        };
        let r = resolve_one("fast", &p, DEFAULTS, &host(8, Some(1.5)));
        assert_eq!(r.cpus.map(Cores::get), Some(1.5));
        assert_eq!(r.threads, 2);
        assert!(r.notes[0].contains("cgroup quota 1.50"), "{:?}", r.notes);
    }
}
