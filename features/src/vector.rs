//! Candidate feature vectors: a fixed, documented, versioned schema and a batch extractor.
//!
//! For a (profile, candidate service, now) triple the extractor writes [`WIDTH`] `f32`s, each
//! in `[0, 1]`, in the order of [`SCHEMA`]. Per-subject work is done once in
//! [`Extractor::prepare`]: the transition and co-occurrence rows of the subject's recent starts
//! are summed into a dense [`Scratch`], so that each candidate then costs a few lookups and no
//! heap allocation.
//!
//! Without catalogue metadata (public data sets) the domain features (bundles, prerequisites,
//! deadlines) are 0 and the `domain` feature is 0, flagging them absent.

use std::sync::Arc;

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
pub const SCHEMA_VERSION: u32 = 3;

/// The schema, in vector order. Every value lies in `[0, 1]`.
pub const SCHEMA: [FeatureDef; 23] = [
    FeatureDef { name: "trans1_last", meaning: "P(candidate | last start), first-order transitions" },
    FeatureDef { name: "trans1_recent", meaning: "max over the 2nd..6th last starts s of P(candidate | s) * 0.8^age" },
    FeatureDef { name: "trans2", meaning: "P(candidate | the last two starts), second-order transitions" },
    FeatureDef { name: "cooc", meaning: "sum over the last 10 starts s of cooc(s, candidate) / pop(s), capped at 1" },
    FeatureDef { name: "pop", meaning: "log(1 + starts of candidate) / log(1 + max starts of any service)" },
    FeatureDef { name: "pop_segment", meaning: "sqrt of the share of the subject's segment's starts that went to the candidate" },
    FeatureDef { name: "pop_recent", meaning: "log(1 + starts in the recent window) / log(1 + max of any service)" },
    FeatureDef {
        name: "bundle_next",
        meaning: "for a pending step of a bundle the subject moved in within 365 days: the share of its dependencies seen done (1 if none)",
    },
    FeatureDef { name: "bundle_progress", meaning: "share of that bundle's steps done" },
    FeatureDef { name: "prereq_done", meaning: "share of the candidate's catalogue prerequisites the subject has done (1 if none)" },
    FeatureDef {
        name: "delay_fit",
        meaning: "1 while the days since the step's latest dependency are within the learned median + spread delay, then decaying; times bundle_next",
    },
    FeatureDef {
        name: "deadline",
        meaning: "urgency of a due deadline: renewal window, open yearly window (0.5-1) or one opening within 90 days (<0.3), days after a life event",
    },
    FeatureDef { name: "done_before", meaning: "1 if the subject already started the candidate" },
    FeatureDef { name: "times_done", meaning: "log(1 + starts of the candidate by the subject) / log(17), capped at 1" },
    FeatureDef { name: "recency", meaning: "exp(-days since the subject last started the candidate / 30), 0 if never" },
    FeatureDef { name: "signal", meaning: "views, clicks, opens of the candidate, decayed with a 7-day half-life, capped at 1" },
    FeatureDef { name: "dismissed", meaning: "1 if the subject dismissed the candidate" },
    FeatureDef { name: "domain", meaning: "1 when catalogue metadata is present (the domain features are meaningful)" },
    FeatureDef {
        name: "pop_season",
        meaning: "sqrt of the share of the segment's starts that went to the candidate in the same season a year earlier",
    },
    FeatureDef {
        name: "own_rate",
        meaning: "1 - exp(-r * 90 days) for the subject's own yearly rate r = starts / (years since its first event + 1)",
    },
    FeatureDef {
        name: "renewal_soon",
        meaning: "share of the next renewal's likely span [last + validity - window, last + validity + window] within the next 90 days, given it is not yet past (renewals done unseen weigh 0.15)",
    },
    FeatureDef {
        name: "window_soon",
        meaning: "share of the yearly window (this year's, or next year's once over) within the next 90 days, 0 once started in it",
    },
    FeatureDef { name: "window_season", meaning: "window_soon * pop_season" },
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

/// Reusable per-caller buffers: dense per-service sums of the subject's transition and
/// co-occurrence rows, reset lazily through the list of touched services.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    /// Per service: [trans1_last, trans1_recent, trans2, cooc].
    acc: Vec<[f32; 4]>,
    touched: Vec<u32>,
    /// Per service: its index + 1 in the profile's service counts, 0 when absent.
    mine: Vec<u16>,
    /// Per service: [bundle_next, bundle_progress, delay_fit] of a pending bundle step.
    bundle: Vec<[f32; 3]>,
    /// Services whose `mine` or `bundle` entries are set.
    marked: Vec<u32>,
}

