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
pub(crate) fn resolve(
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
    let mut notes = Vec::new();
    let budgets = Budgets::resolve(p, defaults.on_battery, host, &mut notes);
    let (threads, threads_batch) = threads(p, &budgets, host, &mut notes);
    let method = p.method.unwrap_or(defaults.method);
    if p.method.is_some() {
        notes.push(format!(
            "method {method}, overrides governor.method {}",
            defaults.method
        ));
    }
    let period = p.period.unwrap_or(defaults.period);
    if p.period.is_some() {
        notes.push(format!(
            "period {period:?}, overrides governor.period {:?}",
            defaults.period
        ));
    }
    let pin_cpu = pin_cpu(p.pin, (threads, threads_batch), host, &mut notes);

    Resolved {
        name: name.to_string(),
        description: p.description.clone(),
        threads,
        threads_batch,
        cpus: budgets.cpus,
        cpus_on_battery: budgets.on_battery,
        cpus_when_idle: budgets.when_idle,
        priority: p.priority,
        slots: p.slots.unwrap_or(1),
        ctx_size: p.ctx_size.unwrap_or(defaults.ctx_size),
        cache_ram_mib: p.cache_ram_mib.unwrap_or(defaults.cache_ram_mib),
        embeddings: p.embeddings,
        adaptive: p.adaptive,
        max_tokens: p.max_tokens.unwrap_or(defaults.max_tokens),
        extra_args: p.extra_args.clone(),
        method,
        period,
        pin_cpu,
        grammar: p.grammar,
        notes,
    }
}

/// A profile's three budgets on this host, in cores (`None` = unlimited).
#[derive(Debug, Clone, Copy)]
struct Budgets {
    /// While the user is active: the profile's `cpus`, at most what this process may use.
    cpus: Option<Cores>,
    /// On battery: the profile's own, else the invisible budget at most `cpus`.
    on_battery: Option<f64>,
    /// With the user idle: the profile's own, else twice `cpus`, at most the allowed CPUs.
    when_idle: Option<Cores>,
}

impl Budgets {
    fn resolve(
        p: &ProfileConfig,
        invisible: Option<Cores>,
        host: &Host,
        notes: &mut Vec<String>,
    ) -> Budgets {
        let allowed_cores = host.allowed_cores();
        let cpus = match p.cpus {
            Some(c) if c.get() > allowed_cores => {
                notes.push(format!(
                    "cpus {c} -> {allowed_cores:.2}, {}",
                    host.limit_reason()
                ));
                // The host's figure is above 0 (at least one CPU, a quota above 0).
                Some(Cores::new(allowed_cores).unwrap_or(c))
            }
            other => other,
        };
        let on_battery = match (p.cpus_on_battery, invisible, cpus) {
            (Some(b), ..) => Some(b.get().min(allowed_cores)),
            (None, Some(inv), Some(own)) => Some(inv.get().min(own.get())),
            (None, Some(inv), None) => Some(inv.get()),
            (None, None, own) => own.map(Cores::get),
        };
        let when_idle = match (p.cpus_when_idle, cpus) {
            (Some(c), _) => Some(c.get().min(allowed_cores)),
            (None, Some(own)) => Some((own.get() * 2.0).min(allowed_cores)),
            (None, None) => None,
        }
        .and_then(|c| Cores::new(c).ok());
        if p.cpus_on_battery.is_none() || p.cpus_when_idle.is_none() {
            let show = |c: Option<f64>| c.map_or("unlimited".to_string(), |c| format!("{c:.2}"));
            notes.push(format!(
                "cpus_on_battery {}, cpus_when_idle {} (the invisible budget at most cpus; cpus x 2 at most the allowed CPUs, where not set)",
                show(on_battery),
                show(when_idle.map(Cores::get))
            ));
        }
        Budgets {
            cpus,
            on_battery,
            when_idle,
        }
    }
}

/// `threads` and `threads_batch`: the profile's own, at most the allowed CPUs, else sized for
/// the largest budget the profile can be given (the user idle). The governor holds them to the
/// budget in force, so a larger budget is used at once, with no relaunch (measured: balanced on
/// 2 CPUs, 50 tasks/min at 1 core, 116 at 2; scripts/bench-laptop).
fn threads(
    p: &ProfileConfig,
    budgets: &Budgets,
    host: &Host,
    notes: &mut Vec<String>,
) -> (usize, usize) {
    let allowed = host.allowed_cpus();
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
    let largest = match (budgets.cpus, budgets.when_idle) {
        (Some(c), Some(idle)) => Some(c.get().max(idle.get())),
        (c, _) => c.map(Cores::get),
    };
    let why = match (budgets.cpus, largest) {
        (Some(c), Some(l)) if l > c.get() => format!(
            "follows the largest budget, {l:.2} cores with the user idle (held to the budget in force, {c:.2} cores while active, by the governor)"
        ),
        (Some(c), _) => format!("follows the budget of {c:.2} cores"),
        (None, _) => format!("no budget: {}", host.limit_reason()),
    };
    let sized = threads_for_budget(largest, allowed);
    let threads = pick("threads", p.threads, sized, &why);
    let threads_batch = pick("threads_batch", p.threads_batch, threads, "same as threads");
    (threads, threads_batch)
}

/// The one CPU a `pin = true` profile runs on: the last of this process's affinity mask, and
/// only with one thread for both phases.
fn pin_cpu(
    pin: bool,
    (threads, threads_batch): (usize, usize),
    host: &Host,
    notes: &mut Vec<String>,
) -> Option<usize> {
    match (pin, host.last_allowed_cpu) {
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
    }
}

impl Resolved {
    /// One human line: `balanced: threads 1, threads_batch 1, cpus 1.0, priority background...`.
    pub(crate) fn summary(&self) -> String {
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
    pub(crate) fn governor_settings(&self, host: Host) -> GovernorSettings {
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

#[cfg(test)]
mod tests;
