//! Serving a request at the central tier: the upstreams tried in order (each once, skipping
//! those cooling down or full), the request's `model` mapped to the upstream's, and the first
//! answer streamed to the client, holding the upstream's in-flight slot until its body ends and
//! counted in the upstream metrics.

use super::breaker::{Breaker, Pass};
use super::client::{self, Failure};
use super::spill::{Spill, SERVED_BY};
use super::{SpillReason, Upstream};
use crate::proxy::error::ApiError;
use crate::proxy::forward::{is_sse, strip_hop_by_hop};
use axum::body::Body;
use axum::http::{header, HeaderValue, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Tries the upstreams in order (each once, skipping those cooling down or full) and returns
/// the first answer; `None` when none answered.
pub(super) async fn serve(
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
                attempt.settle(super::breaker::Breaker::success);
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
                if matches!(failure, Failure::Tls(_)) {
                    tracing::error!(upstream = name, url = %up.settings.url, error = %failure, "upstream TLS refused");
                } else {
                    tracing::warn!(upstream = name, error = %failure, "upstream failed; trying the next tier");
                }
            }
        }
    }
    None
}

/// The body with `model` replaced by the upstream's model (left as sent when the upstream names
/// none, or the body is not a JSON object: validation saw it, so that is the client's own shape).
fn with_model(body: &Bytes, model: Option<&str>) -> Bytes {
    let mapped = model.and_then(|model| {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).ok()?;
        map.insert("model".into(), model.into());
        serde_json::to_vec(&map).ok()
    });
    mapped.map_or_else(|| body.clone(), Bytes::from)
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

    fn settle(&mut self, outcome: impl FnOnce(&mut Breaker)) {
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
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let sse = is_sse(&headers);
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
    (status, headers, Body::from_stream(body)).into_response()
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
                    let message = format!(
                        "the central tier ({}) failed mid-stream: {detail}",
                        this.upstream
                    );
                    let error = ApiError {
                        code: "upstream_error",
                        ..ApiError::bad_gateway(message)
                    };
                    Poll::Ready(Some(Ok(error.sse_event())))
                } else {
                    Poll::Ready(Some(Err(std::io::Error::other(detail))))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_mapped_and_other_fields_kept() {
        let body = Bytes::from_static(br#"{"model":"local","messages":[],"stream":true}"#);
        let out: serde_json::Value =
            serde_json::from_slice(&with_model(&body, Some("big-8b"))).unwrap();
        assert_eq!(out["model"], "big-8b");
        assert_eq!(out["stream"], true);
        assert_eq!(with_model(&body, None), body);
    }
}
