//! The HTTP API over real TCP, the same suite against the memory store and against a real
//! `redis-server` started here on a free port (one per test, killed on drop).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::SubjectId;
use tongban_features::io::EventLog;
use tongban_model::artifact;
use tongban_server::deliver::{Channels, Webhook, Worker, WorkerConfig};
use tongban_server::push::{push_id, Caps, Trigger};
use tongban_server::queue::Queue;
use tongban_server::store::RedisStore;
use tongban_server::{ApiKeys, AppState, Models, Served, Settings, Store};

/// A subject id of the tests.
fn sid(s: &str) -> SubjectId {
    SubjectId::parse(s).unwrap()
}

mod common;
#[path = "../server/tests/support/mod.rs"]
mod support;
use support::RedisServer;

struct Fixture {
    catalogue: Arc<Catalogue>,
    model_file: tempfile::NamedTempFile,
    log: EventLog,
    now: i64,
}

/// A small generated history and a model trained on it, once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let m = common::small_model(1500, 300);
        Fixture { catalogue: m.catalogue, model_file: m.model_file, log: m.log, now: m.now }
    })
}

struct App {
    http: Http,
    state: Arc<AppState>,
    _redis: Option<RedisServer>,
}

/// A client of a server under test (in this process or not).
struct Http {
    base: String,
    client: reqwest::Client,
}

impl std::ops::Deref for App {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Memory,
    Redis,
}

/// The durable backends of the restart tests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kept {
    Disk,
    Redis,
}

/// Options of a test app.
#[derive(Clone, Debug, Default)]
struct Opts {
    rate: u32,
    /// Run the push worker in process.
    worker: bool,
    webhook: Option<String>,
    max_attempts: u32,
    /// Push caps (default: the defaults).
    caps: Option<Caps>,
    /// The push id key (default: none).
    push_key: Option<&'static [u8]>,
    /// Browser origins allowed by CORS.
    cors: Vec<&'static str>,
    /// The models directory (default: none, any path).
    models_dir: Option<std::path::PathBuf>,
    /// Connections served at once (0: the default).
    max_connections: usize,
}

/// Starts the app on a free port with the fixture's profiles imported, and the push worker.
async fn start(backend: Backend, keys: ApiKeys) -> (App, Option<RedisServer>) {
    start_opts(backend, keys, Opts { worker: true, ..Opts::default() }).await
}

/// A worker for tests: fast retries and reclaims, no periodic scan.
fn test_worker(state: &AppState, webhook: Option<&str>, max_attempts: u32) -> Worker {
    let hook = webhook.map(|u| Webhook::new(u, WEBHOOK_SECRET, Duration::from_secs(2)).unwrap());
    Worker {
        pusher: state.pusher.clone().expect("pushes on"),
        channels: Channels { log: None, webhook: hook },
        cfg: WorkerConfig {
            consumer: "test-worker".into(),
            reclaim_idle_ms: 1000,
            max_attempts: max_attempts.max(1),
            backoff_base_ms: 10,
            scan_every: None,
            ..WorkerConfig::new()
        },
    }
}

const WEBHOOK_SECRET: &[u8] = b"test-secret-0123456789";

async fn start_opts(backend: Backend, keys: ApiKeys, opts: Opts) -> (App, Option<RedisServer>) {
    let f = fixture();
    let (model, header) = artifact::load(f.model_file.path(), Some(f.catalogue.clone())).unwrap();
    let (store, queue, redis) = match backend {
        Backend::Memory => (Store::memory(), Queue::memory(), None),
        Backend::Redis => {
            let r = RedisServer::start();
            let store = RedisStore::connect(&r.url(), "test:").await.unwrap();
            let (conn, prefix) = store.connection();
            let queue = Queue::redis(conn, &prefix, 4).await.unwrap();
            (Store::Redis(store), queue, Some(r))
        }
    };
    // Import the history of ten subjects (all of them would only slow the test down).
    let profiles = model.profiles(&f.log, &[]);
    for (i, p) in profiles.iter().enumerate().take(10) {
        assert!(store.import_profile(&sid(f.log.subjects.name(i as u32)), p).await.unwrap());
    }
    let settings = Settings {
        keys,
        max_batch: 100,
        fixed_now: Some(f.now),
        rate_per_key: opts.rate,
        caps: opts.caps.unwrap_or_default(),
        push_ids: tongban_server::push::IdKey::new(opts.push_key).unwrap(),
        cors_origins: opts.cors.iter().map(|o| Settings::parse_origin(o).unwrap()).collect(),
        models_dir: opts.models_dir.clone(),
        max_connections: if opts.max_connections == 0 { 10_000 } else { opts.max_connections },
        ..Settings::default()
    };
    let served = Served::new(model, header, f.model_file.path().to_owned());
    let templates =
        tongban_server::push::Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), &f.catalogue)
            .unwrap();
    let state = tongban_server::state(
        Models::new(served, Some(f.catalogue.clone())),
        Arc::new(store),
        Arc::new(queue),
        settings,
        HashMap::new(),
        Some(templates),
    );
    if opts.worker {
        let w =
            test_worker(&state, opts.webhook.as_deref(), if opts.max_attempts == 0 { 5 } else { opts.max_attempts });
        tokio::spawn(async move { w.run(std::future::pending()).await });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tongban_server::serve(listener, state.clone(), std::future::pending()));
    let app =
        App { http: Http { base: format!("http://{addr}"), client: reqwest::Client::new() }, state, _redis: None };
    (app, redis)
}

