//! Routes for operations, without a key: health, readiness, version, metrics, the API
//! description, and a static route for load tests' side-by-side baseline.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;

use super::problem::{ApiError, Problem, ProblemCode};
use crate::app::AppState;

/// `/openapi.json`, serialised once when the router is built.
#[derive(Debug, Clone)]
pub struct ApiDocument(pub Arc<Bytes>);

#[utoipa::path(get, path = "/healthz", tag = "ops", summary = "Liveness",
    responses((status = 200, description = "The process answers", body = String, content_type = "text/plain")))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// What `/readyz` answers when the replica can take requests.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Ready {
    /// The store backend: disk, memory or redis.
    store: &'static str,
    /// The active model's version.
    model: String,
}

#[utoipa::path(get, path = "/readyz", tag = "ops", summary = "Readiness: the store answers and a model is loaded",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Draining, or the store is unavailable or lost its data", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::new(ProblemCode::Draining, "shutting down: send new requests to another replica"));
    }
    state.store.ping().await?;
    Ok(Json(Ready { store: state.store.kind(), model: state.models.active().version.clone() }))
}

/// What this server is: its build and its active model.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Version {
    /// The crate version.
    version: &'static str,
    /// The git commit it was built from ("unknown" outside a git checkout).
    commit: &'static str,
    /// The active model's version.
    model: String,
}

#[utoipa::path(get, path = "/version", tag = "ops", summary = "Build and active model",
    responses((status = 200, description = "The build and the active model", body = Version)))]
pub(super) async fn version(State(state): State<Arc<AppState>>) -> Json<Version> {
    Json(Version { version: crate::VERSION, commit: crate::GIT_COMMIT, model: state.models.active().version.clone() })
}

#[utoipa::path(get, path = "/metrics", tag = "ops", summary = "Prometheus metrics",
    responses((status = 200, description = "The Prometheus text exposition format", body = String,
        content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = state.metrics.render(&state.models.active().version, state.store.kind());
    // Push counters live with the queue (in Redis: shared by every replica and worker).
    if let (Ok(counts), Ok(depth)) = (state.queue.counts().await, state.queue.depth().await) {
        crate::metrics::render_pushes(&mut body, &counts, &depth);
    }
    ([("content-type", "text/plain; version=0.0.4")], body)
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The document", body = Object)))]
pub(super) async fn openapi(Extension(doc): Extension<ApiDocument>) -> impl IntoResponse {
    ([("content-type", "application/json")], Bytes::clone(&doc.0))
}

#[utoipa::path(get, path = "/ping", tag = "ops", summary = "A static answer (the baseline of load tests)",
    responses((status = 200, description = "pong", body = String, content_type = "text/plain")))]
pub(super) async fn ping() -> &'static str {
    "pong"
}
