//! tongban-model: what a subject will need next.
//!
//! Owns the candidate sources and the scorer ([`recommend`]), the sequence model ([`seq`]),
//! item similarities ([`knn`]), the ranker ([`ranker`]), evaluation protocols with baselines
//! and the oracle ([`eval`]), and the model artifact ([`artifact`]). Long steps report to a
//! [`progress::Progress`] the caller passes (the binary draws bars; the model draws nothing).
//!
//! Like `features`, it does no network IO, knows nothing of Redis, axum or tokio, and never
//! reads the wall clock: `now` and `created_at` are arguments (training logs elapsed seconds
//! from a monotonic timer). It reads and writes files only in [`artifact`].

pub mod artifact;
pub mod eval;
pub mod knn;
pub mod progress;
pub mod ranker;
pub mod recommend;
pub mod seq;

pub use progress::{Progress, Silent};
pub use recommend::{reason, Case, Model, ModelError, ModelParams, Request, ScoreScratch, Suggestion};
