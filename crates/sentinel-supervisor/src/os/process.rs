//! The one way this program starts a child it owns and signals it: in its own process group,
//! with a death signal, from one long-lived spawning thread; signalled as a group, continued
//! first.
//!
//! - [`spawn_in_group`] (a `std` command) and [`spawn_in_group_async`] (a `tokio` command) give
//!   the child its own process group (`setpgid(0, 0)`), so signals reach the whole group and a
//!   terminal's Ctrl-C reaches only us, and on Linux `PR_SET_PDEATHSIG(death_signal)` followed by
//!   a check that the parent is still the one that forked (it may have died before the death
//!   signal was armed; the child then exits at once).
//! - The death signal fires when the *thread* that forked the child exits, not the process. So
//!   every spawn runs on one dedicated thread that lives as long as the process: callers hand it
//!   the command over a channel and get the child back. (Tokio's worker threads and
//!   `spawn_blocking` threads come and go; a child spawned from one could be killed at random.)
//!   The async form awaits the answer, so a tokio worker is never blocked while a fork runs.
//! - [`signal_group`] sends SIGCONT before any other signal: a stopped process (the duty cycle
//!   stops the backend many times a second) ignores SIGTERM until it is continued.
//! - [`signal_process`] signals one process, [`exists`] is the one liveness probe by pid
//!   (`kill(pid, 0)`), [`group_of`] the one `getpgid`.

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::CommandExt;
use std::sync::mpsc;
use std::sync::OnceLock;

/// Starts `cmd` in its own process group with `death_signal` (Linux) on the spawning thread.
pub fn spawn_in_group(
    mut cmd: std::process::Command,
    death_signal: Signal,
) -> io::Result<std::process::Child> {
    prepare(&mut cmd, death_signal);
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    on_spawning_thread(
        move || cmd.spawn(),
        move |result| {
            let _ = done_tx.send(result);
        },
    )?;
    finish(done_rx.recv().map_err(|_| thread_gone())?)
}

/// [`spawn_in_group`] for a tokio command: the child is registered with the caller's runtime
/// (entered on the spawning thread), so its `wait` and pipes are async; the caller awaits the
/// spawning thread instead of blocking its worker. Call it from within a runtime.
pub async fn spawn_in_group_async(
    mut cmd: tokio::process::Command,
    death_signal: Signal,
) -> io::Result<tokio::process::Child> {
    prepare(cmd.as_std_mut(), death_signal);
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        io::Error::other("spawn_in_group_async must be called from within a tokio runtime")
    })?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    on_spawning_thread(
        move || {
            let _entered = runtime.enter();
            cmd.spawn()
        },
        move |result| {
            let _ = done_tx.send(result);
        },
    )?;
    finish(done_rx.await.map_err(|_| thread_gone())?)
}

/// Sends `signal` to the process group `pgid`, SIGCONT first unless the signal is itself
/// SIGCONT or SIGSTOP (a stopped process acts on SIGTERM only once continued; SIGKILL works
/// either way, but continuing first costs nothing and keeps one rule).
pub fn signal_group(pgid: i32, signal: Signal) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    let pgid = Pid::from_raw(pgid);
    if !matches!(signal, Signal::SIGCONT | Signal::SIGSTOP) {
        killpg(pgid, Signal::SIGCONT).map_err(io::Error::from)?;
    }
    killpg(pgid, signal).map_err(io::Error::from)
}

/// Whether a process with `pid` exists: `kill(pid, 0)` succeeds, or fails only for want of
/// permission (someone else's process is still a process).
pub(crate) fn exists(pid: i32) -> bool {
    pid > 0 && matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// Sends `signal` to the one process `pid` (not its group: [`signal_group`] does that); `None`
/// only checks that it exists and may be signalled. The error says why not (`ESRCH`: gone,
/// `EPERM`: not ours).
pub(crate) fn signal_process(pid: i32, signal: Option<Signal>) -> io::Result<()> {
    kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
}

/// The process group `pid` belongs to (`None` once it is gone).
pub(crate) fn group_of(pid: i32) -> Option<i32> {
    nix::unistd::getpgid(Some(Pid::from_raw(pid)))
        .ok()
        .map(Pid::as_raw)
}

/// Own process group; on Linux the death signal and the parent re-check.
fn prepare(cmd: &mut std::process::Command, death_signal: Signal) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = Pid::this();
        // SAFETY: only async-signal-safe system calls (prctl, getppid, _exit) run between fork
        // and exec, on values copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(death_signal)?;
                // The parent may have died before the death signal was armed.
                if nix::unistd::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = death_signal;
}

