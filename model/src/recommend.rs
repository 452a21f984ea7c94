//! The model: candidate sources, features, the ranker, and top-k with reasons.
//!
//! Candidate sources, merged and de-duplicated with the sources recorded as reason bits:
//! - `FOLLOWS`: services that followed the subject's recent starts (transitions);
//! - `OFTEN_TOGETHER`: services that co-occur with them;
//! - `NEXT_IN_BUNDLE`: pending steps of a bundle the subject is in, earlier steps done;
//! - `DEADLINE`: renewals coming due, open yearly windows, deadlines after a life event;
//! - `REPEAT`: services the subject already used (renewals, monthly claims);
//! - `POPULAR_IN_SEGMENT`: the segment's most used services (the cold-start fallback).
//!
//! Rules: drop the caller's `exclude` list, audience mismatches, completed non-repeatable
//! services, other categories when one is asked for. The non-personalised mode ranks by segment
//! popularity only (PIPL art. 24: an easy way to refuse personalisation).

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tongban_features::catalogue::{Audience, Catalogue, Deadline, Stage};
use tongban_features::domain::SubjectKind;
use tongban_features::io::{EventLog, SEGMENTS};
use tongban_features::profile::{BundleIndex, Profile, ProfileBuilder, ProfileContext, ProfileParams};
use tongban_features::stats::{ItemStats, StatsParams};
use tongban_features::vector::{Extractor, Prepared, Scratch, WIDTH};

use crate::knn::ItemSims;
use crate::ranker::{Ranker, RankerError, RankerParams, TrainingSet, ROW};
use crate::seq::{SeqError, SeqModel, SeqParams, StateKey};

/// Score of a service the rules exclude, below every real score (ranked by popularity).
const FLOOR: f32 = -1e6;

/// Reason bits of a suggestion.
pub mod reason {
    pub const FOLLOWS: u8 = 1;
    pub const OFTEN_TOGETHER: u8 = 2;
    pub const NEXT_IN_BUNDLE: u8 = 4;
    pub const DEADLINE: u8 = 8;
    pub const REPEAT: u8 = 16;
    pub const POPULAR_IN_SEGMENT: u8 = 32;
    /// Stable codes, in bit order.
    pub const CODES: [&str; 6] =
        ["FOLLOWS", "OFTEN_TOGETHER", "NEXT_IN_BUNDLE", "DEADLINE", "REPEAT", "POPULAR_IN_SEGMENT"];

    /// The codes of a bit set.
    pub fn codes(bits: u8) -> impl Iterator<Item = &'static str> {
        CODES.iter().enumerate().filter(move |(i, _)| bits & (1 << i) != 0).map(|(_, c)| *c)
    }
}

/// All model hyperparameters (profile, statistics, candidates, ranker).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelParams {
    pub max_events: usize,
    pub max_services: usize,
    pub half_life_days: f32,
    pub cooc_window_days: f32,
    pub recent_days: f32,
    /// Candidates kept from the transition and co-occurrence sources (by their summed scores).
    pub neighbours: usize,
    /// Popular services per segment used as fallback candidates.
    pub popular: usize,
    pub ranker: RankerParams,
    /// Neighbours kept per service in the item similarities (item-kNN); 0 turns item-kNN off.
    #[serde(default = "default_knn_keep")]
    pub knn_keep: usize,
    /// Candidates taken from the best services of the sequence model and of item-kNN each.
    #[serde(default = "default_model_candidates")]
    pub model_candidates: usize,
    #[serde(default)]
    pub seq: SeqParams,
}

fn default_knn_keep() -> usize {
    200
}
fn default_model_candidates() -> usize {
    100
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            max_events: 64,
            max_services: 128,
            half_life_days: 90.0,
            cooc_window_days: 30.0,
            recent_days: 90.0,
            neighbours: 200,
            popular: 50,
            ranker: RankerParams::default(),
            knn_keep: default_knn_keep(),
            model_candidates: default_model_candidates(),
            seq: SeqParams::default(),
        }
    }
}

impl ModelParams {
    pub fn profile(&self) -> ProfileParams {
        ProfileParams {
            max_events: self.max_events,
            max_services: self.max_services,
            half_life_days: self.half_life_days,
        }
    }
    pub fn stats(&self) -> StatsParams {
        StatsParams { cooc_window_days: self.cooc_window_days, recent_days: self.recent_days, segments: SEGMENTS }
    }
}

/// Why a model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid profile parameters: {0}")]
    Profile(#[from] tongban_features::profile::ProfileError),
    #[error(transparent)]
    Ranker(#[from] RankerError),
    #[error("neighbours and popular must be at least 1")]
    Candidates,
    #[error(transparent)]
    Seq(#[from] SeqError),
}

/// What the caller asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    pub k: usize,
    /// Services never to suggest, sorted.
    pub exclude: &'r [u32],
    pub personalised: bool,
    pub category: Option<Stage>,
    /// Person or enterprise; inferred from the profile's segment when `None`.
    pub audience: Option<SubjectKind>,
}

impl Default for Request<'_> {
    fn default() -> Self {
        Request { k: 10, exclude: &[], personalised: true, category: None, audience: None }
    }
}

/// One suggestion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Suggestion {
    pub service: u32,
    pub score: f32,
    pub reasons: u8,
}

