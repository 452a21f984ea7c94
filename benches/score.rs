//! Scoring: top-10 suggestions for one subject over a 2,000-service catalogue, with the
//! sequence model (its per-subject state cached, as served, and cold), beside the lower-bound kernel (dot products of the same candidates'
//! precomputed features + top-10).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_into, read_subjects, BadRowPolicy, EventLog, LogFormat};
use tongban_features::profile::Profile;
use tongban_features::synth::{generate, GenParams, MemorySink, SUBJECTS_HEADER};
use tongban_features::time::Timestamp;
use tongban_model::eval::{train, TrainStyle};
use tongban_model::ranker::{Ranker, ROW};
use tongban_model::{Model, ModelParams, Request};

/// A trained model over the real catalogue grown to `services`, and some subjects' profiles.
fn setup(services: usize) -> (Model, Vec<Profile>, i64) {
    let cat = Catalogue::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/catalogue")))
        .expect("catalogue")
        .with_long_tail(services);
    let params = GenParams { persons: 20_000, enterprises: 1_000, truth_samples: 0, ..GenParams::default() };
    let mut files = MemorySink::default();
    generate(&cat, &params, &mut files).expect("no IO");
    let base = EventLog::for_catalogue(&cat);
    let (mut log, _) =
        read_into(files.events.as_bytes(), std::path::Path::new("gen"), LogFormat::NativeCsv, BadRowPolicy::Fail, base)
            .expect("reads");
    let dir = tempfile::tempdir().expect("tmp");
    let subjects = dir.path().join("subjects.csv");
    assert!(files.subjects.starts_with(SUBJECTS_HEADER));
    std::fs::write(&subjects, &files.subjects).expect("write");
    let now = log.events.iter().map(|e| e.at.0).max().unwrap_or(0) + 1;
    let segs = read_subjects(&subjects, &mut log, Timestamp(now).date_shanghai()).expect("subjects");
    // The sequence model at its serving size; two epochs are enough to time it.
    let mut params = ModelParams::default();
    params.seq.epochs = 2;
    let model =
        train(&log, &segs, Some(Arc::new(cat)), &params, TrainStyle::Temporal { horizon_days: 90 }).expect("trains");
    let profiles = model.profiles(&log, &segs);
    // Subjects with the most history: the expensive end.
    let mut picked: Vec<Profile> = profiles.into_iter().filter(|p| p.recent().len() >= 20).take(256).collect();
    picked.truncate(256);
    (model, picked, now)
}

fn kernel(ranker: &Ranker, feats: &[f32], out: &mut Vec<(f32, u32)>) {
    out.clear();
    for (i, row) in feats.chunks_exact(ROW).enumerate() {
        let s = ranker.score(row);
        if out.len() < 10 || s > out[out.len() - 1].0 {
            let pos = out.partition_point(|x| x.0 >= s);
            out.insert(pos, (s, i as u32));
            out.truncate(10);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("score_top10");
    for services in [500usize, 2_000] {
        let (model, profiles, now) = setup(services);
        let req = Request { k: 10, ..Request::default() };
        let mut scratch = model.scratch();
        // The same candidates' features, precomputed, for the kernel.
        let feats: Vec<Vec<f32>> = profiles
            .iter()
            .map(|p| {
                model.score_candidates(p, &req, now, &mut scratch);
                scratch.features_of_last().to_vec()
            })
            .collect();
        let mean = feats.iter().map(|f| f.len() / ROW).sum::<usize>() / feats.len().max(1);
        eprintln!("score_top10/{services}: {} subjects, {mean} candidates on average", profiles.len());
        // As served: the sequence-model state of each subject cached since its first request
        // (warmed here); and cold: the first request after a subject's history changed.
        let served = model.clone().with_seq_cache(64 << 20);
        for p in &profiles {
            served.recommend(p, &req, now, &mut scratch);
        }
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("recommend", services), &services, |b, _| {
            b.iter(|| {
                i = (i + 1) % profiles.len();
                black_box(served.recommend(&profiles[i], &req, now, &mut scratch))
            })
        });
        g.bench_with_input(BenchmarkId::new("recommend_cold", services), &services, |b, _| {
            b.iter(|| {
                i = (i + 1) % profiles.len();
                black_box(model.recommend(&profiles[i], &req, now, &mut scratch))
            })
        });
        let mut top = Vec::with_capacity(11);
        let mut j = 0;
        g.bench_with_input(BenchmarkId::new("kernel_dot_topk", services), &services, |b, _| {
            b.iter(|| {
                j = (j + 1) % feats.len();
                kernel(model.ranker(), black_box(&feats[j]), &mut top);
                top.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
