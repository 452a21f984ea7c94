//! Evaluation: protocols, metrics, baselines and the oracle, in one run and one table.
//!
//! Protocols:
//! - `loo-full` (history masked) and `loo-full-repeat` (nothing masked): per subject with at
//!   least 3 starts the last start is the test target and the second-last the validation
//!   target; every service is ranked (full ranking).
//! - `loo-sampled`: the same split, the target ranked against N sampled negatives (seeded, never
//!   from the subject's history) or against the negatives of a file.
//! - `temporal`: fit on a log up to a cut-off; the target is each subject's first start in the
//!   future log; with the generator's truth, the oracle ranks by the true distribution.
//!
//! Without a given model the ranker is trained on the validation targets with statistics built
//! without them (and without the test targets), then applied with statistics that include the
//! validation targets but never the test targets: no test data leaks.
//!
//! **Ties**: a target tied with other services is placed after those whose seeded random key
//! (FNV-1a of seed, subject and service) is smaller: a random order per subject that cannot
//! follow item ids. HR, NDCG (binary relevance, log2 discount) and MRR use that rank.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::is_start;
use tongban_features::io::{fnv1a, segment_name, EventLog, LogEvent};
use tongban_features::profile::Profile;

use crate::knn::ItemSims;
use crate::progress::{Progress, Silent};
use crate::ranker::Ranker;
use crate::recommend::{Case, Model, ModelError, ModelParams, Request, ScoreScratch};
use crate::seq::SeqModel;

/// How evaluation cases are built.
#[derive(Debug, Clone)]
pub enum Protocol {
    LooFull { mask_history: bool },
    LooSampled { negatives: Negatives, mask_history: bool },
    Temporal { future: EventLog, truth: Option<Truth> },
}

/// Negatives of the sampled protocol.
#[derive(Debug, Clone)]
pub enum Negatives {
    Sampled {
        count: usize,
        seed: u64,
    },
    /// Per subject index, its negatives.
    Given(HashMap<u32, Vec<u32>>),
}

/// The generator's truth: per subject index, (service, probability).
pub type Truth = HashMap<u32, Vec<(u32, f64)>>;

/// One test case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestCase {
    pub subject: u32,
    pub target: u32,
    pub now: i64,
}

/// Metrics of one scorer over a set of cases.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub cases: u64,
    pub hr: Vec<(usize, f64)>,
    pub ndcg: Vec<(usize, f64)>,
    pub mrr: f64,
    /// Share of the services that appear in at least one top-k list (k = the largest asked).
    pub coverage: f64,
}

#[derive(Debug, Clone, Default)]
struct Acc {
    cases: u64,
    hits: Vec<f64>,
    ndcg: Vec<f64>,
    rr: f64,
}

impl Acc {
    fn new(ks: usize) -> Acc {
        Acc { cases: 0, hits: vec![0.0; ks], ndcg: vec![0.0; ks], rr: 0.0 }
    }
    fn add(&mut self, rank: Option<u64>, ks: &[usize]) {
        self.cases += 1;
        let Some(r) = rank else { return };
        for (i, &k) in ks.iter().enumerate() {
            if r as usize <= k {
                self.hits[i] += 1.0;
                self.ndcg[i] += 1.0 / ((r + 1) as f64).log2();
            }
        }
        self.rr += 1.0 / r as f64;
    }
    fn metrics(&self, ks: &[usize], coverage: f64) -> Metrics {
        let n = self.cases.max(1) as f64;
        Metrics {
            cases: self.cases,
            hr: ks.iter().zip(&self.hits).map(|(&k, h)| (k, h / n)).collect(),
            ndcg: ks.iter().zip(&self.ndcg).map(|(&k, h)| (k, h / n)).collect(),
            mrr: self.rr / n,
            coverage,
        }
    }
}

/// The tie-break key of a service for a subject.
fn tie_key(seed: u64, subject: u32, service: u32) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..12].copy_from_slice(&subject.to_le_bytes());
    b[12..].copy_from_slice(&service.to_le_bytes());
    fnv1a(&b)
}

