//! The HTTP front door: OpenAI-compatible routes forwarded to llama-server, the supervisor's
//! own `/health`, `/status` and `/metrics`, API keys, admission, and OpenAI-style errors.

pub(crate) mod admission;
pub(crate) mod auth;
pub mod error;
pub(crate) mod forward;
mod gbnf;
pub mod grammar;
mod outbound;
pub(crate) mod poison;
mod relay;
mod retry;
pub(crate) mod server;
mod serving;
pub mod validate;

use crate::config::ProxyConfig;
use crate::governor::{Activity, GovernorSnapshot};
use crate::status::{BackendReport, Health, StatusReport};
use crate::supervisor::state::Status;
use admission::Admission;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;

/// Facts about the running profile shown by `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Info {
    pub profile: crate::profile::Resolved,
    pub model: String,
    pub model_id: String,
    /// The backend in use and why.
    pub rung: crate::status::BackendRung,
    /// The model's vocabulary size from its GGUF header (`None`: not readable); `/detokenize`
    /// and token-id prompts are checked against it.
    #[serde(skip)]
    pub vocab_size: Option<u64>,
    /// Whether the backend is started with a multimodal projector (`--mmproj`): without one,
    /// image and audio parts are refused with 400.
    #[serde(skip)]
    pub projector: bool,
}

/// What a reload can change while the proxy serves: its limits and the facts `/status` shows.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// 1 at start, +1 for each reload applied (`config_generation` in `/status`).
    pub generation: u64,
    pub config: ProxyConfig,
    pub info: Info,
    /// The running profile's `spill` and `deadline`.
    pub spill: crate::upstream::SpillPolicy,
}

/// Shared by every request.
pub(crate) struct Shared {
    /// The configuration in force, as the lifecycle publishes it (a reload replaces it).
    pub live: watch::Receiver<Arc<crate::supervisor::lifecycle::InForce>>,
    pub status: watch::Receiver<Status>,
    /// The requests in flight, one ticket each (`crate::requests`): `/status` `in_flight`, the
    /// lifecycle's drains and its watchdog read them.
    pub inflight: crate::requests::Requests,
    /// Asks the supervisor for a reload (`POST /admin/reload`); `None`: the route is off.
    pub reload: Option<tokio::sync::mpsc::Sender<crate::supervisor::reload::ReloadRequest>>,
    /// The governor's activity: each ticket holds a mark, model loads and warm-ups their own.
    pub activity: Activity,
    pub admission: Admission,
    pub keys: auth::Keys,
    /// The upstream client and its keep-alive pool; replaced (closing idle connections) before
    /// the backend is stopped, so llama-server does not wait for them to time out.
    pub client: std::sync::Mutex<forward::Upstream>,
    /// The running governor's last snapshot (`None` when none runs).
    pub governor: watch::Receiver<Option<GovernorSnapshot>>,
    pub started: std::time::Instant,
    /// What `/metrics` shows; its layer counts every answer.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Requests that a backend died serving, refused for `proxy.poison_ttl`.
    pub poison: poison::PoisonList,
    /// The machine's situation and the budget in force (`None`: not followed).
    pub situation: watch::Receiver<Option<crate::situation::SituationReport>>,
    /// The central tier (`[[upstreams]]`) and the local service times the spill decision reads.
    pub spill: Arc<crate::upstream::spill::Spill>,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// The configuration in force now.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.borrow().live)
    }

    /// A handle on the upstream client (cheap: shares the pool).
    pub(crate) fn upstream(&self) -> forward::Upstream {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Drops the idle keep-alive connections to the backend.
    pub(crate) fn close_idle_upstream(&self) {
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = forward::upstream_client();
    }

    /// The supervisor's status now, from the lifecycle's and the governor's last publications.
    pub(crate) fn report(&self) -> StatusReport {
        let mut status = self.status.borrow().clone();
        status.state.refresh_retry_in(std::time::SystemTime::now());
        let live = self.live();
        let profile = &live.info.profile;
        StatusReport {
            backend: status.backend.as_ref().map(|b| BackendReport {
                pid: b.pid,
                port: b.port,
                generation: b.generation,
                threads: profile.threads,
                threads_batch: profile.threads_batch,
                restarts: status.restarts,
                rss_bytes: crate::meter::rss_bytes(b.pid),
            }),
            state: status.state,
            profile: profile.name.clone(),
            resolved_profile: profile.clone(),
            model: live.info.model.clone(),
            model_id: live.info.model_id.clone(),
            restarts: status.restarts,
            last_exit: status.last_exit,
            governor: self.governor.borrow().clone(),
            in_flight: self.inflight.total(),
            busy: self.activity.in_flight(),
            queued: self.admission.waiting(),
            uptime_s: self.started.elapsed().as_secs_f64().round(),
            config_generation: live.generation,
            tokens: self.metrics.tokens(),
            backend_rung: Some(status.climbed.unwrap_or_else(|| live.info.rung.clone())),
            situation: self.situation.borrow().clone(),
            upstreams: self.spill.upstreams.report(),
        }
    }
}

