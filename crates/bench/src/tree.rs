//! A process tree's CPU time and memory, what the bench samples and the product's integration
//! tests count: each process's CPU from the product's exact clock
//! ([`sentinel_supervisor::meter::process_cpu`]), the tree and its memory from `/proc` through
//! the product's readers ([`sentinel_supervisor::os::procfs`]). macOS follows no descendants:
//! the root process alone, its memory from the product's meter.

use std::time::Duration;

/// A reading of one process tree: CPU time used so far and resident memory now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TreeUsage {
    pub cpu_time: Duration,
    pub rss_bytes: u64,
    pub processes: usize,
}

#[cfg(target_os = "linux")]
pub use linux::{peak_rss_bytes, tree_usage};

#[cfg(target_os = "linux")]
mod linux {
    use super::TreeUsage;
    use sentinel_supervisor::meter::process_cpu;
    use sentinel_supervisor::os::procfs::{self, ProcStat};

    /// The pids of `root` and all its descendants.
    pub(super) fn tree_pids_from(root: i32, procs: &[ProcStat]) -> Vec<i32> {
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

    /// The `stat` of every live process.
    pub(super) fn all_stats() -> Vec<ProcStat> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(procfs::stat)
            .collect()
    }

    /// CPU time and resident memory of `root` and its descendants. `None` when `root` is gone.
    pub fn tree_usage(root: i32) -> Option<TreeUsage> {
        let root_stat = procfs::stat(root)?;
        let procs = all_stats();
        let mut pids = tree_pids_from(root, &procs);
        let page = page_size();
        let mut rss: u64 = procs
            .iter()
            .filter(|p| pids.contains(&p.pid))
            .map(|p| p.rss_pages * page)
            .sum();
        // The root may have exited between the two reads of /proc: count what was read first.
        if pids.is_empty() {
            pids.push(root);
            rss = root_stat.rss_pages * page;
        }
        // A descendant that exits meanwhile has no clock any more: it counts for nothing.
        let cpu_time = pids.iter().filter_map(|&pid| process_cpu(pid)).sum();
        Some(TreeUsage {
            cpu_time,
            rss_bytes: rss,
            processes: pids.len(),
        })
    }

    /// Peak resident set size of one process (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
        procfs::status_number(&procfs::status(pid)?, "VmHWM:").map(|k| k * 1024)
    }

    pub(super) fn page_size() -> u64 {
        use nix::unistd::{sysconf, SysconfVar};
        match sysconf(SysconfVar::PAGE_SIZE) {
            Ok(Some(v)) if v > 0 => v as u64,
            _ => 4096,
        }
    }
}

/// The root process only (descendants are not followed on macOS).
#[cfg(not(target_os = "linux"))]
pub fn tree_usage(root: i32) -> Option<TreeUsage> {
    Some(TreeUsage {
        cpu_time: sentinel_supervisor::meter::process_cpu(root)?,
        rss_bytes: sentinel_supervisor::meter::rss_bytes(root)?,
        processes: 1,
    })
}

/// macOS keeps no peak: the current resident size.
#[cfg(not(target_os = "linux"))]
pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
    sentinel_supervisor::meter::rss_bytes(pid)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::*;
    use super::*;
    use sentinel_supervisor::os::procfs::ProcStat;

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
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(all_stats().iter().any(|p| p.pid == me));
        let usage = tree_usage(me).unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_time > Duration::ZERO && usage.processes >= 1);
        assert!(peak_rss_bytes(me).is_some());
        assert!(page_size() >= 4096 && page_size().is_power_of_two());
    }
}
