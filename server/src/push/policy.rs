//! The policy: caps, why a push is skipped, and the check before enqueue.

use serde::{Deserialize, Serialize};
use tongban_features::profile::Profile;

use super::prefs::Preferences;
use super::trigger::{done_since, Candidate};

/// The default of [`Caps::min_confidence`]: below the uniform chance of a 400-service
/// catalogue (0.25%). A bundle's next step is a plausible next service only among several (the
/// model spreads the probability of "the next start" over all of them): a brand-new company's
/// steps after its registration score 0.5-0.8% with the demo's model, and 1% left them out.
pub const MIN_CONFIDENCE: f32 = 0.0025;

/// Caps per subject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    pub per_day: usize,
    pub per_week: usize,
    /// The critical lane (legal deadlines) bypasses the caps above, within its own weekly cap;
    /// it never bypasses consent.
    pub critical_per_week: usize,
    /// Next-step messages of one bundle within this many days are duplicates.
    pub dedup_days: i64,
    /// Messages without a deadline expire after this many days.
    pub ttl_days: i64,
    /// Next steps whose model confidence (the ranker's probability, a relative figure: it was
    /// trained against sampled negatives) is below this are left out of a digest.
    pub min_confidence: f32,
}

impl Caps {
    /// Checks ranges; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.per_day == 0 || self.per_week < self.per_day {
            return Err(format!(
                "caps: per_day must be at least 1 and per_week at least per_day (got {} and {})",
                self.per_day, self.per_week
            ));
        }
        if self.dedup_days < 1 || self.ttl_days < 1 {
            return Err("caps: dedup_days and ttl_days must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(format!("caps: min_confidence must be 0 to 1, got {}", self.min_confidence));
        }
        Ok(())
    }
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_day: 3,
            per_week: 10,
            critical_per_week: 3,
            dedup_days: 7,
            ttl_days: 30,
            min_confidence: MIN_CONFIDENCE,
        }
    }
}

/// Why a push was not stored or not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    PushOff,
    CategoryOff,
    AlreadyDone,
    Duplicate,
    DailyCap,
    WeeklyCap,
    CriticalCap,
    /// At delivery: past its deadline or time to live.
    Expired,
    /// At delivery: the subject did it meanwhile.
    DoneMeanwhile,
    /// At delivery: the subject's data was erased.
    Erased,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::PushOff => "push_off",
            Skip::CategoryOff => "category_off",
            Skip::AlreadyDone => "already_done",
            Skip::Duplicate => "duplicate",
            Skip::DailyCap => "daily_cap",
            Skip::WeeklyCap => "weekly_cap",
            Skip::CriticalCap => "critical_cap",
            Skip::Expired => "expired",
            Skip::DoneMeanwhile => "done_meanwhile",
            Skip::Erased => "erased",
        }
    }

    pub const ALL: [Skip; 10] = [
        Skip::PushOff,
        Skip::CategoryOff,
        Skip::AlreadyDone,
        Skip::Duplicate,
        Skip::DailyCap,
        Skip::WeeklyCap,
        Skip::CriticalCap,
        Skip::Expired,
        Skip::DoneMeanwhile,
        Skip::Erased,
    ];

    pub fn parse(s: &str) -> Option<Skip> {
        Skip::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The policy before enqueue, on what the subject's data says: consent, categories, already
/// done. De-duplication and caps are checked atomically by the store when the push is
/// reserved ([`crate::store::Backend::reserve_many`]).
pub fn decide(prefs: &Preferences, profile: &Profile, c: &Candidate) -> Result<(), Skip> {
    if !prefs.push {
        return Err(Skip::PushOff);
    }
    if prefs.categories_off.contains(&c.stage) {
        return Err(Skip::CategoryOff);
    }
    if c.content.services.iter().all(|&s| done_since(profile, s, c.done_after)) {
        return Err(Skip::AlreadyDone);
    }
    Ok(())
}