/// Reusable buffers of one scoring thread.
#[derive(Debug, Clone, Default)]
pub struct ScoreScratch {
    features: Scratch,
    cands: Vec<u32>,
    src: Vec<u8>,
    /// `mark[s] == epoch` when `s` is already a candidate (no clearing between calls), at
    /// position `pos[s]`.
    mark: Vec<u32>,
    pos: Vec<u32>,
    epoch: u32,
    /// Rows of [`ROW`] features of the candidates.
    feats: Vec<f32>,
    /// Schema features of the candidates ([`WIDTH`] each), before the model's are appended.
    base: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<(f32, u32)>,
    /// The subject's sequence-model state: its query, the best logit, the log-sum-exp of all
    /// logits and the best services; `logits` and `window` are work space.
    q: Vec<f32>,
    seq_max: f32,
    seq_lse: f32,
    seq_top: Vec<u32>,
    logits: Vec<f32>,
    window: Vec<(u32, i64)>,
    /// The sequence-model logit of each candidate and its exp(logit - the best logit)
    /// (aligned with `cands` while `logits_given`; `-inf` and 0 without a query).
    logit: Vec<f32>,
    seq_e: Vec<f32>,
    logits_given: bool,
    /// Whole-history item-kNN score per service (reset through `knn_touched`), and the best.
    knn: Vec<f32>,
    knn_touched: Vec<u32>,
    knn_max: f32,
}

impl ScoreScratch {
    pub fn new(services: usize) -> ScoreScratch {
        ScoreScratch {
            features: Scratch::new(services),
            mark: vec![0; services],
            pos: vec![0; services],
            knn: vec![0.0; services],
            ..ScoreScratch::default()
        }
    }

    fn begin(&mut self, services: usize) {
        if self.mark.len() != services {
            self.mark = vec![0; services];
            self.pos = vec![0; services];
            self.epoch = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
        self.cands.clear();
        self.src.clear();
        self.logit.clear();
        self.seq_e.clear();
        self.logits_given = false;
    }

    /// Zeroes the item-kNN scores (through the touched list) for a catalogue of `services`.
    fn reset_knn(&mut self, services: usize) {
        if self.knn.len() != services {
            self.knn = vec![0.0; services];
            self.knn_touched.clear();
        }
        for &t in &self.knn_touched {
            self.knn[t as usize] = 0.0;
        }
        self.knn_touched.clear();
    }

    fn add(&mut self, s: u32, bits: u8) {
        let Some(m) = self.mark.get_mut(s as usize) else { return };
        if *m == self.epoch {
            self.src[self.pos[s as usize] as usize] |= bits;
        } else {
            *m = self.epoch;
            self.pos[s as usize] = self.cands.len() as u32;
            self.cands.push(s);
            self.src.push(bits);
        }
    }

    /// The feature rows ([`ROW`] each) of the last personalised [`Model::score_candidates`]
    /// call.
    pub fn features_of_last(&self) -> &[f32] {
        &self.feats[..(self.cands.len() * ROW).min(self.feats.len())]
    }

    /// The candidates and scores of the last [`Model::score_candidates`] call.
    pub fn scored(&self) -> (&[u32], &[f32], &[u8]) {
        (&self.cands, &self.scores, &self.src)
    }
}

/// A trained model: item statistics, the feature extractor, item similarities, the sequence
/// model, the ranker.
#[derive(Debug, Clone)]
pub struct Model {
    extractor: Extractor,
    sims: Arc<ItemSims>,
    seq: Option<Arc<SeqModel>>,
    /// Serving only: sequence-model states by [`StateKey`] (see [`Model::with_seq_cache`]).
    seq_cache: Option<Arc<SeqCache>>,
    /// Serving only: each subject's candidates before the rules, with the history-dependent
    /// part of their features (see [`Model::with_seq_cache`]).
    gathered_cache: Option<Arc<GatheredCache>>,
    ranker: Ranker,
    services: Arc<Vec<String>>,
    /// Per segment (0 = overall) the most used services, best first.
    popular: Vec<Vec<u32>>,
    /// Services with a yearly window (catalogue only).
    yearly: Vec<u32>,
    params: ModelParams,
}

/// The sequence model's summary of one subject's history at one time: everything the request
/// path needs from it, so that the encoder and the logits of every service run once per change
/// of the history (or of a time bucket), not once per request.
#[derive(Debug, Clone)]
pub struct SeqState {
    q: Vec<f32>,
    max: f32,
    lse: f32,
    /// The best `model_candidates` services by logit.
    top: Vec<u32>,
}

impl SeqState {
    /// Approximate size in bytes of a state of width `dim` with `top` services (the cache's
    /// weight; 64 for the cache's own entry).
    fn bytes_for(dim: usize, top: usize) -> u64 {
        (std::mem::size_of::<SeqState>() + 4 * dim + 4 * top + 64) as u64
    }
}

/// A cached value's approximate size in bytes: the weight of the serving caches.
trait Bytes {
    fn bytes(&self) -> u64;
}

impl Bytes for SeqState {
    fn bytes(&self) -> u64 {
        SeqState::bytes_for(self.q.len(), self.top.len())
    }
}

/// Weighs a cache's entries by [`Bytes`], so that a cache is bounded in memory.
#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl<K, V: Bytes> quick_cache::Weighter<K, Arc<V>> for ByBytes {
    fn weight(&self, _: &K, v: &Arc<V>) -> u64 {
        v.bytes()
    }
}