impl Http {
    /// GET `path` until `done(status, body)` holds (the worker delivers asynchronously);
    /// returns the body, or panics with the last one after five seconds.
    async fn wait_for(&self, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..500 {
            let (code, body) = self.get(path).await;
            if done(code, &body) {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("GET {path}: not there after 5 s: {last}");
    }

    /// The subject's inbox once it holds `n` messages.
    async fn wait_inbox(&self, subject: &str, n: usize) -> Value {
        let path = format!("/v1/users/{subject}/inbox");
        self.wait_for(&path, |_, inbox| inbox["messages"].as_array().is_some_and(|m| m.len() >= n)).await
    }

    /// A push's audit record once its status is `status`.
    async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(&format!("/admin/pushes/{id}"), |code, rec| code == 200 && rec["status"] == status).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn put(&self, path: &str, body: &str) -> u16 {
        self.send_json(reqwest::Method::PUT, path, body).await.0
    }
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send_json(reqwest::Method::POST, path, body).await
    }
    async fn send_json(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// One suite function as two tests: on the memory store and on Redis.
macro_rules! on_both_backends {
    ($suite:ident: $memory:ident, $redis:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $memory() {
            $suite(Backend::Memory).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $suite(Backend::Redis).await;
        }
    };
}

fn ids(v: &Value) -> Vec<String> {
    v["suggestions"].as_array().unwrap().iter().map(|s| s["service"]["id"].as_str().unwrap().to_owned()).collect()
}

async fn suite(backend: Backend) {
    let (app, _redis) = start(backend, ApiKeys::default()).await;
    let known = fixture().log.subjects.name(0).to_owned();

    // Suggestions for a subject with history: five, with reasons, in zh-CN by default.
    let (status, v) = app.get(&format!("/v1/users/{known}/recommendations?k=5")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["suggestions"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!(v["locale"], "zh-CN");
    let first = &v["suggestions"][0];
    assert!(!first["reasons"].as_array().unwrap().is_empty());
    assert!(first["reason_text"].as_str().unwrap().contains('「'), "{first}");
    let (_, en) = app.get(&format!("/v1/users/{known}/recommendations?k=5&locale=en")).await;
    assert!(en["suggestions"][0]["reason_text"].as_str().unwrap().is_ascii());

    // An unknown subject still gets an answer; events change it.
    let fresh = "e-new-company";
    let (status, cold) = app.get(&format!("/v1/users/{fresh}/recommendations?k=5")).await;
    assert_eq!((status, cold["fallback"].as_str()), (200, Some("no_history")), "{cold}");
    assert_eq!(cold["suggestions"].as_array().unwrap().len(), 5);
    let batch = json!({ "events": [
        { "event_id": "n1", "subject": fresh, "service": "e.entry.registration", "kind": "applied" },
        { "event_id": "n2", "subject": fresh, "service": "e.entry.registration", "kind": "completed" },
    ]});
    let (status, r) = app.post("/v1/events", &batch.to_string()).await;
    assert_eq!((status, r["accepted"].as_u64()), (200, Some(2)), "{r}");
    let (_, warm) = app.get(&format!("/v1/users/{fresh}/recommendations?k=5")).await;
    assert_ne!(ids(&cold), ids(&warm));
    let next: Vec<&Value> = warm["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["reasons"].as_array().unwrap().contains(&json!("NEXT_IN_BUNDLE")))
        .collect();
    assert!(!next.is_empty(), "the opening bundle's next steps are suggested: {warm}");
    assert!(next[0]["reason_text"].as_str().unwrap().contains("开办企业一件事"), "{}", next[0]);

    // Idempotent replay.
    let (status, r) = app.post("/v1/events", &batch.to_string()).await;
    assert_eq!((status, r["accepted"].as_u64(), r["duplicates"].as_u64()), (200, Some(0), Some(2)), "{r}");

    // Bad inputs: the right 4xx, and nothing of the batch is stored.
    let good = json!({ "event_id": "g1", "subject": fresh, "service": "e.entry.seal", "kind": "applied" });
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "bad_json"),
        (json!({ "events": [good, { "event_id": "b1", "subject": fresh, "service": "e.entry.seal", "kind": "applied", "extra": 1 }] }).to_string(), 400, "bad_json"),
        (json!({ "events": [good, { "event_id": "b2", "subject": "bad id", "service": "e.entry.seal", "kind": "applied" }] }).to_string(), 400, "bad_event"),
        (json!({ "events": [good, { "event_id": "b3", "subject": fresh, "service": "x.nowhere", "kind": "applied" }] }).to_string(), 422, "unknown_service"),
        (json!({ "events": [good, { "event_id": "b4", "subject": fresh, "service": "e.entry.seal", "kind": "rated", "rating": 9 }] }).to_string(), 400, "bad_event"),
        (json!({ "events": vec![good.clone(); 101] }).to_string(), 400, "batch_too_large"),
        // Far in the future it would freeze the profile window: refused.
        (json!({ "event_id": "b5", "subject": fresh, "service": "e.entry.seal", "kind": "applied", "at": "9999-12-31T23:59:59Z" }).to_string(), 422, "event_in_future"),
    ];
    for (body, want, code) in cases {
        let (status, r) = app.post("/v1/events", &body).await;
        assert_eq!((status, r["code"].as_str()), (want, Some(code)), "{body:.80}: {r}");
    }
    let (_, r) = app.post("/v1/events", &good.to_string()).await;
    assert_eq!(r["accepted"], 1, "the good event of the refused batches was never stored: {r}");
    // A clock a little ahead is tolerated (an hour, within the default day); the refusal
    // above named the limit and the server's time.
    let ahead = tongban_features::time::Timestamp(app.state.now() + 3600).to_string();
    let soon = json!({ "event_id": "b6", "subject": fresh, "service": "e.entry.seal", "kind": "viewed", "at": ahead });
    let (status, r) = app.post("/v1/events", &soon.to_string()).await;
    assert_eq!((status, r["accepted"].as_u64()), (200, Some(1)), "{r}");

    // An event older than a full profile window is acknowledged as too late, not as a
    // duplicate (the default window is 64 events).
    let late_subject = "u-late";
    let events: Vec<Value> = (0..70)
        .map(|i| json!({ "event_id": format!("w{i}"), "subject": late_subject, "service": "p.med.reimburse", "kind": "viewed",
            "at": format!("2025-06-{:02}T{:02}:00:00Z", 1 + i / 24, i % 24) }))
        .collect();
    let (_, r) = app.post("/v1/events", &json!({ "events": events }).to_string()).await;
    assert_eq!(r["accepted"], 70, "{r}");
    let old = json!({ "event_id": "w-old", "subject": late_subject, "service": "p.med.reimburse", "kind": "viewed", "at": "2024-01-01T00:00:00Z" });
    let (status, r) = app.post("/v1/events", &old.to_string()).await;
    assert_eq!((status, r["too_late"].as_u64(), r["duplicates"].as_u64()), (200, Some(1), Some(0)), "{r}");

    // Feedback is stored as an event.
    let fb = json!({ "event_id": "f1", "subject": fresh, "service": "e.entry.seal", "action": "dismissed" });
    let (status, r) = app.post("/v1/feedback", &fb.to_string()).await;
    assert_eq!((status, r["accepted"].as_u64()), (200, Some(1)), "{r}");

    // Bad query parameters.
    for (q, code) in [
        ("k=0", "bad_k"),
        ("locale=fr", "bad_locale"),
        ("mode=random", "bad_mode"),
        ("exclude=x.none", "unknown_service"),
        ("category=moon", "bad_category"),
    ] {
        let (_, r) = app.get(&format!("/v1/users/{known}/recommendations?{q}")).await;
        assert_eq!(r["code"], code, "{q}: {r}");
    }
    let (status, r) = app.get(&format!("/v1/users/{known}/recommendations?unknown=1")).await;
    assert_eq!((status, r["code"].as_str()), (400, Some("bad_query")), "{r}");
    let (status, r) = app.get(&format!("/v1/users/{known}/recommendations?k=abc")).await;
    assert_eq!((status, r["code"].as_str()), (400, Some("bad_query")), "{r}");

    // Guidance, related, popular, sessions.
    let (status, g) = app.get("/v1/services/e.entry.registration?locale=en").await;
    assert_eq!(status, 200);
    assert!(g["materials"].as_array().unwrap().iter().any(|m| m["shared"] == true), "{g}");
    assert!(g["bundles"][0]["name"].as_str().is_some());
    let (status, r) = app.get("/v1/services/e.entry.registration/related?k=3").await;
    assert_eq!((status, r["related"].as_array().map(Vec::len)), (200, Some(3)), "{r}");
    let (status, p) = app.get("/v1/services/popular?segment=enterprise:S&k=4").await;
    assert_eq!(
        (status, p["suggestions"].as_array().map(Vec::len), p["mode"].as_str()),
        (200, Some(4), Some("popular")),
        "{p}"
    );
    let (status, s) = app
        .post("/v1/sessions/recommendations", &json!({ "recent": ["e.entry.registration"], "k": 3 }).to_string())
        .await;
    assert_eq!((status, s["suggestions"].as_array().map(Vec::len)), (200, Some(3)), "{s}");
    let (status, _) = app.get("/v1/services/x.nowhere").await;
    assert_eq!(status, 404);

    // Erasure.
    let r = app.client.delete(format!("{}/v1/users/{fresh}", app.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (_, after) = app.get(&format!("/v1/users/{fresh}/recommendations?k=5")).await;
    assert!(!after["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["reasons"].as_array().unwrap().contains(&json!("NEXT_IN_BUNDLE"))));

    // Operations.
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(
        (status, ready["store"].as_str()),
        (200, Some(if backend == Backend::Redis { "redis" } else { "memory" }))
    );
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("tongban_http_request_duration_seconds_bucket{route=\"/v1/users/{id}/recommendations\""),
        "{metrics}"
    );
    assert!(metrics.contains("tongban_events_ingested_total 75"), "{metrics}");
    // The exposition format in full: HELP and TYPE for every family, and the process's own.
    assert!(
        metrics.contains("# HELP tongban_http_requests_total ")
            && metrics.contains("# TYPE tongban_pushes_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("process_resident_memory_bytes "), "{metrics}");
}

on_both_backends!(suite: the_api_works_on_the_memory_store, the_api_works_on_redis);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_key_the_console_is_open_and_says_so_on_every_page() {
    let (app, _redis) = start(Backend::Memory, ApiKeys::default()).await;
    // An accepted event reaches the console's analytics; a replay of it does not count twice.
    let rated = json!({ "event_id": "rate-1", "subject": "p-rater", "service": "p.death.hukou_cancel", "kind": "rated", "rating": 1 });
    for _ in 0..2 {
        assert_eq!(app.post("/v1/events", &rated.to_string()).await.0, 200);
    }
    let page = app
        .client
        .get(format!("{}/console/ratings?service=p.death.hukou_cancel&lang=en", app.base))
        .send()
        .await
        .unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"service-detail\""), "the rated service is counted: {page}");
    let detail = &page[page.find("id=\"service-detail\"").unwrap()..];
    assert!(detail.contains("Ratings <strong>1</strong>"), "counted once: {detail}");
    for lang in ["zh-CN", "en"] {
        for page in ["", "models", "pushes", "ratings", "journeys", "approvals", "subjects"] {
            let r = app.client.get(format!("{}/console/{page}?lang={lang}", app.base)).send().await.unwrap();
            assert_eq!(r.status(), 200, "/console/{page}");
            let cookie = r.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
            let body = r.text().await.unwrap();
            assert!(body.contains("id=\"open-mode\""), "/console/{page} in {lang} does not say it is open");
            assert!(body.contains(&format!("lang=\"{lang}\"")), "/console/{page} not in {lang}");
        }
    }
    // Open is not unguarded: an action without the session's CSRF token changes nothing.
    let r =
        app.client.post(format!("{}/console/models/rollback", app.base)).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_every_worker_drops_is_dead_lettered_not_retried_forever() {
    let (app, _redis) = start(Backend::Memory, ApiKeys::default()).await;
    no_quiet_hours(&app, "co-poison", &[]).await;
    complete(&app, "co-poison", "e.entry.registration", None).await;
    let id = next_step_id("co-poison", "b.e.open");
    // Two workers take it and stop without an answer (as a worker that crashes on it would).
    let q = &app.state.queue;
    assert_eq!(q.claim("crashed-1", 10, 1000).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(q.claim("crashed-2", 10, 50).await.unwrap().len(), 1, "reclaimed once");
    tokio::time::sleep(Duration::from_millis(60)).await;
    // A worker allowing two attempts reclaims it a second time: dead, not delivered.
    let mut w = test_worker(&app.state, None, 2);
    w.cfg.reclaim_idle_ms = 50;
    w.round().await.unwrap();
    let rec = app.wait_status(&id, "dead").await;
    assert!(rec["detail"].as_str().unwrap().contains("reclaimed from stopped workers"), "{rec}");
    assert_eq!(app.get("/v1/users/co-poison/inbox").await.1["messages"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_push_id_key_push_ids_are_keyed_hmacs() {
    let key: &'static [u8] = b"push-id-key-for-the-test";
    let opts = Opts { worker: true, push_key: Some(key), ..Opts::default() };
    let (app, _redis) = start_opts(Backend::Memory, ApiKeys::default(), opts).await;
    no_quiet_hours(&app, "co-keyed", &[]).await;
    complete(&app, "co-keyed", "e.entry.registration", None).await;
    let inbox = app.wait_inbox("co-keyed", 1).await;
    let id = inbox["messages"][0]["id"].as_str().unwrap().to_owned();
    let window = fixture().now;
    let keyed = tongban_server::push::IdKey::new(Some(key)).unwrap();
    assert_eq!(id, keyed.id(&sid("co-keyed"), "b.e.open", Trigger::NextStep, window));
    assert_ne!(id, push_id(&sid("co-keyed"), "b.e.open", Trigger::NextStep, window), "not the plain hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_by_scope() {
    let keys =
        ApiKeys { portal: vec!["portal-k".into()], ingest: vec!["ingest-k".into()], operator: vec!["op-k".into()] };
    let (app, _) = start(Backend::Memory, keys).await;
    let url = format!("{}/v1/services/popular", app.base);
    assert_eq!(app.client.get(&url).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(app.client.get(&url).header("x-api-key", "wrong").send().await.unwrap().status().as_u16(), 401);
    assert_eq!(app.client.get(&url).header("x-api-key", "portal-k").send().await.unwrap().status().as_u16(), 200);
    let ev = json!({ "event_id": "k1", "subject": "u1", "service": "p.daily.id_renew", "kind": "applied" }).to_string();
    let post = |key: &'static str| {
        app.client
            .post(format!("{}/v1/events", app.base))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(ev.clone())
            .send()
    };
    assert_eq!(post("portal-k").await.unwrap().status().as_u16(), 403);
    assert_eq!(post("ingest-k").await.unwrap().status().as_u16(), 200);
    let admin = format!("{}/admin/models", app.base);
    assert_eq!(app.client.get(&admin).header("x-api-key", "ingest-k").send().await.unwrap().status().as_u16(), 403);
    assert_eq!(app.client.get(&admin).header("x-api-key", "op-k").send().await.unwrap().status().as_u16(), 200);
    // Operations routes need no key.
    assert_eq!(app.get("/healthz").await.0, 200);
}

/// Errors the router answers itself carry problem bodies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_kept_or_made_and_answered_back() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let url = format!("{}/v1/services/popular?k=1", app.base);
    let r = app.client.get(&url).header("x-request-id", "portal-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "portal-42");
    let made = app.client.get(&url).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let again = app.client.get(&url).send().await.unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id);
    // Errors too (the problem body is made after the handler).
    let missing = app.client.get(format!("{}/nowhere", app.base)).header("x-request-id", "p-1").send().await.unwrap();
    assert_eq!((missing.status().as_u16(), missing.headers()["x-request-id"].to_str().unwrap()), (404, "p-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_answers_a_problem_body() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let r = app.client.delete(format!("{}/v1/events", app.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers().contains_key("allow"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

/// Every route with a scope answers 401 to a request without a key before it reads the body:
/// a broken body never gets a parser's answer, and an unauthenticated client learns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401_before_any_body_parsing() {
    let keys =
        ApiKeys { portal: vec!["portal-k".into()], ingest: vec!["ingest-k".into()], operator: vec!["op-k".into()] };
    let (app, _) = start(Backend::Memory, keys).await;
    let (_, doc) = app.get("/openapi.json").await;
    let mut protected = 0;
    for (path, method, op) in operations(&doc) {
        if op["tags"][0] == "ops" {
            continue;
        }
        // The document of a keyed server declares the key on exactly these routes.
        assert_eq!(op["security"][0]["apiKey"], json!([]), "{method} {path}");
        protected += 1;
        let url = format!("{}{}", app.base, path.replace("{id}", "u-401").replace("{msg}", "TB-0"));
        let req = match method.as_str() {
            "get" => app.client.get(&url),
            "post" => app.client.post(&url),
            "put" => app.client.put(&url),
            "delete" => app.client.delete(&url),
            m => panic!("unexpected method {m}"),
        };
        let r = req.header("content-type", "application/json").body("{").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{method} {path}: {body}");
    }
    assert!(protected >= 18, "{protected} protected routes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_route_and_every_route_answers() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(operations(&doc).len() >= 24, "{} operations", operations(&doc).len());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{}", app.base, path.replace("{id}", "e.entry.registration").replace("{msg}", "TB-0"));
            let req = match method.as_str() {
                "get" => app.client.get(&url),
                "post" => app.client.post(&url).header("content-type", "application/json").body("{}"),
                "put" => app.client.put(&url).header("content-type", "application/json").body("{}"),
                "delete" => app.client.delete(&url),
                m => panic!("unexpected method {m}"),
            };
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            // A 404 about a missing message is the route answering; a missing route says "route".
            let route_missing = status == 404 && body["detail"].as_str().is_none_or(|d| d.starts_with("route"));
            assert!(!route_missing && status != 405, "{method} {path} answered {status}: {body}");
        }
    }
    // A route missing from the document answers 404.
    assert_eq!(app.get("/v1/nothing").await.0, 404);
    // Open (no keys): no route asks for a key or answers 401.
    assert!(!doc.to_string().contains("\"security\""), "an open server declares no security");
    assert!(doc["paths"]["/v1/events"]["post"]["responses"]["401"].is_null());
    // Closed sets come from the domain's lists; limits are the server's.
    let kinds = &doc["components"]["schemas"]["Event"]["properties"]["kind"]["enum"];
    assert_eq!(kinds.as_array().unwrap().len(), tongban_features::domain::EventKind::ALL.len(), "{kinds}");
    let k = operations(&doc)
        .into_iter()
        .find(|(p, m, _)| p == "/v1/users/{id}/recommendations" && m == "get")
        .map(|(_, _, op)| op["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "k").unwrap().clone())
        .unwrap();
    assert_eq!((k["schema"]["minimum"].as_u64(), k["schema"]["maximum"].as_u64()), (Some(1), Some(50)), "{k}");
    // Every id in the document has the pattern the domain checks.
    let text = doc.to_string();
    let stated = tongban_features::domain::ID_PATTERN;
    assert!(text.matches(&serde_json::to_string(stated).unwrap()).count() >= 10, "{stated}");
    for p in text.split("\"pattern\":").skip(1) {
        let p = p.split(",\"").next().unwrap();
        assert!(p.contains("[A-Za-z0-9._:-]") || p.contains("[ -~]"), "an unexpected pattern {p}");
    }
    // Every operation documents its answer and the problem bodies it can give.
    for (path, method, op) in operations(&doc) {
        let codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(codes.iter().any(|c| c.starts_with('2')), "{method} {path}: {codes:?}");
        assert!(codes.iter().any(|c| *c == "500"), "{method} {path}: {codes:?}");
    }
    // The docs page is Swagger UI, served from the binary.
    let r = app.client.get(format!("{}/docs/", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("swagger-ui"));
    let r = app.client.get(format!("{}/docs/swagger-ui-bundle.js", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 100_000, "the bundle is built in");
}

/// Catalogue and popularity answers carry an ETag per model, language and query, and a caller
/// holding it gets 304; the language comes from `locale`, else from Accept-Language.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_answers_are_cacheable_and_follow_accept_language() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let get = |path: &str, headers: &[(&'static str, &str)]| {
        let mut req = app.client.get(format!("{}{path}", app.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    for path in
        ["/v1/services/p.daily.id_renew", "/v1/services/p.daily.id_renew/related?k=3", "/v1/services/popular?k=3"]
    {
        let r = get(path, &[]).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["cache-control"], "max-age=300");
        assert_eq!(r.headers()["vary"], "accept-language");
        let tag = r.headers()["etag"].to_str().unwrap().to_owned();
        let again = get(path, &[("if-none-match", &tag)]).await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], tag.as_str());
        assert!(again.bytes().await.unwrap().is_empty());
        // Another language is another answer, with another tag.
        let en = get(path, &[("if-none-match", &tag), ("accept-language", "en-US,en;q=0.9,zh;q=0.5")]).await.unwrap();
        assert_eq!(en.status(), 200, "{path}");
        assert_ne!(en.headers()["etag"], tag.as_str());
        assert_eq!(get(path, &[("if-none-match", "\"stale\"")]).await.unwrap().status(), 200);
    }
    let locale_of = |v: &Value| v["locale"].as_str().unwrap_or_default().to_owned();
    let r: Value =
        get("/v1/services/popular", &[("accept-language", "en-GB,zh;q=0.8")]).await.unwrap().json().await.unwrap();
    assert_eq!(locale_of(&r), "en");
    let r: Value =
        get("/v1/services/popular", &[("accept-language", "fr, zh-HK;q=0.5")]).await.unwrap().json().await.unwrap();
    assert_eq!(locale_of(&r), "zh-CN");
    // An explicit locale wins over the header.
    let r: Value = get("/v1/users/u1/recommendations?locale=zh-CN", &[("accept-language", "en")])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(locale_of(&r), "zh-CN");
    let r: Value =
        get("/v1/users/u1/recommendations", &[("accept-language", "en")]).await.unwrap().json().await.unwrap();
    assert_eq!(locale_of(&r), "en");
    let name = r["suggestions"][0]["service"]["name"].as_str().unwrap();
    assert!(name.is_ascii(), "an English name: {name}");
}

/// With a models directory, only files inside it are activated; outside (or escaping it with
/// `..` or a link) answers as an unreadable path would, telling nothing about the file system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_activated_only_from_the_models_directory() {
    let f = fixture();
    let models = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(f.model_file.path(), models.path().join("v2.tbm")).unwrap();
    std::fs::copy(f.model_file.path(), elsewhere.path().join("v3.tbm")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("v3.tbm"), models.path().join("link.tbm")).unwrap();
    let opts = Opts { models_dir: Some(models.path().to_owned()), ..Opts::default() };
    let (app, _) = start_opts(Backend::Memory, ApiKeys::default(), opts).await;
    let activate = |path: String| {
        let app = &app;
        async move { app.post("/admin/models", &json!({ "path": path }).to_string()).await }
    };
    let (status, r) = activate("v2.tbm".into()).await;
    assert_eq!(status, 200, "a file of the directory, by name: {r}");
    let (status, r) = activate(models.path().join("v2.tbm").display().to_string()).await;
    assert_eq!(status, 200, "and by its absolute path: {r}");
    let outside = elsewhere.path().join("v3.tbm").display().to_string();
    let escape = format!("../{}/v3.tbm", elsewhere.path().file_name().unwrap().to_str().unwrap());
    for path in [outside, escape, "link.tbm".into(), "/etc/passwd".into(), "missing.tbm".into()] {
        let (status, r) = activate(path.clone()).await;
        assert_eq!((status, r["code"].as_str()), (422, Some("bad_model")), "{path}: {r}");
        assert!(r["detail"].as_str().unwrap().ends_with("no readable model file there"), "{path}: {r}");
    }
}

/// Past the connection cap the server stops accepting: a new client waits until one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let (app, _) =
        start_opts(Backend::Memory, ApiKeys::default(), Opts { max_connections: 2, ..Opts::default() }).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let idle: Vec<tokio::net::TcpStream> =
        connect_all(vec![tokio::net::TcpStream::connect(&addr), tokio::net::TcpStream::connect(&addr)]).await;
    let waiting = tokio::time::timeout(Duration::from_millis(700), app.get("/healthz")).await;
    assert!(waiting.is_err(), "a third connection is not served while two are open");
    drop(idle);
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(5), app.get("/healthz")).await.expect("served once a slot is free");
    assert_eq!(status, 200);
}

async fn connect_all<F: std::future::Future<Output = std::io::Result<tokio::net::TcpStream>>>(
    fs: Vec<F>,
) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await.unwrap());
    }
    // Let the server accept both before the test goes on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    out
}

/// CORS is off unless origins are named; a named origin gets its preflight answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_on_for_named_origins() {
    let preflight = |app: &App, origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/v1/services/popular", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key")
            .send()
    };
    let (closed, _) = start(Backend::Memory, ApiKeys::default()).await;
    let r = preflight(&closed, "https://portal.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let opts = Opts { cors: vec!["https://portal.example"], ..Opts::default() };
    let (open, _) = start_opts(Backend::Memory, ApiKeys::default(), opts).await;
    let r = preflight(&open, "https://portal.example").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://portal.example");
    assert!(r.headers()["access-control-allow-headers"].to_str().unwrap().contains("x-api-key"));
    let r = preflight(&open, "https://elsewhere.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert!(Settings::parse_origin("https://portal.example/path").is_err());
    assert!(Settings::parse_origin("portal.example").is_err());
}

/// `/version` names the build and the active model; problem bodies carry the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_request_ids() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let (status, v) = app.get("/version").await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(!v["commit"].as_str().unwrap().is_empty());
    assert_eq!(v["model"], app.get("/readyz").await.1["model"]);
    // The caller's id is carried into the problem body.
    let r = app
        .client
        .get(format!("{}/v1/users/u1/recommendations?k=0", app.base))
        .header("x-request-id", "portal-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-request-id"], "portal-req-42");
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["code"].as_str(), body["request_id"].as_str()), (Some("bad_k"), Some("portal-req-42")));
    // Without one, the server's own id is in both the header and the body, also on errors
    // answered below the handlers (405).
    let r = app.client.delete(format!("{}/v1/events", app.base)).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["request_id"].as_str(), Some(id.as_str()));
}

/// (path, method, operation) of every operation in an OpenAPI document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            out.push((path.clone(), method.clone(), op.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_refuses_writes_and_still_answers_suggestions() {
    let (app, redis) = start(Backend::Redis, ApiKeys::default()).await;
    let mut redis = redis.unwrap();
    redis.kill();
    let ev = json!({ "event_id": "o1", "subject": "u1", "service": "p.daily.id_renew", "kind": "applied" }).to_string();
    let (status, r) = app.post("/v1/events", &ev).await;
    assert_eq!((status, r["code"].as_str()), (503, Some("store_unavailable")), "{r}");
    let (status, v) = app.get("/v1/users/u1/recommendations?k=3").await;
    assert_eq!((status, v["fallback"].as_str()), (200, Some("store_unavailable")), "{v}");
    assert_eq!(v["suggestions"].as_array().unwrap().len(), 3);
    assert_eq!(app.get("/readyz").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_swap_under_load_and_a_bad_file_never_replaces_the_active_one() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let app = Arc::new(app);
    let known = fixture().log.subjects.name(1).to_owned();
    let mut load = Vec::new();
    for _ in 0..4 {
        let app = app.clone();
        let known = known.clone();
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                statuses.push(app.get(&format!("/v1/users/{known}/recommendations?k=5")).await.0);
            }
            statuses
        }));
    }
    let good = fixture().model_file.path().to_str().unwrap().to_owned();
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), b"TONGBAN-MODEL\nbroken").unwrap();
    for _ in 0..5 {
        let (status, r) = app.post("/admin/models", &json!({ "path": good }).to_string()).await;
        assert_eq!(status, 200, "{r}");
        let (status, r) = app.post("/admin/models", &json!({ "path": bad.path() }).to_string()).await;
        assert_eq!((status, r["code"].as_str()), (422, Some("bad_model")), "{r}");
    }
    // A FIFO would block a read forever and /dev/zero never ends: neither is read, and the
    // answer is the same as for a path that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let missing = dir.path().join("missing.model");
    let mut details = Vec::new();
    for path in [fifo.as_path(), Path::new("/dev/zero"), missing.as_path(), dir.path()] {
        let body = json!({ "path": path }).to_string();
        let asked = tokio::time::timeout(Duration::from_secs(5), app.post("/admin/models", &body));
        let (status, r) = asked.await.expect("answered at once, never blocked");
        assert_eq!((status, r["code"].as_str()), (422, Some("bad_model")), "{}: {r}", path.display());
        details.push(r["detail"].as_str().unwrap().replace(path.to_str().unwrap(), "PATH"));
    }
    assert!(details.windows(2).all(|w| w[0] == w[1]), "the answers tell nothing about the path: {details:?}");
    assert_eq!(app.get("/healthz").await.0, 200);
    for h in load {
        assert!(h.await.unwrap().iter().all(|&s| s == 200));
    }
    let (_, list) = app.get("/admin/models").await;
    assert_eq!(list["models"].as_array().unwrap().len(), 6);
    let (status, _) = app.post("/admin/models/rollback", "").await;
    assert_eq!(status, 200);
    // The history is bounded, and one activation of a file activated many times is active.
    for _ in 0..10 {
        assert_eq!(app.post("/admin/models", &json!({ "path": good }).to_string()).await.0, 200);
    }
    let (_, list) = app.get("/admin/models").await;
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), tongban_server::models::MODEL_HISTORY, "{list}");
    assert_eq!(models.iter().filter(|m| m["active"] == true).count(), 1, "{list}");
    assert_eq!(models.last().unwrap()["active"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let keys = ApiKeys { portal: vec!["a".into(), "b".into()], ..ApiKeys::default() };
    let (app, _) = start_opts(Backend::Memory, keys, Opts { rate: 5, ..Opts::default() }).await;
    let url = format!("{}/v1/services/popular?k=1", app.base);
    let mut limited = None;
    for _ in 0..20 {
        let r = app.client.get(&url).header("x-api-key", "a").send().await.unwrap();
        if r.status().as_u16() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("key a is limited within 20 quick requests at 5/s");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(app.client.get(&url).header("x-api-key", "b").send().await.unwrap().status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let big = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    // Over raw TCP, sending a little more than the limit (1 MiB) of the declared 2 MiB: the
    // server answers once it has read past the limit and closes the connection. An HTTP client
    // that goes on writing the rest meets the closed socket (a broken pipe under load) before
    // it reads the answer; stopping short leaves the server nothing unread, so it closes
    // cleanly and the answer arrives.
    let mut s = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        big.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&big.as_bytes()[..Settings::default().max_body_bytes + 4096]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer:.300}");
}

async fn push_flow(backend: Backend) {
    let (app, _redis) = start(backend, ApiKeys::default()).await;
    let opening = |subject: &str, id: &str| {
        json!({ "events": [
            { "event_id": format!("{id}-a"), "subject": subject, "service": "e.entry.registration", "kind": "applied" },
            { "event_id": format!("{id}-c"), "subject": subject, "service": "e.entry.registration", "kind": "completed" },
        ]})
        .to_string()
    };
    // The pinned clock is 00:00 in Shanghai: inside the default quiet hours, so the message
    // waits (stored, not shown yet).
    let (_, r) = app.post("/v1/events", &opening("co-quiet", "q")).await;
    assert_eq!(r["pushed"], 1, "{r}");
    let (_, inbox) = app.get("/v1/users/co-quiet/inbox").await;
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 0, "deferred by quiet hours: {inbox}");
    let quiet_id = next_step_id("co-quiet", "b.e.open");
    let rec = app.wait_status(&quiet_id, "deferred").await;
    assert!(rec["decisions"].to_string().contains("quiet_hours:deferred_to"), "{rec}");
    assert_eq!(rec["trigger"], "next_step");

    // Without quiet hours the guidance is in the inbox at once, in zh-CN, naming the bundle,
    // its next steps and their materials.
    assert_eq!(app.put("/v1/users/co-open/preferences", &json!({ "quiet_hours": null }).to_string()).await, 200);
    let r: Value = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "application/json")
        .header("x-request-id", "portal-ingest-7")
        .body(opening("co-open", "o"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    let inbox = app.wait_inbox("co-open", 1).await;
    let msgs = inbox["messages"].as_array().unwrap();
    assert_eq!((msgs.len(), inbox["unread"].as_u64()), (1, Some(1)), "{inbox}");
    let m = &msgs[0];
    assert!(m["title"].as_str().unwrap().contains("开办企业一件事"), "{m}");
    let body = m["body"].as_str().unwrap();
    assert!(body.contains("公章刻制备案") && body.contains("办理时限") && body.contains("办理入口"), "{body}");
    assert!(!body.contains("((") && !body.contains("))"), "every field filled: {body}");
    assert!(m["sms"].as_str().unwrap().chars().count() <= 70);
    assert!(m["id"].as_str().unwrap().starts_with("TB-") && !m["id"].as_str().unwrap().contains("co-open"));
    let rec = app.wait_status(m["id"].as_str().unwrap(), "delivered").await;
    assert_eq!((rec["detail"].as_str(), rec["model"].as_str()), (Some("inbox"), m["model"].as_str()), "{rec}");
    assert!(!rec.to_string().contains("co-open"), "records name no subject: {rec}");
    // The record leads back to the request that made the push.
    assert_eq!(rec["request_id"], "portal-ingest-7", "{rec}");

    // Another step of the same bundle in the same window: de-duplicated, not a second message.
    let seal = json!({ "event_id": "o-seal", "subject": "co-open", "service": "e.entry.seal", "kind": "completed" });
    let (_, r) = app.post("/v1/events", &seal.to_string()).await;
    assert_eq!((r["accepted"].as_u64(), r["pushed"].as_u64()), (Some(1), Some(0)), "{r}");

    // Read marks.
    let url = format!("/v1/users/co-open/inbox/{}/read", m["id"].as_str().unwrap());
    assert_eq!(app.client.post(format!("{}{url}", app.base)).send().await.unwrap().status().as_u16(), 204);
    let (_, inbox) = app.get("/v1/users/co-open/inbox").await;
    assert_eq!(inbox["unread"], 0);
    // The open came back as an event.
    let profile = app.state.store.profile(&sid("co-open")).await.unwrap().unwrap();
    assert!(profile.recent().iter().any(|r| r.kind == tongban_features::domain::EventKind::PushOpened));
    assert_eq!(
        app.client
            .post(format!("{}/v1/users/co-open/inbox/TB-NONE/read", app.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    // The off switch.
    assert_eq!(app.put("/v1/users/co-off/preferences", &json!({ "push": false }).to_string()).await, 200);
    let (_, r) = app.post("/v1/events", &opening("co-off", "f")).await;
    assert_eq!((r["accepted"].as_u64(), r["pushed"].as_u64()), (Some(2), Some(0)), "{r}");

    // Bad preferences are refused; personalisation off gives popularity only.
    assert_eq!(app.put("/v1/users/co-off/preferences", &json!({ "quiet_hours": [25, 3] }).to_string()).await, 400);
    assert_eq!(app.put("/v1/users/co-open/preferences", &json!({ "personalised": false }).to_string()).await, 200);
    let (_, v) = app.get("/v1/users/co-open/recommendations?k=3").await;
    assert_eq!((v["mode"].as_str(), v["fallback"].as_str()), (Some("popular"), Some("personalisation_off")), "{v}");

    // A re-proposal skipped by the policy (here the off switch) never overwrites the record of
    // the push already delivered under its id.
    assert_eq!(app.put("/v1/users/co-open/preferences", &json!({ "push": false }).to_string()).await, 200);
    complete(&app, "co-open", "e.tax.invoice", None).await;
    let (_, rec) = app.get(&format!("/admin/pushes/{}", m["id"].as_str().unwrap())).await;
    assert_eq!(rec["status"], "delivered", "{rec}");

    // Erasure takes the inbox and preferences too.
    assert_eq!(
        app.client.delete(format!("{}/v1/users/co-open", app.base)).send().await.unwrap().status().as_u16(),
        204
    );
    let (_, inbox) = app.get("/v1/users/co-open/inbox").await;
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 0);
    let (_, prefs) = app.get("/v1/users/co-open/preferences").await;
    assert_eq!(prefs["personalised"], true);
}

on_both_backends!(push_flow: a_completed_bundle_step_puts_guidance_in_the_inbox_memory, a_completed_bundle_step_puts_guidance_in_the_inbox_redis);

#[test]
fn templates_with_an_unknown_placeholder_or_a_long_sms_are_refused_at_start_up() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    std::fs::copy(base.join("en.toml"), dir.path().join("en.toml")).unwrap();
    let zh = std::fs::read_to_string(base.join("zh-CN.toml")).unwrap();
    std::fs::write(dir.path().join("zh-CN.toml"), zh.replace("((bundle))下一步", "((nickname))下一步")).unwrap();
    let err = tongban_server::push::Templates::load(dir.path(), &f.catalogue).unwrap_err();
    assert!(err.contains("unknown placeholder ((nickname))") && err.contains("zh-CN.toml"), "{err}");
    std::fs::write(dir.path().join("zh-CN.toml"), zh.replace("详见一网通办", &"详见一网通办".repeat(6))).unwrap();
    let err = tongban_server::push::Templates::load(dir.path(), &f.catalogue).unwrap_err();
    assert!(err.contains("field `sms`") && err.contains("at most 70"), "{err}");
    // Optional blocks are checked like plain placeholders.
    std::fs::write(dir.path().join("zh-CN.toml"), zh.replace("((deadline??", "((due_date??")).unwrap();
    let err = tongban_server::push::Templates::load(dir.path(), &f.catalogue).unwrap_err();
    assert!(err.contains("unknown placeholder ((due_date))") && err.contains("[next_step]"), "{err}");
}

/// Posts the completion of `service` by `subject` (at the pinned clock, or `at`).
async fn complete(app: &App, subject: &str, service: &str, at: Option<&str>) -> Value {
    let mut e = json!({ "event_id": format!("{subject}-{service}-done"), "subject": subject, "service": service, "kind": "completed" });
    if let Some(at) = at {
        e["at"] = json!(at);
    }
    let (status, r) = app.post("/v1/events", &e.to_string()).await;
    assert_eq!(status, 200, "{r}");
    r
}

async fn no_quiet_hours(app: &App, subject: &str, channels: &[&str]) {
    let prefs = json!({ "quiet_hours": null, "channels": channels }).to_string();
    assert_eq!(app.put(&format!("/v1/users/{subject}/preferences"), &prefs).await, 200);
}

/// Runs worker rounds until the queue has nothing ready or pending.
async fn drain(w: &Worker) {
    for _ in 0..100 {
        w.round().await.unwrap();
        let d = w.pusher.queue.depth().await.unwrap();
        if d.ready == 0 && d.pending == 0 {
            return;
        }
    }
    panic!("the queue did not drain");
}

fn next_step_id(subject: &str, bundle: &str) -> String {
    // A next step's id carries the time proposed (the pinned clock); its de-duplication slides.
    push_id(&sid(subject), bundle, Trigger::NextStep, fixture().now)
}

async fn policy_is_rechecked_at_delivery(backend: Backend) {
    let (app, _redis) = start_opts(backend, ApiKeys::default(), Opts::default()).await;
    let w = test_worker(&app.state, None, 3);
    // Queued (no worker running), then every service it names is done meanwhile: skipped.
    no_quiet_hours(&app, "co-done", &[]).await;
    assert_eq!(complete(&app, "co-done", "e.entry.registration", None).await["pushed"], 1);
    let id = next_step_id("co-done", "b.e.open");
    let (_, rec) = app.get(&format!("/admin/pushes/{id}")).await;
    assert_eq!(rec["status"], "queued", "{rec}");
    for s in rec["services"].as_array().unwrap() {
        complete(&app, "co-done", s.as_str().unwrap(), None).await;
    }
    drain(&w).await;
    let (_, rec) = app.get(&format!("/admin/pushes/{id}")).await;
    assert_eq!((rec["status"].as_str(), rec["detail"].as_str()), (Some("skipped"), Some("done_meanwhile")), "{rec}");
    let (_, inbox) = app.get("/v1/users/co-done/inbox").await;
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 0, "{inbox}");

    // A push whose deadline passed before delivery is never delivered.
    no_quiet_hours(&app, "co-late", &[]).await;
    complete(&app, "co-late", "e.entry.registration", None).await;
    drain(&w).await;
    let p = app.state.pusher.clone().unwrap();
    let (profile, _) = app.state.store.profile_and_prefs(&sid("co-late")).await.unwrap();
    let svc = p.catalogue.lookup("e.tax.invoice").unwrap();
    let cand = tongban_server::push::Candidate {
        trigger: Trigger::Deadline,
        kind: tongban_server::push::Kind::Due,
        content: tongban_server::push::Content {
            services: vec![svc],
            deadline: Some(fixture().now),
            ..Default::default()
        },
        key: "e.tax.invoice".into(),
        window: 1,
        sliding_secs: None,
        critical: true,
        expires_at: fixture().now,
        done_after: 0,
        reasons: vec!["deadline"],
        stage: p.catalogue.service(svc).category,
    };
    let prefs = tongban_server::push::Preferences { quiet_hours: None, ..Default::default() };
    let o = p.offer(&sid("co-late"), &profile.unwrap(), &prefs, &[cand], "test").await.unwrap();
    assert_eq!(o.queued, 1, "{o:?}");
    drain(&w).await;
    let (_, rec) = app.get(&format!("/admin/pushes/{}", o.ids[0])).await;
    assert_eq!((rec["status"].as_str(), rec["detail"].as_str()), (Some("skipped"), Some("expired")), "{rec}");
    assert_eq!(rec["decisions"][3], "lane:critical", "{rec}");
    let (_, inbox) = app.get("/v1/users/co-late/inbox").await;
    assert!(inbox["messages"].as_array().unwrap().iter().all(|m| m["trigger"] != "deadline"), "{inbox}");

    // The counters by status and trigger are in /metrics.
    let text = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("tongban_pushes_total{status=\"skipped\",trigger=\"next_step\"}"), "{text}");
    assert!(text.contains("tongban_push_queue{state=\"ready\"} 0"), "{text}");
}

/// A request dropped between its reservation and its enqueue: the outbox keeps the push, the
/// scan's recovery pass enqueues it once its grace is over, and the worker delivers it once.
async fn outbox_recovery(backend: Backend) {
    let (app, _redis) = start_opts(backend, ApiKeys::default(), Opts::default()).await;
    let w = test_worker(&app.state, None, 3);
    let p = app.state.pusher.clone().unwrap();
    no_quiet_hours(&app, "co-dropped", &[]).await;
    let e = json!({ "event_id": "co-dropped-1", "subject": "co-dropped", "service": "e.entry.registration", "kind": "applied" });
    assert_eq!(app.post("/v1/events", &e.to_string()).await.0, 200);
    let (profile, prefs) = app.state.store.profile_and_prefs(&sid("co-dropped")).await.unwrap();
    let (profile, prefs) = (profile.unwrap(), prefs.unwrap());
    let svc = p.catalogue.lookup("e.tax.invoice").unwrap();
    let cand = tongban_server::push::Candidate {
        trigger: Trigger::NextStep,
        kind: tongban_server::push::Kind::NextStep,
        content: tongban_server::push::Content { services: vec![svc], ..Default::default() },
        key: "b.e.open".into(),
        window: fixture().now,
        sliding_secs: Some(7 * 86_400),
        critical: false,
        expires_at: fixture().now + 30 * 86_400,
        done_after: 0,
        reasons: vec!["next_in_bundle"],
        stage: p.catalogue.service(svc).category,
    };
    let offer = tongban_server::app::Offer {
        subject: &sid("co-dropped"),
        profile: &profile,
        prefs: &prefs,
        candidates: std::slice::from_ref(&cand),
    };
    let reserved = p.reserve_offers(&[offer], "test").await.unwrap();
    let id = reserved.offered().ids[0].clone();
    // The request is dropped here: reserved, never enqueued.
    drop(reserved);
    drain(&w).await;
    assert_eq!(app.get("/v1/users/co-dropped/inbox").await.1["messages"].as_array().unwrap().len(), 0);
    let again = p.offer(&sid("co-dropped"), &profile, &prefs, std::slice::from_ref(&cand), "test").await.unwrap();
    assert_eq!(again.skipped.len(), 1, "the reservation stands: a new offer is a duplicate, {again:?}");

    let grace = tongban_server::store::OUTBOX_GRACE_MS;
    let now_ms = tongban_server::clock::wall_ms();
    assert_eq!(p.scan_at(now_ms).await.unwrap().recovered, 0, "within its grace the request may still enqueue it");
    assert_eq!(p.scan_at(now_ms + grace).await.unwrap().recovered, 1);
    assert_eq!(p.scan_at(now_ms + grace + 1).await.unwrap().recovered, 0, "enqueued once");
    drain(&w).await;
    let inbox = app.wait_inbox("co-dropped", 1).await;
    assert_eq!(inbox["messages"][0]["id"], id.as_str(), "{inbox}");
    assert_eq!(app.wait_status(&id, "delivered").await["id"], id.as_str());
    assert_eq!(p.scan_at(now_ms + 10 * grace).await.unwrap().recovered, 0, "cleared after its enqueue");

    // Enqueued twice (a clear that failed after the first enqueue): still one message.
    let twice = tongban_server::push::job(
        &p.catalogue,
        &p.templates,
        &prefs,
        &sid("co-dropped"),
        &cand,
        p.now(),
        &p.portal,
        "test",
        &p.ids,
    );
    assert_eq!(twice.message.id, id, "the same push");
    let item = tongban_server::queue::Enqueue {
        job: twice,
        due_ms: tongban_server::clock::wall_ms(),
        status: tongban_server::queue::Status::Queued,
    };
    app.state.queue.enqueue(std::slice::from_ref(&item)).await.unwrap();
    drain(&w).await;
    assert_eq!(app.get("/v1/users/co-dropped/inbox").await.1["messages"].as_array().unwrap().len(), 1);
}

on_both_backends!(outbox_recovery: a_push_reserved_by_a_dropped_request_is_recovered_and_delivered_once_memory, a_push_reserved_by_a_dropped_request_is_recovered_and_delivered_once_redis);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_steps_below_the_confidence_threshold_are_left_out() {
    // At the default threshold the digest names the seal; at 1.0 nothing is confident enough.
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    no_quiet_hours(&app, "co-sure", &[]).await;
    assert_eq!(complete(&app, "co-sure", "e.entry.registration", None).await["pushed"], 1);
    let rec = app.wait_status(&next_step_id("co-sure", "b.e.open"), "delivered").await;
    assert!(rec["reasons"].to_string().contains("model_confidence"), "{rec}");
    assert!(rec["services"].to_string().contains("e.entry.seal"), "{rec}");
    let caps = Caps { min_confidence: 1.0, ..Caps::default() };
    let (app, _) = start_opts(Backend::Memory, ApiKeys::default(), Opts { caps: Some(caps), ..Opts::default() }).await;
    no_quiet_hours(&app, "co-unsure", &[]).await;
    assert_eq!(complete(&app, "co-unsure", "e.entry.registration", None).await["pushed"], 0);
}

on_both_backends!(policy_is_rechecked_at_delivery: done_meanwhile_and_expired_pushes_are_skipped_at_delivery_memory, done_meanwhile_and_expired_pushes_are_skipped_at_delivery_redis);

/// A webhook receiver answering `status`, counting requests with a valid signature (and all).
async fn receiver(
    status: Arc<std::sync::atomic::AtomicU16>,
    delay: Duration,
) -> (String, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let valid = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(AtomicUsize::new(0));
    let (v, a) = (valid.clone(), all.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (v, a, status) = (v.clone(), a.clone(), status.clone());
            async move {
                tokio::time::sleep(delay).await;
                a.fetch_add(1, Ordering::SeqCst);
                let h = |k: &str| headers.get(k).and_then(|x| x.to_str().ok()).unwrap_or("").to_owned();
                let ts: i64 = h("x-tongban-timestamp").parse().unwrap_or(0);
                if h("x-tongban-signature") == tongban_server::deliver::sign(WEBHOOK_SECRET, ts, &body)
                    && h("x-tongban-push-id").starts_with("TB-")
                {
                    v.fetch_add(1, Ordering::SeqCst);
                }
                axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, valid, all)
}

async fn webhook_flow(backend: Backend) {
    use std::sync::atomic::{AtomicU16, Ordering};
    let status = Arc::new(AtomicU16::new(500));
    let (url, valid, all) = receiver(status.clone(), Duration::ZERO).await;
    let opts = Opts { worker: true, webhook: Some(url), max_attempts: 3, ..Opts::default() };
    let (app, _redis) = start_opts(backend, ApiKeys::default(), opts).await;

    // 500: retried with backoff, then dead-lettered after three attempts.
    no_quiet_hours(&app, "co-hook", &["sms"]).await;
    complete(&app, "co-hook", "e.entry.registration", None).await;
    let rec = app.wait_status(&next_step_id("co-hook", "b.e.open"), "dead").await;
    assert_eq!(rec["attempts"], 3, "{rec}");
    assert!(rec["detail"].as_str().unwrap().contains("500"), "{rec}");
    assert_eq!((valid.load(Ordering::SeqCst), all.load(Ordering::SeqCst)), (3, 3));
    // The inbox got it once, however many attempts the webhook took.
    assert_eq!(app.wait_inbox("co-hook", 1).await["messages"].as_array().unwrap().len(), 1);
    let (_, q) = app.get("/admin/queue").await;
    assert_eq!(q["depth"]["dead"], 1, "{q}");

    // 404: dead-lettered at once.
    status.store(404, Ordering::SeqCst);
    no_quiet_hours(&app, "co-hook4", &["app"]).await;
    complete(&app, "co-hook4", "e.entry.registration", None).await;
    let rec = app.wait_status(&next_step_id("co-hook4", "b.e.open"), "dead").await;
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert_eq!(all.load(Ordering::SeqCst), 4);

    // 200: delivered to both channels; a subject with no outbound channel gets the inbox only.
    status.store(200, Ordering::SeqCst);
    no_quiet_hours(&app, "co-hook2", &["app"]).await;
    complete(&app, "co-hook2", "e.entry.registration", None).await;
    let rec = app.wait_status(&next_step_id("co-hook2", "b.e.open"), "delivered").await;
    assert_eq!(rec["detail"], "inbox,webhook", "{rec}");
    no_quiet_hours(&app, "co-inbox", &[]).await;
    complete(&app, "co-inbox", "e.entry.registration", None).await;
    let rec = app.wait_status(&next_step_id("co-inbox", "b.e.open"), "delivered").await;
    assert_eq!(rec["detail"], "inbox", "{rec}");
    assert_eq!(all.load(Ordering::SeqCst), 5);
}

on_both_backends!(webhook_flow: webhook_failures_retry_then_dead_letter_memory, webhook_failures_retry_then_dead_letter_redis);

async fn caps_under_concurrency(backend: Backend) {
    let (app, _redis) = start_opts(backend, ApiKeys::default(), Opts::default()).await;
    let caps = Caps::default();
    let now = fixture().now;
    // Reserves `ids` for `subject` all at once; returns how many were granted.
    let run = |subject: &'static str, ids: Vec<String>, critical: bool| {
        let state = app.state.clone();
        async move {
            let tasks: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let state = state.clone();
                    tokio::spawn(
                        async move { state.store.reserve(&sid(subject), &id, now, &caps, critical).await.unwrap() },
                    )
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                ok += usize::from(t.await.unwrap().is_ok());
            }
            ok
        }
    };
    let many = |prefix: &str, n: usize| (0..n).map(|i| format!("TB-{prefix}{i:04}")).collect::<Vec<_>>();
    assert_eq!(run("cap-a", many("", 40), false).await, caps.per_day, "daily cap");
    assert_eq!(run("cap-b", vec!["TB-SAME".to_owned(); 20], false).await, 1, "one push per id");
    assert_eq!(app.state.store.reserve(&sid("cap-c"), "TB-0000", now, &caps, false).await.unwrap(), Ok(()));
    let again = app.state.store.reserve(&sid("cap-c"), "TB-0000", now, &caps, true).await.unwrap();
    assert_eq!(again, Err(tongban_server::push::Skip::Duplicate), "an id reserved in either lane is a duplicate");
    // The critical lane has its own cap, also with the normal lane full.
    assert_eq!(run("cap-a", many("C", 20), true).await, caps.critical_per_week);
    // The week: a day later the daily cap allows more, up to the weekly cap.
    let mut total = caps.per_day;
    for day in 1..7 {
        for i in 0..5 {
            let id = format!("TB-D{day}-{i}");
            total += usize::from(
                app.state.store.reserve(&sid("cap-a"), &id, now + day * 86_400, &caps, false).await.unwrap().is_ok(),
            );
        }
    }
    assert_eq!(total, caps.per_week);
}

