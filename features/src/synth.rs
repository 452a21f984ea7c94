//! Synthetic service histories of a Dalian population, with the oracle's truth.
//!
//! No public data set of government-service histories exists, so this module simulates one.
//! Each subject (person or enterprise) is an independent, seeded, event-driven simulation:
//! a heap of pending actions (life events drawn from age- and state-dependent hazards, bundle
//! steps, document renewals, yearly windows, background use) processed in time order. A life
//! event starts the journeys of the bundles it triggers; each step waits for the steps it
//! depends on plus a delay uniform in the catalogue's `delay_days`, and appears in the log only
//! with the step's `observed` probability (the rest is done offline).
//!
//! **Truth.** At the cut-off, the subject's hidden state is its heap of pending actions. The
//! distribution of its first service after the cut-off is estimated by re-running the future
//! `truth_samples` times from that state with fresh randomness: every pending time is re-drawn
//! from its own law conditioned on lying after the cut-off (uniform windows shrink, hazards are
//! memoryless, calendar dates stay). The real future is one more draw of the same process, so
//! an oracle ranking by this distribution is the ceiling for any model on the data.
//!
//! Hazard rates below are plausible round figures, not calibrated statistics; where a figure
//! comes from the domain notes (`../shared/domain/LIFE_EVENTS.md`) it says so.
//!
//! Determinism: subject `i` draws from its own ChaCha stream seeded by (seed, kind, i), so the
//! output does not depend on thread count or chunking.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::catalogue::{Audience, Catalogue, Deadline, ItemType, LifeEvent};
use crate::domain::{Channel, EventKind, SubjectKind, DISTRICTS};
use crate::io::{EventRecord, EventWriter};
use crate::time::{civil_from_days, Date, Timestamp, DAY};

/// Bumped whenever the same arguments would produce different files.
/// Version 2: the truth no longer knows that a memoryless draw (background use, a life event)
/// fell after the horizon; `events.csv`, `future.csv` and `subjects.csv` are unchanged.
/// Version 3: approval durations in working days against each service's limit, with slow
/// departments ([`is_slow_department`]); `suspended`/`resumed` around untimed parts of a
/// procedure; ratings that depend on lateness and rejection; dismissed pushes and pushes
/// opened just before a journey step's application. The starts, their ids, `subjects.csv` and
/// `truth.jsonl` are version 2's: everything new is drawn from a second stream.
pub const GENERATOR_VERSION: u32 = 3;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub persons: u64,
    pub enterprises: u64,
    pub years: u32,
    pub seed: u64,
    /// The last instant of `events.csv`; `future.csv` covers the following horizon.
    pub cutoff: Date,
    pub horizon_days: u32,
    /// Monte Carlo draws per subject for `truth.jsonl`.
    pub truth_samples: u32,
    pub jsonl: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            persons: 1000,
            enterprises: 100,
            years: 3,
            seed: 7,
            cutoff: Date::new(2026, 1, 1).expect("valid date"),
            horizon_days: 90,
            truth_samples: 200,
            jsonl: false,
        }
    }
}

pub use crate::domain::is_start;

/// One event of a subject, before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEvent {
    pub at: i64,
    pub service: u32,
    pub kind: EventKind,
    pub rating: u8,
    pub channel: Channel,
    /// The time generator version 2 gave this event, for numbering the events as version 2 did
    /// (their ids stay the same); `None` for an event version 2 did not have.
    pub v2_at: Option<i64>,
}

/// A subject's attributes, as written to `subjects.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSubject {
    pub id: String,
    pub kind: SubjectKind,
    pub born: Date,
    pub district: u8,
    pub hukou_local: bool,
    /// Person: 'F' / 'M'. Enterprise: size 'S' / 'M' / 'L'.
    pub class: char,
    /// Enterprise: true for construction firms.
    pub construction: bool,
}

/// What happened to one bundle journey, for realism checks.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneyTrace {
    pub bundle: u32,
    pub started: i64,
    /// Time each step was done (observed or not), if it was done within the simulation.
    pub done: Vec<Option<i64>>,
    /// Whether each step has been scheduled (a step is scheduled at most once).
    scheduled: Vec<bool>,
}

/// The full outcome of one subject's simulation.
#[derive(Debug, Clone)]
pub struct SubjectRun {
    pub subject: SimSubject,
    /// All events, sorted by time (stable), past and future.
    pub events: Vec<SimEvent>,
    /// Journeys started, for realism checks.
    pub journeys: Vec<JourneyTrace>,
    /// Renewals done: (service, time).
    pub renewals: Vec<(u32, i64)>,
    /// The estimated distribution of the first service started after the cut-off (service,
    /// probability), when the subject has such a service in the horizon.
    pub truth: Vec<(u32, f64)>,
    /// The number of each event in its id (`subject.number`): version 2's numbering for the
    /// events it had, the following numbers in time order for the others.
    pub numbers: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// The next hazard-driven life event (competing risks, including a person's own death);
    /// stale when `gen` is not the subject's current generation.
    Hazard {
        gen: u32,
    },
    /// A life event at a calendar date (school entry, retirement, founding, new year).
    Fixed {
        ev: u8,
    },
    Step {
        journey: u32,
        step: u16,
    },
    Renew {
        service: u32,
    },
    Yearly {
        service: u32,
    },
    Noise,
    YearTick,
}

/// How a pending time was drawn, so that it can be re-drawn after the cut-off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Law {
    /// Uniform in `[lo, hi]` seconds.
    Uniform { lo: i64, hi: i64 },
    /// Exponential waiting time with this rate per second, from any start.
    Memoryless { rate: f64 },
    /// A calendar date: not random.
    Fixed,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    at: i64,
    seq: u64,
    law: Law,
    action: Action,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Mutable life state of a subject.
#[derive(Debug, Clone)]
struct State {
    alive: bool,
    married: bool,
    employed: bool,
    retired: bool,
    graduated: bool,
    children: u8,
    business: bool,
    /// An enterprise that is closing: it finishes its exit journey and starts nothing new.
    closing: bool,
    gen: u32,
    /// Background-use weights of this subject (catalogue noise plus a personal habit).
    habit: Option<(u32, f64)>,
}

/// A yearly-window service: (service, from (month, day), to (month, day), share, audience).
type Yearly = (u32, (u8, u8), (u8, u8), f32, Audience);

/// Catalogue facts the simulation needs, precomputed once.
#[derive(Debug)]
struct Prepared<'a> {
    cat: &'a Catalogue,
    /// Background use per audience: cumulative weights and services.
    noise: [(Vec<f64>, Vec<u32>); 2],
    /// Services with a renewal rule: (service, window days, validity years, holders).
    renewals: Vec<(u32, u32, u32, f32, Audience)>,
    /// Services with a yearly window not covered by a `year_start` bundle.
    yearly: Vec<Yearly>,
    /// Repeatable noise services per audience, for personal habits.
    habits: [Vec<u32>; 2],
    /// Per service: its department is one of the slow ones.
    slow: Vec<bool>,
    /// Services a guidance push may be about, per audience: all that are applied for.
    pushable: [Vec<u32>; 2],
}

fn audience_slot(kind: SubjectKind) -> usize {
    match kind {
        SubjectKind::Person => 0,
        SubjectKind::Enterprise => 1,
    }
}

fn month_day(s: &str) -> (u8, u8) {
    let d = Date::parse(&format!("2024-{s}")).expect("validated by the catalogue");
    (d.month, d.day)
}

