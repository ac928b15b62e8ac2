//! Precise CPU and memory readings: system-wide CPU, a process's CPU time and memory.
//!
//! This is where CPU is measured: the governor, `/status`, the bench and the integration tests
//! consume what it returns (the bench adds up process trees with it, `sentinel_bench::tree`). On Linux (`linux.rs`) it reads the machine's counters itself and a
//! process's files through [`crate::os::procfs`]; on macOS (`macos.rs`) it asks `sysinfo`. A
//! process's CPU time has one reader, [`process_cpu`], exact on Linux (the process's CPU-time
//! clock, nanoseconds), never the 10 ms tick counts of `/proc/<pid>/stat`. This module holds the
//! platform-neutral types and parsers; the count of online CPUs is the caller's
//! ([`crate::host::Host::online_cpus`], detected once and passed down).

/// The readings of this platform: `linux.rs` or `macos.rs`, one set of names.
#[cfg_attr(target_os = "linux", path = "linux.rs")]
#[cfg_attr(target_os = "macos", path = "macos.rs")]
mod platform;
pub(crate) use platform::{kill_pending, oom_counter, read_oom_kills, run_queue_wait};
pub use platform::{
    process_cpu, process_state, rss_bytes, system_source, system_times, system_times_from,
    thread_count, thread_run_times,
};

/// A memory cgroup's count of processes the kernel's OOM killer killed, and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OomCounter {
    pub file: std::path::PathBuf,
    pub kills: u64,
}

/// The number after `key` in a flat keyed file (`oom_kill 3`).
pub fn parse_flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// Cumulative CPU time counters of the whole machine, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemTimes {
    /// Time spent doing anything but idling, summed over every CPU.
    pub busy: u64,
    /// All time, busy or idle, summed over every CPU.
    pub total: u64,
}

impl SystemTimes {
    /// The busy share of the whole machine between two readings, in 0.0..=1.0.
    pub fn busy_fraction_since(&self, earlier: &SystemTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        let busy = self.busy.saturating_sub(earlier.busy);
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Where the machine's CPU counters come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemSource {
    /// The cgroup v1 `cpuacct` hierarchy root (`cpuacct.usage`): the exact run time of every
    /// task in nanoseconds, against the monotonic clock times the online CPUs.
    Cpuacct,
    /// `/proc/stat`: the kernel's per-tick samples in `USER_HZ` units (10 ms). Coarse over short
    /// windows (about 20 units per 100 ms on 2 CPUs), and biased when a process runs in a rhythm
    /// close to the tick, as a throttled one does (a 10 ms cgroup period reads about 30 % where
    /// 25 % ran).
    ProcStat,
    /// The platform's own counters (macOS: host CPU load through `sysinfo`).
    Platform,
}

impl SystemSource {
    pub fn describe(self) -> &'static str {
        match self {
            SystemSource::Cpuacct => "cpuacct.usage (exact run time)",
            SystemSource::ProcStat => "/proc/stat (tick samples)",
            SystemSource::Platform => "host CPU load",
        }
    }
}

/// Parses the aggregate `cpu` line of `/proc/stat` (counters in ticks of `ns_per_tick`).
#[cfg(any(target_os = "linux", test))]
pub(crate) fn parse_proc_stat(stat: &str, ns_per_tick: u64) -> Option<SystemTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    // guest time is already counted in user/nice.
    let total: u64 = fields.iter().take(8).sum();
    Some(SystemTimes {
        busy: (total - idle) * ns_per_tick,
        total: total * ns_per_tick,
    })
}

/// Finds the mount point of the cgroup v1 hierarchy holding the `cpuacct` controller, when it is
/// mounted at its root, in `/proc/self/mountinfo`.
pub fn parse_cpuacct_mount(mountinfo: &str) -> Option<std::path::PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (root, mount_point) = (*left.get(3)?, *left.get(4)?);
        let (fstype, options) = (*right.first()?, *right.get(2)?);
        (fstype == "cgroup" && root == "/" && options.split(',').any(|o| o == "cpuacct"))
            .then(|| std::path::PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_os = "linux")]
    use std::time::Duration;

    #[test]
    fn parses_proc_stat_aggregate_line() {
        let text = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        let t = parse_proc_stat(text, 1).unwrap();
        assert_eq!(t.total, 980);
        assert_eq!(t.busy, 160);
        let ns = parse_proc_stat(text, 10_000_000).unwrap();
        assert_eq!(ns.busy, 1_600_000_000);
        let later = SystemTimes {
            busy: 260,
            total: 1180,
        };
        assert!((later.busy_fraction_since(&t) - 0.5).abs() < 1e-9);
        assert_eq!(t.busy_fraction_since(&t), 0.0);
    }

    #[test]
    fn finds_the_cpuacct_hierarchy_root() {
        let mountinfo = "\
30 23 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cpuacct_mount(mountinfo),
            Some(std::path::PathBuf::from("/sys/fs/cgroup/cpuacct"))
        );
        // Combined controllers, as systemd mounts them.
        let combined =
            "40 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            parse_cpuacct_mount(combined),
            Some(std::path::PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        // A sub-cgroup bind-mounted into a container is not the machine.
        let nested =
            "41 30 0:30 /docker/abc /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n";
        assert_eq!(parse_cpuacct_mount(nested), None);
        // cgroup v2 only: no cpuacct.
        assert_eq!(
            parse_cpuacct_mount("33 30 0:29 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_source_reads_the_machine() {
        let online = crate::host::Host::detect().online_cpus;
        for source in [system_source(), SystemSource::ProcStat] {
            let a = system_times_from(source, online).unwrap();
            let mut x = 0u64;
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(100) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let b = system_times_from(source, online).unwrap();
            assert!(b.total > a.total, "{source:?}: time moves on");
            let f = b.busy_fraction_since(&a);
            // This thread kept one CPU busy the whole time.
            let one_cpu = 1.0 / online as f64;
            assert!(
                (one_cpu * 0.6..=1.0).contains(&f),
                "{source:?}: {f} with one of {online} CPUs busy"
            );
        }
    }

    /// CPU time of this process as `getrusage` reports it (microseconds, the same scheduler
    /// accounting the CPU clock reads).
    #[cfg(target_os = "linux")]
    fn rusage_cpu() -> Duration {
        use nix::sys::resource::{getrusage, UsageWho};
        let ru = getrusage(UsageWho::RUSAGE_SELF).unwrap();
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
        };
        tv(ru.user_time()) + tv(ru.system_time())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_is_exact_and_ends_with_the_process() {
        let pid = std::process::id() as i32;
        let clock0 = process_cpu(pid).unwrap();
        let rusage0 = rusage_cpu();
        // Spin until this process has run 50 ms more (whatever else the machine runs).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while process_cpu(pid).unwrap() - clock0 < Duration::from_millis(50) {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock does not advance"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        let clock = process_cpu(pid).unwrap() - clock0;
        let rusage = rusage_cpu() - rusage0;
        // Both read the scheduler's run time; tick counts would be off by up to 10 ms each.
        let gap = clock.abs_diff(rusage);
        assert!(
            gap <= Duration::from_millis(5),
            "clock {clock:?} rusage {rusage:?}"
        );
        // A process that has exited and been reaped has no clock.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id() as i32;
        child.wait().unwrap();
        assert!(process_cpu(gone).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert!(system_times(1).unwrap().total > 0);
        assert!(process_state(me).is_some());
    }
}