on_both_backends!(caps_under_concurrency: caps_and_dedup_hold_under_concurrent_triggers_memory, caps_and_dedup_hold_under_concurrent_triggers_redis);

async fn scan_campaign_sensitive(backend: Backend) {
    let (app, _redis) = start_opts(backend, ApiKeys::default(), Opts::default()).await;
    let w = test_worker(&app.state, None, 3);
    let f = fixture();
    let p = app.state.pusher.clone().unwrap();

    // An ID card last renewed 20 years minus 45 days ago: inside its 90-day renewal window.
    no_quiet_hours(&app, "p-renew", &[]).await;
    let then = tongban_features::time::Timestamp(f.now - (20.0 * 365.25 * 86_400.0) as i64 + 45 * 86_400);
    complete(&app, "p-renew", "p.daily.id_renew", Some(&then.to_string())).await;
    let report = p.scan().await.unwrap();
    assert!(report.subjects >= 11 && report.queued >= 1, "{report:?}");
    drain(&w).await;
    let inbox = app.wait_inbox("p-renew", 1).await;
    let m = &inbox["messages"][0];
    assert_eq!(m["trigger"], "renewal", "{m}");
    assert!(m["body"].as_str().unwrap().contains("有效期20年"), "{m}");
    assert!(m["title"].as_str().unwrap().starts_with("请于20"), "the deadline's date: {m}");
    assert!(!m["body"].as_str().unwrap().contains("(("), "{m}");
    // A second scan in the same window adds nothing for this subject.
    p.scan().await.unwrap();
    drain(&w).await;
    assert_eq!(app.wait_inbox("p-renew", 1).await["messages"].as_array().unwrap().len(), 1);

    // A sensitive life event: one consolidated, carefully worded message of every remaining step.
    no_quiet_hours(&app, "p-bereaved", &[]).await;
    assert_eq!(complete(&app, "p-bereaved", "p.death.death_cert", None).await["pushed"], 1);
    assert_eq!(complete(&app, "p-bereaved", "p.death.cremation", None).await["pushed"], 0);
    drain(&w).await;
    let inbox = app.wait_inbox("p-bereaved", 1).await;
    let msgs = inbox["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{inbox}");
    assert_eq!(msgs[0]["trigger"], "sensitive");
    assert!(msgs[0]["services"].as_array().unwrap().len() >= 4, "{}", msgs[0]);
    assert!(msgs[0]["body"].as_str().unwrap().contains("致以关怀"), "{}", msgs[0]);

    // An operator's campaign: a dry run only counts; the real one pushes to the best n.
    let before = app.state.queue.depth().await.unwrap();
    let body = json!({ "id": "spring-1", "service": "p.daily.id_renew", "n": 3, "dry_run": true });
    let (status, dry) = app.post("/admin/campaigns", &body.to_string()).await;
    assert_eq!(status, 200, "{dry}");
    assert!(dry["eligible"].as_u64().unwrap() > 0 && dry["selected"].as_u64().unwrap() <= 3, "{dry}");
    assert_eq!(dry["queued"], 0);
    assert_eq!(app.state.queue.depth().await.unwrap(), before, "a dry run enqueues nothing");
    let body = json!({ "id": "spring-1", "service": "p.daily.id_renew", "n": 3 });
    let (_, live) = app.post("/admin/campaigns", &body.to_string()).await;
    let skipped: u64 = live["skipped"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(live["queued"].as_u64().unwrap() + skipped, live["selected"].as_u64().unwrap(), "{live}");
    assert!(live["queued"].as_u64().unwrap() > 0, "{live}");
    // The same campaign again: every push is a duplicate.
    let (_, again) = app.post("/admin/campaigns", &body.to_string()).await;
    assert_eq!(again["queued"], 0, "{again}");
    let (status, bad) =
        app.post("/admin/campaigns", &json!({ "id": "x", "service": "p.nope", "n": 3 }).to_string()).await;
    assert_eq!((status, bad["code"].as_str()), (422, Some("unknown_service")), "{bad}");
}

on_both_backends!(scan_campaign_sensitive: deadline_scan_sensitive_digest_and_campaigns_memory, deadline_scan_sensitive_digest_and_campaigns_redis);

/// Lines of the log channel's file, as (push id, reclaimed).
fn deliveries(path: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v["reclaimed"].as_bool().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_no_push() {
    let redis = RedisServer::start();
    let f = fixture();
    let store = RedisStore::connect(&redis.url(), "").await.unwrap();
    let (conn, prefix) = store.connection();
    let queue = Queue::redis(conn, &prefix, 4).await.unwrap();
    let store = Store::Redis(store);
    // Pushes go to subjects with profiles (an unknown subject's push is skipped as erased).
    let (model, _) = artifact::load(f.model_file.path(), Some(f.catalogue.clone())).unwrap();
    let profiles = model.profiles(&f.log, &[]);
    let subjects: Vec<&str> = (0..200).map(|i| f.log.subjects.name(i)).collect();
    // They allowed app pushes: every delivery also goes to a webhook that takes 50 ms to
    // answer, so that a worker spends most of its time with a batch logged and not yet
    // acknowledged, where a kill hurts most.
    let prefs =
        tongban_server::push::Preferences { channels: vec![tongban_server::push::Outbound::App], ..Default::default() };
    for (s, p) in subjects.iter().zip(&profiles) {
        store.import_profile(&sid(s), p).await.unwrap();
        store.put_prefs(&sid(s), &prefs).await.unwrap();
    }
    let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let (hook, _, hook_calls) = receiver(status, Duration::from_millis(50)).await;
    // 10:00 in Shanghai: outside quiet hours.
    let now = tongban_features::time::Timestamp::parse("2026-01-01T02:00:00Z").unwrap().0;
    let n = 10_000;
    let ids: Vec<SubjectId> = subjects.iter().map(|s| sid(s)).collect();
    let items = common::ready_pushes(&ids, n, now);
    queue.enqueue(&items).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.jsonl");
    let batch = 256;
    let spawn_with = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tongban"))
            .args([
                "worker",
                "--allow-volatile-redis",
                "--redis",
                &redis.url(),
                "--now",
                "2026-01-01T02:00:00Z",
                "--push-log",
            ])
            .arg(&log)
            .args(["--reclaim-after-ms", "500", "--scan-every-secs", "0", "--partitions", "4"])
            .args(["--batch", &batch.to_string(), "--webhook-url", &hook])
            .args(extra)
            .env("TONGBAN_WEBHOOK_SECRET", std::str::from_utf8(WEBHOOK_SECRET).unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let spawn = || spawn_with(&[]);
    let wait = |what: &str, secs: u64, done: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut first = spawn();
    // Kill once a tenth is delivered: most likely while a batch waits for the webhook.
    let lines = || std::fs::read(&log).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    wait("a tenth of the pushes", 120, &|| lines() >= n / 10);
    first.kill().unwrap(); // SIGKILL: no chance to finish its batch
    first.wait().unwrap();
    let at_kill = deliveries(&log).len();
    // The second worker serves its health and metrics.
    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut second = spawn_with(&["--metrics-addr", &health.to_string()]);
    let probe = reqwest::Client::new();
    let mut ready = None;
    for _ in 0..200 {
        if let Ok(r) = probe.get(format!("http://{health}/readyz")).send().await {
            ready = Some(r.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready.as_ref().map(|r| r["store"].clone()), Some(json!("redis")), "{ready:?}");
    let started = std::time::Instant::now();
    loop {
        let d = queue.depth().await.unwrap();
        if d.idle() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the queue did not drain: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = probe.get(format!("http://{health}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tongban_pushes_total{status=\"delivered\""), "{metrics}");
    second.kill().unwrap();
    second.wait().unwrap();
    let all = deliveries(&log);
    let unique: std::collections::HashSet<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    let lost = (0..n).filter(|i| !unique.contains(format!("TB-{i:016X}").as_str())).count();
    let duplicated = all.len() - unique.len();
    let reclaimed = all.iter().filter(|(_, r)| *r).count();
    println!(
        "SIGKILL test: {n} pushes; killed after {at_kill} deliveries; delivered {}, duplicated {duplicated}, lost {lost} ({reclaimed} reclaimed from the killed worker)",
        unique.len()
    );
    assert_eq!(lost, 0, "every push is delivered at least once");
    assert!(duplicated <= batch, "duplicates only for the batch in flight: {duplicated}");
    assert!(reclaimed >= duplicated, "every duplicate is a reclaimed delivery");
    assert!(at_kill < n, "the kill came mid-run");
    assert_eq!(queue.depth().await.unwrap().dead, 0);
    assert!(hook_calls.load(std::sync::atomic::Ordering::SeqCst) >= n, "the webhook got every push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_dead_lettered_and_lost_consumer_groups_are_recreated() {
    let (app, redis) = start_opts(Backend::Redis, ApiKeys::default(), Opts::default()).await;
    let redis = redis.unwrap();
    let w = test_worker(&app.state, None, 3);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    // An entry that is not a job, beside a real push: the push goes out, the entry is buried.
    let _: String = redis::cmd("XADD")
        .arg("test:tb:{q:0}:ready")
        .arg("*")
        .arg("job")
        .arg("not json")
        .query_async(&mut c)
        .await
        .unwrap();
    no_quiet_hours(&app, "co-poison", &[]).await;
    assert_eq!(complete(&app, "co-poison", "e.entry.registration", None).await["pushed"], 1);
    drain(&w).await;
    app.wait_status(&next_step_id("co-poison", "b.e.open"), "delivered").await;
    let d = app.state.queue.depth().await.unwrap();
    assert_eq!((d.dead, d.pending, d.ready), (1, 0, 0), "{d:?}");
    let (_, q) = app.get("/admin/queue").await;
    assert!(q["dead_letters"].to_string().contains("unreadable queued job"), "{q}");

    // Redis restarted empty (FLUSHALL): the next push recreates a stream without a group; the
    // worker recreates the groups and delivers it.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    // Readiness says the data is gone (the start-up marker vanished with it).
    let (status, ready) = app.get("/readyz").await;
    assert_eq!((status, ready["code"].as_str()), (503, Some("store_lost")), "{ready}");
    no_quiet_hours(&app, "co-after", &[]).await;
    assert_eq!(complete(&app, "co-after", "e.entry.registration", None).await["pushed"], 1);
    drain(&w).await;
    app.wait_status(&next_step_id("co-after", "b.e.open"), "delivered").await;
}

/// A client that sends its headers a line at a time (slowloris) is cut off at the header-read
/// deadline, however often it sends.
/// `serve --redis` refuses a Redis without persistence (its restart would forget every
/// opt-out and erasure), says how to fix it, and starts once snapshots are on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_redis_without_persistence() {
    let f = fixture();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = || {
        Command::new(env!("CARGO_BIN_EXE_tongban"))
            .args(["serve", "--redis", &redis.url(), "--addr", &format!("127.0.0.1:{port}"), "--model"])
            .arg(f.model_file.path())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = serve().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("has no persistence") && err.contains("appendonly yes") && err.contains("--allow-volatile-redis"),
        "{err}"
    );
    // A snapshot schedule is persistence (with a warning about what it can lose).
    let mut c = support::raw(&redis.url()).await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("save").arg("3600 1").query_async(&mut c).await.unwrap();
    let mut child = serve();
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(started.elapsed() < Duration::from_secs(60), "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    let err = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).to_string();
    assert!(err.contains("keeps snapshots only"), "{err}");
}

/// `tongban serve` on SIGTERM: `/readyz` answers 503 `draining` while requests are still
/// served for `--drain-secs`, then the process stops by itself with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_readyz_503_then_exits_cleanly() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--drain-secs", "2", "--shutdown-grace-secs", "1"])
        .args(["--log-format", "json", "--model"])
        .arg(f.model_file.path())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let status = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move { client.get(format!("{base}{path}")).send().await.map(|r| r.status().as_u16()) }
    };
    let started = std::time::Instant::now();
    while status("/readyz").await.ok() != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(60), "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One request whose path holds a subject id, with the caller's request id.
    let r = client
        .get(format!("{base}/v1/users/u-secret-77/recommendations?k=3"))
        .header("x-request-id", "req-json-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let signalled = std::time::Instant::now();
    // Draining: not ready, still serving.
    let mut drained = None;
    while signalled.elapsed() < Duration::from_millis(1500) {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            drained = Some(r.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = drained.expect("/readyz answers 503 during the drain");
    assert_eq!(body["code"], "draining", "{body}");
    assert_eq!(status("/healthz").await.unwrap(), 200);
    assert_eq!(status("/v1/services/popular?k=3").await.unwrap(), 200);
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(exit.status.success(), "exit {:?}: {stderr}", exit.status);
    assert!(stderr.contains("shutting down (SIGTERM)"), "{stderr}");
    // `--log-format json`: every log line is a JSON object, one access line per request with
    // the route template, status, latency and request id, and the subject id nowhere.
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "tongban_server::access").collect();
    let rec = access
        .iter()
        .find(|l| l["fields"]["request_id"] == "req-json-1")
        .unwrap_or_else(|| panic!("no access line for the request: {stderr}"));
    assert_eq!(rec["fields"]["route"], "/v1/users/{id}/recommendations", "{rec}");
    assert_eq!(rec["fields"]["status"], 200, "{rec}");
    assert!(rec["fields"]["micros"].as_u64().is_some(), "{rec}");
    assert!(access.len() >= 3, "one line per request: {}", access.len());
    assert!(!stderr.contains("u-secret-77"), "the subject id reached the log: {stderr}");
    assert!(signalled.elapsed() >= Duration::from_secs(2), "stopped before the drain period");
    // Drain (2 s) + grace (1 s), with room for a loaded machine.
    assert!(signalled.elapsed() < Duration::from_secs(8), "stopped only after {:?}", signalled.elapsed());
    assert!(status("/healthz").await.is_err(), "stopped accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Meanwhile an idle connection that never sends a byte is closed by the same deadline.
    let idle = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let at = std::time::Instant::now();
            let mut one = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut one)).await;
            (closed.is_ok(), at.elapsed())
        })
    };
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let limit = tongban_server::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    loop {
        assert!(started.elapsed() < limit, "still open after {:?}", started.elapsed());
        // One header line a second: each read of the server succeeds, the headers never end.
        if s.write_all(b"x-slow: 1\r\n").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                let answer = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
                break;
            }
            Err(_) => {}
        }
    }
    assert!(started.elapsed() >= tongban_server::HEADER_READ_TIMEOUT - Duration::from_secs(1));
    let (closed, after) = idle.await.unwrap();
    assert!(closed && after < limit, "an idle connection is closed at the deadline (after {after:?})");
    // The server still answers others.
    assert_eq!(app.get("/healthz").await.0, 200);
}

/// Where a test's `tongban serve` keeps its state: the durable embedded store's directory, or a
/// durable Redis (AOF, fsync always).
#[derive(Clone, Copy)]
enum Durable<'a> {
    Disk(&'a Path),
    Redis(&'a str),
}

/// The durable backends of the restart tests: a directory, or a Redis of the test's own in one
/// (killed and restarted with `restart`).
struct DurableBackend {
    dir: tempfile::TempDir,
    redis: Option<(RedisServer, String)>,
}

impl DurableBackend {
    fn new(backend: Kept) -> DurableBackend {
        let dir = tempfile::tempdir().unwrap();
        let redis = (backend == Kept::Redis).then(|| {
            let r = RedisServer::start_durable(&dir.path().join("redis"));
            let url = r.url();
            (r, url)
        });
        DurableBackend { dir, redis }
    }

    fn state(&self) -> Durable<'_> {
        match &self.redis {
            Some((_, url)) => Durable::Redis(url),
            None => Durable::Disk(self.dir.path()),
        }
    }

    /// After the server's SIGKILL: a Redis is SIGKILLed too and started again on its files
    /// (the whole deployment lost power); a directory has nothing to restart.
    fn crash_and_restart_store(&mut self) {
        if let Some((r, _)) = &mut self.redis {
            r.restart(&self.dir.path().join("redis"));
        }
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// `tongban serve` as a process of this test, on a durable store; SIGKILLed on drop.
struct ServeProcess {
    child: std::process::Child,
    base: String,
}

impl ServeProcess {
    /// SIGKILL: no chance to flush or finish anything.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `tongban serve` command line of these tests on `data`, at `addr`.
fn serve_command(data: Durable<'_>, addr: &str, extra: &[&std::ffi::OsStr]) -> Command {
    let f = fixture();
    let now = tongban_features::time::Timestamp(f.now).to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tongban"));
    cmd.args(["serve", "--catalogue", "catalogue", "--scan-every-secs", "0", "--now", &now, "--addr", addr])
        .arg("--model")
        .arg(f.model_file.path())
        .args(extra)
        .env_remove("TONGBAN_REDIS_URL")
        .env_remove("TONGBAN_MEMORY")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match data {
        Durable::Disk(dir) => cmd.arg("--data").arg(dir.join("data")),
        Durable::Redis(url) => cmd.args(["--redis", url, "--with-worker"]),
    };
    cmd
}

/// Starts `tongban serve` on `data` on a free port and waits until it answers; its standard
/// error goes to `log` (shown if it does not come up).
async fn serve_process(data: Durable<'_>, log: &Path, extra: &[&std::ffi::OsStr]) -> ServeProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = serve_command(data, &addr, extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let p = ServeProcess { child, base: format!("http://{addr}") };
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client.get(format!("{}/healthz", p.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tongban serve did not come up in 30 s: {}", std::fs::read_to_string(log).unwrap_or_default());
}

/// SIGKILL `serve` (and, on Redis, the Redis too) in the middle of 10,000 ingested events and
/// 1,000 preference writes, restart, count what was acknowledged and is not there.
async fn killed_mid_ingest(backend: Kept) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let f = fixture();
    let mut store = DurableBackend::new(backend);
    let mut first = serve_process(store.state(), &store.log("first.log"), &[]).await;
    let (n_events, per_batch, n_prefs, subjects) = (10_000usize, 100usize, 1_000usize, 500usize);
    // Distinct times, so that every event is new to its profile: a re-sent one can only be
    // recognised by its id.
    let batches: Arc<Vec<String>> = Arc::new(
        (0..n_events / per_batch)
            .map(|b| {
                let events: Vec<Value> = (b * per_batch..(b + 1) * per_batch)
                    .map(|i| {
                        let at = tongban_features::time::Timestamp(f.now - 1 - i as i64).to_string();
                        json!({ "event_id": format!("k-{i}"), "subject": format!("sk-{}", i % subjects),
                            "service": "p.med.reimburse", "kind": "viewed", "at": at })
                    })
                    .collect();
                json!({ "events": events }).to_string()
            })
            .collect(),
    );
    let prefs = |i: usize| json!({ "push": false, "quiet_hours": [i % 24, (i + 8) % 24] });
    let acked_events = Arc::new(AtomicUsize::new(0));
    let acked_batches = Arc::new(Mutex::new(Vec::new()));
    let acked_prefs = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    // Eight concurrent clients, each sending its share of the event batches with ten
    // preference writes after each batch (so that both are under way when the kill comes);
    // each stops at its first failure (the server is gone).
    let clients = 8;
    for t in 0..clients {
        let (http, base, batches) = (client.clone(), first.base.clone(), batches.clone());
        let (acked_events, acked_batches, acked_prefs) =
            (acked_events.clone(), acked_batches.clone(), acked_prefs.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = (t..n_prefs).step_by(clients);
            for b in (t..batches.len()).step_by(clients) {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .header("content-type", "application/json")
                    .body(batches[b].clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        acked_batches.lock().unwrap().push(b);
                        acked_events.fetch_add(per_batch, Ordering::SeqCst);
                    }
                    _ => return,
                }
                for i in mine.by_ref().take(n_prefs / batches.len()) {
                    let r = http
                        .put(format!("{base}/v1/users/pk-{i}/preferences"))
                        .header("content-type", "application/json")
                        .body(prefs(i).to_string())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => acked_prefs.lock().unwrap().push(i),
                        _ => return,
                    }
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    while acked_events.load(Ordering::SeqCst) < n_events / 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "half the events were not acknowledged in 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked_batches = acked_batches.lock().unwrap().clone();
    let acked_prefs = acked_prefs.lock().unwrap().clone();
    assert!(acked_batches.len() < batches.len(), "the kill came mid-ingest");

    store.crash_and_restart_store();
    let second = serve_process(store.state(), &store.log("second.log"), &[]).await;
    let app = Http { base: second.base.clone(), client };
    let mut lost_events = 0;
    for &b in &acked_batches {
        let (status, r) = app.post("/v1/events", &batches[b]).await;
        assert_eq!(status, 200, "{r}");
        lost_events += per_batch - r["duplicates"].as_u64().unwrap() as usize;
    }
    let mut lost_prefs = 0;
    for &i in &acked_prefs {
        let (_, got) = app.get(&format!("/v1/users/pk-{i}/preferences")).await;
        let want = prefs(i);
        if got["push"] != want["push"] || got["quiet_hours"] != want["quiet_hours"] {
            lost_prefs += 1;
        }
    }
    eprintln!(
        "SIGKILL/restart test ({backend:?}): acknowledged {} events, {} prefs, lost {}",
        acked_batches.len() * per_batch,
        acked_prefs.len(),
        lost_events + lost_prefs
    );
    assert_eq!((lost_events, lost_prefs), (0, 0), "every acknowledged write survives a SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_ingest_loses_no_acknowledged_write_disk() {
    killed_mid_ingest(Kept::Disk).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_ingest_loses_no_acknowledged_write_redis() {
    killed_mid_ingest(Kept::Redis).await
}

/// Whether the server has a history for the subject.
async fn history(app: &Http, subject: &str) -> bool {
    let (status, v) = app.get(&format!("/v1/users/{subject}/recommendations?k=3")).await;
    assert_eq!(status, 200, "{v}");
    v["fallback"] != "no_history"
}

/// Erasure is final: SIGKILL and restart (the Redis too), with the same import.
async fn erased_across_restart(backend: Kept) {
    let mut store = DurableBackend::new(backend);
    let log = store.log("events.csv");
    let mut csv = format!("{}\n", tongban_features::io::NATIVE_HEADER);
    for (i, subject) in ["er-gone", "er-kept"].iter().enumerate() {
        for (j, service) in ["e.entry.registration", "e.entry.seal"].iter().enumerate() {
            csv.push_str(&format!("ev-{i}-{j},{subject},{service},completed,,2025-06-0{}T02:00:00Z,web\n", j + 1));
        }
    }
    std::fs::write(&log, csv).unwrap();
    let import: [&std::ffi::OsStr; 2] = ["--import".as_ref(), log.as_os_str()];
    let mut first = serve_process(store.state(), &store.log("first.log"), &import).await;
    let app = Http { base: first.base.clone(), client: reqwest::Client::new() };
    assert!(history(&app, "er-gone").await && history(&app, "er-kept").await, "both imported");

    if let Durable::Disk(dir) = store.state() {
        // One process owns the directory: a second one is refused, naming it.
        let out = serve_command(store.state(), "127.0.0.1:0", &[]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let data = dir.join("data");
        assert!(err.contains("is in use by another tongban process") && err.contains(data.to_str().unwrap()), "{err}");
    }

    let r = app.client.delete(format!("{}/v1/users/er-gone", app.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(!history(&app, "er-gone").await);
    first.kill();
    store.crash_and_restart_store();

    let second = serve_process(store.state(), &store.log("second.log"), &import).await;
    let app = Http { base: second.base.clone(), client: reqwest::Client::new() };
    assert!(!history(&app, "er-gone").await, "the import did not bring the erased subject back");
    assert!(history(&app, "er-kept").await, "the other subject's profile is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_stays_erased_across_a_restart_with_the_same_import_disk() {
    erased_across_restart(Kept::Disk).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_stays_erased_across_a_restart_with_the_same_import_redis() {
    erased_across_restart(Kept::Redis).await
}
