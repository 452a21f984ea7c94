//! Candidate feature vectors: a fixed, documented, versioned schema and a batch extractor.
//!
//! For a (profile, candidate service, now) triple the extractor writes [`WIDTH`] `f32`s, each
//! in `[0, 1]`, in the order of [`SCHEMA`]. Per-subject work (the recent starts, the open
//! bundles) is done once in [`Extractor::prepare`]; per candidate there is no heap allocation,
//! only binary searches in the item statistics.
//!
//! Without catalogue metadata (public data sets) the domain features (bundles, prerequisites,
//! deadlines) are 0 and the `domain` feature is 0, flagging them absent.

use crate::catalogue::{Catalogue, Deadline, LifeEvent};
use crate::profile::Profile;
use crate::stats::ItemStats;
use crate::time::{Date, Timestamp, DAY};

/// One feature of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureDef {
    pub name: &'static str,
    pub meaning: &'static str,
}

/// Version of the schema; bump on any change of order, meaning or range.
pub const SCHEMA_VERSION: u32 = 1;

/// The schema, in vector order. Every value lies in `[0, 1]`.
pub const SCHEMA: [FeatureDef; 18] = [
    FeatureDef { name: "trans1_last", meaning: "P(candidate | last start), first-order transitions" },
    FeatureDef { name: "trans1_recent", meaning: "max over the 2nd..6th last starts s of P(candidate | s) * 0.8^age" },
    FeatureDef { name: "trans2", meaning: "P(candidate | the last two starts), second-order transitions" },
    FeatureDef { name: "cooc", meaning: "sum over the last 10 starts s of cooc(s, candidate) / pop(s), capped at 1" },
    FeatureDef { name: "pop", meaning: "log(1 + starts of candidate) / log(1 + max starts of any service)" },
    FeatureDef { name: "pop_segment", meaning: "share of the subject's segment's starts that went to the candidate, x10 capped at 1" },
    FeatureDef { name: "pop_recent", meaning: "log(1 + starts in the recent window) / log(1 + max of any service)" },
    FeatureDef { name: "bundle_next", meaning: "1 if the candidate is a pending step of a bundle the subject moved in within 365 days, its earlier steps done" },
    FeatureDef { name: "bundle_progress", meaning: "share of that bundle's steps done" },
    FeatureDef { name: "prereq_done", meaning: "share of the candidate's catalogue prerequisites the subject has done (1 if none)" },
    FeatureDef { name: "delay_fit", meaning: "exp(-|ln((elapsed + 0.5) / (typical + 0.5))|): days since the step's prerequisite against its typical delay" },
    FeatureDef { name: "deadline", meaning: "urgency of a due deadline: renewal window, yearly window, days after a life event" },
    FeatureDef { name: "done_before", meaning: "1 if the subject already started the candidate" },
    FeatureDef { name: "times_done", meaning: "log(1 + starts of the candidate by the subject) / log(17), capped at 1" },
    FeatureDef { name: "recency", meaning: "exp(-days since the subject last started the candidate / 30), 0 if never" },
    FeatureDef { name: "signal", meaning: "views, clicks, opens of the candidate, decayed with a 7-day half-life, capped at 1" },
    FeatureDef { name: "dismissed", meaning: "1 if the subject dismissed the candidate" },
    FeatureDef { name: "domain", meaning: "1 when catalogue metadata is present (the domain features are meaningful)" },
];

/// Width of a feature vector.
pub const WIDTH: usize = SCHEMA.len();

/// A stable hash of the schema (version, names), recorded in model artifacts.
pub fn schema_hash() -> u64 {
    let mut text = format!("v{SCHEMA_VERSION}");
    for f in SCHEMA {
        text.push(':');
        text.push_str(f.name);
    }
    crate::io::fnv1a(text.as_bytes())
}

/// Per-subject context computed once before scoring many candidates.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The last starts, newest first (at most 10): (service, time).
    last: Vec<(u32, i64)>,
}

/// Extracts candidate features against fixed item statistics and an optional catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Extractor<'a> {
    stats: &'a ItemStats,
    catalogue: Option<&'a Catalogue>,
    ln_pop_max: f32,
    ln_recent_max: f32,
}

const BUNDLE_ACTIVE_DAYS: i64 = 365;

