//! Generator throughput: subjects simulated per second (history, future and truth), by size.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tongban_features::catalogue::Catalogue;
use tongban_features::synth::{generate, GenParams, GenSink};

/// Counts bytes instead of writing them: the benchmark measures simulation and formatting.
#[derive(Default)]
struct Discard(usize);

impl GenSink for Discard {
    fn events(&mut self, t: &str) -> std::io::Result<()> {
        self.0 += t.len();
        Ok(())
    }
    fn future(&mut self, t: &str) -> std::io::Result<()> {
        self.0 += t.len();
        Ok(())
    }
    fn subjects(&mut self, t: &str) -> std::io::Result<()> {
        self.0 += t.len();
        Ok(())
    }
    fn truth(&mut self, t: &str) -> std::io::Result<()> {
        self.0 += t.len();
        Ok(())
    }
    fn progress(&mut self, _: u64, _: u64) {}
}

fn bench(c: &mut Criterion) {
    let cat =
        Catalogue::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/catalogue"))).expect("catalogue");
    let mut g = c.benchmark_group("generate");
    g.sample_size(10);
    for subjects in [2_000u64, 20_000] {
        for truth_samples in [0u32, 200] {
            let params = GenParams {
                persons: subjects * 20 / 21,
                enterprises: subjects / 21,
                truth_samples,
                ..GenParams::default()
            };
            g.throughput(Throughput::Elements(subjects));
            g.bench_with_input(BenchmarkId::new(format!("truth{truth_samples}"), subjects), &params, |b, p| {
                b.iter(|| {
                    let mut sink = Discard::default();
                    generate(&cat, p, &mut sink).expect("no IO");
                    sink.0
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
