//! Linux readings: the machine's counters from the cgroup v1 `cpuacct` root or `/proc/stat`, a
//! process's files through [`crate::os::procfs`], a process's CPU time from its POSIX CPU-time
//! clock (exact, one system call).

use super::{parse_proc_stat, SystemSource, SystemTimes};
use crate::os::procfs::{self, CgroupEntry};
use nix::time::{clock_getcpuclockid, ClockId};
use nix::unistd::{sysconf, Pid, SysconfVar};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Reads the machine's cumulative CPU counters from the most precise source available
/// ([`system_source`]); `online_cpus` is the host's ([`crate::host::Host::online_cpus`]).
pub fn system_times(online_cpus: usize) -> std::io::Result<SystemTimes> {
    system_times_from(system_source(), online_cpus)
}

/// The source [`system_times`] reads: `cpuacct` when the cgroup v1 hierarchy root is mounted
/// and readable, `/proc/stat` otherwise.
pub fn system_source() -> SystemSource {
    if cpuacct_root().is_some() {
        SystemSource::Cpuacct
    } else {
        SystemSource::ProcStat
    }
}

/// Reads the machine's cumulative CPU counters from one source. The `cpuacct` counter is the
/// run time of every task on every online CPU: its total is the wall time since the first
/// reading times `online_cpus`.
pub fn system_times_from(source: SystemSource, online_cpus: usize) -> std::io::Result<SystemTimes> {
    match source {
        SystemSource::Cpuacct => cpuacct_times(online_cpus),
        SystemSource::ProcStat | SystemSource::Platform => {
            let stat = std::fs::read_to_string("/proc/stat")?;
            parse_proc_stat(&stat, 1_000_000_000 / ticks_per_second())
                .ok_or_else(|| std::io::Error::other("unexpected /proc/stat format"))
        }
    }
}

/// `cpuacct.usage` of the hierarchy root, when there is one we can read.
fn cpuacct_root() -> Option<&'static PathBuf> {
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

fn cpuacct_times(online_cpus: usize) -> std::io::Result<SystemTimes> {
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
        // The counter is the run time of every task on every online CPU.
        total: elapsed * online_cpus.max(1) as u64,
    })
}

/// Clock ticks per second used by `/proc/stat` counters (100 when `sysconf` does not say).
fn ticks_per_second() -> u64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => 100,
    }
}

/// CPU time of a whole process (every thread, live and exited) with nanosecond precision, in one
/// system call: its POSIX CPU-time clock (`clock_getcpuclockid`). `None` once it is reaped.
pub fn process_cpu(pid: i32) -> Option<Duration> {
    let clock: ClockId = clock_getcpuclockid(Pid::from_raw(pid)).ok()?;
    Some(Duration::from(clock.now().ok()?))
}

/// The state letter of a process (`T` = stopped), if it exists.
pub fn process_state(pid: i32) -> Option<char> {
    procfs::stat(pid).map(|s| s.state)
}

/// Number of threads of a process (`Threads:` of `/proc/<pid>/status`).
pub fn thread_count(pid: i32) -> Option<usize> {
    procfs::status_number(&procfs::status(pid)?, "Threads:").map(|n| n as usize)
}

/// Run time of each thread of a process, `(thread id, run time)`, with nanosecond precision
/// (`/proc/<pid>/task/*/schedstat`); `None` when the process is gone or the kernel keeps no
/// per-thread scheduler statistics.
pub fn thread_run_times(pid: i32) -> Option<Vec<(i32, Duration)>> {
    let times: Vec<(i32, Duration)> = thread_schedstats(pid)?
        .map(|(tid, [run, _])| (tid, Duration::from_nanos(run)))
        .collect();
    (!times.is_empty()).then_some(times)
}

/// How long the threads of a process have waited on a run queue, runnable but not running,
/// summed over its live threads (`/proc/<pid>/task/*/schedstat`, second field): what a process
/// at background or idle priority loses to other work. `None` when the process is gone or the
/// kernel keeps no scheduler statistics.
pub(crate) fn run_queue_wait(pid: i32) -> Option<Duration> {
    let waits: Vec<u64> = thread_schedstats(pid)?.map(|(_, [_, wait])| wait).collect();
    (!waits.is_empty()).then(|| Duration::from_nanos(waits.iter().sum()))
}

/// `(thread id, [run time ns, run-queue wait ns])` of each live thread of a process.
fn thread_schedstats(pid: i32) -> Option<impl Iterator<Item = (i32, [u64; 2])>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(tasks.filter_map(|t| {
        let t = t.ok()?;
        let tid = t.file_name().to_str()?.parse::<i32>().ok()?;
        let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
        Some((tid, [fields.next()??, fields.next()??]))
    }))
}

/// Current resident set size of one process (`VmRSS`), in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    procfs::status_number(&procfs::status(pid)?, "VmRSS:").map(|k| k * 1024)
}

/// Whether a SIGKILL is pending for a process (`SigPnd`/`ShdPnd` of `/proc/<pid>/status`): it
/// is dying, though it has not run yet to exit (at idle priority on a busy machine that may take
/// a while).
pub(crate) fn kill_pending(pid: i32) -> bool {
    let Some(status) = procfs::status(pid) else {
        return false;
    };
    status.lines().any(|l| {
        let mask = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
        mask.is_some_and(|m| m & (1 << (libc::SIGKILL - 1)) != 0)
    })
}

/// The OOM-kill counter of the memory cgroup `pid` is in: cgroup v2 `memory.events` or v1
/// `memory.oom_control` (key `oom_kill`). `None` without a memory controller or such a key.
pub(crate) fn oom_counter(pid: i32) -> Option<super::OomCounter> {
    let (file, kills) = memory_event_files(&procfs::cgroups(pid)?)
        .into_iter()
        .find_map(|file| read_oom_kills(&file).map(|k| (file, k)))?;
    Some(super::OomCounter { file, kills })
}

/// The `oom_kill` count in a `memory.events` or `memory.oom_control` file.
pub(crate) fn read_oom_kills(file: &std::path::Path) -> Option<u64> {
    super::parse_flat_key(&std::fs::read_to_string(file).ok()?, "oom_kill")
}

/// The files holding the OOM-kill count of the memory cgroups a process is in: v1
/// `memory.oom_control` under `/sys/fs/cgroup/memory`, v2 `memory.events`.
fn memory_event_files(cgroups: &[CgroupEntry]) -> Vec<PathBuf> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    cgroups
        .iter()
        .filter_map(|cgroup| {
            if cgroup.has_controller("memory") {
                Some(
                    root.join("memory")
                        .join(cgroup.relative())
                        .join("memory.oom_control"),
                )
            } else if cgroup.is_unified() {
                Some(root.join(cgroup.relative()).join("memory.events"))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_memory_cgroup_event_files_and_oom_kills() {
        let v1 = procfs::parse_cgroups("4:memory:/process_api/abc\n1:cpu:/\n0::/\n");
        assert_eq!(
            memory_event_files(&v1),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/memory.oom_control"),
                PathBuf::from("/sys/fs/cgroup/memory.events"),
            ]
        );
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(super::super::parse_flat_key(control, "oom_kill"), Some(2));
        assert_eq!(super::super::parse_flat_key(control, "oom"), None);
    }

    #[test]
    fn system_constants_are_sane() {
        assert!(ticks_per_second() >= 100);
    }
}
