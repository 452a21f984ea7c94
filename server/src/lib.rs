//! tongban-server: the HTTP API, the stores, the push queue and its worker.
//!
//! Layout (one concern per module; backends behind one trait each):
//! - [`http`]: router, auth layers, problem bodies, extractors, one file per resource.
//! - [`app`]: the domain steps the HTTP handlers, the worker and the CLI share: ingest with its
//!   push triggers, policy-and-enqueue ([`app::Pusher`]), scans, campaigns.
//! - [`store`] and [`queue`]: a trait each, one file per backend (memory, Redis), Lua scripts
//!   beside them; the enums [`Store`] and [`queue::Queue`] only delegate.
//! - [`push`]: triggers, policy, preferences, jobs (no IO); [`templates`]: every word written
//!   for people, from `templates/*.toml`; [`render`]: portal JSON; [`deliver`]: the worker and
//!   its channels; [`models`]: hot-swappable models; [`metrics`], [`openapi`], [`config`],
//!   [`clock`], [`locale`].
//!
//! It alone knows wire and storage formats; it converts them to domain types at the edge.

pub mod app;
pub mod clock;
pub mod config;
pub mod console;
pub mod deliver;
pub mod http;
pub mod locale;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod push;
pub mod queue;
pub mod render;
pub mod store;
pub mod templates;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use app::AppState;
pub use config::{ApiKeys, Settings};
pub use http::router;
pub use models::{Models, Served};
pub use store::{Store, StoreError};

use crate::clock::Clock;
use crate::templates::Templates;

/// The crate version, as `GET /version` and `tongban --version` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this build is from (`build.rs`; "unknown" outside a checkout).
pub const GIT_COMMIT: &str = env!("TONGBAN_GIT_COMMIT");

/// `tongban --version`: the crate version and the commit. (The active model is a server's, not
/// the binary's: `GET /version` names it.)
pub const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TONGBAN_GIT_COMMIT"), ")");

/// How long a client may take to send a request's headers, and to start the next request on
/// a kept-alive connection: a slow or idle client cannot hold a connection open.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long in-flight requests get to finish after `shutdown`, by default.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `state` on a bound listener until `shutdown` completes (graceful: in-flight requests
/// finish, within [`SHUTDOWN_GRACE`]). HTTP/1.1 (put a proxy in front for HTTP/2 and TLS); every
/// connection has a header-read deadline ([`HEADER_READ_TIMEOUT`]), which `axum::serve` does
/// not set.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_draining(listener, state, shutdown, std::time::Duration::ZERO, SHUTDOWN_GRACE).await
}

/// [`serve`], but once `shutdown` completes the server first drains for `drain`: `/readyz`
/// answers 503 `draining` while requests are still served, so that a load balancer (a
/// Kubernetes readiness probe) takes this replica out before it stops accepting; then in-flight
/// requests get `grace` to finish.
pub async fn serve_draining(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: std::time::Duration,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let flag = state.clone();
    let shutdown = async move {
        shutdown.await;
        flag.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        if !drain.is_zero() {
            tracing::info!(seconds = drain.as_secs_f64(), "draining: /readyz answers 503, requests still served");
            tokio::time::sleep(drain).await;
        }
    };
    // The console's push volumes over time: the queue's counts, sampled.
    let sampler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(console::SAMPLE_EVERY);
            let mut ticks = 0u64;
            let save_every = (console::SAVE_EVERY.as_secs() / console::SAMPLE_EVERY.as_secs()).max(1);
            loop {
                every.tick().await;
                if let Ok(counts) = state.queue.counts().await {
                    state.console.sample(clock::wall_ms(), counts);
                }
                ticks += 1;
                if ticks.is_multiple_of(save_every) {
                    let console = state.clone();
                    let saved = tokio::task::spawn_blocking(move || console.console.save()).await;
                    if let Ok(Err(e)) = saved {
                        tracing::warn!(error = %e, "saving the console's analytics");
                    }
                }
            }
        })
    };
    let app = router(state.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // HTTP/1.1 only: hyper-util's auto builder (HTTP/2 too) first waits for bytes to tell the
    // two apart, so a client that sends nothing would never meet the header deadline.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    // A cap on connections served at once: past it the server stops accepting, and new ones
    // wait in the kernel's backlog (no memory per waiting client here).
    let slots = Arc::new(tokio::sync::Semaphore::new(state.settings.max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    sampler.abort();
    let console = state.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || console.console.save()).await {
        tracing::warn!(error = %e, "saving the console's analytics");
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}

/// Builds the state from its parts. Pushes are on when the active model has a catalogue and
/// templates are given; without templates, answers use the built-in words.
pub fn state(
    models: Models,
    store: Arc<Store>,
    queue: Arc<queue::Queue>,
    settings: Settings,
    segments: HashMap<String, u16>,
    templates: Option<Templates>,
) -> Arc<AppState> {
    let clock = Clock::pinned(settings.fixed_now);
    let pushes = templates.is_some();
    let templates = Arc::new(templates.unwrap_or_else(Templates::builtin));
    let catalogue_for_console = models.catalogue();
    let pusher = match (models.catalogue(), pushes) {
        (Some(cat), true) => Some(Arc::new(app::Pusher {
            store: store.clone(),
            queue: queue.clone(),
            catalogue: cat,
            templates: templates.clone(),
            caps: settings.caps,
            portal: settings.portal_url.clone(),
            ids: settings.push_ids.clone(),
            clock,
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
        pusher,
        templates,
        clock,
        limiter: Default::default(),
        draining: Default::default(),
        console: console::Console::new(catalogue_for_console),
    })
}

/// The address a listener is bound to (for logs and tests).
pub fn local_addr(l: &tokio::net::TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
