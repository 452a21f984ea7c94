//! Pushes per second from trigger to inbox, beside the raw rate of the same stream command.
//!
//! For N companies that just completed their business registration, the next-step trigger runs
//! (profile and preferences read, policy, reservation, render, enqueue) as ingest requests of
//! 100 subjects run it; a worker in the same process claims, re-checks, writes the inbox and
//! acknowledges. Measured alone, then both at once for N other companies (the headline:
//! trigger to inbox). Then N pipelined `XADD`s of the same job JSON to a scratch stream, over the
//! same connection: the ceiling Redis itself sets. Redis runs on loopback (a `redis-server`
//! started here on a free port); the memory backend runs the same path for comparison.
//!
//! `cargo bench --bench push [-- N]` (default N = 20000; 2 N profiles are imported).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tongban_features::catalogue::Catalogue;
use tongban_features::domain::SubjectId;
use tongban_features::domain::{Channel, EventKind};
use tongban_features::io::LogEvent;
use tongban_features::profile::{BundleIndex, Profile, ProfileContext, ProfileParams};
use tongban_features::time::Timestamp;
use tongban_server::deliver::{Channels, Pusher, Worker, WorkerConfig};
use tongban_server::push::{Caps, Templates};
use tongban_server::queue::Queue;
use tongban_server::store::RedisStore;
use tongban_server::Store;

// The allocator the `tongban` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let r = Redis(child, port);
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server did not start");
}

/// Runs the next-step trigger for `subjects` as ingest requests of 100 subjects each run it,
/// 8 requests at a time. Returns how many pushes were queued.
async fn trigger(pusher: &Arc<Pusher>, subjects: &Arc<Vec<SubjectId>>, done: u32) -> usize {
    let lanes = 8;
    let per_request = 100;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (pusher, subjects) = (pusher.clone(), subjects.clone());
        tasks.push(tokio::spawn(async move {
            let mut queued = 0;
            let done = [done];
            for chunk in subjects.chunks(per_request).skip(lane).step_by(lanes) {
                let items: Vec<(&SubjectId, &[u32])> = chunk.iter().map(|s| (s, &done[..])).collect();
                queued += pusher.after_events_many(&items, None, "bench").await.expect("trigger").queued;
            }
            queued
        }));
    }
    let mut queued = 0;
    for t in tasks {
        queued += t.await.expect("trigger task");
    }
    queued
}

fn worker(pusher: &Arc<Pusher>) -> Worker {
    Worker {
        pusher: pusher.clone(),
        channels: Channels::default(),
        cfg: WorkerConfig { scan_every: None, ..WorkerConfig::new() },
    }
}

