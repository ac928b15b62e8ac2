//! Precise CPU and memory readings: system-wide CPU, a process tree's CPU time and memory.
//!
//! This is the one place that reads `/proc` (Linux) or asks the kernel through `sysinfo`
//! (macOS); the governor, `/status`, `/metrics` and the bench consume what it returns.

use std::time::Duration;

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

/// Reads the machine's cumulative CPU counters from the most precise source available
/// ([`system_source`]).
#[cfg(target_os = "linux")]
pub fn system_times() -> std::io::Result<SystemTimes> {
    system_times_from(system_source())
}

/// The source [`system_times`] reads: `cpuacct` when the cgroup v1 hierarchy root is mounted
/// and readable, `/proc/stat` otherwise.
#[cfg(target_os = "linux")]
pub fn system_source() -> SystemSource {
    if linux::cpuacct_root().is_some() {
        SystemSource::Cpuacct
    } else {
        SystemSource::ProcStat
    }
}

/// Reads the machine's cumulative CPU counters from one source.
#[cfg(target_os = "linux")]
pub fn system_times_from(source: SystemSource) -> std::io::Result<SystemTimes> {
    match source {
        SystemSource::Cpuacct => linux::cpuacct_times(),
        SystemSource::ProcStat | SystemSource::Platform => {
            let stat = std::fs::read_to_string("/proc/stat")?;
            parse_proc_stat(&stat, 1_000_000_000 / ticks_per_second())
                .ok_or_else(|| std::io::Error::other("unexpected /proc/stat format"))
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

#[cfg(target_os = "linux")]
mod linux {
    use super::SystemTimes;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Instant;

    /// `cpuacct.usage` of the hierarchy root, when there is one we can read.
    pub fn cpuacct_root() -> Option<&'static PathBuf> {
        static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
        ROOT.get_or_init(|| {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            let file = super::parse_cpuacct_mount(&mountinfo)?.join("cpuacct.usage");
            read_u64(&file).map(|_| file)
        })
        .as_ref()
    }

    fn read_u64(path: &std::path::Path) -> Option<u64> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    pub fn cpuacct_times() -> std::io::Result<SystemTimes> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = *EPOCH.get_or_init(Instant::now);
        let file = cpuacct_root()
            .ok_or_else(|| std::io::Error::other("no readable cgroup v1 cpuacct root"))?;
        let busy = read_u64(file).ok_or_else(|| {
            std::io::Error::other(format!("unexpected contents in {}", file.display()))
        })?;
        let elapsed = epoch.elapsed().as_nanos() as u64;
        Ok(SystemTimes {
            busy,
            total: elapsed * online_cpus() as u64,
        })
    }

    /// Online CPUs, read once: glibc answers `sysconf(_SC_NPROCESSORS_ONLN)` by reading a sysfs
    /// file, which the samplers would otherwise do on every reading.
    pub fn online_cpus() -> usize {
        static ONLINE: OnceLock<usize> = OnceLock::new();
        // SAFETY: sysconf has no preconditions.
        *ONLINE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize)
    }
}

/// The machine's CPUs (online), the denominator of every "% of the machine" figure: system CPU
/// readings are shares of all of them, whatever this process's own affinity.
pub fn machine_cpus() -> usize {
    #[cfg(target_os = "linux")]
    return linux::online_cpus();
    #[cfg(not(target_os = "linux"))]
    return std::thread::available_parallelism().map_or(1, |n| n.get());
}

#[cfg(target_os = "macos")]
pub fn system_times() -> std::io::Result<SystemTimes> {
    macos::system_times()
}

#[cfg(target_os = "macos")]
pub fn system_source() -> SystemSource {
    SystemSource::Platform
}

#[cfg(target_os = "macos")]
pub fn system_times_from(_source: SystemSource) -> std::io::Result<SystemTimes> {
    macos::system_times()
}

