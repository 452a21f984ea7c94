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
use crate::store::{Dedupe, Pending, Reservation, Store, StoreError, SENT_KEEP_SECS};

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

/// A candidate's push before its reservation.
struct Proposed {
    pending: Pending,
    critical: bool,
    /// De-duplication key and horizon ([`Dedupe`]).
    key: String,
    horizon_secs: i64,
    /// The policy's answer before the store's.
    verdict: Result<(), Skip>,
}

/// The enqueue of an outbox entry at wall time `now_ms`: deferred while it is not due.
fn enqueue_of(p: Pending, now_ms: u64) -> Enqueue {
    let status = if p.due_ms > now_ms { Status::Deferred } else { Status::Queued };
    Enqueue { job: p.job, due_ms: p.due_ms, status }
}

/// Pushes reserved (with their outbox entries) and not yet enqueued: the state between the two
/// steps of an offer.
#[derive(Debug, Default)]
pub struct Reserved {
    offered: Offered,
    items: Vec<Enqueue>,
    skipped: Vec<(Job, Skip)>,
}

impl Reserved {
    /// What the offer answers once enqueued.
    pub fn offered(&self) -> &Offered {
        &self.offered
    }
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

    /// [`Pusher::offer`] for several subjects: one round trip to reserve (with the outbox
    /// entries), one to enqueue, one to clear the outbox.
    ///
    /// Nothing reserved is lost to a request dropped (or a process killed) after the
    /// reservation: the reservation writes the push into the subject's outbox in the same
    /// atomic step, the outbox entry is cleared only once the queue holds the push, and the
    /// periodic scan's recovery pass ([`Pusher::recover`]) enqueues entries older than
    /// [`OUTBOX_GRACE_MS`](crate::store::OUTBOX_GRACE_MS). A failed enqueue therefore keeps its
    /// reservations (the recovery enqueues them later) instead of releasing them, and a failed
    /// clear only costs a second enqueue of the same push id, which the inbox refuses and
    /// webhook receivers de-duplicate.
    pub async fn offer_many(&self, offers: &[Offer<'_>], model: &str) -> Result<Offered, StoreError> {
        let reserved = self.reserve_offers(offers, model).await?;
        self.enqueue_reserved(reserved).await
    }

    /// The first step of [`Pusher::offer_many`]: the policy and the reservations, each with its
    /// outbox entry. What a request dropped after its reservation leaves behind (tests stop
    /// here to show the recovery pass).
    pub async fn reserve_offers(&self, offers: &[Offer<'_>], model: &str) -> Result<Reserved, StoreError> {
        let now = self.now();
        let wall = wall_ms();
        let mut jobs: Vec<Proposed> = Vec::new();
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
                let (key, horizon_secs) = match c.sliding_secs {
                    Some(secs) => (self.ids.dedupe_key(o.subject, &c.key, c.trigger), secs),
                    None => (job.message.id.clone(), SENT_KEEP_SECS),
                };
                let wait = (job.message.deliver_at - now).max(0) as u64;
                let verdict = push::decide(o.prefs, o.profile, c);
                let pending = Pending { job, due_ms: wall + wait * 1000, since_ms: wall };
                jobs.push(Proposed { pending, critical: c.critical, key, horizon_secs, verdict });
            }
        }
        let reservations: Vec<Reservation<'_>> = jobs
            .iter()
            .filter(|p| p.verdict.is_ok())
            .map(|p| Reservation {
                subject: &p.pending.job.subject,
                id: &p.pending.job.message.id,
                critical: p.critical,
                dedupe: Dedupe { key: &p.key, horizon_secs: p.horizon_secs },
                outbox: Some(&p.pending),
            })
            .collect();
        let mut answers = self.store.reserve_many(&reservations, now, &self.caps).await?.into_iter();
        let mut r = Reserved::default();
        for p in jobs {
            let verdict = match p.verdict {
                Ok(()) => answers.next().expect("one answer per reservation"),
                Err(skip) => Err(skip),
            };
            if let Err(skip) = verdict {
                r.offered.skipped.push((p.pending.job.message.id.clone(), skip));
                r.skipped.push((p.pending.job, skip));
                continue;
            }
            r.offered.ids.push(p.pending.job.message.id.clone());
            r.items.push(enqueue_of(p.pending, wall));
        }
        r.offered.queued = r.items.len();
        Ok(r)
    }

    /// The second step of [`Pusher::offer_many`]: enqueues what was reserved, then clears its
    /// outbox entries and writes the skip records.
    pub async fn enqueue_reserved(&self, reserved: Reserved) -> Result<Offered, StoreError> {
        let Reserved { offered, items, skipped } = reserved;
        // A failed enqueue leaves the outbox entries to the recovery pass (see `offer_many`).
        self.queue.enqueue(&items).await?;
        let done: Vec<(&SubjectId, &str)> =
            items.iter().map(|it| (&it.job.subject, it.job.message.id.as_str())).collect();
        if let Err(e) = self.store.clear_outbox(&done).await {
            tracing::warn!(pushes = done.len(), error = %e, "outbox not cleared: recovery will enqueue them again");
        }
        // Skip records are for operators; losing them loses no push.
        if let Err(e) = self.queue.skipped(&skipped).await {
            tracing::warn!(records = skipped.len(), error = %e, "skip records not written");
        }
        Ok(offered)
    }

    /// The recovery pass over some subjects (a page of the scan): enqueues their outbox entries
    /// older than [`OUTBOX_GRACE_MS`](crate::store::OUTBOX_GRACE_MS) at `now_ms` (wall clock),
    /// then clears them. Returns how
    /// many it enqueued. A push enqueued twice (its first enqueue landed, the clear did not) is
    /// delivered once to the inbox, which refuses a push id it holds.
    pub async fn recover(&self, subjects: &[&SubjectId], now_ms: u64) -> Result<usize, StoreError> {
        let stale = self.store.take_outbox(subjects, now_ms).await?;
        if stale.is_empty() {
            return Ok(0);
        }
        let items: Vec<Enqueue> = stale.into_iter().map(|p| enqueue_of(p, now_ms)).collect();
        self.queue.enqueue(&items).await?;
        let done: Vec<(&SubjectId, &str)> =
            items.iter().map(|it| (&it.job.subject, it.job.message.id.as_str())).collect();
        self.store.clear_outbox(&done).await?;
        tracing::info!(pushes = items.len(), "outbox: pushes whose enqueue was never confirmed enqueued again");
        Ok(items.len())
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
