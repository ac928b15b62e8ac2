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
use crate::process_group::{signal_group, spawn_in_group_async};
use nix::sys::signal::Signal;
use std::io;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
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
    let (pid, mut child) = spawn_command(&args.command)?;
    let _usage = follow_usage(pid, &args, &activity);
    let mut handle = match Governor::start(pid, &config, settings, activity.clone()) {
        Ok(handle) => handle,
        Err(err) => {
            // A command that finished at once is gone before it could be governed: that is
            // its exit, not an error.
            if let Ok(status) =
                tokio::time::timeout(std::time::Duration::from_millis(200), child.wait()).await
            {
                return Ok(exit_code(status));
            }
            kill_group(pid, Signal::SIGKILL);
            return Err(err.into());
        }
    };
    let forwarded = tokio::select! {
        status = child.wait() => {
            handle.stop();
            return Ok(exit_code(status));
        }
        _ = sigint.recv() => Signal::SIGINT,
        _ = sigterm.recv() => Signal::SIGTERM,
    };
    handle.stop();
    tracing::info!(
        pid,
        signal = %forwarded,
        "passing the signal on to the command"
    );
    kill_group(pid, forwarded);
    let status = match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(
                pid,
                "command did not exit within 5s of the signal; killing it"
            );
            kill_group(pid, Signal::SIGKILL);
            child.wait().await
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

fn kill_group(pid: i32, signal: Signal) {
    if let Err(err) = signal_group(pid, signal) {
        tracing::debug!(pid, %signal, error = %err, "signal to the command's group failed");
    }
}

/// Starts the command in its own process group, with a SIGKILL when the limiter dies
/// ([`crate::process_group`]).
fn spawn_command(command: &[String]) -> Result<(i32, tokio::process::Child), LimitError> {
    let shown = command.join(" ");
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    let child = spawn_in_group_async(cmd, Signal::SIGKILL).map_err(|source| LimitError::Spawn {
        command: shown.clone(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| LimitError::Spawn {
            command: shown,
            source: io::Error::other("the command exited before its pid was known"),
        })?;
    Ok((pid, child))
}

fn exit_code(status: io::Result<ExitStatus>) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
            (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
            (None, None) => ExitCode::FAILURE,
        },
        Err(err) => {
            tracing::error!(error = %err, "could not wait for the command");
            ExitCode::FAILURE
        }
    }
}
