//! What a request does when its backend failed before answering (no response head came): sent
//! again to the next backend (at most [`MAX_RETRIES`] times), at once on a fresh connection when
//! a kept-alive one was closed under it, refused as poison when it was the only one in flight at
//! a crash or in flight at two (see [`super::poison`]), else a 502.

use super::error::ApiError;
use super::poison::{self, Fingerprint};
use super::AppState;
use crate::requests::Ticket;
use crate::supervisor::state::BackendInfo;
use tokio::time::Instant;

/// How many times one request may be sent again after the backend answered nothing.
const MAX_RETRIES: u32 = 2;

/// How long a request whose backend died waits for the lifecycle's word on how it died.
pub(super) const CRASH_WORD_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Where a failed request goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// To a backend other than the one of this generation (it is gone or refused the connection).
    NextBackend(u64),
    /// To any serving backend, at once: a kept-alive connection was closed under it.
    Again,
}

/// One request's tries so far.
#[derive(Default)]
pub(super) struct Attempts<'a> {
    retries: u32,
    /// Backend crashes this request was in flight at.
    crashes: u32,
    /// Its turn as a suspect after a crash with others in flight: held until it is answered,
    /// so suspects go one at a time.
    suspect: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl<'a> Attempts<'a> {
    /// Where to send the request again after `error` on `backend` (`None`: nowhere; each send
    /// again counts towards [`MAX_RETRIES`]), or the poison answer when the backend crashed
    /// with it.
    pub(super) async fn after_failure(
        &mut self,
        state: &'a AppState,
        ticket: &Ticket,
        backend: &BackendInfo,
        fingerprint: Option<&Fingerprint>,
        error: &hyper_util::client::legacy::Error,
    ) -> Result<Option<Retry>, ApiError> {
        let retry = if error.is_connect() {
            Some(Retry::NextBackend(backend.generation))
        } else if backend_gone(backend).await {
            let at_death = ticket.died();
            let waited = Instant::now() + CRASH_WORD_WAIT;
            if state.inflight.crashed(backend.generation, waited).await == Some(true) {
                self.crashes += 1;
                if at_death <= 1 || self.crashes >= 2 {
                    return Err(poison::poisoned(state, backend, fingerprint, at_death));
                }
            }
            if self.crashes > 0 && self.suspect.is_none() && self.retries < MAX_RETRIES {
                self.suspect = Some(state.poison.suspect_turn().await);
            }
            Some(Retry::NextBackend(backend.generation))
        } else if closed_under_us(error) {
            Some(Retry::Again)
        } else {
            None
        };
        let retry = retry.filter(|_| self.retries < MAX_RETRIES);
        self.retries += u32::from(retry.is_some());
        Ok(retry)
    }
}

/// Whether the backend process is gone (or a zombie). A process that was just killed may close
/// its sockets a moment before it shows as dead, and one at idle priority on a busy machine may
/// wait long to run its exit: a pending SIGKILL counts as gone, else it is given up to 1 s.
async fn backend_gone(backend: &BackendInfo) -> bool {
    for _ in 0..40 {
        let alive =
            matches!(crate::meter::process_state(backend.pid), Some(s) if s != 'Z' && s != 'X');
        if !alive || crate::meter::kill_pending(backend.pid) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}

/// Whether the request failed because the backend closed a kept-alive connection before
/// answering (no response byte was received).
fn closed_under_us(e: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
}
