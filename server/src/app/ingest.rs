//! Ingest: validated events -> the store (idempotent by event id, per subject) -> the
//! next-step trigger for completed bundle steps.

use std::collections::HashMap;

use tongban_features::domain::{EventKind, SubjectId};
use tongban_features::io::LogEvent;

use super::AppState;
use crate::models::Served;
use crate::store::{Batch, StoreError};

/// One validated event with its sender's id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub subject: SubjectId,
    pub event: LogEvent,
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ingested {
    /// Events stored.
    pub accepted: usize,
    /// Event ids seen before: acknowledged, not stored again.
    pub duplicates: usize,
    /// Older than the whole retained window of a full profile: acknowledged, not applied.
    pub too_late: usize,
    /// Pushes queued by the triggers.
    pub pushed: usize,
}

/// Applies the events per subject (two round trips on Redis for the whole request), then
/// proposes the next steps after completed bundle steps. The events are stored before any
/// trigger runs: a trigger failure loses a push (logged and counted), never an event.
pub async fn ingest(state: &AppState, served: &Served, events: &[NewEvent]) -> Result<Ingested, StoreError> {
    let mut by_subject: Vec<(&SubjectId, Vec<LogEvent>, Vec<String>)> = Vec::new();
    let mut index: HashMap<&SubjectId, usize> = HashMap::new();
    for v in events {
        let slot = *index.entry(&v.subject).or_insert_with(|| {
            by_subject.push((&v.subject, Vec::new(), Vec::new()));
            by_subject.len() - 1
        });
        by_subject[slot].1.push(v.event);
        by_subject[slot].2.push(v.id.clone());
    }
    let ctx = served.model.profile_context();
    let batches: Vec<Batch> = by_subject.iter().map(|(subject, events, ids)| Batch { subject, events, ids }).collect();
    let segments: Vec<u16> = by_subject.iter().map(|(s, _, _)| state.segment(s.as_str())).collect();
    // Event ids are remembered from wall time, as Redis expires on its own clock: a pinned
    // policy clock (tests, the demo) must not keep them forever.
    let wall = (crate::clock::wall_ms() / 1000) as i64;
    let done =
        state.store.apply_many(&batches, &segments, &ctx, wall).await.inspect_err(|_| state.metrics.store_error())?;
    let mut out = Ingested {
        accepted: done.iter().map(|d| d.accepted).sum(),
        duplicates: done.iter().map(|d| d.duplicates).sum(),
        too_late: done.iter().map(|d| d.too_late).sum(),
        pushed: 0,
    };
    state.metrics.events(out.accepted as u64);
    let accepted: Vec<(&str, &[LogEvent], &[u32])> =
        batches.iter().zip(&done).map(|(b, d)| (b.subject.as_str(), b.events, d.accepted_at.as_slice())).collect();
    state.console.feed(&accepted);
    let Some(pusher) = &state.pusher else { return Ok(out) };
    let completed: Vec<(&SubjectId, Vec<u32>)> = batches
        .iter()
        .zip(&done)
        .filter(|(_, d)| d.accepted > 0)
        .map(|(b, _)| {
            (b.subject, b.events.iter().filter(|e| e.kind == EventKind::Completed).map(|e| e.service).collect())
        })
        .filter(|(_, c): &(&SubjectId, Vec<u32>)| !c.is_empty())
        .collect();
    let items: Vec<(&SubjectId, &[u32])> = completed.iter().map(|(s, c)| (*s, c.as_slice())).collect();
    if items.is_empty() {
        return Ok(out);
    }
    match pusher.after_events_many(&items, Some(&served.model), &served.version).await {
        Ok(o) => {
            out.pushed = o.queued;
            for (_, skip) in &o.skipped {
                state.metrics.push_skipped(*skip);
            }
        }
        Err(e) => {
            state.metrics.store_error();
            tracing::warn!(subjects = items.len(), error = %e, "push trigger failed");
        }
    }
    Ok(out)
}
