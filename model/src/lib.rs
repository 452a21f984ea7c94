//! tongban-model: what a subject will need next.
//!
//! Owns the candidate sources and the scorer ([`recommend`]), the linfa-trained ranker
//! ([`ranker`]), evaluation protocols with baselines and the oracle ([`eval`]), and the model
//! artifact ([`artifact`]).
//!
//! Like `features`, it does no network IO, knows nothing of Redis, axum or tokio, and never
//! reads the clock: `now` and `created_at` are arguments. It reads and writes files only in
//! [`artifact`].

pub mod artifact;
pub mod eval;
pub mod knn;
pub mod ranker;
pub mod recommend;
pub mod seq;

pub use recommend::{reason, Case, Model, ModelError, ModelParams, Request, ScoreScratch, Suggestion};