/// 1-based rank of `target` among `candidates` (all services when `None`) by descending score,
/// ties broken by [`tie_key`]; `None` when the target is masked (score -inf).
pub fn rank_of(scores: &[f32], target: u32, candidates: Option<&[u32]>, subject: u32, seed: u64) -> Option<u64> {
    let t = scores[target as usize];
    if t == f32::NEG_INFINITY {
        return None;
    }
    let tk = tie_key(seed, subject, target);
    let mut rank = 1u64;
    let mut visit = |s: u32| {
        let v = scores[s as usize];
        if s != target && (v > t || (v == t && tie_key(seed, subject, s) < tk)) {
            rank += 1;
        }
    };
    match candidates {
        Some(c) => c.iter().copied().for_each(&mut visit),
        None => (0..scores.len() as u32).for_each(&mut visit),
    }
    Some(rank)
}

/// The top `k` services by score (ties by [`tie_key`]), best first.
fn top_k(scores: &[f32], k: usize, subject: u32, seed: u64, out: &mut Vec<(f32, u64, u32)>) {
    out.clear();
    for (s, &v) in scores.iter().enumerate() {
        if v == f32::NEG_INFINITY {
            continue;
        }
        if out.len() == k {
            let worst = out[k - 1];
            if v < worst.0 {
                continue;
            }
        }
        let key = tie_key(seed, subject, s as u32);
        let better = |a: &(f32, u64, u32)| a.0 > v || (a.0 == v && a.1 < key);
        let pos = out.partition_point(better);
        if pos < k {
            out.insert(pos, (v, key, s as u32));
            out.truncate(k);
        }
    }
}

/// What a scorer scores: a case, its subject's profile, and the list ranked (the sampled
/// protocol's), `None` for all services.
struct Query<'a> {
    case: &'a TestCase,
    profile: &'a Profile,
    items: Option<&'a [u32]>,
}

/// A way to score every service for a case.
trait FullScorer: Sync {
    fn name(&self) -> String;
    fn score(&self, q: &Query<'_>, out: &mut [f32], scratch: &mut ScoreScratch);
}

struct Popularity<'m>(&'m Model);
struct Markov<'m>(&'m Model);
/// Item-kNN over the last 20 distinct starts (the classic baseline), with its own
/// similarities (200 neighbours), whatever the model's parameters.
struct ItemKnn<'m>(&'m Model, ItemSims);
/// Item-kNN over every retained start (the model's feature, alone).
struct LongKnn<'m>(&'m Model);
/// The sequence model alone.
struct Sequence<'m>(&'m Model);
/// The model: every service of the list scored by the ranker.
struct Ranked<'m> {
    model: &'m Model,
    name: String,
}
/// The model's serving path: the candidate stage scored by the ranker, every other service
/// below it by popularity (to measure what the candidate stage loses).
struct Candidates<'m>(&'m Model);
struct Oracle<'t>(&'t Truth);

fn pop_prior(m: &Model, s: usize) -> f32 {
    m.stats().pop(s as u32) as f32 / (m.stats().pop_max().max(1) as f32) * 1e-6
}

impl FullScorer for Popularity<'_> {
    fn name(&self) -> String {
        "popularity".into()
    }
    fn score(&self, _: &Query<'_>, out: &mut [f32], _: &mut ScoreScratch) {
        for (s, o) in out.iter_mut().enumerate() {
            *o = self.0.stats().pop(s as u32) as f32;
        }
    }
}

impl FullScorer for Markov<'_> {
    fn name(&self) -> String {
        "markov".into()
    }
    /// First-order Markov chain from the last start, popularity prior for everything else.
    fn score(&self, q: &Query<'_>, out: &mut [f32], _: &mut ScoreScratch) {
        let profile = q.profile;
        for (s, o) in out.iter_mut().enumerate() {
            *o = pop_prior(self.0, s);
        }
        if let Some(last) = profile.starts().next_back() {
            let t1 = self.0.stats().trans1();
            let total = t1.total(last.service).max(1) as f32;
            for e in t1.row(last.service) {
                out[e.to as usize] += e.count as f32 / total;
            }
        }
    }
}

impl FullScorer for ItemKnn<'_> {
    fn name(&self) -> String {
        "item-knn".into()
    }
    /// Sum of cosine similarities to the last 20 distinct starts, popularity prior.
    fn score(&self, q: &Query<'_>, out: &mut [f32], _: &mut ScoreScratch) {
        let profile = q.profile;
        for (s, o) in out.iter_mut().enumerate() {
            *o = pop_prior(self.0, s);
        }
        let mut seen: Vec<u32> = Vec::with_capacity(20);
        for r in profile.starts().rev() {
            if seen.len() == 20 {
                break;
            }
            if seen.contains(&r.service) {
                continue;
            }
            seen.push(r.service);
            for &(b, s) in self.1.row(r.service) {
                out[b as usize] += s;
            }
        }
    }
}