impl Scratch {
    pub fn new(services: usize) -> Scratch {
        Scratch {
            acc: vec![[0.0; 4]; services],
            touched: Vec::new(),
            mine: vec![0; services],
            bundle: vec![[0.0; 3]; services],
            marked: Vec::new(),
        }
    }

    /// Services reached by the subject's transition and co-occurrence rows since the last
    /// [`Extractor::prepare`]: natural candidates.
    pub fn touched(&self) -> &[u32] {
        &self.touched
    }

    /// The summed [trans1_last, trans1_recent, trans2, cooc] of a service.
    pub fn acc(&self, s: u32) -> [f32; 4] {
        self.acc.get(s as usize).copied().unwrap_or_default()
    }

    fn add(&mut self, to: u32, slot: usize, v: f32, max: bool) {
        let Some(a) = self.acc.get_mut(to as usize) else { return };
        if *a == [0.0; 4] {
            self.touched.push(to);
        }
        if max {
            a[slot] = a[slot].max(v);
        } else {
            a[slot] += v;
        }
    }

    fn mark_bundle(&mut self, s: u32, next: f32, progress: f32, fit: f32) {
        let Some(b) = self.bundle.get_mut(s as usize) else { return };
        if *b == [0.0; 3] && self.mine[s as usize] == 0 {
            self.marked.push(s);
        }
        b[0] = b[0].max(next);
        b[1] = b[1].max(progress);
        b[2] = b[2].max(fit);
    }

    fn reset(&mut self, services: usize) {
        if self.acc.len() != services {
            *self = Scratch::new(services);
            return;
        }
        for &t in &self.touched {
            self.acc[t as usize] = [0.0; 4];
        }
        for &t in &self.marked {
            self.mine[t as usize] = 0;
            self.bundle[t as usize] = [0.0; 3];
        }
        self.touched.clear();
        self.marked.clear();
    }
}

/// Per-subject context computed once before scoring many candidates.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Signals (views, clicks, opens) per service, decayed, at most a few.
    signals: Vec<(u32, f32)>,
    now: i64,
    /// Shanghai date of `now`, for yearly windows.
    today: Option<Date>,
}

/// A deadline rule in a form cheap to evaluate per candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Expiry { window_days: f32, validity: i64 },
    Yearly { from: (u8, u8), to: (u8, u8) },
    After { event: LifeEvent, days: f32 },
}

/// Extracts candidate features against fixed item statistics and an optional catalogue.
#[derive(Debug, Clone)]
pub struct Extractor {
    stats: Arc<ItemStats>,
    catalogue: Option<Arc<Catalogue>>,
    /// Per service: normalised log popularity, overall and recent.
    pop: Vec<[f32; 2]>,
    /// Per segment and service (`segment * services + service`): the square roots of the
    /// segment share and of the season share, computed once.
    shares: Vec<[f32; 2]>,
    rules: Vec<Option<Rule>>,
}

const BUNDLE_ACTIVE_DAYS: i64 = 365;
/// A yearly window opening within this many days counts as a (weak) deadline.
const SOON_DAYS: i64 = 90;
/// Starts of the subject whose rows are summed: the last one, five before it, ten for cooc.
const LAST_COOC: usize = 6;

fn month_day(s: &str) -> Option<(u8, u8)> {
    Date::parse(&format!("2024-{s}")).map(|d| (d.month, d.day))
}

