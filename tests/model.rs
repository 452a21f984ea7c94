//! End-to-end tests of `tongban train`, `eval` and `tune` on data made here.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::tongban;

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn metric(report: &serde_json::Value, scorer: &str, what: &str, k: usize) -> f64 {
    let s = report["scorers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == scorer)
        .unwrap_or_else(|| panic!("no {scorer}"));
    s["metrics"][what].as_array().unwrap().iter().find(|p| p[0] == k).unwrap()[1].as_f64().unwrap()
}

fn generated(dir: &Path) -> PathBuf {
    let out = dir.join("gen");
    let o = tongban(&[
        "generate",
        "--persons",
        "3000",
        "--enterprises",
        "300",
        "--seed",
        "5",
        "--truth-samples",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn temporal_evaluation_reports_the_model_the_baselines_and_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let g = generated(dir.path());
    let s = |p: &str| g.join(p).to_str().unwrap().to_owned();
    let report_dir = dir.path().join("report");
    let out = tongban(&[
        "eval",
        "--events",
        &s("events.csv"),
        "--catalogue",
        "catalogue",
        "--protocol",
        "temporal",
        "--future",
        &s("future.csv"),
        "--truth",
        &s("truth.jsonl"),
        "--k",
        "1,5,10",
        "--report",
        report_dir.to_str().unwrap(),
        "--json",
    ]);
    let v = ok_json(&out);
    let r = &v["report"];
    let names: Vec<&str> = r["scorers"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "tongban",
            "popularity",
            "markov",
            "item-knn",
            "sequence model",
            "item-knn (whole history)",
            "tongban, candidate stage only",
            "oracle"
        ]
    );
    let (model, pop, markov, oracle) = (
        metric(r, "tongban", "hr", 5),
        metric(r, "popularity", "hr", 5),
        metric(r, "markov", "hr", 5),
        metric(r, "oracle", "hr", 5),
    );
    assert!(model > pop && model > markov, "model {model}, popularity {pop}, markov {markov}");
    assert!(oracle > model, "the oracle is the ceiling: oracle {oracle}, model {model}");
    // Per-segment figures exist (subjects.csv beside the events was picked up).
    let segs = r["scorers"][0]["per_segment"].as_array().unwrap();
    assert!(segs.iter().any(|s| s[0].as_str().unwrap().starts_with("enterprise:")), "{segs:?}");
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| tongban |") && md.contains("ties:"), "{md}");
    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("oracle"));
    // The tables are HTML tables, not Markdown text.
    assert!(html.contains("<table>") && html.contains("<td>tongban</td>") && !html.contains("| tongban |"), "{html}");
}

/// Users walk one of two fixed cycles; the next item is always determined by the last.
/// Returns the share of users whose last item does not occur earlier in their sequence.
fn cycles(path: &Path) -> f64 {
    let mut text = String::new();
    let mut fresh = 0;
    for u in 0..400 {
        let cycle: &[&str] = if u % 2 == 0 { &["10", "11", "12", "13", "14", "15"] } else { &["20", "21", "22", "23"] };
        let start = u % cycle.len();
        let len = 4 + u % 5;
        let items: Vec<&str> = (0..len).map(|i| cycle[(start + i) % cycle.len()]).collect();
        fresh += usize::from(!items[..len - 1].contains(&items[len - 1]));
        text += &format!("u{u} {}\n", items.join(" "));
    }
    std::fs::write(path, text).unwrap();
    fresh as f64 / 400.0
}

#[test]
fn leave_last_out_finds_a_deterministic_next_item() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cycles.txt");
    let fresh = cycles(&file);
    let out = tongban(&[
        "eval",
        "--events",
        file.to_str().unwrap(),
        "--format",
        "lines",
        "--protocol",
        "loo-full-repeat",
        "--k",
        "1,5",
        "--json",
    ]);
    let v = ok_json(&out);
    let r = &v["report"];
    assert_eq!(r["scorers"][0]["metrics"]["cases"], 400);
    assert!(metric(r, "markov", "hr", 1) > 0.99, "{r}");
    assert!(metric(r, "tongban", "hr", 1) > 0.95, "{r}");
    assert!(metric(r, "popularity", "hr", 1) < 0.5, "{r}");
    // The sampled protocol (history masked) ranks the target against 3 negatives: every
    // target not seen before is in the top 5, a repeated one is a miss, whatever the scorer.
    let out = tongban(&[
        "eval",
        "--events",
        file.to_str().unwrap(),
        "--format",
        "lines",
        "--protocol",
        "loo-sampled",
        "--negatives",
        "3",
        "--k",
        "1,5",
        "--json",
    ]);
    let v = ok_json(&out);
    for scorer in ["tongban", "popularity", "markov", "item-knn"] {
        assert!((metric(&v["report"], scorer, "hr", 5) - fresh).abs() < 1e-9, "{scorer}: {}", v["report"]);
    }
    assert!(fresh > 0.1 && fresh < 0.9, "{fresh}");
}

