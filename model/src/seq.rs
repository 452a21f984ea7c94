//! The learned sequence model: a filter encoder over the subject's last starts, trained with
//! softmax cross-entropy on the next start (candle, CPU).
//!
//! Architecture (width `d`, window `L`, `C` filters):
//! ```text
//! G = E[x_t, ..., x_t-L+1] + T[gap]          (L x d) embeddings of the last starts, newest first,
//!                                             plus one of the time since each (log2 days) at
//!                                             the moment of prediction
//! S = F G                                     (C x d) F: C learned causal filters over the window,
//!                                             initialised as normalised decays (1-l) l^k
//! a = softmax_k(g_0 Wq . g_k Wk / sqrt d)     attention of the newest start over the window
//! u = vec(S) Wa + (a G) Wo + M[month] + ba    (d) M: the month of the moment of prediction
//! h = LayerNorm(u + gelu(u Wb + bb) Wc + bc)  (d) one residual feed-forward block
//! logit(s) = h . E[s] + bias[s]               every service; E is shared with the input
//! ```
//! A learnable filter over the sequence in place of attention, as FMLP-Rec does in the
//! frequency domain; for a window of 50 the filter is a 4 x 50 matrix product, no FFT.
//!
//! In training the moment of prediction is the time of the target start; in serving it is now.
//! For logs without real time (positions as times) the gaps and the month are constant.
//!
//! Training is full softmax cross-entropy when the catalogue has at most `negatives` services,
//! otherwise sampled softmax against `negatives` services drawn uniformly per batch, never one
//! of the batch's targets (so no accidental hits). Every random draw (initial weights, shuffling,
//! dropout, negatives) comes from a ChaCha stream of the seed, so a run is repeatable.
//!
//! Inference is plain Rust over the weights (no candle type on the request path): the query
//! vector `h` costs one pass over the window; scores are one dot product per service.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Hyperparameters of the sequence model. `epochs == 0` turns it off. Missing fields of a
/// parameter file take their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeqParams {
    /// Width `d` of embeddings and of the query vector.
    pub dim: usize,
    /// Starts read, newest first (`L`).
    pub window: usize,
    /// Learned filters over the window (`C`).
    pub filters: usize,
    /// Passes over the training positions; 0 = no sequence model.
    pub epochs: usize,
    /// Training positions at most per epoch (sampled afresh each epoch when there are more).
    pub max_positions: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Dropout on the encoded window (vec(S)).
    pub dropout: f32,
    /// Share of window items dropped per training position (augmentation).
    pub item_dropout: f32,
    /// Full softmax up to this many services, else sampled softmax with this many negatives
    /// (uniform, shared by the batch, never one of the batch's targets).
    pub negatives: usize,
    pub seed: u64,
}

impl Default for SeqParams {
    fn default() -> Self {
        SeqParams {
            dim: 64,
            window: 50,
            filters: 4,
            epochs: 20,
            max_positions: 120_000,
            batch: 1024,
            lr: 4e-3,
            weight_decay: 1e-4,
            dropout: 0.3,
            item_dropout: 0.2,
            negatives: 1024,
            seed: 7,
        }
    }
}

/// Why the sequence model could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error("sequence model: {0}")]
    Params(String),
    #[error("sequence model: no subject has two starts to learn from")]
    NoData,
    #[error("sequence model training failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl SeqParams {
    pub fn check(&self) -> Result<(), SeqError> {
        let bad = |m: &str| Err(SeqError::Params(m.to_owned()));
        if !(4..=512).contains(&self.dim) {
            return bad("dim must be 4 to 512");
        }
        if !(1..=1024).contains(&self.window) {
            return bad("window must be 1 to 1024");
        }
        if !(1..=16).contains(&self.filters) {
            return bad("filters must be 1 to 16");
        }
        if self.epochs > 1000 || !(1..=65_536).contains(&self.batch) || self.max_positions == 0 {
            return bad("epochs must be at most 1000, batch 1 to 65536, max_positions at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("lr must be positive and weight_decay >= 0");
        }
        if !((0.0..0.95).contains(&self.dropout) && (0.0..0.95).contains(&self.item_dropout)) {
            return bad("dropout and item_dropout must be in [0, 0.95)");
        }
        if self.negatives < 16 {
            return bad("negatives must be at least 16");
        }
        Ok(())
    }
}

