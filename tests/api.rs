//! The HTTP API over real TCP, the same suite against the memory store and against a real
//! `redis-server` started here on a free port (one per test, killed on drop).

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_into, BadRowPolicy, EventLog, LogFormat};
use tongban_features::synth::{generate, GenParams, MemorySink};
use tongban_model::artifact::{self, DataInfo};
use tongban_model::eval::{train, TrainStyle};
use tongban_model::ModelParams;
use tongban_server::store::RedisStore;
use tongban_server::{ApiKeys, Models, Served, Settings, Store};

/// A `redis-server` of this test's own.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        // Owned from here on: dropped (killed and waited for) on every path, panics included.
        let server = RedisServer { child, port };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

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
        let cat = Arc::new(Catalogue::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogue")).unwrap());
        let mut files = MemorySink::default();
        generate(
            &cat,
            &GenParams { persons: 1500, enterprises: 300, truth_samples: 0, ..GenParams::default() },
            &mut files,
        )
        .unwrap();
        let base = EventLog::for_catalogue(&cat);
        let (log, _) =
            read_into(files.events.as_bytes(), Path::new("gen"), LogFormat::NativeCsv, BadRowPolicy::Fail, base)
                .unwrap();
        let mut params = ModelParams::default();
        params.ranker.max_cases = 2000;
        params.ranker.max_iterations = 60;
        let model = train(&log, &[], Some(cat.clone()), &params, TrainStyle::Temporal { horizon_days: 90 }).unwrap();
        let now = log.events.iter().map(|e| e.at.0).max().unwrap() + 1;
        let data = DataInfo {
            source: "gen".into(),
            fingerprint: "00".into(),
            events: log.events.len() as u64,
            subjects: 0,
            services: 0,
        };
        let header = artifact::header_for(&model, data, None, "2026-11-27T00:00:00Z".into());
        let model_file = tempfile::NamedTempFile::new().unwrap();
        artifact::save(model_file.path(), &model, &header).unwrap();
        Fixture { catalogue: cat, model_file, log, now }
    })
}

struct App {
    base: String,
    client: reqwest::Client,
    _redis: Option<RedisServer>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Memory,
    Redis,
}

/// Starts the app on a free port with the fixture's profiles imported.
async fn start(backend: Backend, keys: ApiKeys) -> (App, Option<RedisServer>) {
    start_with(backend, keys, 0).await
}

async fn start_with(backend: Backend, keys: ApiKeys, rate: u32) -> (App, Option<RedisServer>) {
    let f = fixture();
    let (model, header) = artifact::load(f.model_file.path(), Some(f.catalogue.clone())).unwrap();
    let (store, redis) = match backend {
        Backend::Memory => (Store::memory(), None),
        Backend::Redis => {
            let r = RedisServer::start();
            (Store::Redis(RedisStore::connect(&r.url(), "test:").await.unwrap()), Some(r))
        }
    };
    // Import the history of ten subjects (all of them would only slow the test down).
    let profiles = model.profiles(&f.log, &[]);
    for (i, p) in profiles.iter().enumerate().take(10) {
        assert!(store.import_profile(f.log.subjects.name(i as u32), p).await.unwrap());
    }
    let settings = Settings { keys, max_batch: 100, fixed_now: Some(f.now), rate_per_key: rate, ..Settings::default() };
    let served = Served::new(model, header, f.model_file.path().to_owned());
    let templates =
        tongban_server::push::Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), &f.catalogue)
            .unwrap();
    let state = tongban_server::state(
        Models::new(served, Some(f.catalogue.clone())),
        store,
        settings,
        HashMap::new(),
        Some(templates),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tongban_server::serve(listener, state, std::future::pending()));
    let app = App { base: format!("http://{addr}"), client: reqwest::Client::new(), _redis: None };
    (app, redis)
}

