//! tongban-server: the HTTP API and the stores.
//!
//! Owns the wire (axum routes, JSON types, API keys, problem bodies: [`api`]), the stores of
//! profiles (process memory or Redis: [`store`]), hot-swappable models ([`models`]), rendering
//! of guidance in zh-CN and en ([`render`]), metrics and the OpenAPI document.
//!
//! It alone knows wire and storage formats; it converts them to domain types at the edge.
//! Pushes: triggers, policy and templates ([`push`]), the delivery queue on Redis Streams or
//! in memory ([`queue`]), policy-and-enqueue and the delivery worker with its channels
//! ([`deliver`]).

pub mod api;
pub mod deliver;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod push;
pub mod queue;
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

/// Builds the state from its parts. Pushes are on when the active model has a catalogue and
/// templates are given.
pub fn state(
    models: Models,
    store: Arc<Store>,
    queue: Arc<queue::Queue>,
    settings: Settings,
    segments: HashMap<String, u16>,
    templates: Option<push::Templates>,
) -> Arc<AppState> {
    let pusher = match (models.catalogue(), templates) {
        (Some(cat), Some(templates)) => Some(Arc::new(deliver::Pusher {
            store: store.clone(),
            queue: queue.clone(),
            catalogue: cat,
            templates,
            caps: settings.caps,
            portal: settings.portal_url.clone(),
            fixed_now: settings.fixed_now,
        })),
        _ => None,
    };
    Arc::new(AppState {
        models,
        store,
        queue,
        settings,
        metrics: metrics::Metrics::default(),
        segments,
        buckets: Default::default(),
        pusher,
    })
}

/// The address a listener is bound to (for logs and tests).
pub fn local_addr(l: &tokio::net::TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
