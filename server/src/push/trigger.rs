//! Triggers: what proposes a push ([`propose`] after a completed step, [`due`] for deadlines,
//! renewals and yearly windows). No IO; the facts of a message, never its words.

use serde::{Deserialize, Serialize};
use tongban_features::catalogue::{Catalogue, Deadline, Stage};
use tongban_features::profile::Profile;
use tongban_features::time::{Date, Timestamp};

use super::policy::Caps;
use crate::templates::{Content, Kind, Why};

/// What produced a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A bundle step was completed: its next steps.
    NextStep,
    /// A sensitive life event: one consolidated message.
    Sensitive,
    /// A legal deadline after a life event (newborn registration within a month...).
    Deadline,
    /// A document expiring (ID card, driving licence, permits).
    Renewal,
    /// A yearly window (annual report, tax settlement).
    YearlyWindow,
    /// An operator's campaign.
    Campaign,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [
        Trigger::NextStep,
        Trigger::Sensitive,
        Trigger::Deadline,
        Trigger::Renewal,
        Trigger::YearlyWindow,
        Trigger::Campaign,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::NextStep => "next_step",
            Trigger::Sensitive => "sensitive",
            Trigger::Deadline => "deadline",
            Trigger::Renewal => "renewal",
            Trigger::YearlyWindow => "yearly_window",
            Trigger::Campaign => "campaign",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A push proposed by a trigger, before policy.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub trigger: Trigger,
    pub kind: Kind,
    pub content: Content,
    /// What it is about, for de-duplication: a bundle or service id (with the campaign id).
    pub key: String,
    /// The window number of the push id. Where the trigger has a natural window (a renewal's
    /// expiry, a year, a bundle instance, a campaign) it de-duplicates: one push per key,
    /// trigger and window. A next step has none: its window is the time proposed, so each push
    /// has its own id, and `sliding_secs` de-duplicates it.
    pub window: i64,
    /// De-duplicated by (subject, key, trigger) over the last this many seconds (next steps:
    /// `dedup_days`), instead of by push id.
    pub sliding_secs: Option<i64>,
    pub critical: bool,
    pub expires_at: i64,
    /// A service counts as done when completed at or after this time.
    pub done_after: i64,
    pub reasons: Vec<&'static str>,
    /// The life stage, for the subject's category switches.
    pub stage: Stage,
}

/// Whether `profile` completed service `s` at or after `after`.
pub fn done_since(profile: &Profile, s: u32, after: i64) -> bool {
    profile.count(s).is_some_and(|c| c.needs > 0 && c.last_need >= after)
}

const DAY: i64 = 86_400;

/// Pushes proposed after the subject completed `done`: for each bundle of `done` the subject
/// has started, a digest of the next steps (pending steps whose dependencies are done); for a
/// sensitive bundle (death, illness, disability), one consolidated message of every remaining
/// step, once per bundle instance.
pub fn propose(cat: &Catalogue, profile: &Profile, done: u32, now: i64, caps: &Caps) -> Vec<Candidate> {
    let mut out = Vec::new();
    let Some(svc) = cat.services().get(done as usize) else { return out };
    for &(b, _) in &svc.in_bundles {
        let Some(pb) = profile.bundles().iter().find(|p| p.bundle == b) else { continue };
        let bundle = &cat.bundles()[b as usize];
        let started = pb.steps.iter().map(|&(_, at)| at).min().unwrap_or(now);
        let pending = |k: usize, st: &tongban_features::catalogue::Step| {
            pb.done(k as u16).is_none()
                && !done_since(profile, st.service, 0)
                && !cat.service(st.service).granted_without_applying
        };
        let steps: Vec<u32> = bundle
            .steps
            .iter()
            .enumerate()
            .filter(|&(k, st)| pending(k, st) && (bundle.sensitive || st.after.iter().all(|&a| pb.done(a).is_some())))
            .map(|(_, st)| st.service)
            .collect();
        if steps.is_empty() {
            continue;
        }
        // The earliest legal deadline among the steps, if any (after the bundle's life event).
        let deadline = steps
            .iter()
            .filter_map(|&s| match cat.service(s).deadline {
                Some(Deadline::AfterEvent { days, .. }) => Some(started + i64::from(days) * DAY),
                _ => None,
            })
            .filter(|&d| d > now)
            .min();
        // A fixed window (`now / dedup_days`) let two triggers a minute apart across its
        // boundary both push: next steps slide instead (see `store::rules::Dedupe`).
        let (trigger, kind, window, sliding_secs) = if bundle.sensitive {
            (Trigger::Sensitive, Kind::Sensitive, started.div_euclid(DAY), None)
        } else {
            (Trigger::NextStep, Kind::NextStep, now, Some(caps.dedup_days.max(1) * DAY))
        };
        out.push(Candidate {
            trigger,
            kind,
            content: Content { bundle: Some(b), done: Some(done), services: steps, deadline, why: None },
            key: bundle.id.clone(),
            window,
            sliding_secs,
            critical: false,
            expires_at: now + caps.ttl_days * DAY,
            done_after: 0,
            reasons: vec!["next_in_bundle"],
            stage: bundle.stage,
        });
    }
    out
}

