//! `fake-backend`: a stand-in for llama.cpp's `llama-server`, for fault injection and benchmarks.
//!
//! It takes llama-server's command line (only `--host`, `--port`, `--api-key` and `-m/--model`
//! matter, everything else is ignored), serves the same routes in the same JSON shapes, and
//! misbehaves on demand. `FAKE_BACKEND_MODE` holds comma-separated directives:
//!
//! | directive            | effect                                                              |
//! |----------------------|---------------------------------------------------------------------|
//! | `load=DUR`           | `/health` answers 503 "Loading model" for DUR after start            |
//! | `exit-at-start=CODE` | print an error and exit with CODE at once                           |
//! | `crash-after=DUR`    | exit(1) DUR after start                                             |
//! | `hang-after=DUR`     | after DUR, accept every request (and stream) but never answer       |
//! | `health-hang-after=DUR` | after DUR, `/health` accepts but never answers (completions work) |
//! | `completions-hang`   | completions accept but never send a byte (`/health` stays 200)      |
//! | `completions-fail`   | completions answer 500 (`/health` stays 200)                        |
//! | `ignore-sigterm`     | ignore SIGTERM (needs SIGKILL)                                      |
//! | `stream-chunks=N`    | content chunks per streamed answer (default 5)                      |
//! | `stream-delay=DUR`   | pause between streamed chunks (default 0)                           |
//! | `response-delay=DUR` | pause before a non-streamed answer or the first chunk               |
//! | `die-mid-stream=N`   | exit(1) after sending N chunks of a stream                          |
//! | `burn`               | spin one core while any request is being answered                   |
//! | `starts-file=PATH`   | append a line to PATH at every start: `PID policy=N cgroups=A;B...` |
//! | `bad-model-unless=T` | exit(1) at start, as with a broken model, unless the model file     |
//! |                      | (`-m`) contains the text T (a test "repairs" the model by adding it)|
//! | `drop-request=N`     | close the connection of the Nth request (health probes not counted) |
//! |                      | without answering, as a kept-alive connection closed under a client |
//! | `echo`               | answer every POST with `{"received": BODY}`, the JSON it was sent   |
//! | `flood=N`            | print N numbered lines to stderr as fast as possible at start       |
//! | `requests-file=PATH` | append `PID METHOD PATH BODY` (body as one line) to PATH for every   |
//! |                      | request but the health probes, when it arrives                       |
//! | `sigill-unless=FLAG` | die by SIGILL while "loading", as a build using an instruction this  |
//! |                      | CPU refuses, unless FLAG is on the command line (`--no-repack`)      |
//! | `crash-on=TEXT`      | die by SIGSEGV when a request body contains TEXT (a poison request) |
//! | `segv-mid-stream`    | `die-mid-stream` dies by SIGSEGV instead of exit(1)                 |
//! | `fail-message=TEXT`  | the message of `completions-fail`'s 500 (llama-server's own words)  |
//!
//! Like llama-server, it exits 0 on SIGTERM (unless `ignore-sigterm`), and answers llama-server's
//! own `/completion` with `timings` (what the smoke test reads).
//!
//! Durations are humantime strings (`250ms`, `2s`). A bad directive exits with status 2.

mod routes;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The misbehaviours asked for in `FAKE_BACKEND_MODE`.
#[derive(Debug, Clone)]
struct Mode {
    load: Duration,
    exit_at_start: Option<i32>,
    crash_after: Option<Duration>,
    hang_after: Option<Duration>,
    health_hang_after: Option<Duration>,
    completions_hang: bool,
    completions_fail: bool,
    ignore_sigterm: bool,
    stream_chunks: usize,
    stream_delay: Duration,
    response_delay: Duration,
    die_mid_stream: Option<usize>,
    burn: bool,
    starts_file: Option<PathBuf>,
    drop_request: Option<u64>,
    echo: bool,
    bad_model_unless: Option<String>,
    flood: usize,
    requests_file: Option<PathBuf>,
    sigill_unless: Option<String>,
    crash_on: Option<String>,
    fail_message: Option<String>,
    segv_mid_stream: bool,
}

const DIRECTIVES: &str = "load=DUR, exit-at-start=CODE, crash-after=DUR, hang-after=DUR, \
    health-hang-after=DUR, completions-hang, completions-fail, ignore-sigterm, stream-chunks=N, stream-delay=DUR, response-delay=DUR, die-mid-stream=N, \
    burn, starts-file=PATH, drop-request=N, echo, bad-model-unless=TEXT, flood=N, requests-file=PATH, \
    sigill-unless=FLAG, crash-on=TEXT, fail-message=TEXT, segv-mid-stream";

