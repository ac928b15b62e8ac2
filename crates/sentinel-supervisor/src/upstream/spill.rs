//! Local first, the central tier second: whether a request goes to an upstream instead of the local
//! backend, and serving it there. Decided before any byte went to the client, at three points of
//! `proxy::forward`: before admission ([`before_local`]: the local backend is not serving, or the
//! queue would make the request later than its deadline), and then ([`instead`], one remote try)
//! after admission when the backend stopped serving while the request queued, and when the local
//! attempt failed before its response head. Never on a request the proxy refused (validation runs
//! first), never once a local answer began, never for a client that went away (its request is
//! dropped, nothing is sent). With every upstream cooling down or full, the request stays local
//! (and gets the local 503 when that cannot serve). `spill = "never"` (the default) sends nothing
//! anywhere.

use super::decision::{decide, parse_deadline, route_spills, LocalView, ServiceTimes};
use super::remote::serve;
use super::{SpillMode, SpillPolicy, SpillReason};
use crate::proxy::error::ApiError;
use crate::proxy::AppState;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Response};
use bytes::Bytes;
use tokio::time::Instant;

/// Every response names who served it: `local` or the upstream's name.
pub const SERVED_BY: &str = "x-sentinel-served-by";
/// A client's own deadline for `spill = "when_late"` (`2.5`, seconds, or `2500ms`).
pub(crate) const DEADLINE_HEADER: &str = "x-sentinel-deadline";

/// The central tier and what the decision reads of the local one.
#[derive(Debug)]
pub(crate) struct Spill {
    pub upstreams: super::Upstreams,
    /// Recent local service times, for `spill = "when_late"` (`proxy::relay` records them).
    pub service: ServiceTimes,
}

impl Spill {
    pub(crate) fn new(upstreams: super::Upstreams) -> Spill {
        Spill {
            upstreams,
            service: ServiceTimes::default(),
        }
    }
}

/// The first hook of `forward`: the request goes to an upstream when the profile allows it
/// and the local backend is not serving or would make it late; `None`: serve it locally.
pub(crate) async fn before_local(
    state: &AppState,
    policy: SpillPolicy,
    parts: &Parts,
    body: &Bytes,
) -> Result<Option<Response<Body>>, ApiError> {
    if !may_spill(state, policy, parts) {
        return Ok(None);
    }
    let deadline = match parts.headers.get(DEADLINE_HEADER) {
        Some(v) => Some(v.to_str().ok().and_then(parse_deadline).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{DEADLINE_HEADER} must be a duration in seconds (\"2.5\") or with a unit (\"2500ms\")"
            ))
        })?),
        None => policy.deadline,
    };
    let (busy, slots) = state.admission.load();
    let local = LocalView {
        serving: state.status.borrow().state.serving(),
        busy,
        waiting: state.admission.waiting(),
        slots,
    };
    let mean = state.spill.service.mean(Instant::now());
    let Some(reason) = decide(policy, local, deadline, mean) else {
        return Ok(None);
    };
    Ok(serve(&state.spill, reason, parts.uri.path(), body).await)
}

/// After admission, when the local backend stopped serving while the request queued for its
/// slot (`Unavailable`: a restart began), or when the local attempt failed before its response
/// head (`LocalFailed`): one remote try when the profile allows it.
pub(crate) async fn instead(
    state: &AppState,
    reason: SpillReason,
    policy: SpillPolicy,
    parts: &Parts,
    body: &Bytes,
) -> Option<Response<Body>> {
    if !may_spill(state, policy, parts) {
        return None;
    }
    serve(&state.spill, reason, parts.uri.path(), body).await
}

/// Whether the request may leave the host at all: the profile spills, there is an upstream,
/// and its route is a completion.
fn may_spill(state: &AppState, policy: SpillPolicy, parts: &Parts) -> bool {
    policy.mode != SpillMode::Never
        && !state.spill.upstreams.is_empty()
        && route_spills(parts.uri.path())
}

/// Marks a response the local side answered (the router's outermost layer; a spilled
/// response already names its upstream).
pub(crate) async fn mark_local(mut resp: axum::response::Response) -> axum::response::Response {
    resp.headers_mut()
        .entry(SERVED_BY)
        .or_insert(HeaderValue::from_static("local"));
    resp
}
