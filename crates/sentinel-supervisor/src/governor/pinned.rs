//! The limited process: a pid pinned against reuse, signalled as a whole process group when it
//! leads one (llama-server and `limit -- CMD` children do) or alone otherwise (an arbitrary
//! `limit --pid`, so a shell's job group is never stopped by mistake).
//!
//! Linux pins the pid with a pidfd: every signal first goes through `pidfd_send_signal`, which
//! fails with `ESRCH` once the process is gone instead of hitting a recycled pid; only then is the
//! rest of the group signalled. macOS has no pidfd: a `kill(pid, 0)` liveness check comes first.

use std::io;

/// A process (group) the governor may stop and continue.
#[derive(Debug)]
pub(crate) struct PinnedPid {
    pid: i32,
    group: bool,
    #[cfg(target_os = "linux")]
    pidfd: Option<std::os::fd::OwnedFd>,
}

/// Why a process cannot be limited.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PinnedPidError {
    #[error("no process with pid {pid} (check the pid with `ps -p {pid}`)")]
    NoSuchProcess { pid: i32 },
    #[error("not allowed to signal pid {pid} (run as the process owner or as root)")]
    NotPermitted { pid: i32 },
    #[error("pid {pid} is not a valid process id (use a positive pid)")]
    InvalidPid { pid: i32 },
    #[error("could not open pid {pid}: {source}")]
    Open { pid: i32, source: io::Error },
}

impl PinnedPid {
    /// Pins `pid`. Fails when it does not exist or may not be signalled.
    pub(crate) fn open(pid: i32) -> Result<Self, PinnedPidError> {
        if pid <= 1 {
            return Err(PinnedPidError::InvalidPid { pid });
        }
        if let Err(err) = crate::os::process::signal_process(pid, None) {
            return Err(match err.raw_os_error() {
                Some(libc::ESRCH) => PinnedPidError::NoSuchProcess { pid },
                Some(libc::EPERM) => PinnedPidError::NotPermitted { pid },
                _ => PinnedPidError::Open { pid, source: err },
            });
        }
        Ok(Self {
            pid,
            group: crate::os::process::group_of(pid) == Some(pid),
            #[cfg(target_os = "linux")]
            pidfd: linux::pidfd_open(pid).map_err(|source| match source.raw_os_error() {
                Some(libc::ESRCH) => PinnedPidError::NoSuchProcess { pid },
                _ => PinnedPidError::Open { pid, source },
            })?,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// True when the whole process group is signalled.
    pub(crate) fn is_group(&self) -> bool {
        self.group
    }

    /// Stops the process (group). `ESRCH` means it is gone.
    pub(crate) fn stop(&self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Continues the process (group).
    pub(crate) fn resume(&self) -> io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Sends `sig` to the pinned process, then to its group when it leads one.
    pub(crate) fn signal(&self, sig: i32) -> io::Result<()> {
        // For a group, the pidfd only proves the leader is alive (signal 0): the group kill
        // reaches the leader too, and signalling it twice would double the kernel's work.
        self.signal_leader(if self.group { 0 } else { sig })?;
        if self.group {
            let signal = nix::sys::signal::Signal::try_from(sig).map_err(io::Error::from)?;
            // The group the live leader still owns (SIGCONT first for anything but STOP/CONT).
            crate::os::process::signal_group(self.pid, signal)?;
        }
        Ok(())
    }

    /// Through the pidfd where there is one, else [`kill_checked`].
    fn signal_leader(&self, sig: i32) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            return linux::pidfd_send_signal(fd, sig);
        }
        kill_checked(self.pid, sig)
    }
}

/// `kill` after a liveness check (the fallback where no pidfd exists); `sig` 0 only checks.
fn kill_checked(pid: i32, sig: i32) -> io::Result<()> {
    use crate::os::process::signal_process;
    signal_process(pid, None)?;
    match sig {
        0 => Ok(()),
        sig => signal_process(
            pid,
            Some(nix::sys::signal::Signal::try_from(sig).map_err(io::Error::from)?),
        ),
    }
}

/// True when an error means the process no longer exists.
pub(crate) fn is_gone(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ESRCH)
}

#[cfg(target_os = "linux")]
mod linux {
    //! The raw pidfd syscalls (libc exposes the numbers, not wrappers).
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Opens a pidfd; `Ok(None)` on kernels without pidfd support (before 5.3).
    pub(super) fn pidfd_open(pid: i32) -> io::Result<Option<OwnedFd>> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOSYS) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: the kernel just handed us this fd and nobody else owns it.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub(super) fn pidfd_send_signal(fd: &OwnedFd, sig: i32) -> io::Result<()> {
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn rejects_missing_and_invalid_pids() {
        assert!(matches!(
            PinnedPid::open(0),
            Err(PinnedPidError::InvalidPid { pid: 0 })
        ));
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        let err = PinnedPid::open(i32::MAX - 1).unwrap_err();
        assert!(matches!(err, PinnedPidError::NoSuchProcess { .. }), "{err}");
        assert!(err.to_string().contains("ps -p"));
    }

    #[test]
    fn stops_and_continues_a_child_and_sees_it_gone() {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let target = PinnedPid::open(pid).unwrap();
        assert!(target.is_group());
        target.stop().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(crate::meter::process_state(pid), Some('T'));
        target.resume().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_ne!(crate::meter::process_state(pid), Some('T'));
        child.kill().unwrap();
        child.wait().unwrap();
        let err = target.stop().unwrap_err();
        assert!(is_gone(&err), "{err}");
    }
}
