//! Prometheus metrics: requests and latency histograms by route, events ingested, store errors,
//! push transitions by status and trigger, queue depth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket upper bounds in seconds.
const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];

#[derive(Debug, Default)]
struct Route {
    /// Per status code.
    count: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Route>>,
    events: AtomicU64,
    store_errors: AtomicU64,
    /// Pushes not stored, by reason.
    skipped: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut routes = self.routes.lock().expect("no panics while holding the lock");
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), Route::default());
        }
        let r = routes.get_mut(route).expect("just inserted");
        *r.count.entry(status).or_default() += 1;
        for (b, &le) in r.buckets.iter_mut().zip(&BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        r.sum += secs;
        r.total += 1;
    }

    pub fn events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    pub fn push_skipped(&self, why: crate::push::Skip) {
        let name = serde_json::to_value(why).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        *self.skipped.lock().expect("no panics while holding the lock").entry(name).or_default() += 1;
    }

    /// Per route template: requests, 5xx answers, mean latency in milliseconds (the console).
    pub fn routes(&self) -> Vec<(String, u64, u64, f64)> {
        let routes = self.routes.lock().expect("no panics while holding the lock");
        routes
            .iter()
            .map(|(name, r)| {
                let errors = r.count.iter().filter(|(s, _)| **s >= 500).map(|(_, n)| n).sum();
                (name.clone(), r.total, errors, if r.total == 0 { 0.0 } else { r.sum / r.total as f64 * 1e3 })
            })
            .collect()
    }

    /// Pushes not stored, by reason (the console).
    pub fn skipped(&self) -> Vec<(String, u64)> {
        self.skipped.lock().expect("no panics while holding the lock").iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, model: &str, store: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# TYPE tongban_model_info gauge\ntongban_model_info{{version=\"{model}\",store=\"{store}\"}} 1"
        );
        let _ = writeln!(
            out,
            "# TYPE tongban_events_ingested_total counter\ntongban_events_ingested_total {}",
            self.events.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE tongban_store_errors_total counter\ntongban_store_errors_total {}",
            self.store_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE tongban_pushes_skipped_total counter");
        for (why, n) in self.skipped.lock().expect("no panics while holding the lock").iter() {
            let _ = writeln!(out, "tongban_pushes_skipped_total{{reason=\"{why}\"}} {n}");
        }
        let routes = self.routes.lock().expect("no panics while holding the lock");
        let _ = writeln!(out, "# TYPE tongban_http_requests_total counter");
        for (name, r) in routes.iter() {
            for (status, n) in &r.count {
                let _ = writeln!(out, "tongban_http_requests_total{{route=\"{name}\",status=\"{status}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# TYPE tongban_http_request_duration_seconds histogram");
        for (name, r) in routes.iter() {
            for (b, le) in r.buckets.iter().zip(&BUCKETS) {
                let _ =
                    writeln!(out, "tongban_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"{le}\"}} {b}");
            }
            let _ = writeln!(
                out,
                "tongban_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {}",
                r.total
            );
            let _ = writeln!(out, "tongban_http_request_duration_seconds_sum{{route=\"{name}\"}} {}", r.sum);
            let _ = writeln!(out, "tongban_http_request_duration_seconds_count{{route=\"{name}\"}} {}", r.total);
        }
        out
    }
}

/// Appends push transitions by (status, trigger) and the queue's depth.
pub fn render_pushes(out: &mut String, counts: &[crate::queue::Count], depth: &crate::queue::Depth) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# TYPE tongban_pushes_total counter");
    for (status, trigger, n) in counts {
        let (status, trigger) = (status.as_str(), trigger.as_str());
        let _ = writeln!(out, "tongban_pushes_total{{status=\"{status}\",trigger=\"{trigger}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE tongban_push_queue gauge");
    for (state, n) in
        [("ready", depth.ready), ("pending", depth.pending), ("delayed", depth.delayed), ("dead", depth.dead)]
    {
        let _ = writeln!(out, "tongban_push_queue{{state=\"{state}\"}} {n}");
    }
}
