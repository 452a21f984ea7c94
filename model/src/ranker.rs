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
pub const MODEL_FEATURES: [FeatureDef; 6] = [
    FeatureDef { name: "seq_prob", meaning: "exp(sequence-model logit - the best logit of any service)" },
    FeatureDef { name: "seq_rel", meaning: "max(0, 1 + (sequence-model logit - the best logit of any service) / 16)" },
    FeatureDef {
        name: "knn_rel",
        meaning: "sum of cosine similarities to the subject's retained starts (item-kNN) / the best service's",
    },
    FeatureDef { name: "knn_sum", meaning: "min(1, sum of cosine similarities to the subject's retained starts)" },
    FeatureDef { name: "seq_p", meaning: "the sequence model's softmax probability over every service" },
    FeatureDef { name: "seq_logp", meaning: "max(0, 1 + the sequence model's log-probability / 24)" },
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

/// The learning algorithm of the ranker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Learner {
    /// linfa logistic regression over each feature and its square root (the baseline).
    #[default]
    Logistic,
    /// Gradient-boosted trees (perpetual, log-loss) over the row's features: they combine
    /// features ("transition x recency", "segment x season") that a linear model cannot.
    Boosted,
}

fn default_budget() -> f32 {
    0.5
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
    #[serde(default)]
    pub learner: Learner,
    /// Complexity of the boosted trees (perpetual's budget; more = more trees).
    #[serde(default = "default_budget")]
    pub budget: f32,
}

impl Default for RankerParams {
    fn default() -> Self {
        RankerParams {
            alpha: 1e-3,
            max_iterations: 150,
            negatives: 20,
            random_negatives: 0,
            max_cases: 20_000,
            seed: 7,
            learner: Learner::Logistic,
            budget: default_budget(),
        }
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
    #[error("budget must be in (0, 4], got {0}")]
    Budget(f32),
    #[error("boosting failed: {0}")]
    Boost(String),
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
        if !(self.budget > 0.0 && self.budget <= 4.0) {
            return Err(RankerError::Budget(self.budget));
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

/// Boosted trees, flattened for scoring: perpetual keeps its nodes in a hash map per tree,
/// which costs a hash lookup per node on the request path; here a tree is a slice of nodes
/// and a step is an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub base: f64,
    /// Per tree, the index of its root in `nodes`.
    pub roots: Vec<u32>,
    pub nodes: Vec<TreeNode>,
}

/// One node: a leaf (`feature == u32::MAX`) holds `value`; a split sends `x[feature] <
/// threshold` to `left`, else to `right`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    pub feature: u32,
    pub threshold: f64,
    pub left: u32,
    pub right: u32,
    pub value: f32,
}

impl Forest {
    fn from_booster(b: &perpetual::PerpetualBooster) -> Result<Forest, RankerError> {
        let mut f = Forest { base: b.base_score, roots: Vec::new(), nodes: Vec::new() };
        for tree in b.get_prediction_trees() {
            let start = f.nodes.len() as u32;
            let mut ids: Vec<usize> = tree.nodes.keys().copied().collect();
            ids.sort_unstable();
            let at = |id: usize| -> Result<u32, RankerError> {
                ids.binary_search(&id)
                    .map(|i| start + i as u32)
                    .map_err(|_| RankerError::Boost(format!("tree node {id} missing")))
            };
            for id in &ids {
                let n = &tree.nodes[id];
                if n.left_cats.is_some() {
                    return Err(RankerError::Boost("categorical split in a numeric model".into()));
                }
                f.nodes.push(if n.is_leaf {
                    TreeNode { feature: u32::MAX, threshold: 0.0, left: 0, right: 0, value: n.weight_value }
                } else {
                    TreeNode {
                        feature: n.split_feature as u32,
                        threshold: n.split_value,
                        left: at(n.left_child)?,
                        right: at(n.right_child)?,
                        value: 0.0,
                    }
                });
            }
            f.roots.push(at(0)?);
        }
        Ok(f)
    }

    /// The raw score (log-odds) of one row.
    #[inline]
    pub fn score(&self, x: &[f32]) -> f32 {
        let mut sum = self.base;
        for &r in &self.roots {
            let mut n = &self.nodes[r as usize];
            while n.feature != u32::MAX {
                let v = f64::from(x.get(n.feature as usize).copied().unwrap_or(0.0));
                n = &self.nodes[if v < n.threshold { n.left } else { n.right } as usize];
            }
            sum += f64::from(n.value);
        }
        sum as f32
    }

