//! Progress of the long steps (sequence model epochs, ranker rows, evaluation cases), for
//! whoever shows it. The model draws nothing and reads no terminal: the binary implements
//! [`Progress`] with progress bars, everyone else passes [`Silent`]. Reporting never changes a
//! result: no callback sees or alters a number the model computes.

/// Receives the progress of one step at a time. Called from several threads at once (rayon),
/// hence `Sync`; each method has a no-op default.
pub trait Progress: Sync + std::fmt::Debug {
    /// A step begins: `total` units of work (0: unknown, a spinner), named for people.
    fn start(&self, _step: &str, _total: u64) {}
    /// `n` more units of the current step are done.
    fn advance(&self, _n: u64) {}
    /// A note on the current step (an epoch's loss, the scorer being evaluated).
    fn note(&self, _text: &str) {}
    /// The current step is over.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}