impl Extractor {
    /// `catalogue` must use the same service indices as the log behind `stats`.
    pub fn new(stats: Arc<ItemStats>, catalogue: Option<Arc<Catalogue>>) -> Extractor {
        let lp = (stats.pop_max() as f32).ln_1p().max(f32::MIN_POSITIVE);
        let lr = (stats.recent_max() as f32).ln_1p().max(f32::MIN_POSITIVE);
        let pop = (0..stats.services() as u32)
            .map(|s| [(stats.pop(s) as f32).ln_1p() / lp, (stats.pop_recent(s) as f32).ln_1p() / lr])
            .collect();
        let rules = (0..stats.services())
            .map(|s| {
                let svc = catalogue.as_ref().and_then(|c| c.services().get(s))?;
                Some(match svc.deadline.as_ref()? {
                    Deadline::BeforeExpiry { days, validity_years, .. } => Rule::Expiry {
                        window_days: (*days).max(1) as f32,
                        validity: (f64::from(*validity_years) * 365.25 * DAY as f64) as i64,
                    },
                    Deadline::YearlyWindow { from, to, .. } => {
                        Rule::Yearly { from: month_day(from)?, to: month_day(to)? }
                    }
                    Deadline::AfterEvent { event, days } => Rule::After { event: *event, days: (*days).max(1) as f32 },
                })
            })
            .collect();
        let shares = (0..stats.segments() as u16)
            .flat_map(|g| (0..stats.services() as u32).map(move |s| (g, s)))
            .map(|(g, s)| [stats.segment_share(g, s).sqrt(), stats.season_share(g, s).sqrt()])
            .collect();
        Extractor { stats, catalogue, pop, shares, rules }
    }

    pub fn stats(&self) -> &ItemStats {
        &self.stats
    }

    pub fn catalogue(&self) -> Option<&Catalogue> {
        self.catalogue.as_deref()
    }

    /// Sums the subject's transition and co-occurrence rows into `scratch` (cost: the rows'
    /// lengths, whatever the number of candidates) and gathers its signals.
    pub fn prepare(&self, profile: &Profile, now: i64, scratch: &mut Scratch) -> Prepared {
        let st = &*self.stats;
        scratch.reset(st.services());
        self.sum_rows(profile, scratch);
        self.prepare_marks(profile, now, scratch)
    }

    /// [`Extractor::prepare`] with the row sums given: `sums` are `(service, acc)` pairs an
    /// earlier `prepare` of the same history left in [`Scratch::acc`] (a caller's cache of the
    /// part of the preparation that depends on the history alone). Only the given services
    /// get sums; [`Scratch::touched`] lists them.
    pub fn prepare_with_sums(
        &self,
        profile: &Profile,
        now: i64,
        scratch: &mut Scratch,
        sums: impl Iterator<Item = (u32, [f32; 4])>,
    ) -> Prepared {
        scratch.reset(self.stats.services());
        for (s, a) in sums {
            if let Some(slot) = scratch.acc.get_mut(s as usize) {
                if *slot == [0.0; 4] && a != [0.0; 4] {
                    scratch.touched.push(s);
                }
                *slot = a;
            }
        }
        self.prepare_marks(profile, now, scratch)
    }

    /// The transition and co-occurrence rows of the subject's last starts, summed into
    /// `scratch.acc`.
    fn sum_rows(&self, profile: &Profile, scratch: &mut Scratch) {
        let st = &*self.stats;
        // The last distinct services started, newest first (a repeated monthly declaration
        // counts once).
        let mut last: Vec<u32> = Vec::with_capacity(LAST_COOC);
        for r in profile.starts().rev() {
            if last.len() == LAST_COOC {
                break;
            }
            if !last.contains(&r.service) {
                last.push(r.service);
            }
        }
        let t1 = st.trans1();
        if let Some(&l) = last.first() {
            let t = t1.total(l);
            for e in t1.row(l) {
                scratch.add(e.to, 0, e.count as f32 / t as f32, false);
            }
        }
        let mut w = 0.8f32;
        for &s in last.iter().skip(1).take(5) {
            let t = t1.total(s);
            for e in t1.row(s) {
                scratch.add(e.to, 1, e.count as f32 / t as f32 * w, true);
            }
            w *= 0.8;
        }
        if let [l, p, ..] = last[..] {
            let row = st.trans2_row(p, l);
            let total: u32 = row.iter().map(|e| e.count).sum();
            for e in row {
                scratch.add(e.to, 2, e.count as f32 / total as f32, false);
            }
        }
        for &s in &last {
            let p = st.pop(s);
            if p == 0 {
                continue;
            }
            for e in st.cooc().row(s) {
                scratch.add(e.to, 3, e.count as f32 / p as f32, false);
            }
        }
    }

