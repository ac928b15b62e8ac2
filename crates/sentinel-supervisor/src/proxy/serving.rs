//! Waiting for a serving backend: a request survives restarts instead of failing, and is
//! refused at once while the supervisor shuts down or the backend has failed.

use super::error::ApiError;
use super::AppState;
use crate::requests::Ticket;
use crate::supervisor::state::{BackendInfo, State};
use tokio::time::Instant;

/// 503 at once, before a request takes a slot or waits, while the supervisor shuts down:
/// the requests in flight drain, new ones go elsewhere.
pub(super) fn refuse_while_stopping(state: &AppState) -> Result<(), ApiError> {
    let status = state.status.borrow();
    match status.state {
        State::Stopping | State::Stopped => Err(ApiError::unavailable(
            "the supervisor is shutting down; retry shortly (another instance may take over)",
        )
        .retry_after(status.state.retry_after_s())),
        _ => Ok(()),
    }
}

/// Waits until a backend serves (and, with `not_generation`, a different one than that),
/// up to `deadline`. The ticket is bound to the backend's generation while the published
/// status is read, so a drain that starts after a switch sees it.
pub(super) async fn wait_for_backend(
    state: &AppState,
    deadline: Instant,
    not_generation: Option<u64>,
    ticket: &mut Ticket,
) -> Result<BackendInfo, ApiError> {
    let mut rx = state.status.clone();
    loop {
        {
            let status = rx.borrow_and_update();
            match (&status.state, &status.backend) {
                (s, Some(b)) if s.serving() && Some(b.generation) != not_generation => {
                    ticket.bind(b.generation);
                    return Ok(b.clone());
                }
                (State::Failed { reason, .. }, _) => {
                    let mut failed = status.state.clone();
                    failed.refresh_retry_in(std::time::SystemTime::now());
                    return Err(ApiError::unavailable(format!(
                        "the model backend has failed: {reason}"
                    ))
                    .retry_after(failed.retry_after_s()));
                }
                (s, _) if !s.will_serve() => {
                    return Err(
                        ApiError::unavailable(format!("the model backend is {}", s.name()))
                            .retry_after(s.retry_after_s()),
                    )
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ApiError::unavailable("the supervisor is shutting down")),
            Err(_) => return Err(not_ready(&rx.borrow())),
        }
    }
}

/// The 503 of a request whose wait for a backend ran out, with the last failure (`Retry-After`
/// the default 5 s).
fn not_ready(status: &crate::supervisor::state::Status) -> ApiError {
    let why = match (&status.state, &status.last_exit) {
        (State::Backoff { reason, .. }, _) => format!("; last failure: {reason}"),
        (_, Some(exit)) => format!("; last failure: {exit}"),
        _ => String::new(),
    };
    ApiError::unavailable(format!(
        "the model backend is not ready (state: {}{why}); retry shortly",
        status.state.name()
    ))
}
