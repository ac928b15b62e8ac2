//! The request to llama-server and its answer's head: the upstream client and its pool, the
//! backend's key instead of the client's, hop-by-hop headers stripped both ways, and a
//! backend's 500 told apart from a client's mistake.

use super::error::ApiError;
use crate::supervisor::state::BackendInfo;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// The upstream HTTP client: keep-alive pool, no Nagle delay.
pub(crate) type Upstream = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// llama-server (cpp-httplib) closes idle keep-alive connections after 5 s; the pool lets go of
/// them sooner (3 s), and a request that meets a connection closed under it is sent again.
pub(crate) fn upstream_client() -> Upstream {
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
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Whether `headers` are those of a stream of server-sent events.
pub(crate) fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Largest 500 body read to tell a client's mistake from a backend failure.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

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
pub(super) async fn backend_error(
    resp: Response<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (mut head, incoming) = resp.into_parts();
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
    strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(head, Body::from(bytes)))
}

/// The request as llama-server gets it: the same method, path and headers, with the
/// backend's key and without the client's.
pub(super) fn upstream_request(
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
    headers.extend(parts.headers.clone());
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
}
