//! Scheduling priority of the backend: background profiles run in the lowest class so the user's
//! own work always wins the CPU.
//!
//! Linux: `background` = nice 19; `idle` = `SCHED_IDLE` (runs only when a CPU would otherwise
//! idle) plus nice 19 as a fallback where `SCHED_IDLE` is refused. macOS: both map to
//! `PRIO_DARWIN_BG` (background QoS: low CPU priority, throttled I/O).

use serde::{Deserialize, Serialize};

/// The scheduling class of a profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Leave the scheduler alone.
    #[default]
    Normal,
    /// Lowest normal priority (nice 19 / Darwin background).
    Background,
    /// Only spare cycles (`SCHED_IDLE` / Darwin background).
    Idle,
}

/// The serde name (`normal`, `background`, `idle`).
impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.serialize(f)
    }
}

pub(crate) use imp::{apply_to_current_process, apply_to_process_threads, raise_current_thread};

#[cfg(target_os = "linux")]
mod imp {
    use super::Priority;
    use std::io;

    /// Applies `priority` to every thread of the running process `pid` (a reload's priority
    /// change). Lowering works unprivileged; raising (e.g. `background` -> `normal`) needs
    /// `CAP_SYS_NICE` and fails with `EPERM` otherwise.
    pub(crate) fn apply_to_process_threads(pid: i32, priority: Priority) -> io::Result<()> {
        let threads = crate::meter::thread_run_times(pid).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("process {pid} is gone"))
        })?;
        let (nice, policy) = match priority {
            Priority::Normal => (0, libc::SCHED_OTHER),
            Priority::Background => (19, libc::SCHED_OTHER),
            Priority::Idle => (19, libc::SCHED_IDLE),
        };
        for (tid, _) in threads {
            let param = libc::sched_param { sched_priority: 0 };
            // nix wraps neither sched_setscheduler nor setpriority.
            // SAFETY: `param` is a valid sched_param for `policy` that outlives the call.
            if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setpriority takes plain integers; on Linux a thread id names that thread.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Applies `priority` to the calling process.
    ///
    /// Async-signal-safe (plain syscalls, no allocation, no locks): meant for `pre_exec` of the
    /// child spawn, where the forked process is single-threaded, so the per-thread Linux calls
    /// cover the whole future program.
    pub(crate) fn apply_to_current_process(priority: Priority) -> io::Result<()> {
        match priority {
            Priority::Normal => Ok(()),
            Priority::Background => nice_19(),
            Priority::Idle => {
                nice_19()?;
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: pid 0 = the calling thread; a valid sched_param for SCHED_IDLE.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    /// Gives the calling thread a real-time priority where allowed (else the highest nice it
    /// may take; on macOS the user-interactive QoS class). For a thread that sleeps between
    /// deadlines and must wake on time (the duty cycle's): it costs nothing while it sleeps.
    pub(crate) fn raise_current_thread() {
        // nix wraps neither sched_setscheduler nor setpriority.
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
            tracing::debug!("thread runs SCHED_FIFO");
            return;
        }
        let tid = nix::unistd::gettid().as_raw() as libc::id_t;
        // SAFETY: setpriority takes plain integers; on Linux a thread id names that thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -10) } != 0 {
            tracing::debug!("thread keeps its normal priority (no permission to raise it)");
        }
    }

    fn nice_19() -> io::Result<()> {
        // SAFETY: setpriority on the calling process; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use super::Priority;
    use std::io;

    pub(crate) fn apply_to_process_threads(pid: i32, priority: Priority) -> io::Result<()> {
        let value = if priority == Priority::Normal {
            0
        } else {
            libc::PRIO_DARWIN_BG
        };
        // SAFETY: setpriority on a pid; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_DARWIN_PROCESS, pid as libc::id_t, value) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn raise_current_thread() {
        // SAFETY: sets the calling thread's QoS class from a constant; no pointers involved.
        unsafe {
            libc::pthread_set_qos_class_self_np(libc::qos_class_t::QOS_CLASS_USER_INTERACTIVE, 0);
        }
    }

    pub(crate) fn apply_to_current_process(priority: Priority) -> io::Result<()> {
        if priority == Priority::Normal {
            return Ok(());
        }
        // SAFETY: setpriority on the calling process; no memory is passed.
        let rc = unsafe { libc::setpriority(libc::PRIO_DARWIN_PROCESS, 0, libc::PRIO_DARWIN_BG) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn child_nice_and_policy(p: Priority) -> String {
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "nice; chrt -p $$ 2>/dev/null | head -1 || true"]);
        // SAFETY: apply_to_current_process is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || apply_to_current_process(p));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn serde_names_are_lowercase() {
        let p: Priority = serde_json::from_str("\"idle\"").unwrap();
        assert_eq!(p, Priority::Idle);
        assert_eq!(
            serde_json::to_string(&Priority::Background).unwrap(),
            "\"background\""
        );
        assert!(serde_json::from_str::<Priority>("\"Idle\"").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn applies_in_pre_exec() {
        let normal = child_nice_and_policy(Priority::Normal);
        // SAFETY: getpriority takes plain integers and touches no memory of ours.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert!(normal.starts_with(&own.to_string()), "{normal}");
        let bg = child_nice_and_policy(Priority::Background);
        assert!(bg.starts_with("19"), "{bg}");
        let idle = child_nice_and_policy(Priority::Idle);
        assert!(idle.starts_with("19"), "{idle}");
        if !idle.trim_start_matches("19").trim().is_empty() {
            assert!(idle.contains("SCHED_IDLE"), "{idle}");
        }
    }
}