impl<'a> Prepared<'a> {
    fn new(cat: &'a Catalogue) -> Prepared<'a> {
        let year_start_services: Vec<u32> =
            cat.bundles_for(LifeEvent::YearStart).flat_map(|(_, b)| b.steps.iter().map(|s| s.service)).collect();
        let mut noise: [(Vec<f64>, Vec<u32>); 2] = Default::default();
        let mut habits: [Vec<u32>; 2] = Default::default();
        let mut renewals = Vec::new();
        let mut yearly = Vec::new();
        let mut pushable: [Vec<u32>; 2] = Default::default();
        for (i, s) in cat.services().iter().enumerate() {
            let i = i as u32;
            for (slot, kind) in [(0, SubjectKind::Person), (1, SubjectKind::Enterprise)] {
                if s.audience.admits(kind) && !s.granted_without_applying {
                    pushable[slot].push(i);
                }
                if s.audience.admits(kind) && s.noise > 0.0 {
                    let (cum, ids) = &mut noise[slot];
                    cum.push(cum.last().copied().unwrap_or(0.0) + f64::from(s.noise));
                    ids.push(i);
                    if s.repeatable {
                        habits[slot].push(i);
                    }
                }
            }
            match &s.deadline {
                Some(Deadline::BeforeExpiry { days, validity_years, holders }) => {
                    renewals.push((i, *days, *validity_years, *holders, s.audience))
                }
                Some(Deadline::YearlyWindow { from, to, share }) if !year_start_services.contains(&i) => {
                    yearly.push((i, month_day(from), month_day(to), *share, s.audience))
                }
                _ => {}
            }
        }
        let slow = cat.services().iter().map(|s| is_slow_department(&s.department)).collect();
        Prepared { cat, noise, renewals, yearly, habits, slow, pushable }
    }
}

/// One subject's simulation.
#[derive(Debug, Clone)]
struct Sim<'p, 'a> {
    prep: &'p Prepared<'a>,
    subject: SimSubject,
    state: State,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    journeys: Vec<JourneyTrace>,
    renewals: Vec<(u32, i64)>,
    end: i64,
    /// The stream of everything version 3 added (procedures, ratings, pushes), apart from the
    /// stream that drives the simulation so that the starts stay as they were.
    aux: ChaCha8Rng,
    /// When the subject next dismisses a guidance push.
    next_dismissal: i64,
}

const YEAR: f64 = 365.25 * DAY as f64;
const LIFE_EVENTS: usize = LifeEvent::ALL.len();

fn age_years(born: Date, at: i64) -> f64 {
    (at - born.start_shanghai().0) as f64 / YEAR
}

impl<'p, 'a> Sim<'p, 'a> {
    fn push(&mut self, at: i64, law: Law, action: Action) {
        self.seq += 1;
        self.heap.push(Reverse(Pending { at, seq: self.seq, law, action }));
    }

    fn push_uniform(&mut self, rng: &mut ChaCha8Rng, lo: i64, hi: i64, action: Action) {
        let at = if hi > lo { rng.gen_range(lo..=hi) } else { lo };
        self.push(at, Law::Uniform { lo, hi }, action);
    }

    fn push_rate(&mut self, rng: &mut ChaCha8Rng, now: i64, per_year: f64, action: Action) {
        if per_year <= 0.0 {
            return;
        }
        let rate = per_year / YEAR;
        let wait = -(1.0 - rng.gen::<f64>()).ln() / rate;
        let at = now.saturating_add(wait.min(1e15) as i64);
        // Kept even when it lands after the end (it is then never processed): dropping it
        // would tell the truth's re-draws that nothing of this kind happens in the horizon,
        // knowledge no model of the log can have (generator version 1 had this leak).
        self.push(at, Law::Memoryless { rate }, action);
    }

    /// Yearly hazard of each life event for this subject now.
    fn hazard(&self, ev: LifeEvent, now: i64) -> f64 {
        let s = &self.state;
        if s.closing {
            return 0.0;
        }
        let age = age_years(self.subject.born, now);
        let adult = (18.0..75.0).contains(&age);
        match self.subject.kind {
            SubjectKind::Person => match ev {
                LifeEvent::ChildBirth if (21.0..42.0).contains(&age) => match (s.married, s.children) {
                    (true, 0) => 0.25,
                    (true, 1) => 0.07,
                    (true, _) => 0.01,
                    (false, _) => 0.004,
                },
                LifeEvent::Graduation if (20.0..25.0).contains(&age) && !s.graduated => 0.25,
                LifeEvent::JobStart if (18.0..58.0).contains(&age) && !s.employed && !s.retired => {
                    if s.graduated || age > 24.0 {
                        0.5
                    } else {
                        0.05
                    }
                }
                LifeEvent::JobLoss if s.employed => 0.04,
                LifeEvent::Marriage if (21.0..45.0).contains(&age) && !s.married => 0.12,
                LifeEvent::HomePurchase if (25.0..65.0).contains(&age) => 0.03,
                LifeEvent::Move if adult => 0.04,
                LifeEvent::CarPurchase if (20.0..65.0).contains(&age) => 0.04,
                LifeEvent::Illness => 0.01 + 0.0008 * (age - 30.0).max(0.0),
                LifeEvent::Hardship if adult => 0.005,
                LifeEvent::Disability => 0.001 + 0.0001 * age,
                LifeEvent::Bereavement if (30.0..80.0).contains(&age) => 0.02,
                LifeEvent::StartBusiness if (22.0..56.0).contains(&age) && !s.business => 0.008,
                _ => 0.0,
            },
            SubjectKind::Enterprise => match ev {
                LifeEvent::Hiring => match self.subject.class {
                    'S' => 0.6,
                    'M' => 2.0,
                    _ => 4.0,
                },
                LifeEvent::EnterpriseChange => 0.15,
                LifeEvent::ConstructionProject if self.subject.construction => 0.6,
                LifeEvent::ConstructionProject => 0.01,
                LifeEvent::PropertyPurchase => 0.02,
                LifeEvent::EnterpriseRelocation => 0.03,
                LifeEvent::EnterpriseClose if self.subject.class == 'S' => 0.05,
                LifeEvent::EnterpriseClose => 0.015,
                _ => 0.0,
            },
        }
    }

    /// Yearly rates of every life event, then of the subject's own death (Gompertz-like
    /// mortality for persons, plausible figures), and their total.
    fn rates(&self, now: i64) -> ([f64; LIFE_EVENTS + 1], f64) {
        let mut r = [0.0; LIFE_EVENTS + 1];
        for (slot, &ev) in r.iter_mut().zip(LifeEvent::ALL) {
            *slot = self.hazard(ev, now);
        }
        if self.subject.kind == SubjectKind::Person {
            let age = age_years(self.subject.born, now);
            r[LIFE_EVENTS] = 0.0003 * (0.085 * (age - 30.0)).exp();
        }
        let total = r.iter().sum();
        (r, total)
    }

    /// (Re)draws the next life event from `now` as one competing-risks wait: valid because
    /// exponential waits are memoryless, and cheaper than one draw per event.
    fn reschedule_hazards(&mut self, rng: &mut ChaCha8Rng, now: i64) {
        self.state.gen += 1;
        let gen = self.state.gen;
        let (_, total) = self.rates(now);
        self.push_rate(rng, now, total, Action::Hazard { gen });
    }

    fn noise_rate(&self) -> f64 {
        let slot = audience_slot(self.subject.kind);
        self.prep.noise[slot].0.last().copied().unwrap_or(0.0) + self.state.habit.map_or(0.0, |h| h.1)
    }

    fn pick_noise(&self, rng: &mut ChaCha8Rng) -> Option<u32> {
        let (cum, ids) = &self.prep.noise[audience_slot(self.subject.kind)];
        let base = cum.last().copied().unwrap_or(0.0);
        let x = rng.gen::<f64>() * self.noise_rate();
        if x >= base {
            return self.state.habit.map(|h| h.0);
        }
        let i = cum.partition_point(|&c| c <= x);
        ids.get(i).copied()
    }

