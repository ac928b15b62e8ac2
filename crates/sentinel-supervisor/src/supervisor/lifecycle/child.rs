//! The seam between the state machine and a real llama-server: [`Backend`] starts children
//! and asks them `/health`, [`BackendChild`] is one running child. [`Llama`] is the real one
//! (over [`BackendProcess`]); the unit tests drive the state machine with a double of their
//! own on paused time, so restarts, backoff, the breaker, hangs, drains and blue-green are
//! checked without a process or a socket.

use crate::backend::launch::LaunchSpec;
use crate::backend::process::{BackendProcess, LogTail};
use crate::supervisor::state::BackendInfo;
use std::future::Future;
use std::process::ExitStatus;
use std::time::Duration;

/// What one `/health` probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// 200: serving.
    Ready,
    /// 503: loading the model, or busy with every slot; alive either way.
    Loading,
    /// No answer, or an answer that is neither: why.
    Down(String),
}

/// Starts backends and probes them.
pub(crate) trait Backend: Send + Sync + 'static {
    type Child: BackendChild;

    /// Starts one backend as `spec` says.
    fn spawn(&self, spec: &LaunchSpec)
        -> impl Future<Output = std::io::Result<Self::Child>> + Send;

    /// One `/health` probe of the backend `info` describes, through `client` (which carries
    /// `supervisor.probe_timeout`).
    fn health(
        &self,
        client: &reqwest::Client,
        info: &BackendInfo,
    ) -> impl Future<Output = Probe> + Send;
}

/// One running backend, as the lifecycle holds it.
pub(crate) trait BackendChild: Send + 'static {
    fn pid(&self) -> i32;

    /// Its last output lines (kept after it exits, for `last_lines` and the CPU-fault check).
    fn logs(&self) -> LogTail;

    /// Resolves when it exits; cancel-safe, and at once once it has.
    fn wait(&mut self) -> impl Future<Output = ExitStatus> + Send;

    /// Graceful stop: SIGCONT and SIGTERM to its group, `grace`, then SIGKILL; reaps it.
    fn stop(&mut self, grace: Duration) -> impl Future<Output = ExitStatus> + Send;
}

/// The real backend: llama-server spawned by [`BackendProcess`], probed over HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Llama;

impl Backend for Llama {
    type Child = BackendProcess;

    async fn spawn(&self, spec: &LaunchSpec) -> std::io::Result<BackendProcess> {
        BackendProcess::spawn(spec).await
    }

    /// `GET /health` with `Connection: close` (a kept-alive probe connection would make
    /// llama-server wait for it at exit).
    async fn health(&self, client: &reqwest::Client, info: &BackendInfo) -> Probe {
        let url = format!("{}/health", info.base_url);
        match client
            .get(&url)
            .header(reqwest::header::CONNECTION, "close")
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Probe::Ready,
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => Probe::Loading,
            Ok(r) => Probe::Down(format!("/health answered {}", r.status())),
            Err(e) if e.is_timeout() => Probe::Down("/health timed out".into()),
            Err(e) => Probe::Down(format!("/health unreachable: {e}")),
        }
    }
}

impl BackendChild for BackendProcess {
    fn pid(&self) -> i32 {
        BackendProcess::pid(self)
    }

    fn logs(&self) -> LogTail {
        self.logs.clone()
    }

    async fn wait(&mut self) -> ExitStatus {
        BackendProcess::wait(self).await
    }

    async fn stop(&mut self, grace: Duration) -> ExitStatus {
        BackendProcess::stop(self, grace).await
    }
}
