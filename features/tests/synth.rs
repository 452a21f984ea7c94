//! Realism and determinism of the synthetic histories, on the real Dalian catalogue.

use std::collections::HashMap;
use std::path::Path;

use tongban_features::catalogue::{Catalogue, Deadline};
use tongban_features::domain::SubjectKind;
use tongban_features::synth::{generate, is_start, simulate_subject, GenParams, MemorySink};
use tongban_features::time::{Date, DAY};

fn catalogue() -> Catalogue {
    Catalogue::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalogue")).expect("the real catalogue loads")
}

fn params(persons: u64, enterprises: u64, seed: u64) -> GenParams {
    GenParams { persons, enterprises, seed, truth_samples: 50, ..GenParams::default() }
}

#[test]
fn the_same_seed_gives_identical_output_and_another_seed_does_not() {
    let cat = catalogue();
    let run = |seed| {
        let mut m = MemorySink::default();
        generate(&cat, &params(300, 40, seed), &mut m).unwrap();
        m
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert!(a.events.lines().count() > 1000, "too few events: {}", a.events.lines().count());
    assert_eq!(a.events, b.events);
    assert_eq!(a.future, b.future);
    assert_eq!(a.truth, b.truth);
    assert_eq!(a.subjects, b.subjects);
    assert_ne!(a.events, c.events);
}

#[test]
fn truth_covers_every_subject_with_a_future_start_and_sums_to_one() {
    let cat = catalogue();
    let mut m = MemorySink::default();
    generate(&cat, &params(400, 60, 3), &mut m).unwrap();
    let mut with_future = std::collections::BTreeSet::new();
    for line in m.future.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let kind = tongban_features::domain::EventKind::parse(f[3]).unwrap();
        let channel = tongban_features::domain::Channel::parse(f[6]).unwrap();
        if is_start(kind, channel) {
            with_future.insert(f[1].to_owned());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for line in m.truth.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let sum: f64 = v["next"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{line}");
        for p in v["next"].as_array().unwrap() {
            assert!(cat.lookup(p[0].as_str().unwrap()).is_some());
        }
        seen.insert(v["subject"].as_str().unwrap().to_owned());
    }
    assert!(!seen.is_empty());
    assert_eq!(seen, with_future);
}

#[test]
fn bundle_steps_follow_their_dependencies_within_the_configured_delays() {
    let cat = catalogue();
    let p = params(1, 1, 11);
    let mut checked = 0;
    for (kind, n) in [(SubjectKind::Person, 600), (SubjectKind::Enterprise, 200)] {
        for i in 0..n {
            let run = simulate_subject(&cat, &p, kind, i);
            for j in &run.journeys {
                let bundle = &cat.bundles()[j.bundle as usize];
                for (k, step) in bundle.steps.iter().enumerate() {
                    let Some(t) = j.done[k] else { continue };
                    let deps: Vec<i64> =
                        step.after.iter().map(|&a| j.done[a as usize].expect("dependency done before")).collect();
                    let base = deps.iter().copied().max().unwrap_or(j.started);
                    let (lo, hi) = step.delay_days;
                    let delay = (t - base) as f64 / DAY as f64;
                    assert!(
                        delay >= f64::from(lo) - 1e-4 && delay <= f64::from(hi) + 1e-4,
                        "{}: step {k} delay {delay} outside [{lo}, {hi}]",
                        bundle.id
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} steps checked");
}

#[test]
fn renewals_recur_at_the_catalogue_validity() {
    let cat = catalogue();
    let p = GenParams { years: 25, ..params(1, 1, 5) };
    let mut gaps = 0;
    for i in 0..400 {
        let run = simulate_subject(&cat, &p, SubjectKind::Person, i);
        let mut last: HashMap<u32, i64> = HashMap::new();
        for &(svc, t) in &run.renewals {
            if let Some(prev) = last.insert(svc, t) {
                let Some(Deadline::BeforeExpiry { days, validity_years, .. }) = &cat.service(svc).deadline else {
                    panic!("renewal of a service without an expiry rule");
                };
                let gap = (t - prev) as f64 / DAY as f64;
                let period = f64::from(*validity_years) * 365.25;
                assert!(
                    (gap - period).abs() <= f64::from(*days) + 1.0,
                    "{}: renewed after {gap} days, validity {period}",
                    cat.service(svc).id
                );
                gaps += 1;
            }
        }
    }
    assert!(gaps > 20, "only {gaps} renewal gaps");
}

#[test]
fn the_age_structure_is_plausible_for_dalian() {
    let cat = catalogue();
    let p = params(1, 1, 9);
    let start = Date::new(2023, 1, 1).unwrap();
    let n = 3000;
    let (mut old, mut young) = (0, 0);
    for i in 0..n {
        let s = simulate_subject(&cat, &p, SubjectKind::Person, i).subject;
        let age = start.year - s.born.year;
        old += usize::from(age >= 60);
        young += usize::from(age < 18);
    }
    let (old, young) = (old as f64 / n as f64, young as f64 / n as f64);
    // Dalian: about a quarter aged 60+, about 12-15% under 18 (an ageing city).
    assert!((0.18..0.35).contains(&old), "share 60+ = {old}");
    assert!((0.08..0.22).contains(&young), "share under 18 = {young}");
}
