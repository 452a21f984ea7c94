//! `tongban train`, `eval` and `tune`: wiring between files, the model crate and the terminal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;

use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_subjects, EventLog, LogFormat};
use tongban_features::time::Timestamp;
use tongban_model::eval::{evaluate, EvalInput, EvalReport, Negatives, Protocol, Truth};
use tongban_model::ranker::Learner;
use tongban_model::seq::SeqArch;
use tongban_model::ModelParams;

use crate::progress::{eprintln, Bars};
use crate::{print_json, LogArgs};

/// Flags shared by train, eval and tune: the data.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// Catalogue file or folder [default: the built-in Dalian catalogue for native logs, none
    /// for the public formats; without one, domain features are absent].
    #[arg(long)]
    pub catalogue: Option<PathBuf>,
    /// subjects.csv for segments; default: subjects.csv beside a native events file, if any.
    #[arg(long)]
    pub subjects: Option<PathBuf>,
}

/// A loaded data set.
pub struct Data {
    pub log: EventLog,
    pub segments: Vec<u16>,
    pub catalogue: Option<Arc<Catalogue>>,
    pub format: LogFormat,
}

impl DataArgs {
    pub fn load(&self) -> Result<Data> {
        let format =
            LogFormat::from_name(self.log.format.name(), &self.log.events).expect("every InFormat is a format");
        let native = matches!(format, LogFormat::NativeCsv | LogFormat::NativeJsonl);
        let catalogue = match &self.catalogue {
            Some(p) => {
                Some(Arc::new(Catalogue::load(p).with_context(|| format!("loading the catalogue {}", p.display()))?))
            }
            // A native log names the catalogue's services: the one built in, as `serve` uses.
            None if native => Some(Arc::new(Catalogue::builtin())),
            None => None,
        };
        let base = catalogue.as_deref().map_or_else(EventLog::default, EventLog::for_catalogue);
        let (mut log, _) = self.log.read_into(base)?;
        let now = log.events.iter().map(|e| e.at.0).max().unwrap_or(0);
        let beside = self.log.events.parent().map(|d| d.join("subjects.csv"));
        let subjects = self.subjects.clone().or_else(|| beside.filter(|p| native && p.exists()));
        let segments = match subjects {
            Some(p) => read_subjects(&p, &mut log, Timestamp(now).date_shanghai())?,
            None => vec![0; log.subjects.len()],
        };
        Ok(Data { log, segments, catalogue, format })
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolName {
    LooFull,
    LooFullRepeat,
    LooSampled,
    Temporal,
}

impl ProtocolName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolName::LooFull => "loo-full",
            ProtocolName::LooFullRepeat => "loo-full-repeat",
            ProtocolName::LooSampled => "loo-sampled",
            ProtocolName::Temporal => "temporal",
        }
    }
}

/// The data and the protocol: what `eval` and `tune` share.
#[derive(clap::Args, Debug)]
pub struct ProtocolArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// loo-full: each subject's last start against every service, history masked;
    /// loo-full-repeat: the same, repeats allowed; loo-sampled: against --negatives sampled
    /// services (or --negatives-file); temporal: the first start after the cut-off (--future).
    #[arg(long, value_enum)]
    pub protocol: ProtocolName,
    /// Cut-offs for HR@k and NDCG@k.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,20")]
    pub k: Vec<usize>,
    /// loo-sampled: negatives per case.
    #[arg(long, default_value_t = 100)]
    pub negatives: usize,
    /// loo-sampled: `user item1 item2 ...` lines of negatives instead of sampling.
    #[arg(long)]
    pub negatives_file: Option<PathBuf>,
    /// Seed of sampling and of the tie-break order.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// temporal: the log after the cut-off (future.csv).
    #[arg(long)]
    pub future: Option<PathBuf>,
    /// temporal: truth.jsonl of the generator, for the oracle.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub protocol_args: ProtocolArgs,
    /// Write report.md and report.html into this folder.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Evaluate this model file instead of training on the training part.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Write the figures into the --model file's header (its evaluation, as the console's
    /// overview and model comparison show it); the file is replaced atomically.
    #[arg(long, requires = "model")]
    pub record: bool,
    /// Model parameters (JSON, as written by `tongban tune`) for the model trained here.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Print the report as JSON on stdout (with the run's seconds) instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl std::ops::Deref for EvalArgs {
    type Target = ProtocolArgs;
    fn deref(&self) -> &ProtocolArgs {
        &self.protocol_args
    }
}

