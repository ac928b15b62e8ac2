//! Profiles resolved on made-up hosts (affinity, quota, no mask) and on the shipped
//! configuration: caps with their reasons, budgets, threads, the governor's method and period,
//! the pinned CPU.

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
            n == "pin: not pinned, threads = 1 and threads_batch = 2; pinning needs both to be 1"
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