impl Mode {
    fn parse(spec: &str) -> Result<Mode, String> {
        let mut mode = Mode {
            load: Duration::ZERO,
            exit_at_start: None,
            crash_after: None,
            hang_after: None,
            health_hang_after: None,
            completions_hang: false,
            completions_fail: false,
            ignore_sigterm: false,
            stream_chunks: 5,
            stream_delay: Duration::ZERO,
            response_delay: Duration::ZERO,
            die_mid_stream: None,
            burn: false,
            starts_file: None,
            drop_request: None,
            echo: false,
            bad_model_unless: None,
            flood: 0,
            requests_file: None,
            sigill_unless: None,
            crash_on: None,
            fail_message: None,
            segv_mid_stream: false,
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let (key, value) = match directive.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim())),
                None => (directive, None),
            };
            let dur = |v: &str| {
                humantime::parse_duration(v).map_err(|e| {
                    format!("`{key}={v}`: not a duration ({e}); write e.g. 250ms or 2s")
                })
            };
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|e| format!("`{key}={v}`: not a whole number ({e})"))
            };
            match (key, value) {
                ("load", Some(v)) => mode.load = dur(v)?,
                ("exit-at-start", Some(v)) => {
                    let code = v
                        .parse()
                        .map_err(|e| format!("`{key}={v}`: not an exit code ({e})"))?;
                    mode.exit_at_start = Some(code);
                }
                ("crash-after", Some(v)) => mode.crash_after = Some(dur(v)?),
                ("hang-after", Some(v)) => mode.hang_after = Some(dur(v)?),
                ("health-hang-after", Some(v)) => mode.health_hang_after = Some(dur(v)?),
                ("completions-hang", None) => mode.completions_hang = true,
                ("completions-fail", None) => mode.completions_fail = true,
                ("ignore-sigterm", None) => mode.ignore_sigterm = true,
                ("stream-chunks", Some(v)) => mode.stream_chunks = num(v)?,
                ("stream-delay", Some(v)) => mode.stream_delay = dur(v)?,
                ("response-delay", Some(v)) => mode.response_delay = dur(v)?,
                ("die-mid-stream", Some(v)) => mode.die_mid_stream = Some(num(v)?),
                ("burn", None) => mode.burn = true,
                ("echo", None) => mode.echo = true,
                ("starts-file", Some(v)) => mode.starts_file = Some(PathBuf::from(v)),
                ("drop-request", Some(v)) => mode.drop_request = Some(num(v)? as u64),
                ("bad-model-unless", Some(v)) => mode.bad_model_unless = Some(v.to_string()),
                ("sigill-unless", Some(v)) => mode.sigill_unless = Some(v.to_string()),
                ("flood", Some(v)) => mode.flood = num(v)?,
                ("requests-file", Some(v)) => mode.requests_file = Some(PathBuf::from(v)),
                ("crash-on", Some(v)) => mode.crash_on = Some(v.to_string()),
                ("fail-message", Some(v)) => mode.fail_message = Some(v.to_string()),
                ("segv-mid-stream", None) => mode.segv_mid_stream = true,
                _ => {
                    return Err(format!(
                        "unknown directive `{directive}` (known: {DIRECTIVES})"
                    ))
                }
            }
        }
        Ok(mode)
    }
}

/// The llama-server arguments this fake honours.
#[derive(Debug, Clone)]
struct Args {
    host: String,
    port: u16,
    api_key: Option<String>,
    model: String,
}

impl Args {
    fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            host: "127.0.0.1".into(),
            port: 8080,
            // Like llama-server: `--api-key` on the command line, else `LLAMA_API_KEY`.
            api_key: std::env::var("LLAMA_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            model: "fake-model".into(),
        };
        while let Some(arg) = argv.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_string(), Some(value.to_string()))
                }
                _ => (arg, None),
            };
            if !matches!(
                flag.as_str(),
                "--host" | "--port" | "--api-key" | "-m" | "--model"
            ) {
                continue;
            }
            let value = inline
                .or_else(|| argv.next())
                .ok_or_else(|| format!("`{flag}` needs a value"))?;
            match flag.as_str() {
                "--host" => args.host = value,
                "--port" => {
                    args.port = value
                        .parse()
                        .map_err(|e| format!("`--port {value}`: {e}"))?
                }
                "--api-key" => args.api_key = Some(value),
                _ => args.model = value,
            }
        }
        Ok(args)
    }
}

/// Shared state of the running fake.
struct Backend {
    args: Args,
    mode: Mode,
    started: Instant,
    busy: Arc<AtomicUsize>,
    burner: Option<std::thread::Thread>,
    ids: AtomicU64,
    /// Requests received, health probes aside (drives `drop-request`).
    requests: AtomicU64,
}