#[test]
fn a_trained_model_file_loads_for_evaluation_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cycles.txt");
    let _ = cycles(&file);
    let model = dir.path().join("m.model");
    let out = tongban(&[
        "--log-format",
        "json",
        "train",
        "--events",
        file.to_str().unwrap(),
        "--format",
        "lines",
        "--out",
        model.to_str().unwrap(),
        "--json",
    ]);
    // The training's progress lines are JSON objects with a level and the epoch.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert!(logs.iter().any(|l| l["level"] == "INFO" && l["fields"]["epoch"].is_number()), "{stderr}");
    let v = ok_json(&out);
    assert_eq!(v["header"]["data"]["events"], v["header"]["data"]["events"].as_u64().unwrap());
    assert!(v["header"]["schema_hash"].as_str().unwrap().len() == 16);
    let eval_with = |m: &Path, last: &str| {
        tongban(&[
            "eval",
            "--events",
            file.to_str().unwrap(),
            "--format",
            "lines",
            "--protocol",
            "loo-full-repeat",
            "--model",
            m.to_str().unwrap(),
            last,
        ])
    };
    let eval = |m: &Path| eval_with(m, "--json");
    let v = ok_json(&eval(&model));
    assert!(metric(&v["report"], "tongban", "hr", 1) > 0.95);
    // --record writes the figures into the file's header (the console shows them); the file
    // still loads and evaluates the same.
    let recorded = eval_with(&model, "--record");
    assert!(recorded.status.success(), "{}", String::from_utf8_lossy(&recorded.stderr));
    let (_, header) = tongban_model::artifact::load(&model, None).unwrap();
    let m = header.metrics.expect("recorded");
    assert_eq!(m["in_sample"], true, "{m}");
    assert_eq!(m["scorers"]["tongban"]["hr@1"].as_f64(), Some(metric(&v["report"], "tongban", "hr", 1)), "{m}");
    assert!(metric(&ok_json(&eval(&model))["report"], "tongban", "hr", 1) > 0.95);

    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.path().join("cut.model");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = eval(&cut);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated or corrupt"), "{err}");

    let foreign = dir.path().join("foreign.model");
    std::fs::write(&foreign, b"{\"not\": \"a model\"}").unwrap();
    let err = String::from_utf8_lossy(&eval(&foreign).stderr).to_string();
    assert!(err.contains("not a tongban model"), "{err}");

    // A model trained without a catalogue is refused when one is given.
    let out = tongban(&[
        "eval",
        "--events",
        file.to_str().unwrap(),
        "--format",
        "lines",
        "--protocol",
        "loo-full",
        "--catalogue",
        "catalogue",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn tuning_writes_the_best_parameters_and_its_search_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cycles.txt");
    let _ = cycles(&file);
    let best = dir.path().join("best.json");
    let out = tongban(&[
        "tune",
        "--events",
        file.to_str().unwrap(),
        "--format",
        "lines",
        "--protocol",
        "loo-full-repeat",
        "--trials",
        "3",
        "--out",
        best.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&best).unwrap()).unwrap();
    assert_eq!(v["trials"].as_array().unwrap().len(), 3);
    assert!(v["best"]["params"]["ranker"]["alpha"].as_f64().is_some());
    // The file feeds back into train.
    let model = dir.path().join("m.model");
    let out = tongban(&[
        "train",
        "--events",
        file.to_str().unwrap(),
        "--format",
        "lines",
        "--params",
        best.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The served model keeps each subject's gathered candidates and sequence state between
/// requests: its answers must be the ones computed from scratch, for every kind of request and
/// subject (each its own history, segment and bundles), as the clock moves.
#[test]
fn the_served_state_cache_answers_exactly_as_scoring_from_scratch() {
    use tongban_features::catalogue::Stage;
    use tongban_features::domain::SubjectKind;
    use tongban_model::{artifact, Request};
    let m = common::small_model(600, 80);
    let (model, _) = artifact::load(m.model_file.path(), Some(m.catalogue.clone())).unwrap();
    let served = model.clone().with_seq_cache(32 << 20);
    let profiles = model.profiles(&m.log, &[]);
    assert!(profiles.len() > 300, "{} subjects", profiles.len());
    let exclude: Vec<u32> = (0..model.service_count() as u32).step_by(7).collect();
    let requests = [
        Request { k: 10, ..Request::default() },
        Request { k: 3, exclude: &exclude, ..Request::default() },
        Request { k: 10, category: Some(Stage::Employment), ..Request::default() },
        Request { k: 10, audience: Some(SubjectKind::Enterprise), ..Request::default() },
        Request { k: 10, personalised: false, ..Request::default() },
    ];
    let (mut a, mut b) = (model.scratch(), served.scratch());
    let day = 86_400;
    let mut compared = 0;
    for at in [m.now, m.now + 3_600, m.now + 40 * day, m.now + 400 * day] {
        for p in profiles.iter().step_by(3) {
            for req in &requests {
                // Twice: the first fills the cache, the second is served from it.
                for _ in 0..2 {
                    let fresh = model.recommend(p, req, at, &mut a);
                    assert_eq!(served.recommend(p, req, at, &mut b), fresh, "at {at}");
                    compared += usize::from(!fresh.is_empty());
                }
            }
        }
    }
    assert!(compared > 1000, "{compared} non-empty answers compared");
    let (entries, bytes) = served.seq_cache_usage();
    assert!(entries > 0 && bytes > 0, "{entries} {bytes}");
}