type SeqCache = quick_cache::sync::Cache<StateKey, Arc<SeqState>, ByBytes>;

/// What a subject's history and the time buckets of the sequence model decide about its
/// personalised candidates: the candidates in the order they were found, their sources, and
/// the parts of their features that do not move with the clock (the transition and
/// co-occurrence sums, the item-kNN score, the sequence-model logit). What moves with the clock
/// (recency, deadlines, bundle timing, signals) and what the request decides (the rules) is
/// computed at each request.
#[derive(Debug, Clone)]
struct Gathered {
    cands: Vec<u32>,
    src: Vec<u8>,
    acc: Vec<[f32; 4]>,
    knn: Vec<f32>,
    logit: Vec<f32>,
    seq_e: Vec<f32>,
    knn_max: f32,
    seq_max: f32,
    seq_lse: f32,
}

impl Bytes for Gathered {
    fn bytes(&self) -> u64 {
        (std::mem::size_of::<Gathered>() + self.cands.len() * (4 + 1 + 16 + 4 + 4 + 4) + 64) as u64
    }
}

/// Identifies a [`Gathered`]: the sequence-model state's key and a hash of everything else of
/// the profile the gathering reads (starts, services started, bundle steps and which bundles
/// are active, segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GatheredKey {
    seq: Option<StateKey>,
    hash: u64,
    starts: u32,
}

type GatheredCache = quick_cache::sync::Cache<GatheredKey, Arc<Gathered>, ByBytes>;

fn audience_of(segment: u16) -> Option<SubjectKind> {
    match segment {
        1..=10 => Some(SubjectKind::Person),
        11..=13 => Some(SubjectKind::Enterprise),
        _ => None,
    }
}

impl Model {
    /// Statistics and item similarities from `log` (sorted; with catalogue indices when a
    /// catalogue is given) at `now`, with a given sequence model and ranker.
    pub fn build(
        log: &EventLog,
        segments: &[u16],
        catalogue: Option<Arc<Catalogue>>,
        params: &ModelParams,
        now: i64,
        seq: Option<Arc<SeqModel>>,
        ranker: Ranker,
    ) -> Result<Model, ModelError> {
        params.profile().check()?;
        params.ranker.check()?;
        params.seq.check()?;
        if params.neighbours == 0 || params.popular == 0 {
            return Err(ModelError::Candidates);
        }
        let stats = ItemStats::build(log, segments, now, &params.stats());
        let services: Vec<String> = (0..log.services.len() as u32).map(|s| log.services.name(s).to_owned()).collect();
        let sims = ItemSims::build(log, services.len(), params.knn_keep);
        Ok(Model::from_parts(stats, sims, seq, catalogue, ranker, services, *params))
    }

    /// Assembles a model from its parts (used when loading an artifact).
    pub fn from_parts(
        stats: ItemStats,
        sims: ItemSims,
        seq: Option<Arc<SeqModel>>,
        catalogue: Option<Arc<Catalogue>>,
        ranker: Ranker,
        services: Vec<String>,
        params: ModelParams,
    ) -> Model {
        let n = stats.services();
        let mut popular = Vec::with_capacity(SEGMENTS);
        for seg in 0..SEGMENTS as u16 {
            let mut all: Vec<(f32, u32)> = (0..n as u32)
                .map(|s| (if seg == 0 { stats.pop(s) as f32 } else { stats.segment_share(seg, s) }, s))
                .filter(|x| x.0 > 0.0)
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            popular.push(all.into_iter().take(params.popular).map(|x| x.1).collect());
        }
        let yearly = catalogue
            .as_ref()
            .map(|c| {
                (0..c.services().len().min(n) as u32)
                    .filter(|&s| matches!(c.service(s).deadline, Some(Deadline::YearlyWindow { .. })))
                    .collect()
            })
            .unwrap_or_default();
        Model {
            extractor: Extractor::new(Arc::new(stats), catalogue),
            sims: Arc::new(sims),
            seq,
            seq_cache: None,
            gathered_cache: None,
            ranker,
            services: Arc::new(services),
            popular,
            yearly,
            params,
        }
    }

    /// Keeps sequence-model states of up to `bytes` in memory, keyed by the history window
    /// they were computed from and the time buckets the encoder reads (see
    /// [`SeqModel::state_key`]). A subject's state is computed on its first request after its
    /// history changed (an ingest on any replica changes the key; nothing is invalidated by
    /// hand) and then served from the cache. For serving: an evaluation sees every history
    /// once and gains nothing from it.
    ///
    /// A quarter of `bytes` holds those states; the rest holds each subject's gathered
    /// candidates ([`Gathered`], some 8 KB each), keyed the same way plus the rest of the
    /// history the gathering reads, so that a repeated request pays only for what moves with
    /// the clock and what the request asks. The answers are the same as without the cache.
    pub fn with_seq_cache(mut self, bytes: u64) -> Model {
        let seq_bytes = if self.seq.is_some() { bytes / 4 } else { 0 };
        self.seq_cache = (seq_bytes > 0).then(|| {
            let per = self.seq.as_ref().map_or(1, |m| SeqState::bytes_for(m.dim, self.params.model_candidates));
            Arc::new(SeqCache::with_weighter((seq_bytes / per).max(1) as usize, seq_bytes, ByBytes))
        });
        let rest = bytes - seq_bytes;
        self.gathered_cache = (rest > 0).then(|| {
            let per = 8 << 10;
            Arc::new(GatheredCache::with_weighter((rest / per).max(1) as usize, rest, ByBytes))
        });
        self
    }

