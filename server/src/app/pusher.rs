//! Policy and enqueue: a subject's candidates -> policy -> atomic reservation in the store ->
//! the queue. Shared by ingest, the worker's scan, campaigns and `tongban scan`.

use std::sync::Arc;

use serde::Serialize;
use tongban_features::catalogue::Catalogue;
use tongban_features::domain::SubjectId;
use tongban_features::profile::Profile;
use tongban_model::Model;

use crate::clock::{wall_ms, Clock};
use crate::push::{self, Candidate, Caps, Job, Preferences, Skip, Templates, Trigger};
use crate::queue::{Enqueue, Queue, Status};
use crate::store::{Reservation, Store, StoreError};

/// Policy and enqueue, shared by the API, the worker's scan and `tongban scan`.
#[derive(Debug)]
pub struct Pusher {
    pub store: Arc<Store>,
    pub queue: Arc<Queue>,
    pub catalogue: Arc<Catalogue>,
    pub templates: Arc<Templates>,
    pub caps: Caps,
    pub portal: String,
    /// The key push ids are made with (none: plain hashes).
    pub ids: push::IdKey,
    /// The policy clock (pinned in tests and the demo); queue scheduling runs on wall time.
    pub clock: Clock,
}

/// One subject's candidates with what the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub subject: &'a SubjectId,
    pub profile: &'a Profile,
    pub prefs: &'a Preferences,
    pub candidates: &'a [Candidate],
}

/// What an offer of candidates did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Offered {
    pub queued: usize,
    pub skipped: Vec<(String, Skip)>,
    pub ids: Vec<String>,
}

impl Pusher {
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The model version written on pushes from catalogue rules (scans).
    pub fn rules_version(&self) -> String {
        format!("rules@{}", &self.catalogue.fingerprint()[..12.min(self.catalogue.fingerprint().len())])
    }

    /// Runs the policy on one subject's candidates, reserves the survivors (de-duplication and
    /// caps, atomically in the store) and enqueues them.
    pub async fn offer(
        &self,
        subject: &SubjectId,
        profile: &Profile,
        prefs: &Preferences,
        candidates: &[Candidate],
        model: &str,
    ) -> Result<Offered, StoreError> {
        self.offer_many(&[Offer { subject, profile, prefs, candidates }], model).await
    }

    /// [`Pusher::offer`] for several subjects: one round trip to reserve, one to enqueue.
    pub async fn offer_many(&self, offers: &[Offer<'_>], model: &str) -> Result<Offered, StoreError> {
        let now = self.now();
        let wall = wall_ms();
        let mut jobs: Vec<(Job, bool, Result<(), Skip>)> = Vec::new();
        for o in offers {
            for c in o.candidates {
                let job = push::job(
                    &self.catalogue,
                    &self.templates,
                    o.prefs,
                    o.subject,
                    c,
                    now,
                    &self.portal,
                    model,
                    &self.ids,
                );
                jobs.push((job, c.critical, push::decide(o.prefs, o.profile, c)));
            }
        }
        let reservations: Vec<Reservation<'_>> = jobs
            .iter()
            .filter(|(_, _, v)| v.is_ok())
            .map(|(job, critical, _)| Reservation { subject: &job.subject, id: &job.message.id, critical: *critical })
            .collect();
        let mut answers = self.store.reserve_many(&reservations, now, &self.caps).await?.into_iter();
        let mut out = Offered::default();
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for (job, _, verdict) in jobs {
            let verdict = match verdict {
                Ok(()) => answers.next().expect("one answer per reservation"),
                Err(skip) => Err(skip),
            };
            if let Err(skip) = verdict {
                out.skipped.push((job.message.id.clone(), skip));
                skipped.push((job, skip));
                continue;
            }
            let wait = (job.message.deliver_at - now).max(0) as u64;
            let status = if wait > 0 { Status::Deferred } else { Status::Queued };
            out.ids.push(job.message.id.clone());
            items.push(Enqueue { job, due_ms: wall + wait * 1000, status });
        }
        out.queued = items.len();
        // Enqueue first: if it fails, the reservations are given back, so that nothing is held
        // that was never queued (a request dropped between the two round trips still can).
        if let Err(e) = self.queue.enqueue(&items).await {
            let held: Vec<Reservation<'_>> = items
                .iter()
                .map(|it| Reservation { subject: &it.job.subject, id: &it.job.message.id, critical: it.job.critical })
                .collect();
            if let Err(e2) = self.store.release(&held).await {
                tracing::warn!(reservations = held.len(), error = %e2, "reservations not released after a failed enqueue");
            }
            return Err(e);
        }
        // Skip records are for operators; losing them loses no push.
        if let Err(e) = self.queue.skipped(&skipped).await {
            tracing::warn!(records = skipped.len(), error = %e, "skip records not written");
        }
        Ok(out)
    }

    /// The next-step trigger after a subject completed `completed` (one proposal per bundle).
    /// With a model, steps below `caps.min_confidence` are left out of a digest.
    pub async fn after_events(
        &self,
        subject: &SubjectId,
        completed: &[u32],
        model: Option<&Model>,
        version: &str,
    ) -> Result<Offered, StoreError> {
        self.after_events_many(&[(subject, completed)], model, version).await
    }

    /// [`Pusher::after_events`] for several subjects (an ingest batch): three round trips in all.
    pub async fn after_events_many(
        &self,
        items: &[(&SubjectId, &[u32])],
        model: Option<&Model>,
        version: &str,
    ) -> Result<Offered, StoreError> {
        let subjects: Vec<&SubjectId> = items.iter().map(|x| x.0).collect();
        let data = self.store.profiles_and_prefs(&subjects).await?;
        let now = self.now();
        let mut scratch = model.map(Model::scratch).unwrap_or_default();
        let mut kept: Vec<(&SubjectId, Profile, Preferences, Vec<Candidate>)> = Vec::new();
        for (&(subject, completed), (profile, prefs)) in items.iter().zip(data) {
            let Some(profile) = profile else { continue };
            let mut cands: Vec<Candidate> = Vec::new();
            for &done in completed {
                for mut c in push::propose(&self.catalogue, &profile, done, now, &self.caps) {
                    if cands.iter().any(|x| x.key == c.key) {
                        continue;
                    }
                    // A sensitive bundle's message lists everything that remains, whatever the
                    // model thinks.
                    if let (Some(m), false) = (model, c.trigger == Trigger::Sensitive) {
                        let scores = m.score_services(&profile, &c.content.services, now, &mut scratch);
                        let keep =
                            |x: &Option<f32>| x.is_some_and(|l| 1.0 / (1.0 + (-l).exp()) >= self.caps.min_confidence);
                        let mut k = scores.iter();
                        c.content.services.retain(|_| k.next().is_some_and(keep));
                        if c.content.services.is_empty() {
                            continue;
                        }
                        c.reasons.push("model_confidence");
                    }
                    cands.push(c);
                }
            }
            if !cands.is_empty() {
                kept.push((subject, profile, prefs.unwrap_or_default(), cands));
            }
        }
        let offers: Vec<Offer<'_>> = kept
            .iter()
            .map(|(subject, profile, prefs, candidates)| Offer { subject, profile, prefs, candidates })
            .collect();
        self.offer_many(&offers, version).await
    }
}
