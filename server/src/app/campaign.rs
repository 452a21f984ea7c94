//! Operators' campaigns: score one service for every subject in the store, keep the best `n`,
//! offer them the push (policy, caps and consent apply).

use serde::{Deserialize, Serialize};
use tongban_features::domain::SubjectId;
use tongban_features::profile::Profile;
use tongban_model::Model;

use super::pusher::{Offer, Pusher};
use crate::push::{self, Candidate, Preferences, Trigger, Why};
use crate::store::StoreError;

/// `POST /admin/campaigns`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Campaign)]
pub struct CampaignIn {
    /// A campaign id of the operator's choosing: a subject gets at most one push per campaign.
    #[schema(min_length = 1, max_length = 64)]
    pub id: String,
    #[schema(schema_with = crate::openapi::id)]
    pub service: String,
    /// How many subjects, the most likely first.
    #[schema(minimum = 1, maximum = 1000000)]
    pub n: usize,
    #[serde(default)]
    pub dry_run: bool,
    /// The sentence explaining why (default: from the model, in the subject's locale).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a campaign did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CampaignReport {
    pub id: String,
    pub dry_run: bool,
    /// Subjects looked at.
    pub subjects: usize,
    /// Subjects the service fits (audience, not done, consent, personalisation on).
    pub eligible: usize,
    /// The best `n` of them.
    pub selected: usize,
    pub score_min: Option<f32>,
    pub score_max: Option<f32>,
    pub queued: usize,
    #[schema(schema_with = crate::openapi::skips)]
    pub skipped: std::collections::BTreeMap<String, usize>,
}

impl Pusher {
    /// An operator's campaign: scores `service` for every subject in the store (subjects
    /// whose audience does not fit or who did it already score nothing), keeps the `n` best and,
    /// unless `dry_run`, offers them the push (policy, caps and consent apply).
    pub async fn campaign(&self, model: &Model, version: &str, c: &CampaignIn) -> Result<CampaignReport, StoreError> {
        let service = self.catalogue.lookup(&c.service).expect("checked by the caller");
        let now = self.now();
        let mut scratch = model.scratch();
        let mut scored: Vec<(f32, SubjectId, Profile, Preferences)> = Vec::new();
        let mut report = CampaignReport { id: c.id.clone(), dry_run: c.dry_run, ..CampaignReport::default() };
        let mut cursor = 0;
        loop {
            let (next, page) = self.store.page(cursor).await?;
            for (subject, profile, prefs) in page {
                report.subjects += 1;
                let prefs = prefs.unwrap_or_default();
                if !prefs.push || !prefs.personalised {
                    continue;
                }
                let Some(score) = model.score_one(&profile, service, now, &mut scratch) else { continue };
                report.eligible += 1;
                if scored.len() < c.n || score > scored.last().map_or(f32::MIN, |x| x.0) {
                    let at = scored.partition_point(|x| x.0 >= score);
                    scored.insert(at, (score, subject, profile, prefs));
                    scored.truncate(c.n);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        report.selected = scored.len();
        report.score_min = scored.last().map(|x| x.0);
        report.score_max = scored.first().map(|x| x.0);
        if c.dry_run {
            return Ok(report);
        }
        let svc = self.catalogue.service(service);
        let why = Why::Campaign { text: c.reason.clone() };
        let cands: Vec<Candidate> = scored
            .iter()
            .map(|_| {
                let why = Some(why.clone());
                Candidate {
                    trigger: Trigger::Campaign,
                    kind: push::Kind::Campaign,
                    content: push::Content { services: vec![service], why, ..push::Content::default() },
                    key: format!("{}|{}", c.id, svc.id),
                    window: 0,
                    sliding_secs: None,
                    critical: false,
                    expires_at: now + self.caps.ttl_days * 86_400,
                    // A repeatable service done within the last year counts as done.
                    done_after: now - 365 * 86_400,
                    reasons: vec!["campaign", "model_score"],
                    stage: svc.category,
                }
            })
            .collect();
        let offers: Vec<Offer<'_>> = scored
            .iter()
            .zip(&cands)
            .map(|((_, subject, profile, prefs), cand)| Offer {
                subject,
                profile,
                prefs,
                candidates: std::slice::from_ref(cand),
            })
            .collect();
        let o = self.offer_many(&offers, version).await?;
        report.queued = o.queued;
        for (_, s) in o.skipped {
            *report.skipped.entry(s.as_str().to_owned()).or_default() += 1;
        }
        Ok(report)
    }
}