    /// Empties the state caches (a model that stops serving).
    pub fn clear_seq_cache(&self) {
        if let Some(c) = &self.seq_cache {
            c.clear();
        }
        if let Some(c) = &self.gathered_cache {
            c.clear();
        }
    }

    /// Entries and bytes in the state caches (zero without them).
    pub fn seq_cache_usage(&self) -> (usize, u64) {
        let (a, b) = self.seq_cache.as_ref().map_or((0, 0), |c| (c.len(), c.weight()));
        let (c, d) = self.gathered_cache.as_ref().map_or((0, 0), |c| (c.len(), c.weight()));
        (a + c, b + d)
    }

    pub fn with_ranker(mut self, ranker: Ranker) -> Model {
        self.ranker = ranker;
        self
    }

    pub fn ranker(&self) -> &Ranker {
        &self.ranker
    }
    pub fn sims(&self) -> &ItemSims {
        &self.sims
    }
    pub fn seq(&self) -> Option<&SeqModel> {
        self.seq.as_deref()
    }
    pub fn params(&self) -> &ModelParams {
        &self.params
    }
    pub fn stats(&self) -> &ItemStats {
        self.extractor.stats()
    }
    pub fn catalogue(&self) -> Option<&Catalogue> {
        self.extractor.catalogue()
    }
    pub fn services(&self) -> &[String] {
        &self.services
    }
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
    /// Service index of an id.
    pub fn lookup(&self, id: &str) -> Option<u32> {
        match self.catalogue() {
            Some(c) => c.lookup(id),
            None => self.services.iter().position(|s| s == id).map(|i| i as u32),
        }
    }

    /// The profile context matching this model (bundle index from its catalogue).
    pub fn profile_context(&self) -> ProfileContext {
        ProfileContext {
            params: self.params.profile(),
            bundles: self.catalogue().map(BundleIndex::new).unwrap_or_default(),
        }
    }

    pub fn scratch(&self) -> ScoreScratch {
        ScoreScratch::new(self.service_count())
    }

    /// Gathers candidates, computes their features and scores; results in `scratch.scored()`.
    pub fn score_candidates(&self, profile: &Profile, req: &Request<'_>, now: i64, scratch: &mut ScoreScratch) {
        if req.personalised {
            let prep = match &self.gathered_cache {
                Some(cache) => self.gather_cached(cache, profile, now, scratch),
                None => self.gather_personal(profile, now, scratch),
            };
            self.apply_rules(profile, req, scratch);
            self.score_rows(profile, &prep, scratch);
            return;
        }
        scratch.begin(self.service_count());
        let seg = profile.segment();
        for list in [&self.popular[seg as usize % self.popular.len()], &self.popular[0]] {
            for &s in list {
                scratch.add(s, reason::POPULAR_IN_SEGMENT);
            }
        }
        self.apply_rules(profile, req, scratch);
        let st = self.stats();
        let ScoreScratch { cands, scores, .. } = scratch;
        scores.clear();
        scores.extend(cands.iter().map(|&s| st.segment_share(seg, s) + 1e-9 * st.pop(s) as f32));
    }

    /// The personalised candidate stage from the cache when it holds the subject's history,
    /// else gathered and kept; rules not applied. Leaves `scratch.logit` aligned with the
    /// candidates.
    fn gather_cached(
        &self,
        cache: &GatheredCache,
        profile: &Profile,
        now: i64,
        scratch: &mut ScoreScratch,
    ) -> Prepared {
        let key = self.gathered_key(profile, now, scratch);
        if let Some(g) = cache.get(&key) {
            return self.restore(&g, profile, now, scratch);
        }
        let prep = self.gather_personal(profile, now, scratch);
        self.fill_logits(scratch);
        let ScoreScratch { features, cands, src, knn, logit, seq_e, .. } = &mut *scratch;
        let g = Gathered {
            cands: cands.clone(),
            src: src.clone(),
            acc: cands.iter().map(|&c| features.acc(c)).collect(),
            knn: cands.iter().map(|&c| knn.get(c as usize).copied().unwrap_or(0.0)).collect(),
            logit: logit.clone(),
            seq_e: seq_e.clone(),
            knn_max: scratch.knn_max,
            seq_max: scratch.seq_max,
            seq_lse: scratch.seq_lse,
        };
        cache.insert(key, Arc::new(g));
        prep
    }

    /// The key of a subject's [`Gathered`] at `now`.
    fn gathered_key(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) -> GatheredKey {
        use std::hash::{Hash, Hasher};
        let seq = self.seq.as_deref().map(|m| {
            m.window_of(profile.starts().rev().map(|r| (r.service, r.at)), &mut scratch.window);
            m.state_key(&scratch.window, now)
        });
        // SipHash with fixed keys, as the sequence-model key: deterministic and well mixed.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        profile.segment().hash(&mut h);
        let mut starts = 0u32;
        for r in profile.starts() {
            (r.service, r.at).hash(&mut h);
            starts += 1;
        }
        for c in profile.services().iter().filter(|c| c.starts > 0) {
            c.service.hash(&mut h);
        }
        for pb in profile.bundles() {
            (pb.bundle, &pb.steps, now - pb.last_at() > 365 * 86_400).hash(&mut h);
        }
        GatheredKey { seq, hash: h.finish(), starts }
    }

