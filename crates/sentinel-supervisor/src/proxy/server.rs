//! The accept loop and HTTP/1 connections, with limits against slow and abusive clients: a
//! cap on open connections (one more is answered 503 with `Retry-After` and closed, never
//! queued: a queued connection would hold a socket the client already counts as open), a
//! timeout for the request head that also ends idle keep-alive connections, limits on the
//! head's size and header count answered with an OpenAI-shaped 431, an OpenAI-shaped 405, and
//! a graceful shutdown that lets open requests finish.
//!
//! hyper closes a connection whose head does not arrive in time without writing a response
//! (its header timeout has no hook for one), so a slow-header client sees the connection
//! closed, not a 408. hyper's own limits are set to four times the configured ones: a head
//! between the two gets our 431 in the OpenAI shape; only a head past hyper's limit gets
//! hyper's bare 431 (no body) and a closed connection.

use super::error::ApiError;
use crate::config::ProxyConfig;
use axum::extract::{Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long a refused connection gets to read its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// hyper's default read buffer (8 KiB + 100 x 4 KiB), kept unless the head limit needs more.
const HYPER_DEFAULT_BUF: usize = 8192 + 4096 * 100;

/// Serves `app` on `listener` until `shutdown`, then stops accepting and waits for the open
/// connections to finish (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    config: ProxyConfig,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    let head_limits = middleware::from_fn_with_state(Arc::clone(&config), check_head);
    let app = app
        .method_not_allowed_fallback(method_not_allowed)
        .layer(head_limits);
    let service = TowerToHyperService::new(app);
    let hard_head = config.max_header_bytes.saturating_mul(4);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        .max_headers(config.max_headers.saturating_mul(4))
        .max_header_size(hard_head)
        .max_buf_size(HYPER_DEFAULT_BUF.max(hard_head + 8192));
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small SSE events must leave at once, not wait for Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, limit = config.max_connections, "too many open connections; refusing one");
            tokio::spawn(refuse(stream, config.max_connections));
            continue;
        };
        // No upgrades: nothing here speaks WebSocket, and an upgraded connection would escape
        // the graceful shutdown.
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers a connection beyond the cap with an OpenAI-shaped 503 and closes it, reading what
/// the client sent meanwhile so the close does not reset the answer away.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let e = ApiError::too_many_connections(limit);
    let body = e.body().to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        e.retry_after.unwrap_or(1),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// 431 in the OpenAI shape for a head over `proxy.max_header_bytes` or `proxy.max_headers`.
async fn check_head(State(config): State<Arc<ProxyConfig>>, req: Request, next: Next) -> Response {
    let count = req.headers().len();
    if count > config.max_headers {
        return ApiError::headers_too_large(format!(
            "The request has {count} headers, more than the limit of {} (proxy.max_headers).",
            config.max_headers
        ))
        .into_response();
    }
    let size = head_size(&req);
    if size > config.max_header_bytes {
        return ApiError::headers_too_large(format!(
            "The request head is {size} bytes, more than the limit of {} bytes (proxy.max_header_bytes).",
            config.max_header_bytes
        ))
        .into_response();
    }
    next.run(req).await
}

/// The size of the request head as sent: request line and `name: value\r\n` per header.
fn head_size(req: &Request) -> usize {
    let line =
        req.method().as_str().len() + req.uri().to_string().len() + " HTTP/1.1\r\n".len() + 1;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + 2
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use std::io::{Read, Write};

    fn config() -> ProxyConfig {
        crate::config::Config::builtin().unwrap().proxy
    }

    /// A server with one POST route on a free port, its address and its stop token.
    async fn start(config: ProxyConfig) -> (std::net::SocketAddr, CancellationToken) {
        let app = Router::new().route("/echo", post(|body: String| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, app, config, stop.clone()));
        (addr, stop)
    }

    /// Sends `raw` and reads until the server closes or `wait` passes.
    fn exchange(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn json_of(resp: &str) -> serde_json::Value {
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_method_is_an_openai_405() {
        let (addr, _stop) = start(config()).await;
        let resp = tokio::task::spawn_blocking(move || {
            exchange(
                addr,
                b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
        })
        .await
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
        assert_eq!(json_of(&resp)["error"]["code"], "method_not_allowed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_64_kib_header_line_is_an_openai_431() {
        let (addr, _stop) = start(config()).await;
        let resp = tokio::task::spawn_blocking(move || {
            let big = format!(
                "POST /echo HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                "a".repeat(64 * 1024)
            );
            exchange(addr, big.as_bytes(), Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp:.200}");
        let body = json_of(&resp);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("proxy.max_header_bytes"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_many_headers_is_an_openai_431() {
        let mut c = config();
        c.max_headers = 10;
        let (addr, _stop) = start(c).await;
        let resp = tokio::task::spawn_blocking(move || {
            let mut head = String::from("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n");
            for i in 0..20 {
                head.push_str(&format!("x-h{i}: v\r\n"));
            }
            head.push_str("\r\n");
            exchange(addr, head.as_bytes(), Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
        assert!(json_of(&resp)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("proxy.max_headers"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_head_is_cut_and_idle_keep_alive_ends() {
        let mut c = config();
        c.header_read_timeout = Duration::from_millis(400);
        let (addr, _stop) = start(c).await;
        tokio::task::spawn_blocking(move || {
            // One byte every 100 ms: the head is not complete after 400 ms.
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let started = std::time::Instant::now();
            let mut closed = false;
            for b in b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n" {
                if s.write_all(&[*b]).is_err() {
                    closed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut out = Vec::new();
            let n = s.read_to_end(&mut out).unwrap_or(0);
            assert!(
                closed || n == 0,
                "no answer expected, got {:?}",
                String::from_utf8_lossy(&out)
            );
            assert!(started.elapsed() < Duration::from_secs(6));
            // An idle connection is closed after the same time.
            let mut idle = std::net::TcpStream::connect(addr).unwrap();
            idle.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let started = std::time::Instant::now();
            let mut buf = [0u8; 16];
            assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed, not answered");
            assert!(started.elapsed() < Duration::from_secs(2));
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_cap_get_503_with_retry_after() {
        let mut c = config();
        c.max_connections = 2;
        let (addr, _stop) = start(c).await;
        tokio::task::spawn_blocking(move || {
            let held: Vec<_> = (0..2)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            let resp = exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
                Duration::from_secs(3),
            );
            assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
            assert!(resp.contains("retry-after: 1"), "{resp}");
            assert_eq!(json_of(&resp)["error"]["code"], "too_many_connections");
            drop(held);
            std::thread::sleep(Duration::from_millis(200));
            let resp = exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                Duration::from_secs(3),
            );
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_accepting() {
        let (addr, stop) = start(config()).await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