type Job = Box<dyn FnOnce() + Send>;

fn thread_gone() -> io::Error {
    io::Error::other("the process-spawning thread is gone")
}

/// The spawn's outcome as the caller sees it: a panic on the spawning thread is an error.
fn finish<T>(result: std::thread::Result<io::Result<T>>) -> io::Result<T> {
    result.unwrap_or_else(|_| Err(io::Error::other("spawning the child panicked")))
}

/// Runs `job` on the spawning thread and hands its result (or its panic) to `reply`, there.
fn on_spawning_thread<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
    reply: impl FnOnce(std::thread::Result<T>) + Send + 'static,
) -> io::Result<()> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    let spawner = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("process-spawner".into())
                .spawn(move || {
                    // The sender lives in a static: this loop, and the thread, end with the
                    // process, as the children's death signal must.
                    for job in rx {
                        job();
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            io::Error::other(format!(
                "could not start the process-spawning thread: {e} (the system may be out of threads)"
            ))
        })?;
    let job: Job = Box::new(move || {
        // A panic must not end the thread the children's death signal is tied to.
        reply(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
    });
    spawner.send(job).map_err(|_| thread_gone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_state(pid: i32, want: impl Fn(Option<char>) -> bool) -> Option<char> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = crate::meter::process_state(pid);
            if want(state) || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_child_leads_its_own_group_and_every_spawn_shares_one_thread() {
        let mut a = std::process::Command::new("sleep");
        a.arg("30");
        let mut a = spawn_in_group(a, Signal::SIGKILL).unwrap();
        let pid = a.id() as i32;
        assert_eq!(group_of(pid), Some(pid));
        // From a short-lived thread: the child outlives it (the death signal follows the
        // spawning thread, which is not this one).
        let b = std::thread::spawn(|| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            spawn_in_group(cmd, Signal::SIGKILL).unwrap()
        })
        .join()
        .unwrap();
        let mut b = b;
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(b.try_wait().unwrap(), None, "died with its caller thread");
        for child in [&mut a, &mut b] {
            signal_group(child.id() as i32, Signal::SIGKILL).unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn a_stopped_group_is_continued_before_sigterm() {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn_in_group(cmd, Signal::SIGKILL).unwrap();
        let pid = child.id() as i32;
        signal_group(pid, Signal::SIGSTOP).unwrap();
        assert_eq!(wait_state(pid, |s| s == Some('T')), Some('T'));
        // SIGTERM alone would stay pending on the stopped process.
        signal_group(pid, Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "a stopped child ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(signal_group(1, Signal::SIGTERM).is_err());
    }

    #[tokio::test]
    async fn a_tokio_command_is_spawned_on_the_caller_runtime() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let mut child = spawn_in_group_async(cmd, Signal::SIGKILL).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("exit seen by the runtime")
            .unwrap();
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn one_process_is_probed_and_signalled_alone() {
        assert!(exists(std::process::id() as i32));
        // pid 1 is someone else's when not root: EPERM still means it exists.
        assert!(exists(1));
        // pid_max is at most 2^22 on Linux: no such process.
        assert!(!exists(i32::MAX - 1));
        assert_eq!(group_of(i32::MAX - 1), None);
        let err = signal_process(i32::MAX - 1, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn_in_group(cmd, Signal::SIGKILL).unwrap();
        let pid = child.id() as i32;
        signal_process(pid, Some(Signal::SIGKILL)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_failed_spawn_is_an_error_not_a_panic() {
        let cmd = std::process::Command::new("/nonexistent/program");
        let err = spawn_in_group(cmd, Signal::SIGKILL).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