/// Reads model parameters from a JSON file (the `params` of `tongban tune`'s output, or a
/// bare parameter object).
pub fn read_params(path: Option<&Path>) -> Result<ModelParams> {
    let Some(path) = path else { return Ok(ModelParams::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let p = v.get("best").and_then(|b| b.get("params")).unwrap_or(&v);
    serde_json::from_value(p.clone()).with_context(|| format!("{}: expected model parameters", path.display()))
}

fn read_truth(path: &Path, log: &mut EventLog) -> Result<Truth> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut truth: Truth = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let (Some(subject), Some(next)) = (v["subject"].as_str(), v["next"].as_array()) else {
            bail!("{}:{}: expected {{\"subject\": ..., \"next\": [[service, p], ...]}}", path.display(), i + 1);
        };
        let s = log.subjects.intern(subject);
        let mut dist = Vec::new();
        for p in next {
            let (Some(id), Some(prob)) = (p[0].as_str(), p[1].as_f64()) else {
                bail!("{}:{}: field `next`: expected [service, probability] pairs", path.display(), i + 1);
            };
            let Some(svc) = log.services.get(id) else {
                bail!("{}:{}: unknown service {id:?}", path.display(), i + 1);
            };
            dist.push((svc, prob));
        }
        truth.insert(s, dist);
    }
    Ok(truth)
}

fn read_negatives(path: &Path, log: &EventLog) -> Result<HashMap<u32, Vec<u32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut f = line.split_ascii_whitespace();
        let Some(user) = f.next() else { continue };
        let Some(u) = log.subjects.get(user) else {
            bail!("{}:{}: unknown user {user:?}", path.display(), i + 1);
        };
        let items: Result<Vec<u32>> = f
            .map(|it| {
                log.services.get(it).with_context(|| format!("{}:{}: unknown item {it:?}", path.display(), i + 1))
            })
            .collect();
        let items = items?;
        if items.is_empty() {
            bail!("{}:{}: user {user:?} has no negatives (expected `user item1 item2 ...`)", path.display(), i + 1);
        }
        map.insert(u, items);
    }
    if map.is_empty() {
        // Without negatives every target would rank first: a perfect score that measures nothing.
        bail!("{}: no negatives (expected lines of `user item1 item2 ...`)", path.display());
    }
    Ok(map)
}

/// Builds the protocol from the flags; reads the future log into the training log's indices.
pub fn protocol(args: &ProtocolArgs, data: &mut Data) -> Result<Protocol> {
    Ok(match args.protocol.as_str() {
        "loo-full" => Protocol::LooFull { mask_history: true },
        "loo-full-repeat" => Protocol::LooFull { mask_history: false },
        "loo-sampled" => Protocol::LooSampled {
            mask_history: true,
            negatives: match &args.negatives_file {
                Some(f) => Negatives::Given(read_negatives(f, &data.log)?),
                None => Negatives::Sampled { count: args.negatives, seed: args.seed },
            },
        },
        "temporal" => {
            let Some(f) = &args.future else { bail!("--protocol temporal needs --future FILE (future.csv)") };
            let (future, _) =
                crate::read_log_with_progress(f, data.format, args.data.log.policy(), data.log.empty_like())?;
            // Services first seen in the future log extend the index (old indices are a prefix).
            data.log.subjects = future.subjects.clone();
            data.log.services = future.services.clone();
            let truth = match &args.truth {
                Some(t) => Some(read_truth(t, &mut data.log)?),
                None => None,
            };
            let mut future = future;
            future.subjects = data.log.subjects.clone();
            data.segments.resize(data.log.subjects.len(), 0);
            Protocol::Temporal { future, truth }
        }
        p => bail!("unknown --protocol {p:?}: expected loo-full, loo-full-repeat, loo-sampled or temporal"),
    })
}

