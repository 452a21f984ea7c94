//! Prometheus metrics through the `prometheus` crate: requests and latency histograms by route
//! template, events ingested, store errors, pushes skipped before enqueue, the active model, the
//! process (CPU, memory, file descriptors, on Linux), and, rendered from the queue at each scrape
//! (in Redis it is shared by every replica and worker), push transitions and queue depth.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency bucket upper bounds in seconds.
const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];

/// One registry per server (tests run several in one process, so never the global one).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    events: IntCounter,
    store_errors: IntCounter,
    skipped: IntCounterVec,
    model: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name and labels")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name and labels")
}

fn register(r: &Registry, c: impl Collector + 'static) {
    r.register(Box::new(c)).expect("each metric is registered once");
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            "tongban_http_requests_total",
            "HTTP requests answered, by route template and status",
            &["route", "status"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new("tongban_http_request_duration_seconds", "Time to answer, by route template")
                .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid histogram options");
        let events = IntCounter::new("tongban_events_ingested_total", "Events accepted into profiles")
            .expect("a valid metric name");
        let store_errors =
            IntCounter::new("tongban_store_errors_total", "Store calls that failed").expect("a valid metric name");
        let skipped =
            counter_vec("tongban_pushes_skipped_total", "Pushes the policy did not store, by reason", &["reason"]);
        let model = gauge_vec("tongban_model_info", "The active model (1) and the store", &["version", "store"]);
        register(&registry, requests.clone());
        register(&registry, latency.clone());
        register(&registry, events.clone());
        register(&registry, store_errors.clone());
        register(&registry, skipped.clone());
        register(&registry, model.clone());
        #[cfg(target_os = "linux")]
        register(&registry, prometheus::process_collector::ProcessCollector::for_self());
        Metrics { registry, requests, latency, events, store_errors, skipped, model }
    }
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, took: Duration) {
        // The status's text without an allocation on the request path.
        let code = axum::http::StatusCode::from_u16(status).ok();
        let text = code.as_ref().map_or("other", |c| c.as_str());
        self.requests.with_label_values(&[route, text]).inc();
        self.latency.with_label_values(&[route]).observe(took.as_secs_f64());
    }

    pub fn events(&self, n: u64) {
        self.events.inc_by(n);
    }

    pub fn push_skipped(&self, why: crate::push::Skip) {
        let name = serde_json::to_value(why).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        self.skipped.with_label_values(&[&name]).inc();
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Per route template: requests, 5xx answers, mean latency in milliseconds (the console).
    pub fn routes(&self) -> Vec<(String, u64, u64, f64)> {
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned()).unwrap_or_default()
        };
        let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
        for family in self.requests.collect() {
            for m in family.get_metric() {
                if label(m, "status").starts_with('5') {
                    *errors.entry(label(m, "route")).or_default() += m.get_counter().get_value() as u64;
                }
            }
        }
        let mut out = Vec::new();
        for family in self.latency.collect() {
            for m in family.get_metric() {
                let h = m.get_histogram();
                let (n, sum) = (h.get_sample_count(), h.get_sample_sum());
                let route = label(m, "route");
                let e = errors.get(&route).copied().unwrap_or(0);
                out.push((route, n, e, if n == 0 { 0.0 } else { sum / n as f64 * 1e3 }));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Pushes not stored, by reason (the console).
    pub fn skipped(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .skipped
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                (
                    m.get_label().first().map(|l| l.value().to_owned()).unwrap_or_default(),
                    m.get_counter().get_value() as u64,
                )
            })
            .collect();
        out.sort();
        out
    }

    pub fn render(&self, model: &str, store: &str) -> String {
        self.model.reset();
        self.model.with_label_values(&[model, store]).set(1);
        encode(&self.registry)
    }
}

fn encode(r: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut buf).expect("text encoding into memory");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// Appends push transitions by (status, trigger) and the queue's depth, as read from the queue.
pub fn render_pushes(out: &mut String, counts: &[crate::queue::Count], depth: &crate::queue::Depth) {
    let r = Registry::new();
    let pushes = counter_vec("tongban_pushes_total", "Push transitions by status and trigger", &["status", "trigger"]);
    let queue = gauge_vec("tongban_push_queue", "Pushes in the queue, by state", &["state"]);
    for (status, trigger, n) in counts {
        pushes.with_label_values(&[status.as_str(), trigger.as_str()]).inc_by(*n);
    }
    for (state, n) in
        [("ready", depth.ready), ("pending", depth.pending), ("delayed", depth.delayed), ("dead", depth.dead)]
    {
        queue.with_label_values(&[state]).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    register(&r, pushes);
    register(&r, queue);
    out.push_str(&encode(&r));
}