type Shared = Arc<Backend>;

impl Backend {
    fn hung(&self) -> bool {
        self.mode
            .hang_after
            .is_some_and(|after| self.started.elapsed() >= after)
    }

    /// Marks a request as being answered until the guard drops (drives `burn`).
    fn busy(&self) -> Busy {
        if self.busy.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(burner) = &self.burner {
                burner.unpark();
            }
        }
        Busy(self.busy.clone())
    }
}

struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes one line to stderr, ignoring a closed pipe (the supervisor may be gone).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn main() {
    let mode = std::env::var("FAKE_BACKEND_MODE").unwrap_or_default();
    let (mode, args) = match (Mode::parse(&mode), Args::parse(std::env::args().skip(1))) {
        (Ok(mode), Ok(args)) => (mode, args),
        (Err(e), _) => fail(&format!("FAKE_BACKEND_MODE: {e}")),
        (_, Err(e)) => fail(&e),
    };
    if let Some(path) = &mode.starts_file {
        // The pid, then how it was started: its scheduling policy and its cgroups.
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        #[cfg(target_os = "linux")]
        // SAFETY: sched_getscheduler(0) only reads this process's policy.
        let policy = unsafe { libc::sched_getscheduler(0) };
        #[cfg(not(target_os = "linux"))]
        let policy = -1;
        let line = format!(
            "{} policy={policy} cgroups={}\n",
            std::process::id(),
            cgroups.trim().replace('\n', ";")
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Err(e) = written.and_then(|mut f| f.write_all(line.as_bytes())) {
            fail(&format!(
                "cannot append to starts-file {}: {e}",
                path.display()
            ));
        }
    }
    if mode.flood > 0 {
        flood(mode.flood);
    }
    if let Some(text) = &mode.bad_model_unless {
        let model = std::fs::read(&args.model).unwrap_or_default();
        if !String::from_utf8_lossy(&model).contains(text.as_str()) {
            say(&format!("error: failed to load model '{}'", args.model));
            say("main: exiting due to model loading error (FAKE_BACKEND_MODE bad-model-unless)");
            std::process::exit(1);
        }
    }
    if let Some(flag) = &mode.sigill_unless {
        if !std::env::args().any(|a| &a == flag) {
            say("load_backend: loaded CPU backend from /fake/libggml-cpu-fakeamx.so");
            say(&format!(
                "llama_model_load: loading model (FAKE_BACKEND_MODE sigill-unless={flag})"
            ));
            // No core file for a crash on purpose.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            let _ = nix::sys::signal::raise(nix::sys::signal::SIGILL);
            fail("SIGILL did not end the process");
        }
    }
    if let Some(code) = mode.exit_at_start {
        say("error: fake failure at start");
        say(&format!(
            "main: exiting due to model loading error (FAKE_BACKEND_MODE exit-at-start={code})"
        ));
        std::process::exit(code);
    }
    if mode.ignore_sigterm {
        // SAFETY: installing SIG_IGN before any thread exists has no handler to race with.
        if let Err(e) = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::SIGTERM,
                nix::sys::signal::SigHandler::SigIgn,
            )
        } {
            fail(&format!("cannot ignore SIGTERM: {e}"));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(args, mode)),
        Err(e) => fail(&format!("cannot start the tokio runtime: {e}")),
    }
}

/// Prints `n` numbered lines to stderr in one buffered burst, like a child stuck in an error
/// loop; the last one says how many there were.
fn flood(n: usize) {
    let mut err = std::io::BufWriter::new(std::io::stderr().lock());
    for i in 1..n {
        if writeln!(err, "fake-backend flood line {i}").is_err() {
            return;
        }
    }
    let _ = writeln!(err, "fake-backend flood line {n} (last of {n})");
    let _ = err.flush();
}

fn fail(message: &str) -> ! {
    say(&format!("fake-backend: {message}"));
    std::process::exit(2);
}

