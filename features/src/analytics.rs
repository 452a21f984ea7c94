//! Operators' analytics: 好差评 ratings per service and department, approval times against the
//! legal time limit (split into the timed part and the untimed part the law does not count), and
//! life-event journeys (how many subjects reach each step, the waits between steps, the stalls).
//!
//! One accumulator, fed one event at a time and bounded by the catalogue, not by the log:
//! aggregates are fixed-size histograms; the only per-subject state is the open applications and
//! each subject's progress through the bundles it entered. `tongban report` folds a log through
//! it; the server feeds it on ingest. Both render the same [`Reports`].
//!
//! Rules, written once here:
//! - An application is an `applied` event not of the `system` channel; it ends with the next
//!   `completed` or `rejected` of the same subject and service. `suspended` .. `resumed` spans in
//!   between are untimed (特别程序, 行政许可法 art. 45); the rest is timed. Times are working days
//!   (Monday-Friday, Asia/Shanghai; statutory holidays are not known, see
//!   [`Timestamp::working_days_until`]). The timed part is over the limit when it exceeds
//!   `time_limit_days`; a limit of 0 (即办, done on the spot) is over after one working day.
//! - A journey of a bundle begins when a subject does a step without prerequisites (`after` is
//!   empty); a later step counts when the subject does it after all its `after` steps (a need
//!   event: applied, completed or rejected, as in the profile). The wait of a step is the calendar
//!   days from the latest of its `after` steps. A subject *waits* at a step when its `after`
//!   steps are done and it is not; it is *stalled* when it has waited longer than the step's
//!   stall threshold: twice its median wait, and at least its 90th percentile.
//! - A bad rating is 1 or 2 of 5.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::catalogue::Catalogue;
use crate::domain::{Channel, EventKind};
use crate::log::{Interner, LogEvent};
use crate::time::{Timestamp, DAY};

/// Width of a histogram bin in days, and the number of bins before the overflow bin.
const BIN_DAYS: f64 = 0.1;
const BINS: usize = 4_000;
/// Fewer samples than this give no quantiles and no stall threshold.
const MIN_SAMPLES: u64 = 5;
/// Months of trend kept per service in a report.
const TREND_MONTHS: usize = 12;

/// Non-negative day counts in bins of a tenth of a day up to 400 days (one overflow bin):
/// quantiles in bounded memory, allocated on the first sample.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DayHist {
    bins: Vec<u32>,
    n: u64,
    sum: f64,
}

impl DayHist {
    pub fn add(&mut self, days: f64) {
        if self.bins.is_empty() {
            self.bins = vec![0; BINS + 1];
        }
        let d = if days.is_finite() { days.max(0.0) } else { 0.0 };
        self.bins[((d / BIN_DAYS) as usize).min(BINS)] += 1;
        self.n += 1;
        self.sum += d;
    }
    pub fn count(&self) -> u64 {
        self.n
    }
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
    /// The `q` quantile (nearest rank) as the lower edge of its bin; None below `MIN_SAMPLES`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n < MIN_SAMPLES {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(round1(i as f64 * BIN_DAYS));
            }
        }
        None
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Tally {
    n: u64,
    sum: u64,
    bad: u64,
}