/// The router with every route. `/health` and unknown routes are open; every other route
/// needs an API key when keys are configured.
pub(crate) fn router(state: AppState) -> Router {
    let mut keyed = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(proxied))
        .route("/v1/completions", post(proxied))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(proxied))
        .route("/detokenize", post(proxied))
        .route("/props", get(proxied));
    // Only with API keys: on an open (loopback) endpoint any local user could reload.
    if state.reload.is_some() && state.keys.required() {
        keyed = keyed.route("/admin/reload", post(reload));
    }
    let keyed = keyed.route_layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        require_key,
    ));
    Router::new()
        .route("/health", get(health))
        .merge(keyed)
        .fallback(not_found)
        .layer(middleware::map_response(crate::upstream::spill::mark_local))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            crate::metrics::http::track,
        ))
        .with_state(state)
}

/// Answers 401 in the OpenAI shape unless the request carries an accepted key.
async fn require_key(State(s): State<AppState>, req: Request<Body>, next: Next) -> Response {
    if !s.keys.allows(req.headers()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

async fn health(State(s): State<AppState>) -> Response {
    let health = s.report().health();
    let code = match health.status {
        Health::Ok => StatusCode::OK,
        Health::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(health)).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.report()).into_response()
}

/// `POST /admin/reload`: 200 with the outcome, 400 for an invalid configuration, 500 when
/// the new backend did not start, 503 while shutting down. The old configuration stays on
/// every error.
async fn reload(State(s): State<AppState>) -> Response {
    use crate::supervisor::lifecycle::{Applied, Refused};
    use crate::supervisor::reload::ReloadError;
    let Some(requests) = &s.reload else {
        return ApiError::not_found("reload is off").into_response();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request = crate::supervisor::reload::ReloadRequest {
        trigger: "POST /admin/reload",
        reply: Some(tx),
    };
    let answer = match requests.send(request).await {
        Ok(()) => rx
            .await
            .unwrap_or(Err(ReloadError::Refused(Refused::ShuttingDown))),
        Err(_) => Err(ReloadError::Refused(Refused::ShuttingDown)),
    };
    match answer {
        Ok(applied) => {
            let (how, generation) = match applied {
                Applied::Live => ("live", None),
                Applied::Switched { generation } => ("new_backend", Some(generation)),
                Applied::NextLaunch => ("next_launch", None),
            };
            Json(json!({
                "reloaded": true,
                "applied": how,
                "backend_generation": generation,
                "config_generation": s.live().generation,
            }))
            .into_response()
        }
        Err(e @ ReloadError::Invalid(_)) => ApiError::bad_request(e.to_string()).into_response(),
        Err(e @ ReloadError::Refused(Refused::ShuttingDown)) => {
            ApiError::unavailable(e.to_string()).into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let backend = s.status.borrow().backend.clone();
    let text = s.metrics.render(&s.report(), backend.as_ref()).await;
    let content_type = [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)];
    (content_type, text).into_response()
}

async fn models(State(s): State<AppState>) -> Response {
    let live = s.live();
    Json(json!({
        "object": "list",
        "data": [{
            "id": live.info.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "sentinel-supervisor",
        }],
    }))
    .into_response()
}

async fn embeddings(State(s): State<AppState>, req: Request<Body>) -> Response {
    let live = s.live();
    if !live.info.profile.embeddings {
        return ApiError::not_found(format!(
            "embeddings are not enabled in profile `{}`; set `embeddings = true` in its [profiles.{}] table",
            live.info.profile.name, live.info.profile.name
        ))
        .into_response();
    }
    proxied(State(s), req).await
}

async fn proxied(State(s): State<AppState>, req: Request<Body>) -> Response {
    forward::forward(&s, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn not_found(req: Request<Body>) -> Response {
    ApiError::not_found(format!(
        "Unknown route: {} {} (this endpoint serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /tokenize, /detokenize, /props, /health, /status, /metrics)",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}
