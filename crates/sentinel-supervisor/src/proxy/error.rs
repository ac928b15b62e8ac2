//! OpenAI-style error responses: `{"error": {"message", "type", "code"}}` with the right
//! status, and `Retry-After` where waiting helps (always on a 429 or 503).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `Retry-After` (seconds) of a 429 or 503 whose cause gives no better figure.
pub(crate) const DEFAULT_RETRY_AFTER: u64 = 5;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error of `status`; its `type` follows from the status: `rate_limit_error` for a
    /// 429, `server_error` for a 5xx, `invalid_request_error` for any other.
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect or missing API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`.",
        )
    }
    pub(crate) fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "Request body is larger than the limit of {limit} bytes (proxy.max_body_bytes)."
            ),
        )
    }
    /// A 400 for a body the proxy refused (see `validate`), with a specific `code`.
    pub(crate) fn invalid_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path} (the OpenAI routes take POST; /v1/models, /props, /health and /status take GET)."),
        )
    }
    pub(crate) fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("The request body did not arrive within {limit:?} (proxy.body_read_timeout)."),
        )
    }
    pub(crate) fn headers_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            message,
        )
    }
    /// The answer to a connection beyond `proxy.max_connections`.
    pub(crate) fn too_many_connections(limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("This server already has {limit} open connections (proxy.max_connections); retry shortly."),
        )
        .retry_after(1)
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn queue_full() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "Too many requests are waiting for the model; retry later.",
        )
        .retry_after(1)
    }
    pub(crate) fn queue_timeout(waited: std::time::Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_timeout",
            format!("Waited {waited:?} for a free model slot; retry later."),
        )
        .retry_after(2)
    }
    /// A 503; `Retry-After` is 5 s unless the caller knows better.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            message,
        )
        .retry_after(DEFAULT_RETRY_AFTER)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
    pub(crate) fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "backend_error", message)
    }
    pub(crate) fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "backend_timeout", message)
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "code": self.code}
        })
    }

    /// The body as the final event of a stream that failed after its head was sent.
    pub(crate) fn sse_event(&self) -> bytes::Bytes {
        bytes::Bytes::from(format!("data: {}\n\n", self.body()))
    }
}

/// The `code` of an error the proxy answered itself, left in the response's extensions for
/// the metrics layer (`sentinel_rejections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        let must_wait = matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        if let Some(secs) = self
            .retry_after
            .or(must_wait.then_some(DEFAULT_RETRY_AFTER))
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn shape(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn every_error_has_the_openai_shape_and_429_503_carry_retry_after() {
        let all = [
            ApiError::bad_request("x"),
            ApiError::invalid_request("invalid_json", "x"),
            ApiError::unauthorized(),
            ApiError::not_found("x"),
            ApiError::method_not_allowed("GET", "/v1/chat/completions"),
            ApiError::body_timeout(std::time::Duration::from_secs(1)),
            ApiError::too_large(10),
            ApiError::queue_full(),
            ApiError::queue_timeout(std::time::Duration::from_secs(1)),
            ApiError::headers_too_large("x"),
            ApiError::bad_gateway("x"),
            ApiError::unavailable("x"),
            ApiError::too_many_connections(3),
            ApiError::gateway_timeout("x"),
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "x", "no retry given"),
        ];
        let mut seen = Vec::new();
        for e in all {
            let (status, retry, body) = shape(e).await;
            seen.push(status.as_u16());
            for k in ["message", "type", "code"] {
                assert!(body["error"][k].is_string(), "{status}: {body}");
            }
            let must = matches!(status.as_u16(), 429 | 503);
            assert_eq!(retry.is_some(), must, "{status}: Retry-After {retry:?}");
        }
        for code in [400, 401, 404, 405, 408, 413, 429, 431, 502, 503, 504] {
            assert!(seen.contains(&code), "no constructor for {code}");
        }
    }
}