    /// Puts a cached [`Gathered`] back into `scratch` and prepares the per-request part of the
    /// features.
    fn restore(&self, g: &Gathered, profile: &Profile, now: i64, scratch: &mut ScoreScratch) -> Prepared {
        scratch.begin(self.service_count());
        let prep = self.extractor.prepare_with_sums(
            profile,
            now,
            &mut scratch.features,
            g.cands.iter().copied().zip(g.acc.iter().copied()),
        );
        scratch.reset_knn(self.service_count());
        for (&c, &k) in g.cands.iter().zip(&g.knn) {
            if k != 0.0 {
                scratch.knn[c as usize] = k;
                scratch.knn_touched.push(c);
            }
        }
        scratch.knn_max = g.knn_max;
        // Distinct already, in the order they were found: copied as they are (nothing is added
        // after a restore, so the marks of `add` are not needed).
        scratch.cands.extend_from_slice(&g.cands);
        scratch.src.extend_from_slice(&g.src);
        scratch.logit.clear();
        scratch.logit.extend_from_slice(&g.logit);
        scratch.seq_e.clear();
        scratch.seq_e.extend_from_slice(&g.seq_e);
        scratch.logits_given = true;
        (scratch.seq_max, scratch.seq_lse) = (g.seq_max, g.seq_lse);
        prep
    }

    /// The personalised candidate stage (gathered, rules not applied, not scored); returns the
    /// subject's prepared context.
    fn gather_personal(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) -> Prepared {
        scratch.begin(self.service_count());
        let prep = self.prepare_subject(profile, now, scratch);
        self.personal_sources(profile, now, scratch);
        self.model_sources(scratch);
        let seg = profile.segment();
        for list in [&self.popular[seg as usize % self.popular.len()], &self.popular[0]] {
            for &s in list.iter().take(self.params.popular) {
                scratch.add(s, reason::POPULAR_IN_SEGMENT);
            }
        }
        prep
    }

    /// The score of a service the rules exclude: below every real score, by popularity.
    pub fn floor_score(&self, s: u32) -> f32 {
        let st = self.stats();
        FLOOR + st.pop(s) as f32 / st.pop_max().max(1) as f32
    }

    /// Scores every service of `items` (every service when `None`) with the ranker, as the
    /// candidate stage would if it kept them all: the full ranking the evaluation uses.
    /// Services the rules exclude get a score below every real one, ordered by popularity.
    pub fn score_all(
        &self,
        profile: &Profile,
        req: &Request<'_>,
        now: i64,
        items: Option<&[u32]>,
        out: &mut [f32],
        scratch: &mut ScoreScratch,
    ) {
        for (s, o) in out.iter_mut().enumerate() {
            *o = self.floor_score(s as u32);
        }
        let n = self.service_count();
        scratch.begin(n);
        let prep = self.prepare_subject(profile, now, scratch);
        match items {
            Some(list) => list.iter().for_each(|&s| scratch.add(s, 0)),
            None => (0..n as u32).for_each(|s| scratch.add(s, 0)),
        }
        self.apply_rules(profile, req, scratch);
        self.score_rows(profile, &prep, scratch);
        for (&c, &v) in scratch.cands.iter().zip(&scratch.scores) {
            out[c as usize] = v;
        }
    }

    /// The sequence model's logit of every service for a subject at `now` (empty without one).
    pub fn seq_logits(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) -> Vec<f32> {
        let Some(m) = &self.seq else { return Vec::new() };
        m.query(profile.starts().rev().map(|r| (r.service, r.at)), now, &mut scratch.q);
        let mut out = Vec::new();
        m.logits(&scratch.q, &mut out);
        out.resize(self.service_count(), f32::NEG_INFINITY);
        out
    }

    /// The whole-history item-kNN score of every service for a subject.
    pub fn knn_scores(&self, profile: &Profile, scratch: &mut ScoreScratch) -> Vec<f32> {
        self.prepare_knn(profile, scratch);
        scratch.knn.clone()
    }

    /// Per-subject work done once: the schema's preparation, the sequence model's logits of
    /// every service, the whole-history item-kNN scores.
    fn prepare_subject(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) -> Prepared {
        let prep = self.extractor.prepare(profile, now, &mut scratch.features);
        self.prepare_model(profile, now, scratch);
        prep
    }

    fn prepare_model(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) {
        self.prepare_seq(profile, now, scratch);
        self.prepare_knn(profile, scratch);
    }

