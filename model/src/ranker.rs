//! The ranker: logistic regression (linfa) over candidate feature vectors.
//!
//! Hyperparameters are a builder checked once ([`RankerParams::check`]) before fitting, as in
//! linfa. The fitted [`Ranker`] is a plain weight vector: scoring is one dot product per
//! candidate, in `f32`, with no linfa type on the hot path.
//!
//! The ranker sees each schema feature `x` and also `sqrt(x)`: probabilities from transition
//! and co-occurrence counts are heavy-tailed, and the square root lets a linear model weigh
//! "some evidence" against "none" without a tree learner.
//!
//! linfa-logistic 0.8.1 takes the class it meets first as its "positive" class, so the fit
//! checks `labels().pos` and flips the sign of the weights when the positive class is 0.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use tongban_features::vector::{FeatureDef, WIDTH};

/// Features the model appends to the schema's ([`tongban_features::vector::SCHEMA`]): they
/// need the model's own parts (the sequence model, the item similarities). Every value lies
/// in `[0, 1]`.
pub const MODEL_FEATURES: [FeatureDef; 4] = [
    FeatureDef { name: "seq_prob", meaning: "exp(sequence-model logit - the best logit of any service)" },
    FeatureDef { name: "seq_rel", meaning: "max(0, 1 + (sequence-model logit - the best logit of any service) / 16)" },
    FeatureDef {
        name: "knn_rel",
        meaning: "sum of cosine similarities to the subject's retained starts (item-kNN) / the best service's",
    },
    FeatureDef { name: "knn_sum", meaning: "min(1, sum of cosine similarities to the subject's retained starts)" },
];

/// Width of a ranker row: the schema's features, then [`MODEL_FEATURES`].
pub const ROW: usize = WIDTH + MODEL_FEATURES.len();

/// Width of the ranker's input: each row feature and its square root.
pub const INPUT: usize = 2 * ROW;

/// Expands one row into the ranker's input.
#[inline]
pub fn expand(x: &[f32], out: &mut [f32; INPUT]) {
    for (i, &v) in x.iter().enumerate().take(ROW) {
        out[i] = v;
        out[ROW + i] = v.max(0.0).sqrt();
    }
}

/// Unchecked hyperparameters of the ranker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankerParams {
    /// L2 regularisation strength.
    pub alpha: f64,
    /// Iterations of L-BFGS.
    pub max_iterations: u64,
    /// Negatives kept per positive (sampled among the candidates, seeded).
    pub negatives: usize,
    /// Further negatives per positive sampled among all services (seeded).
    #[serde(default)]
    pub random_negatives: usize,
    /// Training cases used at most (subjects), sampled when more.
    pub max_cases: usize,
    pub seed: u64,
}

impl Default for RankerParams {
    fn default() -> Self {
        RankerParams { alpha: 1e-3, max_iterations: 150, negatives: 20, random_negatives: 0, max_cases: 20_000, seed: 7 }
    }
}

/// Hyperparameters that passed [`RankerParams::check`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValidRankerParams(RankerParams);

impl ValidRankerParams {
    pub fn get(&self) -> &RankerParams {
        &self.0
    }
}

/// Why a ranker could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum RankerError {
    #[error("alpha must be finite and >= 0, got {0}")]
    Alpha(f64),
    #[error("max_iterations must be 1 to 10000, got {0}")]
    Iterations(u64),
    #[error("negatives must be 1 to 1000, got {0}")]
    Negatives(usize),
    #[error("max_cases must be at least 10, got {0}")]
    Cases(usize),
    #[error("no training case has both a positive and a negative candidate: the data is too small")]
    NoCases,
    #[error("logistic regression failed: {0}")]
    Fit(String),
}

impl RankerParams {
    pub fn check(self) -> Result<ValidRankerParams, RankerError> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(RankerError::Alpha(self.alpha));
        }
        if !(1..=10_000).contains(&self.max_iterations) {
            return Err(RankerError::Iterations(self.max_iterations));
        }
        if !(1..=1000).contains(&self.negatives) {
            return Err(RankerError::Negatives(self.negatives));
        }
        if self.max_cases < 10 {
            return Err(RankerError::Cases(self.max_cases));
        }
        Ok(ValidRankerParams(self))
    }
}

