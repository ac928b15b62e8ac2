//! Forwarding one request to llama-server, in the order of its steps: the body read within its
//! limit and timeout and checked (`validate`, `poison`), admission, the request's ticket
//! (`crate::requests`), waiting for a serving backend (`serving`), sending it with the backend's
//! key (`outbound`) and sending it again when no answer came (`retry`), then streaming the
//! answer (`relay`). Where a profile's `spill` allows it, three calls into
//! `crate::upstream::spill` may send the request to the central tier instead, all before any
//! byte of a local answer.

use super::error::ApiError;
use super::outbound::{backend_error, upstream_request};
use super::poison::{self, Fingerprint};
use super::retry::{Attempts, Retry};
use super::serving::{refuse_while_stopping, wait_for_backend};
use super::{relay, validate, AppState, Live};
use crate::requests::Ticket;
use crate::supervisor::state::BackendInfo;
use crate::upstream::{spill, SpillReason};
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

pub(crate) use super::outbound::{is_sse, strip_hop_by_hop, upstream_client, Upstream};

/// Forwards `req` (already authenticated) to the backend.
pub(crate) async fn forward(
    state: &AppState,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    refuse_while_stopping(state)?;
    let live = state.live();
    let (parts, body) = req.into_parts();
    let body = read_body(&live, &parts, body).await?;
    let (body, fingerprint) = check(state, &live, &parts, body)?;

    // Local first; the central tier when the profile's `spill` allows it (`crate::upstream`).
    if let Some(resp) = spill::before_local(state, live.spill, &parts, &body).await? {
        return Ok(resp);
    }
    let deadline = Instant::now() + live.config.queue_timeout;
    let slot = state.admission.admit(deadline).await?;
    let admitted = Instant::now();
    // The backend may have stopped serving while this request queued for its slot.
    if !state.status.borrow().state.serving() {
        let reason = SpillReason::Unavailable;
        if let Some(resp) = spill::instead(state, reason, live.spill, &parts, &body).await {
            return Ok(resp);
        }
    }
    let mut ticket = state.inflight.issue(slot, state.activity.begin());
    let backend = wait_for_backend(state, deadline, None, &mut ticket).await?;
    let outgoing = Outgoing {
        parts: &parts,
        body: &body,
        fingerprint: fingerprint.as_ref(),
        live: &live,
        deadline,
    };
    let (answer, backend) = match send(state, &outgoing, &mut ticket, backend).await? {
        Sent::Answer(answer, backend) => (answer, backend),
        Sent::Done(resp) => return Ok(resp),
    };
    let poison = fingerprint.map(|fp| (std::sync::Arc::clone(state), fp));
    let timed = (std::sync::Arc::clone(&state.spill), admitted);
    Ok(relay::respond(answer, ticket, backend.pid, poison, timed))
}

/// Reads the whole body (within `proxy.body_read_timeout` and `max_body_bytes`) before the
/// request takes a queue or backend slot: a slow client holds neither.
async fn read_body(live: &Live, parts: &Parts, body: Body) -> Result<Bytes, ApiError> {
    let limit = live.config.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let read_timeout = live.config.body_read_timeout;
    let body = tokio::time::timeout(read_timeout, Limited::new(body, limit as usize).collect())
        .await
        .map_err(|_| ApiError::body_timeout(read_timeout))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })?;
    Ok(body.to_bytes())
}

/// Checks the body of a route that has rules (a malformed request holds no slot) and refuses
/// a known poison request; returns the body to send (rewritten when the check capped it) and
/// its fingerprint.
fn check(
    state: &AppState,
    live: &Live,
    parts: &Parts,
    body: Bytes,
) -> Result<(Bytes, Option<Fingerprint>), ApiError> {
    let Some(route) = validate::Route::of(parts.uri.path()) else {
        return Ok((body, None));
    };
    let profile = &live.info.profile;
    let rules = validate::Rules {
        profile: &profile.name,
        max_tokens: profile.max_tokens,
        slots: profile.slots,
        grammar: profile.grammar,
        extra_fields: &live.config.extra_fields,
        limits: &live.config.grammar,
        vocab_size: live.info.vocab_size,
        projector: live.info.projector,
    };
    let checked = validate::check(route, &body, &rules)?;
    poison::refuse(state, &checked.fingerprint)?;
    Ok((checked.body.unwrap_or(body), Some(checked.fingerprint)))
}

