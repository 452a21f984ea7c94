//! tongban-features: the domain and the data.
//!
//! Owns the domain types ([`domain`]), the service catalogue with its life-event bundles
//! ([`catalogue`]), the event log in memory ([`log`]) and its files ([`io`]), time arithmetic without a clock ([`time`]) and the
//! synthetic Dalian histories with their oracle truth ([`synth`]).
//!
//! It deliberately does no network IO, knows nothing of Redis, axum or tokio, and never reads
//! the clock: `now` is always an argument, so every run is replayable. Files are read only in
//! [`io`] and [`catalogue`].

pub mod analytics;
pub mod catalogue;
pub mod domain;
pub mod hash;
pub mod io;
pub mod log;
pub mod profile;
pub mod stats;
pub mod synth;
pub mod time;
pub mod vector;
