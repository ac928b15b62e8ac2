//! Forwarding one request to llama-server: body limit and read timeout, the body check
//! (`validate`), admission, waiting for a ready backend,
//! the secret key, hop-by-hop headers, streaming responses event by event, a final SSE error
//! event when the backend dies mid-stream, and one retry when the request never reached a
//! backend that died. Where a profile's `spill` allows it, three calls into
//! `crate::upstream::spill` may send the request to the central tier instead, all before any
//! byte of a local answer.

use super::error::ApiError;
use super::poison::Fingerprint;
use super::{validate, AppState};
use crate::governor::ActivityGuard;
use crate::supervisor::inflight::InFlightGuard;
use crate::supervisor::liveness::Pending;
use crate::supervisor::state::{BackendInfo, State};
use crate::upstream::spill;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// The upstream HTTP client: keep-alive pool, no Nagle delay.
pub type Upstream = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// llama-server (cpp-httplib) closes idle keep-alive connections after 5 s; the pool lets go of
/// them sooner (3 s), and a request that meets a connection closed under it is sent again.
pub fn upstream_client() -> Upstream {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(3))
        .build(connector)
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forwards `req` (already authenticated) to the backend.
pub async fn forward(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    refuse_while_stopping(state)?;
    let live = state.live();
    let config = &live.config;
    let (parts, body) = req.into_parts();
    let limit = config.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    // The whole body is read (within its timeout) and checked before the request takes a
    // queue or backend slot: a slow or malformed client holds neither.
    let read_timeout = config.body_read_timeout;
    let body = tokio::time::timeout(read_timeout, Limited::new(body, limit as usize).collect())
        .await
        .map_err(|_| ApiError::body_timeout(read_timeout))?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    let (body, fingerprint) = match validate::Route::of(parts.uri.path()) {
        Some(route) => {
            let profile = &live.info.profile;
            let rules = validate::Rules {
                cap: validate::TokenCap {
                    max_tokens: profile.max_tokens,
                    profile: &profile.name,
                },
                slots: profile.slots,
                grammar: profile.grammar,
                extra_fields: &config.extra_fields,
                limits: &config.grammar,
                vocab_size: live.info.vocab_size,
                projector: live.info.projector,
            };
            let checked = validate::check(route, &body, &rules)?;
            refuse_poison(state, &checked.fingerprint)?;
            (checked.body.unwrap_or(body), Some(checked.fingerprint))
        }
        None => (body, None),
    };

    // Local first; the central tier when the profile's `spill` allows it (`crate::upstream`).
    if let Some(resp) = spill::before_local(state, live.spill, &parts, &body).await? {
        return Ok(resp);
    }

    let deadline = Instant::now() + config.queue_timeout;
    let permit = state.admission.admit(deadline).await?;
    let admitted = Instant::now();
    // The backend may have stopped serving while this request queued for its slot.
    if let Some(resp) = spill::if_not_serving(state, live.spill, &parts, &body).await {
        return Ok(resp);
    }
    let activity = state.activity.begin();
    let (mut backend, mut on_backend) = wait_for_backend(state, deadline, None).await?;

    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut retries = 0;
    // Backend crashes this request was in flight at, and its turn as a suspect after one.
    let mut crashes = 0;
    let mut suspect = None;
    let client = state.upstream();
    let (upstream, pending) = loop {
        let request = upstream_request(&parts, path, &backend, body.clone())?;
        let pending = state.liveness.begin(backend.generation);
        match tokio::time::timeout(config.upstream_timeout, client.request(request)).await {
            Err(_) => {
                return Err(ApiError::gateway_timeout(format!(
                    "the model did not answer within {:?} (proxy.upstream_timeout)",
                    config.upstream_timeout
                )))
            }
            Ok(Ok(resp)) if resp.status() == StatusCode::INTERNAL_SERVER_ERROR => {
                // A 500 that answers the client's own mistake is a 400 (and no sign of a
                // failing backend for the liveness watchdog).
                pending.progress();
                let answer = backend_error(resp).await;
                pending.answered(if answer.is_err() { 400 } else { 500 });
                return answer;
            }
            Ok(Ok(resp)) => {
                pending.progress();
                pending.answered(resp.status().as_u16());
                break (resp, pending);
            }
            // Nothing was answered: the backend died before or while it worked on this request,
            // or it closed a kept-alive connection as we reused it (sent again at once on a
            // fresh connection). A request that never reached a dead backend goes to the next
            // one; one it died serving goes to the next one once, unless it was the only one in
            // flight at a crash or was in flight at two: then it is poison (see `poison`).
            // (An error here means no response head arrived: `request` resolves with the head.)
            Ok(Err(e)) => {
                // Which backend to send it to again: the next generation when this one is
                // gone, any ready one for a kept-alive connection closed under us, none for any
                // other failure of a backend still running.
                let retry_after = if e.is_connect() {
                    Some(Some(backend.generation))
                } else if backend_gone(&backend).await {
                    let at_death = on_backend.died();
                    let waited = Instant::now() + CRASH_WORD_WAIT;
                    if state.inflight.crashed(backend.generation, waited).await == Some(true) {
                        crashes += 1;
                        if at_death <= 1 || crashes >= 2 {
                            drop(pending);
                            return Err(poisoned(state, &backend, fingerprint.as_ref(), at_death));
                        }
                    }
                    if crashes > 0 && suspect.is_none() && retries < MAX_RETRIES {
                        suspect = Some(state.poison.suspect_turn().await);
                    }
                    Some(Some(backend.generation))
                } else if closed_under_us(&e) {
                    Some(None)
                } else {
                    None
                };
                let retry_after = retry_after.filter(|_| retries < MAX_RETRIES);
                // Failed before its response head (not a kept-alive connection closed under
                // us, which is sent again at once): one remote try when `spill` allows it.
                if !matches!(retry_after, Some(None)) {
                    if let Some(resp) =
                        spill::after_local_failure(state, live.spill, &parts, &body).await
                    {
                        return Ok(resp);
                    }
                }
                let Some(after) = retry_after else {
                    tracing::warn!(generation = backend.generation, error = ?e, "the backend failed before answering");
                    return Err(ApiError::bad_gateway(format!(
                        "the model backend failed: {e}"
                    )));
                };
                retries += 1;
                match after {
                    Some(_) => {
                        tracing::info!(generation = backend.generation, error = %e, "backend gone before answering; sending the request to the next backend")
                    }
                    None => {
                        tracing::debug!(error = %e, "kept-alive connection closed by the backend; sending again")
                    }
                }
                (backend, on_backend) = wait_for_backend(state, deadline, after).await?;
            }
        }
    };
    drop(suspect);

    let (mut head, incoming) = upstream.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        head.headers.remove(header::CONTENT_LENGTH);
        head.headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        head.headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    // The slot and the activity mark last as long as the body streams.
    let response = Response::from_parts(
        head,
        Body::new(Relay {
            inner: incoming,
            sse,
            guards: Some((permit, activity, on_backend)),
            pending: Some(pending),
            backend_pid: backend.pid,
            poison: fingerprint.map(|fp| (std::sync::Arc::clone(state), fp)),
        }),
    );
    Ok(state.spill.track_local(response, admitted))
}

