//! `tongban profile`: one subject's profile, bundle progress and candidate features.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;

use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_subjects, segment_name, EventLog, SEGMENTS};
use tongban_features::profile::{BundleIndex, ProfileBuilder, ProfileContext, ProfileParams};
use tongban_features::stats::{ItemStats, StatsParams};
use tongban_features::time::Timestamp;
use tongban_features::vector::{Extractor, Scratch, SCHEMA, WIDTH};

use crate::{print_json, ProfileArgs};

fn round3(v: f32) -> f64 {
    (f64::from(v) * 1000.0).round() / 1000.0
}

pub fn run(args: &ProfileArgs) -> Result<ExitCode> {
    let cat = match &args.catalogue {
        Some(p) => Some(Catalogue::load(p).with_context(|| format!("loading the catalogue {}", p.display()))?),
        None => None,
    };
    let base = cat.as_ref().map_or_else(EventLog::default, EventLog::for_catalogue);
    let (mut log, report) = args.log.read_into(base)?;
    let last = log.events.iter().map(|e| e.at.0).max().unwrap_or(0);
    let now = match &args.at {
        Some(t) => Timestamp::parse(t).with_context(|| format!("--at {t:?}: expected RFC 3339"))?.0,
        None => last + 1,
    };
    let segments = match &args.subjects {
        Some(p) => read_subjects(p, &mut log, Timestamp(now).date_shanghai())?,
        None => vec![0; log.subjects.len()],
    };
    let Some(user) = log.subjects.get(&args.user) else {
        bail!("subject {:?} has no event in {}", args.user, args.log.events.display());
    };
    let ctx = ProfileContext {
        params: ProfileParams::default().check()?,
        bundles: cat.as_ref().map(BundleIndex::new).unwrap_or_default(),
    };
    let stats = ItemStats::build(&log, &segments, now, &StatsParams { segments: SEGMENTS, ..StatsParams::default() });
    let mut only = EventLog::default();
    only.subjects = log.subjects.clone();
    only.events = log.events.iter().filter(|e| e.subject == user).copied().collect();
    let profile = ProfileBuilder::new(&ctx).build(&only, &segments).swap_remove(user as usize);

    let name = |s: u32| -> String {
        match &cat {
            Some(c) => format!("{} {}", c.service(s).id, c.service(s).zh),
            None => log.services.name(s).to_owned(),
        }
    };
    let recent: Vec<_> = profile
        .recent()
        .iter()
        .rev()
        .take(12)
        .map(|r| json!({"at": Timestamp(r.at).to_string(), "kind": r.kind.as_str(), "service": name(r.service)}))
        .collect();
    let mut bundles = Vec::new();
    if let Some(c) = &cat {
        for pb in profile.bundles() {
            let b = &c.bundles()[pb.bundle as usize];
            let done: Vec<String> = pb.steps.iter().map(|&(k, _)| name(b.steps[k as usize].service)).collect();
            let next: Vec<String> = b
                .steps
                .iter()
                .enumerate()
                .filter(|(k, st)| pb.done(*k as u16).is_none() && st.after.iter().all(|&a| pb.done(a).is_some()))
                .map(|(_, st)| name(st.service))
                .collect();
            let open = pb.steps.len() < b.steps.len();
            bundles.push(json!({
                "bundle": format!("{} {}", b.id, b.zh),
                "done": done, "next": next, "open": open,
                "last_step_at": Timestamp(pb.last_at()).to_string(),
            }));
        }
    }
    // Candidates: every service the subject's audience could need, ranked by the plain sum of
    // the features (no model): a readable view of what the model will see.
    let ex = Extractor::new(std::sync::Arc::new(stats), cat.clone().map(std::sync::Arc::new));
    let mut scratch = Scratch::new(log.services.len());
    let prep = ex.prepare(&profile, now, &mut scratch);
    let candidates: Vec<u32> = (0..log.services.len() as u32).collect();
    let mut feats = vec![0f32; candidates.len() * WIDTH];
    ex.extract(&profile, &prep, &scratch, &candidates, &mut feats);
    let mut scored: Vec<(f32, u32)> = candidates
        .iter()
        .zip(feats.chunks_exact(WIDTH))
        .map(|(&c, f)| (f[..WIDTH - 1].iter().sum::<f32>(), c))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let top: Vec<_> = scored
        .iter()
        .take(args.top)
        .map(|&(sum, c)| {
            let f = &feats[c as usize * WIDTH..(c as usize + 1) * WIDTH];
            let nonzero: serde_json::Map<String, serde_json::Value> = SCHEMA
                .iter()
                .zip(f)
                .map(|(d, &v)| (d.name, round3(v)))
                .filter(|(_, v)| *v != 0.0)
                .map(|(name, v)| (name.to_owned(), json!(v)))
                .collect();
            json!({"service": name(c), "feature_sum": round3(sum), "features": nonzero})
        })
        .collect();
    let out = json!({
        "subject": args.user,
        "segment": segment_name(profile.segment()),
        "at": Timestamp(now).to_string(),
        "events": profile.events(),
        "first_at": profile.first_at().map(|t| Timestamp(t).to_string()),
        "last_at": profile.last_at().map(|t| Timestamp(t).to_string()),
        "encoded_bytes": profile.encode().len(),
        "skipped_rows": report.skipped,
        "recent": recent,
        "bundles": bundles,
        "top_candidates": top,
    });
    if args.json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "subject {} ({}), {} events from {} to {}, profile {} bytes; features at {}",
        args.user,
        out["segment"].as_str().unwrap_or(""),
        profile.events(),
        out["first_at"].as_str().unwrap_or("-"),
        out["last_at"].as_str().unwrap_or("-"),
        out["encoded_bytes"],
        out["at"].as_str().unwrap_or("")
    );
    println!("\nrecent events (newest first):");
    for r in &recent {
        println!(
            "  {}  {:<10} {}",
            r["at"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["service"].as_str().unwrap_or("")
        );
    }
    if !bundles.is_empty() {
        println!("\nbundles (一件事):");
        for b in &bundles {
            let list = |k: &str| {
                b[k].as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("; "))
                    .unwrap_or_default()
            };
            println!(
                "  {} [{}]",
                b["bundle"].as_str().unwrap_or(""),
                if b["open"] == true { "open" } else { "complete" }
            );
            println!("    done: {}", list("done"));
            if b["open"] == true {
                println!("    next: {}", list("next"));
            }
        }
    }
    println!("\ntop candidates by the plain sum of their features (no model):");
    for t in &top {
        println!("  {:<6} {}", t["feature_sum"], t["service"].as_str().unwrap_or(""));
        let f: Vec<String> =
            t["features"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
        println!("         {}", f.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
