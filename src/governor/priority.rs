//! Scheduling priority of the backend (temporary: replaced by the governor branch).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Normal,
    Background,
    Idle,
}

/// Applies the priority to the calling process. Async-signal-safe (for `pre_exec`).
pub fn apply_to_current_process(p: Priority) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling process.
    unsafe {
        match p {
            Priority::Normal => {}
            Priority::Background => {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
            Priority::Idle => {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            }
        }
    }
    #[cfg(target_os = "macos")]
    // SAFETY: plain system call on the calling process.
    unsafe {
        if p != Priority::Normal {
            libc::setpriority(libc::PRIO_DARWIN_PROCESS, 0, libc::PRIO_DARWIN_BG);
        }
    }
}