/// A trained sequence model: weights as plain vectors, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqModel {
    pub dim: usize,
    pub window: usize,
    pub filters: usize,
    pub items: usize,
    /// `filters x window`.
    pub filter: Vec<f32>,
    /// `items x dim`.
    pub emb: Vec<f32>,
    /// `(filters * dim) x dim`, `dim`.
    pub wa: Vec<f32>,
    pub ba: Vec<f32>,
    /// `GAPS x dim` time-gap and `12 x dim` month embeddings.
    pub gap: Vec<f32>,
    pub month: Vec<f32>,
    /// Attention: query, key and output maps, `dim x dim` each.
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wo: Vec<f32>,
    /// `dim x hidden`, `hidden`.
    pub wb: Vec<f32>,
    pub bb: Vec<f32>,
    /// `hidden x dim`, `dim`.
    pub wc: Vec<f32>,
    pub bc: Vec<f32>,
    pub ln_g: Vec<f32>,
    pub ln_b: Vec<f32>,
    /// `items`.
    pub bias: Vec<f32>,
    /// Mean training loss of each epoch.
    pub losses: Vec<f32>,
}

fn hidden(dim: usize) -> usize {
    2 * dim
}

/// Gap buckets: 0 is under a day, k covers [2^(k-1), 2^k) days, the last everything longer.
const GAPS: usize = 16;

fn gap_bucket(seconds: i64) -> usize {
    let days = seconds.max(0) / 86_400;
    if days == 0 {
        0
    } else {
        (64 - days.leading_zeros() as usize).min(GAPS - 1)
    }
}

/// Month (0-11, Shanghai) of a timestamp.
fn month_of(at: i64) -> usize {
    usize::from(tongban_features::time::Timestamp(at).date_shanghai().month.clamp(1, 12)) - 1
}

/// `gelu` with the tanh approximation (candle's `gelu`).
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

/// `out += x W` for a row vector `x` (len `rows`) and `W` (`rows x out.len()`).
fn vec_mat(x: &[f32], w: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (i, &xi) in x.iter().enumerate() {
        if xi == 0.0 {
            continue;
        }
        for (o, &wv) in out.iter_mut().zip(&w[i * n..(i + 1) * n]) {
            *o += xi * wv;
        }
    }
}