impl Tally {
    fn add(&mut self, rating: u8) {
        self.n += 1;
        self.sum += u64::from(rating);
        self.bad += u64::from(rating <= 2);
    }
    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            round3(self.sum as f64 / self.n as f64)
        }
    }
    fn bad_share(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            round3(self.bad as f64 / self.n as f64)
        }
    }
    fn merge(&mut self, o: &Tally) {
        self.n += o.n;
        self.sum += o.sum;
        self.bad += o.bad;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ServiceAcc {
    ratings: Tally,
    /// yyyymm -> ratings of that month (Asia/Shanghai).
    months: BTreeMap<u32, Tally>,
    /// Ratings given through a push (channel `push`), dismissals and opens of pushes.
    push_ratings: Tally,
    push_dismissed: u64,
    push_opened: u64,
    applications: u64,
    rejected: u64,
    timed: DayHist,
    with_untimed: u64,
    untimed: DayHist,
    over: u64,
    excess_days: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Open {
    applied: i64,
    suspended_at: Option<i64>,
    untimed: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StepAcc {
    reached: u64,
    waits: DayHist,
}

/// The accumulator. Subjects are dense indices: a log's own, or interned by [`apply_named`].
///
/// [`apply_named`]: Analytics::apply_named
#[derive(Debug, Clone)]
pub struct Analytics {
    /// The catalogue's fingerprint: a snapshot is only read back with the same catalogue.
    catalogue: String,
    limits: Vec<u32>,
    services: Vec<ServiceAcc>,
    steps: Vec<Vec<StepAcc>>,
    open: HashMap<(u32, u32), Open>,
    /// (subject, bundle) -> the time each step was done, `i64::MIN` when not (yet).
    journeys: HashMap<(u32, u32), Box<[i64]>>,
    subjects: Interner,
    events: u64,
    first_at: Option<i64>,
    last_at: Option<i64>,
}

impl Analytics {
    pub fn new(cat: &Catalogue) -> Analytics {
        Analytics {
            catalogue: cat.fingerprint().to_owned(),
            limits: cat.services().iter().map(|s| s.time_limit_days).collect(),
            services: vec![ServiceAcc::default(); cat.services().len()],
            steps: cat.bundles().iter().map(|b| vec![StepAcc::default(); b.steps.len()]).collect(),
            open: HashMap::new(),
            journeys: HashMap::new(),
            subjects: Interner::default(),
            events: 0,
            first_at: None,
            last_at: None,
        }
    }

    /// The accumulator as bytes (postcard), to survive a restart.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            catalogue: self.catalogue.clone(),
            services: self.services.clone(),
            steps: self.steps.clone(),
            open: self.open.iter().map(|(k, v)| (*k, *v)).collect(),
            journeys: self.journeys.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
            subjects: (0..self.subjects.len() as u32).map(|i| self.subjects.name(i).to_owned()).collect(),
            events: self.events,
            first_at: self.first_at,
            last_at: self.last_at,
        };
        postcard::to_allocvec(&snap).expect("plain data serialises")
    }

    /// Reads [`to_snapshot`]'s bytes back; refuses another version or another catalogue.
    ///
    /// [`to_snapshot`]: Analytics::to_snapshot
    pub fn from_snapshot(bytes: &[u8], cat: &Catalogue) -> Result<Analytics, String> {
        let snap: Snapshot = postcard::from_bytes(bytes).map_err(|e| format!("unreadable analytics snapshot: {e}"))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(format!("analytics snapshot version {}, expected {SNAPSHOT_VERSION}", snap.version));
        }
        if snap.catalogue != cat.fingerprint() || snap.services.len() != cat.services().len() {
            return Err("the analytics snapshot was made with another catalogue".into());
        }
        let mut a = Analytics::new(cat);
        a.services = snap.services;
        a.steps = snap.steps;
        a.open = snap.open.into_iter().collect();
        a.journeys = snap.journeys.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect();
        for name in &snap.subjects {
            a.subjects.intern(name);
        }
        (a.events, a.first_at, a.last_at) = (snap.events, snap.first_at, snap.last_at);
        Ok(a)
    }

    /// Events seen, and the time of the newest.
    pub fn events(&self) -> u64 {
        self.events
    }
    pub fn last_at(&self) -> Option<Timestamp> {
        self.last_at.map(Timestamp)
    }

    /// One event of a subject named by its id (the server's path); services are catalogue
    /// indices. Events of one subject should arrive in time order (a late one is still counted
    /// in ratings; a completion before its application is not an approval).
    pub fn apply_named(&mut self, subject: &str, ev: &LogEvent, cat: &Catalogue) {
        let s = self.subjects.intern(subject);
        self.apply(&LogEvent { subject: s, ..*ev }, cat);
    }

    /// Forgets a subject's own state (open applications, journey progress) after an erasure;
    /// the aggregates it contributed to are counts without personal data and stay.
    pub fn forget(&mut self, subject: &str) {
        if let Some(s) = self.subjects.get(subject) {
            self.open.retain(|k, _| k.0 != s);
            self.journeys.retain(|k, _| k.0 != s);
        }
    }

    /// One event of a log (the log's subject index).
    pub fn apply(&mut self, ev: &LogEvent, cat: &Catalogue) {
        let Some(acc) = self.services.get_mut(ev.service as usize) else { return };
        let at = ev.at.0;
        self.events += 1;
        self.first_at = Some(self.first_at.map_or(at, |f| f.min(at)));
        self.last_at = Some(self.last_at.map_or(at, |l| l.max(at)));
        let key = (ev.subject, ev.service);
        match ev.kind {
            EventKind::Rated => {
                acc.ratings.add(ev.rating);
                let d = ev.at.date_shanghai();
                acc.months.entry(d.year as u32 * 100 + u32::from(d.month)).or_default().add(ev.rating);
                if ev.channel == Channel::Push {
                    acc.push_ratings.add(ev.rating);
                }
            }
            EventKind::Dismissed if ev.channel == Channel::Push => acc.push_dismissed += 1,
            EventKind::PushOpened => acc.push_opened += 1,
            EventKind::Applied if ev.channel != Channel::System => {
                self.open.insert(key, Open { applied: at, suspended_at: None, untimed: 0.0 });
            }
            EventKind::Suspended => {
                if let Some(o) = self.open.get_mut(&key) {
                    o.suspended_at.get_or_insert(at);
                }
            }
            EventKind::Resumed => {
                if let Some(o) = self.open.get_mut(&key) {
                    if let Some(s) = o.suspended_at.take() {
                        o.untimed += Timestamp(s).working_days_until(ev.at).max(0.0);
                    }
                }
            }
            EventKind::Completed | EventKind::Rejected if ev.channel != Channel::System => {
                if let Some(mut o) = self.open.remove(&key).filter(|o| o.applied <= at) {
                    if let Some(s) = o.suspended_at.take() {
                        o.untimed += Timestamp(s).working_days_until(ev.at).max(0.0);
                    }
                    let total = Timestamp(o.applied).working_days_until(ev.at).max(0.0);
                    let timed = (total - o.untimed).max(0.0);
                    let allowed = f64::from(self.limits[ev.service as usize].max(1));
                    acc.applications += 1;
                    acc.rejected += u64::from(ev.kind == EventKind::Rejected);
                    acc.timed.add(timed);
                    if o.untimed > 0.0 {
                        acc.with_untimed += 1;
                        acc.untimed.add(o.untimed);
                    }
                    if timed > allowed {
                        acc.over += 1;
                        acc.excess_days += timed - allowed;
                    }
                }
            }
            _ => {}
        }
        if ev.kind.is_need() {
            self.advance_journeys(ev, cat);
        }
    }

    fn advance_journeys(&mut self, ev: &LogEvent, cat: &Catalogue) {
        let at = ev.at.0;
        for &(b, k) in &cat.service(ev.service).in_bundles {
            let bundle = &cat.bundles()[b as usize];
            let step = &bundle.steps[k as usize];
            let key = (ev.subject, b);
            let times = match self.journeys.get_mut(&key) {
                Some(t) => t,
                None if step.after.is_empty() => {
                    self.journeys.entry(key).or_insert_with(|| vec![i64::MIN; bundle.steps.len()].into())
                }
                None => continue,
            };
            if times[k as usize] != i64::MIN {
                continue;
            }
            let mut latest = i64::MIN;
            let ready = step.after.iter().all(|&a| {
                let t = times[a as usize];
                latest = latest.max(t);
                t != i64::MIN && t <= at
            });
            if !ready {
                continue;
            }
            times[k as usize] = at;
            let acc = &mut self.steps[b as usize][k as usize];
            acc.reached += 1;
            if latest != i64::MIN {
                acc.waits.add((at - latest) as f64 / DAY as f64);
            }
        }
    }

    /// All three reports; journeys' waits are measured up to `now` (default: the newest event).
    pub fn reports(&self, cat: &Catalogue, now: Option<Timestamp>) -> Reports {
        Reports {
            events: self.events,
            first_at: self.first_at.map(|t| Timestamp(t).to_string()),
            last_at: self.last_at.map(|t| Timestamp(t).to_string()),
            ratings: self.ratings(cat),
            approvals: self.approvals(cat),
            journeys: self.journeys(cat, now.or(self.last_at.map(Timestamp))),
        }
    }

    pub fn ratings(&self, cat: &Catalogue) -> RatingsReport {
        let mut services = Vec::new();
        let mut depts: BTreeMap<&str, (Tally, &str)> = BTreeMap::new();
        let mut months: BTreeMap<u32, Tally> = BTreeMap::new();
        let mut push = PushFeedback::default();
        let mut push_ratings = Tally::default();
        for (i, acc) in self.services.iter().enumerate() {
            let s = cat.service(i as u32);
            push.dismissed += acc.push_dismissed;
            push.opened += acc.push_opened;
            push_ratings.merge(&acc.push_ratings);
            if acc.ratings.n == 0 {
                continue;
            }
            let d = depts.entry(&s.department).or_insert((Tally::default(), &s.department_en));
            d.0.merge(&acc.ratings);
            for (m, t) in &acc.months {
                months.entry(*m).or_default().merge(t);
            }
            let trend = acc.months.iter().rev().take(TREND_MONTHS).rev().map(|(m, t)| month_row(*m, t)).collect();
            services.push(ServiceRatings {
                service: s.id.clone(),
                zh: s.zh.clone(),
                en: s.en.clone(),
                department: s.department.clone(),
                department_en: s.department_en.clone(),
                n: acc.ratings.n,
                mean: acc.ratings.mean(),
                bad_share: acc.ratings.bad_share(),
                trend,
            });
        }
        // Worst first: the largest share of bad ratings, then the lowest mean; services with
        // fewer than MIN_SAMPLES ratings go last (one bad rating is not a finding).
        services.sort_by(|a, b| {
            (b.n >= MIN_SAMPLES)
                .cmp(&(a.n >= MIN_SAMPLES))
                .then(b.bad_share.total_cmp(&a.bad_share))
                .then(a.mean.total_cmp(&b.mean))
                .then(a.service.cmp(&b.service))
        });
        let mut departments: Vec<DepartmentRatings> = depts
            .into_iter()
            .map(|(name, (t, en))| DepartmentRatings {
                department: name.to_string(),
                department_en: en.to_string(),
                n: t.n,
                mean: t.mean(),
                bad_share: t.bad_share(),
            })
            .collect();
        departments.sort_by(|a, b| b.bad_share.total_cmp(&a.bad_share).then(a.department.cmp(&b.department)));
        push.rated = push_ratings.n;
        push.mean_rating = push_ratings.mean();
        RatingsReport {
            n: services.iter().map(|s| s.n).sum(),
            services,
            departments,
            months: months.iter().map(|(m, t)| month_row(*m, t)).collect(),
            push,
        }
    }

    pub fn approvals(&self, cat: &Catalogue) -> ApprovalsReport {
        let mut services = Vec::new();
        let mut depts: BTreeMap<&str, DepartmentApprovals> = BTreeMap::new();
        for (i, acc) in self.services.iter().enumerate() {
            if acc.applications == 0 {
                continue;
            }
            let s = cat.service(i as u32);
            let d = depts.entry(&s.department).or_insert_with(|| DepartmentApprovals {
                department: s.department.clone(),
                department_en: s.department_en.clone(),
                ..Default::default()
            });
            d.applications += acc.applications;
            d.over += acc.over;
            d.excess_days += acc.excess_days;
            services.push(ServiceApprovals {
                service: s.id.clone(),
                zh: s.zh.clone(),
                en: s.en.clone(),
                department: s.department.clone(),
                department_en: s.department_en.clone(),
                limit_days: s.time_limit_days,
                applications: acc.applications,
                rejected: acc.rejected,
                median_days: acc.timed.quantile(0.5),
                p90_days: acc.timed.quantile(0.9),
                over: acc.over,
                over_share: round3(acc.over as f64 / acc.applications as f64),
                excess_days: round1(acc.excess_days),
                untimed_share: round3(acc.with_untimed as f64 / acc.applications as f64),
                untimed_median_days: acc.untimed.quantile(0.5),
            });
        }
        // Largest share over the limit first; fewer than MIN_SAMPLES applications go last.
        services.sort_by(|a, b| {
            (b.applications >= MIN_SAMPLES)
                .cmp(&(a.applications >= MIN_SAMPLES))
                .then(b.over_share.total_cmp(&a.over_share))
                .then(b.excess_days.total_cmp(&a.excess_days))
                .then(a.service.cmp(&b.service))
        });
        let mut departments: Vec<DepartmentApprovals> = depts
            .into_values()
            .map(|mut d| {
                d.over_share = round3(d.over as f64 / d.applications as f64);
                d.excess_days = round1(d.excess_days);
                d
            })
            .collect();
        departments.sort_by(|a, b| b.excess_days.total_cmp(&a.excess_days).then(a.department.cmp(&b.department)));
        ApprovalsReport {
            applications: services.iter().map(|s| s.applications).sum(),
            over: services.iter().map(|s| s.over).sum(),
            open: self.open.len() as u64,
            services,
            departments,
        }
    }

    pub fn journeys(&self, cat: &Catalogue, now: Option<Timestamp>) -> JourneysReport {
        let now = now.map_or(i64::MIN, |t| t.0);
        let thresholds: Vec<Vec<Option<f64>>> = self
            .steps
            .iter()
            .map(|steps| {
                steps.iter().map(|s| Some((2.0 * s.waits.quantile(0.5)?).max(s.waits.quantile(0.9)?))).collect()
            })
            .collect();
        let mut started = vec![0u64; self.steps.len()];
        let mut finished = vec![0u64; self.steps.len()];
        let mut waiting: Vec<Vec<u64>> = self.steps.iter().map(|s| vec![0; s.len()]).collect();
        let mut stalled = waiting.clone();
        for (&(_, b), times) in &self.journeys {
            let (b, bundle) = (b as usize, &cat.bundles()[b as usize]);
            started[b] += 1;
            finished[b] += u64::from(times.iter().all(|&t| t != i64::MIN));
            for (k, step) in bundle.steps.iter().enumerate() {
                if times[k] != i64::MIN || step.after.is_empty() {
                    continue;
                }
                let Some(since) = step
                    .after
                    .iter()
                    .map(|&a| times[a as usize])
                    .try_fold(i64::MIN, |m, t| (t != i64::MIN).then_some(m.max(t)))
                else {
                    continue;
                };
                waiting[b][k] += 1;
                let waited = (now - since) as f64 / DAY as f64;
                if thresholds[b][k].is_some_and(|th| waited > th) {
                    stalled[b][k] += 1;
                }
            }
        }
        let mut bundles = Vec::new();
        let mut stalls = Vec::new();
        for (b, bundle) in cat.bundles().iter().enumerate() {
            if started[b] == 0 {
                continue;
            }
            let steps: Vec<StepFunnel> = bundle
                .steps
                .iter()
                .enumerate()
                .map(|(k, step)| {
                    let acc = &self.steps[b][k];
                    let s = cat.service(step.service);
                    StepFunnel {
                        step: k as u16,
                        service: s.id.clone(),
                        zh: s.zh.clone(),
                        en: s.en.clone(),
                        after: step.after.clone(),
                        reached: acc.reached,
                        waiting: waiting[b][k],
                        stalled: stalled[b][k],
                        median_wait_days: acc.waits.quantile(0.5),
                        p90_wait_days: acc.waits.quantile(0.9),
                        stall_after_days: thresholds[b][k].map(round1),
                    }
                })
                .collect();
            for s in steps.iter().filter(|s| s.stalled > 0) {
                stalls.push(Stall {
                    bundle: bundle.id.clone(),
                    bundle_zh: bundle.zh.clone(),
                    bundle_en: bundle.en.clone(),
                    step: s.step,
                    service: s.service.clone(),
                    zh: s.zh.clone(),
                    en: s.en.clone(),
                    stalled: s.stalled,
                    waiting: s.waiting,
                    median_wait_days: s.median_wait_days,
                    stall_after_days: s.stall_after_days,
                });
            }
            bundles.push(BundleJourneys {
                bundle: bundle.id.clone(),
                zh: bundle.zh.clone(),
                en: bundle.en.clone(),
                started: started[b],
                finished: finished[b],
                steps,
            });
        }
        stalls.sort_by(|a, b| b.stalled.cmp(&a.stalled).then(a.bundle.cmp(&b.bundle)).then(a.step.cmp(&b.step)));
        JourneysReport { as_of: (now != i64::MIN).then(|| Timestamp(now).to_string()), bundles, stalls }
    }
}

