//! `sentinel-supervisor limit`: hold any process to a CPU budget, like cpulimit but smooth.
//!
//! `limit --cpus 0.5 --pid PID` limits a running process (its group when it leads one) until it
//! exits or the limiter gets SIGINT/SIGTERM, which continue it and exit 0.
//! `limit --cpus 0.5 -- CMD ARGS...` starts CMD in its own process group (with a death signal,
//! so it dies with the limiter), limits it, and exits with its exit code. SIGINT/SIGTERM continue
//! it and pass the signal on to its group, then wait for it (SIGKILL after 5 s).
//! The budget holds from the first period. Without a proxy to say when the target works, its own
//! CPU use does ([`super::usage`]): once it has been idle for a second the limiter rests (no
//! stops, which would wake every thread of an idle program), and it throttles again within one
//! period (at most 20 ms) of new work. (With `--method cgroup` the kernel caps the target and
//! nothing rests.)

use super::{Activity, Governor, GovernorConfig, GovernorSettings, Priority};
use crate::cli::LimitArgs;
use crate::host::Host;
use std::io;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;

/// Why `limit` could not start.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "--cpus {cpus} is out of range: use a number of cores above 0 and at most {available} \
         (the CPUs this process may use)"
    )]
    Budget { cpus: f64, available: usize },
    #[error(
        "nothing to limit: pass --pid PID or a command after `--` \
         (e.g. `sentinel-supervisor limit --cpus 0.5 -- make -j2`)"
    )]
    NoTarget,
    #[error("could not start `{command}`: {source} (check the command name and PATH)")]
    Spawn { command: String, source: io::Error },
    #[error("could not watch for SIGINT/SIGTERM: {0}")]
    Signals(io::Error),
}

/// How long the command gets to exit after a forwarded SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

pub async fn run(args: LimitArgs) -> anyhow::Result<ExitCode> {
    let host = Host::detect();
    let available = host.allowed_cpus();
    if !(args.cpus.is_finite() && args.cpus > 0.0 && args.cpus <= available as f64) {
        return Err(LimitError::Budget {
            cpus: args.cpus,
            available,
        }
        .into());
    }
    let config = GovernorConfig {
        method: args.method,
        period: args.period,
        feedback_window: GovernorConfig::default()
            .feedback_window
            .max(args.period * 5),
        ..GovernorConfig::default()
    };
    let settings = GovernorSettings {
        cpus: Some(args.cpus),
        threads: args.threads,
        priority: Priority::Normal,
        adaptive: args.adaptive,
        host,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(LimitError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(LimitError::Signals)?;
    let activity = Activity::new();

    if let Some(pid) = args.pid {
        let _usage = follow_usage(pid, &args, &activity);
        let mut handle = Governor::start(pid, &config, settings, activity.clone())?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = tick.tick() => {
                    let gone = matches!(crate::meter::process_state(pid), None | Some('Z'));
                    if gone || handle.is_finished() {
                        tracing::info!(pid, "limited process exited");
                        break;
                    }
                }
            }
        }
        handle.stop();
        return Ok(ExitCode::SUCCESS);
    }

    if args.command.is_empty() {
        return Err(LimitError::NoTarget.into());
    }
    let (pid, mut exited) = spawn_command(&args.command)?;
    let _usage = follow_usage(pid, &args, &activity);
    let mut handle = match Governor::start(pid, &config, settings, activity.clone()) {
        Ok(handle) => handle,
        Err(err) => {
            // A command that finished at once is gone before it could be governed: that is
            // its exit, not an error.
            if let Ok(status) =
                tokio::time::timeout(std::time::Duration::from_millis(200), &mut exited).await
            {
                return Ok(exit_code(status));
            }
            kill_group(pid, libc::SIGKILL);
            return Err(err.into());
        }
    };
    let forwarded = tokio::select! {
        status = &mut exited => {
            handle.stop();
            return Ok(exit_code(status));
        }
        _ = sigint.recv() => libc::SIGINT,
        _ = sigterm.recv() => libc::SIGTERM,
    };
    handle.stop();
    tracing::info!(
        pid,
        signal = forwarded,
        "passing the signal on to the command"
    );
    kill_group(pid, forwarded);
    let status = match tokio::time::timeout(GRACE, &mut exited).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(
                pid,
                "command did not exit within 5s of the signal; killing it"
            );
            kill_group(pid, libc::SIGKILL);
            exited.await
        }
    };
    Ok(exit_code(status))
}

/// Starts following the target's CPU use (the activity signal of `limit`); the task ends with
/// the target or when the returned guard drops.
fn follow_usage(pid: i32, args: &LimitArgs, activity: &Activity) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(super::usage::follow(
        pid,
        args.cpus,
        args.period,
        activity.clone(),
        activity.begin(),
    )))
}

fn kill_group(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) on the group of a child we spawned and have not reaped.
    unsafe {
        libc::kill(-pid, libc::SIGCONT);
        libc::kill(-pid, sig);
    }
}

type Exited = oneshot::Receiver<io::Result<ExitStatus>>;

/// Starts the command from a dedicated thread that lives until the command exits: the death
/// signal is tied to the spawning thread, not to the process.
fn spawn_command(command: &[String]) -> Result<(i32, Exited), LimitError> {
    let command = command.to_vec();
    let shown = command.join(" ");
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("limit-child".into())
        .spawn(move || {
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..]);
            set_up_child(&mut cmd);
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id() as i32));
                    let _ = exit_tx.send(child.wait());
                }
                Err(err) => {
                    let _ = pid_tx.send(Err(err));
                }
            }
        })
        .map_err(|source| LimitError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let pid = pid_rx
        .recv()
        .map_err(|_| io::Error::other("the spawning thread ended early"))
        .and_then(|r| r)
        .map_err(|source| LimitError::Spawn {
            command: shown,
            source,
        })?;
    Ok((pid, exit_rx))
}

/// Own process group; on Linux a SIGKILL when the limiter dies.
fn set_up_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The limiter may have died before the death signal was armed.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
}

fn exit_code(status: Result<io::Result<ExitStatus>, oneshot::error::RecvError>) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
            (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
            (None, None) => ExitCode::FAILURE,
        },
        Ok(Err(err)) => {
            tracing::error!(error = %err, "could not wait for the command");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}
