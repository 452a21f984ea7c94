//! The periodic scan: deadlines, renewals and yearly windows coming due, for every subject in
//! the store, a page at a time.

use serde::Serialize;
use tongban_features::domain::SubjectId;
use tongban_features::profile::Profile;

use super::pusher::{Offer, Pusher};
use crate::push::{self, Candidate, Preferences};
use crate::store::StoreError;

/// What a scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub subjects: usize,
    pub candidates: usize,
    pub queued: usize,
    pub skipped: usize,
}

impl Pusher {
    /// Deadlines and renewals coming due, for every subject in the store (a page at a time).
    pub async fn scan(&self) -> Result<ScanReport, StoreError> {
        let now = self.now();
        let version = self.rules_version();
        let mut report = ScanReport::default();
        let mut cursor = 0;
        loop {
            let (next, page) = self.store.page(cursor).await?;
            report.subjects += page.len();
            let mut due: Vec<(SubjectId, Profile, Preferences, Vec<Candidate>)> = Vec::new();
            for (subject, profile, prefs) in page {
                let prefs = prefs.unwrap_or_default();
                let cands = push::due(&self.catalogue, &profile, now);
                if !cands.is_empty() {
                    report.candidates += cands.len();
                    due.push((subject, profile, prefs, cands));
                }
            }
            let offers: Vec<Offer<'_>> = due
                .iter()
                .map(|(subject, profile, prefs, candidates)| Offer { subject, profile, prefs, candidates })
                .collect();
            let o = self.offer_many(&offers, &version).await?;
            report.queued += o.queued;
            report.skipped += o.skipped.len();
            if next == 0 {
                return Ok(report);
            }
            cursor = next;
        }
    }
}
