//! The periodic scan: deadlines, renewals and yearly windows coming due, for every subject in
//! the store, a page at a time; and the outbox's recovery pass over the same pages.
//!
//! Why the recovery rides on the scan's paging rather than on an index of subjects with
//! pending entries: on Redis such an index would be one key outside every subject's hash slot,
//! so the reservation script could not write it atomically with the entry (a Cluster refuses a
//! script across slots), and every reservation of every replica would write that one hot key.
//! The pages visit every subject with a profile, which every subject with an outbox entry has
//! (pushes are only offered to profiles, and erasure deletes the outbox with the profile); the
//! cost is one more read per subject per scan, and a push lost to a dropped request waits for
//! the next scan (hourly by default), under the same lease, instead of being lost.

use serde::Serialize;
use tongban_features::domain::SubjectId;
use tongban_features::profile::Profile;

use super::pusher::{Offer, Pusher};
use crate::clock::wall_ms;
use crate::push::{self, Candidate, Preferences};
use crate::store::StoreError;

/// What a scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub subjects: usize,
    pub candidates: usize,
    pub queued: usize,
    pub skipped: usize,
    /// Reserved pushes whose enqueue was never confirmed, enqueued by the recovery pass.
    pub recovered: usize,
}

impl Pusher {
    /// Deadlines and renewals coming due, for every subject in the store (a page at a time),
    /// and the outbox's recovery pass ([`Pusher::recover`]) on each page at wall time.
    pub async fn scan(&self) -> Result<ScanReport, StoreError> {
        self.scan_at(wall_ms()).await
    }

    /// [`Pusher::scan`] with the recovery pass at wall time `now_ms` (tests drive it past the
    /// outbox's grace; the policy clock is the pusher's).
    pub async fn scan_at(&self, now_ms: u64) -> Result<ScanReport, StoreError> {
        let now = self.now();
        let version = self.rules_version();
        let mut report = ScanReport::default();
        let mut cursor = 0;
        loop {
            let (next, page) = self.store.page(cursor).await?;
            report.subjects += page.len();
            let subjects: Vec<&SubjectId> = page.iter().map(|(s, _, _)| s).collect();
            report.recovered += self.recover(&subjects, now_ms).await?;
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
