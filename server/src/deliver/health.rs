//! A worker's own HTTP endpoints (`tongban worker --metrics-addr`): liveness, readiness (the
//! store and the queue answer) and the push metrics, for a supervisor or Prometheus.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::Pusher;

pub fn router(pusher: Arc<Pusher>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(pusher)
}

async fn readyz(State(p): State<Arc<Pusher>>) -> Response {
    let depth = match p.store.ping().await {
        Ok(()) => p.queue.depth().await,
        Err(e) => Err(e),
    };
    match depth {
        Ok(d) => Json(json!({ "store": p.store.kind(), "queue": p.queue.kind(), "depth": d })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/problem+json")],
            Json(json!({ "type": "about:blank", "title": "Service Unavailable", "status": 503, "code": "store_unavailable", "detail": e.to_string() })),
        )
            .into_response(),
    }
}

async fn metrics(State(p): State<Arc<Pusher>>) -> Response {
    match (p.queue.counts().await, p.queue.depth().await) {
        (Ok(counts), Ok(depth)) => {
            let mut out = String::new();
            crate::metrics::render_pushes(&mut out, &counts, &depth);
            ([("content-type", "text/plain; version=0.0.4")], out).into_response()
        }
        (Err(e), _) | (_, Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Serves [`router`] on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, pusher: Arc<Pusher>) -> std::io::Result<()> {
    axum::serve(listener, router(pusher)).await
}
