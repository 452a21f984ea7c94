//! Validation curve of the sequence model alone: trains on the log without each subject's last
//! three starts and reports, after every epoch, HR@10 and NDCG@10 of the second-last start (the
//! validation target of `tongban eval`) given the history before it, every service ranked.
//!
//! `cargo run --release --example seq_val -- EVENTS FORMAT [PARAMS.json] [--repeat]`
//! (`--repeat`: nothing masked; otherwise the subject's own services are masked).

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use tongban_features::domain::is_start;
use tongban_features::io::{read_log, BadRowPolicy, LogFormat};
use tongban_model::eval::{sequences, split_last};
use tongban_model::seq::{SeqModel, SeqParams};

fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").init();
    let args: Vec<String> = std::env::args().collect();
    let path = Path::new(&args[1]);
    let format = LogFormat::from_name(&args[2], path).expect("format");
    let repeat = args.iter().any(|a| a == "--repeat");
    let params: SeqParams = match args.get(3).filter(|a| !a.starts_with("--")) {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p).expect("params")).expect("params json"),
        None => SeqParams::default(),
    };
    eprintln!("{}", serde_json::to_string(&params).unwrap());
    let (log, _) = read_log(path, format, BadRowPolicy::Fail).expect("log");
    // The model trains without each subject's last three starts; the case is the second-last
    // with a history that ends in a start the model never trained on (as the test case's).
    let (lv, cases) = split_last(&log, 2);
    let (l3, _) = split_last(&log, 3);
    let mut hist: HashMap<u32, Vec<(u32, i64)>> = HashMap::new();
    for evs in lv.by_subject() {
        let starts: Vec<(u32, i64)> =
            evs.iter().filter(|e| is_start(e.kind, e.channel)).map(|e| (e.service, e.at.0)).collect();
        hist.insert(evs[0].subject, starts);
    }
    let items = lv.services.len();
    let started = std::time::Instant::now();
    let every: usize = std::env::var("SEQ_VAL_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut observe = |epoch: usize, m: &SeqModel| {
        if !epoch.is_multiple_of(every) {
            return;
        }
        let per: Vec<(f64, f64)> = cases
            .par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(q, out), c| {
                    let h = hist.get(&c.subject).map_or(&[][..], |v| v.as_slice());
                    let h = &h[h.len().saturating_sub(64)..];
                    m.query(h.iter().rev().copied(), c.now, q);
                    m.logits(q, out);
                    if !repeat {
                        for &(s, _) in h {
                            out[s as usize] = f32::NEG_INFINITY;
                        }
                    }
                    let t = out[c.target as usize];
                    let better = out.iter().filter(|&&v| v > t).count();
                    if better < 10 {
                        (1.0, 1.0 / ((better + 2) as f64).log2())
                    } else {
                        (0.0, 0.0)
                    }
                },
            )
            .collect();
        let n = per.len().max(1) as f64;
        let hr = per.iter().map(|p| p.0).sum::<f64>() / n;
        let ndcg = per.iter().map(|p| p.1).sum::<f64>() / n;
        println!(
            "epoch {epoch:3} loss {:.4} val HR@10 {hr:.4} NDCG@10 {ndcg:.4} ({:.0} s)",
            m.losses.last().copied().unwrap_or(f32::NAN),
            started.elapsed().as_secs_f64()
        );
    };
    let m = SeqModel::train_observed(&sequences(&l3), items, &params, &mut observe).expect("train");
    println!("kept epoch {} of {}; losses {:?}", m.kept_epoch, m.losses.len(), m.losses);
}