const SNAPSHOT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    catalogue: String,
    services: Vec<ServiceAcc>,
    steps: Vec<Vec<StepAcc>>,
    open: Vec<((u32, u32), Open)>,
    journeys: Vec<((u32, u32), Vec<i64>)>,
    subjects: Vec<String>,
    events: u64,
    first_at: Option<i64>,
    last_at: Option<i64>,
}

fn month_row(m: u32, t: &Tally) -> MonthRatings {
    MonthRatings { month: format!("{}-{:02}", m / 100, m % 100), n: t.n, mean: t.mean(), bad_share: t.bad_share() }
}

/// The three reports, as `tongban report` writes them and the console shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Reports {
    pub events: u64,
    pub first_at: Option<String>,
    pub last_at: Option<String>,
    pub ratings: RatingsReport,
    pub approvals: ApprovalsReport,
    pub journeys: JourneysReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct RatingsReport {
    pub n: u64,
    /// Worst first (share of bad ratings, then mean); fewer than 5 ratings last.
    pub services: Vec<ServiceRatings>,
    /// Largest share of bad ratings first.
    pub departments: Vec<DepartmentRatings>,
    /// Every month, all services.
    pub months: Vec<MonthRatings>,
    pub push: PushFeedback,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRatings {
    pub service: String,
    pub zh: String,
    pub en: String,
    pub department: String,
    pub department_en: String,
    pub n: u64,
    pub mean: f64,
    pub bad_share: f64,
    /// The last 12 months with ratings.
    pub trend: Vec<MonthRatings>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DepartmentRatings {
    pub department: String,
    pub department_en: String,
    pub n: u64,
    pub mean: f64,
    pub bad_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonthRatings {
    pub month: String,
    pub n: u64,
    pub mean: f64,
    pub bad_share: f64,
}

/// What subjects did with pushes, as far as events say.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushFeedback {
    pub opened: u64,
    pub dismissed: u64,
    pub rated: u64,
    pub mean_rating: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApprovalsReport {
    /// Applications that ended (completed or rejected) with a known application time.
    pub applications: u64,
    pub over: u64,
    /// Applications not ended yet.
    pub open: u64,
    /// Largest share over the limit first; fewer than 5 applications last.
    pub services: Vec<ServiceApprovals>,
    /// Most excess working days first.
    pub departments: Vec<DepartmentApprovals>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceApprovals {
    pub service: String,
    pub zh: String,
    pub en: String,
    pub department: String,
    pub department_en: String,
    /// The legal (promised) time limit in working days; 0 = 即办.
    pub limit_days: u32,
    pub applications: u64,
    pub rejected: u64,
    /// Timed working days: median and 90th percentile.
    pub median_days: Option<f64>,
    pub p90_days: Option<f64>,
    pub over: u64,
    pub over_share: f64,
    /// Working days over the limit, summed over the applications that were over.
    pub excess_days: f64,
    /// Share of applications with an untimed part, and its median length.
    pub untimed_share: f64,
    pub untimed_median_days: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DepartmentApprovals {
    pub department: String,
    pub department_en: String,
    pub applications: u64,
    pub over: u64,
    pub over_share: f64,
    pub excess_days: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JourneysReport {
    /// Waits are measured up to this time.
    pub as_of: Option<String>,
    /// Bundles some subject entered, in catalogue order.
    pub bundles: Vec<BundleJourneys>,
    /// Steps with stalled subjects, most first.
    pub stalls: Vec<Stall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleJourneys {
    pub bundle: String,
    pub zh: String,
    pub en: String,
    pub started: u64,
    /// Subjects who did every step.
    pub finished: u64,
    pub steps: Vec<StepFunnel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepFunnel {
    pub step: u16,
    pub service: String,
    pub zh: String,
    pub en: String,
    pub after: Vec<u16>,
    pub reached: u64,
    pub waiting: u64,
    pub stalled: u64,
    pub median_wait_days: Option<f64>,
    pub p90_wait_days: Option<f64>,
    pub stall_after_days: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stall {
    pub bundle: String,
    pub bundle_zh: String,
    pub bundle_en: String,
    pub step: u16,
    pub service: String,
    pub zh: String,
    pub en: String,
    pub stalled: u64,
    pub waiting: u64,
    pub median_wait_days: Option<f64>,
    pub stall_after_days: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Channel;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn ev(subject: u32, service: u32, kind: EventKind, rating: u8, when: &str) -> LogEvent {
        LogEvent { id: 0, subject, service, kind, rating, channel: Channel::Web, at: at(when) }
    }

    #[test]
    fn approvals_split_timed_and_untimed_working_days() {
        let cat = Catalogue::builtin();
        let (svc, limit) = cat
            .services()
            .iter()
            .enumerate()
            .find(|(_, s)| s.time_limit_days >= 5 && !s.granted_without_applying)
            .map(|(i, s)| (i as u32, f64::from(s.time_limit_days)))
            .unwrap();
        let mut a = Analytics::new(&cat);
        // Applied Monday 2025-12-01 09:00; suspended Tuesday 09:00 for 5 working days (resumed
        // the next Tuesday 09:00); completed limit + 2 working days after Tuesday's resume.
        let applied = at("2025-12-01T01:00:00Z");
        let suspended = applied.plus_working_days(1.0);
        let resumed = suspended.plus_working_days(5.0);
        let done = resumed.plus_working_days(limit + 1.0);
        a.apply(&LogEvent { at: applied, ..ev(1, svc, EventKind::Applied, 0, "2025-12-01T01:00:00Z") }, &cat);
        a.apply(&LogEvent { at: suspended, ..ev(1, svc, EventKind::Suspended, 0, "2025-12-01T01:00:00Z") }, &cat);
        a.apply(&LogEvent { at: resumed, ..ev(1, svc, EventKind::Resumed, 0, "2025-12-01T01:00:00Z") }, &cat);
        a.apply(&LogEvent { at: done, ..ev(1, svc, EventKind::Completed, 0, "2025-12-01T01:00:00Z") }, &cat);
        let r = a.approvals(&cat);
        assert_eq!((r.applications, r.over, r.open), (1, 1, 0));
        let s = &r.services[0];
        assert_eq!((s.over, s.untimed_share), (1, 1.0));
        // Timed = 1 + limit + 1 working days; excess = 2 (to the bin-free sum's precision).
        assert!((s.excess_days - 2.0).abs() < 0.01, "{}", s.excess_days);
        assert_eq!(r.departments[0].over, 1);
        // A completion with no application (or before it) is not an approval.
        a.apply(&ev(2, svc, EventKind::Completed, 0, "2025-12-05T01:00:00Z"), &cat);
        assert_eq!(a.approvals(&cat).applications, 1);
    }

    #[test]
    fn ratings_rank_the_worst_service_first_with_a_monthly_trend() {
        let cat = Catalogue::builtin();
        let mut a = Analytics::new(&cat);
        for i in 0..10u32 {
            a.apply(&ev(i, 0, EventKind::Rated, 5, "2025-11-03T01:00:00Z"), &cat);
            a.apply(&ev(i, 1, EventKind::Rated, if i < 6 { 1 } else { 4 }, "2025-12-03T01:00:00Z"), &cat);
        }
        // Two ratings are too few to rank first, however bad.
        a.apply(&ev(0, 2, EventKind::Rated, 1, "2025-12-03T01:00:00Z"), &cat);
        a.apply(&ev(1, 2, EventKind::Rated, 1, "2025-12-03T01:00:00Z"), &cat);
        let r = a.ratings(&cat);
        assert_eq!(r.n, 22);
        assert_eq!(r.services[0].service, cat.service(1).id);
        assert_eq!((r.services[0].bad_share, r.services[0].mean), (0.6, 2.2));
        assert_eq!(r.services.last().unwrap().service, cat.service(2).id);
        assert_eq!(
            r.months.iter().map(|m| (m.month.as_str(), m.n)).collect::<Vec<_>>(),
            [("2025-11", 10), ("2025-12", 12)]
        );
    }

    #[test]
    fn journeys_count_steps_in_order_and_find_stalls() {
        let cat = Catalogue::builtin();
        let bundle = cat
            .bundles()
            .iter()
            .find(|b| b.steps.len() >= 2 && b.steps[0].after.is_empty() && b.steps[1].after == [0])
            .unwrap();
        let (s0, s1) = (bundle.steps[0].service, bundle.steps[1].service);
        let mut a = Analytics::new(&cat);
        // Ten subjects do step 0 on day 0; six do step 1 two days later; subject 9 does step 1
        // without step 0 (no journey); the other four wait.
        for i in 0..10u32 {
            a.apply(&ev(i, s0, EventKind::Applied, 0, "2025-01-01T01:00:00Z"), &cat);
        }
        for i in 0..6u32 {
            a.apply(&ev(i, s1, EventKind::Applied, 0, "2025-01-03T01:00:00Z"), &cat);
        }
        a.apply(&ev(99, s1, EventKind::Applied, 0, "2025-01-03T01:00:00Z"), &cat);
        let r = a.journeys(&cat, Some(at("2025-01-04T01:00:00Z")));
        let j = r.bundles.iter().find(|j| j.bundle == bundle.id).unwrap();
        assert_eq!(j.started, 10);
        assert_eq!((j.steps[0].reached, j.steps[1].reached, j.steps[1].waiting), (10, 6, 4));
        assert_eq!(j.steps[1].median_wait_days, Some(2.0));
        // Three days in, nobody has waited past twice the median (4 days); thirty days in,
        // the four are stalled.
        assert_eq!(j.steps[1].stalled, 0);
        let r = a.journeys(&cat, Some(at("2025-01-31T01:00:00Z")));
        let j = r.bundles.iter().find(|j| j.bundle == bundle.id).unwrap();
        assert_eq!(j.steps[1].stalled, 4);
        assert!(r.stalls.iter().any(|s| s.bundle == bundle.id && s.step == 1 && s.stalled == 4));
    }

    #[test]
    fn a_snapshot_reads_back_the_same_figures_and_refuses_another_catalogue() {
        let cat = Catalogue::builtin();
        let svc = cat.services().iter().position(|s| !s.granted_without_applying).unwrap() as u32;
        let mut a = Analytics::new(&cat);
        a.apply_named("p1", &ev(0, svc, EventKind::Applied, 0, "2025-01-01T01:00:00Z"), &cat);
        a.apply_named("p1", &ev(0, svc, EventKind::Completed, 0, "2025-01-09T01:00:00Z"), &cat);
        a.apply_named("p2", &ev(0, svc, EventKind::Applied, 0, "2025-01-02T01:00:00Z"), &cat);
        a.apply_named("p2", &ev(0, svc, EventKind::Rated, 2, "2025-01-03T01:00:00Z"), &cat);
        let b = Analytics::from_snapshot(&a.to_snapshot(), &cat).unwrap();
        let (ra, rb) = (a.reports(&cat, None), b.reports(&cat, None));
        assert_eq!(serde_json::to_string(&ra).unwrap(), serde_json::to_string(&rb).unwrap());
        assert_eq!(rb.approvals.open, 1);
        // p2's open application still closes after the restart.
        let mut b = b;
        b.apply_named("p2", &ev(0, svc, EventKind::Completed, 0, "2025-01-06T01:00:00Z"), &cat);
        assert_eq!(b.approvals(&cat).applications, 2);
        let other = cat.clone().with_long_tail(cat.services().len() + 5);
        assert!(Analytics::from_snapshot(&a.to_snapshot(), &other).is_err());
        assert!(Analytics::from_snapshot(b"junk", &cat).is_err());
    }

    #[test]
    fn erasure_forgets_a_subjects_own_state() {
        let cat = Catalogue::builtin();
        let svc = cat.services().iter().position(|s| !s.granted_without_applying).unwrap() as u32;
        let mut a = Analytics::new(&cat);
        let e = ev(0, svc, EventKind::Applied, 0, "2025-01-01T01:00:00Z");
        a.apply_named("p1", &e, &cat);
        a.apply_named("p2", &e, &cat);
        assert_eq!(a.approvals(&cat).open, 2);
        a.forget("p1");
        assert_eq!(a.approvals(&cat).open, 1);
    }
}
