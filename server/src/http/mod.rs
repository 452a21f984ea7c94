//! The HTTP API (v1, JSON): one file per resource, the router here. Wire types live in the
//! resource files and become domain types at the edge. Each route group has its scope layer
//! ([`auth`]), which runs before any extractor reads the body; failures are problem bodies
//! ([`problem`]).

pub mod auth;
pub mod extract;
pub mod problem;

pub(crate) mod admin;
mod events;
mod ops;
mod recommendations;
mod services;
mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use self::problem::{ApiError, ProblemCode};
use crate::app::AppState;

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// Errors answered below the handlers (405 from the router, 504 from the timeout layer) come
/// without a body: give them a problem body like every other error.
async fn bare_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || res.headers().contains_key("content-type") {
        return res;
    }
    let problem = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(ProblemCode::MethodNotAllowed, "this route does not take this method")
        }
        StatusCode::GATEWAY_TIMEOUT => {
            ApiError::new(ProblemCode::Timeout, "the request took too long; nothing is known to be stored, retry later")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ProblemCode::TooLarge,
            "request body too large (the server's limit is set by --max-body-bytes)",
        ),
        _ => return res,
    };
    let mut out = problem.into_response();
    if let Some(allow) = res.headers().get("allow") {
        out.headers_mut().insert("allow", allow.clone());
    }
    out
}

/// Counts requests and latency by route template, and writes the access log line (target
/// `tongban_server::access`, level info: `RUST_LOG=tongban_server::access=info` turns it on).
/// Both name the route template, never the raw path: ids in paths are personal data.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let request_id = req.headers().get("x-request-id").cloned();
    let started = Instant::now();
    let res = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let (status, took) = (res.status().as_u16(), started.elapsed());
    state.metrics.observe(route, status, took);
    tracing::info!(
        target: "tongban_server::access",
        %method,
        route,
        status,
        micros = took.as_micros() as u64,
        request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
    );
    res
}

/// The application router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    let portal = Router::new()
        .route("/v1/users/{id}/recommendations", get(recommendations::for_subject))
        .route("/v1/users/{id}/preferences", get(users::get_prefs).put(users::put_prefs))
        .route("/v1/users/{id}/inbox", get(users::get_inbox))
        .route("/v1/users/{id}/inbox/{msg}/read", post(users::read_message))
        .route("/v1/sessions/recommendations", post(recommendations::for_session))
        .route("/v1/services/popular", get(services::popular))
        .route("/v1/services/{id}", get(services::guidance))
        .route("/v1/services/{id}/related", get(services::related_services))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::portal));
    let ingest = Router::new()
        .route("/v1/users/{id}", delete(users::erase))
        .route("/v1/events", post(events::post_events))
        .route("/v1/feedback", post(events::post_feedback))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::ingest));
    let operator = Router::new()
        .route("/admin/models", get(admin::models).post(admin::activate))
        .route("/admin/models/rollback", post(admin::rollback))
        .route("/admin/pushes/{id}", get(admin::push))
        .route("/admin/queue", get(admin::queue))
        .route("/admin/campaigns", post(admin::campaign))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::operator));
    let open = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(ops::docs))
        .route("/ping", get(ops::ping));
    Router::new()
        .merge(portal)
        .merge(ingest)
        .merge(operator)
        .merge(open)
        .merge(crate::console::router(state.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(middleware::map_response(bare_errors))
        // A caller's `x-request-id` is kept (else a UUID is made), seen by the access log and
        // answered back, so one request can be followed from the portal through the logs.
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(tower_http::request_id::MakeRequestUuid))
        .with_state(state)
}