pub fn eval(args: &EvalArgs) -> Result<ExitCode> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k: expected positive cut-offs such as 1,5,10,20");
    }
    let started = std::time::Instant::now();
    let mut data = args.data.load()?;
    let protocol = protocol(args, &mut data)?;
    let mut in_sample = false;
    let loaded = match &args.model {
        Some(p) => {
            let (m, h) = tongban_model::artifact::load(p, data.catalogue.clone())?;
            // The temporal protocol's targets are in --future, not in the training file.
            let temporal = matches!(protocol, Protocol::Temporal { .. });
            if !temporal && h.data.fingerprint == sha256_file(&args.data.log.events)? {
                in_sample = true;
                eprintln!(
                    "note: {} was trained on this very file, test targets included: its figures are optimistic. \
                     Leave out --model to train on the training part only.",
                    p.display()
                );
            }
            Some((m, h))
        }
        None => None,
    };
    let bars = Bars::new();
    let input = EvalInput {
        log: &data.log,
        segments: &data.segments,
        catalogue: data.catalogue.clone(),
        params: read_params(args.params.as_deref())?,
        model: loaded.as_ref().map(|(m, _)| m),
        ks: args.k.clone(),
        seed: args.seed,
        progress: &bars,
    };
    let report = evaluate(&input, &protocol)?;
    drop(bars);
    let secs = started.elapsed().as_secs_f64();
    if let Some(dir) = &args.report {
        crate::report::write(dir, &report, &args.data.log.events)?;
    }
    if let (true, Some((model, header)), Some(path)) = (args.record, &loaded, &args.model) {
        let scorers: serde_json::Map<String, serde_json::Value> = report
            .scorers
            .iter()
            .map(|s| {
                let mut m = serde_json::Map::new();
                for (k, v) in &s.metrics.hr {
                    m.insert(format!("hr@{k}"), json!(v));
                }
                for (k, v) in &s.metrics.ndcg {
                    m.insert(format!("ndcg@{k}"), json!(v));
                }
                (s.name.clone(), serde_json::Value::Object(m))
            })
            .collect();
        let mut header = header.clone();
        header.metrics = Some(json!({
            "protocol": report.protocol,
            "events": args.data.log.events.display().to_string(),
            "cases": report.scorers.first().map_or(0, |s| s.metrics.cases),
            "evaluated_at": now_rfc3339(),
            "in_sample": in_sample,
            "scorers": scorers,
        }));
        // A new file beside, then a rename: a crash leaves the old file or the new, never half.
        let tmp = path.with_extension("recording");
        tongban_model::artifact::save(&tmp, model, &header).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        eprintln!("recorded the evaluation in {}", path.display());
    }
    if args.json {
        print_json(&json!({ "report": report, "seconds": secs }))?;
    } else {
        print_table(&report);
        eprintln!("({secs:.1} s)");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_table(r: &EvalReport) {
    println!(
        "protocol: {}; {} services; {} cases",
        r.protocol,
        r.services,
        r.scorers.first().map_or(0, |s| s.metrics.cases)
    );
    let mut head = format!("{:<12}", "scorer");
    for k in &r.ks {
        head += &format!(" {:>8} {:>8}", format!("HR@{k}"), format!("NDCG@{k}"));
    }
    head += &format!(" {:>8} {:>8}", "MRR", "cover");
    println!("{head}");
    for s in &r.scorers {
        let mut line = format!("{:<12}", s.name);
        for (h, n) in s.metrics.hr.iter().zip(&s.metrics.ndcg) {
            line += &format!(" {:>8.4} {:>8.4}", h.1, n.1);
        }
        line += &format!(" {:>8.4} {:>8.3}", s.metrics.mrr, s.metrics.coverage);
        println!("{line}");
    }
    println!("ties: {}", r.tie_rule);
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Model parameters (JSON from `tongban tune`).
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Timed (native, tsv) logs: the ranker learns the first start within this many days after
    /// internal cut-offs.
    #[arg(long, default_value_t = 90)]
    pub horizon_days: u32,
    /// Sequence logs (pairs, lines): leave the subject's own services out of the candidates.
    #[arg(long)]
    pub mask_history: bool,
    /// Print the result as JSON on stdout (with time and peak memory).
    #[arg(long)]
    pub json: bool,
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    Timestamp(secs).to_string()
}

pub fn train(args: &TrainArgs) -> Result<ExitCode> {
    use tongban_model::eval::TrainStyle;
    let started = std::time::Instant::now();
    let params = read_params(args.params.as_deref())?;
    let data = args.data.load()?;
    let loaded = started.elapsed().as_secs_f64();
    eprintln!(
        "read {} events of {} subjects, {} services ({loaded:.1} s); training",
        data.log.events.len(),
        data.log.subjects.len(),
        data.log.services.len()
    );
    let style = match data.format {
        LogFormat::Pairs | LogFormat::Lines => TrainStyle::LastItem { exclude_history: args.mask_history },
        _ => TrainStyle::Temporal { horizon_days: args.horizon_days },
    };
    let bars = Bars::new();
    let model =
        tongban_model::eval::train_with(&data.log, &data.segments, data.catalogue.clone(), &params, style, &bars)?;
    drop(bars);
    let info = tongban_model::artifact::DataInfo {
        source: args.data.log.events.display().to_string(),
        fingerprint: sha256_file(&args.data.log.events)?,
        events: data.log.events.len() as u64,
        subjects: data.log.subjects.len() as u64,
        services: data.log.services.len() as u64,
    };
    let header = tongban_model::artifact::header_for(&model, info, None, now_rfc3339());
    tongban_model::artifact::save(&args.out, &model, &header)?;
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&args.out).map_or(0, |m| m.len());
    if args.json {
        print_json(&json!({
            "out": args.out, "header": header, "bytes": size, "seconds": secs, "read_seconds": loaded,
            "peak_rss_bytes": peak_rss_bytes(),
        }))?;
    } else {
        eprintln!("wrote {} ({} bytes) in {secs:.1} s", args.out.display(), size);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub eval: ProtocolArgs,
    /// Random-search trials.
    #[arg(long, default_value_t = 12)]
    pub trials: usize,
    /// Where to write the best parameters and the search log (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// The process's peak resident set (Linux `VmHWM`), `None` elsewhere. Read by hand: the
/// crates that report memory give the current size, not the peak.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Random search on the validation split: the test targets (loo) or the future log (temporal)
/// are removed first, so the search never sees them.
pub fn tune(args: &TuneArgs) -> Result<ExitCode> {
    use rand::{Rng, SeedableRng};
    let ev = &args.eval;
    if args.trials == 0 {
        bail!("--trials: expected at least 1");
    }
    if ev.k.is_empty() || ev.k.contains(&0) {
        bail!("--k: expected positive cut-offs such as 5,10");
    }
    let mut data = ev.data.load()?;
    // The validation task: the same protocol one step earlier.
    let (log, protocol) = match ev.protocol.as_str() {
        "temporal" => {
            let now = data.log.events.iter().map(|e| e.at.0).max().unwrap_or(0) + 1;
            let horizon = 90 * 86_400;
            let mut before = data.log.empty_like();
            let mut after = data.log.empty_like();
            for e in &data.log.events {
                if e.at.0 < now - horizon {
                    before.events.push(*e)
                } else {
                    after.events.push(*e)
                }
            }
            (before, Protocol::Temporal { future: after, truth: None })
        }
        _ => {
            let p = protocol(ev, &mut data)?;
            (tongban_model::eval::split_last(&data.log, 1).0, p)
        }
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ev.seed);
    let mut trials = Vec::new();
    let mut best: Option<(f64, ModelParams)> = None;
    let metric_k = if ev.k.contains(&10) { 10 } else { ev.k[0] };
    let trials_bar = crate::progress::bar(args.trials as u64, "tuning", "trials");
    let bars = Bars::new();
    for t in 0..args.trials {
        let mut p = ModelParams::default();
        if t > 0 {
            p.ranker.alpha = 10f64.powf(rng.gen_range(-5.0..-0.5));
            p.ranker.negatives = rng.gen_range(5..=50);
            p.neighbours = [50, 100, 200, 400][rng.gen_range(0..4)];
            p.cooc_window_days = [7.0, 30.0, 90.0, 365.0][rng.gen_range(0..4)];
            p.max_events = [16, 32, 64, 128, 256][rng.gen_range(0..5)];
            p.knn_keep = [50, 200, 500][rng.gen_range(0..3)];
            p.model_candidates = [20, 50, 100, 200][rng.gen_range(0..4)];
            p.ranker.learner = [Learner::Logistic, Learner::Boosted][rng.gen_range(0..2)];
            p.ranker.budget = [0.3, 0.5, 1.0][rng.gen_range(0..3)];
            p.seq.epochs = [0, 10, 20, 40][rng.gen_range(0..4)];
            p.seq.dim = [32, 64, 96][rng.gen_range(0..3)];
            p.seq.dropout = rng.gen_range(0.0..0.5);
            p.seq.item_dropout = rng.gen_range(0.0..0.4);
            p.seq.lr = 10f64.powf(rng.gen_range(-3.3..-2.0));
            p.seq.arch = [SeqArch::Filter, SeqArch::Sasrec][rng.gen_range(0..2)];
            p.seq.layers = rng.gen_range(1..=3);
        }
        let input = EvalInput {
            log: &log,
            segments: &data.segments,
            catalogue: data.catalogue.clone(),
            params: p,
            model: None,
            ks: vec![metric_k],
            seed: ev.seed,
            progress: &bars,
        };
        let started = std::time::Instant::now();
        let report = evaluate(&input, &protocol)?;
        let m = &report.scorer("tongban").expect("the model is always scored").metrics;
        let (hr, ndcg) = (m.hr[0].1, m.ndcg[0].1);
        eprintln!(
            "trial {t}: HR@{metric_k} {hr:.4} NDCG@{metric_k} {ndcg:.4} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        trials_bar.inc(1);
        trials.push(json!({ "trial": t, "params": p, "hr": hr, "ndcg": ndcg }));
        if best.as_ref().is_none_or(|b| ndcg > b.0) {
            best = Some((ndcg, p));
        }
    }
    drop(bars);
    trials_bar.finish_and_clear();
    let (score, params) = best.expect("at least one trial");
    let out = json!({
        "protocol": ev.protocol.as_str(),
        "objective": format!("NDCG@{metric_k} on the validation split (test targets removed)"),
        "best": { "params": params, "ndcg": score },
        "trials": trials,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("best NDCG@{metric_k} {score:.4}; parameters and search log in {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
