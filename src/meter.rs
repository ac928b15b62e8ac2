//! Precise CPU and memory readings: system-wide CPU, a process tree's CPU time and memory.
//!
//! This is the one place that reads `/proc` (Linux) or asks the kernel through `sysinfo`
//! (macOS); the governor, `/status`, `/metrics` and the bench consume what it returns.

use std::time::Duration;

/// Cumulative CPU time counters of the whole machine, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemTimes {
    /// Ticks spent doing anything but idling (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All ticks, busy or idle, summed over every CPU.
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

/// Reads the machine's cumulative CPU counters.
#[cfg(target_os = "linux")]
pub fn system_times() -> std::io::Result<SystemTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_proc_stat(&stat).ok_or_else(|| std::io::Error::other("unexpected /proc/stat format"))
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(stat: &str) -> Option<SystemTimes> {
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
        busy: total - idle,
        total,
    })
}

#[cfg(target_os = "macos")]
pub fn system_times() -> std::io::Result<SystemTimes> {
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

/// The state letter of a process (`T` = stopped), if it exists.
#[cfg(target_os = "linux")]
pub fn process_state(pid: i32) -> Option<char> {
    read_pid_stat(pid).map(|s| s.state)
}

/// CPU time of a process with nanosecond precision: the sum of its threads' scheduler run
/// time (`/proc/<pid>/task/*/schedstat`). Costlier than [`process_cpu_time`] (one read per
/// thread); for benchmarks that look at 20-100 ms windows, where 10 ms ticks are too coarse.
#[cfg(target_os = "linux")]
pub fn process_run_time(pid: i32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(Duration::from_nanos(ns))
}

/// CPU time of a process (tick precision on this platform).
#[cfg(not(target_os = "linux"))]
pub fn process_run_time(pid: i32) -> Option<Duration> {
    process_cpu_time(pid)
}

/// Number of threads of a process (`Threads:` of `/proc/<pid>/status`).
#[cfg(target_os = "linux")]
pub fn thread_count(pid: i32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "Threads:").map(|n| n as usize)
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
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(t.total, 980);
        assert_eq!(t.busy, 160);
        let later = SystemTimes {
            busy: 260,
            total: 1180,
        };
        assert!((later.busy_fraction_since(&t) - 0.5).abs() < 1e-9);
        assert_eq!(t.busy_fraction_since(&t), 0.0);
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
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let usage = tree_usage(me).unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(system_times().unwrap().total > 0);
        assert!(process_state(me).is_some());
    }
}