impl FullScorer for LongKnn<'_> {
    fn name(&self) -> String {
        "item-knn (whole history)".into()
    }
    fn score(&self, q: &Query<'_>, out: &mut [f32], scratch: &mut ScoreScratch) {
        let profile = q.profile;
        let knn = self.0.knn_scores(profile, scratch);
        for (s, o) in out.iter_mut().enumerate() {
            *o = knn[s] + pop_prior(self.0, s);
        }
    }
}

impl FullScorer for Sequence<'_> {
    fn name(&self) -> String {
        "sequence model".into()
    }
    fn score(&self, q: &Query<'_>, out: &mut [f32], scratch: &mut ScoreScratch) {
        let (case, profile) = (q.case, q.profile);
        let logits = self.0.seq_logits(profile, case.now, scratch);
        for (s, o) in out.iter_mut().enumerate() {
            *o = logits.get(s).copied().unwrap_or(f32::MIN);
        }
    }
}

impl FullScorer for Ranked<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn score(&self, q: &Query<'_>, out: &mut [f32], scratch: &mut ScoreScratch) {
        let (case, profile, items) = (q.case, q.profile, q.items);
        let req = Request { k: usize::MAX, ..Request::default() };
        self.model.score_all(profile, &req, case.now, items, out, scratch);
    }
}

impl FullScorer for Candidates<'_> {
    fn name(&self) -> String {
        "tongban, candidate stage only".into()
    }
    fn score(&self, q: &Query<'_>, out: &mut [f32], scratch: &mut ScoreScratch) {
        let (case, profile) = (q.case, q.profile);
        for (s, o) in out.iter_mut().enumerate() {
            *o = self.0.floor_score(s as u32);
        }
        let req = Request { k: usize::MAX, ..Request::default() };
        self.0.score_candidates(profile, &req, case.now, scratch);
        let (cands, scores, _) = scratch.scored();
        for (&c, &v) in cands.iter().zip(scores) {
            out[c as usize] = v;
        }
    }
}

impl FullScorer for Oracle<'_> {
    fn name(&self) -> String {
        "oracle".into()
    }
    fn score(&self, q: &Query<'_>, out: &mut [f32], _: &mut ScoreScratch) {
        let case = q.case;
        out.iter_mut().for_each(|o| *o = -1.0);
        if let Some(t) = self.0.get(&case.subject) {
            for &(s, p) in t {
                out[s as usize] = p as f32;
            }
        }
    }
}

/// The results of one scorer.
#[derive(Debug, Clone, Serialize)]
pub struct ScorerReport {
    pub name: String,
    pub metrics: Metrics,
    pub per_segment: Vec<(String, Metrics)>,
}

/// The results of an evaluation run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub protocol: String,
    pub tie_rule: String,
    pub ks: Vec<usize>,
    pub services: usize,
    pub scorers: Vec<ScorerReport>,
    /// The ranker's weights (for the report), when trained in this run.
    pub ranker: Option<Ranker>,
}

impl EvalReport {
    pub fn scorer(&self, name: &str) -> Option<&ScorerReport> {
        self.scorers.iter().find(|s| s.name == name)
    }
}

/// The log without each eligible subject's last `k` starts (and what follows them), and the
/// cut start of each eligible subject (subjects with at least 3 starts).
pub fn split_last(log: &EventLog, k: usize) -> (EventLog, Vec<TestCase>) {
    let mut out = log.empty_like();
    let mut cases = Vec::new();
    for evs in log.by_subject() {
        let starts: Vec<usize> = (0..evs.len()).filter(|&i| is_start(evs[i].kind, evs[i].channel)).collect();
        if starts.len() >= 3 && starts.len() > k {
            let cut = starts[starts.len() - k];
            let e = evs[cut];
            cases.push(TestCase { subject: e.subject, target: e.service, now: e.at.0 });
            out.events.extend_from_slice(&evs[..cut]);
        } else {
            out.events.extend_from_slice(evs);
        }
    }
    (out, cases)
}

