//! `tongban train`, `eval` and `tune`: wiring between files, the model crate and the terminal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;

use tongban_features::catalogue::Catalogue;
use tongban_features::io::{read_log_into, read_subjects, EventLog, LogFormat};
use tongban_features::time::Timestamp;
use tongban_model::eval::{evaluate, EvalInput, EvalReport, Negatives, Protocol, Truth};
use tongban_model::ModelParams;

use crate::{print_json, LogArgs};

/// Flags shared by train, eval and tune: the data.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// Catalogue file or folder (native logs); without it, domain features are absent.
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
        let catalogue = match &self.catalogue {
            Some(p) => Some(Arc::new(Catalogue::load(p).with_context(|| format!("loading the catalogue {}", p.display()))?)),
            None => None,
        };
        let Some(format) = LogFormat::from_name(&self.log.format, &self.log.events) else {
            bail!("unknown --format {:?}: expected native, csv, jsonl, pairs, lines or tsv", self.log.format);
        };
        let base = catalogue.as_deref().map_or_else(EventLog::default, EventLog::for_catalogue);
        let (mut log, _) = self.log.read_into(base)?;
        let now = log.events.iter().map(|e| e.at.0).max().unwrap_or(0);
        let beside = self.log.events.parent().map(|d| d.join("subjects.csv"));
        let subjects = self.subjects.clone().or_else(|| {
            let native = matches!(format, LogFormat::NativeCsv | LogFormat::NativeJsonl);
            beside.filter(|p| native && p.exists())
        });
        let segments = match subjects {
            Some(p) => read_subjects(&p, &mut log, Timestamp(now).date_shanghai())?,
            None => vec![0; log.subjects.len()],
        };
        Ok(Data { log, segments, catalogue, format })
    }
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// loo-full (history masked), loo-full-repeat, loo-sampled, temporal.
    #[arg(long)]
    pub protocol: String,
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
    /// Write report.md and report.html into this folder.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
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
            .map(|it| log.services.get(it).with_context(|| format!("{}:{}: unknown item {it:?}", path.display(), i + 1)))
            .collect();
        map.insert(u, items?);
    }
    Ok(map)
}

/// Builds the protocol from the flags; reads the future log into the training log's indices.
pub fn protocol(args: &EvalArgs, data: &mut Data) -> Result<Protocol> {
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
            let (future, _) = read_log_into(f, data.format, args.data.log.policy(), data.log.empty_like())?;
            data.log.subjects = future.subjects.clone();
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
    let input = EvalInput {
        log: &data.log,
        segments: &data.segments,
        catalogue: data.catalogue.clone(),
        params: ModelParams::default(),
        model: None,
        ks: args.k.clone(),
        seed: args.seed,
    };
    let report = evaluate(&input, &protocol)?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(dir) = &args.report {
        crate::report::write(dir, &report, &args.data.log.events)?;
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
    println!("protocol: {}; {} services; {} cases", r.protocol, r.services, r.scorers.first().map_or(0, |s| s.metrics.cases));
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
