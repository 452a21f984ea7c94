//! Routes for operations, without a key: health, readiness, metrics, the API description, and
//! a static route for load tests' side-by-side baseline.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::{json, Value};

use super::problem::{ApiError, ProblemCode};
use crate::app::AppState;

pub(super) async fn healthz() -> &'static str {
    "ok"
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::new(ProblemCode::Draining, "shutting down: send new requests to another replica"));
    }
    state.store.ping().await?;
    Ok(Json(json!({ "store": state.store.kind(), "model": state.models.active().version })))
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = state.metrics.render(&state.models.active().version, state.store.kind());
    // Push counters live with the queue (in Redis: shared by every replica and worker).
    if let (Ok(counts), Ok(depth)) = (state.queue.counts().await, state.queue.depth().await) {
        crate::metrics::render_pushes(&mut body, &counts, &depth);
    }
    ([("content-type", "text/plain; version=0.0.4")], body)
}

pub(super) async fn openapi(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(crate::openapi::document(state.settings.keys.is_open()))
}

pub(super) async fn docs() -> Html<String> {
    Html(crate::openapi::html())
}

pub(super) async fn ping() -> &'static str {
    "pong"
}