    fn start_journeys(&mut self, rng: &mut ChaCha8Rng, ev: LifeEvent, now: i64) {
        let kind = self.subject.kind;
        let found: Vec<u32> =
            self.prep.cat.bundles_for(ev).filter(|(_, b)| b.audience.admits(kind)).map(|(i, _)| i).collect();
        for b in found {
            let j = self.journeys.len() as u32;
            let bundle = &self.prep.cat.bundles()[b as usize];
            self.journeys.push(JourneyTrace {
                bundle: b,
                started: now,
                done: vec![None; bundle.steps.len()],
                scheduled: vec![false; bundle.steps.len()],
            });
            self.schedule_ready_steps(rng, j, now);
        }
    }

    /// Schedules the steps of a journey whose dependencies are all done and that are not yet
    /// scheduled (a step is scheduled exactly once: when its last dependency completes).
    fn schedule_ready_steps(&mut self, rng: &mut ChaCha8Rng, j: u32, just_done: i64) {
        let trace = &mut self.journeys[j as usize];
        let bundle = &self.prep.cat.bundles()[trace.bundle as usize];
        let mut ready = Vec::new();
        for (k, step) in bundle.steps.iter().enumerate() {
            if trace.scheduled[k] {
                continue;
            }
            let deps: Option<Vec<i64>> = step.after.iter().map(|&a| trace.done[a as usize]).collect();
            let Some(deps) = deps else { continue };
            let base = deps.iter().copied().max().unwrap_or(trace.started);
            trace.scheduled[k] = true;
            ready.push((k as u16, base.max(just_done), step.delay_days));
        }
        for (k, base, (lo, hi)) in ready {
            let lo = base + (f64::from(lo) * DAY as f64) as i64;
            let hi = base + (f64::from(hi) * DAY as f64) as i64;
            self.push_uniform(rng, lo, hi, Action::Step { journey: j, step: k });
        }
    }

    /// Emits one use of a service at `at`: maybe a view, the application (or a system grant),
    /// the department's procedure (sometimes with an untimed part), the outcome, sometimes a
    /// rating. `journey` marks a bundle step, which a guidance push may have prompted.
    ///
    /// The draws of `rng` are exactly version 2's, in the same order, even where their values
    /// are now only used for event ids: the starts and the truth depend on that sequence. All
    /// that version 3 adds is drawn from `self.aux`.
    fn emit_use(&mut self, rng: &mut ChaCha8Rng, service: u32, at: i64, journey: bool, out: &mut Vec<SimEvent>) {
        let prep = self.prep;
        let s = prep.cat.service(service);
        let channel = match rng.gen_range(0..100) {
            0..=39 => Channel::Web,
            40..=74 => Channel::App,
            75..=89 => Channel::Mini,
            _ => Channel::Office,
        };
        let ev = |at, kind, rating, channel, v2_at| SimEvent { at, service, kind, rating, channel, v2_at };
        if s.granted_without_applying {
            out.push(ev(at, EventKind::Completed, 0, Channel::System, Some(at)));
            return;
        }
        let viewed = rng.gen_bool(0.25);
        if viewed {
            let t = at - rng.gen_range(60..7200);
            out.push(ev(t, EventKind::Viewed, 0, channel, Some(t)));
        } else if journey && channel == Channel::App && self.aux.gen_bool(0.2) {
            // Opened from a guidance push seconds before applying: no earlier than a minute, so
            // that the push tells a model nothing the application does not tell at once.
            let t = at - self.aux.gen_range(5..60);
            out.push(ev(t, EventKind::PushOpened, 0, Channel::Push, None));
        }
        out.push(ev(at, EventKind::Applied, 0, channel, Some(at)));
        // Version 2's outcome time, rejection and rating: their times number the events.
        let limit = f64::from(s.time_limit_days.max(1)) * 1.4 * DAY as f64;
        let done_v2 = at + rng.gen_range(600..(limit as i64).max(601));
        let rejected = rng.gen_bool(0.03);
        let rated_v2 = (!rejected && rng.gen_bool(0.15)).then(|| {
            let _ = rng.gen_range(0..100);
            done_v2 + rng.gen_range(3600..3 * DAY)
        });

        let p = procedure(&mut self.aux, s.time_limit_days, prep.slow[service as usize], untimed_share(s), at);
        if let Some((from, to)) = p.suspended {
            out.push(ev(from, EventKind::Suspended, 0, Channel::Office, None));
            out.push(ev(to, EventKind::Resumed, 0, Channel::Office, None));
        }
        let outcome = if rejected { EventKind::Rejected } else { EventKind::Completed };
        out.push(ev(p.done, outcome, 0, channel, Some(done_v2)));
        let limit = f64::from(s.time_limit_days);
        let late = limit > 0.0 && p.timed > limit;
        // Rated more often when late or rejected. Version 2 rated 15% of completions and no
        // rejection: those it rated are rated again (so they keep their ids), the others with
        // the extra probability that brings the share up to this application's.
        let p_rate = match (rejected, late) {
            (true, _) => 0.45,
            (false, true) => 0.3 + 0.2 * ((p.timed / limit - 1.0) / 2.0).min(1.0),
            (false, false) => 0.15,
        };
        let rated = match rated_v2 {
            Some(_) => true,
            None if rejected => self.aux.gen_bool(p_rate),
            None => self.aux.gen_bool((p_rate - 0.15) / 0.85),
        };
        if rated {
            let r = rating(&mut self.aux, rejected, if late { p.timed / limit - 1.0 } else { 0.0 });
            let t = p.done + self.aux.gen_range(3600..3 * DAY);
            out.push(ev(t, EventKind::Rated, r, channel, rated_v2));
        }
    }

    fn apply_life_event(&mut self, rng: &mut ChaCha8Rng, ev: LifeEvent, now: i64) {
        let st = &mut self.state;
        match ev {
            LifeEvent::ChildBirth => {
                st.children = st.children.saturating_add(1);
                self.schedule_school_entry(rng, now.div_euclid(DAY));
            }
            LifeEvent::Graduation => st.graduated = true,
            LifeEvent::JobStart => st.employed = true,
            LifeEvent::JobLoss | LifeEvent::Retirement => {
                st.employed = false;
                st.retired |= ev == LifeEvent::Retirement;
            }
            LifeEvent::Marriage => st.married = true,
            LifeEvent::StartBusiness => st.business = true,
            LifeEvent::EnterpriseClose => st.closing = true,
            _ => {}
        }
        self.start_journeys(rng, ev, now);
        if ev == LifeEvent::Retirement && self.state.employed {
            self.state.employed = false;
        }
    }

    /// A child born on day `born` enters school in the year it turns 6 by 31 August;
    /// registration opens around 1 July (LIFE_EVENTS.md).
    fn schedule_school_entry(&mut self, rng: &mut ChaCha8Rng, born: i64) {
        let b = civil_from_days(born);
        let year = if (b.month, b.day) <= (8, 31) { b.year + 6 } else { b.year + 7 };
        let day = Date::new(year, 7, 1).expect("valid").day_number() + rng.gen_range(0..20);
        let at = day * DAY + rng.gen_range(9 * 3600..17 * 3600) - 8 * 3600;
        if at < self.end {
            self.push(at, Law::Fixed, Action::Fixed { ev: LifeEvent::SchoolEntry as u8 });
        }
    }