impl App {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn put(&self, path: &str, body: &str) -> u16 {
        let r = self
            .client
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
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
    ];
    for (body, want, code) in cases {
        let (status, r) = app.post("/v1/events", &body).await;
        assert_eq!((status, r["code"].as_str()), (want, Some(code)), "{body:.80}: {r}");
    }
    let (_, r) = app.post("/v1/events", &good.to_string()).await;
    assert_eq!(r["accepted"], 1, "the good event of the refused batches was never stored: {r}");

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
    assert!(metrics.contains("tongban_events_ingested_total 74"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_on_the_memory_store() {
    suite(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_on_redis() {
    suite(Backend::Redis).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_route_and_every_route_answers() {
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(),
        tongban_server::openapi::ROUTES.len()
    );
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
    for h in load {
        assert!(h.await.unwrap().iter().all(|&s| s == 200));
    }
    let (_, list) = app.get("/admin/models").await;
    assert_eq!(list["models"].as_array().unwrap().len(), 6);
    let (status, _) = app.post("/admin/models/rollback", "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let keys = ApiKeys { portal: vec!["a".into(), "b".into()], ..ApiKeys::default() };
    let (app, _) = start_with(Backend::Memory, keys, 5).await;
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
    let (app, _) = start(Backend::Memory, ApiKeys::default()).await;
    let big = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let (status, r) = app.post("/v1/events", &big).await;
    assert_eq!((status, r["code"].as_str()), (413, Some("too_large")), "{r}");
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

    // Without quiet hours the guidance is in the inbox at once, in zh-CN, naming the bundle,
    // its next steps and their materials.
    assert_eq!(app.put("/v1/users/co-open/preferences", &json!({ "quiet_hours": null }).to_string()).await, 200);
    let (_, r) = app.post("/v1/events", &opening("co-open", "o")).await;
    assert_eq!(r["pushed"], 1, "{r}");
    let (_, inbox) = app.get("/v1/users/co-open/inbox").await;
    let msgs = inbox["messages"].as_array().unwrap();
    assert_eq!((msgs.len(), inbox["unread"].as_u64()), (1, Some(1)), "{inbox}");
    let m = &msgs[0];
    assert!(m["title"].as_str().unwrap().contains("开办企业一件事"), "{m}");
    let body = m["body"].as_str().unwrap();
    assert!(body.contains("公章刻制备案") && body.contains("办理时限") && body.contains("办理入口"), "{body}");
    assert!(m["sms"].as_str().unwrap().chars().count() <= 70);
    assert!(m["id"].as_str().unwrap().starts_with("TB-") && !m["id"].as_str().unwrap().contains("co-open"));

    // Another step of the same bundle in the same window: de-duplicated, not a second message.
    let seal = json!({ "event_id": "o-seal", "subject": "co-open", "service": "e.entry.seal", "kind": "completed" });
    let (_, r) = app.post("/v1/events", &seal.to_string()).await;
    assert_eq!((r["accepted"].as_u64(), r["pushed"].as_u64()), (Some(1), Some(0)), "{r}");

    // Read marks.
    let url = format!("/v1/users/co-open/inbox/{}/read", m["id"].as_str().unwrap());
    assert_eq!(app.client.post(format!("{}{url}", app.base)).send().await.unwrap().status().as_u16(), 204);
    let (_, inbox) = app.get("/v1/users/co-open/inbox").await;
    assert_eq!(inbox["unread"], 0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_bundle_step_puts_guidance_in_the_inbox_memory() {
    push_flow(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_bundle_step_puts_guidance_in_the_inbox_redis() {
    push_flow(Backend::Redis).await;
}

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
    std::fs::write(dir.path().join("zh-CN.toml"), zh.replace("请登录一网通办办理", &"请登录一网通办办理".repeat(6)))
        .unwrap();
    let err = tongban_server::push::Templates::load(dir.path(), &f.catalogue).unwrap_err();
    assert!(err.contains("field `sms`") && err.contains("at most 70"), "{err}");
}
