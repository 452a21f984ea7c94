//! Ingest into the stores: `apply_many` of batches of 1,000 events (100 subjects, 10 events
//! each, as one `POST /v1/events` of 1,000 groups them), on the durable embedded store (one
//! redb commit with fsync per batch) beside the memory store, in the same run. Then the cost of
//! one small durable commit (a preference write: one fsync) beside the same write in memory.
//!
//! `cargo bench --bench ingest [-- BATCHES]` (default 100 batches = 100,000 events per store).
//! The data directory is a temporary one under the target directory (on the same disk as the
//! build, not a tmpfs, so that the fsync is real).

use std::time::Instant;

use tongban_features::domain::{Channel, EventKind, SubjectId};
use tongban_features::io::LogEvent;
use tongban_features::profile::{BundleIndex, ProfileContext, ProfileParams};
use tongban_features::time::Timestamp;
use tongban_server::push::Preferences;
use tongban_server::store::Batch;
use tongban_server::Store;

// The allocator the `tongban` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PER_BATCH: usize = 1000;
const SUBJECTS_PER_BATCH: usize = 100;

/// One batch's events, grouped per subject as the ingest handler groups them.
struct Group {
    subject: SubjectId,
    events: Vec<LogEvent>,
    ids: Vec<String>,
}

fn batch(b: usize, t0: i64) -> Vec<Group> {
    (0..SUBJECTS_PER_BATCH)
        .map(|s| {
            // Each batch has its own subjects: every write is a new profile row and new ids.
            let subject = SubjectId::parse(&format!("bench-{b:05}-{s:03}")).expect("an id");
            let per = PER_BATCH / SUBJECTS_PER_BATCH;
            let events = (0..per)
                .map(|i| LogEvent {
                    id: i as u64,
                    subject: 0,
                    service: (i % 7) as u32,
                    kind: EventKind::Viewed,
                    rating: 0,
                    channel: Channel::Web,
                    at: Timestamp(t0 + i as i64),
                })
                .collect();
            let ids = (0..per).map(|i| format!("ev-{b}-{s}-{i}")).collect();
            Group { subject, events, ids }
        })
        .collect()
}

/// Batches per second and the mean time of one batch, in milliseconds.
async fn ingest(store: &Store, batches: &[Vec<Group>], ctx: &ProfileContext) -> (f64, f64) {
    let segments = vec![0u16; SUBJECTS_PER_BATCH];
    let started = Instant::now();
    for groups in batches {
        let b: Vec<Batch> =
            groups.iter().map(|g| Batch { subject: &g.subject, events: &g.events, ids: &g.ids }).collect();
        let done = store
            .apply_many(&b, &segments, ctx, (tongban_server::clock::wall_ms() / 1000) as i64)
            .await
            .expect("apply");
        assert_eq!(done.iter().map(|a| a.accepted).sum::<usize>(), PER_BATCH);
    }
    let secs = started.elapsed().as_secs_f64();
    (batches.len() as f64 / secs, secs * 1000.0 / batches.len() as f64)
}

/// The mean time of one preference write, in milliseconds.
async fn small_writes(store: &Store, n: usize) -> f64 {
    let prefs = Preferences { push: false, ..Preferences::default() };
    let started = Instant::now();
    for i in 0..n {
        let s = SubjectId::parse(&format!("prefs-{i:05}")).expect("an id");
        store.put_prefs(&s, &prefs).await.expect("put_prefs");
    }
    started.elapsed().as_secs_f64() * 1000.0 / n as f64
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100);
    let t0 = Timestamp::parse("2026-03-02T02:00:00Z").expect("time").0;
    let ctx = ProfileContext { params: ProfileParams::default(), bundles: BundleIndex::default() };
    let batches: Vec<Vec<Group>> = (0..n).map(|b| batch(b, t0)).collect();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a data directory");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let disk = Store::disk(dir.path()).expect("open the disk store");
        let memory = Store::memory();
        println!("ingest/apply_many  {n} batches of {PER_BATCH} events ({SUBJECTS_PER_BATCH} subjects each)");
        println!("  store    batches/s   events/s   ms/batch");
        for (name, store) in [("disk", &disk), ("memory", &memory)] {
            let (rate, ms) = ingest(store, &batches, &ctx).await;
            println!("  {name:<7} {rate:>10.1} {:>10.0} {ms:>10.2}", rate * PER_BATCH as f64);
        }
        let writes = 200;
        let (d, m) = (small_writes(&disk, writes).await, small_writes(&memory, writes).await);
        println!("one preference write ({writes} in a row): disk {d:.2} ms (one commit: fsync), memory {m:.4} ms");
        let size = std::fs::metadata(disk.disk_path().expect("a disk store")).map_or(0, |m| m.len());
        println!("store file after the run: {:.1} MiB", size as f64 / (1 << 20) as f64);
    });
}
