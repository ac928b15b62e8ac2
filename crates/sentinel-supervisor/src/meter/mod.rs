//! Precise CPU and memory readings: system-wide CPU, a process's and a process tree's CPU time
//! and memory.
//!
//! This is the one place that reads `/proc` (`linux.rs`) or asks the kernel through `sysinfo`
//! (`macos.rs`); the governor, `/status`, the bench and the integration tests consume what it
//! returns. A process's CPU time has one reader, [`process_cpu`], exact on Linux (the process's
//! CPU-time clock, nanoseconds), never the 10 ms tick counts of `/proc/<pid>/stat`. This module
//! holds the platform-neutral types and parsers; the CPU count comes from [`crate::host`].

use std::time::Duration;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{
    kill_pending, oom_counter, peak_rss_bytes, process_cpu, process_state, read_oom_kills,
    rss_bytes, run_queue_wait, system_source, system_times, system_times_from, thread_count,
    thread_run_times, tree_usage,
};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macos::{
    kill_pending, oom_counter, peak_rss_bytes, process_cpu, process_state, read_oom_kills,
    rss_bytes, run_queue_wait, system_source, system_times, system_times_from, thread_count,
    thread_run_times, tree_usage,
};

/// A memory cgroup's count of processes the kernel's OOM killer killed, and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomCounter {
    pub file: std::path::PathBuf,
    pub kills: u64,
}

/// The files holding the OOM-kill count of the memory cgroups named in a `/proc/<pid>/cgroup`:
/// v1 `memory.oom_control` under `/sys/fs/cgroup/memory`, v2 `memory.events`.
pub fn memory_event_files(proc_cgroup: &str) -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                Some(root.join("memory").join(rel).join("memory.oom_control"))
            } else if controllers.is_empty() {
                Some(root.join(rel).join("memory.events"))
            } else {
                None
            }
        })
        .collect()
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
pub fn parse_proc_stat(stat: &str, ns_per_tick: u64) -> Option<SystemTimes> {
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

/// One process as seen in `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    /// Process state letter (`R`, `S`, `T` for stopped, `Z` for zombie, ...).
    pub state: char,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`, whose second field (the command name) may hold spaces and parens.
pub fn parse_pid_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3); rss = field 24. (CPU time is read from the process's clock,
    // not from the tick counts of fields 14 and 15.)
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        state: rest.first()?.chars().next()?,
        rss_pages: field(24)?,
    })
}

/// The pids of `root` and all its descendants.
pub fn tree_pids_from(root: i32, procs: &[ProcStat]) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|p| p.ppid == parent && p.pid != parent)
                .map(|p| p.pid),
        );
        i += 1;
    }
    out.retain(|pid| procs.iter().any(|p| p.pid == *pid));
    out
}

/// A reading of one process tree: CPU time used so far and resident memory now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TreeUsage {
    pub cpu_time: Duration,
    pub rss_bytes: u64,
    pub processes: usize,
}

/// Reads a `Key:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_memory_cgroup_event_files_and_oom_kills() {
        let v1 = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        assert_eq!(
            memory_event_files(v1),
            vec![
                std::path::PathBuf::from(
                    "/sys/fs/cgroup/memory/process_api/abc/memory.oom_control"
                ),
                std::path::PathBuf::from("/sys/fs/cgroup/memory.events"),
            ]
        );
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_flat_key(control, "oom_kill"), Some(2));
        assert_eq!(parse_flat_key(control, "oom"), None);
    }

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
        for source in [system_source(), SystemSource::ProcStat] {
            let a = system_times_from(source).unwrap();
            let mut x = 0u64;
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(100) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let b = system_times_from(source).unwrap();
            assert!(b.total > a.total, "{source:?}: time moves on");
            let f = b.busy_fraction_since(&a);
            // This thread kept one CPU busy the whole time.
            let online = crate::host::online_cpus();
            let one_cpu = 1.0 / online as f64;
            assert!(
                (one_cpu * 0.6..=1.0).contains(&f),
                "{source:?}: {f} with one of {online} CPUs busy"
            );
        }
    }

    #[test]
    fn parses_pid_stat_with_spaces_in_name() {
        let text = "1234 (llama server (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 39 19 4 0 100 1000000 2560 18446744073709551615";
        let s = parse_pid_stat(text).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.ppid, 1);
        assert_eq!(s.state, 'S');
        assert_eq!(s.rss_pages, 2560);
    }

    #[test]
    fn finds_descendants() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            state: 'S',
            rss_pages: 0,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 10), p(20, 1), p(13, 11)];
        let mut tree = tree_pids_from(10, &procs);
        tree.sort();
        assert_eq!(tree, vec![10, 11, 12, 13]);
        assert!(tree_pids_from(99, &procs).is_empty());
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tllama\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(204800));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(102400));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    /// CPU time of this process as `getrusage` reports it (microseconds, the same scheduler
    /// accounting the CPU clock reads).
    #[cfg(target_os = "linux")]
    fn rusage_cpu() -> Duration {
        // SAFETY: getrusage writes one rusage into the zeroed variable we pass.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
            ru
        };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
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
        let usage = tree_usage(me).unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_time > Duration::ZERO && usage.processes >= 1);
        assert!(system_times().unwrap().total > 0);
        assert!(process_state(me).is_some());
    }
}
