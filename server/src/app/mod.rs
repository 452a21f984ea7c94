//! The application layer: the domain steps that are not HTTP, called by the HTTP handlers, the
//! worker and the CLI alike. [`ingest`] (events -> profiles -> push triggers), [`pusher`]
//! (policy -> reservation -> queue), [`scan`] (deadlines coming due), [`campaign`].

pub mod campaign;
pub mod ingest;
pub mod pusher;
pub mod related;
pub mod scan;

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Settings;
use crate::http::auth::RateLimiter;
use crate::metrics::Metrics;
use crate::models::Models;
use crate::queue::Queue;
use crate::store::Store;
use crate::templates::Templates;

pub use self::campaign::{CampaignIn, CampaignReport};
pub use self::ingest::{Ingested, NewEvent};
pub use self::pusher::{Offer, Offered, Pusher, Reserved};
pub use self::scan::ScanReport;

/// Shared state of the server.
#[derive(Debug)]
pub struct AppState {
    pub models: Models,
    pub store: Arc<Store>,
    /// The delivery queue (pushes).
    pub queue: Arc<Queue>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Segments of known subjects (from an imported subjects file).
    pub segments: HashMap<String, u16>,
    /// Pushes: present when the model has a catalogue and templates were loaded.
    pub pusher: Option<Arc<Pusher>>,
    /// The words of answers (built in unless `--templates` replaced them).
    pub templates: Arc<Templates>,
    pub clock: Clock,
    /// Token buckets per API key.
    pub limiter: RateLimiter,
    /// Set when shutdown begins: `/readyz` answers 503 so that load balancers stop sending
    /// new requests while in-flight ones finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// The operator console: sessions and the analytics accumulator.
    pub console: crate::console::Console,
}

impl AppState {
    /// The policy clock's now (Unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A subject's segment (from the subjects file), 0 if unknown.
    pub fn segment(&self, subject: &str) -> u16 {
        self.segments.get(subject).copied().unwrap_or(0)
    }
}

tokio::task_local! {
    /// The `x-request-id` of the API request being handled (set by the router's outer layer),
    /// so that problem bodies and the pushes a request makes carry it, whichever layer answers.
    pub static REQUEST_ID: Option<String>;
}

/// The id of the API request this task is handling, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok().flatten()
}