/// Deadlines and renewals coming due at `now`, from the profile and the catalogue's rules:
/// - a document valid N years, within its renewal window before expiry (from its last
///   completion);
/// - a yearly window (annual report...) in its last 30 days, for subjects who did it in an
///   earlier year and not yet in this one;
/// - a legal deadline after a life event (a step of a started bundle), in the second half of
///   its period (or its last 14 days).
pub fn due(cat: &Catalogue, profile: &Profile, now: i64) -> Vec<Candidate> {
    let mut out = Vec::new();
    let today = Timestamp(now).date_shanghai();
    for c in profile.services() {
        let Some(svc) = cat.services().get(c.service as usize) else { continue };
        if c.needs == 0 {
            continue;
        }
        match &svc.deadline {
            Some(Deadline::BeforeExpiry { days, validity_years, .. }) => {
                let expiry = c.last_need + (f64::from(*validity_years) * 365.25 * DAY as f64) as i64;
                let opens = expiry - i64::from(*days) * DAY;
                if (opens..expiry).contains(&now) {
                    let why = Why::Renewal { last: c.last_need, years: *validity_years, expiry };
                    out.push(due_candidate(
                        cat,
                        c.service,
                        Trigger::Renewal,
                        expiry,
                        opens,
                        expiry.div_euclid(DAY),
                        false,
                        why,
                    ));
                }
            }
            Some(Deadline::YearlyWindow { from, to, .. }) => {
                let (Some(f), Some(t)) = (
                    Date::parse(&format!("{:04}-{from}", today.year)),
                    Date::parse(&format!("{:04}-{to}", today.year)),
                ) else {
                    continue;
                };
                let opens = f.start_shanghai().0;
                let closes = t.start_shanghai().0 + DAY;
                // Silent for most of a long window: a reminder in its last 30 days, if not done.
                let remind = opens.max(closes - 30 * DAY);
                if (remind..closes).contains(&now) && c.last_need < opens {
                    let why = Why::YearlyWindow { from: from.clone(), to: to.clone() };
                    out.push(due_candidate(
                        cat,
                        c.service,
                        Trigger::YearlyWindow,
                        closes,
                        opens,
                        i64::from(today.year),
                        true,
                        why,
                    ));
                }
            }
            _ => {}
        }
    }
    for pb in profile.bundles() {
        let bundle = &cat.bundles()[pb.bundle as usize];
        let started = pb.steps.iter().map(|&(_, at)| at).min().unwrap_or(now);
        for (k, st) in bundle.steps.iter().enumerate() {
            let svc = cat.service(st.service);
            let Some(Deadline::AfterEvent { days, .. }) = svc.deadline else { continue };
            let deadline = started + i64::from(days) * DAY;
            let remind = deadline - (i64::from(days) * DAY / 2).min(14 * DAY);
            if pb.done(k as u16).is_some() || done_since(profile, st.service, started) || svc.granted_without_applying {
                continue;
            }
            if (remind..deadline).contains(&now) {
                let why = Why::Deadline { bundle: pb.bundle, days, date: deadline };
                out.push(due_candidate(
                    cat,
                    st.service,
                    Trigger::Deadline,
                    deadline,
                    started,
                    started.div_euclid(DAY),
                    true,
                    why,
                ));
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn due_candidate(
    cat: &Catalogue,
    s: u32,
    trigger: Trigger,
    deadline: i64,
    done_after: i64,
    window: i64,
    critical: bool,
    why: Why,
) -> Candidate {
    let svc = cat.service(s);
    Candidate {
        trigger,
        kind: Kind::Due,
        content: Content { bundle: None, done: None, services: vec![s], deadline: Some(deadline), why: Some(why) },
        key: svc.id.clone(),
        window,
        sliding_secs: None,
        critical,
        expires_at: deadline,
        done_after,
        reasons: vec!["deadline"],
        stage: svc.category,
    }
}