impl<'a> Extractor<'a> {
    /// `catalogue` must use the same service indices as the log behind `stats`.
    pub fn new(stats: &'a ItemStats, catalogue: Option<&'a Catalogue>) -> Extractor<'a> {
        Extractor {
            stats,
            catalogue,
            ln_pop_max: (stats.pop_max() as f32).ln_1p().max(f32::MIN_POSITIVE),
            ln_recent_max: (stats.recent_max() as f32).ln_1p().max(f32::MIN_POSITIVE),
        }
    }

    pub fn prepare(&self, profile: &Profile) -> Prepared {
        Prepared { last: profile.starts().rev().take(10).map(|r| (r.service, r.at)).collect() }
    }

    /// Writes `candidates.len() * WIDTH` values into `out`.
    pub fn extract(&self, profile: &Profile, prep: &Prepared, candidates: &[u32], now: i64, out: &mut [f32]) {
        assert_eq!(out.len(), candidates.len() * WIDTH, "output width");
        for (&c, row) in candidates.iter().zip(out.chunks_exact_mut(WIDTH)) {
            self.extract_one(profile, prep, c, now, row);
        }
    }

    fn extract_one(&self, profile: &Profile, prep: &Prepared, c: u32, now: i64, row: &mut [f32]) {
        let st = self.stats;
        let t1 = st.trans1();
        let (trans1_last, trans2) = match prep.last.as_slice() {
            [] => (0.0, 0.0),
            [(last, _)] => (t1.prob(*last, c), 0.0),
            [(last, _), (prev, _), ..] => {
                let r2 = st.trans2_row(*prev, *last);
                let total: u32 = r2.iter().map(|e| e.count).sum();
                let hit = r2.binary_search_by_key(&c, |e| e.to).map_or(0, |i| r2[i].count);
                (t1.prob(*last, c), if total > 0 { hit as f32 / total as f32 } else { 0.0 })
            }
        };
        let mut trans_recent = 0.0f32;
        let mut w = 0.8f32;
        for &(s, _) in prep.last.iter().skip(1).take(5) {
            trans_recent = trans_recent.max(t1.prob(s, c) * w);
            w *= 0.8;
        }
        let mut cooc = 0.0f32;
        for &(s, _) in &prep.last {
            let p = st.pop(s);
            if p > 0 {
                cooc += st.cooc().get(s, c) as f32 / p as f32;
            }
        }
        let mine = profile.count(c);
        let starts = mine.map_or(0, |m| m.starts);
        let recency = match mine {
            Some(m) if m.starts > 0 => (-((now - m.last_start).max(0) as f32) / (30.0 * DAY as f32)).exp(),
            _ => 0.0,
        };
        let signal = {
            let h = 7.0 * DAY as f32;
            let s: f32 = profile
                .recent()
                .iter()
                .filter(|r| r.service == c && !r.kind.is_need() && r.kind != crate::domain::EventKind::Dismissed)
                .map(|r| (-((now - r.at).max(0) as f32) / h).exp2())
                .sum();
            s.min(1.0)
        };
        row[0] = trans1_last;
        row[1] = trans_recent;
        row[2] = trans2;
        row[3] = cooc.min(1.0);
        row[4] = (st.pop(c) as f32).ln_1p() / self.ln_pop_max;
        row[5] = (st.segment_share(profile.segment(), c) * 10.0).min(1.0);
        row[6] = (st.pop_recent(c) as f32).ln_1p() / self.ln_recent_max;
        let (next, progress, prereq, fit, deadline) = match self.catalogue {
            Some(cat) if (c as usize) < cat.services().len() => domain_features(cat, profile, c, now),
            _ => (0.0, 0.0, 0.0, 0.0, 0.0),
        };
        row[7] = next;
        row[8] = progress;
        row[9] = prereq;
        row[10] = fit;
        row[11] = deadline;
        row[12] = f32::from(u8::from(starts > 0));
        row[13] = ((starts as f32).ln_1p() / 17f32.ln()).min(1.0);
        row[14] = recency;
        row[15] = signal;
        row[16] = f32::from(u8::from(mine.is_some_and(|m| m.dismissed > 0)));
        row[17] = f32::from(u8::from(self.catalogue.is_some()));
    }
}

