//! The HTTP front door: OpenAI-compatible routes forwarded to llama-server, the supervisor's
//! own `/health` and `/status`, API keys, admission, and OpenAI-style errors.

pub mod admission;
pub mod auth;
pub mod error;
pub mod forward;
pub mod server;
pub mod validate;

use crate::config::ProxyConfig;
use crate::governor::Activity;
use crate::supervisor::state::Status;
use admission::Admission;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
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
    /// The governor's live status, as JSON (null when none runs).
    pub governor_status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
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
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(proxied))
        .route("/v1/completions", post(proxied))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(proxied))
        .route("/detokenize", post(proxied))
        .route("/props", get(proxied))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Response {
    let status = s.status.borrow().clone();
    let mut body = json!({
        "status": if status.state.serving() { "ok" } else { "unavailable" },
        "state": status.state.name(),
        "profile": s.info.profile.name,
        "restarts": status.restarts,
    });
    if let crate::supervisor::state::State::Failed { reason, .. } = &status.state {
        body["reason"] = json!(reason);
    }
    let code = if status.state.serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn status(State(s): State<AppState>, req: Request<Body>) -> Response {
    if !s.keys.allows(req.headers()) {
        return ApiError::unauthorized().into_response();
    }
    let status = s.status.borrow().clone();
    let mut state = serde_json::to_value(&status.state).unwrap_or_default();
    let backend = status.backend.as_ref().map(|b| {
        json!({
            "pid": b.pid,
            "port": b.port,
            "generation": b.generation,
            "threads": s.info.profile.threads,
            "threads_batch": s.info.profile.threads_batch,
            "restarts": status.restarts,
        })
    });
    if let Some(obj) = state.as_object_mut() {
        obj.insert("profile".into(), json!(s.info.profile.name));
        obj.insert("resolved_profile".into(), json!(s.info.profile));
        obj.insert("model".into(), json!(s.info.model));
        obj.insert("model_id".into(), json!(s.info.model_id));
        obj.insert("backend".into(), json!(backend));
        obj.insert("restarts".into(), json!(status.restarts));
        obj.insert("governor".into(), (s.governor_status)());
        obj.insert("in_flight".into(), json!(s.activity.in_flight()));
        obj.insert("queued".into(), json!(s.admission.waiting()));
        obj.insert(
            "uptime_s".into(),
            json!(s.started.elapsed().as_secs_f64().round()),
        );
    }
    Json(state).into_response()
}

async fn models(State(s): State<AppState>, req: Request<Body>) -> Response {
    if !s.keys.allows(req.headers()) {
        return ApiError::unauthorized().into_response();
    }
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
    if !s.keys.allows(req.headers()) {
        return ApiError::unauthorized().into_response();
    }
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
