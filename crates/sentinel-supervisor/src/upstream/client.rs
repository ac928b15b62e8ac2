//! The HTTPS client of one upstream (rustls: the public roots plus `ca_file`, an optional
//! client certificate) and sending one request to it with its connect, first-byte and total
//! timeouts. Only the body, the content type and the upstream's own key are sent: nothing of
//! the client's headers (its key to this endpoint least of all).

use super::{Settings, Upstream, UpstreamConfig, UpstreamError};
use bytes::Bytes;
use std::time::Duration;

/// Builds the client for one upstream; reads its CA and client certificate files now.
pub(super) fn build(c: &UpstreamConfig, s: &Settings) -> Result<reqwest::Client, UpstreamError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(s.connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &c.ca_file {
        let (what, key) = ("the CA file", "ca_file");
        let pem = read(c, path, what, key)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| pem_error(c, path, what, key, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem_error(c, path, what, key, "no certificate in it".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => {
            let (what, cert_key) = ("the client certificate", "client_cert");
            let mut pem = read(c, cert, what, cert_key)?;
            pem.push(b'\n');
            pem.extend(read(c, key, "the client key", "client_key")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| pem_error(c, cert, what, cert_key, e.to_string()))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(UpstreamError::HalfIdentity {
                name: c.name.clone(),
            })
        }
    }
    builder.build().map_err(|e| UpstreamError::Client {
        name: c.name.clone(),
        reason: chain(&e),
    })
}

fn read(
    c: &UpstreamConfig,
    path: &std::path::Path,
    what: &'static str,
    key: &'static str,
) -> Result<Vec<u8>, UpstreamError> {
    std::fs::read(path).map_err(|source| UpstreamError::Read {
        name: c.name.clone(),
        what,
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(
    c: &UpstreamConfig,
    path: &std::path::Path,
    what: &'static str,
    key: &'static str,
    reason: String,
) -> UpstreamError {
    UpstreamError::Pem {
        name: c.name.clone(),
        what,
        key,
        path: path.to_path_buf(),
        reason,
    }
}

/// Why one try at an upstream failed (each counts against its breaker).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS handshake refused: {0} (the upstream's certificate is not trusted: set `ca_file` to the CA that signed it)")]
    Tls(String),
    #[error("no response head within {0:?} (first_byte_timeout)")]
    FirstByte(Duration),
    #[error("answered {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {0}")]
    Other(String),
}

impl Failure {
    /// The upstream's `Retry-After`, when it sent one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `reason` label of `sentinel_upstream_failures_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Tls(_) => "tls",
            Failure::FirstByte(_) => "timeout",
            Failure::Status { status: 429, .. } => "rate_limited",
            Failure::Status { .. } => "server_error",
            Failure::Other(_) => "other",
        }
    }
}

/// Sends `body` to the upstream's route for `path` (`/v1/chat/completions` ->
/// `<url>/chat/completions`) and returns once the response head is in: a 429 or a 5xx is a
/// [`Failure`], any other status is the upstream's answer (a 4xx included: the request's own
/// fault, passed to the client).
pub(crate) async fn send(
    up: &Upstream,
    path: &str,
    body: Bytes,
) -> Result<reqwest::Response, Failure> {
    let s = &up.settings;
    let route = path.strip_prefix("/v1").unwrap_or(path);
    let mut request = up
        .client
        .post(format!("{}{route}", s.url))
        .timeout(s.total_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = &s.key {
        request = request.bearer_auth(key.expose());
    }
    let response = match tokio::time::timeout(s.first_byte_timeout, request.send()).await {
        Err(_) => return Err(Failure::FirstByte(s.first_byte_timeout)),
        Ok(Err(e)) => {
            let detail = chain(&e);
            return Err(if is_tls(&detail) {
                Failure::Tls(detail)
            } else if e.is_connect() {
                Failure::Connect(detail)
            } else {
                Failure::Other(detail)
            });
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    if status == 429 || status >= 500 {
        return Err(Failure::Status {
            status,
            retry_after: response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        });
    }
    Ok(response)
}

/// An error with all its sources, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn is_tls(detail: &str) -> bool {
    ["certificate", "UnknownIssuer"]
        .iter()
        .any(|m| detail.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_names_the_upstream_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let c: UpstreamConfig = toml::from_str(&format!(
            "name = \"central\"\nurl = \"https://x/v1\"\nca_file = \"{}\"\n",
            ca.display()
        ))
        .unwrap();
        let s =
            super::super::settings(&c, &crate::config::Config::builtin().unwrap().spill).unwrap();
        let err = build(&c, &s).unwrap_err().to_string();
        assert!(err.contains("central") && err.contains("ca_file"), "{err}");
        let c = UpstreamConfig {
            ca_file: None,
            client_cert: Some(ca.clone()),
            ..c
        };
        let err = build(&c, &s).unwrap_err().to_string();
        assert!(err.contains("set both or neither"), "{err}");
    }

    #[test]
    fn failures_are_classified() {
        let f = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(f.kind(), "rate_limited");
        assert_eq!(f.retry_after(), Some(Duration::from_secs(3)));
        assert!(is_tls("invalid peer certificate: UnknownIssuer"));
        assert!(!is_tls("connection refused"));
    }
}
