//! A central tier for the spill tests: the fake backend on loopback behind a TLS terminator made
//! here (a throwaway CA from `rcgen`, `tokio-rustls`), counting every connection it accepts and
//! able to fail on cue (it then closes each connection at once), with a second, unrelated CA for
//! the wrong-CA test. The fake backend logs each request it gets (`requests-file`), so a test
//! can assert the upstream saw nothing.

use crate::support::fake;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The key the central tier's fake backend requires.
pub(crate) const KEY: &str = "central-secret-key";

pub(crate) struct Central {
    backend: Child,
    /// `https://127.0.0.1:PORT/v1`.
    pub url: String,
    /// The CA that signed the terminator's certificate, and one that did not.
    pub ca_file: PathBuf,
    pub wrong_ca_file: PathBuf,
    /// TCP connections accepted; TLS handshakes that failed.
    pub connections: Arc<AtomicUsize>,
    pub handshake_failures: Arc<AtomicUsize>,
    /// While set, every connection is closed as soon as it is accepted.
    pub failing: Arc<AtomicBool>,
    requests_file: PathBuf,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Central {
    /// Starts the fake backend (with `FAKE_BACKEND_MODE` directives `mode`, may be empty) and
    /// the terminator in front of it.
    pub(crate) fn start(mode: &str) -> Central {
        let dir = tempfile::tempdir().unwrap();
        let requests_file = dir.path().join("requests.log");
        let model = dir.path().join("central.gguf");
        std::fs::write(&model, b"GGUF central").unwrap();
        let mut directives = format!("requests-file={}", requests_file.display());
        if !mode.is_empty() {
            directives.push(',');
            directives.push_str(mode);
        }
        let mut backend = Command::new(fake())
            .args(["--host", "127.0.0.1", "--port", "0", "--api-key", KEY, "-m"])
            .arg(&model)
            .env("FAKE_BACKEND_MODE", directives)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the central tier's fake backend");
        let mut lines = BufReader::new(backend.stderr.take().unwrap()).lines();
        let port: u16 = loop {
            let line = lines
                .next()
                .expect("the central fake backend ended before listening")
                .unwrap();
            if let Some(p) = line.split("port: ").nth(1) {
                break p.trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});

        let (ca_pem, server_cert, server_key) = certificates();
        let (wrong_ca_pem, _, _) = certificates();
        let ca_file = dir.path().join("ca.pem");
        let wrong_ca_file = dir.path().join("wrong-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(&wrong_ca_file, wrong_ca_pem).unwrap();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let front = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert], server_key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        {
            let (connections, handshake_failures, failing) = (
                Arc::clone(&connections),
                Arc::clone(&handshake_failures),
                Arc::clone(&failing),
            );
            runtime.spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    if failing.load(Ordering::SeqCst) {
                        drop(tcp);
                        continue;
                    }
                    let acceptor = acceptor.clone();
                    let handshake_failures = Arc::clone(&handshake_failures);
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            handshake_failures.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        if let Ok(mut plain) =
                            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
        }
        Central {
            backend,
            url: format!("https://127.0.0.1:{front}/v1"),
            ca_file,
            wrong_ca_file,
            connections,
            handshake_failures,
            failing,
            requests_file,
            _runtime: runtime,
            _dir: dir,
        }
    }

    /// The `[[upstreams]]` entry for this tier, named `name`, trusting `ca_file`, with a fast
    /// breaker (`failures_to_open = 2`, `cool_down = "1s"`).
    pub(crate) fn entry(&self, name: &str, ca_file: &std::path::Path) -> String {
        format!(
            "[[upstreams]]\nname = \"{name}\"\nurl = \"{}\"\nmodel = \"central-model\"\napi_key = \"{KEY}\"\nca_file = \"{}\"\nfailures_to_open = 2\ncool_down = \"1s\"\nconnect_timeout = \"1s\"\nfirst_byte_timeout = \"5s\"\n",
            self.url,
            ca_file.display()
        )
    }

    /// The requests the central fake backend received (one line each).
    pub(crate) fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.requests_file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits up to `within` for the requests file to hold `n` lines (the fake backend writes a
    /// request's line as it arrives).
    pub(crate) fn wait_requests(&self, n: usize, within: Duration) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let r = self.requests();
            if r.len() >= n || start.elapsed() > within {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

/// A throwaway CA's PEM, and a certificate for 127.0.0.1 and localhost signed by it with its key.
fn certificates() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sentinel test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    (
        ca_cert.pem(),
        server.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}