fn history(log: &EventLog) -> HashMap<u32, Vec<u32>> {
    let mut h: HashMap<u32, Vec<u32>> = HashMap::new();
    for evs in log.by_subject() {
        let mut items: Vec<u32> = evs.iter().filter(|e| is_start(e.kind, e.channel)).map(|e| e.service).collect();
        items.sort_unstable();
        items.dedup();
        h.insert(evs[0].subject, items);
    }
    h
}

/// A log the ranker learns from: its events, its cases (first starts after its end), its end.
pub type Fit = (EventLog, Vec<TestCase>, i64);

/// Fits for a log ending at `now`: the same task one horizon earlier, and in the same season
/// one year earlier (yearly windows and seasons), when the log reaches back that far.
pub fn temporal_fits(log: &EventLog, now: i64, horizon: i64) -> Vec<Fit> {
    let mut fits = Vec::new();
    for cut in [now - horizon, now - 365 * 86_400] {
        let mut inner = log.empty_like();
        inner.events = log.events.iter().filter(|e| e.at.0 < cut).copied().collect();
        let cases = first_starts(&log.events, cut, cut + horizon, cut);
        if !inner.events.is_empty() && !cases.is_empty() {
            fits.push((inner, cases, cut));
        }
    }
    fits
}

/// Each subject's starts in time order, as (service, time).
pub fn sequences(log: &EventLog) -> Vec<Vec<(u32, i64)>> {
    log.by_subject()
        .map(|evs| evs.iter().filter(|e| is_start(e.kind, e.channel)).map(|e| (e.service, e.at.0)).collect::<Vec<_>>())
        .filter(|s| s.len() >= 2)
        .collect()
}

/// Trains the sequence model on the earliest fit's log, so that no fit's targets were its
/// training labels; `None` when it is turned off (`seq.epochs = 0`).
pub fn fit_seq(
    fits: &[Fit],
    params: &ModelParams,
    progress: &dyn Progress,
) -> Result<Option<Arc<SeqModel>>, ModelError> {
    params.seq.check()?;
    if params.seq.epochs == 0 {
        return Ok(None);
    }
    let Some((log, _, _)) = fits.iter().min_by_key(|f| f.2) else { return Ok(None) };
    let model = SeqModel::train_with(&sequences(log), log.services.len(), &params.seq, progress)?;
    Ok(Some(Arc::new(model)))
}

/// Learns the ranker from fits: statistics and profiles of each fit's log, its cases as
/// positives, sampled services as negatives; one logistic regression over all of them.
pub fn fit_ranker(
    fits: &[Fit],
    segments: &[u16],
    catalogue: Option<Arc<Catalogue>>,
    params: &ModelParams,
    seq: Option<Arc<SeqModel>>,
    exclude_history: bool,
    progress: &dyn Progress,
) -> Result<Ranker, ModelError> {
    let per_fit = (params.ranker.max_cases / fits.len().max(1)).max(10);
    let mut set = crate::ranker::TrainingSet::default();
    progress.start("ranker: statistics and rows of each split", fits.len() as u64);
    for (log, cases, now) in fits {
        let m0 = Model::build(log, segments, catalogue.clone(), params, *now, seq.clone(), Ranker::uniform(&[0]))?;
        let profiles = m0.profiles(log, segments);
        let cases: Vec<Case> =
            cases.iter().map(|c| Case { subject: c.subject, target: c.target, now: c.now }).collect();
        set.extend(m0.training_set(&profiles, &cases, exclude_history, per_fit)?);
        progress.advance(1);
    }
    progress.start("ranker: fitting", 0);
    progress.note(&format!("{} rows", set.len()));
    let ranker = Ranker::fit(&set, &params.ranker.check()?);
    progress.finish();
    Ok(ranker?)
}

/// How `tongban train` learns from a whole log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainStyle {
    /// Timed logs: first starts within a horizon after internal cut-offs.
    Temporal { horizon_days: u32 },
    /// Sequences without real time: each subject's last start.
    LastItem { exclude_history: bool },
}

/// Trains a model on a whole log (the production path): the ranker from internal splits, the
/// statistics from everything.
pub fn train(
    log: &EventLog,
    segments: &[u16],
    catalogue: Option<Arc<Catalogue>>,
    params: &ModelParams,
    style: TrainStyle,
) -> Result<Model, ModelError> {
    train_with(log, segments, catalogue, params, style, &Silent)
}