/// Pushes per second: triggers alone, delivery alone (on `first`), then both at once, as a
/// deployment runs them (on `second`: trigger to inbox, the clock stops when all are
/// delivered).
async fn rates(pusher: Arc<Pusher>, first: Arc<Vec<SubjectId>>, second: Arc<Vec<SubjectId>>, done: u32) -> [f64; 3] {
    let n = first.len() as f64;
    let started = Instant::now();
    assert_eq!(trigger(&pusher, &first, done).await, first.len(), "one push per subject");
    let triggered = started.elapsed().as_secs_f64();
    let w = worker(&pusher);
    let started = Instant::now();
    let mut delivered = 0;
    while delivered < first.len() {
        delivered += w.round().await.expect("round");
    }
    let delivering = started.elapsed().as_secs_f64();
    assert!(pusher.queue.depth().await.expect("depth").idle());

    let started = Instant::now();
    let w = worker(&pusher);
    let total = second.len();
    let deliver = tokio::spawn(async move {
        let mut delivered = 0;
        while delivered < total {
            let k = w.round().await.expect("round");
            if k == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            delivered += k;
        }
    });
    assert_eq!(trigger(&pusher, &second, done).await, second.len());
    deliver.await.expect("worker");
    let both = started.elapsed().as_secs_f64();
    [n / triggered, n / delivering, second.len() as f64 / both]
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cat = Arc::new(Catalogue::load(&root.join("catalogue")).expect("catalogue"));
    let templates = Templates::load(&root.join("templates"), &cat).expect("templates");
    let registration = cat.lookup("e.entry.registration").expect("in the catalogue");
    // 10:00 in Shanghai: outside the default quiet hours.
    let now = Timestamp::parse("2026-03-02T02:00:00Z").expect("time").0;
    let ctx = ProfileContext { params: ProfileParams::default(), bundles: BundleIndex::new(&cat) };
    let mut profile = Profile::new(11);
    let ev = LogEvent {
        id: 1,
        subject: 0,
        service: registration,
        kind: EventKind::Completed,
        rating: 0,
        channel: Channel::Web,
        at: Timestamp(now - 3600),
    };
    assert!(profile.apply(&ev, &ctx));
    let first: Arc<Vec<SubjectId>> =
        Arc::new((0..n).map(|i| SubjectId::parse(&format!("bench-a{i:07}")).expect("an id")).collect());
    let second: Arc<Vec<SubjectId>> =
        Arc::new((0..n).map(|i| SubjectId::parse(&format!("bench-b{i:07}")).expect("an id")).collect());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let redis = redis_server();
    rt.block_on(async {
        let mut rows = Vec::new();
        for backend in ["memory", "redis"] {
            let (store, queue) = if backend == "redis" {
                let s = RedisStore::connect(&format!("redis://127.0.0.1:{}/", redis.1), "").await.expect("redis");
                let (conn, prefix) = s.connection();
                let q = Queue::redis(conn, &prefix, 8).await.expect("queue");
                (Store::Redis(s), q)
            } else {
                (Store::memory(), Queue::memory())
            };
            for s in first.iter().chain(second.iter()) {
                store.import_profile(s, &profile).await.expect("import");
            }
            let pusher = Arc::new(Pusher {
                store: Arc::new(store),
                queue: Arc::new(queue),
                catalogue: cat.clone(),
                templates: Arc::new(templates.clone()),
                caps: Caps::default(),
                portal: "https://zwfw.dl.gov.cn".into(),
                ids: Default::default(),
                clock: tongban_server::clock::Clock::pinned(Some(now)),
            });
            let rate = rates(pusher.clone(), first.clone(), second.clone(), registration).await;
            let inbox = pusher.store.inbox(&second[n - 1]).await.expect("inbox");
            assert_eq!(inbox.len(), 1, "the last subject's inbox holds its message");
            rows.push((backend, rate, inbox[0].clone()));
        }
        // The raw ceiling: the same job JSON, pipelined XADD, 500 per pipeline.
        let s = RedisStore::connect(&format!("redis://127.0.0.1:{}/", redis.1), "").await.expect("redis");
        let (mut conn, _) = s.connection();
        let job = serde_json::json!({ "subject": first[0], "message": rows[1].2 }).to_string();
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut pipe = redis::pipe();
            for _ in chunk {
                pipe.cmd("XADD").arg("bench:raw").arg("*").arg("job").arg(&job).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.expect("xadd");
        }
        let raw = n as f64 / started.elapsed().as_secs_f64();
        println!("push/trigger_to_inbox  n={n}  job JSON {} bytes", job.len());
        println!("  backend   trigger->queue/s  queue->inbox/s  trigger->inbox/s (both at once)");
        for (backend, [t, d, e], _) in &rows {
            println!("  {backend:<8} {t:>16.0} {d:>15.0} {e:>17.0}");
        }
        println!("  raw pipelined XADD {raw:>10.0} /s (same job JSON, same connection)");
        println!("  redis trigger->inbox : raw XADD = {:.3}", rows[1].1[2] / raw);
        if std::env::var_os("PUSH_BENCH_COMMANDSTATS").is_some() {
            let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("info");
            println!("{stats}");
        }
    });
}
