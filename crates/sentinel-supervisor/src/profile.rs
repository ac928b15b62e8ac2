//! Profiles resolved against this host: concrete thread counts, CPU budget, priority and slots,
//! never asking for more CPUs than this process may use (affinity mask, cgroup quota); the
//! governor method and duty-cycle period (the profile's own, else `[governor]`'s); and the CPU
//! a one-thread backend is pinned to.

use crate::config::{Config, ProfileConfig};
use crate::governor::priority::Priority;
use crate::governor::{threads_for_budget, GovernorSettings, Method};
use crate::host::Host;
use crate::units::{Cores, Share};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

/// A profile with every value decided for this host.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Resolved {
    pub name: String,
    pub description: String,
    pub threads: usize,
    pub threads_batch: usize,
    /// CPU budget in cores; `None` = unlimited.
    pub cpus: Option<Cores>,
    /// The budget on battery, cores: `None` = unlimited, 0 = pause (`crate::situation`).
    #[serde(default)]
    pub cpus_on_battery: Option<f64>,
    /// The budget while the user is idle; `None` = unlimited.
    #[serde(default)]
    pub cpus_when_idle: Option<Cores>,
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
    /// How the governor enforces the budget: the profile's `method`, else `governor.method`.
    pub method: Method,
    /// The signal duty-cycle period: the profile's `period`, else `governor.period`.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// The one CPU the backend (every thread) is pinned to: `pin = true` with one thread, on a
    /// platform that can set affinity; `None` = wherever the scheduler puts it.
    pub pin_cpu: Option<usize>,
    /// Whether requests may carry a GBNF `grammar` (the profile's `grammar`).
    #[serde(default)]
    pub grammar: bool,
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
        method: config.governor.method,
        period: config.governor.period,
        on_battery: config.profiles.get("invisible").and_then(|p| p.cpus),
    };
    Ok(resolve_one(name, p, defaults, host))
}

/// What a profile without its own value takes: `backend.ctx_size`, `proxy.max_tokens`,
/// `backend.cache_ram_mib`, `governor.method`, `governor.period`.
#[derive(Debug, Clone, Copy)]
struct Defaults {
    ctx_size: u32,
    max_tokens: u32,
    cache_ram_mib: u32,
    method: Method,
    period: Duration,
    /// The `invisible` profile's budget: the default on battery.
    on_battery: Option<Cores>,
}

/// Why a profile with `pin = true` is not pinned on a host that reports no affinity mask.
#[cfg(target_os = "macos")]
const NO_AFFINITY: &str = "macOS cannot set a process's CPU affinity";
#[cfg(not(target_os = "macos"))]
const NO_AFFINITY: &str = "this process's CPU affinity mask could not be read";