    /// The subject's sequence-model state into `scratch`: from the cache when it holds it,
    /// else computed (the encoder over the window, the logits of every service).
    fn prepare_seq(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) {
        scratch.q.clear();
        scratch.seq_top.clear();
        scratch.seq_max = f32::NEG_INFINITY;
        scratch.seq_lse = f32::NEG_INFINITY;
        let Some(m) = &self.seq else { return };
        m.window_of(profile.starts().rev().map(|r| (r.service, r.at)), &mut scratch.window);
        let cached = self.seq_cache.as_ref().map(|c| (c, m.state_key(&scratch.window, now)));
        if let Some(st) = cached.as_ref().and_then(|(c, k)| c.get(k)) {
            scratch.q.extend_from_slice(&st.q);
            scratch.seq_top.extend_from_slice(&st.top);
            (scratch.seq_max, scratch.seq_lse) = (st.max, st.lse);
            return;
        }
        m.query_window(&scratch.window, now, &mut scratch.q);
        m.logits(&scratch.q, &mut scratch.logits);
        let top = scratch.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = scratch.logits.iter().filter(|v| v.is_finite()).map(|&v| (v - top).exp()).sum();
        scratch.seq_max = top;
        scratch.seq_lse = top + sum.max(1.0).ln();
        let mut ranked = std::mem::take(&mut scratch.order);
        ranked.clear();
        ranked.extend(scratch.logits.iter().enumerate().map(|(s, &v)| (v, s as u32)));
        best(&mut ranked, self.params.model_candidates);
        scratch.seq_top.extend(ranked.iter().map(|x| x.1));
        scratch.order = ranked;
        if let Some((c, k)) = cached {
            let st = SeqState { q: scratch.q.clone(), max: top, lse: scratch.seq_lse, top: scratch.seq_top.clone() };
            c.insert(k, Arc::new(st));
        }
    }

    fn prepare_knn(&self, profile: &Profile, scratch: &mut ScoreScratch) {
        scratch.reset_knn(self.service_count());
        for c in profile.services().iter().filter(|c| c.starts > 0) {
            for &(b, sim) in self.sims.row(c.service) {
                let Some(k) = scratch.knn.get_mut(b as usize) else { continue };
                if *k == 0.0 {
                    scratch.knn_touched.push(b);
                }
                *k += sim;
            }
        }
        scratch.knn_max = scratch.knn_touched.iter().map(|&t| scratch.knn[t as usize]).fold(0.0, f32::max);
    }

    /// Candidates from the best services of the sequence model and of item-kNN.
    fn model_sources(&self, scratch: &mut ScoreScratch) {
        let m = self.params.model_candidates;
        let mut ranked = std::mem::take(&mut scratch.order);
        for i in 0..scratch.seq_top.len() {
            let s = scratch.seq_top[i];
            scratch.add(s, reason::FOLLOWS);
        }
        ranked.clear();
        ranked.extend(scratch.knn_touched.iter().map(|&s| (scratch.knn[s as usize], s)));
        best(&mut ranked, m);
        for &(_, s) in &ranked {
            scratch.add(s, reason::OFTEN_TOGETHER);
        }
        scratch.order = ranked;
    }

    /// Feature rows ([`ROW`]: the schema's, then [`crate::ranker::MODEL_FEATURES`]) and ranker scores of
    /// `scratch.cands`.
    fn score_rows(&self, profile: &Profile, prep: &Prepared, scratch: &mut ScoreScratch) {
        self.fill_logits(scratch);
        let ScoreScratch { features, cands, base, feats, scores, logit, seq_e, seq_max, seq_lse, knn, knn_max, .. } =
            scratch;
        base.resize(cands.len() * WIDTH, 0.0);
        self.extractor.extract(profile, prep, features, cands, base);
        feats.clear();
        // exp(v - lse) = exp(v - max) * exp(max - lse): one exponential per candidate.
        let to_p = (*seq_max - *seq_lse).exp();
        for (((&c, row), &v), &e) in cands.iter().zip(base.chunks_exact(WIDTH)).zip(logit.iter()).zip(seq_e.iter()) {
            feats.extend_from_slice(row);
            let i = c as usize;
            let (seq_prob, seq_rel, seq_p, seq_logp) = match v {
                v if v.is_finite() => {
                    let (x, lp) = (v - *seq_max, v - *seq_lse);
                    (e, (1.0 + x / 16.0).max(0.0), e * to_p, (1.0 + lp / 24.0).max(0.0))
                }
                _ => (0.0, 0.0, 0.0, 0.0),
            };
            let k = knn.get(i).copied().unwrap_or(0.0);
            let knn_rel = if *knn_max > 0.0 { k / *knn_max } else { 0.0 };
            feats.extend_from_slice(&[seq_prob, seq_rel, knn_rel, k.min(1.0), seq_p, seq_logp]);
        }
        scores.clear();
        scores.extend(feats.chunks_exact(ROW).map(|row| self.ranker.score(row)));
    }

    /// The sequence-model logit of each candidate into `scratch.logit`, unless given.
    fn fill_logits(&self, scratch: &mut ScoreScratch) {
        if scratch.logits_given {
            return;
        }
        let seq = self.seq.as_deref().filter(|_| !scratch.q.is_empty());
        let ScoreScratch { cands, logit, seq_e, q, seq_max, .. } = &mut *scratch;
        logit.clear();
        logit.extend(cands.iter().map(|&c| seq.map_or(f32::NEG_INFINITY, |m| m.logit(q, c))));
        seq_e.clear();
        seq_e.extend(logit.iter().map(|&v| if v.is_finite() { (v - *seq_max).exp() } else { 0.0 }));
        scratch.logits_given = true;
    }

