//! A profile's own governor method and CPU pin, seen from outside: the backend's affinity in
//! `/proc` and the method `/status` reports, against the fake backend.

use crate::support::{Options, Supervisor};
use sentinel_supervisor::governor::cgroup::CgroupVersion;
use sentinel_supervisor::governor::Method;
#[cfg(target_os = "linux")]
use std::collections::BTreeSet;
use std::time::Duration;

const TIMINGS: &str = r#"
[supervisor]
ready_poll_interval = "20ms"
probe_interval = "200ms"
stop_grace = "1s"
"#;

fn fake(mode: &str, config: &str) -> Supervisor {
    Supervisor::start(Options {
        fake: true,
        config,
        env: vec![("FAKE_BACKEND_MODE", mode.to_string())],
        ..Default::default()
    })
}

#[cfg(target_os = "linux")]
/// The CPUs of a kernel CPU list such as `0-3,6`.
fn cpu_list(list: &str) -> BTreeSet<usize> {
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
/// `Cpus_allowed_list` of a `/proc/.../status` file.
fn allowed(status_file: &str) -> BTreeSet<usize> {
    let text = std::fs::read_to_string(status_file).unwrap();
    cpu_list(
        text.lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap(),
    )
}

#[cfg(target_os = "linux")]
#[test]
fn a_one_thread_profile_with_pin_runs_every_backend_thread_on_the_last_allowed_cpu() {
    // The supervisor inherits this process's mask; sched_getaffinity reports its online part.
    let online = cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap());
    let last = *allowed("/proc/self/status")
        .intersection(&online)
        .last()
        .unwrap();
    let config =
        format!("{TIMINGS}[profiles.balanced]\nthreads = 1\nthreads_batch = 1\npin = true\n");
    // `burn` starts a thread after exec: it must inherit the pin too.
    let s = fake("burn", &config);
    s.wait_health(200, Duration::from_secs(20));
    let status = s.status();
    assert_eq!(status.resolved_profile.pin_cpu, Some(last), "{status:?}");
    let pid = s.backend_pid();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    assert!(tasks.len() >= 2, "{tasks:?}");
    for task in &tasks {
        let cpus = allowed(&format!("{}/status", task.display()));
        assert_eq!(cpus, BTreeSet::from([last]), "{}", task.display());
    }
    assert!(
        s.logs().contains("backend pinned to one CPU"),
        "{}",
        s.logs()
    );
    eprintln!("pin: {} backend threads on CPU {last}", tasks.len());
}

#[test]
fn a_profile_with_method_signals_is_governed_by_signals_even_where_a_cgroup_is_writable() {
    let budget =
        format!("{TIMINGS}[governor]\nmethod = \"auto\"\n[profiles.balanced]\ncpus = 0.5\n");
    let s = fake(
        "",
        &format!("{budget}method = \"signals\"\nperiod = \"2ms\"\n"),
    );
    s.wait_health(200, Duration::from_secs(20));
    let status = s.status();
    assert_eq!(
        status.governor.as_ref().map(|g| g.method),
        Some(Method::Signals),
        "{status:?}"
    );
    assert_eq!(status.resolved_profile.method, Method::Signals);
    assert_eq!(status.resolved_profile.period, Duration::from_millis(2));
    // Under the duty cycle the backend still gets a cgroup of its own where one is writable,
    // uncapped, carrying the profile's background priority (the lowest weight), so it does not
    // compete with the user's other sessions at the weight of the supervisor's group.
    if let Some(support) = sentinel_supervisor::governor::cgroup::detect() {
        let pid = s.backend_pid();
        let group = support.parent.join(support.group_name(&pid.to_string()));
        let procs = std::fs::read_to_string(group.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("backend {pid} has no cgroup at {}: {e}", group.display()));
        assert!(
            procs.split_whitespace().any(|p| p == pid.to_string()),
            "{procs}"
        );
        let read = |f: &str| std::fs::read_to_string(group.join(f)).map(|v| v.trim().to_owned());
        match support.version {
            CgroupVersion::V1 => {
                assert_eq!(read("cpu.cfs_quota_us").unwrap(), "-1");
                assert_eq!(read("cpu.shares").unwrap(), "2");
            }
            CgroupVersion::V2 => {
                assert!(read("cpu.max").unwrap().starts_with("max"));
                assert_eq!(read("cpu.weight").unwrap(), "1");
            }
        }
    }
    drop(s);
    // The same profile without its own method takes `auto`: the kernel cap where one is
    // writable here, so the override above is what chose signals.
    if sentinel_supervisor::governor::cgroup::detect().is_some() {
        let s = fake("", &budget);
        s.wait_health(200, Duration::from_secs(20));
        let status = s.status();
        assert_eq!(
            status.governor.as_ref().map(|g| g.method),
            Some(Method::Cgroup),
            "{status:?}"
        );
        assert_eq!(status.resolved_profile.method, Method::Auto);
    } else {
        eprintln!("no writable cgroup here: auto would pick signals too");
    }
}
