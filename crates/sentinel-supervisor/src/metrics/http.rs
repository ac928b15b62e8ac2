//! The HTTP side of the metrics: one middleware on the whole router ([`track`]) counts every
//! answer by route and status, every error the proxy answered itself by its code, and wraps the
//! response body so its duration (to the last byte), a stream's time to first token and the
//! answer's token counts are taken as it passes, without delaying a frame.

use super::tokens::Reader;
use super::{Metrics, ReasonLabel, RequestLabels, RouteLabel};
use crate::proxy::error::ErrorCode;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The `route` of a request that matched no route (one label value for every unknown path).
pub(crate) const UNMATCHED: &str = "unmatched";

/// Routes whose answers carry generated tokens (read for token counts and time to first token).
fn generates(route: &str) -> bool {
    matches!(
        route,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
    )
}

/// The middleware (`axum::middleware::from_fn_with_state(metrics, track)` on the router).
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let resp = next.run(req).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
        metrics
            .rejections
            .get_or_create(&ReasonLabel { reason: code })
            .inc();
    }
    let reader = if generates(&route) && resp.status().is_success() {
        Reader::for_content_type(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )
    } else {
        None
    };
    let (parts, body) = resp.into_parts();
    let body = Tracked {
        inner: body,
        metrics,
        route: RouteLabel { route },
        started,
        reader,
        done: false,
    };
    Response::from_parts(parts, Body::new(body))
}

/// A response body on its way out, measured as it passes.
struct Tracked {
    inner: Body,
    metrics: Arc<Metrics>,
    route: RouteLabel,
    started: Instant,
    reader: Option<Reader>,
    done: bool,
}

impl Tracked {
    /// Records the duration and the tokens, once: at the end of the body, or when the client
    /// went away before it.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics
            .duration
            .get_or_create(&self.route)
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(tokens) = self.reader.take().and_then(Reader::finish) {
            self.metrics.count_tokens(tokens);
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(reader), Some(data)) = (this.reader.as_mut(), frame.data_ref()) {
                    if reader.feed(data) {
                        this.metrics
                            .ttft
                            .get_or_create(&this.route)
                            .observe(this.started.elapsed().as_secs_f64());
                    }
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Pending => {}
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

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use axum::routing::{get, post};
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app(metrics: Arc<Metrics>) -> Router {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"timings\":{\"prompt_n\":4,\"cache_n\":2,\"predicted_n\":1}}\n\ndata: [DONE]\n\n";
        Router::new()
            .route(
                "/v1/chat/completions",
                post(
                    move || async move { ([(header::CONTENT_TYPE, "text/event-stream")], stream) },
                ),
            )
            .route(
                "/status",
                get(|| async {
                    use axum::response::IntoResponse;
                    crate::proxy::error::ApiError::queue_full().into_response()
                }),
            )
            .layer(axum::middleware::from_fn_with_state(metrics, track))
    }

    async fn call(app: &Router, method: &str, path: &str) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn answers_are_counted_by_route_status_and_error_code() {
        let targets = crate::config::Config::builtin().unwrap().slo;
        let metrics = Arc::new(Metrics::new(&targets, 2, Default::default()));
        let app = app(Arc::clone(&metrics));
        let (code, body) = call(&app, "POST", "/v1/chat/completions").await;
        assert_eq!(code, 200);
        assert!(body.ends_with("data: [DONE]\n\n"), "the body passes whole");
        assert_eq!(call(&app, "GET", "/status").await.0, 429);
        assert_eq!(call(&app, "GET", "/nowhere").await.0, 404);
        let report = super::super::tests::report(crate::supervisor::state::State::Ready);
        let text = metrics.render(&report, None).await;
        let s = |line: &str| sample(&text, line);
        let chat = "route=\"/v1/chat/completions\"";
        assert_eq!(
            s(&format!("sentinel_requests_total{{{chat},status=\"200\"}}")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            s("sentinel_requests_total{route=\"/status\",status=\"429\"}"),
            Some(1.0)
        );
        assert_eq!(
            s("sentinel_requests_total{route=\"unmatched\",status=\"404\"}"),
            Some(1.0)
        );
        assert_eq!(
            s("sentinel_rejections_total{reason=\"queue_full\"}"),
            Some(1.0)
        );
        assert_eq!(
            s(&format!(
                "sentinel_request_duration_seconds_count{{{chat}}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            s(&format!(
                "sentinel_time_to_first_token_seconds_count{{{chat}}}"
            )),
            Some(1.0)
        );
        assert_eq!(s("sentinel_prompt_tokens_total"), Some(6.0));
        assert_eq!(s("sentinel_prompt_cached_tokens_total"), Some(2.0));
        assert_eq!(s("sentinel_generated_tokens_total"), Some(1.0));
    }
}
