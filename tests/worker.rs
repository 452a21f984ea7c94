//! `tongban worker` as a supervisor runs it: against a real `redis-server`, stopped with SIGTERM
//! mid-run. It claims nothing more, finishes the batch in hand, exits 0; nothing is lost and,
//! unlike after a SIGKILL (`tests/api.rs`), nothing is delivered twice.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tongban_features::domain::SubjectId;
use tongban_features::profile::Profile;
use tongban_server::push::{Outbound, Preferences};
use tongban_server::queue::Queue;
use tongban_server::store::RedisStore;
use tongban_server::Store;

mod common;
#[path = "../server/tests/support/mod.rs"]
mod support;
use support::RedisServer;

const SECRET: &str = "a-webhook-secret-of-the-tests";
/// 10:00 in Shanghai: outside the default quiet hours.
const NOW: &str = "2026-01-01T02:00:00Z";

/// A webhook gateway that answers 200 after `delay`, or never when `delay` is `None`.
async fn gateway(delay: Option<Duration>) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                match delay {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
                c.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// `n` pushes to `subjects` subjects (with profiles, and app pushes allowed) in a fresh Redis.
async fn queued(redis: &RedisServer, subjects: usize, n: usize) -> Queue {
    let store = RedisStore::connect(&redis.url(), "").await.unwrap();
    let (conn, prefix) = store.connection();
    let queue = Queue::redis(conn, &prefix, 4).await.unwrap();
    let store = Store::Redis(store);
    let prefs = Preferences { channels: vec![Outbound::App], ..Default::default() };
    let ids: Vec<SubjectId> = (0..subjects).map(|i| SubjectId::parse(&format!("p{i:07}")).unwrap()).collect();
    for id in &ids {
        store.import_profile(id, &Profile::new(0)).await.unwrap();
        store.put_prefs(id, &prefs).await.unwrap();
    }
    let now = tongban_features::time::Timestamp::parse(NOW).unwrap().0;
    let items = common::ready_pushes(&ids, n, now);
    queue.enqueue(&items).await.unwrap();
    queue
}

fn worker(redis: &RedisServer, log: &Path, hook: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(["worker", "--allow-volatile-redis", "--redis", &redis.url(), "--now", NOW, "--push-log"])
        .arg(log)
        .args(["--scan-every-secs", "0", "--partitions", "4", "--webhook-url", hook])
        .args(extra)
        .env("TONGBAN_WEBHOOK_SECRET", SECRET)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM {}", child.id());
}

/// Waits for the child's exit, at most `secs`; returns its status and how long it took.
fn exit_within(child: &mut Child, secs: u64) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("the worker did not exit within {secs} s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s).unwrap();
    s
}

/// The ids of the log channel's lines, and whether each was a reclaimed delivery.
fn deliveries(log: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v["reclaimed"].as_bool().unwrap()))
        .collect()
}

async fn wait_until(what: &str, secs: u64, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_finishes_its_batch_exits_0_and_loses_nothing() {
    let redis = RedisServer::start();
    let n = 3000;
    let queue = queued(&redis, 100, n).await;
    // Each delivery waits 30 ms for the gateway: a batch of 64 spends most of its time logged
    // and not yet acknowledged, where a stop that dropped it would show.
    let (hook, calls) = gateway(Some(Duration::from_millis(30))).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.jsonl");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut first = worker(&redis, &log, &hook, &["--batch", "64", "--metrics-addr", &metrics.to_string()]);
    // `--metrics-addr` serves the worker's readiness and metrics.
    let probe = reqwest::Client::new();
    let mut ready = None;
    for _ in 0..400 {
        if let Ok(r) = probe.get(format!("http://{metrics}/readyz")).send().await {
            ready = Some(r.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(ready.as_ref().map(|r| r["store"].clone()), Some(serde_json::json!("redis")), "{ready:?}");
    let lines = || std::fs::read(&log).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    wait_until("a tenth of the pushes", 120, || lines() >= n / 10).await;
    sigterm(&first);
    let (status, _) = exit_within(&mut first, 20);
    let err = stderr_of(&mut first);
    assert!(status.success(), "exit status {status:?} after SIGTERM: {err}");
    // Stopped by finishing its batch, not by the grace period running out.
    assert!(err.contains("shutting down (SIGTERM)") && err.contains("its last batch is finished"), "{err}");
    // The batch in hand was acknowledged before the exit: nothing is left claimed.
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.pending, 0, "claimed and never finished: {depth:?}");
    let at_stop = deliveries(&log);
    assert!(at_stop.len() < n, "the stop came mid-run ({} of {n} delivered)", at_stop.len());

    // A second worker delivers the rest; every push exactly once, none reclaimed.
    let mut second = worker(&redis, &log, &hook, &["--batch", "256"]);
    let started = Instant::now();
    while !queue.depth().await.unwrap().idle() {
        assert!(started.elapsed() < Duration::from_secs(120), "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&second);
    let (status, _) = exit_within(&mut second, 20);
    assert!(status.success(), "{status:?}: {}", stderr_of(&mut second));
    let all = deliveries(&log);
    let unique: std::collections::HashSet<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(unique.len(), n, "every push delivered");
    assert_eq!(all.len(), n, "no push delivered twice: a SIGTERM is not a crash");
    assert!(all.iter().all(|(_, reclaimed)| !reclaimed), "nothing had to be reclaimed");
    assert_eq!(calls.load(Ordering::SeqCst), n, "the gateway got each push once");
    assert_eq!(queue.depth().await.unwrap().dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_batch_hangs_exits_0_after_the_grace_period_leaving_its_pushes_to_reclaim() {
    let redis = RedisServer::start();
    let n = 20;
    let queue = queued(&redis, 5, n).await;
    // A gateway that never answers, and a webhook timeout far beyond the grace period.
    let (hook, _) = gateway(None).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.jsonl");
    let grace = ["--shutdown-grace-secs", "1", "--webhook-timeout-ms", "600000"];
    let mut w = worker(&redis, &log, &hook, &grace);
    // Claimed and logged, waiting on the gateway.
    let lines = || std::fs::read(&log).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    wait_until("the batch to be claimed", 60, || lines() >= n).await;
    sigterm(&w);
    let (status, took) = exit_within(&mut w, 20);
    let err = stderr_of(&mut w);
    assert!(status.success(), "{status:?}: {err}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(6), "took {took:?}");
    assert!(err.contains("did not finish within --shutdown-grace-secs 1"), "{err}");
    // Still claimed: another worker reclaims them after --reclaim-after-ms.
    assert_eq!(queue.depth().await.unwrap().pending, n as u64);
}