    fn personal_sources(&self, profile: &Profile, now: i64, scratch: &mut ScoreScratch) {
        // Transition and co-occurrence neighbours, best `neighbours` by their summed scores.
        let mut ranked = std::mem::take(&mut scratch.order);
        ranked.clear();
        ranked.extend(scratch.features.touched().iter().map(|&s| {
            let a = scratch.features.acc(s);
            (a[0] + a[1] + a[2] + a[3], s)
        }));
        best(&mut ranked, self.params.neighbours);
        for &(_, s) in &ranked {
            let a = scratch.features.acc(s);
            let bits = if a[0] + a[1] + a[2] > 0.0 { reason::FOLLOWS } else { 0 }
                | if a[3] > 0.0 { reason::OFTEN_TOGETHER } else { 0 };
            scratch.add(s, bits);
        }
        scratch.order = ranked;
        for c in profile.services() {
            if c.starts > 0 {
                scratch.add(c.service, reason::REPEAT);
            }
        }
        let Some(cat) = self.catalogue() else { return };
        for pb in profile.bundles() {
            if now - pb.last_at() > 365 * 86_400 {
                continue;
            }
            let b = &cat.bundles()[pb.bundle as usize];
            for (k, st) in b.steps.iter().enumerate() {
                if pb.done(k as u16).is_none() && st.after.iter().all(|&a| pb.done(a).is_some()) {
                    scratch.add(st.service, reason::NEXT_IN_BUNDLE);
                }
            }
        }
        for c in profile.services() {
            if c.starts > 0 && matches!(cat.service(c.service).deadline, Some(Deadline::BeforeExpiry { .. })) {
                scratch.add(c.service, reason::DEADLINE);
            }
        }
        for &s in &self.yearly {
            scratch.add(s, reason::DEADLINE);
        }
    }

    fn apply_rules(&self, profile: &Profile, req: &Request<'_>, scratch: &mut ScoreScratch) {
        let keep = self.keeper(profile, req);
        let mut w = 0;
        for i in 0..scratch.cands.len() {
            let s = scratch.cands[i];
            if keep(s) {
                scratch.cands[w] = s;
                scratch.src[w] = scratch.src[i];
                if scratch.logits_given {
                    scratch.logit[w] = scratch.logit[i];
                    scratch.seq_e[w] = scratch.seq_e[i];
                }
                w += 1;
            }
        }
        scratch.cands.truncate(w);
        scratch.src.truncate(w);
        if scratch.logits_given {
            scratch.logit.truncate(w);
            scratch.seq_e.truncate(w);
        }
    }

    /// The rules: whether a service may be suggested to the subject for this request.
    fn keeper<'a>(&'a self, profile: &'a Profile, req: &'a Request<'_>) -> impl Fn(u32) -> bool + 'a {
        let cat = self.catalogue();
        // Person or enterprise: asked, else from the segment, else from the services used.
        let audience = req.audience.or_else(|| audience_of(profile.segment())).or_else(|| {
            let cat = cat?;
            let used = |a: Audience| {
                profile
                    .services()
                    .iter()
                    .any(|c| cat.services().get(c.service as usize).is_some_and(|s| s.audience == a))
            };
            if used(Audience::Enterprise) {
                Some(SubjectKind::Enterprise)
            } else if used(Audience::Person) {
                Some(SubjectKind::Person)
            } else {
                None
            }
        });
        move |s: u32| {
            if req.exclude.binary_search(&s).is_ok() {
                return false;
            }
            let Some(cat) = cat else { return true };
            let Some(svc) = cat.services().get(s as usize) else { return true };
            if let Some(a) = audience {
                if !svc.audience.admits(a) {
                    return false;
                }
            } else if svc.audience == Audience::Enterprise {
                // An unknown subject is most likely a person on a portal.
                return false;
            }
            if req.category.is_some_and(|c| c != svc.category) {
                return false;
            }
            svc.repeatable || profile.count(s).is_none_or(|c| c.completed == 0)
        }
    }

    /// The personalised score of one service for a subject (operators' campaigns: users for an
    /// item), or `None` when the rules exclude it (audience, done and not repeatable).
    pub fn score_one(&self, profile: &Profile, service: u32, now: i64, scratch: &mut ScoreScratch) -> Option<f32> {
        self.score_services(profile, &[service], now, scratch)[0]
    }

    /// The ranker's scores (logits) of given services for a subject, `None` where the rules
    /// exclude one; the subject's features are prepared once.
    pub fn score_services(
        &self,
        profile: &Profile,
        services: &[u32],
        now: i64,
        scratch: &mut ScoreScratch,
    ) -> Vec<Option<f32>> {
        scratch.begin(self.service_count());
        for &s in services {
            if (s as usize) < self.service_count() {
                scratch.add(s, 0);
            }
        }
        self.apply_rules(profile, &Request { k: services.len(), ..Request::default() }, scratch);
        if scratch.cands.is_empty() {
            return vec![None; services.len()];
        }
        let prep = self.prepare_subject(profile, now, scratch);
        self.score_rows(profile, &prep, scratch);
        services.iter().map(|s| scratch.cands.iter().position(|c| c == s).map(|i| scratch.scores[i])).collect()
    }