/// Clock ticks per second used by `/proc` counters.
#[cfg(target_os = "linux")]
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// One process as seen in `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    /// Process state letter (`R`, `S`, `T` for stopped, `Z` for zombie, ...).
    pub state: char,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`, whose second field (the command name) may hold spaces and parens.
pub fn parse_pid_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3); utime = field 14, stime = 15, rss = 24.
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        state: rest.first()?.chars().next()?,
        cpu_ticks: field(14)? + field(15)?,
        rss_pages: field(24)?,
    })
}

#[cfg(target_os = "linux")]
fn read_pid_stat(pid: i32) -> Option<ProcStat> {
    parse_pid_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// All live processes (Linux: from `/proc`).
#[cfg(target_os = "linux")]
fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_pid_stat)
        .collect()
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

/// CPU time and resident memory of `root` and its descendants. `None` when `root` is gone.
#[cfg(target_os = "linux")]
pub fn tree_usage(root: i32) -> Option<TreeUsage> {
    let root_stat = read_pid_stat(root)?;
    let procs = all_processes();
    let pids = tree_pids_from(root, &procs);
    let page = page_size();
    let tps = ticks_per_second();
    let mut ticks = 0;
    let mut rss = 0;
    for p in procs.iter().filter(|p| pids.contains(&p.pid)) {
        ticks += p.cpu_ticks;
        rss += p.rss_pages * page;
    }
    // The root may have exited between the two reads of /proc: count what was read first.
    if pids.is_empty() {
        ticks = root_stat.cpu_ticks;
        rss = root_stat.rss_pages * page;
    }
    Some(TreeUsage {
        cpu_time: Duration::from_millis(ticks * 1000 / tps),
        rss_bytes: rss,
        processes: pids.len().max(1),
    })
}

/// CPU time of a single process (cheaper than [`tree_usage`]; used in the governor's loop).
#[cfg(target_os = "linux")]
pub fn process_cpu_time(pid: i32) -> Option<Duration> {
    let stat = read_pid_stat(pid)?;
    Some(Duration::from_millis(
        stat.cpu_ticks * 1000 / ticks_per_second(),
    ))
}

/// CPU time of a whole process (every thread, live and exited) with nanosecond precision, in one
/// system call: its POSIX CPU-time clock (`clock_getcpuclockid`). For polling a process often.
#[cfg(target_os = "linux")]
pub fn process_cpu_clock(pid: i32) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t into the variable we pass.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the variable we pass.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time of a whole process; macOS has no CPU clock for other processes, so this is
/// [`process_cpu_time`] (millisecond precision).
#[cfg(target_os = "macos")]
pub fn process_cpu_clock(pid: i32) -> Option<Duration> {
    process_cpu_time(pid)
}

/// The state letter of a process (`T` = stopped), if it exists.
#[cfg(target_os = "linux")]
pub fn process_state(pid: i32) -> Option<char> {
    read_pid_stat(pid).map(|s| s.state)
}

/// Number of threads of a process (`Threads:` of `/proc/<pid>/status`).
#[cfg(target_os = "linux")]
pub fn thread_count(pid: i32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "Threads:").map(|n| n as usize)
}

/// Run time of each thread of a process, `(thread id, run time)`, with nanosecond precision
/// (`/proc/<pid>/task/*/schedstat`); `None` when the process is gone or the kernel keeps no
/// per-thread scheduler statistics.
#[cfg(target_os = "linux")]
pub fn thread_run_times(pid: i32) -> Option<Vec<(i32, Duration)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let times: Vec<(i32, Duration)> = tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let tid = t.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
            Some((tid, Duration::from_nanos(ns)))
        })
        .collect();
    (!times.is_empty()).then_some(times)
}

/// Run time of each thread of a process (not known on this platform).
#[cfg(not(target_os = "linux"))]
pub fn thread_run_times(_pid: i32) -> Option<Vec<(i32, Duration)>> {
    None
}

/// Number of threads of a process (not known on this platform).
#[cfg(not(target_os = "linux"))]
pub fn thread_count(_pid: i32) -> Option<usize> {
    None
}

/// Peak resident set size of one process (`VmHWM`), in bytes.
#[cfg(target_os = "linux")]
pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmHWM:").map(|k| k * 1024)
}

/// Current resident set size of one process (`VmRSS`), in bytes.
#[cfg(target_os = "linux")]
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmRSS:").map(|k| k * 1024)
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

#[cfg(target_os = "linux")]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

#[cfg(target_os = "macos")]
pub use macos::{peak_rss_bytes, process_cpu_time, process_state, rss_bytes, tree_usage};

#[cfg(target_os = "macos")]
mod macos {
    //! macOS readings through `sysinfo` (libproc underneath).
    use super::{SystemTimes, TreeUsage};
    use std::sync::Mutex;
    use std::time::Duration;
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

    static SYSTEM: Mutex<Option<System>> = Mutex::new(None);

    fn with_system<T>(f: impl FnOnce(&mut System) -> T) -> T {
        let mut guard = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.get_or_insert_with(System::new))
    }

    pub fn system_times() -> std::io::Result<SystemTimes> {
        // sysinfo reports usage between refreshes; turn it into synthetic cumulative ticks.
        static LAST: Mutex<(u64, u64)> = Mutex::new((0, 0));
        let usage = with_system(|s| {
            s.refresh_cpu_usage();
            s.global_cpu_usage() as f64 / 100.0
        });
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        last.1 += 1000;
        last.0 += (usage * 1000.0) as u64;
        Ok(SystemTimes {
            busy: last.0,
            total: last.1,
        })
    }

    fn refresh(pid: i32) -> Option<(Duration, u64, char)> {
        with_system(|s| {
            let p = Pid::from_u32(pid as u32);
            s.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[p]),
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            s.process(p).map(|proc_| {
                let state = match proc_.status() {
                    sysinfo::ProcessStatus::Stop => 'T',
                    sysinfo::ProcessStatus::Zombie => 'Z',
                    _ => 'R',
                };
                (
                    Duration::from_millis(proc_.accumulated_cpu_time()),
                    proc_.memory(),
                    state,
                )
            })
        })
    }

    pub fn tree_usage(root: i32) -> Option<TreeUsage> {
        let (cpu_time, rss_bytes, _) = refresh(root)?;
        Some(TreeUsage {
            cpu_time,
            rss_bytes,
            processes: 1,
        })
    }
    pub fn process_cpu_time(pid: i32) -> Option<Duration> {
        refresh(pid).map(|r| r.0)
    }
    pub fn process_state(pid: i32) -> Option<char> {
        refresh(pid).map(|r| r.2)
    }
    pub fn rss_bytes(pid: i32) -> Option<u64> {
        refresh(pid).map(|r| r.1)
    }
    pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
        rss_bytes(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let online = linux::online_cpus();
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
        assert_eq!(s.cpu_ticks, 300);
        assert_eq!(s.rss_pages, 2560);
    }

    #[test]
    fn finds_descendants() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            state: 'S',
            cpu_ticks: 0,
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

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_clock_follows_the_tick_count_with_finer_steps() {
        let pid = std::process::id() as i32;
        let clock0 = process_cpu_clock(pid).unwrap();
        let ticks0 = process_cpu_time(pid).unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(60);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let clock = process_cpu_clock(pid).unwrap() - clock0;
        let ticks = process_cpu_time(pid).unwrap() - ticks0;
        assert!(clock >= Duration::from_millis(50), "{clock:?}");
        let gap = clock.abs_diff(ticks);
        assert!(
            gap <= Duration::from_millis(25),
            "clock {clock:?} ticks {ticks:?}"
        );
        // A process that has exited and been reaped has no clock.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id() as i32;
        child.wait().unwrap();
        assert!(process_cpu_clock(gone).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let usage = tree_usage(me).unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(system_times().unwrap().total > 0);
        assert!(process_state(me).is_some());
    }
}