    /// The per-request part of the preparation: the subject's own services, its pending
    /// bundle steps, its signals.
    fn prepare_marks(&self, profile: &Profile, now: i64, scratch: &mut Scratch) -> Prepared {
        let st = &*self.stats;
        for (i, c) in profile.services().iter().enumerate() {
            if let Some(m) = scratch.mine.get_mut(c.service as usize) {
                *m = i as u16 + 1;
                scratch.marked.push(c.service);
            }
        }
        if let Some(cat) = self.catalogue.as_deref() {
            pending_steps(cat, st, profile, now, |svc, next, progress, fit| {
                scratch.mark_bundle(svc, next, progress, fit)
            });
        }
        let mut signals: Vec<(u32, f32)> = Vec::new();
        let h = 7.0 * DAY as f32;
        for r in profile.recent() {
            if r.kind.is_need() || r.kind == crate::domain::EventKind::Dismissed {
                continue;
            }
            let v = (-((now - r.at).max(0) as f32) / h).exp2();
            match signals.iter_mut().find(|x| x.0 == r.service) {
                Some(x) => x.1 += v,
                None => signals.push((r.service, v)),
            }
        }
        Prepared { signals, now, today: self.catalogue.as_ref().map(|_| Timestamp(now).date_shanghai()) }
    }

    /// Writes `candidates.len() * WIDTH` values into `out`.
    pub fn extract(&self, profile: &Profile, prep: &Prepared, scratch: &Scratch, candidates: &[u32], out: &mut [f32]) {
        assert_eq!(out.len(), candidates.len() * WIDTH, "output width");
        for (&c, row) in candidates.iter().zip(out.chunks_exact_mut(WIDTH)) {
            self.extract_one(profile, prep, scratch, c, row);
        }
    }