/// The backend's response body on its way to the client: frames pass through as they arrive;
/// it holds the admission slot, the activity mark and the count on its backend's generation
/// (which keeps that backend alive through a drain) until it ends; a backend failure in the
/// middle of an SSE stream becomes a final error event and a clean end.
struct Relay<B = hyper::body::Incoming> {
    inner: B,
    sse: bool,
    guards: Option<(OwnedSemaphorePermit, ActivityGuard, InFlightGuard)>,
    /// The request as the liveness watchdog sees it (every frame is progress).
    pending: Option<Pending>,
    /// The backend's process: when it is gone as the stream fails, the death is noted with
    /// this request in flight (`InFlight::died`) before its guard goes.
    backend_pid: i32,
    /// Where to remember this request when the backend crashed with it alone in flight after
    /// the response head was sent (llama-server sends a stream's head before it works).
    poison: Option<(AppState, Fingerprint)>,
}

impl<B> http_body::Body for Relay<B>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.guards.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = &this.pending {
                    p.progress();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.guards = None;
                this.pending = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some((_, _, on_backend)) = &this.guards {
                    if !matches!(crate::meter::process_state(this.backend_pid), Some(s) if s != 'Z' && s != 'X')
                    {
                        let at_death = on_backend.died();
                        let generation = on_backend.generation();
                        if let Some((state, fp)) = this.poison.take().filter(|_| at_death <= 1) {
                            tokio::spawn(async move {
                                let waited = Instant::now() + CRASH_WORD_WAIT;
                                if state.inflight.crashed(generation, waited).await == Some(true) {
                                    remember_poison(&state, generation, Some(&fp), at_death);
                                }
                            });
                        }
                    }
                }
                this.guards = None;
                this.pending = None;
                if this.sse {
                    tracing::warn!(error = %e, "backend failed mid-stream; sending an error event");
                    Poll::Ready(Some(Ok(Frame::data(sse_error_event(&e.to_string())))))
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guards.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How many times one request may be sent again after the backend answered nothing.
const MAX_RETRIES: u32 = 2;

/// How long a request whose backend died waits for the lifecycle's word on how it died.
const CRASH_WORD_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Largest 500 body read to tell a client's mistake from a backend failure.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// 400 before admission for a request identical to one a backend died serving.
fn refuse_poison(state: &AppState, fp: &Fingerprint) -> Result<(), ApiError> {
    let Some(left) = state.poison.refused_for(fp) else {
        return Ok(());
    };
    state.metrics.poison_refused();
    tracing::warn!(route = fp.route, fields = %fp.describe_fields(), fingerprint = %fp.short(), "refused: identical to a request a backend died serving");
    Err(ApiError::invalid_request(
        "poison_request",
        format!(
            "An identical request made the model backend die; it is refused for another {} (proxy.poison_ttl). Change the request, or ask the operator to look at the backend's crash in the log.",
            humantime::format_duration(std::time::Duration::from_secs(left.as_secs().max(1)))
        ),
    ))
}

/// Remembers the request the backend of `backend` died serving and answers it.
fn poisoned(
    state: &AppState,
    backend: &BackendInfo,
    fp: Option<&Fingerprint>,
    at_death: usize,
) -> ApiError {
    let ttl = remember_poison(state, backend.generation, fp, at_death);
    let why = if at_death <= 1 {
        "it was the only request in flight"
    } else {
        "it was in flight at two crashes"
    };
    ApiError::invalid_request(
        "backend_died_on_request",
        format!(
            "The model backend crashed while serving this request ({why}); it is not sent again, and identical requests are refused for {} (proxy.poison_ttl).",
            humantime::format_duration(ttl)
        ),
    )
}

/// Counts and remembers a request the backend of `generation` crashed serving; returns for
/// how long it is refused.
fn remember_poison(
    state: &AppState,
    generation: u64,
    fp: Option<&Fingerprint>,
    at_death: usize,
) -> std::time::Duration {
    let ttl = state.live().config.poison_ttl;
    state.metrics.request_poisoned();
    if let Some(fp) = fp {
        state.poison.remember(fp, ttl);
        tracing::error!(generation, route = fp.route, fields = %fp.describe_fields(), fingerprint = %fp.short(), in_flight = at_death, ttl = ?ttl, "the backend crashed while serving this request: not sent again; identical requests are refused");
    }
    ttl
}

/// llama-server's 500s that answer the client's mistake, by their message: token ids outside
/// the vocabulary, content parts the model cannot take, chat-template errors.
const CLIENT_MISTAKES: [&str; 10] = [
    "_m_range_check",
    "out of range",
    "invalid token",
    "image input is not supported",
    "audio input is not supported",
    "multimodal",
    "mmproj",
    "template",
    "jinja",
    "roles must alternate",
];

/// A backend's 500: a 400 in the OpenAI shape when it answers a client's mistake, else the 500
/// as it came.
async fn backend_error(resp: Response<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
    let (head, incoming) = resp.into_parts();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Limited::new(incoming, ERROR_BODY_LIMIT).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(body)) => body.to_bytes(),
        _ => return Err(ApiError::bad_gateway("the model backend failed (500)")),
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let lower = message.to_ascii_lowercase();
    if CLIENT_MISTAKES.iter().any(|m| lower.contains(m)) {
        return Err(ApiError::invalid_request(
            "invalid_request",
            format!("The model cannot take this request: {message}"),
        ));
    }
    let mut head = head;
    strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(head, Body::from(bytes)))
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

/// The final event a streaming client gets when the backend dies mid-stream.
fn sse_error_event(detail: &str) -> Bytes {
    let body = serde_json::json!({"error": {
        "message": format!("the model backend failed mid-stream: {detail}"),
        "type": "server_error",
        "code": "backend_error",
    }});
    Bytes::from(format!("data: {body}\n\n"))
}

fn upstream_request(
    parts: &axum::http::request::Parts,
    path: &str,
    backend: &BackendInfo,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ApiError> {
    let uri = format!("{}{}", backend.base_url, path);
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("cannot forward this request: {e}")))?;
    let headers = req.headers_mut();
    for (name, value) in &parts.headers {
        headers.append(name.clone(), value.clone());
    }
    strip_hop_by_hop(headers);
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        header::CONTENT_LENGTH,
        HeaderName::from_static("x-api-key"),
    ] {
        headers.remove(name);
    }
    let auth = HeaderValue::try_from(format!("Bearer {}", backend.api_key.expose()))
        .map_err(|_| ApiError::bad_gateway("the backend key is not a valid header value"))?;
    headers.insert(header::AUTHORIZATION, auth);
    Ok(req)
}

