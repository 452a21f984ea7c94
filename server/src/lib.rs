//! tongban-server: the HTTP API and the stores.
//!
//! Owns the wire (axum routes, JSON types, API keys, problem bodies: [`api`]), the stores of
//! profiles (process memory or Redis: [`store`]), hot-swappable models ([`models`]), rendering
//! of guidance in zh-CN and en ([`render`]), metrics and the OpenAPI document.
//!
//! It alone knows wire and storage formats; it converts them to domain types at the edge.
//! Pushes ([`push`]) are a first slice: triggers after ingest, policy, templates, the inbox;
//! the queue, workers and outbound channels are not built yet.

pub mod api;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod push;
pub mod render;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use api::{router, ApiKeys, AppState, Settings};
pub use models::{Models, Served};
pub use store::{Store, StoreError};

/// Serves `state` on a bound listener until `shutdown` completes (graceful: in-flight requests
/// finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Builds the state from its parts.
pub fn state(
    models: Models,
    store: Store,
    settings: Settings,
    segments: HashMap<String, u16>,
    templates: Option<push::Templates>,
) -> Arc<AppState> {
    Arc::new(AppState {
        models,
        store,
        settings,
        metrics: metrics::Metrics::default(),
        segments,
        buckets: Default::default(),
        templates,
        caps: push::Caps::default(),
    })
}

/// The address a listener is bound to (for logs and tests).
pub fn local_addr(l: &tokio::net::TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