    /// Processes one action at its time, emitting events.
    fn process(&mut self, rng: &mut ChaCha8Rng, p: Pending, out: &mut Vec<SimEvent>) {
        let now = p.at;
        match p.action {
            Action::Hazard { gen } if gen != self.state.gen => {}
            Action::Hazard { .. } => {
                let (rates, total) = self.rates(now);
                let mut x = rng.gen::<f64>() * total;
                let pick = rates.iter().position(|&r| {
                    x -= r;
                    x < 0.0
                });
                match pick {
                    Some(LIFE_EVENTS) => self.state.alive = false,
                    Some(i) => {
                        self.apply_life_event(rng, LifeEvent::ALL[i], now);
                        self.reschedule_hazards(rng, now);
                    }
                    None => self.reschedule_hazards(rng, now),
                }
            }
            Action::Fixed { ev } => {
                let ev = LifeEvent::ALL[ev as usize];
                self.apply_life_event(rng, ev, now);
                if ev != LifeEvent::YearStart && ev != LifeEvent::SchoolEntry {
                    self.reschedule_hazards(rng, now);
                }
            }
            Action::Step { journey, step } => {
                let trace = &mut self.journeys[journey as usize];
                trace.done[step as usize] = Some(now);
                let st = &self.prep.cat.bundles()[trace.bundle as usize].steps[step as usize];
                let (svc, observed) = (st.service, st.observed);
                if rng.gen_bool(f64::from(observed)) {
                    self.emit_use(rng, svc, now, true, out);
                }
                self.schedule_ready_steps(rng, journey, now);
            }
            Action::Renew { .. } | Action::Yearly { .. } | Action::Noise if self.state.closing => {}
            Action::Renew { service } => {
                self.renewals.push((service, now));
                if rng.gen_bool(0.85) {
                    self.emit_use(rng, service, now, false, out);
                }
                // Next expiry: one validity period after this one (the window is before expiry).
                if let Some(&(_, days, years, _, _)) = self.prep.renewals.iter().find(|r| r.0 == service) {
                    let expiry = p_law_expiry(p.law, now, days);
                    let next = expiry + i64::from(years) * (365 * DAY + DAY / 4);
                    self.push_uniform(rng, next - i64::from(days) * DAY, next, Action::Renew { service });
                }
            }
            Action::Yearly { service } => {
                if rng.gen_bool(0.9) {
                    self.emit_use(rng, service, now, false, out);
                }
            }
            Action::Noise => {
                if let Some(svc) = self.pick_noise(rng) {
                    self.emit_use(rng, svc, now, false, out);
                }
                let r = self.noise_rate();
                self.push_rate(rng, now, r, Action::Noise);
            }
            Action::YearTick => {
                let year = Timestamp(now).date_shanghai().year;
                self.schedule_year(rng, year);
                self.reschedule_hazards(rng, now);
            }
        }
    }

    /// Yearly windows, the enterprise new-year bundle and the next tick.
    fn schedule_year(&mut self, rng: &mut ChaCha8Rng, year: i32) {
        let kind = self.subject.kind;
        let prep = self.prep;
        for &(svc, from, to, share, aud) in &prep.yearly {
            if !aud.admits(kind) || !rng.gen_bool(f64::from(share)) {
                continue;
            }
            let lo = Date::new(year, from.0, from.1).expect("valid").start_shanghai().0;
            let hi = Date::new(year, to.0, to.1).expect("valid").start_shanghai().0 + DAY - 1;
            self.push_uniform(rng, lo, hi, Action::Yearly { service: svc });
        }
        let jan1 = Date::new(year, 1, 1).expect("valid").start_shanghai().0;
        if kind == SubjectKind::Enterprise {
            let at = jan1 + rng.gen_range(DAY..20 * DAY);
            self.push(at, Law::Fixed, Action::Fixed { ev: LifeEvent::YearStart as u8 });
        }
        let next = Date::new(year + 1, 1, 1).expect("valid").start_shanghai().0;
        if next < self.end {
            self.push(next, Law::Fixed, Action::YearTick);
        }
    }

    /// Runs pending actions with time `< until`, appending events; stops early at the first
    /// start event at or after `first_start_after` when given.
    fn run(
        &mut self,
        rng: &mut ChaCha8Rng,
        until: i64,
        out: &mut Vec<SimEvent>,
        first_start_after: Option<i64>,
    ) -> Option<u32> {
        loop {
            let next = self.heap.peek().map(|Reverse(p)| *p);
            // Dismissals touch neither the heap nor `rng`, and the truth's forks need none.
            if first_start_after.is_none() {
                self.dismissals_until(next.map_or(until, |p| p.at.min(until)), out);
            }
            let Some(p) = next else { break };
            if p.at >= until || !self.state.alive {
                break;
            }
            self.heap.pop();
            let before = out.len();
            self.process(rng, p, out);
            if let Some(cut) = first_start_after {
                if let Some(e) =
                    out[before..].iter().filter(|e| e.at >= cut && is_start(e.kind, e.channel)).min_by_key(|e| e.at)
                {
                    return Some(e.service);
                }
            }
        }
        None
    }

    /// Dismissed guidance pushes before `until`, DISMISSALS_PER_YEAR on average, each about a
    /// service of the subject's audience that no pending action of the simulation is about: the
    /// subject dismisses what it does not need now, whatever its realised future.
    fn dismissals_until(&mut self, until: i64, out: &mut Vec<SimEvent>) {
        while self.next_dismissal < until {
            let drawn = self.next_dismissal;
            self.next_dismissal = drawn + exp_wait(&mut self.aux, DISMISSALS_PER_YEAR);
            let age = age_years(self.subject.born, drawn);
            if !self.state.alive || self.state.closing || (self.subject.kind == SubjectKind::Person && age < 16.0) {
                continue;
            }
            let pool = &self.prep.pushable[audience_slot(self.subject.kind)];
            if pool.is_empty() {
                return;
            }
            let service = pool[self.aux.gen_range(0..pool.len())];
            if self.pending_services().any(|p| p == service) {
                continue;
            }
            // Pushes go out in the day: fold the instant into 08:00-22:00 of its date.
            let day = Timestamp(drawn).date_shanghai().start_shanghai().0;
            let at = day + 8 * 3600 + (drawn - day) * 14 / 24;
            out.push(SimEvent {
                at,
                service,
                kind: EventKind::Dismissed,
                rating: 0,
                channel: Channel::Push,
                v2_at: None,
            });
        }
    }

    /// Services some pending action of the simulation will use.
    fn pending_services(&self) -> impl Iterator<Item = u32> + '_ {
        let bundles = self.prep.cat.bundles();
        self.heap.iter().filter_map(move |Reverse(p)| match p.action {
            Action::Step { journey, step } => {
                Some(bundles[self.journeys[journey as usize].bundle as usize].steps[step as usize].service)
            }
            Action::Renew { service } | Action::Yearly { service } => Some(service),
            _ => None,
        })
    }

    /// A copy whose pending times are re-drawn from their laws, conditioned on being `>= cut`.
    fn redraw_after(&self, rng: &mut ChaCha8Rng, cut: i64) -> Sim<'p, 'a> {
        let mut fork = self.clone();
        let pending: Vec<Pending> = fork.heap.drain().map(|Reverse(p)| p).collect();
        for mut p in pending {
            p.at = match p.law {
                Law::Uniform { lo, hi } => {
                    let lo = lo.max(cut);
                    if hi > lo {
                        rng.gen_range(lo..=hi)
                    } else {
                        lo
                    }
                }
                Law::Memoryless { rate } => cut + (-(1.0 - rng.gen::<f64>()).ln() / rate).min(1e15) as i64,
                Law::Fixed => p.at,
            };
            fork.heap.push(Reverse(p));
        }
        fork
    }
}

/// For a renewal done at `now` drawn uniformly in `[expiry - days, expiry]`, the expiry is the
/// window's upper bound.
fn p_law_expiry(law: Law, now: i64, days: u32) -> i64 {
    match law {
        Law::Uniform { hi, .. } => hi,
        _ => now + i64::from(days) * DAY / 2,
    }
}

