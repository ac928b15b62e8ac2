//! The `/proc` readers: a process's `stat` line, the `Key: value` lines of its `status`, and
//! the cgroups it is in (`/proc/<pid>/cgroup`). One parser each, so the governor (its own
//! delegated cgroup, the parents of the processes there), the host (the CPU quota) and the
//! meter (process trees, memory, the memory cgroup's OOM kills) read them alike. Where there
//! is no `/proc` (macOS) every reader answers `None`.

use std::path::Path;

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
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3); rss = field 24. (CPU time is read from the process's clock,
    // not from the tick counts of fields 14 and 15: see `meter::process_cpu`.)
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        state: rest.first()?.chars().next()?,
        rss_pages: field(24)?,
    })
}

/// `/proc/<pid>/stat` of a live process (`None` once it is gone).
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/<pid>/status` of a live process, whole (`None` once it is gone).
#[cfg(target_os = "linux")]
pub fn status(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The number in a `Key:   1234 kB` (or `Threads:  4`) line of a `status` text; `key` ends
/// with its colon.
#[cfg(any(target_os = "linux", test))]
pub fn status_number(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-ID:controller-list:cgroup-path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupEntry {
    /// The v1 controllers of the hierarchy (`cpu`, `cpuacct`, `memory`, ...); empty for the
    /// v2 unified hierarchy.
    pub controllers: Vec<String>,
    /// The cgroup's path below the hierarchy's mount point, without the leading `/` (empty at
    /// the root).
    pub path: String,
}

impl CgroupEntry {
    /// The cgroup v2 unified hierarchy (`0::/path`).
    pub(crate) fn is_unified(&self) -> bool {
        self.controllers.is_empty()
    }

    /// Whether this v1 hierarchy carries `controller`.
    #[cfg(any(target_os = "linux", test))]
    pub(crate) fn has_controller(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The path as a relative [`Path`], to join to a mount point.
    pub(crate) fn relative(&self) -> &Path {
        Path::new(&self.path)
    }
}

/// Parses the text of `/proc/<pid>/cgroup`, skipping malformed lines.
pub(crate) fn parse_cgroups(text: &str) -> Vec<CgroupEntry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(CgroupEntry {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.trim().trim_start_matches('/').to_owned(),
            })
        })
        .collect()
}

/// The cgroups of process `pid` (`None` once it is gone).
#[cfg(target_os = "linux")]
pub(crate) fn cgroups(pid: i32) -> Option<Vec<CgroupEntry>> {
    Some(parse_cgroups(
        &std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
    ))
}

/// The cgroups of this process.
pub(crate) fn own_cgroups() -> Option<Vec<CgroupEntry>> {
    Some(parse_cgroups(
        &std::fs::read_to_string("/proc/self/cgroup").ok()?,
    ))
}

/// This process's v2 cgroup (the unified line), relative to the v2 mount; `None` at the root
/// (nothing delegated) or without a v2 line.
pub(crate) fn unified_path(cgroups: &[CgroupEntry]) -> Option<&Path> {
    cgroups
        .iter()
        .find(|c| c.is_unified())
        .map(CgroupEntry::relative)
        .filter(|path| !path.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_and_parens_in_the_name() {
        let text = "1234 (llama server (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 39 19 4 0 100 1000000 2560 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.ppid, 1);
        assert_eq!(s.state, 'S');
        assert_eq!(s.rss_pages, 2560);
        assert_eq!(parse_stat("1234 (cut"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_and_its_parent() {
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, std::os::unix::process::parent_id() as i32);
        let status = status(me.pid).unwrap();
        assert!(status_number(&status, "Threads:").is_some_and(|n| n >= 1));
        assert!(own_cgroups().is_some_and(|c| !c.is_empty()));
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tllama\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_number(status, "VmHWM:"), Some(204800));
        assert_eq!(status_number(status, "VmRSS:"), Some(102400));
        assert_eq!(status_number(status, "VmSwap:"), None);
    }

    #[test]
    fn parses_v1_and_v2_cgroup_lines() {
        let text = "12:cpu,cpuacct:/docker/abc\n4:memory:/\n1:name=systemd:/x\n0::/system.slice/sentinel-supervisor.service\nbad line\n";
        let entries = parse_cgroups(text);
        assert_eq!(entries.len(), 4);
        assert!(entries[0].has_controller("cpu") && entries[0].has_controller("cpuacct"));
        assert_eq!(entries[0].relative(), Path::new("docker/abc"));
        assert_eq!(entries[1].path, "");
        assert!(!entries[2].is_unified() && entries[3].is_unified());
        assert_eq!(
            unified_path(&entries),
            Some(Path::new("system.slice/sentinel-supervisor.service"))
        );
        // At the v2 root nothing is delegated; a v1-only host has no unified line.
        assert_eq!(unified_path(&parse_cgroups("1:cpu:/x\n0::/\n")), None);
        assert_eq!(unified_path(&parse_cgroups("1:cpu:/x\n")), None);
    }
}