/// [`train`], reporting its long steps to `progress` (the same model).
pub fn train_with(
    log: &EventLog,
    segments: &[u16],
    catalogue: Option<Arc<Catalogue>>,
    params: &ModelParams,
    style: TrainStyle,
    progress: &dyn Progress,
) -> Result<Model, ModelError> {
    let now = max_time(&log.events) + 1;
    let (fits, exclude) = match style {
        TrainStyle::Temporal { horizon_days } => (temporal_fits(log, now, i64::from(horizon_days) * 86_400), false),
        TrainStyle::LastItem { exclude_history } => {
            let (l, c) = split_last(log, 1);
            let n = max_time(&l.events) + 1;
            (vec![(l, c, n)], exclude_history)
        }
    };
    let seq = fit_seq(&fits, params, progress)?;
    let ranker = fit_ranker(&fits, segments, catalogue.clone(), params, seq.clone(), exclude, progress)?;
    progress.start("statistics of the whole log", 0);
    let model = Model::build(log, segments, catalogue, params, now, seq, ranker);
    progress.finish();
    model
}

/// Each subject's first start in `[from, to)`, as cases scored at `now`.
fn first_starts(events: &[LogEvent], from: i64, to: i64, now: i64) -> Vec<TestCase> {
    let mut first: HashMap<u32, LogEvent> = HashMap::new();
    for e in events.iter().filter(|e| e.at.0 >= from && e.at.0 < to && is_start(e.kind, e.channel)) {
        first
            .entry(e.subject)
            .and_modify(|f| {
                if e.at < f.at {
                    *f = *e
                }
            })
            .or_insert(*e);
    }
    let mut cases: Vec<TestCase> =
        first.values().map(|e| TestCase { subject: e.subject, target: e.service, now }).collect();
    cases.sort_by_key(|c| c.subject);
    cases
}

fn max_time(events: &[LogEvent]) -> i64 {
    events.iter().map(|e| e.at.0).max().unwrap_or(0)
}

/// Everything an evaluation run needs.
#[derive(Debug, Clone)]
pub struct EvalInput<'a> {
    pub log: &'a EventLog,
    pub segments: &'a [u16],
    pub catalogue: Option<Arc<Catalogue>>,
    pub params: ModelParams,
    /// Evaluate this model instead of training one.
    pub model: Option<&'a Model>,
    pub ks: Vec<usize>,
    pub seed: u64,
    /// Where the long steps report (training, every scorer's cases); [`Silent`] for none.
    pub progress: &'a dyn Progress,
}