async fn serve(args: Args, mode: Mode) {
    let busy = Arc::new(AtomicUsize::new(0));
    let burner = mode.burn.then(|| {
        let busy = busy.clone();
        std::thread::spawn(move || loop {
            while busy.load(Ordering::SeqCst) > 0 {
                let slice = Instant::now();
                while slice.elapsed() < Duration::from_millis(1) {
                    std::hint::spin_loop();
                }
            }
            std::thread::park();
        })
        .thread()
        .clone()
    });
    let listener = match tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            say(&format!(
                "main: couldn't bind HTTP server socket, hostname: {}, port: {}: {e}",
                args.host, args.port
            ));
            std::process::exit(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);
    say(&format!(
        "main: HTTP server is listening, hostname: {}, port: {port}",
        args.host
    ));
    say(&format!(
        "main: server is listening on http://{}:{port} - starting the main loop",
        args.host
    ));
    if let Some(after) = mode.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            say(&format!(
                "error: fake crash after {}",
                humantime::format_duration(after)
            ));
            std::process::exit(1);
        });
    }
    let ignore_sigterm = mode.ignore_sigterm;
    let backend = Arc::new(Backend {
        args,
        mode,
        started: Instant::now(),
        busy,
        burner,
        ids: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/props", get(routes::props))
        .route("/metrics", get(routes::metrics))
        .route("/completion", post(native_completion))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "File Not Found", "not_found_error") })
        .layer(middleware::from_fn_with_state(backend.clone(), gate))
        // llama-server takes any body size; a 413 must come from the proxy, not from here.
        .layer(DefaultBodyLimit::disable())
        .with_state(backend);
    if !ignore_sigterm {
        // llama-server ends cleanly (exit 0) on SIGTERM.
        tokio::spawn(async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                std::process::exit(0);
            }
        });
    }
    if let Err(e) = axum::serve(listener, app).await {
        say(&format!("fake-backend: server error: {e}"));
        std::process::exit(1);
    }
}

/// `{"error":{"code","message","type"}}`, the shape llama-server and OpenAI use.
fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "type": kind}});
    (status, Json(body)).into_response()
}

/// Hangs once `hang-after` has passed, and checks the API key on every route but the health probes.
async fn gate(State(b): State<Shared>, request: Request, next: Next) -> Response {
    if b.hung() {
        std::future::pending::<()>().await;
    }
    let public = matches!(request.uri().path(), "/health" | "/v1/health");
    if !public {
        let n = b.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if b.mode.drop_request == Some(n) {
            say(&format!(
                "fake-backend: closing the connection of request {n} unanswered (drop-request)"
            ));
            // Unwinding ends the connection's task, which closes the socket with no response
            // byte sent; `resume_unwind` skips the panic hook, and the server goes on.
            std::panic::resume_unwind(Box::new("drop-request"));
        }
    }
    if let (Some(key), false) = (&b.args.api_key, public) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given.and_then(|v| v.strip_prefix("Bearer ")) != Some(key.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Invalid API Key",
                "authentication_error",
            );
        }
    }
    let request = match (&b.mode.crash_on, public) {
        (Some(text), false) => match crash_on(text, request).await {
            Ok(request) => request,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e, "invalid_request_error"),
        },
        _ => request,
    };
    let request = match (&b.mode.requests_file, public) {
        (Some(path), false) => match log_request(path, request).await {
            Ok(request) => request,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e, "invalid_request_error"),
        },
        _ => request,
    };
    if b.mode.echo && request.method() == axum::http::Method::POST {
        let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
            Ok(body) => body,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                    "invalid_request_error",
                )
            }
        };
        let received: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        return Json(json!({"received": received})).into_response();
    }
    next.run(request).await
}

/// Dies by SIGSEGV at once.
fn segfault() -> ! {
    // SAFETY: the default action, set just before raising it, ends the process at once
    // (Rust's own SIGSEGV handler would return from a raised signal).
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::SIGSEGV,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let _ = nix::sys::signal::raise(nix::sys::signal::SIGSEGV);
    std::process::abort();
}

/// Dies by SIGSEGV, as llama-server does on a poison request, when the body contains `text`
/// (`crash-on`); hands the request on, body intact, otherwise.
async fn crash_on(text: &str, request: Request) -> Result<Request, String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&body).contains(text) {
        say("fake-backend: poison request (crash-on): dying by SIGSEGV");
        segfault();
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

/// Appends the request's line to `path` (`requests-file`) and hands the request on, body intact.
async fn log_request(path: &std::path::Path, request: Request) -> Result<Request, String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    let one_line = String::from_utf8_lossy(&body).replace('\n', " ");
    let line = format!(
        "{} {} {} {one_line}\n",
        std::process::id(),
        parts.method,
        parts.uri
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("requests-file {}: {e}", path.display()))?;
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

async fn health(State(b): State<Shared>) -> Response {
    if b.mode
        .health_hang_after
        .is_some_and(|after| b.started.elapsed() >= after)
    {
        std::future::pending::<()>().await;
    }
    if b.started.elapsed() < b.mode.load {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Loading model",
            "unavailable_error",
        );
    }
    Json(json!({"status": "ok"})).into_response()
}

/// llama-server's own `/completion`: eight words and the `timings` the smoke test reads.
async fn native_completion() -> Json<serde_json::Value> {
    Json(json!({
        "content": " fake fake fake fake fake fake fake fake",
        "tokens_predicted": 8,
        "timings": {"predicted_n": 8, "predicted_per_second": 123.0},
    }))
}