    fn extract_one(&self, profile: &Profile, prep: &Prepared, scratch: &Scratch, c: u32, row: &mut [f32]) {
        let now = prep.now;
        let acc = scratch.acc.get(c as usize).copied().unwrap_or_default();
        let pop = self.pop.get(c as usize).copied().unwrap_or_default();
        let n = self.stats.services();
        let seg = (profile.segment() as usize).min(self.stats.segments().max(1) - 1);
        let [seg_share, season_share] = if (c as usize) < n {
            self.shares.get(seg * n + c as usize).copied().unwrap_or_default()
        } else {
            [0.0; 2]
        };
        let mine = match scratch.mine.get(c as usize) {
            Some(&i) if i > 0 => profile.services().get(i as usize - 1),
            _ => None,
        };
        let starts = mine.map_or(0, |m| m.starts);
        let recency = match mine {
            Some(m) if m.starts > 0 => (-((now - m.last_start).max(0) as f32) / (30.0 * DAY as f32)).exp(),
            _ => 0.0,
        };
        let signal = prep.signals.iter().find(|x| x.0 == c).map_or(0.0, |x| x.1.min(1.0));
        row[0] = acc[0];
        row[1] = acc[1];
        row[2] = acc[2];
        row[3] = acc[3].min(1.0);
        row[4] = pop[0];
        row[5] = seg_share;
        row[6] = pop[1];
        let (next, progress, prereq, fit, deadline) = match self.catalogue.as_deref() {
            Some(cat) if (c as usize) < cat.services().len() => {
                let [n, p, f] = scratch.bundle.get(c as usize).copied().unwrap_or_default();
                let svc = cat.service(c);
                let q = if svc.prerequisites.is_empty() {
                    1.0
                } else {
                    let done = |p: u32| {
                        scratch.mine.get(p as usize).is_some_and(|&i| {
                            i > 0 && profile.services().get(i as usize - 1).is_some_and(|m| m.needs > 0)
                        })
                    };
                    svc.prerequisites.iter().filter(|&&p| done(p)).count() as f32 / svc.prerequisites.len() as f32
                };
                let d = match (self.rules[c as usize], prep.today) {
                    (Some(rule), Some(today)) => urgency(cat, profile, c, rule, now, today),
                    _ => 0.0,
                };
                (n, p, q, f, d)
            }
            _ => (0.0, 0.0, 0.0, 0.0, 0.0),
        };
        row[7] = next;
        row[8] = progress;
        row[9] = prereq;
        row[10] = fit;
        row[11] = deadline;
        row[12] = f32::from(u8::from(starts > 0));
        row[13] = if starts == 0 { 0.0 } else { ((starts as f32).ln_1p() / 17f32.ln()).min(1.0) };
        row[14] = recency;
        row[15] = signal;
        row[16] = f32::from(u8::from(mine.is_some_and(|m| m.dismissed > 0)));
        row[17] = f32::from(u8::from(self.catalogue.is_some()));
        row[18] = season_share;
        row[19] = if starts == 0 {
            0.0 // 1 - exp(0), without the exponential: most candidates were never started
        } else {
            let years = profile.first_at().map_or(0.0, |f| ((now - f).max(0) as f32) / (365.25 * DAY as f32));
            1.0 - (-(starts as f32) / (years + 1.0) * (SOON_DAYS as f32 / 365.25)).exp()
        };
        let (renewal, window) = match (self.rules.get(c as usize).copied().flatten(), prep.today) {
            (Some(Rule::Expiry { window_days, validity }), _) => (renewal_soon(mine, now, window_days, validity), 0.0),
            (Some(Rule::Yearly { from, to }), Some(today)) => (0.0, window_soon(mine, from, to, now, today)),
            _ => (0.0, 0.0),
        };
        row[20] = renewal;
        row[21] = window;
        row[22] = window * row[18];
    }
}

/// Calls `f(service, bundle_next, bundle_progress, delay_fit)` for each pending step of the
/// bundles the subject moved in within a year.
///
/// Steps done offline never appear in the log, so a step counts as next in proportion to the
/// share of its dependencies seen done. Its timing uses the delay learned from the log between
/// the latest dependency seen and the step (median and spread), or the catalogue's range when
/// the log never saw that pair: `delay_fit` is 1 until the median plus the spread has passed,
/// then decays (a step long overdue was most likely done offline).
fn pending_steps(
    cat: &Catalogue,
    stats: &ItemStats,
    profile: &Profile,
    now: i64,
    mut f: impl FnMut(u32, f32, f32, f32),
) {
    for pb in profile.bundles() {
        if now - pb.last_at() > BUNDLE_ACTIVE_DAYS * DAY {
            continue;
        }
        let bundle = &cat.bundles()[pb.bundle as usize];
        let progress = pb.steps.len() as f32 / bundle.steps.len() as f32;
        let first = pb.steps.iter().map(|s| s.1).min().unwrap_or(now);
        for (k, st) in bundle.steps.iter().enumerate() {
            if pb.done(k as u16).is_some() {
                continue;
            }
            // The latest dependency seen done, and the share of dependencies seen.
            let mut base: Option<(i64, u16)> = None;
            let mut seen = 0usize;
            for &a in &st.after {
                if let Some(t) = pb.done(a) {
                    seen += 1;
                    if base.is_none_or(|(bt, _)| t > bt) {
                        base = Some((t, a));
                    }
                }
            }
            let ready = if st.after.is_empty() { 1.0 } else { seen as f32 / st.after.len() as f32 };
            let (base_at, dep) = match base {
                Some((t, a)) => (t, Some(bundle.steps[a as usize].service)),
                None => (first, None),
            };
            let (median, spread) = dep.and_then(|d| stats.delay(d, st.service)).unwrap_or_else(|| {
                let (lo, hi) = st.delay_days;
                (f64::from(lo + hi) / 2.0, f64::from(hi - lo) / 2.0)
            });
            let elapsed = ((now - base_at).max(0) as f64) / DAY as f64;
            let due = median + spread;
            let fit = if elapsed <= due { 1.0 } else { (-(elapsed - due) / (due + 7.0)).exp() as f32 };
            f(st.service, ready, progress, fit * ready);
        }
    }
}