/// Whether a department is one of the city's slow ones in the simulation: about one in five,
/// chosen by a hash of its name so that it is the same for every seed and size. A made-up
/// pattern for the operator console to find, not a statement about any real department.
pub fn is_slow_department(name: &str) -> bool {
    crate::hash::fnv1a(format!("slow:{name}").as_bytes()).is_multiple_of(5)
}

/// Chance that an application's procedure has a part the time limit does not count. Licences
/// may need a hearing, inspection, testing, quarantine, appraisal or expert review (行政许可法
/// art. 45); any timed application may be sent back for corrections (补正). 即办 has neither.
fn untimed_share(s: &crate::catalogue::Service) -> (f64, f64) {
    if s.time_limit_days == 0 {
        return (0.0, 0.0);
    }
    let special = if s.item_type == ItemType::Licence { 0.3 } else { 0.0 };
    (special, 0.05)
}

/// How a department handled one application.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Procedure {
    /// The clock stopped and running again (both instants).
    suspended: Option<(i64, i64)>,
    /// The outcome.
    done: i64,
    /// Working days from the application to the outcome, less the suspended span: what the
    /// legal limit bounds.
    timed: f64,
}

/// Draws the procedure of an application at `at` for a service with this limit in working days
/// (0: 即办) and untimed-part chances `(special procedure, corrections)`.
fn procedure(rng: &mut ChaCha8Rng, limit_days: u32, slow: bool, untimed: (f64, f64), at: i64) -> Procedure {
    let t = Timestamp(at);
    if limit_days == 0 {
        // 即办: minutes to a few hours, the same (Shanghai) day.
        let day_end = Date::start_shanghai(t.date_shanghai()).0 + DAY - 1;
        let done = (at + rng.gen_range(300..4 * 3600)).min(day_end.max(at));
        return Procedure { suspended: None, done, timed: t.working_days_until(Timestamp(done)) };
    }
    let limit = f64::from(limit_days);
    // Share of the limit used. Most departments take 30-80% of it and rarely overrun; a slow
    // department overruns a third of the time, with a long tail (up to three times the limit).
    let share = if slow {
        if rng.gen_bool(0.35) {
            1.0 + (-(1.0 - rng.gen::<f64>()).ln() * 0.5).min(2.0)
        } else {
            rng.gen_range(0.4..1.0)
        }
    } else {
        match rng.gen_range(0..100) {
            0..=84 => rng.gen_range(0.3..0.8),
            85..=96 => rng.gen_range(0.05..1.0),
            _ => rng.gen_range(1.0..1.5),
        }
    };
    let timed = share * limit;
    let span = if rng.gen_bool(untimed.0) {
        Some(rng.gen_range(3.0..20.0))
    } else if rng.gen_bool(untimed.1) {
        Some(rng.gen_range(1.0..10.0))
    } else {
        None
    };
    let Some(span) = span else {
        return Procedure { suspended: None, done: t.plus_working_days(timed).0, timed };
    };
    // The clock stops part-way through the timed part and runs on for the rest afterwards.
    let before = timed * rng.gen_range(0.1..0.6);
    let from = t.plus_working_days(before);
    let to = from.plus_working_days(span);
    let done = to.plus_working_days(timed - before);
    Procedure { suspended: Some((from.0, to.0)), done: done.0, timed }
}

/// A 好差评 rating 1-5 for an outcome: mostly 5 on time (about 4% bad, 1-2), far worse the later
/// (`late` is the overrun as a share of the limit), mostly 1-2 after a rejection.
fn rating(rng: &mut ChaCha8Rng, rejected: bool, late: f64) -> u8 {
    let w: [f64; 5] = if rejected {
        [45.0, 30.0, 15.0, 6.0, 4.0]
    } else if late > 0.0 {
        let s = late.min(1.0);
        [12.0 + 18.0 * s, 13.0 + 12.0 * s, 20.0, 25.0 - 10.0 * s, 30.0 - 20.0 * s]
    } else {
        [1.5, 2.5, 6.0, 18.0, 72.0]
    };
    pick_weighted(rng, &w) as u8 + 1
}

/// Dismissed guidance pushes per subject-year (a plausible round figure).
const DISMISSALS_PER_YEAR: f64 = 0.3;

/// An exponential wait in seconds for a rate per year.
fn exp_wait(rng: &mut ChaCha8Rng, per_year: f64) -> i64 {
    (-(1.0 - rng.gen::<f64>()).ln() / per_year * YEAR).min(1e15) as i64
}

/// Person ages at the start, by 5-year band 0-4 .. 90-94: a plausible shape for an ageing
/// north-eastern city (few children, a broad band of 30-65 year-olds).
const AGE_BANDS: [f64; 19] =
    [3.0, 3.5, 4.0, 4.0, 4.5, 6.0, 7.5, 8.5, 8.0, 8.0, 8.5, 8.5, 7.5, 6.5, 5.0, 3.5, 2.0, 1.0, 0.5];

/// District population weights (rough, for realism only).
const DISTRICT_WEIGHTS: [f64; 10] = [4.0, 3.5, 6.0, 15.0, 3.0, 12.0, 7.0, 8.0, 7.0, 0.5];

fn pick_weighted(rng: &mut ChaCha8Rng, w: &[f64]) -> usize {
    let total: f64 = w.iter().sum();
    let mut x = rng.gen::<f64>() * total;
    for (i, &v) in w.iter().enumerate() {
        if x < v {
            return i;
        }
        x -= v;
    }
    w.len() - 1
}

/// The id of the `i`-th person or enterprise.
pub fn subject_id(kind: SubjectKind, i: u64) -> String {
    match kind {
        SubjectKind::Person => format!("p{i:07}"),
        SubjectKind::Enterprise => format!("e{i:06}"),
    }
}

/// The simulation window: (start, cut-off, end) in seconds.
pub fn window(params: &GenParams) -> (i64, i64, i64) {
    let cutoff = params.cutoff.start_shanghai().0;
    let start = Date::new(params.cutoff.year - params.years as i32, params.cutoff.month, params.cutoff.day.min(28))
        .expect("valid")
        .start_shanghai()
        .0;
    (start, cutoff, cutoff + i64::from(params.horizon_days) * DAY)
}

/// Simulates one subject entirely: history, future and truth.
pub fn simulate_subject(cat: &Catalogue, params: &GenParams, kind: SubjectKind, i: u64) -> SubjectRun {
    let prep = Prepared::new(cat);
    simulate_prepared(&prep, params, kind, i)
}

