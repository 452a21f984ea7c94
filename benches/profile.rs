//! Profiles and features: apply one event, build profiles and item statistics from a log, and
//! extract candidate features (beside a plain copy of the same number of floats).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::{Channel, EventKind};
use tongban_features::io::{read_into, BadRowPolicy, EventLog, LogEvent, LogFormat, SEGMENTS};
use tongban_features::profile::{BundleIndex, Profile, ProfileBuilder, ProfileContext, ProfileParams};
use tongban_features::stats::{ItemStats, StatsParams};
use tongban_features::synth::{generate, GenParams, MemorySink};
use tongban_features::time::Timestamp;
use tongban_features::vector::{Extractor, Scratch, WIDTH};

fn catalogue() -> Catalogue {
    Catalogue::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/catalogue"))).expect("catalogue")
}

/// A generated log of `subjects` subjects, read into memory with the catalogue's indices.
fn log(cat: &Catalogue, subjects: u64) -> EventLog {
    let params =
        GenParams { persons: subjects * 20 / 21, enterprises: subjects / 21, truth_samples: 0, ..GenParams::default() };
    let mut sink = MemorySink::default();
    generate(cat, &params, &mut sink).expect("no IO");
    let base = EventLog::for_catalogue(cat);
    read_into(sink.events.as_bytes(), std::path::Path::new("gen"), LogFormat::NativeCsv, BadRowPolicy::Fail, base)
        .expect("reads")
        .0
}

fn ctx(cat: &Catalogue) -> ProfileContext {
    ProfileContext { params: ProfileParams::default().check().expect("valid"), bundles: BundleIndex::new(cat) }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn apply(c: &mut Criterion) {
    let cat = catalogue();
    let ctx = ctx(&cat);
    let mut g = c.benchmark_group("profile_apply");
    // A full profile (64 retained events over 40 services), then one newer event, and one late
    // event that lands in the middle of the window.
    let mut full = Profile::new(3);
    for i in 0..200u64 {
        let e = LogEvent {
            id: i,
            subject: 0,
            service: (i * 7 % 40) as u32,
            kind: if i % 3 == 0 { EventKind::Completed } else { EventKind::Applied },
            rating: 0,
            channel: Channel::Web,
            at: Timestamp(1_700_000_000 + i as i64 * 3600),
        };
        full.apply(&e, &ctx);
    }
    for (name, at) in [("newest", 1_700_000_000 + 300 * 3600), ("late", 1_700_000_000 + 170 * 3600)] {
        let e = LogEvent {
            id: 10_000,
            subject: 0,
            service: 5,
            kind: EventKind::Applied,
            rating: 0,
            channel: Channel::App,
            at: Timestamp(at),
        };
        g.bench_function(name, |b| {
            b.iter_batched_ref(|| full.clone(), |p| p.apply(black_box(&e), &ctx), BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let cat = catalogue();
    let ctx = ctx(&cat);
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    for subjects in [21_000u64, 105_000] {
        let log = log(&cat, subjects);
        let segs: Vec<u16> = (0..log.subjects.len()).map(|i| (i % SEGMENTS) as u16).collect();
        let now = log.events.iter().map(|e| e.at.0).max().unwrap_or(0);
        g.throughput(Throughput::Elements(log.events.len() as u64));
        g.bench_with_input(BenchmarkId::new("profiles", subjects), &log, |b, log| {
            b.iter(|| ProfileBuilder::new(&ctx).build(log, &segs))
        });
        g.bench_with_input(BenchmarkId::new("stats", subjects), &log, |b, log| {
            b.iter(|| ItemStats::build(log, &segs, now, &StatsParams { segments: SEGMENTS, ..StatsParams::default() }))
        });
        g.bench_with_input(BenchmarkId::new("profiles_and_stats", subjects), &log, |b, log| {
            b.iter(|| {
                let p = ProfileBuilder::new(&ctx).build(log, &segs);
                let s =
                    ItemStats::build(log, &segs, now, &StatsParams { segments: SEGMENTS, ..StatsParams::default() });
                (p.len(), s.starts())
            })
        });
        eprintln!("build/{subjects}: {} events, process peak RSS so far {:.0} MiB", log.events.len(), peak_rss_mib());
    }
    g.finish();
}

fn extract(c: &mut Criterion) {
    let cat = catalogue();
    let ctx = ctx(&cat);
    let log = log(&cat, 21_000);
    let segs = vec![0u16; log.subjects.len()];
    let now = log.events.iter().map(|e| e.at.0).max().unwrap_or(0) + 1;
    let stats = ItemStats::build(&log, &segs, now, &StatsParams::default());
    let profiles = ProfileBuilder::new(&ctx).build(&log, &segs);
    // The subject with the most retained events: the slow end.
    let profile = profiles.iter().max_by_key(|p| p.recent().len()).expect("profiles");
    let ex = Extractor::new(std::sync::Arc::new(stats), Some(std::sync::Arc::new(cat.clone())));
    let candidates: Vec<u32> = (0..200u32).map(|i| i * 7 % log.services.len() as u32).collect();
    let mut out = vec![0f32; candidates.len() * WIDTH];
    let src = vec![0.5f32; candidates.len() * WIDTH];
    let mut scratch = Scratch::new(log.services.len());
    let mut g = c.benchmark_group("extract_200");
    g.throughput(Throughput::Elements(200));
    g.bench_function("features", |b| {
        b.iter(|| {
            let prep = ex.prepare(profile, now, &mut scratch);
            ex.extract(profile, &prep, &scratch, black_box(&candidates), &mut out);
        })
    });
    g.bench_function("copy_floats", |b| b.iter(|| out.copy_from_slice(black_box(&src))));
    g.finish();
}

criterion_group!(benches, apply, build, extract);
criterion_main!(benches);
