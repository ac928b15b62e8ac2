//! What the operating system says and does for this program, each fact read in one place:
//! how a child is started and signalled ([`process`]), and what `/proc` says about a process
//! and its cgroups: `/proc/<pid>/stat`, `status` and `cgroup` ([`procfs`]). The governor, the
//! meter and the host read those through here. Machine-wide counters stay with the one module
//! that measures them: `/proc/stat`, `mountinfo` and `schedstat` in `meter`, `/proc/cpuinfo` in
//! `host`, `/proc/interrupts` in `situation::presence`.

pub mod process;
pub mod procfs;