fn simulate_prepared(prep: &Prepared<'_>, params: &GenParams, kind: SubjectKind, i: u64) -> SubjectRun {
    let (start, cutoff, end) = window(params);
    let stream = crate::hash::fnv1a(format!("{}:{:?}:{}", params.seed, kind, i).as_bytes());
    let mut rng = ChaCha8Rng::seed_from_u64(stream);
    let start_date = Timestamp(start).date_shanghai();
    let district = pick_weighted(&mut rng, &DISTRICT_WEIGHTS) as u8;
    let (subject, state, kids) = match kind {
        SubjectKind::Person => {
            let band = pick_weighted(&mut rng, &AGE_BANDS) as i64;
            let age_days = band * 5 * 365 + rng.gen_range(0..5 * 365);
            let born = civil_from_days(start_date.day_number() - age_days);
            let age = age_days as f64 / 365.25;
            let married = age > 24.0 && rng.gen_bool(((age - 22.0) / 12.0).clamp(0.0, 0.85));
            let children =
                if married && age > 24.0 { rng.gen_range(0..=2u8).min(((age - 22.0) / 3.0) as u8) } else { 0 };
            // Existing children's birth days, for school entry: born after the parent was 22.
            let mut kids = Vec::new();
            for _ in 0..children {
                let oldest = (age - 22.0).clamp(0.5, 30.0);
                let kid_age = rng.gen_range(0.0..oldest) * 365.25;
                kids.push(start_date.day_number() - kid_age as i64);
            }
            let female = rng.gen_bool(0.5);
            let retire_age = if female { 55.0 } else { 60.0 } + rng.gen_range(0.0..3.0);
            let retired = age >= retire_age;
            let employed = !retired && age >= 22.0 && rng.gen_bool(0.75);
            let subj = SimSubject {
                id: subject_id(kind, i),
                kind,
                born,
                district,
                hukou_local: rng.gen_bool(0.8),
                class: if female { 'F' } else { 'M' },
                construction: false,
            };
            let state = State {
                alive: true,
                married,
                employed,
                retired,
                graduated: age >= 24.0,
                children,
                business: false,
                closing: false,
                gen: 0,
                habit: None,
            };
            (subj, state, (kids, retire_age, employed))
        }
        SubjectKind::Enterprise => {
            // A quarter of the enterprises open during the window (their founding is observed).
            let window_days = (cutoff - start) / DAY;
            let founded = if rng.gen_bool(0.25) {
                start_date.day_number() + rng.gen_range(0..window_days.max(1))
            } else {
                start_date.day_number() - rng.gen_range(30..20 * 365)
            };
            let class = match rng.gen_range(0..100) {
                0..=79 => 'S',
                80..=94 => 'M',
                _ => 'L',
            };
            let subj = SimSubject {
                id: subject_id(kind, i),
                kind,
                born: civil_from_days(founded),
                district,
                hukou_local: false,
                class,
                construction: rng.gen_bool(0.08),
            };
            let state = State {
                alive: true,
                married: false,
                employed: false,
                retired: false,
                graduated: false,
                children: 0,
                business: true,
                closing: false,
                gen: 0,
                habit: None,
            };
            (subj, state, (Vec::new(), 0.0, false))
        }
    };
    let aux =
        ChaCha8Rng::seed_from_u64(crate::hash::fnv1a(format!("{}:{:?}:{}:process", params.seed, kind, i).as_bytes()));
    let mut sim = Sim {
        prep,
        subject,
        state,
        heap: BinaryHeap::new(),
        seq: 0,
        journeys: Vec::new(),
        renewals: Vec::new(),
        end,
        aux,
        next_dismissal: i64::MAX,
    };
    let slot = audience_slot(kind);
    if !prep.habits[slot].is_empty() && rng.gen_bool(0.5) {
        let h = prep.habits[slot][rng.gen_range(0..prep.habits[slot].len())];
        sim.state.habit = Some((h, rng.gen_range(0.5..3.0)));
    }
    let (kids, retire_age, employed) = kids;
    for k in kids {
        sim.schedule_school_entry(&mut rng, k);
    }
    let born = sim.subject.born.start_shanghai().0;
    match kind {
        SubjectKind::Person => {
            if employed {
                let at = born + (retire_age * YEAR) as i64;
                if at >= start && at < end {
                    sim.push(at, Law::Fixed, Action::Fixed { ev: LifeEvent::Retirement as u8 });
                }
            }
        }
        SubjectKind::Enterprise => {
            if born >= start {
                sim.push(
                    born + rng.gen_range(8 * 3600..18 * 3600),
                    Law::Fixed,
                    Action::Fixed { ev: LifeEvent::EnterpriseOpen as u8 },
                );
            }
        }
    }
    // Documents: holders get an expiry uniform over one validity period; persons under 16 hold
    // none (ID cards before 16 are optional).
    let age_now = age_years(sim.subject.born, start);
    for &(svc, days, years, holders, aud) in &prep.renewals {
        if !aud.admits(kind)
            || born >= start
            || (kind == SubjectKind::Person && age_now < 16.0)
            || !rng.gen_bool(f64::from(holders))
        {
            continue;
        }
        let period = i64::from(years) * (365 * DAY + DAY / 4);
        let expiry = start + rng.gen_range(0..period.max(1));
        sim.push_uniform(&mut rng, expiry - i64::from(days) * DAY, expiry, Action::Renew { service: svc });
    }
    let first_year = Timestamp(start).date_shanghai().year;
    // Windows of the first (partial) year; the tick at each 1 January plans the next.
    sim.schedule_year(&mut rng, first_year);
    // A subject founded during the window does nothing before its founding.
    let t0 = start.max(born);
    let r = sim.noise_rate();
    sim.push_rate(&mut rng, t0, r, Action::Noise);
    sim.next_dismissal = t0 + exp_wait(&mut sim.aux, DISMISSALS_PER_YEAR);
    sim.reschedule_hazards(&mut rng, t0);
    let mut events = Vec::new();
    sim.run(&mut rng, cutoff, &mut events, None);
    // The hidden state at the cut-off, without hazards superseded by a later redraw.
    let mut at_cutoff = sim.clone();
    let gen = at_cutoff.state.gen;
    at_cutoff.heap.retain(|Reverse(p)| !matches!(p.action, Action::Hazard { gen: g, .. } if g != gen));
    // Forks copy this state hundreds of times: drop what no pending action can read.
    let mut live = vec![false; at_cutoff.journeys.len()];
    for Reverse(p) in at_cutoff.heap.iter() {
        if let Action::Step { journey, .. } = p.action {
            live[journey as usize] = true;
        }
    }
    for (j, keep) in at_cutoff.journeys.iter_mut().zip(live) {
        if !keep {
            j.done = Vec::new();
            j.scheduled = Vec::new();
        }
    }
    at_cutoff.renewals = Vec::new();
    sim.run(&mut rng, end, &mut events, None);
    let kept = |at: i64| at >= start && at < end && (kind == SubjectKind::Person || at >= born);
    // Version 2's numbering: its events, kept by its window, in its (stable) time order.
    let mut v2: Vec<usize> = (0..events.len()).filter(|&k| events[k].v2_at.is_some_and(kept)).collect();
    v2.sort_by_key(|&k| events[k].v2_at);
    let mut numbers = vec![u32::MAX; events.len()];
    for (n, &k) in v2.iter().enumerate() {
        numbers[k] = n as u32;
    }
    let mut numbered: Vec<(SimEvent, u32)> = events.into_iter().zip(numbers).filter(|(e, _)| kept(e.at)).collect();
    numbered.sort_by_key(|(e, _)| e.at);
    for (next, (_, n)) in (v2.len() as u32..).zip(numbered.iter_mut().filter(|(_, n)| *n == u32::MAX)) {
        *n = next;
    }
    let (events, numbers): (Vec<SimEvent>, Vec<u32>) = numbered.into_iter().unzip();

    let has_future_start = events.iter().any(|e| e.at >= cutoff && is_start(e.kind, e.channel));
    let mut truth = Vec::new();
    if has_future_start && params.truth_samples > 0 {
        let mut counts: Vec<(u32, u32)> = Vec::new();
        let mut hits = 0;
        let mut tries = 0;
        let mut trng = ChaCha8Rng::seed_from_u64(stream ^ 0x7472_7574_6800_0000);
        let mut scratch = Vec::new();
        while hits < params.truth_samples && tries < params.truth_samples * 4 {
            tries += 1;
            let mut fork = at_cutoff.redraw_after(&mut trng, cutoff);
            scratch.clear();
            if let Some(svc) = fork.run(&mut trng, end, &mut scratch, Some(cutoff)) {
                hits += 1;
                match counts.iter_mut().find(|c| c.0 == svc) {
                    Some(c) => c.1 += 1,
                    None => counts.push((svc, 1)),
                }
            }
        }
        if hits == 0 {
            // The realised future was a rare draw; it is then the only evidence.
            let first = events.iter().find(|e| e.at >= cutoff && is_start(e.kind, e.channel));
            counts.extend(first.map(|e| (e.service, 1)));
            hits = 1;
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        truth = counts.into_iter().map(|(s, c)| (s, f64::from(c) / f64::from(hits))).collect();
    }
    SubjectRun { subject: sim.subject, events, journeys: sim.journeys, renewals: sim.renewals, truth, numbers }
}

/// Counts of a generation run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenSummary {
    pub persons: u64,
    pub enterprises: u64,
    pub events: u64,
    pub future_events: u64,
    pub truth_subjects: u64,
    pub start: String,
    pub cutoff: String,
    pub end: String,
}