/// A dot product written for auto-vectorisation (eight independent sums).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl SeqModel {
    /// The query vector at `now` of a history of (service, time) given newest first (at most
    /// `window` are read; services outside the model are skipped).
    pub fn query(&self, newest_first: impl Iterator<Item = (u32, i64)>, now: i64, out: &mut Vec<f32>) {
        let (d, c) = (self.dim, self.filters);
        let window: Vec<(u32, i64)> = newest_first.filter(|x| (x.0 as usize) < self.items).take(self.window).collect();
        // The window's inputs (embedding + gap embedding), one row of `d` per start.
        let mut g = Vec::with_capacity(window.len() * d);
        for &(i, at) in &window {
            let t = gap_bucket(now - at) * d;
            let e = &self.emb[i as usize * d..(i as usize + 1) * d];
            g.extend(e.iter().zip(&self.gap[t..t + d]).map(|(a, b)| a + b));
        }
        let mut s = vec![0f32; c * d];
        for (k, e) in g.chunks_exact(d).enumerate() {
            for f in 0..c {
                let w = self.filter[f * self.window + k];
                for (o, &v) in s[f * d..(f + 1) * d].iter_mut().zip(e) {
                    *o += w * v;
                }
            }
        }
        let m = month_of(now) * d;
        let mut u: Vec<f32> = self.ba.iter().zip(&self.month[m..m + d]).map(|(a, b)| a + b).collect();
        vec_mat(&s, &self.wa, &mut u);
        if let Some(newest) = g.chunks_exact(d).next() {
            // (g_0 Wq) . (g_k Wk) = g_k . q' with q' = Wk (g_0 Wq): one d x d product, not L.
            let mut q = vec![0f32; d];
            vec_mat(newest, &self.wq, &mut q);
            let qk: Vec<f32> = self.wk.chunks_exact(d).map(|row| dot(row, &q)).collect();
            let scale = 1.0 / (d as f32).sqrt();
            let scores: Vec<f32> = g.chunks_exact(d).map(|e| dot(e, &qk) * scale).collect();
            let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = scores.iter().map(|x| (x - top).exp()).collect();
            let total: f32 = w.iter().sum();
            let mut att = vec![0f32; d];
            for (e, &wi) in g.chunks_exact(d).zip(&w) {
                for (a, &v) in att.iter_mut().zip(e) {
                    *a += wi / total * v;
                }
            }
            vec_mat(&att, &self.wo, &mut u);
        }
        let mut v = self.bb.clone();
        vec_mat(&u, &self.wb, &mut v);
        v.iter_mut().for_each(|x| *x = gelu(*x));
        let mut r = self.bc.clone();
        vec_mat(&v, &self.wc, &mut r);
        for (ri, ui) in r.iter_mut().zip(&u) {
            *ri += ui;
        }
        let mean = r.iter().sum::<f32>() / d as f32;
        let var = r.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + 1e-5).sqrt();
        out.clear();
        out.extend(r.iter().zip(self.ln_g.iter().zip(&self.ln_b)).map(|(x, (g, b))| (x - mean) * inv * g + b));
    }

    /// The logit of one service for a query vector.
    #[inline]
    pub fn logit(&self, q: &[f32], item: u32) -> f32 {
        let i = item as usize;
        if i >= self.items {
            return f32::NEG_INFINITY;
        }
        self.bias[i] + dot(q, &self.emb[i * self.dim..(i + 1) * self.dim])
    }

    /// Logits of every service into `out` (resized to `items`).
    pub fn logits(&self, q: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.extend(self.emb.chunks_exact(self.dim).zip(&self.bias).map(|(e, b)| b + dot(q, e)));
    }

    /// Checks the sizes of loaded weights.
    pub fn consistent(&self) -> bool {
        let (d, h) = (self.dim, hidden(self.dim));
        self.filter.len() == self.filters * self.window
            && self.emb.len() == self.items * d
            && self.wa.len() == self.filters * d * d
            && self.ba.len() == d
            && [&self.wq, &self.wk, &self.wo].iter().all(|m| m.len() == d * d)
            && self.gap.len() == GAPS * d
            && self.month.len() == 12 * d
            && self.wb.len() == d * h
            && self.bb.len() == h
            && self.wc.len() == h * d
            && self.bc.len() == d
            && self.ln_g.len() == d
            && self.ln_b.len() == d
            && self.bias.len() == self.items
    }

    /// Trains on sequences of (service, time) (each subject's starts, oldest first).
    pub fn train(sequences: &[Vec<(u32, i64)>], items: usize, p: &SeqParams) -> Result<SeqModel, SeqError> {
        p.check()?;
        let positions: Vec<(u32, u32)> = sequences
            .iter()
            .enumerate()
            .flat_map(|(s, seq)| (1..seq.len() as u32).map(move |t| (s as u32, t)))
            .collect();
        if positions.is_empty() || items == 0 {
            return Err(SeqError::NoData);
        }
        let dev = Device::Cpu;
        let (d, l, c, h) = (p.dim, p.window, p.filters, hidden(p.dim));
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            // Box-Muller from the seeded stream.
            (0..n)
                .map(|_| {
                    let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect()
        };
        let var = |v: Vec<f32>, shape: &[usize]| -> Result<Var, SeqError> {
            Ok(Var::from_tensor(&Tensor::from_vec(v, shape, &dev)?)?)
        };
        // Padding row `items` (its contributions are masked to zero).
        let emb = var(normal((items + 1) * d, 0.05), &[items + 1, d])?;
        let decays = [0.0f32, 0.5, 0.8, 0.95, 0.3, 0.65, 0.9, 0.98];
        let mut f0 = vec![0f32; c * l];
        for f in 0..c {
            let lam = decays[f % decays.len()];
            for k in 0..l {
                f0[f * l + k] = (1.0 - lam) * lam.powi(k as i32);
            }
        }
        let filter = var(f0, &[c, l])?;
        let wa = var(normal(c * d * d, (1.0 / (c * d) as f32).sqrt()), &[c * d, d])?;
        let ba = var(vec![0.0; d], &[d])?;
        let gap = var(normal(GAPS * d, 0.02), &[GAPS, d])?;
        let month = var(normal(12 * d, 0.02), &[12, d])?;
        let wq = var(normal(d * d, (1.0 / d as f32).sqrt()), &[d, d])?;
        let wk = var(normal(d * d, (1.0 / d as f32).sqrt()), &[d, d])?;
        let wo = var(normal(d * d, 0.5 * (1.0 / d as f32).sqrt()), &[d, d])?;
        let wb = var(normal(d * h, (1.0 / d as f32).sqrt()), &[d, h])?;
        let bb = var(vec![0.0; h], &[h])?;
        let wc = var(normal(h * d, 0.5 * (1.0 / h as f32).sqrt()), &[h, d])?;
        let bc = var(vec![0.0; d], &[d])?;
        let ln_g = var(vec![1.0; d], &[d])?;
        let ln_b = var(vec![0.0; d], &[d])?;
        let bias = var(vec![0.0; items], &[items])?;
        let vars = [&emb, &gap, &month, &filter, &wa, &ba, &wq, &wk, &wo, &wb, &bb, &wc, &bc, &ln_g, &ln_b, &bias];
        let mut opt = AdamW::new(
            vars.iter().map(|v| (*v).clone()).collect(),
            ParamsAdamW { lr: p.lr, weight_decay: p.weight_decay, ..ParamsAdamW::default() },
        )?;
        let full = items <= p.negatives;
        let started = std::time::Instant::now();
        let mut order = positions;
        let mut losses = Vec::with_capacity(p.epochs);
        for epoch in 0..p.epochs {
            let mut erng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5e9 ^ (epoch as u64) << 32);
            order.shuffle(&mut erng);
            let take = order.len().min(p.max_positions);
            let (mut sum, mut batches) = (0f64, 0usize);
            for chunk in order[..take].chunks(p.batch) {
                let b = chunk.len();
                let mut ids = vec![items as u32; b * l];
                let mut gaps = vec![0u32; b * l];
                let mut mask = vec![0f32; b * l];
                let mut targets = Vec::with_capacity(b);
                let mut months = Vec::with_capacity(b);
                for (r, &(s, t)) in chunk.iter().enumerate() {
                    let seq = &sequences[s as usize];
                    let (target, at) = seq[t as usize];
                    targets.push(target);
                    months.push(month_of(at) as u32);
                    for (k, &(item, then)) in seq[..t as usize].iter().rev().take(l).enumerate() {
                        if k > 0 && erng.gen::<f32>() < p.item_dropout {
                            continue;
                        }
                        ids[r * l + k] = item;
                        gaps[r * l + k] = gap_bucket(at - then) as u32;
                        mask[r * l + k] = 1.0;
                    }
                }
                let keep = 1.0 - p.dropout;
                let drop: Vec<f32> =
                    (0..b * c * d).map(|_| if erng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
                let absent: Vec<f32> = mask.iter().map(|&m| if m > 0.0 { 0.0 } else { -1e4 }).collect();
                let ids_t = Tensor::from_vec(ids, b * l, &dev)?;
                let mask_t = Tensor::from_vec(mask, (b, 1, l), &dev)?;
                let g = (emb.as_tensor().index_select(&ids_t, 0)?
                    + gap.as_tensor().index_select(&Tensor::from_vec(gaps, b * l, &dev)?, 0)?)?
                .reshape((b, l, d))?;
                let w = filter.as_tensor().unsqueeze(0)?.broadcast_mul(&mask_t)?;
                let z = w.matmul(&g)?.reshape((b, c * d))?;
                let z = (z * Tensor::from_vec(drop, (b, c * d), &dev)?)?;
                // Attention of the newest start (always present) over the window.
                let qk = g.narrow(1, 0, 1)?.reshape((b, d))?.matmul(wq.as_tensor())?.matmul(&wk.as_tensor().t()?)?;
                let scores = (g.matmul(&qk.unsqueeze(2)?)?.reshape((b, l))? * (1.0 / (d as f64).sqrt()))?;
                let scores = scores.add(&Tensor::from_vec(absent, (b, l), &dev)?)?;
                let a = candle_nn::ops::softmax(&scores, 1)?;
                let att = a.unsqueeze(1)?.matmul(&g)?.reshape((b, d))?;
                let mon = month.as_tensor().index_select(&Tensor::from_vec(months, b, &dev)?, 0)?;
                let u = ((z.matmul(wa.as_tensor())? + att.matmul(wo.as_tensor())?)? + mon)?
                    .broadcast_add(ba.as_tensor())?;
                let v = u
                    .matmul(wb.as_tensor())?
                    .broadcast_add(bb.as_tensor())?
                    .gelu()?
                    .matmul(wc.as_tensor())?
                    .broadcast_add(bc.as_tensor())?;
                let hq = candle_nn::ops::layer_norm_slow(&(u + v)?, ln_g.as_tensor(), ln_b.as_tensor(), 1e-5)?;
                let out_emb = emb.as_tensor().narrow(0, 0, items)?;
                let loss = if full {
                    let logits = hq.matmul(&out_emb.t()?)?.broadcast_add(bias.as_tensor())?;
                    candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(targets, b, &dev)?)?
                } else {
                    // Uniform negatives, never a target of the batch (no accidental hits).
                    let mut in_batch = targets.clone();
                    in_batch.sort_unstable();
                    in_batch.dedup();
                    let mut negs: Vec<u32> = Vec::with_capacity(p.negatives);
                    if items - in_batch.len() <= p.negatives {
                        negs.extend((0..items as u32).filter(|n| in_batch.binary_search(n).is_err()));
                    }
                    while negs.len() < p.negatives.min(items - in_batch.len()) {
                        let n = erng.gen_range(0..items as u32);
                        if in_batch.binary_search(&n).is_err() {
                            negs.push(n);
                        }
                    }
                    let tgt = Tensor::from_vec(targets, b, &dev)?;
                    let neg_t = Tensor::from_vec(negs.clone(), negs.len(), &dev)?;
                    let pos = (hq.clone() * out_emb.index_select(&tgt, 0)?)?
                        .sum_keepdim(1)?
                        .add(&bias.as_tensor().index_select(&tgt, 0)?.unsqueeze(1)?)?;
                    let neg = hq
                        .matmul(&out_emb.index_select(&neg_t, 0)?.t()?)?
                        .broadcast_add(&bias.as_tensor().index_select(&neg_t, 0)?)?;
                    let logits = Tensor::cat(&[&pos, &neg], 1)?;
                    let zero = Tensor::zeros(b, DType::U32, &dev)?;
                    candle_nn::loss::cross_entropy(&logits, &zero)?
                };
                opt.backward_step(&loss)?;
                sum += f64::from(loss.to_scalar::<f32>()?);
                batches += 1;
            }
            losses.push((sum / batches.max(1) as f64) as f32);
            tracing::info!(
                epoch = epoch + 1,
                of = p.epochs,
                loss = losses[epoch],
                positions = take,
                seconds = started.elapsed().as_secs_f32(),
                "sequence model epoch"
            );
        }
        let get = |v: &Var| -> Result<Vec<f32>, SeqError> { Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?) };
        let mut emb_v = get(&emb)?;
        emb_v.truncate(items * d);
        Ok(SeqModel {
            dim: d,
            window: l,
            filters: c,
            items,
            filter: get(&filter)?,
            emb: emb_v,
            wa: get(&wa)?,
            ba: get(&ba)?,
            gap: get(&gap)?,
            month: get(&month)?,
            wq: get(&wq)?,
            wk: get(&wk)?,
            wo: get(&wo)?,
            wb: get(&wb)?,
            bb: get(&bb)?,
            wc: get(&wc)?,
            bc: get(&bc)?,
            ln_g: get(&ln_g)?,
            ln_b: get(&ln_b)?,
            bias: get(&bias)?,
            losses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sequences that cycle through 0 -> 1 -> 2 -> 3 -> 0: the model must learn the cycle.
    fn cycles() -> Vec<Vec<(u32, i64)>> {
        (0..200).map(|s| (0..8).map(|t| (((s + t) % 4) as u32, t as i64 * 86_400)).collect()).collect()
    }

    fn small() -> SeqParams {
        SeqParams {
            dim: 8,
            window: 4,
            epochs: 30,
            batch: 64,
            lr: 1e-2,
            dropout: 0.0,
            item_dropout: 0.0,
            ..SeqParams::default()
        }
    }

    #[test]
    fn it_learns_a_cycle_and_inference_matches_training() {
        let m = SeqModel::train(&cycles(), 4, &small()).unwrap();
        assert!(m.consistent());
        assert!(m.losses.last().unwrap() < &0.2, "{:?}", m.losses);
        let mut q = Vec::new();
        let mut out = Vec::new();
        for last in 0..4u32 {
            m.query([(last, 86_400), ((last + 3) % 4, 0)].into_iter(), 2 * 86_400, &mut q);
            m.logits(&q, &mut out);
            let best = (0..4).max_by(|&a, &b| out[a].total_cmp(&out[b])).unwrap();
            assert_eq!(best as u32, (last + 1) % 4, "{out:?}");
        }
    }

    #[test]
    fn training_is_repeatable_with_a_seed_and_changes_with_it() {
        let p = SeqParams { epochs: 2, ..small() };
        let a = SeqModel::train(&cycles(), 4, &p).unwrap();
        let b = SeqModel::train(&cycles(), 4, &p).unwrap();
        assert_eq!(a, b);
        let c = SeqModel::train(&cycles(), 4, &SeqParams { seed: 8, ..p }).unwrap();
        assert_ne!(a.emb, c.emb);
    }

    #[test]
    fn sampled_softmax_learns_too_and_bad_input_is_refused() {
        let p = SeqParams { negatives: 16, ..small() };
        let seqs: Vec<Vec<(u32, i64)>> =
            (0..200).map(|s| (0..8).map(|t| (((s + t) % 40) as u32, t as i64 * 86_400)).collect()).collect();
        let m = SeqModel::train(&seqs, 40, &p).unwrap();
        let mut q = Vec::new();
        m.query([(5u32, 86_400), (4, 0)].into_iter(), 2 * 86_400, &mut q);
        let mut out = Vec::new();
        m.logits(&q, &mut out);
        let best = (0..40).max_by(|&a, &b| out[a].total_cmp(&out[b])).unwrap();
        assert_eq!(best, 6);
        assert!(matches!(SeqModel::train(&[vec![(1, 0)]], 4, &small()), Err(SeqError::NoData)));
        assert!(SeqModel::train(&cycles(), 4, &SeqParams { dim: 1, ..small() }).is_err());
    }
}