/// Trains (unless a model is given) and evaluates the model and the baselines.
pub fn evaluate(input: &EvalInput<'_>, protocol: &Protocol) -> Result<EvalReport, ModelError> {
    let log = input.log;
    let segs = input.segments;
    // The test split, and the splits the ranker learns from (never the test targets).
    let (train_log, cases, mask, now, fits): (EventLog, Vec<TestCase>, bool, i64, Vec<Fit>) = match protocol {
        Protocol::LooFull { mask_history } | Protocol::LooSampled { mask_history, .. } => {
            let (lt, ct) = split_last(log, 1);
            let (lv, cv) = split_last(log, 2);
            let now = max_time(&lt.events) + 1;
            let nv = max_time(&lv.events) + 1;
            (lt, ct, *mask_history, now, vec![(lv, cv, nv)])
        }
        Protocol::Temporal { future, .. } => {
            let now = max_time(&log.events) + 1;
            let horizon = (max_time(&future.events) - now).max(86_400);
            let cases = first_starts(&future.events, now, now + horizon, now);
            // The ranker learns the same task inside the training log: one horizon earlier,
            // and in the same season one year earlier (yearly windows, seasons).
            let fits = temporal_fits(log, now, horizon);
            let mut full = log.clone();
            full.subjects = future.subjects.clone();
            (full, cases, false, now, fits)
        }
    };
    let mut segments = segs.to_vec();
    segments.resize(train_log.subjects.len(), 0);

    // Baselines always use statistics of the training part; a given model keeps its own.
    let (model, base, trained) = match input.model {
        Some(m) => {
            let base = Model::build(
                &train_log,
                &segments,
                input.catalogue.clone(),
                &input.params,
                now,
                None,
                Ranker::uniform(&[0]),
            )?;
            (m.clone(), Some(base), None)
        }
        None => {
            let seq = fit_seq(&fits, &input.params, input.progress)?;
            let ranker = fit_ranker(
                &fits,
                &segments,
                input.catalogue.clone(),
                &input.params,
                seq.clone(),
                mask,
                input.progress,
            )?;
            let m =
                Model::build(&train_log, &segments, input.catalogue.clone(), &input.params, now, seq, ranker.clone())?;
            (m, None, Some(ranker))
        }
    };
    let base = base.as_ref().unwrap_or(&model);
    let profiles = model.profiles(&train_log, &segments);
    let masks = if mask { Some(history(&train_log)) } else { None };
    let mut scorers: Vec<Box<dyn FullScorer>> = vec![
        Box::new(Ranked { model: &model, name: "tongban".into() }),
        Box::new(Popularity(base)),
        Box::new(Markov(base)),
        Box::new(ItemKnn(base, ItemSims::build(&train_log, base.service_count(), 200))),
        Box::new(LongKnn(&model)),
        Box::new(Candidates(&model)),
    ];
    if model.seq().is_some() {
        scorers.insert(4, Box::new(Sequence(&model)));
    }
    let truth = match protocol {
        Protocol::Temporal { truth: Some(t), .. } => Some(t),
        _ => None,
    };
    if let Some(t) = truth {
        scorers.push(Box::new(Oracle(t)));
    }
    let sampled: Option<Vec<Vec<u32>>> = match protocol {
        Protocol::LooSampled { negatives, .. } => {
            Some(sample_negatives(&cases, negatives, masks.as_ref(), model.service_count()))
        }
        _ => None,
    };
    let ks = &input.ks;
    let kmax = ks.iter().copied().max().unwrap_or(10);
    let n = model.service_count();
    let mut reports = Vec::new();
    let progress = input.progress;
    progress.start("evaluating (cases of every scorer)", (cases.len() * scorers.len()) as u64);
    for sc in &scorers {
        progress.note(&sc.name());
        let per_case: Vec<(Option<u64>, u16, Vec<u32>)> = cases
            .par_iter()
            .enumerate()
            .map_init(
                || (vec![0f32; n], model.scratch(), Vec::new()),
                |(out, scratch, top), (i, case)| {
                    let profile = &profiles[case.subject as usize];
                    let subset = sampled.as_ref().map(|s| {
                        let mut v = s[i].clone();
                        v.push(case.target);
                        v
                    });
                    sc.score(&Query { case, profile, items: subset.as_deref() }, out, scratch);
                    if let Some(m) = masks.as_ref().and_then(|m| m.get(&case.subject)) {
                        for &s in m {
                            out[s as usize] = f32::NEG_INFINITY;
                        }
                    }
                    let rank = rank_of(out, case.target, subset.as_deref(), case.subject, input.seed);
                    let topk = if subset.is_none() {
                        top_k(out, kmax, case.subject, input.seed, top);
                        top.iter().map(|t| t.2).collect()
                    } else {
                        Vec::new()
                    };
                    progress.advance(1);
                    (rank, segments.get(case.subject as usize).copied().unwrap_or(0), topk)
                },
            )
            .collect();
        let mut all = Acc::new(ks.len());
        let mut by_seg: Vec<Acc> = vec![Acc::new(ks.len()); tongban_features::io::SEGMENTS];
        let mut covered = vec![false; n];
        for (rank, seg, top) in &per_case {
            all.add(*rank, ks);
            let last = by_seg.len() - 1;
            by_seg[(*seg as usize).min(last)].add(*rank, ks);
            for &s in top {
                covered[s as usize] = true;
            }
        }
        let coverage = covered.iter().filter(|&&c| c).count() as f64 / n.max(1) as f64;
        let per_segment = by_seg
            .iter()
            .enumerate()
            .filter(|(s, a)| a.cases > 0 && (*s > 0 || by_seg.iter().skip(1).any(|x| x.cases > 0)))
            .map(|(s, a)| (segment_name(s as u16), a.metrics(ks, f64::NAN)))
            .collect();
        reports.push(ScorerReport { name: sc.name(), metrics: all.metrics(ks, coverage), per_segment });
    }
    progress.finish();
    let protocol_name = match protocol {
        Protocol::LooFull { mask_history: true } => "loo-full (history masked)".to_owned(),
        Protocol::LooFull { mask_history: false } => "loo-full-repeat (nothing masked)".to_owned(),
        Protocol::LooSampled { negatives: Negatives::Sampled { count, seed }, .. } => {
            format!("loo-sampled ({count} negatives, seed {seed})")
        }
        Protocol::LooSampled { .. } => "loo-sampled (negatives from a file)".to_owned(),
        Protocol::Temporal { .. } => "temporal (first start after the cut-off)".to_owned(),
    };
    Ok(EvalReport {
        protocol: protocol_name,
        tie_rule: format!(
            "a tied service ranks before the target when its FNV-1a key of (seed {}, subject, service) is smaller: a seeded random order per subject, never item-id order",
            input.seed
        ),
        ks: ks.clone(),
        services: n,
        scorers: reports,
        ranker: trained,
    })
}

