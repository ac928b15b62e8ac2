//! The HTTP front door: OpenAI-compatible routes forwarded to llama-server, the supervisor's
//! own `/health` and `/status`, API keys, admission, and OpenAI-style errors.

pub mod admission;
pub mod auth;
pub mod error;
pub mod forward;

use crate::config::ProxyConfig;
use crate::governor::{Activity, GovernorSnapshot};
use crate::status::{BackendReport, Health, StatusReport};
use crate::supervisor::state::Status;
use admission::Admission;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
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
pub struct Info {
    pub profile: crate::profile::Resolved,
    pub model: String,
    pub model_id: String,
}

/// Shared by every request.
pub struct Shared {
    pub config: ProxyConfig,
    pub status: watch::Receiver<Status>,
    pub activity: Activity,
    pub admission: Admission,
    pub keys: auth::Keys,
    /// The upstream client and its keep-alive pool; replaced (closing idle connections) before
    /// the backend is stopped, so llama-server does not wait for them to time out.
    pub client: std::sync::Mutex<forward::Upstream>,
    pub info: Info,
    /// The running governor's last snapshot (`None` when none runs).
    pub governor: watch::Receiver<Option<GovernorSnapshot>>,
    /// What forwarded requests show of the backend's liveness, for the lifecycle's watchdog.
    pub liveness: std::sync::Arc<crate::supervisor::liveness::Liveness>,
    pub started: std::time::Instant,
}

pub type AppState = Arc<Shared>;

impl Shared {
    /// A handle on the upstream client (cheap: shares the pool).
    pub fn upstream(&self) -> forward::Upstream {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the idle keep-alive connections to the backend.
    pub fn close_idle_upstream(&self) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = forward::upstream_client();
    }

    /// The supervisor's status now, from the lifecycle's and the governor's last publications.
    pub fn report(&self) -> StatusReport {
        let status = self.status.borrow().clone();
        let profile = &self.info.profile;
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
            model: self.info.model.clone(),
            model_id: self.info.model_id.clone(),
            restarts: status.restarts,
            last_exit: status.last_exit,
            governor: self.governor.borrow().clone(),
            in_flight: self.activity.in_flight(),
            queued: self.admission.waiting(),
            uptime_s: self.started.elapsed().as_secs_f64().round(),
        }
    }
}

/// The router with every route. `/health` and unknown routes are open; every other route
/// needs an API key when keys are configured.
pub fn router(state: AppState) -> Router {
    let keyed = Router::new()
        .route("/status", get(status))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(proxied))
        .route("/v1/completions", post(proxied))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(proxied))
        .route("/detokenize", post(proxied))
        .route("/props", get(proxied))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(keyed)
        .fallback(not_found)
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

async fn models(State(s): State<AppState>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.info.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "sentinel-supervisor",
        }],
    }))
    .into_response()
}

async fn embeddings(State(s): State<AppState>, req: Request<Body>) -> Response {
    if !s.info.profile.embeddings {
        return ApiError::not_found(format!(
            "embeddings are not enabled in profile `{}`; set `embeddings = true` in its [profiles.{}] table",
            s.info.profile.name, s.info.profile.name
        ))
        .into_response();
    }
    proxied(State(s), req).await
}

async fn proxied(State(s): State<AppState>, req: Request<Body>) -> Response {
    match forward::forward(&s, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn not_found(req: Request<Body>) -> Response {
    ApiError::not_found(format!(
        "Unknown route: {} {} (this endpoint serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /tokenize, /detokenize, /props, /health, /status)",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}