/// The formatted output of a chunk of subjects.
#[derive(Debug, Default)]
struct ChunkText {
    events: String,
    future: String,
    subjects: String,
    truth: String,
    n_events: u64,
    n_future: u64,
    n_truth: u64,
}

fn format_run(cat: &Catalogue, run: &SubjectRun, cutoff: i64, jsonl: bool, out: &mut ChunkText) {
    let s = &run.subject;
    let _ = writeln!(
        out.subjects,
        "{},{},{},{},{},{}",
        s.id,
        match s.kind {
            SubjectKind::Person => "person",
            SubjectKind::Enterprise => "enterprise",
        },
        s.born,
        DISTRICTS[s.district as usize],
        if s.kind == SubjectKind::Person {
            if s.hukou_local {
                "local"
            } else {
                "nonlocal"
            }
        } else if s.construction {
            "construction"
        } else {
            "general"
        },
        s.class
    );
    let mut id = String::new();
    for (e, n) in run.events.iter().zip(&run.numbers) {
        id.clear();
        let _ = write!(id, "{}.{}", s.id, n);
        let rec = EventRecord {
            event_id: &id,
            subject: &s.id,
            service: &cat.service(e.service).id,
            kind: e.kind,
            rating: e.rating,
            at: Timestamp(e.at),
            channel: e.channel,
        };
        if e.at < cutoff {
            EventWriter::format(&rec, jsonl, &mut out.events);
            out.n_events += 1;
        } else {
            EventWriter::format(&rec, jsonl, &mut out.future);
            out.n_future += 1;
        }
    }
    if !run.truth.is_empty() {
        out.n_truth += 1;
        let _ = write!(out.truth, "{{\"subject\":\"{}\",\"next\":[", s.id);
        for (k, (svc, p)) in run.truth.iter().enumerate() {
            let sep = if k > 0 { "," } else { "" };
            let _ = write!(out.truth, "{sep}[\"{}\",{}]", cat.service(*svc).id, p);
        }
        out.truth.push_str("]}\n");
    }
}

/// Where the generator writes, and how it reports progress.
pub trait GenSink {
    fn events(&mut self, text: &str) -> std::io::Result<()>;
    fn future(&mut self, text: &str) -> std::io::Result<()>;
    fn subjects(&mut self, text: &str) -> std::io::Result<()>;
    fn truth(&mut self, text: &str) -> std::io::Result<()>;
    fn progress(&mut self, done: u64, total: u64);
}

/// Collects the generated text in memory (tests, benchmarks, small runs).
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    pub events: String,
    pub future: String,
    pub subjects: String,
    pub truth: String,
}

impl GenSink for MemorySink {
    fn events(&mut self, text: &str) -> std::io::Result<()> {
        self.events.push_str(text);
        Ok(())
    }
    fn future(&mut self, text: &str) -> std::io::Result<()> {
        self.future.push_str(text);
        Ok(())
    }
    fn subjects(&mut self, text: &str) -> std::io::Result<()> {
        self.subjects.push_str(text);
        Ok(())
    }
    fn truth(&mut self, text: &str) -> std::io::Result<()> {
        self.truth.push_str(text);
        Ok(())
    }
    fn progress(&mut self, _: u64, _: u64) {}
}

pub use crate::log::SUBJECTS_HEADER;

