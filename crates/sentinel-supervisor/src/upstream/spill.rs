//! Local first, the central tier second: whether a request goes to an upstream instead of the
//! local backend, and serving it there. Decided before any byte went to the client, at three
//! points of `proxy::forward`: before admission ([`before_local`]: the local backend is not
//! serving, or the queue would make the request later than its deadline), after admission when
//! the backend stopped serving while the request queued ([`if_not_serving`]), and when the local
//! attempt failed before its response head ([`after_local_failure`], one remote try). Never on
//! a request the proxy refused (validation runs first), never once a local answer began, never
//! for a client that went away (its request is dropped, nothing is sent). With every upstream
//! cooling down or full, the request stays local (and gets the local 503 when that cannot
//! serve). `spill = "never"` (the default) sends nothing anywhere.

use super::breaker::Pass;
use super::client::{self, Failure};
use super::Upstream;
use crate::proxy::error::ApiError;
use crate::proxy::AppState;
use axum::body::Body;
use axum::http::{header, HeaderValue, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Every response names who served it: `local` or the upstream's name.
pub const SERVED_BY: &str = "x-sentinel-served-by";
/// A client's own deadline for `spill = "when_late"` (`2.5`, seconds, or `2500ms`).
pub const DEADLINE_HEADER: &str = "x-sentinel-deadline";

/// A profile's `spill`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpillMode {
    /// No prompt leaves the host.
    #[default]
    Never,
    /// When the local backend is not serving or failed before answering.
    WhenUnavailable,
    /// Also when the queue would make a request later than its deadline.
    WhenLate,
}

/// Why a request left the host: the `reason` of `sentinel_spills_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpillReason {
    /// The local backend was not serving (starting, restarting, backoff, failed).
    Unavailable,
    /// The queue would have made it later than its deadline.
    Late,
    /// The local attempt failed before its response head.
    LocalFailed,
}

impl SpillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SpillReason::Unavailable => "unavailable",
            SpillReason::Late => "late",
            SpillReason::LocalFailed => "local_failed",
        }
    }
}

/// The running profile's spill settings (part of the proxy's live settings, so a reload
/// changes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillPolicy {
    pub mode: SpillMode,
    pub deadline: Option<Duration>,
}

/// The routes that may spill: completions only (`/tokenize`, `/props` are llama.cpp's own, and
/// another model's embeddings would not match the local ones).
pub fn route_spills(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// How many recent local requests the service-time estimate averages, and how old one may be.
const SAMPLES: usize = 16;
const SAMPLE_TTL: Duration = Duration::from_secs(60);

/// Service times of recent local requests (admission to the end of the body).
#[derive(Debug, Default)]
pub struct ServiceTimes {
    samples: std::sync::Mutex<VecDeque<(Instant, Duration)>>,
}

impl ServiceTimes {
    pub fn record(&self, took: Duration) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((Instant::now(), took));
    }

    /// The mean of the samples younger than a minute; `None` without any (then nothing is
    /// known to be late, and the next request is served locally and measured).
    pub fn mean(&self, now: Instant) -> Option<Duration> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let recent: Vec<Duration> = s
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < SAMPLE_TTL)
            .map(|(_, d)| *d)
            .collect();
        (!recent.is_empty()).then(|| recent.iter().sum::<Duration>() / recent.len() as u32)
    }
}

/// When a request that arrives now would finish locally: the rounds of service ahead of it
/// (requests holding a slot and waiting, per slot) plus its own.
pub fn estimate(mean: Duration, busy: usize, waiting: usize, slots: usize) -> Duration {
    let rounds = (busy + waiting) / slots.max(1);
    mean * (rounds as u32 + 1)
}

/// What the local side looks like when a request arrives.
#[derive(Debug, Clone, Copy)]
pub struct LocalView {
    pub serving: bool,
    pub busy: usize,
    pub waiting: usize,
    pub slots: usize,
}

/// Whether a request goes to the central tier before it tries the local backend.
pub fn decide(
    policy: SpillPolicy,
    local: LocalView,
    deadline: Option<Duration>,
    mean: Option<Duration>,
) -> Option<SpillReason> {
    match policy.mode {
        SpillMode::Never => None,
        _ if !local.serving => Some(SpillReason::Unavailable),
        SpillMode::WhenUnavailable => None,
        SpillMode::WhenLate => {
            let (deadline, mean) = (deadline?, mean?);
            (estimate(mean, local.busy, local.waiting, local.slots) > deadline)
                .then_some(SpillReason::Late)
        }
    }
}