/// Training rows: expanded features and labels (1 = the service done next).
#[derive(Debug, Clone, Default)]
pub struct TrainingSet {
    rows: Vec<f32>,
    labels: Vec<usize>,
}

impl TrainingSet {
    pub fn push(&mut self, features: &[f32], positive: bool) {
        let mut x = [0f32; INPUT];
        expand(features, &mut x);
        self.rows.extend_from_slice(&x);
        self.labels.push(usize::from(positive));
    }
    pub fn extend(&mut self, other: TrainingSet) {
        self.rows.extend(other.rows);
        self.labels.extend(other.labels);
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l == 1).count()
    }
}

/// A fitted linear ranker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranker {
    pub weights: Vec<f32>,
    pub bias: f32,
}

impl Ranker {
    /// Fits logistic regression on the rows.
    pub fn fit(set: &TrainingSet, params: &ValidRankerParams) -> Result<Ranker, RankerError> {
        let p = params.get();
        let pos = set.positives();
        if pos == 0 || pos == set.len() {
            return Err(RankerError::NoCases);
        }
        let x = Array2::from_shape_vec((set.len(), INPUT), set.rows.clone())
            .map_err(|e| RankerError::Fit(e.to_string()))?;
        let y = Array1::from_vec(set.labels.clone());
        let ds = Dataset::new(x, y);
        let fitted = LogisticRegression::default()
            .alpha(p.alpha as f32)
            .max_iterations(p.max_iterations)
            .fit(&ds)
            .map_err(|e| RankerError::Fit(e.to_string()))?;
        // linfa-logistic 0.8.1 names its positive class by first appearance, not by value.
        let sign = if fitted.labels().pos.class == 1 { 1.0f32 } else { -1.0 };
        Ok(Ranker { weights: fitted.params().iter().map(|&w| sign * w).collect(), bias: sign * fitted.intercept() })
    }

    /// The score of one row (higher = more likely next).
    #[inline]
    pub fn score(&self, features: &[f32]) -> f32 {
        let mut x = [0f32; INPUT];
        expand(features, &mut x);
        self.bias + self.weights.iter().zip(x.iter()).map(|(w, v)| w * v).sum::<f32>()
    }

    /// A ranker that sums the given row features with weight 1 (tests, fallbacks).
    pub fn uniform(features: &[usize]) -> Ranker {
        let mut weights = vec![0f32; INPUT];
        for &f in features {
            weights[f] = 1.0;
        }
        Ranker { weights, bias: 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_positive_class_gets_the_higher_score_whatever_label_comes_first() {
        // Feature 0 separates the classes; the first row is a negative (linfa would otherwise
        // take label 0 as its positive class).
        let mut set = TrainingSet::default();
        for i in 0..200 {
            let mut f = [0f32; ROW];
            let positive = i % 4 == 1;
            f[0] = if positive { 0.9 } else { 0.1 } + (i % 7) as f32 * 0.01;
            set.push(&f, positive);
        }
        let r = Ranker::fit(&set, &RankerParams::default().check().unwrap()).unwrap();
        let mut hi = [0f32; ROW];
        hi[0] = 0.9;
        let mut lo = [0f32; ROW];
        lo[0] = 0.1;
        assert!(r.score(&hi) > r.score(&lo), "{r:?}");
    }

    #[test]
    fn bad_hyperparameters_are_refused_before_fitting() {
        assert!(matches!(RankerParams { alpha: -1.0, ..RankerParams::default() }.check(), Err(RankerError::Alpha(_))));
        assert!(matches!(
            RankerParams { negatives: 0, ..RankerParams::default() }.check(),
            Err(RankerError::Negatives(0))
        ));
        let set = TrainingSet::default();
        assert!(matches!(Ranker::fit(&set, &RankerParams::default().check().unwrap()), Err(RankerError::NoCases)));
    }
}