    /// Top-k suggestions with scores and reasons.
    pub fn recommend(
        &self,
        profile: &Profile,
        req: &Request<'_>,
        now: i64,
        scratch: &mut ScoreScratch,
    ) -> Vec<Suggestion> {
        self.score_candidates(profile, req, now, scratch);
        let ScoreScratch { cands, scores, src, order, feats, .. } = scratch;
        order.clear();
        order.extend(scores.iter().copied().zip(0..cands.len() as u32));
        let k = req.k.min(order.len());
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if k < order.len() {
            order.select_nth_unstable_by(k, by_score);
            order.truncate(k);
        }
        order.sort_by(by_score);
        order
            .iter()
            .map(|&(score, i)| {
                let i = i as usize;
                let mut reasons = src[i];
                // Keep only the reasons the features bear out.
                if req.personalised && feats.len() >= (i + 1) * ROW {
                    let f = &feats[i * ROW..(i + 1) * ROW];
                    if f[7] == 0.0 {
                        reasons &= !reason::NEXT_IN_BUNDLE;
                    }
                    if f[11] == 0.0 {
                        reasons &= !reason::DEADLINE;
                    }
                }
                Suggestion { service: cands[i], score, reasons }
            })
            .collect()
    }

    /// Learns the ranker from cases: each a subject's profile (built from the log this model's
    /// statistics came from) and the service it started next. `exclude_history` removes the
    /// subject's own services from the candidates (the masked protocol).
    pub fn train(&self, profiles: &[Profile], cases: &[Case], exclude_history: bool) -> Result<Ranker, ModelError> {
        let set = self.training_set(profiles, cases, exclude_history, self.params.ranker.max_cases)?;
        Ok(Ranker::fit(&set, &self.params.ranker.check()?)?)
    }

    /// The ranker's training rows for cases (at most `max_cases`, sampled with the seed): the
    /// positive and sampled negatives among each case's candidates.
    pub fn training_set(
        &self,
        profiles: &[Profile],
        cases: &[Case],
        exclude_history: bool,
        max_cases: usize,
    ) -> Result<TrainingSet, ModelError> {
        use rayon::prelude::*;
        let p = self.params.ranker.check()?;
        let mut cases = cases.to_vec();
        let mut rng = ChaCha8Rng::seed_from_u64(p.get().seed);
        if cases.len() > max_cases {
            cases.shuffle(&mut rng);
            cases.truncate(max_cases);
        }
        let negatives = p.get().negatives;
        let n = self.service_count() as u32;
        let sets: Vec<TrainingSet> = cases
            .par_chunks(512)
            .map_init(
                || self.scratch(),
                |scratch, chunk| {
                    let mut set = TrainingSet::default();
                    let mut exclude = Vec::new();
                    for case in chunk {
                        let profile = &profiles[case.subject as usize];
                        exclude.clear();
                        if exclude_history {
                            exclude.extend(profile.services().iter().filter(|c| c.starts > 0).map(|c| c.service));
                        }
                        let req = Request { k: usize::MAX, exclude: &exclude, ..Request::default() };
                        if !self.keeper(profile, &req)(case.target) || n < 2 {
                            continue;
                        }
                        let prep = self.gather_personal(profile, case.now, scratch);
                        self.apply_rules(profile, &req, scratch);
                        // The ranker learns to order the candidate stage: a case whose target
                        // is not a candidate teaches it nothing about that order.
                        if !scratch.cands.contains(&case.target) {
                            continue;
                        }
                        // Negatives among the candidates (the hard ones); `random_negatives` more
                        // among all services the rules keep, so that full scoring sees the rest.
                        // Seeded per case, so the sample does not depend on the thread.
                        let mut r = ChaCha8Rng::seed_from_u64(
                            p.get().seed ^ u64::from(case.subject) << 20 ^ u64::from(case.target),
                        );
                        let mut pool: Vec<u32> = scratch.cands.iter().copied().filter(|&c| c != case.target).collect();
                        let hard = negatives.min(pool.len());
                        let (chosen, _) = pool.partial_shuffle(&mut r, hard);
                        let mut items = vec![case.target];
                        items.extend_from_slice(chosen);
                        let keep = self.keeper(profile, &req);
                        let want = items.len() + p.get().random_negatives;
                        for _ in 0..p.get().random_negatives * 4 {
                            if items.len() >= want {
                                break;
                            }
                            let s = r.gen_range(0..n);
                            if !items.contains(&s) && keep(s) {
                                items.push(s);
                            }
                        }
                        if items.len() < 2 {
                            continue;
                        }
                        scratch.cands.clear();
                        scratch.cands.extend_from_slice(&items);
                        self.score_rows(profile, &prep, scratch);
                        for (i, row) in scratch.feats.chunks_exact(ROW).enumerate() {
                            set.push(row, i == 0);
                        }
                    }
                    set
                },
            )
            .collect();
        let mut all = TrainingSet::default();
        for s in sets {
            all.extend(s);
        }
        Ok(all)
    }

    /// Profiles of every subject of `log` with this model's context.
    pub fn profiles(&self, log: &EventLog, segments: &[u16]) -> Vec<Profile> {
        ProfileBuilder::new(&self.profile_context()).build(log, segments)
    }
}

/// One training case: subject index, the service it started next, the time to score at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub subject: u32,
    pub target: u32,
    pub now: i64,
}

/// Keeps the best `keep` of `ranked` (score, service), highest score first among equals the
/// lower service; unordered.
fn best(ranked: &mut Vec<(f32, u32)>, keep: usize) {
    if keep < ranked.len() {
        ranked.select_nth_unstable_by(keep, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.truncate(keep);
    }
}