/// 503 at once, before a request takes a slot or waits, while the supervisor shuts down:
/// the requests in flight drain, new ones go elsewhere.
fn refuse_while_stopping(state: &AppState) -> Result<(), ApiError> {
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
/// up to `deadline`: requests survive restarts instead of failing. The request is counted on
/// the backend's generation while the published status is read, so a drain that starts
/// after a switch sees it.
async fn wait_for_backend(
    state: &AppState,
    deadline: Instant,
    not_generation: Option<u64>,
) -> Result<(BackendInfo, InFlightGuard), ApiError> {
    let mut rx = state.status.clone();
    loop {
        {
            let status = rx.borrow_and_update();
            match (&status.state, &status.backend) {
                (s, Some(b)) if s.serving() && Some(b.generation) != not_generation => {
                    let guard = state.inflight.enter(b.generation);
                    return Ok((b.clone(), guard));
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
            Ok(Err(_)) => {
                return Err(ApiError::unavailable("the supervisor is shutting down").retry_after(5))
            }
            Err(_) => {
                let status = rx.borrow();
                let why = match (&status.state, &status.last_exit) {
                    (State::Backoff { reason, .. }, _) => format!("; last failure: {reason}"),
                    (_, Some(exit)) => format!("; last failure: {exit}"),
                    _ => String::new(),
                };
                return Err(ApiError::unavailable(format!(
                    "the model backend is not ready (state: {}{why}); retry shortly",
                    status.state.name()
                ))
                .retry_after(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn error_event_is_one_sse_event_with_openai_shape() {
        let e = sse_error_event("connection reset");
        let s = std::str::from_utf8(&e).unwrap();
        assert!(s.starts_with("data: {"));
        assert!(s.ends_with("\n\n"));
        let v: serde_json::Value =
            serde_json::from_str(s.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection reset"));
    }

    proptest::proptest! {
        /// However the backend's stream is cut into frames, the client gets the same bytes in
        /// the same order, and the slot is let go at the end.
        #[test]
        fn relay_passes_any_chunking_through_unchanged(
            events in proptest::collection::vec("[ -~é🙂]{0,20}", 0..10),
            cuts in proptest::collection::vec(0usize..600, 0..16),
        ) {
            let stream: Vec<u8> = events
                .iter()
                .flat_map(|e| format!("data: {e}\n\n").into_bytes())
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut frames = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
                frames.push(Ok::<_, hyper::Error>(Frame::data(Bytes::copy_from_slice(&stream[at..c]))));
                at = c;
            }
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
            let permit = std::sync::Arc::clone(&slots).try_acquire_owned().unwrap();
            let activity = crate::governor::Activity::new();
            let inflight = crate::supervisor::inflight::InFlight::new();
            let relay = Relay {
                inner: http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
                sse: true,
                guards: Some((permit, activity.begin(), inflight.enter(1))),
                pending: None,
                backend_pid: 0,
                poison: None,
            };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let out = rt.block_on(relay.collect()).unwrap().to_bytes();
            proptest::prop_assert_eq!(&out[..], &stream[..]);
            proptest::prop_assert_eq!(slots.available_permits(), 1);
            proptest::prop_assert_eq!(activity.in_flight(), 0);
        }
    }
}
