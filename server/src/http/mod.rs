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
use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
/// `tongban_server::access`, level info: on by default, `RUST_LOG=warn` turns it off).
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

/// Runs the request inside the scope of its `x-request-id` (set by the layer outside this one),
/// so that every problem body carries it, whichever layer answers.
async fn with_request_id(req: Request, next: Next) -> Response {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    crate::app::REQUEST_ID.scope(id, next.run(req)).await
}

/// The route table: every API route, its handler and its documentation, by group. The groups'
/// scope layers run before any extractor reads the body. One table feeds the router and the
/// OpenAPI document ([`crate::openapi`]).
fn routes(state: &Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    let portal = OpenApiRouter::new()
        .routes(routes!(recommendations::for_subject))
        .routes(routes!(users::get_prefs, users::put_prefs))
        .routes(routes!(users::get_inbox))
        .routes(routes!(users::read_message))
        .routes(routes!(recommendations::for_session))
        .routes(routes!(services::popular))
        .routes(routes!(services::guidance))
        .routes(routes!(services::related_services))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::portal));
    let ingest = OpenApiRouter::new()
        .routes(routes!(users::erase))
        .routes(routes!(events::post_events))
        .routes(routes!(events::post_feedback))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::ingest));
    let operator = OpenApiRouter::new()
        .routes(routes!(admin::models, admin::activate))
        .routes(routes!(admin::rollback))
        .routes(routes!(admin::push))
        .routes(routes!(admin::queue))
        .routes(routes!(admin::campaign))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::operator));
    let open = OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::version))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::ping));
    OpenApiRouter::with_openapi(crate::openapi::base()).merge(portal).merge(ingest).merge(operator).merge(open)
}

/// The OpenAPI document of this server (keys configured or not, its `max_k`).
pub fn document(state: &Arc<AppState>) -> utoipa::openapi::OpenApi {
    let doc = routes(state).into_openapi();
    crate::openapi::finish(doc, state.settings.keys.is_open(), state.settings.max_k)
}

/// The application router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    let (api, doc) = routes(&state).split_for_parts();
    let doc = crate::openapi::finish(doc, state.settings.keys.is_open(), state.settings.max_k);
    let doc = ops::ApiDocument(Arc::new(serde_json::to_vec(&doc).expect("the document serialises").into()));
    let mut router = api
        .merge(crate::openapi::docs_ui())
        .merge(crate::console::router(state.clone()))
        .fallback(not_found)
        .layer(axum::Extension(doc))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(middleware::map_response(bare_errors))
        .layer(middleware::from_fn(with_request_id));
    if let Some(cors) = cors(&state.settings.cors_origins) {
        router = router.layer(cors);
    }
    // A caller's `x-request-id` is kept (else a UUID is made), seen by the access log and
    // answered back, so one request can be followed from the portal through the logs.
    router
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(tower_http::request_id::MakeRequestUuid))
        .with_state(state)
}

/// CORS is off unless origins are named (`--cors-origin`): API keys belong on the portal's
/// backend, and a browser calling the API directly is the exception an operator opts into.
fn cors(origins: &[crate::config::Origin]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, Method};
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins.to_vec())
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::ACCEPT_LANGUAGE,
                header::IF_NONE_MATCH,
                header::HeaderName::from_static("x-api-key"),
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([header::ETAG, header::HeaderName::from_static("x-request-id")])
            .max_age(Duration::from_secs(600)),
    )
}