/// Simulates every subject, in parallel chunks, writing in subject order.
pub fn generate(cat: &Catalogue, params: &GenParams, sink: &mut dyn GenSink) -> std::io::Result<GenSummary> {
    use rayon::prelude::*;
    let prep = Prepared::new(cat);
    let (start, cutoff, end) = window(params);
    let header = if params.jsonl { String::new() } else { format!("{}\n", crate::log::NATIVE_HEADER) };
    sink.events(&header)?;
    sink.future(&header)?;
    sink.subjects(&format!("{SUBJECTS_HEADER}\n"))?;
    let total = params.persons + params.enterprises;
    let ids: Vec<(SubjectKind, u64)> = (0..params.persons)
        .map(|i| (SubjectKind::Person, i))
        .chain((0..params.enterprises).map(|i| (SubjectKind::Enterprise, i)))
        .collect();
    const CHUNK: usize = 1024;
    let mut summary = GenSummary {
        persons: params.persons,
        enterprises: params.enterprises,
        start: Timestamp(start).to_string(),
        cutoff: Timestamp(cutoff).to_string(),
        end: Timestamp(end).to_string(),
        ..GenSummary::default()
    };
    let mut done = 0u64;
    // A batch of chunks runs in parallel; batches bound the memory held before writing.
    for batch in ids.chunks(CHUNK * 32) {
        let texts: Vec<ChunkText> = batch
            .par_chunks(CHUNK)
            .map(|chunk| {
                let mut text = ChunkText::default();
                for &(kind, i) in chunk {
                    let run = simulate_prepared(&prep, params, kind, i);
                    format_run(cat, &run, cutoff, params.jsonl, &mut text);
                }
                text
            })
            .collect();
        for t in texts {
            sink.events(&t.events)?;
            sink.future(&t.future)?;
            sink.subjects(&t.subjects)?;
            sink.truth(&t.truth)?;
            summary.events += t.n_events;
            summary.future_events += t.n_future;
            summary.truth_subjects += t.n_truth;
        }
        done += batch.len() as u64;
        sink.progress(done, total);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalogue")).expect("the real catalogue loads")
    }

    fn runs(cat: &Catalogue, persons: u64, enterprises: u64) -> (GenParams, Vec<SubjectRun>) {
        let params = GenParams { persons, enterprises, seed: 11, truth_samples: 0, ..GenParams::default() };
        let prep = Prepared::new(cat);
        let ids = (0..persons)
            .map(|i| (SubjectKind::Person, i))
            .chain((0..enterprises).map(|i| (SubjectKind::Enterprise, i)));
        let runs = ids.map(|(kind, i)| simulate_prepared(&prep, &params, kind, i)).collect();
        (params, runs)
    }

    /// One application and what followed it, paired first-in first-out per service.
    #[derive(Debug, Default)]
    struct App {
        service: u32,
        applied: i64,
        suspended: Option<i64>,
        resumed: Option<i64>,
        outcome: Option<(EventKind, i64)>,
        rating: Option<u8>,
    }

    impl App {
        fn timed(&self) -> Option<f64> {
            let wd = |a: i64, b: i64| Timestamp(a).working_days_until(Timestamp(b));
            let stopped = match (self.suspended, self.resumed) {
                (Some(a), Some(b)) => wd(a, b),
                _ => 0.0,
            };
            self.outcome.map(|(_, done)| wd(self.applied, done) - stopped)
        }
    }

    fn applications(run: &SubjectRun) -> Vec<App> {
        let mut apps: Vec<App> = Vec::new();
        let mut open: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut last_done: HashMap<u32, usize> = HashMap::new();
        for e in &run.events {
            let queue = open.entry(e.service).or_default();
            match e.kind {
                EventKind::Applied => {
                    queue.push(apps.len());
                    apps.push(App { service: e.service, applied: e.at, ..App::default() });
                }
                EventKind::Suspended => {
                    if let Some(&k) = queue.iter().find(|&&k| apps[k].suspended.is_none()) {
                        apps[k].suspended = Some(e.at);
                    }
                }
                EventKind::Resumed => {
                    if let Some(&k) = queue.iter().find(|&&k| apps[k].suspended.is_some() && apps[k].resumed.is_none())
                    {
                        apps[k].resumed = Some(e.at);
                    }
                }
                EventKind::Completed | EventKind::Rejected if e.channel != Channel::System && !queue.is_empty() => {
                    let k = queue.remove(0);
                    apps[k].outcome = Some((e.kind, e.at));
                    last_done.insert(e.service, k);
                }
                EventKind::Rated => {
                    if let Some(&k) = last_done.get(&e.service) {
                        apps[k].rating.get_or_insert(e.rating);
                    }
                }
                _ => {}
            }
        }
        apps
    }

    #[test]
    fn slow_departments_overrun_their_limits_and_immediate_services_finish_the_same_day() {
        let cat = catalogue();
        let (_, runs) = runs(&cat, 1500, 300);
        let slow_departments: Vec<&str> = {
            let mut d: Vec<&str> =
                cat.services().iter().map(|s| s.department.as_str()).filter(|d| is_slow_department(d)).collect();
            d.sort_unstable();
            d.dedup();
            d
        };
        assert!((3..=12).contains(&slow_departments.len()), "{slow_departments:?}");
        // (over the limit, timed applications) for the slow departments and the others.
        let mut counts = [(0u32, 0u32); 2];
        let mut immediate = 0;
        for app in runs.iter().flat_map(applications) {
            let s = cat.service(app.service);
            let Some((_, done)) = app.outcome else { continue };
            if s.time_limit_days == 0 {
                assert_eq!(Timestamp(app.applied).date_shanghai(), Timestamp(done).date_shanghai(), "{}", s.id);
                immediate += 1;
                continue;
            }
            let c = &mut counts[usize::from(is_slow_department(&s.department))];
            c.1 += 1;
            c.0 += u32::from(app.timed().unwrap() > f64::from(s.time_limit_days) + 1e-6);
        }
        let share = |(over, n): (u32, u32)| f64::from(over) / f64::from(n.max(1));
        let (others, slow) = (share(counts[0]), share(counts[1]));
        assert!(immediate > 1000 && counts[1].1 > 200, "too few applications: {immediate} {counts:?}");
        assert!((0.2..=0.45).contains(&slow), "slow departments overran {slow:.3}");
        assert!(others < 0.06 && slow > 4.0 * others, "others overran {others:.3}, slow {slow:.3}");
    }

    #[test]
    fn suspensions_resume_before_the_outcome_and_do_not_count_against_the_limit() {
        let cat = catalogue();
        let (params, runs) = runs(&cat, 1500, 300);
        // A chain may run past the end of the window: only check those that began long before.
        let (_, _, end) = window(&params);
        let mut checked = 0;
        for run in &runs {
            for (k, e) in run.events.iter().enumerate().filter(|(_, e)| e.kind == EventKind::Suspended) {
                assert!(cat.service(e.service).time_limit_days > 0);
                if e.at > end - 300 * DAY {
                    continue;
                }
                let later = &run.events[k + 1..];
                let resumed = later.iter().position(|x| x.service == e.service && x.kind == EventKind::Resumed);
                let resumed =
                    resumed.unwrap_or_else(|| panic!("{} suspended {} never resumed", run.subject.id, e.service));
                let outcome = later[resumed + 1..]
                    .iter()
                    .any(|x| x.service == e.service && matches!(x.kind, EventKind::Completed | EventKind::Rejected));
                assert!(outcome, "{} resumed {} without an outcome", run.subject.id, e.service);
                checked += 1;
            }
        }
        assert!(checked > 200, "only {checked} suspensions");
        // On-time departments: the timed part is mostly within the limit, the gross time often not.
        let (mut within, mut gross_over, mut n) = (0, 0, 0);
        for app in runs.iter().flat_map(applications) {
            let s = cat.service(app.service);
            let (Some(timed), Some(_)) = (app.timed(), app.resumed) else { continue };
            if is_slow_department(&s.department) {
                continue;
            }
            let limit = f64::from(s.time_limit_days);
            n += 1;
            within += u32::from(timed <= limit + 1e-6);
            let (_, done) = app.outcome.unwrap();
            gross_over += u32::from(Timestamp(app.applied).working_days_until(Timestamp(done)) > limit);
        }
        let share = |x: u32| f64::from(x) / f64::from(n.max(1));
        assert!(n > 100 && share(within) > 0.9, "{within} of {n} within the limit");
        assert!(share(gross_over) > 0.3, "only {gross_over} of {n} suspended applications overran in gross time");
    }

    #[test]
    fn late_and_rejected_applications_are_rated_lower_and_more_often() {
        let cat = catalogue();
        let (_, runs) = runs(&cat, 1500, 300);
        // (ratings sum, rated, bad ratings, outcomes) for on time, late, rejected.
        let mut groups = [(0u32, 0u32, 0u32, 0u32); 3];
        for app in runs.iter().flat_map(applications) {
            let s = cat.service(app.service);
            let (Some((kind, _)), Some(timed)) = (app.outcome, app.timed()) else { continue };
            let g = if kind == EventKind::Rejected {
                2
            } else {
                usize::from(s.time_limit_days > 0 && timed > f64::from(s.time_limit_days))
            };
            let c = &mut groups[g];
            c.3 += 1;
            if let Some(r) = app.rating {
                assert!((1..=5).contains(&r));
                c.0 += u32::from(r);
                c.1 += 1;
                c.2 += u32::from(r <= 2);
            }
        }
        let mean = |g: (u32, u32, u32, u32)| f64::from(g.0) / f64::from(g.1.max(1));
        let bad = |g: (u32, u32, u32, u32)| f64::from(g.2) / f64::from(g.1.max(1));
        let rated = |g: (u32, u32, u32, u32)| f64::from(g.1) / f64::from(g.3.max(1));
        let [on_time, late, rejected] = groups;
        assert!(on_time.1 > 1000 && late.1 > 100 && rejected.1 > 50, "{groups:?}");
        assert!(mean(late) < mean(on_time) - 1.0 && mean(rejected) < mean(late), "{groups:?}");
        assert!(bad(on_time) < 0.08 && bad(late) > 0.2 && bad(rejected) > 0.6, "{groups:?}");
        assert!(rated(late) > rated(on_time) + 0.1 && rated(rejected) > rated(late), "{groups:?}");
    }

    #[test]
    fn pushes_are_dismissed_about_services_of_the_audience_and_opened_just_before_applying() {
        let cat = catalogue();
        let (params, runs) = runs(&cat, 1500, 300);
        let mut dismissed = 0;
        let mut opened = 0;
        for run in &runs {
            let mut numbers = run.numbers.clone();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), run.events.len(), "{}: event ids repeat", run.subject.id);
            for (k, e) in run.events.iter().enumerate() {
                match e.kind {
                    EventKind::Dismissed => {
                        assert_eq!(e.channel, Channel::Push);
                        assert!(cat.service(e.service).audience.admits(run.subject.kind));
                        dismissed += 1;
                    }
                    EventKind::PushOpened => {
                        assert_eq!(e.channel, Channel::Push);
                        let next =
                            run.events[k + 1..].iter().find(|x| x.service == e.service && x.kind == EventKind::Applied);
                        assert!(
                            next.is_some_and(|x| x.at - e.at <= 60),
                            "{}: push opened far from an application",
                            run.subject.id
                        );
                        opened += 1;
                    }
                    _ => {}
                }
            }
        }
        // About DISMISSALS_PER_YEAR per subject-year, less children and pending services.
        let subject_years = runs.len() as f64 * (f64::from(params.years) + 0.25);
        let rate = f64::from(dismissed) / subject_years;
        assert!((0.15..0.35).contains(&rate), "{dismissed} dismissals, {rate:.3} per subject-year");
        assert!(opened > 100, "only {opened} pushes opened");
    }
}