/// Length of the overlap of `[a0, a1)` and `[b0, b1)`.
fn overlap(a0: i64, a1: i64, b0: i64, b1: i64) -> i64 {
    (a1.min(b1) - a0.max(b0)).max(0)
}

/// See `renewal_soon` in [`SCHEMA`]: the next renewal is spread over
/// `[last + validity - window, last + validity + window]`.
fn renewal_soon(mine: Option<&crate::profile::ServiceCount>, now: i64, window_days: f32, validity: i64) -> f32 {
    let Some(last) = mine.filter(|m| m.starts > 0).map(|m| m.last_start) else { return 0.0 };
    let w = (window_days * DAY as f32) as i64;
    let (lo, hi) = (last + validity - w, last + validity + w);
    let span = (hi - lo).max(1) as f32;
    let soon = overlap(lo, hi, now, now + SOON_DAYS * DAY) as f32 / span;
    let after = overlap(lo, hi, now, i64::MAX) as f32 / span;
    if soon == 0.0 {
        return 0.0;
    }
    (soon / (after + 0.15 * (1.0 - after))).min(1.0)
}

/// This year's window while it is not over, else next year's, as timestamps.
fn yearly_window(from: (u8, u8), to: (u8, u8), now: i64, today: Date) -> Option<(i64, i64)> {
    let window = |y: i32| {
        let lo = Date::new(y, from.0, from.1)?.start_shanghai().0;
        let hi = Date::new(y, to.0, to.1)?.start_shanghai().0 + DAY;
        Some((lo, hi))
    };
    window(today.year).filter(|w| now < w.1).or_else(|| window(today.year + 1))
}

/// See `window_soon` in [`SCHEMA`].
fn window_soon(
    mine: Option<&crate::profile::ServiceCount>,
    from: (u8, u8),
    to: (u8, u8),
    now: i64,
    today: Date,
) -> f32 {
    let Some((lo, hi)) = yearly_window(from, to, now, today) else { return 0.0 };
    if mine.is_some_and(|m| m.starts > 0 && m.last_start >= lo) {
        return 0.0;
    }
    overlap(lo, hi, now, now + SOON_DAYS * DAY) as f32 / (hi - lo).max(1) as f32
}

fn urgency(cat: &Catalogue, profile: &Profile, c: u32, rule: Rule, now: i64, today: Date) -> f32 {
    let last_start = profile.count(c).filter(|m| m.starts > 0).map(|m| m.last_start);
    match rule {
        Rule::Expiry { window_days, validity } => {
            let Some(last) = last_start else { return 0.0 };
            let left = (last + validity - now) as f32 / DAY as f32;
            if (0.0..=window_days).contains(&left) {
                1.0 - 0.5 * left / window_days
            } else if (-365.0..0.0).contains(&left) {
                1.0
            } else {
                0.0
            }
        }
        Rule::Yearly { from, to } => {
            // This year's window while it is not over, else next year's (in December, a window
            // opening on 1 January is "soon").
            let Some((lo, hi)) = yearly_window(from, to, now, today) else { return 0.0 };
            if now < lo && lo - now <= SOON_DAYS * DAY {
                // The window opens soon.
                return 0.3 * (1.0 - (lo - now) as f32 / (SOON_DAYS * DAY) as f32);
            }
            if now < lo || now >= hi || last_start.is_some_and(|l| l >= lo) {
                return 0.0;
            }
            0.5 + 0.5 * (now - lo) as f32 / (hi - lo).max(1) as f32
        }
        Rule::After { event, days } => {
            if last_start.is_some() {
                return 0.0;
            }
            let Some(t) = life_event_start(cat, profile, event) else { return 0.0 };
            let elapsed = (now - t) as f32 / DAY as f32;
            if (0.0..=days).contains(&elapsed) {
                1.0 - elapsed / days
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