    /// Whether every split reads a feature of a row and every child exists.
    pub fn consistent(&self) -> bool {
        let n = self.nodes.len() as u32;
        self.roots.iter().all(|&r| r < n)
            && self
                .nodes
                .iter()
                .all(|t| t.feature == u32::MAX || ((t.feature as usize) < ROW && t.left < n && t.right < n))
    }
}

/// A fitted ranker: a linear model over [`expand`]ed rows, or boosted trees over rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranker {
    pub weights: Vec<f32>,
    pub bias: f32,
    /// When set, the ranker is these trees (and `weights` are zero).
    pub forest: Option<Forest>,
}

impl Ranker {
    /// Fits the chosen learner on the rows.
    pub fn fit(set: &TrainingSet, params: &ValidRankerParams) -> Result<Ranker, RankerError> {
        let p = params.get();
        let pos = set.positives();
        if pos == 0 || pos == set.len() {
            return Err(RankerError::NoCases);
        }
        if p.learner == Learner::Boosted {
            return Ranker::fit_boosted(set, p);
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
        Ok(Ranker {
            weights: fitted.params().iter().map(|&w| sign * w).collect(),
            bias: sign * fitted.intercept(),
            forest: None,
        })
    }

    fn fit_boosted(set: &TrainingSet, p: &RankerParams) -> Result<Ranker, RankerError> {
        use perpetual::objective::Objective;
        // perpetual's matrix is column-major; the trees read the raw row features.
        let rows = set.len();
        let mut data = vec![0f64; rows * ROW];
        for (r, x) in set.rows.chunks_exact(INPUT).enumerate() {
            for (c, &v) in x[..ROW].iter().enumerate() {
                data[c * rows + r] = f64::from(v);
            }
        }
        let y: Vec<f64> = set.labels.iter().map(|&l| l as f64).collect();
        let mut booster = perpetual::PerpetualBooster::default()
            .set_objective(Objective::LogLoss)
            .set_budget(p.budget)
            .set_seed(p.seed);
        booster
            .fit(&perpetual::Matrix::new(&data, rows, ROW), &y, None, None)
            .map_err(|e| RankerError::Boost(e.to_string()))?;
        Ok(Ranker { weights: vec![0.0; INPUT], bias: 0.0, forest: Some(Forest::from_booster(&booster)?) })
    }

    /// The score of one row (higher = more likely next).
    #[inline]
    pub fn score(&self, features: &[f32]) -> f32 {
        if let Some(f) = &self.forest {
            return f.score(features);
        }
        if self.weights.len() != INPUT || features.len() < ROW {
            let mut x = [0f32; INPUT];
            expand(features, &mut x);
            return self.bias + self.weights.iter().zip(x.iter()).map(|(w, v)| w * v).sum::<f32>();
        }
        // The same sum as over the expanded row, in four lanes the compiler can vectorise
        // (each feature and its square root side by side); the tail is added last.
        let (w, r) = self.weights.split_at(ROW);
        let mut lanes = [0f32; 4];
        let whole = ROW / 4 * 4;
        for ((x, a), b) in features[..whole].chunks_exact(4).zip(w.chunks_exact(4)).zip(r.chunks_exact(4)) {
            for l in 0..4 {
                lanes[l] += a[l] * x[l] + b[l] * x[l].max(0.0).sqrt();
            }
        }
        let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        for i in whole..ROW {
            sum += w[i] * features[i] + r[i] * features[i].max(0.0).sqrt();
        }
        self.bias + sum
    }

    /// A ranker that sums the given row features with weight 1 (tests, fallbacks).
    pub fn uniform(features: &[usize]) -> Ranker {
        let mut weights = vec![0f32; INPUT];
        for &f in features {
            weights[f] = 1.0;
        }
        Ranker { weights, bias: 0.0, forest: None }
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
    fn boosted_trees_learn_a_band_of_one_feature_and_flatten_into_a_consistent_forest() {
        // Positive exactly when feature 0 lies in a middle band.
        let mut set = TrainingSet::default();
        for i in 0..3000 {
            let mut f = [0f32; ROW];
            f[0] = (i % 100) as f32 / 100.0;
            f[1] = (i % 13) as f32 / 13.0;
            set.push(&f, (0.4..0.6).contains(&f[0]));
        }
        let row = |a: f32| {
            let mut f = [0f32; ROW];
            f[0] = a;
            f
        };
        let p = RankerParams { learner: Learner::Boosted, ..RankerParams::default() }.check().unwrap();
        let r = Ranker::fit(&set, &p).unwrap();
        let forest = r.forest.as_ref().expect("trees");
        assert!(forest.consistent() && !forest.roots.is_empty());
        assert!(r.score(&row(0.5)) > r.score(&row(0.1)) && r.score(&row(0.5)) > r.score(&row(0.9)));
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