/// `X-Sentinel-Deadline`: seconds (`2.5`) or a duration (`2500ms`).
pub fn parse_deadline(value: &str) -> Option<Duration> {
    let value = value.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
        .map(Duration::from_secs_f64)
        .or_else(|| humantime::parse_duration(value).ok())
        .filter(|d| !d.is_zero())
}

/// The central tier and what the decision reads of the local one.
#[derive(Debug)]
pub struct Spill {
    pub upstreams: super::Upstreams,
    pub service: ServiceTimes,
}

impl Spill {
    pub fn new(upstreams: super::Upstreams) -> Spill {
        Spill {
            upstreams,
            service: ServiceTimes::default(),
        }
    }

    /// Times a local answer from admission to the end of its body, for the estimate.
    pub fn track_local(
        self: &Arc<Self>,
        resp: Response<Body>,
        admitted: Instant,
    ) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            Body::new(Timed {
                inner: body,
                admitted,
                spill: Arc::clone(self),
                done: false,
            }),
        )
    }
}

/// The first hook of `forward`: the request goes to an upstream when the profile allows it
/// and the local backend is not serving or would make it late; `None`: serve it locally.
pub async fn before_local(
    state: &AppState,
    policy: SpillPolicy,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> Result<Option<Response<Body>>, ApiError> {
    if policy.mode == SpillMode::Never
        || state.spill.upstreams.is_empty()
        || !route_spills(parts.uri.path())
    {
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
    let Some(reason) = decide(
        policy,
        local,
        deadline,
        state.spill.service.mean(Instant::now()),
    ) else {
        return Ok(None);
    };
    Ok(serve(&state.spill, reason, parts.uri.path(), body).await)
}

/// After admission: the local backend stopped serving while the request queued for its slot
/// (a restart began); it goes to an upstream instead of waiting for the next backend.
pub async fn if_not_serving(
    state: &AppState,
    policy: SpillPolicy,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> Option<Response<Body>> {
    if policy.mode == SpillMode::Never
        || state.spill.upstreams.is_empty()
        || !route_spills(parts.uri.path())
        || state.status.borrow().state.serving()
    {
        return None;
    }
    serve(
        &state.spill,
        SpillReason::Unavailable,
        parts.uri.path(),
        body,
    )
    .await
}

/// The second hook of `forward`: the local attempt failed before its response head; one
/// remote try when the profile allows it.
pub async fn after_local_failure(
    state: &AppState,
    policy: SpillPolicy,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> Option<Response<Body>> {
    if policy.mode == SpillMode::Never || !route_spills(parts.uri.path()) {
        return None;
    }
    serve(
        &state.spill,
        SpillReason::LocalFailed,
        parts.uri.path(),
        body,
    )
    .await
}

/// Tries the upstreams in order (each once, skipping those cooling down or full) and returns
/// the first answer; `None` when none answered.
async fn serve(
    spill: &Spill,
    reason: SpillReason,
    path: &str,
    body: &Bytes,
) -> Option<Response<Body>> {
    for up in spill.upstreams.iter() {
        let Some(mut attempt) = Attempt::start(up) else {
            continue;
        };
        let sent = Instant::now();
        let name = up.settings.name.as_str();
        let request = with_model(body, up.settings.model.as_deref());
        match client::send(up, path, request).await {
            Ok(response) => {
                attempt.settle(|b| b.success());
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    tracing::warn!(upstream = name, status, "the upstream refused its API key; check api_key / api_key_file / api_key_env of this [[upstreams]] entry");
                }
                tracing::info!(
                    upstream = name,
                    reason = reason.as_str(),
                    status,
                    "request served by the central tier"
                );
                spill.upstreams.metrics.spilled(reason, name);
                return Some(respond(spill, up, response, attempt, sent));
            }
            Err(failure) => {
                let retry_after = failure.retry_after();
                attempt.settle(|b| b.failure(Instant::now(), retry_after));
                spill.upstreams.metrics.failed(name, failure.kind());
                match &failure {
                    Failure::Tls(_) => {
                        tracing::error!(upstream = name, url = %up.settings.url, error = %failure, "upstream TLS refused")
                    }
                    _ => {
                        tracing::warn!(upstream = name, error = %failure, "upstream failed; trying the next tier")
                    }
                }
            }
        }
    }
    None
}

/// The body with `model` replaced by the upstream's model (left as sent when the upstream names
/// none, or the body is not a JSON object: validation saw it, so that is the client's own shape).
fn with_model(body: &Bytes, model: Option<&str>) -> Bytes {
    let Some(model) = model else {
        return body.clone();
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("model".into(), serde_json::Value::String(model.into()));
            serde_json::to_vec(&map)
                .map(Bytes::from)
                .unwrap_or_else(|_| body.clone())
        }
        _ => body.clone(),
    }
}

/// One try at one upstream: its breaker's pass and an in-flight slot. A probe dropped before
/// its outcome (the client went away) gives its place to the next request.
struct Attempt {
    up: Arc<Upstream>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pass: Option<Pass>,
}

impl Attempt {
    fn start(up: &Arc<Upstream>) -> Option<Attempt> {
        let permit = Arc::clone(&up.in_flight).try_acquire_owned().ok()?;
        let pass = up.breaker().try_acquire(Instant::now())?;
        Some(Attempt {
            up: Arc::clone(up),
            permit: Some(permit),
            pass: Some(pass),
        })
    }

    fn settle(&mut self, outcome: impl FnOnce(&mut super::breaker::Breaker)) {
        if self.pass.take().is_some() {
            outcome(&mut self.up.breaker());
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.pass.take().is_some() {
            self.up.breaker().release(Instant::now());
        }
    }
}

/// The upstream's answer as the client gets it: its status and headers (hop-by-hop ones
/// stripped), `X-Sentinel-Served-By`, and its body streamed through, timed and holding the
/// upstream's in-flight slot until it ends.
fn respond(
    spill: &Spill,
    up: &Arc<Upstream>,
    response: reqwest::Response,
    mut attempt: Attempt,
    sent: Instant,
) -> Response<Body> {
    let status = response.status();
    let mut headers = response.headers().clone();
    crate::proxy::forward::strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if let Ok(v) = HeaderValue::from_str(&up.settings.name) {
        headers.insert(SERVED_BY, v);
    }
    let body = Remote {
        inner: Box::pin(response.bytes_stream()),
        upstream: up.settings.name.clone(),
        metrics: spill.upstreams.metrics.clone(),
        sent,
        sse,
        first: false,
        permit: attempt.permit.take(),
    };
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

type ByteStream = Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An upstream's body on its way to the client.
struct Remote {
    inner: ByteStream,
    upstream: String,
    metrics: super::metrics::UpstreamMetrics,
    sent: Instant,
    sse: bool,
    first: bool,
    /// The upstream's in-flight slot; `None` once the body ended.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl futures_util::Stream for Remote {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.permit.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(bytes))) => {
                if !this.first && this.sse {
                    this.first = true;
                    this.metrics
                        .first_token(&this.upstream, this.sent.elapsed());
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(None) => {
                this.permit = None;
                this.metrics.finished(&this.upstream, this.sent.elapsed());
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.permit = None;
                let detail = client::chain(&e);
                tracing::warn!(upstream = %this.upstream, error = %detail, "upstream failed mid-answer");
                if this.sse {
                    Poll::Ready(Some(Ok(error_event(&this.upstream, &detail))))
                } else {
                    Poll::Ready(Some(Err(std::io::Error::other(detail))))
                }
            }
        }
    }
}

/// The final event a streaming client gets when an upstream fails mid-stream.
fn error_event(upstream: &str, detail: &str) -> Bytes {
    let body = serde_json::json!({"error": {
        "message": format!("the central tier ({upstream}) failed mid-stream: {detail}"),
        "type": "server_error",
        "code": "upstream_error",
    }});
    Bytes::from(format!("data: {body}\n\n"))
}

/// A local answer's body, timed from admission to its end for the service-time estimate.
struct Timed {
    inner: Body,
    admitted: Instant,
    spill: Arc<Spill>,
    done: bool,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Timed {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.spill.service.record(self.admitted.elapsed());
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended.
        if http_body::Body::is_end_stream(&self.inner) {
            self.finish();
        }
    }
}

/// Marks a response the local side answered (the router's outermost layer; a spilled
/// response already names its upstream).
pub async fn mark_local(mut resp: axum::response::Response) -> axum::response::Response {
    resp.headers_mut()
        .entry(SERVED_BY)
        .or_insert(HeaderValue::from_static("local"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn view(serving: bool, busy: usize, waiting: usize) -> LocalView {
        LocalView {
            serving,
            busy,
            waiting,
            slots: 1,
        }
    }

    fn policy(mode: SpillMode) -> SpillPolicy {
        SpillPolicy {
            mode,
            deadline: None,
        }
    }

    #[test]
    fn never_spills_whatever_the_local_side_does() {
        let s = Some(Duration::from_secs(1));
        assert_eq!(
            decide(
                policy(SpillMode::Never),
                view(false, 1, 9),
                s,
                Some(Duration::from_secs(60))
            ),
            None
        );
    }

    #[test]
    fn unavailable_spills_in_both_modes_and_late_only_in_when_late() {
        for mode in [SpillMode::WhenUnavailable, SpillMode::WhenLate] {
            assert_eq!(
                decide(policy(mode), view(false, 0, 0), None, None),
                Some(SpillReason::Unavailable)
            );
        }
        let deadline = Some(Duration::from_millis(2500));
        let mean = Some(Duration::from_secs(1));
        assert_eq!(
            decide(
                policy(SpillMode::WhenUnavailable),
                view(true, 1, 5),
                deadline,
                mean
            ),
            None
        );
        // Idle: one round (its own) fits in 2.5 s; one busy and one waiting make three rounds.
        assert_eq!(
            decide(
                policy(SpillMode::WhenLate),
                view(true, 0, 0),
                deadline,
                mean
            ),
            None
        );
        assert_eq!(
            decide(
                policy(SpillMode::WhenLate),
                view(true, 1, 0),
                deadline,
                mean
            ),
            None
        );
        assert_eq!(
            decide(
                policy(SpillMode::WhenLate),
                view(true, 1, 1),
                deadline,
                mean
            ),
            Some(SpillReason::Late)
        );
        // Nothing measured or no deadline: nothing is known to be late.
        assert_eq!(
            decide(
                policy(SpillMode::WhenLate),
                view(true, 1, 9),
                deadline,
                None
            ),
            None
        );
        assert_eq!(
            decide(policy(SpillMode::WhenLate), view(true, 1, 9), None, mean),
            None
        );
    }

    #[test]
    fn estimate_counts_rounds_per_slot() {
        let m = Duration::from_secs(2);
        assert_eq!(estimate(m, 0, 0, 2), m);
        assert_eq!(estimate(m, 2, 0, 2), m * 2);
        assert_eq!(estimate(m, 2, 3, 2), m * 3);
    }

    #[test]
    fn deadline_header_takes_seconds_or_durations() {
        assert_eq!(parse_deadline("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(
            parse_deadline(" 2500ms "),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_deadline("3s"), Some(Duration::from_secs(3)));
        for bad in ["0", "-1", "soon", "", "NaN"] {
            assert_eq!(parse_deadline(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn service_times_average_the_recent_samples_only() {
        let t = ServiceTimes::default();
        assert_eq!(t.mean(Instant::now()), None);
        t.record(Duration::from_secs(1));
        t.record(Duration::from_secs(3));
        assert_eq!(t.mean(Instant::now()), Some(Duration::from_secs(2)));
        tokio::time::advance(SAMPLE_TTL).await;
        assert_eq!(t.mean(Instant::now()), None);
        for _ in 0..SAMPLES + 4 {
            t.record(Duration::from_secs(5));
        }
        assert_eq!(t.samples.lock().unwrap().len(), SAMPLES);
    }

    #[test]
    fn model_is_mapped_and_other_fields_kept() {
        let body = Bytes::from_static(br#"{"model":"local","messages":[],"stream":true}"#);
        let out: serde_json::Value =
            serde_json::from_slice(&with_model(&body, Some("big-8b"))).unwrap();
        assert_eq!(out["model"], "big-8b");
        assert_eq!(out["stream"], true);
        assert_eq!(with_model(&body, None), body);
    }

    #[test]
    fn only_completions_spill() {
        assert!(route_spills("/v1/chat/completions"));
        assert!(route_spills("/v1/completions"));
        for other in ["/v1/embeddings", "/tokenize", "/detokenize", "/props"] {
            assert!(!route_spills(other), "{other}");
        }
    }
}