fn sample_negatives(
    cases: &[TestCase],
    neg: &Negatives,
    masks: Option<&HashMap<u32, Vec<u32>>>,
    n: usize,
) -> Vec<Vec<u32>> {
    use rand::{Rng, SeedableRng};
    cases
        .iter()
        .map(|c| match neg {
            Negatives::Given(map) => map.get(&c.subject).cloned().unwrap_or_default(),
            Negatives::Sampled { count, seed } => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(*seed ^ (u64::from(c.subject) << 17));
                let hist = masks.and_then(|m| m.get(&c.subject));
                let mut out = Vec::with_capacity(*count);
                let want = (*count).min(n.saturating_sub(1 + hist.map_or(0, |h| h.len())));
                while out.len() < want {
                    let s = rng.gen_range(0..n as u32);
                    if s != c.target && !out.contains(&s) && hist.is_none_or(|h| h.binary_search(&s).is_err()) {
                        out.push(s);
                    }
                }
                out
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_counts_strictly_better_services_and_breaks_ties_without_item_order() {
        let scores = [0.1, 0.9, 0.5, 0.5, 0.5];
        assert_eq!(rank_of(&scores, 1, None, 0, 7), Some(1));
        assert_eq!(rank_of(&scores, 0, None, 0, 7), Some(5));
        // Three services tie at 0.5 behind one better: ranks 2, 3 and 4 in some order that
        // depends on the seeded keys, each exactly once.
        let mut ranks: Vec<u64> = (2..5).map(|t| rank_of(&scores, t, None, 0, 7).unwrap()).collect();
        ranks.sort_unstable();
        assert_eq!(ranks, [2, 3, 4]);
        // The order of ties changes with the subject: it is not the id order for everyone.
        let orders: std::collections::HashSet<Vec<u64>> =
            (0..20).map(|u| (2..5).map(|t| rank_of(&scores, t, None, u, 7).unwrap()).collect()).collect();
        assert!(orders.len() > 1);
        // A masked target is a miss.
        assert_eq!(rank_of(&[f32::NEG_INFINITY, 1.0], 0, None, 0, 7), None);
        // Ranking inside a sampled subset only counts the subset.
        assert_eq!(rank_of(&scores, 2, Some(&[0, 2]), 0, 7), Some(1));
    }

    #[test]
    fn hit_rate_ndcg_and_mrr_match_hand_computed_values() {
        // Ranks 1, 3, 11 and a miss; k = 1, 5, 10.
        let ks = [1, 5, 10];
        let mut a = Acc::new(3);
        for r in [Some(1), Some(3), Some(11), None] {
            a.add(r, &ks);
        }
        let m = a.metrics(&ks, 0.0);
        assert_eq!(m.cases, 4);
        assert_eq!(m.hr, vec![(1, 0.25), (5, 0.5), (10, 0.5)]);
        // NDCG@5 = (1/log2(2) + 1/log2(4)) / 4 = (1 + 0.5) / 4.
        assert!((m.ndcg[1].1 - 0.375).abs() < 1e-12);
        assert!((m.ndcg[0].1 - 0.25).abs() < 1e-12);
        // MRR = (1 + 1/3 + 1/11 + 0) / 4.
        assert!((m.mrr - (1.0 + 1.0 / 3.0 + 1.0 / 11.0) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn top_k_skips_masked_services_and_orders_by_score() {
        let scores = [0.2, f32::NEG_INFINITY, 0.9, 0.5];
        let mut out = Vec::new();
        top_k(&scores, 2, 0, 1, &mut out);
        assert_eq!(out.iter().map(|t| t.2).collect::<Vec<_>>(), [2, 3]);
    }
}
