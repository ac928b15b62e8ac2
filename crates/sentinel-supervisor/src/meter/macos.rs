//! macOS readings through `sysinfo` (libproc underneath). macOS has no CPU-time clock for other
//! processes: a process's CPU time is libproc's, in milliseconds. Not compiled on the Linux CI:
//! keep it small.

use super::{SystemSource, SystemTimes};
use std::sync::Mutex;
use std::time::Duration;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

static SYSTEM: Mutex<Option<System>> = Mutex::new(None);

fn with_system<T>(f: impl FnOnce(&mut System) -> T) -> T {
    let mut guard = SYSTEM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(System::new))
}

/// The machine's CPU load as synthetic cumulative counters (a share already: the count of
/// online CPUs is not needed).
pub fn system_times(_online_cpus: usize) -> std::io::Result<SystemTimes> {
    // sysinfo reports usage between refreshes; turn it into synthetic cumulative ticks.
    static LAST: Mutex<(u64, u64)> = Mutex::new((0, 0));
    let usage = with_system(|s| {
        s.refresh_cpu_usage();
        f64::from(s.global_cpu_usage()) / 100.0
    });
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    last.1 += 1000;
    last.0 += (usage * 1000.0) as u64;
    Ok(SystemTimes {
        busy: last.0,
        total: last.1,
    })
}

/// Always the platform's own counters.
pub fn system_source() -> SystemSource {
    SystemSource::Platform
}

/// There is one source on macOS.
pub fn system_times_from(
    _source: SystemSource,
    online_cpus: usize,
) -> std::io::Result<SystemTimes> {
    system_times(online_cpus)
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

/// CPU time of a whole process (millisecond precision here).
pub fn process_cpu(pid: i32) -> Option<Duration> {
    refresh(pid).map(|r| r.0)
}

pub fn process_state(pid: i32) -> Option<char> {
    refresh(pid).map(|r| r.2)
}

pub fn rss_bytes(pid: i32) -> Option<u64> {
    refresh(pid).map(|r| r.1)
}

/// Not known on this platform.
pub fn thread_count(_pid: i32) -> Option<usize> {
    None
}

/// Not known on this platform.
pub fn thread_run_times(_pid: i32) -> Option<Vec<(i32, Duration)>> {
    None
}

/// Not known on this platform (no per-thread run-queue statistics).
pub(crate) fn run_queue_wait(_pid: i32) -> Option<Duration> {
    None
}

/// Not known on this platform: a killed process is seen once it has exited.
pub(crate) fn kill_pending(_pid: i32) -> bool {
    false
}

/// No memory cgroups on macOS.
pub(crate) fn oom_counter(_pid: i32) -> Option<super::OomCounter> {
    None
}

/// No memory cgroups on macOS.
pub(crate) fn read_oom_kills(_file: &std::path::Path) -> Option<u64> {
    None
}