/// A checked request on its way to a backend.
struct Outgoing<'a> {
    parts: &'a Parts,
    body: &'a Bytes,
    fingerprint: Option<&'a Fingerprint>,
    live: &'a Live,
    /// Until when it may wait for a backend (`proxy.queue_timeout` from its arrival).
    deadline: Instant,
}

/// How sending a request ended.
enum Sent {
    /// The backend's answer head, to relay, and the backend that sent it.
    Answer(Response<hyper::body::Incoming>, BackendInfo),
    /// A whole answer: a backend's 500 read and mapped, or the central tier's.
    Done(Response<Body>),
}

/// Sends the request to `backend`, and again to the next one when no answer came (see
/// [`super::retry`]).
async fn send(
    state: &AppState,
    out: &Outgoing<'_>,
    ticket: &mut Ticket,
    mut backend: BackendInfo,
) -> Result<Sent, ApiError> {
    let path = out.parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let timeout = out.live.config.upstream_timeout;
    let client = state.upstream();
    let mut attempts = Attempts::default();
    loop {
        let request = upstream_request(out.parts, path, &backend, out.body.clone())?;
        ticket.sent();
        // An error means no response head arrived: `request` resolves with the head.
        let error = match tokio::time::timeout(timeout, client.request(request)).await {
            Err(_) => {
                return Err(ApiError::gateway_timeout(format!(
                    "the model did not answer within {timeout:?} (proxy.upstream_timeout)"
                )))
            }
            Ok(Ok(resp)) => return answered(resp, ticket, backend).await,
            Ok(Err(e)) => e,
        };
        let retry = attempts
            .after_failure(state, ticket, &backend, out.fingerprint, &error)
            .await?;
        // Failed before its response head (not a kept-alive connection closed under us, which
        // is sent again at once): one remote try when `spill` allows it.
        if retry != Some(Retry::Again) {
            let reason = SpillReason::LocalFailed;
            let policy = out.live.spill;
            if let Some(resp) = spill::instead(state, reason, policy, out.parts, out.body).await {
                return Ok(Sent::Done(resp));
            }
        }
        let not_generation = match retry {
            None => {
                tracing::warn!(generation = backend.generation, error = ?error, "the backend failed before answering");
                return Err(ApiError::bad_gateway(format!(
                    "the model backend failed: {error}"
                )));
            }
            Some(Retry::NextBackend(generation)) => {
                tracing::info!(generation, error = %error, "backend gone before answering; sending the request to the next backend");
                Some(generation)
            }
            Some(Retry::Again) => {
                tracing::debug!(error = %error, "kept-alive connection closed by the backend; sending again");
                None
            }
        };
        backend = wait_for_backend(state, out.deadline, not_generation, ticket).await?;
    }
}

/// The backend answered: its head is progress for the watchdog, and its status counts towards
/// (or resets) the server errors in a row. A 500 that answers the client's own mistake is a 400
/// (and no sign of a failing backend).
async fn answered(
    resp: Response<hyper::body::Incoming>,
    ticket: &Ticket,
    backend: BackendInfo,
) -> Result<Sent, ApiError> {
    ticket.progress();
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
        let answer = backend_error(resp).await;
        ticket.answered(if answer.is_err() { 400 } else { 500 });
        return answer.map(Sent::Done);
    }
    ticket.answered(resp.status().as_u16());
    Ok(Sent::Answer(resp, backend))
}