fn resolve_one(name: &str, p: &ProfileConfig, defaults: Defaults, host: &Host) -> Resolved {
    let Defaults {
        ctx_size: default_ctx,
        max_tokens: default_max_tokens,
        cache_ram_mib: default_cache_ram,
        method: default_method,
        period: default_period,
        on_battery: default_on_battery,
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

    let allowed_cores = host.allowed_cores();
    let cpus_on_battery = match (p.cpus_on_battery, default_on_battery, cpus) {
        (Some(b), ..) => Some(b.get().min(allowed_cores)),
        (None, Some(inv), Some(own)) => Some(inv.get().min(own.get())),
        (None, Some(inv), None) => Some(inv.get()),
        (None, None, own) => own.map(Cores::get),
    };
    let cpus_when_idle = match (p.cpus_when_idle, cpus) {
        (Some(c), _) => Some(c.get().min(allowed_cores)),
        (None, Some(own)) => Some((own.get() * 2.0).min(allowed_cores)),
        (None, None) => None,
    }
    .and_then(|c| Cores::new(c).ok());
    if p.cpus_on_battery.is_none() || p.cpus_when_idle.is_none() {
        let show = |c: Option<f64>| c.map_or("unlimited".to_string(), |c| format!("{c:.2}"));
        notes.push(format!(
            "cpus_on_battery {}, cpus_when_idle {} (the invisible budget at most cpus; cpus x 2 at most the allowed CPUs, where not set)",
            show(cpus_on_battery),
            show(cpus_when_idle.map(Cores::get))
        ));
    }

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
    // Threads are sized for the largest budget the profile can be given (the user idle), and
    // the governor holds them to the budget in force: a larger budget is used at once, with no
    // relaunch (measured: balanced on 2 CPUs, 50 tasks/min at 1 core, 116 at 2; scripts/bench-laptop).
    let largest = match (cpus, cpus_when_idle) {
        (Some(c), Some(idle)) => Some(c.get().max(idle.get())),
        (c, _) => c.map(Cores::get),
    };
    let budget_threads = threads_for_budget(largest, allowed);
    let why = match (cpus, largest) {
        (Some(c), Some(l)) if l > c.get() => format!(
            "follows the largest budget, {l:.2} cores with the user idle (held to the budget in force, {c:.2} cores while active, by the governor)"
        ),
        (Some(c), _) => format!("follows the budget of {c:.2} cores"),
        (None, _) => format!("no budget: {}", host.limit_reason()),
    };
    let threads = pick("threads", p.threads, budget_threads, &why);
    let threads_batch = pick("threads_batch", p.threads_batch, threads, "same as threads");

    let method = p.method.unwrap_or(default_method);
    if p.method.is_some() {
        notes.push(format!(
            "method {method}, overrides governor.method {default_method}"
        ));
    }
    let period = p.period.unwrap_or(default_period);
    if p.period.is_some() {
        notes.push(format!(
            "period {period:?}, overrides governor.period {default_period:?}"
        ));
    }
    let pin_cpu = match (p.pin, host.last_allowed_cpu) {
        (false, _) => None,
        (true, _) if threads != 1 || threads_batch != 1 => {
            notes.push(format!(
                "pin: not pinned, threads = {threads} and threads_batch = {threads_batch}; \
                 pinning needs both to be 1"
            ));
            None
        }
        (true, Some(cpu)) => {
            notes.push(format!(
                "pin: the backend runs on CPU {cpu}, the last of this process's affinity mask"
            ));
            Some(cpu)
        }
        (true, None) => {
            notes.push(format!("pin: not pinned, {NO_AFFINITY}"));
            None
        }
    };

    Resolved {
        name: name.to_string(),
        description: p.description.clone(),
        threads,
        threads_batch,
        cpus,
        cpus_on_battery,
        cpus_when_idle,
        priority: p.priority,
        slots: p.slots.unwrap_or(1),
        ctx_size: p.ctx_size.unwrap_or(default_ctx),
        cache_ram_mib: p.cache_ram_mib.unwrap_or(default_cache_ram),
        embeddings: p.embeddings,
        adaptive: p.adaptive,
        max_tokens: p.max_tokens.unwrap_or(default_max_tokens),
        extra_args: p.extra_args.clone(),
        method,
        period,
        pin_cpu,
        grammar: p.grammar,
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
            "{}: threads {}, threads_batch {}, cpus {}, priority {:?}, slots {}, ctx {}, cache_ram {} mib, method {}, period {:?}{}{}",
            self.name,
            self.threads,
            self.threads_batch,
            cpus,
            self.priority,
            self.slots,
            self.ctx_size,
            self.cache_ram_mib,
            self.method,
            self.period,
            self.adaptive.map_or(String::new(), |a| format!(
                ", adaptive {:.0} %",
                a.get() * 100.0
            )),
            self.pin_cpu
                .map_or(String::new(), |cpu| format!(", pinned to cpu {cpu}")),
        )
        .to_lowercase()
    }

    /// What each launch of this profile asks of the governor on `host`.
    pub fn governor_settings(&self, host: Host) -> GovernorSettings {
        GovernorSettings {
            cpus: self.cpus,
            threads: Some(self.threads.max(self.threads_batch)),
            priority: self.priority,
            adaptive: self.adaptive,
            host,
            method: self.method,
            period: self.period,
        }
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
        method: Method::Auto,
        period: Duration::from_millis(20),
        on_battery: None,
    };

    fn host(affinity: usize, quota: Option<f64>) -> Host {
        Host {
            online_cpus: 8,
            affinity_cpus: affinity,
            last_allowed_cpu: affinity.checked_sub(1),
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
        // Sized for its idle budget (2 cores), held to 1 core while the user is active.
        assert_eq!((bal.threads, bal.threads_batch), (2, 2));
        assert_eq!(bal.cpus_when_idle.map(Cores::get), Some(2.0));
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

    #[test]
    fn method_and_period_fall_back_to_the_governor_section_unless_the_profile_sets_them() {
        let config = Config::from_layers(Some((
            std::path::Path::new("user.toml"),
            "[governor]\nmethod = \"cgroup\"\nperiod = \"10ms\"\n\
             [profiles.invisible]\nmethod = \"signals\"\nperiod = \"2ms\"\n",
        )))
        .unwrap();
        let h = host(2, None);
        let inv = resolve(&config, "invisible", &h).unwrap();
        assert_eq!(
            (inv.method, inv.period),
            (Method::Signals, Duration::from_millis(2))
        );
        assert!(
            inv.notes
                .contains(&"method signals, overrides governor.method cgroup".to_string()),
            "{:?}",
            inv.notes
        );
        assert!(
            inv.notes
                .contains(&"period 2ms, overrides governor.period 10ms".to_string()),
            "{:?}",
            inv.notes
        );
        assert!(
            inv.summary().contains("method signals, period 2ms"),
            "{}",
            inv.summary()
        );
        let settings = inv.governor_settings(h);
        assert_eq!(
            (settings.method, settings.period),
            (Method::Signals, Duration::from_millis(2))
        );
        let bal = resolve(&config, "balanced", &h).unwrap();
        assert_eq!(
            (bal.method, bal.period),
            (Method::Cgroup, Duration::from_millis(10))
        );
        assert!(
            !bal.notes.iter().any(|n| n.contains("overrides")),
            "{:?}",
            bal.notes
        );
    }

    #[test]
    fn pin_takes_the_last_allowed_cpu_only_with_one_thread() {
        let one = ProfileConfig {
            threads: Some(1),
            pin: true,
            ..Default::default()
        };
        let r = resolve_one("invisible", &one, DEFAULTS, &host(4, None));
        assert_eq!(r.pin_cpu, Some(3));
        assert!(
            r.summary().ends_with(", pinned to cpu 3"),
            "{}",
            r.summary()
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("pin: the backend runs on CPU 3")),
            "{:?}",
            r.notes
        );

        let batch = ProfileConfig {
            threads_batch: Some(2),
            ..one.clone()
        };
        let r = resolve_one("invisible", &batch, DEFAULTS, &host(4, None));
        assert_eq!(r.pin_cpu, None);
        assert!(
            r.notes.iter().any(|n| {
                n
                == "pin: not pinned, threads = 1 and threads_batch = 2; pinning needs both to be 1"
            }),
            "{:?}",
            r.notes
        );
        // Threads from the budget count too: no budget on 4 CPUs is 4 threads.
        let budgetless = ProfileConfig {
            pin: true,
            ..Default::default()
        };
        let r = resolve_one("fast", &budgetless, DEFAULTS, &host(4, None));
        assert_eq!((r.threads, r.pin_cpu), (4, None));

        let no_mask = Host {
            last_allowed_cpu: None,
            ..host(4, None)
        };
        let r = resolve_one("invisible", &one, DEFAULTS, &no_mask);
        assert_eq!(r.pin_cpu, None);
        assert!(
            r.notes
                .iter()
                .any(|n| n == &format!("pin: not pinned, {NO_AFFINITY}")),
            "{:?}",
            r.notes
        );

        let unpinned = ProfileConfig { pin: false, ..one };
        let r = resolve_one("invisible", &unpinned, DEFAULTS, &host(4, None));
        assert_eq!(r.pin_cpu, None);
        assert!(
            !r.notes.iter().any(|n| n.starts_with("pin")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn shipped_profiles_are_not_pinned_and_only_invisible_overrides_the_governor() {
        let config = Config::builtin().unwrap();
        for name in config.profiles.keys() {
            let r = resolve(&config, name, &host(2, None)).unwrap();
            assert_eq!(r.pin_cpu, None, "{name}");
            let expected = if name == "invisible" {
                // A short signal duty cycle keeps the user's wake-ups prompt (config.toml).
                (Method::Signals, Duration::from_millis(2))
            } else {
                (config.governor.method, config.governor.period)
            };
            assert_eq!((r.method, r.period), expected, "{name}");
        }
    }

    #[test]
    fn battery_and_idle_budgets_default_from_invisible_and_twice_the_budget() {
        let config = Config::builtin().unwrap();
        let budgets = |name: &str, cpus: usize| {
            let r = resolve(&config, name, &Host::unrestricted(cpus)).unwrap();
            (r.cpus_on_battery, r.cpus_when_idle.map(Cores::get))
        };
        assert_eq!(budgets("balanced", 4), (Some(0.5), Some(2.0)));
        // Twice the budget, at most the CPUs this process may use.
        assert_eq!(budgets("balanced", 1), (Some(0.5), Some(1.0)));
        assert_eq!(budgets("invisible", 4), (Some(0.5), Some(1.0)));
        // No limit stays no limit when idle; on battery the invisible budget applies.
        assert_eq!(budgets("fast", 4), (Some(0.5), None));
        let own = Config::from_layers(Some((
            std::path::Path::new("/etc/s.toml"),
            "[profiles.balanced]\ncpus = 0.25\ncpus_on_battery = 0\ncpus_when_idle = 8\n",
        )))
        .unwrap();
        let r = resolve(&own, "balanced", &Host::unrestricted(2)).unwrap();
        assert_eq!(
            (r.cpus_on_battery, r.cpus_when_idle.map(Cores::get)),
            (Some(0.0), Some(2.0))
        );
        // At most the profile's own budget when it is below the invisible one.
        let small = Config::from_layers(Some((
            std::path::Path::new("/etc/s.toml"),
            "[profiles.balanced]\ncpus = 0.25\n",
        )))
        .unwrap();
        let r = resolve(&small, "balanced", &Host::unrestricted(2)).unwrap();
        assert_eq!(r.cpus_on_battery, Some(0.25));
    }
}