/// (bundle_next, bundle_progress, prereq_done, delay_fit, deadline) of a catalogue service.
fn domain_features(cat: &Catalogue, profile: &Profile, c: u32, now: i64) -> (f32, f32, f32, f32, f32) {
    let svc = cat.service(c);
    let done = |s: u32| profile.count(s).is_some_and(|m| m.needs > 0);
    let (mut next, mut progress, mut fit) = (0.0f32, 0.0f32, 0.0f32);
    for &(b, step) in &svc.in_bundles {
        let Ok(i) = profile.bundles().binary_search_by_key(&b, |p| p.bundle) else { continue };
        let pb = &profile.bundles()[i];
        if pb.done(step).is_some() || now - pb.last_at() > BUNDLE_ACTIVE_DAYS * DAY {
            continue;
        }
        let bundle = &cat.bundles()[b as usize];
        let st = &bundle.steps[step as usize];
        let deps: Option<Vec<i64>> = st.after.iter().map(|&a| pb.done(a)).collect();
        // Allocation only for bundle members of an active bundle, a handful per subject.
        let Some(deps) = deps else { continue };
        let base = deps.into_iter().max().unwrap_or_else(|| pb.steps.iter().map(|s| s.1).min().unwrap_or(now));
        let share = pb.steps.len() as f32 / bundle.steps.len() as f32;
        let typical = f64::from(st.delay_days.0 + st.delay_days.1) / 2.0;
        let elapsed = ((now - base).max(0) as f64) / DAY as f64;
        let f = (-(((elapsed + 0.5) / (typical + 0.5)).ln().abs())).exp() as f32;
        next = 1.0;
        if share > progress {
            progress = share;
        }
        fit = fit.max(f);
    }
    let prereq = if svc.prerequisites.is_empty() {
        1.0
    } else {
        svc.prerequisites.iter().filter(|&&p| done(p)).count() as f32 / svc.prerequisites.len() as f32
    };
    let deadline = match &svc.deadline {
        Some(d) => deadline_urgency(cat, profile, c, d, now),
        None => 0.0,
    };
    (next, progress, prereq, fit, deadline)
}

fn deadline_urgency(cat: &Catalogue, profile: &Profile, c: u32, d: &Deadline, now: i64) -> f32 {
    let last_start = profile.count(c).filter(|m| m.starts > 0).map(|m| m.last_start);
    match d {
        Deadline::BeforeExpiry { days, validity_years, .. } => {
            let Some(last) = last_start else { return 0.0 };
            let expiry = last + (f64::from(*validity_years) * 365.25 * DAY as f64) as i64;
            let left = (expiry - now) as f32 / DAY as f32;
            let window = (*days).max(1) as f32;
            if (0.0..=window).contains(&left) {
                1.0 - 0.5 * left / window
            } else if (-365.0..0.0).contains(&left) {
                1.0
            } else {
                0.0
            }
        }
        Deadline::YearlyWindow { from, to, .. } => {
            let today = Timestamp(now).date_shanghai();
            let at = |md: &str| Date::parse(&format!("{}-{md}", today.year)).map(|d| d.start_shanghai().0);
            let (Some(lo), Some(hi)) = (at(from), at(to)) else { return 0.0 };
            let hi = hi + DAY;
            if now < lo || now >= hi || last_start.is_some_and(|l| l >= lo) {
                return 0.0;
            }
            0.5 + 0.5 * (now - lo) as f32 / (hi - lo).max(1) as f32
        }
        Deadline::AfterEvent { event, days } => {
            if last_start.is_some() {
                return 0.0;
            }
            let started = life_event_start(cat, profile, *event);
            let Some(t) = started else { return 0.0 };
            let elapsed = (now - t) as f32 / DAY as f32;
            let window = (*days).max(1) as f32;
            if (0.0..=window).contains(&elapsed) {
                1.0 - elapsed / window
            } else {
                0.0
            }
        }
    }
}

/// When the subject's latest journey of a bundle started by `event` began, as far as seen.
fn life_event_start(cat: &Catalogue, profile: &Profile, event: LifeEvent) -> Option<i64> {
    profile
        .bundles()
        .iter()
        .filter(|p| cat.bundles()[p.bundle as usize].life_event == event)
        .filter_map(|p| p.steps.iter().map(|s| s.1).min())
        .max()
}
